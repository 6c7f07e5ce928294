"""Reading, validating and linting chat datasets."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.conftest import rows_file
from tests.tiny import chat_row as chat

from meshtune import data
from meshtune.data import DatasetSpec, check, read_dataset
from meshtune.errors import MeshtuneError
from meshtune.meshmaster import Line, build_prompt

GOOD = chat("how do i relay to bob?", "DM me 'bob <your message>' and I'll pass it to BOB.")


def codes(issues) -> list[str]:
    return [i.code for i in issues]


# ---------------------------------------------------------------- formats


def test_sharegpt_and_openai_rows_read_into_the_same_conversation(tmp_path):
    openai = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello!"},
        ]
    }
    sharegpt = {
        "conversations": [
            {"from": "system", "value": "Be brief."},
            {"from": "human", "value": "hi"},
            {"from": "gpt", "value": "hello!"},
        ]
    }
    alt = {
        "conversations": [
            {"from": "system", "value": "Be brief."},
            {"from": "user", "value": "hi"},
            {"from": "assistant", "value": "hello!"},
        ]
    }
    ds = read_dataset(rows_file(tmp_path, [openai, sharegpt, alt]))
    assert ds.issues == []
    a, b, c = ds.conversations
    assert a.messages == b.messages == c.messages
    assert [m.role for m in a.messages] == ["system", "user", "assistant"]


def test_multi_turn_rows_keep_every_turn_and_extra_keys_as_metadata(tmp_path):
    row = {
        "category": "multi_turn",
        "conversations": [
            {"from": "human", "value": "snr?"},
            {"from": "gpt", "value": "signal to noise."},
            {"from": "human", "value": "good value?"},
            {"from": "gpt", "value": "above -7 on LongFast is solid."},
        ],
    }
    (conv,) = read_dataset(rows_file(tmp_path, [row])).conversations
    assert len(conv.messages) == 4 and conv.replies[1].startswith("above")
    assert conv.category == "multi_turn" and conv.line == 1


def test_axolotl_chat_template_keys_point_at_custom_fields(tmp_path):
    row = {"dialog": [{"speaker": "human", "text": "hi"}, {"speaker": "bot", "text": "hello"}]}
    spec = DatasetSpec(
        path="x",
        type="chat_template",
        field_messages="dialog",
        message_property_mappings={"role": "speaker", "content": "text"},
        roles={"user": ["human"], "assistant": ["bot"]},
    )
    ds = read_dataset(rows_file(tmp_path, [row]), spec)
    assert ds.issues == []
    assert [m.role for m in ds.conversations[0].messages] == ["user", "assistant"]


def test_axolotl_sharegpt_type_reads_conversations_with_from_and_value(tmp_path):
    spec = DatasetSpec(path="x", type="sharegpt", conversation="llama3")
    ds = read_dataset(rows_file(tmp_path, [GOOD]), spec)
    assert ds.ok and len(ds.conversations) == 1
    wrong = read_dataset(rows_file(tmp_path, [{"messages": GOOD["conversations"]}]), spec)
    assert codes(wrong.issues) == ["E103"]


def test_blank_lines_bom_and_crlf_are_tolerated(tmp_path):
    path = tmp_path / "x.jsonl"
    line = json.dumps(GOOD).encode()
    path.write_bytes(
        b"\xef\xbb\xbf" + line + b"\r\n\r\n   \r\n" + line.replace(b"bob", b"amy") + b"\r\n"
    )
    ds = read_dataset(path)
    assert ds.issues == [] and [c.line for c in ds.conversations] == [1, 4]


# ---------------------------------------------------------------- every validation error


BAD_ROWS = {
    "E101": ('{"conversations": [', "invalid JSON"),
    "E102": ("[1, 2]", "not an object"),
    "E103": ({"conversations": []}, '"conversations" is empty'),
    "E104": (
        {"messages": [{"role": "tool", "content": "x"}, {"role": "assistant", "content": "y"}]},
        "unknown role 'tool'",
    ),
    "E105": (
        {"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "y"}]},
        "turn 1 (user) is empty",
    ),
    "E106": (
        {
            "messages": [
                {"role": "user", "content": "a"},
                {"role": "system", "content": "b"},
                {"role": "assistant", "content": "c"},
            ]
        },
        "system turn at position 2",
    ),
    "E107": (
        {
            "messages": [
                {"role": "user", "content": "a"},
                {"role": "user", "content": "b"},
                {"role": "assistant", "content": "c"},
            ]
        },
        "two user turns in a row",
    ),
    "E108": (
        {"messages": [{"role": "system", "content": "a"}, {"role": "user", "content": "b"}]},
        "no assistant turn",
    ),
    "E109": (
        {
            "messages": [
                {"role": "user", "content": "a"},
                {"role": "assistant", "content": "b"},
                {"role": "user", "content": "c"},
            ]
        },
        "last turn is user",
    ),
    "E110": (b'{"messages": "\xff\xfe"}', "invalid UTF-8"),
    "E111": ("x" * 1_000_001, "over the 1 MB limit"),
    "E112": (
        {"conversations": [{"from": "human"}, {"from": "gpt", "value": "b"}]},
        "turn 1 is not an object",
    ),
}


@pytest.mark.parametrize("code", sorted(BAD_ROWS))
def test_each_bad_row_gets_its_error_with_file_line_and_fix(tmp_path, code):
    row, message = BAD_ROWS[code]
    path = rows_file(tmp_path, [GOOD, row])
    ds = read_dataset(path)
    (issue,) = ds.issues
    assert issue.code == code and issue.line == 2 and message in issue.message
    text = str(issue)
    assert text.startswith(f"{path}:2: {code} ") and "; " in text and "\n" not in text
    assert len(ds.conversations) == 1  # the good row still reads


def test_more_content_errors_are_named():
    spec = DatasetSpec(path="x")
    for row, message in [
        (
            {"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "b"}]},
            "is a number",
        ),
        ({"messages": "hi"}, '"messages" is not a list'),
        ({"text": "hi"}, 'no "conversations" or "messages"'),
        ({"messages": [{"role": "assistant", "content": "a"}]}, "starts with the assistant"),
    ]:
        conv, issues = data.parse_row(json.dumps(row), spec, "f.jsonl", 7)
        assert conv is None and message in issues[0].message, (row, issues)


def test_every_problem_is_reported_not_only_the_first(tmp_path):
    path = rows_file(tmp_path, ["{", "3", GOOD, {"conversations": []}, b"\xff"])
    _, issues = check(path)
    errors = [i for i in issues if i.severity == "error"]
    assert [(i.line, i.code) for i in errors] == [
        (1, "E101"),
        (2, "E102"),
        (4, "E103"),
        (5, "E110"),
    ]


def test_a_missing_file_or_a_folder_is_one_clear_error(tmp_path):
    with pytest.raises(MeshtuneError, match="no such file"):
        read_dataset(tmp_path / "nope.jsonl")
    with pytest.raises(MeshtuneError, match="is a folder, not a regular file"):
        read_dataset(tmp_path)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(max_size=3000))
def test_check_never_crashes_on_random_bytes(tmp_path, blob):
    path = tmp_path / "random.jsonl"
    path.write_bytes(blob)
    _, issues = check(path)
    assert all(i.line is None or 1 <= i.line <= blob.count(b"\n") + 1 for i in issues)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20),
        lambda kids: (
            st.lists(kids, max_size=4)
            | st.dictionaries(
                st.sampled_from(
                    ["messages", "conversations", "role", "content", "from", "value", "category"]
                ),
                kids,
                max_size=4,
            )
        ),
        max_leaves=20,
    )
)
def test_check_never_crashes_on_random_json(tmp_path, value):
    path = rows_file(tmp_path, [json.dumps(value)])
    check(path)


# ---------------------------------------------------------------- lint: the guide's rules


def lint_rows(tmp_path, rows):
    return check(rows_file(tmp_path, rows))[1]


def test_long_replies_warn_over_200_chars_and_fail_over_300(tmp_path):
    issues = lint_rows(tmp_path, [chat("a?", "x " * 110), chat("b?", "y " * 160)])
    assert [(i.line, i.code) for i in issues if i.code in ("W201", "E113")] == [
        (1, "W201"),
        (2, "E113"),
    ]


def test_replies_over_one_160_byte_chunk_warn_with_the_chunk_count(tmp_path):
    reply = "é" * 81 + " ok"  # 84 characters but 165 bytes
    (issue,) = [i for i in lint_rows(tmp_path, [chat("a?", reply)]) if i.code == "W202"]
    assert "165 bytes: 2 radio chunks" in issue.message


def test_duplicates_conflicts_and_near_duplicates_are_told_apart(tmp_path):
    issues = lint_rows(
        tmp_path,
        [
            chat("how do I relay?", "DM 'name msg'."),
            chat("how do I relay?", "DM 'name msg'."),  # exact duplicate
            chat("how do I relay?", "Use a DM."),  # same prompt, other reply
            chat("How do i RELAY", "Send 'name msg' in a DM."),  # near duplicate
            {
                "conversations": [
                    {
                        "from": "human",
                        "value": build_prompt("how do i relay", history=[Line("A", "hi")]),
                    },
                    {"from": "gpt", "value": "DM the bot 'name msg'."},
                ]
            },  # same question, Mesh Master shape
        ],
    )
    assert [(i.line, i.code) for i in issues if i.code.startswith("W20")] == [
        (2, "W203"),
        (3, "W204"),
        (4, "W205"),
        (5, "W205"),
    ]


def test_canned_replies_and_repeated_openings_are_flagged(tmp_path):
    rows = [
        chat(f"question number {w}", "Check the app settings.") for w in ("one", "two", "three")
    ]
    rows += [chat(f"other question {i}", f"Great question, friend. Answer {i}.") for i in range(12)]
    rows += [chat(f"more {i}", f"Reply {i} starts its own way.") for i in range(12)]
    issues = lint_rows(tmp_path, rows)
    (canned,) = [i for i in issues if i.code == "W206"]
    assert canned.line == 1 and "3 different prompts" in canned.message
    (op,) = [i for i in issues if i.code == "W207"]
    assert "'great question friend'" in op.message and op.line == 4


def test_command_dumps_and_unknown_commands_name_the_command(tmp_path):
    issues = lint_rows(
        tmp_path,
        [
            chat("help", "/nodes /mail /weather /jokes /games"),
            chat("relay?", "Use /relay bob hi or /teleport."),
            chat("weather?", "Send /wx for the local forecast."),
        ],
    )
    found = [(i.line, i.code, i.message) for i in issues if i.code in ("W208", "W209")]
    assert found == [
        (1, "W208", "reply is a list of commands, not an explanation"),
        (2, "W209", "reply mentions /relay, listed as not working in Mesh Master"),
        (2, "W209", "reply mentions /teleport, not a command of Mesh Master"),
    ]


def test_commands_used_against_their_usage_get_their_own_codes(tmp_path):
    issues = lint_rows(
        tmp_path,
        [
            chat("wordle?", "Send /wordle to play."),
            chat("wordle how", "Send /wordle start, then /wordle guess crane."),
            chat("quiet?", "Send /stop and I go quiet.", channel=True),
            chat("quiet in dm?", "DM me /stop and I go quiet.", channel=True),
            chat("quiet here?", "Send /stop and I go quiet."),
            chat("bulletin?", "Send /bulletin for the news."),
        ],
    )
    found = [(i.line, i.code) for i in issues if i.code in ("W211", "W212", "W213")]
    assert found == [(1, "W211"), (3, "W212"), (6, "W213")]
    (alias,) = [i for i in issues if i.code == "W213"]
    assert "/bulletin instead of /motd" in alias.message and alias.fix == "write /motd"


def test_a_command_named_in_fewer_than_15_replies_warns_once_the_file_is_big_enough(tmp_path):
    filler = [chat(f"question {i}?", f"Plain answer number {i}.") for i in range(500)]
    taught = [chat(f"who is around {i}?", f"Try /nodes, take {i}.") for i in range(15)]
    rare = [chat(f"weather {i}?", f"Try /weather, take {i}.") for i in range(14)]
    issues = lint_rows(tmp_path, filler + taught + rare)
    (w214,) = [i for i in issues if i.code == "W214"]
    assert "/weather is named in 14 replies" in w214.message and w214.line == 516
    small = lint_rows(tmp_path, rare)  # below the guide's size only W210 speaks
    assert "W214" not in codes(small)


def test_the_channel_flag_is_read_from_the_row_and_kept_in_meta(tmp_path):
    ds = read_dataset(rows_file(tmp_path, [chat("a?", "b.", channel=True), chat("c?", "d.")]))
    on, off = ds.conversations
    assert on.channel and on.meta["channel"] is True
    assert not off.channel and "channel" not in off.meta


def test_dataset_size_outside_500_to_2000_warns(tmp_path):
    (size,) = [i for i in lint_rows(tmp_path, [GOOD]) if i.code == "W210"]
    assert size.line is None and "outside the guide's 500-2,000" in size.message


def test_a_clean_file_has_no_row_warnings(tmp_path):
    issues = lint_rows(
        tmp_path,
        [
            GOOD,
            chat(
                "is snr -12 ok on longfast?",
                "Yes, workable: LongFast decodes down to about -17.5 dB.",
            ),
        ],
    )
    assert codes(issues) == ["W210"]


# ---------------------------------------------------------------- the project's real files


def test_the_280_row_dataset_has_37_duplicate_rows_and_an_invented_bibleplan(real):
    ds, issues = check(real / "mesh_conversations_280.jsonl")
    assert ds.ok and len(ds.conversations) == 280
    assert sum(i.code == "W203" for i in issues) == 37
    assert [i for i in issues if i.code == "W209" and "/bibleplan" in i.message]
    assert all("/bibleplan" in i.message for i in issues if i.code == "W209")


def test_the_published_sample_uses_the_nonexistent_relay_command(real):
    _, issues = check(real / "mesh_conversations_sample.jsonl")
    relay = [i for i in issues if i.code == "W209"]
    assert relay and all("/relay" in i.message for i in relay)
    assert {i.line for i in relay} == {5, 8}


# ---------------------------------------------------------------- stats, split, convert


def test_stats_count_lengths_chunks_commands_and_openings(tmp_path):
    rows = [
        chat("a?", "Send /nodes to list them."),
        chat("b?", "é" * 90),
        chat("c?", "Try /wx, it is the forecast.", category="commands"),
    ]
    s = data.stats(read_dataset(rows_file(tmp_path, rows)).conversations)
    assert s["conversations"] == 3 and s["categories"] == {"(none)": 2, "commands": 1}
    assert s["reply_chars"]["max"] == 90 and s["reply_bytes"]["max"] == 180
    assert s["reply_chunks"] == {"1": 2, "2": 1}
    assert s["command_usage"] == {"/nodes": 1, "/weather": 1}
    assert s["top_openings"]["send nodes to"] == 1


def test_split_is_deterministic_and_keeps_near_duplicates_together(tmp_path):
    rows = [chat(f"question {i}?", f"answer {i}") for i in range(100)]
    rows += [chat("Question 7", "another answer"), chat("QUESTION 7!!", "third answer")]
    convs = read_dataset(rows_file(tmp_path, rows)).conversations
    train, evals = data.split(convs, 0.15, seed=3)
    assert (train, evals) == data.split(convs, 0.15, seed=3)
    assert data.split(convs, 0.15, seed=4)[1] != evals
    assert len(train) + len(evals) == 102 and 15 <= len(evals) <= 18
    sevens = [c for c in convs if data.prompt_key(c) == "question 7"]
    assert len(sevens) == 3
    assert all(c in evals for c in sevens) or all(c in train for c in sevens)
    assert {data.prompt_key(c) for c in train}.isdisjoint(data.prompt_key(c) for c in evals)


def test_split_command_writes_both_files_unchanged(tmp_path, cli):
    rows = [chat(f"q{i}", f"a{i}", category="x") for i in range(40)]
    path = rows_file(tmp_path, rows)
    r = cli("data", "split", path, "--eval-fraction", "0.25", "--seed", "1")
    assert r.code == 0, r.err
    train = (tmp_path / "chats.train.jsonl").read_text().splitlines()
    evals = (tmp_path / "chats.eval.jsonl").read_text().splitlines()
    assert len(evals) == 10 and len(train) == 30
    assert sorted(train + evals) == sorted(json.dumps(r) for r in rows)
    assert not list(tmp_path.glob(".*tmp*"))


def test_convert_round_trips_between_formats(tmp_path, cli):
    rows = [
        {
            "category": "radio",
            "conversations": [
                {"from": "system", "value": "s"},
                {"from": "human", "value": "q"},
                {"from": "gpt", "value": "a"},
            ],
        }
    ]
    src = rows_file(tmp_path, rows)
    assert cli("data", "convert", src, tmp_path / "o.jsonl", "--to", "openai").code == 0
    openai = json.loads((tmp_path / "o.jsonl").read_text())
    assert openai == {
        "category": "radio",
        "messages": [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "a"},
        ],
    }
    assert (
        cli("data", "convert", tmp_path / "o.jsonl", tmp_path / "s.jsonl", "--to", "sharegpt").code
        == 0
    )
    assert json.loads((tmp_path / "s.jsonl").read_text()) == rows[0]


# ---------------------------------------------------------------- the command line


def test_check_exit_codes_and_json_output(tmp_path, cli):
    good = rows_file(tmp_path, [GOOD], "good.jsonl")
    bad = rows_file(tmp_path, ["{", GOOD], "bad.jsonl")
    r = cli("data", "check", good)
    assert r.code == 0 and "0 errors, 1 warnings" in r.out
    assert cli("data", "check", good, "--strict").code == 1
    r = cli("data", "check", bad, "--json")
    assert r.code == 1
    report = json.loads(r.out)
    assert report["errors"] == 1 and report["issues"][0]["code"] == "E101"
    assert report["issues"][0]["line"] == 1 and report["by_code"]["E101 invalid-json"] == 1


def test_unreadable_input_is_one_line_on_stderr_without_traceback(tmp_path, cli):
    for args in (
        ["data", "check", tmp_path / "missing.jsonl"],
        ["data", "stats", tmp_path],
        ["data", "split", rows_file(tmp_path, [GOOD]), "--eval-fraction", "2"],
        ["data", "stats", rows_file(tmp_path, ["{"], "bad.jsonl")],
    ):
        r = cli(*args)
        assert r.code == 2, args
        assert r.err.startswith("error: ") and r.err.count("\n") == 1, r.err
        assert "Traceback" not in r.err + r.out


def test_split_refuses_a_file_with_errors_and_writes_nothing(tmp_path, cli):
    path = rows_file(tmp_path, [GOOD, "{"])
    r = cli("data", "split", path)
    assert r.code == 2 and ":2: E101" in r.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chats.jsonl"]
