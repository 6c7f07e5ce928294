"""One builder, three callers: a training row rendered for Mesh Master, the eval's request for a
suite item and `meshtune prompt` are the same string for the same inputs."""

import json

import pytest

from meshtune import meshmaster
from meshtune.data import Conversation, Message
from meshtune.errors import MeshtuneError
from meshtune.evaluate.profiles import build_request, get_profile
from meshtune.recipe import MeshMasterRequests
from meshtune.rendering import render
from meshtune.suites import Item

TURNS = [
    ("user", "my node keeps rebooting on solar"),
    ("assistant", "Likely a brownout: check the battery under load."),
    ("user", "what size battery then?"),
]
REPLY = "A 18650 pair (about 6 Ah) rides out a cloudy day for most nodes."


def conversation(channel: bool, line: int = 1, turns=TURNS) -> Conversation:
    messages = tuple(Message(r, t) for r, t in [*turns, ("assistant", REPLY)])
    return Conversation(messages, line, {"category": "power", "channel": channel})


@pytest.mark.parametrize(
    ("channel", "turns"), [(False, TURNS[-1:]), (True, TURNS)], ids=["dm", "channel-thread"]
)
def test_training_row_eval_request_and_meshtune_prompt_are_one_string(
    cli, tmp_path, channel, turns
):
    spec = MeshMasterRequests(share=1.0, senders=["K7QX"])
    row = render([conversation(channel, turns=turns)], spec, seed=0)[0]
    assert [m.role for m in row.messages] == ["user", "assistant"]
    assert row.messages[1].content == REPLY  # only the reply is trained

    item = Item(id="x", messages=[{"role": r, "content": t} for r, t in turns], channel=channel)
    request = build_request(item, get_profile("meshmaster"), meshmaster.DEFAULT_SYSTEM_PROMPT)

    args = ["prompt", f"/ai {turns[-1][1]}" if channel else turns[-1][1]]
    if len(turns) > 1:
        history = tmp_path / "history.jsonl"
        history.write_text(
            "".join(
                json.dumps({"from": "K7QX", "text": t, "ai": r == "assistant"}) + "\n"
                for r, t in turns[:-1]
            )
        )
        args += ["--history", history]
    printed = cli(*args, *(["--channel"] if channel else []))
    assert printed.code == 0, printed.err

    assert row.messages[0].content == request.prompt == printed.out.removesuffix("\n")
    assert ("my node keeps rebooting" in request.prompt) == channel


def test_a_multi_turn_dm_stays_a_plain_chat():
    """The bot would show the model only placeholders for the earlier turns, and the last reply
    builds on them: rendered, it would teach guessing."""
    dm = conversation(channel=False)
    assert render([dm], MeshMasterRequests(share=1.0), seed=0) == [dm]
    item = Item(id="x", messages=[{"role": r, "content": t} for r, t in TURNS])
    asked = build_request(item, get_profile("meshmaster"), "SYS").prompt
    assert "my node keeps rebooting" not in asked  # and the eval asks it as the bot does


def test_rendering_is_deterministic_and_renders_the_chosen_share(tmp_path):
    convs = [conversation(channel=i % 3 == 0, line=i, turns=TURNS[-1:]) for i in range(40)]
    spec = MeshMasterRequests(share=0.25)
    first, again = render(convs, spec, seed=7), render(convs, spec, seed=7)
    assert first == again
    rendered = [c for c in first if "persona" in c.meta]
    assert len(rendered) == 10
    assert render(convs, spec, seed=8) != first  # the seed chooses
    assert all(c.messages[0].content.endswith("\nAnswer:") for c in rendered)
    assert {c.meta["sender"] for c in rendered} > {"K7QX"}  # shortnames vary


def test_rows_the_bot_cannot_send_stay_plain():
    slash = Conversation((Message("user", "/weather denver"), Message("assistant", "x")), 1)
    system = Conversation(
        (Message("system", "Be a pirate."), Message("user", "hi"), Message("assistant", "Arr")), 2
    )
    out = render([slash, system], MeshMasterRequests(share=1.0), seed=0)
    assert out == [slash, system]


def test_personas_are_sampled_from_the_list_and_unknown_ones_fail(real):
    convs = [conversation(channel=False, line=i, turns=TURNS[-1:]) for i in range(30)]
    spec = MeshMasterRequests(
        share=1.0,
        personas=["trail", "medic"],
        personas_file=str(real / "mesh-master-personas.json"),
    )
    out = render(convs, spec, seed=1)
    assert {c.meta["persona"] for c in out} == {"trail", "medic"}
    medic = next(c for c in out if c.meta["persona"] == "medic")
    assert "🩺 Current persona: Medic (medic)" in medic.messages[0].content
    with pytest.raises(MeshtuneError, match="unknown persona 'medic'"):
        render(convs, MeshMasterRequests(share=1.0, personas=["medic"]), seed=1)


