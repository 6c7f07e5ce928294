"""The bot's knowledge path: `/meshtastic` and reference mode, reproduced byte for byte from
requests recorded by running the bot's own knowledge code on its shipped knowledge file."""

import json
from pathlib import Path

import pytest

from meshtune import meshmaster
from meshtune.errors import MeshtuneError
from meshtune.meshmaster import Line, build_request, parse_knowledge


def golden(real) -> list[dict]:
    path = real / "mesh-master-golden-knowledge.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def case_files(case: dict, real: Path, tmp_path: Path) -> list:
    """The case's config, with the bot's knowledge file where the config says it is, and its
    history: the `meshtune prompt` arguments an operator would type (no --knowledge)."""
    folder = tmp_path / case["id"].replace(":", "-")
    (folder / "data").mkdir(parents=True)
    kb = (real / case["knowledge_file"]).read_text(encoding="utf-8")
    (folder / "data" / "meshtastic_knowledge.txt").write_text(kb, encoding="utf-8")
    (folder / "config.json").write_text(json.dumps(case["config"]), encoding="utf-8")
    args = ["--mesh-master-config", folder / "config.json", "--sender", case["sender_shortname"]]
    if case["history"]:
        rows = "".join(json.dumps(h, ensure_ascii=False) + "\n" for h in case["history"])
        (folder / "history.jsonl").write_text(rows, encoding="utf-8")
        args += ["--history", folder / "history.jsonl"]
    if not case["is_direct"]:
        args.append("--channel")
    return args


def test_meshtune_prompt_reproduces_every_golden_knowledge_request_and_options(cli, real, tmp_path):
    cases = golden(real)
    assert len(cases) == 7
    assert {c["kind"] for c in cases} == {"meshtastic", "reference-followup"}
    for case in cases:
        result = cli("prompt", case["message"], *case_files(case, real, tmp_path), "--json")
        assert result.code == 0, (case["id"], result.err)
        body = json.loads(result.out)
        assert body["prompt"] == case["prompt"], case["id"]
        assert body["options"] == case["options"], case["id"]


def test_retrieval_picks_the_bots_titles_in_its_order(real):
    kb = meshmaster.load_knowledge(real / "mesh-master-meshtastic-knowledge.txt")
    for case in golden(real):
        titles = [c.title for c in kb.search(case["query"], meshmaster.SHIPPED.kb_max_chars)]
        assert titles == case["retrieved_titles"], case["id"]


def test_chunks_are_sections_with_paragraphs_merged_up_to_900_characters():
    long = "x" * 2000
    raw = f"# Title\n\n## Alpha\n\none\n\ntwo\n\n## Beta\n\n{long}\n\nthree\n\n## Empty\n\n"
    kb = parse_knowledge(raw, Path("kb.txt"))
    assert [(c.title, c.text) for c in kb.chunks] == [
        ("Alpha", "one\n\ntwo"),
        ("Beta", "x" * 900),
        ("Beta", "x" * 900),
        ("Beta", "x" * 200),
        ("Beta", "three"),
    ]


def test_a_chunk_that_would_overflow_the_budget_is_skipped_for_a_later_one_that_fits():
    big = "relay " * 140  # 839 characters: two fit in 2000, a third does not
    raw = f"## A\n{big}\n## B\n{big}\n## D\n{big}\n## C\nrelay tip"
    kb = parse_knowledge(raw, Path("kb.txt"))
    assert [c.title for c in kb.search("relay", max_chars=2000)] == ["A", "B", "C"]
    assert [c.title for c in kb.search("relay", max_chars=3000)] == ["A", "B", "D", "C"]


