"""Every per-reply detector fires on a hand-written bad reply and stays quiet on a clean one;
suite-level numbers are computed from reply rows as documented."""

import pytest

from meshtune.commands import load_registry
from meshtune.evaluate import metrics
from meshtune.suites import Item

REG = load_registry()
V1_LOOP = " ".join(["/optout prevents others from relaying to you."] * 6)
CLEAN = (
    "To relay, DM me 'alice <your message>' and I'll pass it on. Her reply comes back to you "
    "automatically. Use /optout if you'd rather not get relays."
)
ITEM = Item(
    id="relay-01",
    category="relay",
    prompt="How do I relay to alice?",
    expect_any=["alice"],
    forbid=["/relay"],
)


def measure(text: str, finish: str = "stop", item: Item = ITEM) -> dict:
    return metrics.measure(text, finish, item, REG, completion_tokens=30, seconds=0.5)


def test_clean_reply_is_about_150_chars_and_passes_every_check():
    assert 120 <= len(CLEAN) <= 160
    m = measure(CLEAN)
    assert m["passed"] and m["failures"] == []
    assert m["loop"] is None and not m["runaway"] and not m["command_dump"]
    assert m["invented_commands"] == []
    assert m["chars"] == len(CLEAN) and m["bytes"] == len(CLEAN.encode()) and m["chunks"] == 1
    assert m["tokens_per_s"] == 60.0


def test_v1_optout_loop_is_detected():
    reason = metrics.loop_reason(V1_LOOP)
    assert reason is not None and "optout prevents others" in reason
    m = measure("To stop relays: " + V1_LOOP, item=Item(id="x", prompt="how do i stop relays"))
    assert "loop" in m["failures"] and not m["passed"]


@pytest.mark.parametrize(
    "reply",
    [
        CLEAN,
        "Yep, still here! What can I help with?",
        "Good SNR on LongFast is anything above 0 dB; it still decodes down to about -17.5 dB.",
        # one repeated 4-word phrase twice is normal speech, not a loop
        "Send it to the node. If it fails, send it to the node again after a minute or two.",
        "Commands:\n/nodes lists nodes heard\n/node <name> shows one\n/help shows more",
        "",
    ],
)
def test_loop_detector_stays_quiet_on_normal_replies(reply):
    assert metrics.loop_reason(reply) is None


@pytest.mark.parametrize(
    ("reply", "rule"),
    [
        (
            "Check your antenna now. Also check your antenna now, then check your antenna now.",
            "phrase",
        ),
        ("Try /reset please.\nok\nTry /reset please.", "line"),
        ("The mesh is quiet tonight. Try later. The mesh is quiet tonight.", "sentence"),
        ("Sure!" + "!!!!!!!!" * 4, "back to back"),
    ],
)
def test_each_loop_rule_fires_on_its_own_pattern(reply, rule):
    reason = metrics.loop_reason(reply)
    assert reason is not None and rule in reason


def test_runaway_is_a_reply_that_hit_the_token_limit():
    m = measure("alice is a node and the mesh relays her messages through", finish="length")
    assert m["runaway"] and m["failures"] == ["runaway"]
    assert not measure("alice is a node", finish="stop")["runaway"]


def test_invented_and_non_working_commands_are_flagged_real_ones_are_not():
    m = measure("DM me 'alice hi', or try /relayto alice and /sms.")
    assert m["invented_commands"] == ["/relayto", "/sms"]
    assert "invented-command" in m["failures"]
    assert measure("Use /nodes to see alice, then DM me 'alice hi'.")["invented_commands"] == []


def test_the_relay_form_to_a_node_the_question_names_is_not_an_invented_command():
    """`/<shortname> <message>` relays in a DM to the bot; a word of the question turned into a
    command ("mute yourself" -> /mute) is still invented."""
    relay = Item(id="r", prompt="can you get a note to VK3Z and mtn2?")
    assert measure("DM me '/vk3z meet at 8' or '/mtn2 hi'.", item=relay)["invented_commands"] == []
    mute = Item(id="m", prompt="mute yourself for an hour")
    assert measure("Send /mute 1h.", item=mute)["invented_commands"] == ["/mute"]
    assert measure("Try /vk3z hi.")["invented_commands"] == ["/vk3z"]  # a node nobody named


