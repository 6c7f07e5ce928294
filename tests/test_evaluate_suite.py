"""Suites: the format of DESIGN.md, built-ins, `file:line` errors; profiles: the request the
deployed model receives; the gate: defaults, YAML overrides and the verdict."""

import json

import pytest
from tests.conftest import rows_file

from meshtune import meshmaster
from meshtune.errors import MeshtuneError
from meshtune.evaluate.gate import GateConfig, judge, load_gate
from meshtune.evaluate.profiles import build_request, get_profile, modelfile_options
from meshtune.suites import load_suite

GOOD = {
    "id": "relay-01",
    "category": "relay",
    "prompt": "How do I relay to alice?",
    "expect_any": ["alice"],
    "expect_all": [],
    "forbid": ["/relay"],
    "max_chars": 200,
}


def test_quick_suite_is_the_guides_four_prompts():
    suite = load_suite("quick")
    assert [i.prompt for i in suite.items] == [
        "How do I relay to alice?",
        "Hey are you there?",
        "What's a good SNR?",
        "Tell me a joke",
    ]
    relay, _, snr, joke = suite.items
    assert relay.expect_any == ("alice",) and "/relay" in relay.forbid
    assert any("db" in s for s in snr.expect_any)
    assert joke.max_chars <= 160


def test_mesh_suite_is_the_shipped_file():
    suite = load_suite("mesh")
    assert suite.path.endswith("data/eval/mesh_eval.jsonl")
    assert len(suite.items) >= 150 and len(suite.categories) >= 5


def test_items_may_carry_a_channel_flag_and_a_good_and_a_bad_reply(tmp_path):
    row = {**GOOD, "channel": True, "good": "DM me 'alice hi'.", "bad": "Use /relay alice."}
    (item,) = load_suite(str(rows_file(tmp_path, [row], "s.jsonl"))).items
    assert item.channel and item.good == "DM me 'alice hi'." and item.bad == "Use /relay alice."
    (plain,) = load_suite(str(rows_file(tmp_path, [GOOD], "t.jsonl"))).items
    assert not plain.channel and plain.good is None


def test_defaults_and_messages_items(tmp_path):
    rows = [
        {"id": "a", "prompt": "hi"},
        {
            "id": "b",
            "category": "multi",
            "messages": [
                {"role": "user", "content": "whats snr"},
                {"role": "assistant", "content": "Signal to noise, in dB."},
                {"role": "user", "content": "and a good one?"},
            ],
        },
    ]
    suite = load_suite(str(rows_file(tmp_path, rows, "s.jsonl")))
    a, b = suite.items
    assert a.max_chars == 200 and a.category == "general" and a.expect_any == ()
    assert b.question == "and a good one?" and len(b.turns) == 3
    assert suite.name == "s"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "invalid JSON"),
        ("[1, 2]", "not a JSON object"),
        (json.dumps({**GOOD, "forbidd": ["x"]}), "unknown key 'forbidd'"),
        (json.dumps({"id": "x"}), "exactly one of `prompt` and `messages`"),
        (json.dumps({**GOOD, "messages": [{"role": "user", "content": "x"}]}), "exactly one"),
        (
            json.dumps(
                {
                    "id": "x",
                    "messages": [
                        {"role": "user", "content": "q"},
                        {"role": "assistant", "content": "a"},
                    ],
                }
            ),
            "must end with a user turn",
        ),
        (json.dumps({**GOOD, "expect_any": "alice"}), "'expect_any'"),
        (json.dumps({**GOOD, "max_chars": 0}), "'max_chars'"),
        (json.dumps({**GOOD, "allow_commands": ["optout"]}), "write it as /name"),
        (json.dumps({**GOOD, "stance": "maybe"}), "'stance'"),
    ],
)
def test_bad_lines_are_reported_with_file_and_line(tmp_path, line, message):
    path = rows_file(tmp_path, [GOOD, "", line], "bad.jsonl")
    with pytest.raises(MeshtuneError) as e:
        load_suite(str(path))
    assert str(e.value).startswith(f"{path}:3: ")
    assert message in str(e.value)


def test_duplicate_id_names_both_lines(tmp_path):
    path = rows_file(tmp_path, [GOOD, GOOD], "dup.jsonl")
    with pytest.raises(MeshtuneError, match=r"dup.jsonl:2: id 'relay-01' already used on line 1"):
        load_suite(str(path))


def test_unknown_suite_name_is_an_error():
    with pytest.raises(MeshtuneError, match="not a built-in suite"):
        load_suite("nosuchsuite")


