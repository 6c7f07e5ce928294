"""`meshtune kb check`: per knowledge item, whether the bot's retrieval hands the model each
required fact, and whether Ollama's cut at num_ctx leaves it there."""

import json

from meshtune.suites import load_suite


def suite_file(tmp_path, *items: dict):
    path = tmp_path / "suite.jsonl"
    path.write_text("".join(json.dumps(i) + "\n" for i in items), encoding="utf-8")
    return path


def item(id_: str, question: str, *facts: str) -> dict:
    return {
        "id": id_,
        "category": "knowledge",
        "prompt": f"/meshtastic {question}",
        "expect_all": list(facts),
    }


# Two ~800-character sections that match a "preset" question weakly: retrieved after the
# LongFast section, they push it out of the tail Ollama keeps at a small num_ctx.
FILLER = "Any preset works with these. " + " ".join(
    f"Antenna note {i}: keep cables short and mounts high." for i in range(14)
)


def knowledge_file(tmp_path):
    text = (
        "# Field guide\n\n## LongFast preset\nLongFast uses SF11 and 250 kHz.\n\n"
        f"## Antenna notes\n{FILLER}\n\n## More antenna notes\n{FILLER}\n"
    )
    path = tmp_path / "kb.txt"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_fact_is_seen_not_retrieved_or_cut_and_the_hit_rate_counts_the_seen(cli, tmp_path):
    suite = suite_file(
        tmp_path,
        item("found", "longfast preset spreading factor", "SF11"),
        item("absent", "longfast preset hop limit", "re:hop limit 3"),
    )
    result = cli("kb", "check", knowledge_file(tmp_path), "--suite", suite, "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    found, absent = report["results"]
    assert found["hit"] and found["facts"] == [{"fact": "SF11", "excerpt": 1, "seen": True}]
    assert found["titles"][0] == "LongFast preset"
    assert not absent["hit"] and absent["facts"][0]["excerpt"] is None
    assert report["hit_rate"] == 0.5 and report["num_ctx"] == 1024


def test_a_retrieved_fact_in_the_dropped_middle_is_reported_cut(cli, tmp_path):
    suite = suite_file(tmp_path, item("cut", "longfast preset", "SF11"))
    kb = knowledge_file(tmp_path)
    wide = json.loads(cli("kb", "check", kb, "--suite", suite, "--json").out)["results"][0]
    assert wide["hit"]
    result = cli("kb", "check", kb, "--suite", suite, "--num-ctx", "300")
    assert result.code == 0, result.err
    assert "retrieved: LongFast preset; Antenna notes; More antenna notes" in result.out
    assert "in [1], cut by Ollama's truncation" in result.out
    assert "hit rate 0/1 = 0%" in result.out


def test_the_shipped_knowledge_suite_has_twenty_meshtastic_items_with_facts():
    suite = load_suite("knowledge")
    assert len(suite.items) == 20
    assert all(i.question.startswith("/meshtastic ") for i in suite.items)
    assert all(i.expect_all or i.expect_any for i in suite.items)


def test_a_suite_without_knowledge_items_and_a_missing_file_are_one_line_errors(cli, tmp_path):
    result = cli("kb", "check", knowledge_file(tmp_path), "--suite", "quick")
    assert result.code == 2 and "no knowledge items" in result.err
    result = cli("kb", "check", tmp_path / "nope.txt")
    assert result.code == 2 and "nope.txt" in result.err


def test_meshtunes_own_knowledge_file_hands_the_model_more_facts_than_the_shipped_one(
    real, smol_tokenizer
):
    from meshtune import kbcheck, meshmaster

    suite = load_suite("knowledge")
    system = meshmaster.DEFAULT_SYSTEM_PROMPT
    rates = {}
    for name, path in (
        ("shipped", real / "mesh-master-meshtastic-knowledge.txt"),
        ("own", meshmaster.OWN_KNOWLEDGE),
    ):
        kb = meshmaster.load_knowledge(path)
        rates[name] = kbcheck.check(kb, suite, meshmaster.SHIPPED, smol_tokenizer, system).hit_rate
    assert rates["own"] >= 0.9 > 0.5 > rates["shipped"]