def test_packed_rows_compute_the_bots_system_block_once_per_row(smol_tokenizer):
    """Rendered requests are packed together, each sharing its row's system block (the ~200
    tokens of Mesh Master's text in every request) instead of computing it again."""
    from meshtune import chat
    from meshtune.train import flatten, pack, shared_len

    plain = [
        Conversation(
            (Message("user", f"question {i} about antennas?"), Message("assistant", REPLY))
        )
        for i in range(12)
    ]
    convs = render(plain[:6], MeshMasterRequests(share=1.0), seed=0) + plain[6:]
    examples = [
        chat.encode(smol_tokenizer, chat.with_system(c, meshmaster.DEFAULT_SYSTEM_PROMPT), 2048)
        for c in convs
    ]
    is_rendered = {id(e): i < 6 for i, e in enumerate(examples)}
    block = len(smol_tokenizer(meshmaster.FRUSTRATION_GUIDANCE)["input_ids"])
    rows = pack(examples, 1024, True, seed=3)
    mixed = [row for row in rows if len({is_rendered[id(e)] for e in row}) > 1]
    assert len(mixed) <= 1  # only where the rendered group ends
    for row in rows:
        if is_rendered[id(row[0])]:
            assert all(shared_len(row[0], e) > block for e in row[1:] if is_rendered[id(e)])
    computed = sum(len(flatten([r]).input_ids) for r in rows)
    assert computed < 0.6 * sum(len(e.input_ids) for e in examples)


# ---------------------------------------------------------------- the knowledge path


KB_TURNS = [("user", "/meshtastic what bandwidth does longfast use")]
KB_REPLY = "LongFast uses 250 kHz [1]."


def kb_row(turns, channel=False, reply=KB_REPLY) -> Conversation:
    messages = tuple(Message(r, t) for r, t in [*turns, ("assistant", reply)])
    return Conversation(messages, 1, {"category": "knowledge", "channel": channel})


@pytest.mark.parametrize("channel", [False, True], ids=["dm", "channel"])
def test_a_meshtastic_row_is_trained_and_evaluated_on_the_same_excerpts(cli, channel):
    spec = MeshMasterRequests(share=1.0, senders=["K7QX"])
    row = render([kb_row(KB_TURNS, channel)], spec, seed=0)[0]
    item = Item(id="kb", prompt=KB_TURNS[0][1], channel=channel)
    request = build_request(item, get_profile("meshmaster"), meshmaster.DEFAULT_SYSTEM_PROMPT)
    printed = cli("prompt", KB_TURNS[0][1], "--knowledge", meshmaster.OWN_KNOWLEDGE)
    assert row.messages[0].content == request.prompt == printed.out.removesuffix("\n")
    assert request.prompt.startswith(meshmaster.KNOWLEDGE_SYSTEM_PROMPT[:40])
    assert "Question: what bandwidth does longfast use" in request.prompt  # no /ai on a channel
    assert row.messages[1].content == KB_REPLY


def test_a_follow_up_in_reference_mode_is_sent_with_the_excerpts():
    turns = [*KB_TURNS, ("assistant", KB_REPLY), ("user", "and its spreading factor?")]
    spec = MeshMasterRequests(share=1.0, senders=["K7QX"])
    row = render([kb_row(turns, reply="SF11 [1].")], spec, seed=0)[0]
    assert len(row.messages) == 2  # a multi-turn DM, rendered because reference mode holds
    assert row.messages[0].content.startswith(meshmaster.KNOWLEDGE_SYSTEM_PROMPT[:40])
    assert "Question: and its spreading factor?" in row.messages[0].content
    item = Item(id="f", messages=[{"role": r, "content": t} for r, t in turns])
    assert item.kind == "follow-up"
    request = build_request(item, get_profile("meshmaster"), meshmaster.DEFAULT_SYSTEM_PROMPT)
    assert request.prompt == row.messages[0].content


def test_a_meshtastic_question_the_retrieval_finds_nothing_for_stays_a_plain_chat():
    spec = MeshMasterRequests(share=1.0, senders=["K7QX"])
    conv = kb_row([("user", "/meshtastic zzqx")], reply="I don't have enough MeshTastic data.")
    assert render([conv], spec, seed=0)[0] == conv  # the bot answers it without the model