# ---------------------------------------------------------------- profiles


def test_meshmaster_request_is_system_prompt_plus_mesh_masters_prompt_string():
    item = load_suite("quick").items[0]
    req = build_request(item, get_profile("meshmaster"), meshmaster.DEFAULT_SYSTEM_PROMPT)
    assert req.messages == [
        {"role": "system", "content": meshmaster.DEFAULT_SYSTEM_PROMPT},
        {"role": "user", "content": meshmaster.build_prompt("How do I relay to alice?")},
    ]
    assert req.prompt.endswith("Question: How do I relay to alice?\nAnswer:")
    assert req.profile.options == meshmaster.SHIPPED.options()  # num_ctx from the config


def test_earlier_turns_are_the_bots_log_under_meshmaster(tmp_path):
    """In a DM the bot logs no words, only placeholders; on a channel the thread keeps them."""
    messages = [
        {"role": "user", "content": "whats snr"},
        {"role": "assistant", "content": "Signal to noise, in dB."},
        {"role": "user", "content": "and a good one?"},
    ]
    rows = [{"id": "dm", "messages": messages}, {"id": "ch", "messages": messages, "channel": True}]
    dm, ch = load_suite(str(rows_file(tmp_path, rows))).items
    req = build_request(dm, get_profile("meshmaster"), "SYS")
    assert req.system == "SYS" and len(req.turns) == 1
    placeholders = "K7QX: 📨 dm received\nNode_Mesh Master: 📨 dm received\nK7QX: 📨 dm received"
    assert f"Context:\n{placeholders}\n\nQuestion: and a good one?\nAnswer:" in req.prompt
    thread = "K7QX: whats snr\nNode_Mesh Master: Signal to noise, in dB."
    channel = build_request(ch, get_profile("meshmaster"), "SYS").prompt
    assert channel.endswith(f"Context:\n{thread}\n\nQuestion: and a good one?\nAnswer:")
    item = dm
    plain = build_request(item, get_profile("modelfile"), "SYS")
    assert [t["content"] for t in plain.turns] == [t.content for t in item.turns]


def test_an_items_own_system_turn_replaces_the_deployment_prompt(tmp_path):
    rows = [
        {
            "id": "s",
            "messages": [
                {"role": "system", "content": "Be a pirate."},
                {"role": "user", "content": "hi"},
            ],
        }
    ]
    item = load_suite(str(rows_file(tmp_path, rows))).items[0]
    req = build_request(item, get_profile("meshmaster"), "SYS")
    assert req.system == "Be a pirate." and req.own_system


def test_profiles_differ_only_where_documented():
    mm = get_profile("meshmaster")
    assert get_profile("no-penalty").options == {**mm.options, "repeat_penalty": 1.0}
    greedy = get_profile("greedy")
    assert greedy.options["temperature"] == 0 and not greedy.sampled and mm.sampled
    modelfile = get_profile("modelfile")
    assert not modelfile.mesh_master_prompt and modelfile.options["repeat_penalty"] == 1.15
    with pytest.raises(MeshtuneError, match="unknown profile"):
        get_profile("fast")


def test_modelfile_parameters_come_from_the_modelfile_then_the_recipe(tmp_path):
    assert modelfile_options(tmp_path) is None
    (tmp_path / "recipe.yaml").write_text("ollama:\n  temperature: 0.3\n  num_ctx: 2048\n")
    assert modelfile_options(tmp_path)["temperature"] == 0.3
    (tmp_path / "Modelfile").write_text(
        "FROM ./m.gguf\nPARAMETER temperature 0.4\nPARAMETER num_predict 120\n"
        'PARAMETER stop "<|im_end|>"\n'
    )
    opts = modelfile_options(tmp_path)
    assert opts["temperature"] == 0.4 and opts["num_predict"] == 120 and "stop" not in opts
    assert get_profile("modelfile", opts).num_predict == 120


# ---------------------------------------------------------------- gate


def _summary(**over) -> dict:
    s = {
        "loop_rate": 0.0,
        "runaway_rate": 0.0,
        "invented_command_rate": 0.0,
        "wrong_command_rate": 0.0,
        "command_dump_rate": 0.0,
        "canned_rate": 0.0,
        "pass_rate": 0.8,
        "chars": {"p50": 110.0, "p90": 180.0, "max": 210.0},
    }
    return {**s, **over}