def test_a_list_of_commands_is_a_dump_an_explanation_is_not():
    dump = "/help\n/nodes\n/node <name>\n/optout\n/optin\n/weather"
    m = measure(dump, item=Item(id="x", prompt="what can you do"))
    assert m["command_dump"] and m["failures"] == ["command-dump"]
    assert not measure("DM me 'alice hi'. /nodes shows who is around.")["command_dump"]


def test_expect_any_expect_all_forbid_and_max_chars():
    item = Item(
        id="x",
        prompt="q",
        expect_any=["dB", "decibel"],
        expect_all=["snr", "longfast"],
        forbid=["/relay"],
        max_chars=60,
    )
    m = metrics.measure("SNR on LongFast: above 0 DB is great.", "stop", item, REG)
    assert m["passed"]
    m = metrics.measure("LongFast is fine. Use /relay bob.", "stop", item, REG)
    assert m["failures"] == [
        "invented-command",
        "missing-expected",
        "missing-required",
        "forbidden",
    ]
    assert m["missing_all"] == ["snr"] and m["forbidden"] == ["/relay"]
    long = "SNR on LongFast above 0 dB is great, and it is still fine down to about -17 dB."
    assert metrics.measure(long, "stop", item, REG)["failures"] == ["too-long"]


@pytest.mark.parametrize(
    ("check", "reply", "hit"),
    [
        ("hi", "Hi there!", True),
        ("hi", "this is fine", False),  # a greeting check must not pass on "this"
        ("ok", "look at the map", False),
        ("tak", "take the TAK role", True),
        ("tak", "take care", False),
        ("no", "I know the node", False),
        ("/node", "Send /node RDG.", True),
        ("/node", "Send /nodes.", False),
        ("/c", "Send /checklog.", False),
        ("/c", "Read it with /c team.", True),
        ("aq==", "the default key AQ== is public", True),
        ("re:favou?rit", "your favorited nodes", True),
        ("re:/weather\\s*[<\\[]", "Use /weather <city>.", True),
        ("re:/weather\\s*[<\\[]", "Use /weather.", False),
    ],
)
def test_checks_match_whole_words_or_a_regex_never_a_bare_substring(check, reply, hit):
    item = Item(id="x", prompt="q", expect_any=[check])
    assert ("missing-expected" not in metrics.measure(reply, "stop", item, REG)["failures"]) is hit


@pytest.mark.parametrize(
    ("check", "why"), [("re:(", "not a valid regular expression"), ("no ", "spaces at its ends")]
)
def test_a_bad_check_is_refused_when_the_item_is_read(check, why):
    with pytest.raises(ValueError, match=why):
        Item(id="x", prompt="q", forbid=[check])


def test_empty_reply_fails():
    assert measure("   ")["failures"] == ["empty", "missing-expected"]


def test_chunks_count_utf8_bytes():
    m = measure("é" * 100 + " alice")
    assert m["chars"] == 106 and m["bytes"] == 206 and m["chunks"] == 2


def _row(
    item: str, reply: str, passed: bool, category: str = "c", chars: int | None = None, **kw
) -> dict:
    base = measure(reply)
    return {
        **base,
        "item": item,
        "category": category,
        "sample": 0,
        "question": item,
        "reply": reply,
        "passed": passed,
        "chars": chars if chars is not None else len(reply),
        **kw,
    }


def test_canned_reply_is_the_same_text_for_three_different_items():
    rows = [_row(f"i{n}", "I can help with that!", True) for n in range(3)]
    rows += [_row("i0", "i can help with THAT", True), _row("i4", "Something else.", True)]
    rows += [_row("i5", "Two items only.", True), _row("i6", "two items only", True)]
    metrics.mark_canned(rows)
    assert [r["canned"] for r in rows] == [True, True, True, True, False, False, False]


def test_suite_pass_rate_is_the_mean_of_item_pass_rates_per_category():
    rows = [
        _row("a", "x", True, "relay"),
        _row("a", "x", True, "relay"),
        _row("a", "x", False, "relay"),
        _row("b", "y", False, "relay"),
        _row("c", "z", True, "radio"),
    ]
    metrics.mark_canned(rows)
    s = metrics.summarize(rows)
    assert s["categories"]["relay"] == {"items": 2, "pass_rate": round((2 / 3 + 0) / 2, 4)}
    assert s["categories"]["radio"]["pass_rate"] == 1.0
    assert s["pass_rate"] == round((2 / 3 + 0 + 1) / 3, 4)
    assert s["items_always_pass"] == 1 and s["items_never_pass"] == 1