def test_a_question_nothing_matches_gets_the_bots_own_reply(cli, real):
    kb = real / "mesh-master-meshtastic-knowledge.txt"
    result = cli("prompt", "/meshtastic zzqx", "--knowledge", kb, "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out) == {"reply": meshmaster.NO_MATCH_REPLY}


def test_reference_mode_ends_with_exit_in_a_dm_but_not_on_a_channel(real):
    kb = meshmaster.load_knowledge(real / "mesh-master-meshtastic-knowledge.txt")
    start = [Line("K7QX", "/meshtastic what is the hop limit")]
    exited = [*start, Line("K7QX", "/exit")]
    dm = build_request("and the default?", history=start, knowledge=kb)
    assert dm.prompt.startswith(meshmaster.KNOWLEDGE_SYSTEM_PROMPT)
    after_exit = build_request("and the default?", history=exited, knowledge=kb)
    assert meshmaster.KNOWLEDGE_SYSTEM_PROMPT not in after_exit.prompt
    channel = build_request("/ai and the default?", history=exited, channel=True, knowledge=kb)
    assert channel.prompt.startswith(meshmaster.KNOWLEDGE_SYSTEM_PROMPT)
    other = build_request("hi", history=start, sender="W1AW", knowledge=kb)
    assert meshmaster.KNOWLEDGE_SYSTEM_PROMPT not in other.prompt


def test_reference_mode_times_out_after_the_configs_session_timeout(real):
    kb = meshmaster.load_knowledge(real / "mesh-master-meshtastic-knowledge.txt")
    start = [Line("K7QX", "/meshtastic what is the hop limit", at=1000.0)]
    limit = meshmaster.SHIPPED.session_seconds
    inside = build_request("more?", history=start, knowledge=kb, now=1000.0 + limit)
    assert inside.prompt.startswith(meshmaster.KNOWLEDGE_SYSTEM_PROMPT)
    late = build_request("more?", history=start, knowledge=kb, now=1001.0 + limit)
    assert meshmaster.KNOWLEDGE_SYSTEM_PROMPT not in late.prompt


def test_a_knowledge_request_without_the_file_is_a_one_line_error(cli, real, tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"meshtastic_knowledge_file": "kb/missing.txt"}))
    result = cli("prompt", "/meshtastic hop limit", "--mesh-master-config", config)
    assert result.code == 2
    assert str(tmp_path / "kb" / "missing.txt") in result.err
    assert "meshtastic_knowledge_file" in result.err
    result = cli("prompt", "/meshtastic hop limit")
    assert result.code == 2 and "--knowledge" in result.err
    with pytest.raises(MeshtuneError, match="knowledge file"):
        build_request("/meshtastic hop limit")


def test_a_bare_meshtastic_is_not_sent_to_the_model(real):
    kb = meshmaster.load_knowledge(real / "mesh-master-meshtastic-knowledge.txt")
    with pytest.raises(MeshtuneError, match="no question"):
        build_request("/meshtastic", knowledge=kb)


def test_the_budget_key_is_clamped_as_the_bot_clamps_it(tmp_path):
    for value, budget in ((500, 2000), (5000, 5000), (99999, 12000)):
        config = tmp_path / "config.json"
        config.write_text(json.dumps({"meshtastic_kb_max_context_chars": value}))
        assert meshmaster.load_config(config).kb_max_chars == budget


def test_meshtune_prompt_reads_history_times_and_at_for_the_session_timeout(cli, real, tmp_path):
    history = tmp_path / "history.jsonl"
    line = {"from": "K7QX", "text": "/meshtastic what is the hop limit", "ai": False, "at": 100}
    history.write_text(json.dumps(line) + "\n", encoding="utf-8")
    kb = real / "mesh-master-meshtastic-knowledge.txt"
    args = ("prompt", "more?", "--knowledge", kb, "--history", history, "--at")
    assert meshmaster.KNOWLEDGE_SYSTEM_PROMPT in cli(*args, "200").out
    assert meshmaster.KNOWLEDGE_SYSTEM_PROMPT not in cli(*args, "100000").out
    history.write_text(json.dumps({**line, "at": "noon"}) + "\n", encoding="utf-8")
    bad = cli(*args, "200")
    assert bad.code == 2 and f"{history}:1: `at` must be a time in seconds" in bad.err