ROW = {
    "item": "i",
    "sample": 0,
    "question": "q",
    "reply": "r " * 120,
    "failures": ["loop"],
    "loop": "x",
    "runaway": False,
    "invented_commands": [],
    "command_dump": False,
    "passed": False,
    "chars": 240,
}


def test_default_gate_passes_a_good_summary_and_names_each_failure():
    assert judge(_summary(), [], GateConfig()).ready
    v = judge(
        _summary(loop_rate=0.01, pass_rate=0.5, chars={"p50": 160, "p90": 240, "max": 300}),
        [ROW],
        GateConfig(),
    )
    assert not v.ready and v.label == "NOT READY"
    assert [c.name for c in v.failing] == ["loops", "p90 length", "median length", "item pass rate"]
    assert v.failing[0].examples == [ROW]


def test_a_real_command_for_the_wrong_job_is_its_own_gate_criterion_apart_from_invented():
    wrong = {**ROW, "failures": ["wrong-command"], "loop": None, "wrong_commands": ["/save"]}
    wrong["reasons"] = [
        "names /save, not a command for this question (a right answer names no command)"
    ]
    v = judge(_summary(wrong_command_rate=0.05), [wrong], GateConfig())
    assert [c.name for c in v.failing] == ["wrong commands"]
    assert v.failing[0].limit == "<= 0.02"
    assert v.to_dict()["criteria"][3]["examples"][0]["reasons"] == wrong["reasons"]
    assert judge(_summary(wrong_command_rate=0.02), [wrong], GateConfig()).ready
    # a report written before the rate was measured is judged on what it has
    old = _summary()
    del old["wrong_command_rate"]
    assert "wrong commands" not in [c.name for c in judge(old, [], GateConfig()).criteria]


def test_each_criterion_is_given_per_request_kind():
    kinds = {
        "dm": _summary(pass_rate=0.7, wrong_command_rate=0.01),
        "/meshtastic": _summary(pass_rate=0.4, chars={"p50": 90.0, "p90": 150.0, "max": 160.0}),
    }
    v = judge(_summary(kinds=kinds), [], GateConfig())
    by = {c.name: c.by_kind for c in v.criteria}
    assert by["item pass rate"] == {"dm": 0.7, "/meshtastic": 0.4}
    assert by["wrong commands"] == {"dm": 0.01, "/meshtastic": 0.0}
    assert by["p90 length"] == {"dm": 180.0, "/meshtastic": 150.0}
    assert v.to_dict()["criteria"][-1]["by_kind"] == {"dm": 0.7, "/meshtastic": 0.4}


def test_technical_dm_replies_that_are_neither_right_nor_a_pointer_are_a_gate_criterion():
    wrong = {**ROW, "failures": ["forbidden"], "loop": None, "answer": "wrong"}
    split = {"replies": 30, "correct": 0.5, "pointer": 0.3, "wrong": 0.2}
    v = judge(_summary(technical=split), [wrong], GateConfig())
    assert [c.name for c in v.failing] == ["technical wrong"]
    assert v.failing[0].limit == "<= 0.1" and v.failing[0].examples == [wrong]
    ok = {"replies": 30, "correct": 0.3, "pointer": 0.6, "wrong": 0.1}
    assert judge(_summary(technical=ok), [], GateConfig()).ready
    # a suite without technical DM items (or an older report) is not judged on it
    none = {"replies": 0, "correct": 0.0, "pointer": 0.0, "wrong": 0.0}
    assert "technical wrong" not in [
        c.name for c in judge(_summary(technical=none), [], GateConfig()).criteria
    ]


def test_gate_yaml_overrides_thresholds_and_null_switches_one_off(tmp_path):
    path = tmp_path / "gate.yaml"
    path.write_text("min_pass_rate: 0.4\nmax_loop_rate: null\nmedian_chars: [60, 170]\n")
    cfg = load_gate(path)
    v = judge(
        _summary(loop_rate=0.3, pass_rate=0.5, chars={"p50": 165, "p90": 190, "max": 1}), [ROW], cfg
    )
    assert v.ready and "loops" not in [c.name for c in v.criteria]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("min_pass: 0.5\n", "unknown key 'min_pass'"),
        ("median_chars: [150, 80]\n", "lower bound"),
        ("max_loop_rate: [\n", "not valid YAML"),
        ("max_loop_rate: 0.1 # \udcff\n", "invalid UTF-8 at byte 21"),
    ],
)
def test_bad_gate_files_are_one_line_errors(tmp_path, text, message):
    path = tmp_path / "gate.yaml"
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(MeshtuneError, match=message):
        load_gate(path)