def test_length_distribution_and_shares():
    lengths = [10, 85, 100, 120, 150, 151, 200, 300, 90, 95]
    rows = [_row(f"i{n}", "x" * c, True) for n, c in enumerate(lengths)]
    metrics.mark_canned(rows)
    s = metrics.summarize(rows)
    assert s["chars"]["max"] == 300
    assert s["chars"]["p50"] == 100  # nearest rank: the 5th of the 10 sorted lengths
    assert s["chars"]["p90"] == 200
    assert s["share_80_150_chars"] == 0.6
    assert s["share_one_chunk"] == 0.8  # 200 and 300 characters need two chunks


def test_rates_count_replies():
    rows = [
        _row("a", V1_LOOP, False),
        _row("b", CLEAN, True),
        _row("c", CLEAN + " /sms", False),
        _row("d", "cut off", False, runaway=True),
    ]
    metrics.mark_canned(rows)
    s = metrics.summarize(rows)
    assert s["loop_rate"] == 0.25 and s["invented_command_rate"] == 0.25
    assert s["runaway_rate"] == 0.25 and s["invented_commands"] == {"/sms": 1}


OPTOUT = Item(
    id="block",
    prompt="i keep getting relayed messages from strangers, how do i block that",
    expect_any=["/optout"],
    allow_commands=["/optout", "/optin"],
)


def test_a_real_command_the_item_does_not_allow_is_a_wrong_command_not_an_invented_one():
    m = measure("DM /optout, or /nodes to see who it was.", item=OPTOUT)
    assert m["wrong_commands"] == ["/nodes"] and m["invented_commands"] == []
    assert m["failures"] == ["wrong-command"]
    assert m["reasons"] == [
        "names /nodes, not a command for this question (a right answer names /optout, /optin)"
    ]
    m = measure("DM /optout or /blockall.", item=OPTOUT)
    assert m["invented_commands"] == ["/blockall"] and m["wrong_commands"] == []
    assert m["failures"] == ["invented-command"]
    assert measure("DM me /optout; /optin undoes it.", item=OPTOUT)["passed"]
    # an item that sets no allow_commands (a user's own suite) checks invented commands only
    assert measure("Use /nodes to see alice, then DM me 'alice hi'.")["wrong_commands"] == []


def test_a_relay_item_that_allows_no_command_fails_the_slash_form_and_says_so():
    relay = Item(id="r", prompt="how do i get a note to VK3Z?", allow_commands=[])
    m = measure("DM me /vk3z back by 5.", item=relay)
    assert m["failures"] == ["wrong-command"] and m["invented_commands"] == []
    assert m["reasons"] == [
        "names /vk3z, not a command for this question (a right answer names no command)"
    ]


@pytest.mark.parametrize(
    ("reply", "said"),
    [
        ("Yes, the default key is public.", "yes"),
        ("Sure thing: /weather.", "yes"),
        ("Good pick: nRF52 boards sip power.", "yes"),
        ("No. Both must match.", "no"),
        ("Nope.", "no"),
        ("It can't, sorry.", "no"),
        ("Usually not: 7 hops floods the mesh.", "no"),
        ("'Not really', I'd say.", "no"),
        ("Nothing happens.", None),
        ("Node lists show it.", None),
        ("The T-Beam has GPS.", None),
    ],
)
def test_the_stance_is_read_from_the_replys_opening_words(reply, said):
    assert metrics.stance(reply) == said


def test_a_yes_no_item_fails_the_opposite_answer_and_a_reply_that_gives_none():
    item = Item(id="q", prompt="is the default channel private?", stance="no")
    assert measure("No: its key AQ== is public.", item=item)["passed"]
    for reply, said in (
        ("Yes, it's encrypted.", "yes"),
        ("The key is AQ==.", "neither yes nor no"),
    ):
        m = measure(reply, item=item)
        assert m["failures"] == ["wrong-stance"]
        assert m["reasons"] == [f"answers {said}; the right answer is no"]


def test_every_failure_has_a_sentence_naming_what_failed():
    item = Item(
        id="x",
        prompt="snr -9 on longfast ok?",
        expect_all=["re:17\\.5", "floor"],
        forbid=["re:\\bweak\\b"],
        max_chars=40,
    )
    reply = "That's weak, it sits just above the floor of the preset you use."
    m = measure(reply, item=item)
    assert m["failures"] == ["missing-required", "forbidden", "too-long"]
    assert m["reasons"] == [
        "misses the answer: needs 17.5",
        "says 'weak', which is false or banned for this question",
        f"{len(reply)} characters, over the item's 40",
    ]
    assert measure("", item=item)["reasons"][0] == "the reply is empty"


# ---------------------------------------------------------------- request kinds, technical DMs


def test_an_item_is_one_of_the_bots_request_kinds():
    assert Item(id="a", prompt="what is longfast").kind == "dm"
    assert Item(id="b", prompt="what is longfast", channel=True).kind == "channel"
    assert Item(id="c", prompt="/meshtastic what is longfast", channel=True).kind == "/meshtastic"
    session = [
        {"role": "user", "content": "/meshtastic what is longfast"},
        {"role": "assistant", "content": "LongFast is the default preset [1]."},
        {"role": "user", "content": "and its bandwidth?"},
    ]
    assert Item(id="d", messages=session).kind == "follow-up"
    ended = [*session[:2], {"role": "user", "content": "/exit"}, *session[1:]]
    assert Item(id="e", messages=ended).kind == "dm"  # /exit ended the session


HOPS = Item(
    id="radio-x",
    category="radio",
    prompt="whats the default hop limit",
    expect_all=["re:\\b3\\b"],
    forbid=["re:\\b7 hops by default"],
    allow_commands=[],
)
POINTER = "Ask me with /meshtastic <question> and I'll answer from the reference."


@pytest.mark.parametrize(
    "reply, said",
    [
        ("The default hop limit is 3.", "correct"),
        (POINTER, "pointer"),
        ("Not sure; try /meshtastic default hop limit.", "pointer"),
        ("It's 7 hops by default.", "wrong"),
        ("It's 7 hops by default; /meshtastic has more.", "wrong"),  # a pointer after a false claim
        ("No idea, check /nodes.", "wrong"),  # another command's job
        ("Around 5, I think.", "wrong"),
    ],
)
def test_a_technical_dm_reply_is_correct_a_pointer_or_wrong(reply, said):
    assert measure(reply, item=HOPS)["answer"] == said


def test_only_technical_dm_items_are_scored_three_ways():
    assert measure(POINTER)["answer"] is None  # relay: bot usage
    on_channel = HOPS.model_copy(update={"channel": True})
    assert measure(POINTER, item=on_channel)["answer"] is None
    with_command = HOPS.model_copy(update={"allow_commands": ("/hops",)})
    assert measure(POINTER, item=with_command)["answer"] is None


def test_every_figure_is_given_per_request_kind_and_technical_replies_split_three_ways():
    rows = [
        _row("d1", "The default hop limit is 3.", True, kind="dm", answer="correct"),
        _row("d2", POINTER, False, kind="dm", answer="pointer"),
        _row("d3", "7 hops by default.", False, kind="dm", answer="wrong"),
        _row("d4", "x" * 300, False, kind="dm", answer="wrong"),
        _row("c1", CLEAN + " /sms", False, kind="channel"),
        _row("m1", "SF11 at 250 kHz [1].", True, kind="/meshtastic"),
    ]
    metrics.mark_canned(rows)
    s = metrics.summarize(rows)
    assert list(s["kinds"]) == ["dm", "channel", "/meshtastic"]  # a kind without items is left out
    assert s["kinds"]["dm"]["items"] == 4 and s["kinds"]["dm"]["pass_rate"] == 0.25
    assert s["kinds"]["channel"]["invented_command_rate"] == 1.0
    assert s["kinds"]["/meshtastic"]["pass_rate"] == 1.0
    assert s["kinds"]["dm"]["chars"]["max"] == 300
    assert s["technical"] == {"replies": 4, "correct": 0.25, "pointer": 0.25, "wrong": 0.5}
