"""Knowledge items (`/meshtastic` questions and reference-mode follow-ups) are scored by what
the model saw. Where the bot's retrieval delivered the answer (every fact in an excerpt that
Ollama's cut at num_ctx leaves), the item's checks apply and the refusal fails; where it did
not, the only passing reply is the bot's "I don't have enough MeshTastic data for that."

These run `meshtune eval --replies` on stored replies: meshtune's own knowledge file, the
embedded model's real tokenizer and the real truncation, no model call.
"""

import json
from dataclasses import replace

import pytest
from tests.conftest import rows_file

from meshtune import meshmaster
from meshtune.evaluate import load_result, score_replies
from meshtune.suites import load_suite

REFUSAL = meshmaster.REFUSAL
KB = {i.id: i.model_dump(exclude_none=True) for i in load_suite("knowledge").items}
WIDE, NARROW = 8192, 64  # at 64 tokens Ollama keeps the question and no excerpt
RIGHT, WRONG = "LongFast uses SF11 at 250 kHz [1].", "LongFast uses SF7 [1]."
FOLLOW_UP = {
    "id": "fu",
    "category": "knowledge",
    "messages": [
        {"role": "user", "content": "/meshtastic what spreading factor does longfast use"},
        {"role": "assistant", "content": "LongFast uses SF11 [1]."},
        {"role": "user", "content": "and how wide is its bandwidth"},
    ],
    "expect_all": ["re:\\b250 ?khz"],
}
# Not in the knowledge file: no facts, so only the refusal is right.
NOT_IN_FILE = {
    "id": "price",
    "category": "knowledge",
    "prompt": "/meshtastic what does a tbeam cost",
}


@pytest.fixture
def suite(tmp_path):
    items = [KB["kb-01"], KB["kb-02"], FOLLOW_UP, NOT_IN_FILE]
    return rows_file(tmp_path, items, "suite.jsonl")


def score(cli, tmp_path, suite, num_ctx, replies):
    """`meshtune eval --replies` at Ollama's num_ctx (replies as (item, text) or as rows);
    the CLI's result, the scored rows and the summary."""
    config = tmp_path / f"config-{num_ctx}.json"
    config.write_text(json.dumps({"ollama_num_ctx": num_ctx}))
    lines = [r if isinstance(r, dict) else {"item": r[0], "reply": r[1]} for r in replies]
    given = rows_file(tmp_path, lines, "replies.jsonl")
    out = tmp_path / f"out-{num_ctx}"
    args = ("eval", "--replies", given, "--suite", suite, "--mesh-master-config", config)
    r = cli(*args, "--out", out)
    assert r.code in (0, 1), r.err
    rows = [json.loads(line) for line in (out / "replies.jsonl").read_text().splitlines()]
    return r, rows, load_result(out).summary


def test_a_delivered_item_passes_answered_right_and_fails_refusing_or_with_a_wrong_number(
    cli, tmp_path, suite
):
    both = f"{RIGHT} {REFUSAL}"  # the answer, then the refusal that contradicts it
    replies = [("kb-01", RIGHT), ("kb-01", REFUSAL), ("kb-01", WRONG), ("kb-01", both)]
    _, rows, _ = score(cli, tmp_path, suite, WIDE, replies)
    assert [r["delivered"] for r in rows] == [True, True, True, True]
    assert [r["passed"] for r in rows] == [True, False, False, False]
    assert rows[1]["failures"] == ["missing-required", "refused"]
    assert "refuses, though the excerpts the model saw hold the answer" in rows[1]["reasons"]
    assert rows[2]["failures"] == ["missing-required"]
    assert rows[3]["failures"] == ["refused"]
    assert [r["cited"] for r in rows] == [True, False, True, True]


def test_an_answer_cut_by_ollamas_truncation_is_not_delivered_and_only_the_refusal_passes(
    cli, tmp_path, suite
):
    # kb check (the same delivery logic) says why: retrieved as excerpt [1], then cut.
    r = cli(
        "kb", "check", meshmaster.OWN_KNOWLEDGE, "--suite", suite, "--num-ctx", NARROW, "--json"
    )
    kb01 = json.loads(r.out)["results"][0]
    assert kb01["facts"][0]["excerpt"] == 1 and not kb01["facts"][0]["seen"]
    replies = [
        ("kb-01", REFUSAL),
        ("kb-01", "I don’t have enough Meshtastic data for that"),  # curly, case, no period
        ("kb-01", f"'{REFUSAL}'"),  # quoted, as the prompt quotes it
        ("kb-01", RIGHT),  # right, but the model cannot have read it
        ("kb-01", f"{REFUSAL} Try SF11."),
        ("kb-01", ""),
    ]
    _, rows, _ = score(cli, tmp_path, suite, NARROW, replies)
    assert {r["delivered"] for r in rows} == {False}
    assert [r["passed"] for r in rows] == [True, True, True, False, False, False]
    assert rows[3]["failures"] == ["not-refused"]  # the item's fact is not checked
    assert rows[3]["reasons"] == [
        "the excerpts the model saw do not hold the answer, so the only right reply is the "
        f"bot's '{REFUSAL}'"
    ]


def test_an_item_whose_answer_is_not_in_the_knowledge_file_expects_the_refusal(
    cli, tmp_path, suite
):
    replies = [("price", REFUSAL), ("price", "A T-Beam costs about $40 [1].")]
    _, rows, _ = score(cli, tmp_path, suite, WIDE, replies)
    assert [(r["delivered"], r["passed"]) for r in rows] == [(False, True), (False, False)]


def test_a_follow_up_is_scored_by_the_excerpts_of_its_reference_mode(cli, tmp_path, suite):
    replies = [("fu", "250 kHz [1]."), ("fu", REFUSAL)]
    _, wide, s = score(cli, tmp_path, suite, WIDE, replies)
    assert [(r["kind"], r["delivered"], r["passed"]) for r in wide] == [
        ("follow-up", True, True),
        ("follow-up", True, False),
    ]
    assert s["knowledge"]["follow-up"]["delivered"] == {
        "items": 1, "replies": 2, "pass_rate": 0.5, "citation_rate": 0.5
    }  # fmt: skip
    _, narrow, s = score(cli, tmp_path, suite, NARROW, replies)
    assert [(r["delivered"], r["passed"]) for r in narrow] == [(False, False), (False, True)]
    assert s["knowledge"]["follow-up"]["undelivered"]["refusal_rate"] == 0.5


def test_the_refusal_to_several_items_is_not_a_canned_reply(cli, tmp_path, suite):
    replies = [("kb-01", REFUSAL), ("kb-02", REFUSAL), ("price", REFUSAL)]
    _, rows, s = score(cli, tmp_path, suite, NARROW, replies)
    assert all(r["passed"] for r in rows) and s["canned_rate"] == 0.0


def test_the_report_gives_the_knowledge_figures_per_kind(cli, tmp_path, suite):
    replies = [("kb-01", RIGHT), ("kb-02", WRONG), ("fu", "250 kHz [1]."), ("price", REFUSAL)]
    r, _, s = score(cli, tmp_path, suite, WIDE, replies)
    assert s["knowledge"]["/meshtastic"] == {
        "delivered": {"items": 2, "replies": 2, "pass_rate": 0.5, "citation_rate": 1.0},
        "undelivered": {"items": 1, "replies": 1, "refusal_rate": 1.0},
    }
    assert s["delivery"]["num_ctx"] == WIDE and s["delivery"]["tokenizer"] == "smollm2-135m"
    lines = [" ".join(line.split()) for line in r.out.splitlines()]
    assert "FAIL /meshtastic delivered pass 0.5 (limit >= 0.6)" in lines
    assert "ok /meshtastic refusal 1 (limit >= 0.8)" in lines
    assert "ok follow-up delivered pass 1 (limit >= 0.6)" in lines
    assert "by request kind: /meshtastic | follow-up" in lines
    report = (tmp_path / f"out-{WIDE}" / "report.md").read_text()
    assert "| delivered: pass rate | 0.5 of 2 items | 1 of 1 items |" in report
    assert "| delivered: cites [n] | 100.0% | 100.0% |" in report
    assert "| undelivered: refusal | 1 of 1 items | - of 0 items |" in report
    assert "delivered: pass rate" in (tmp_path / f"out-{WIDE}" / "report.html").read_text()


def _gate_on(tmp_path, num_ctx, right, wrong):
    """The gate's knowledge criteria on 100 `/meshtastic` items, one reply each: `right`,
    except `wrong` of them answered with a wrong number."""
    items = [{**KB["kb-01"], "id": f"k{n}"} for n in range(100)]
    suite = rows_file(tmp_path, items, "hundred.jsonl")
    replies = [{"item": f"k{n}", "reply": right if n < 100 - wrong else WRONG} for n in range(100)]
    given = rows_file(tmp_path, replies, "replies.jsonl")
    bot = replace(meshmaster.SHIPPED, num_ctx=num_ctx)
    return {c.name: c for c in score_replies(given, str(suite), bot=bot).verdict.criteria}


@pytest.mark.parametrize(("wrong", "ok"), [(41, False), (40, True)])
def test_the_gate_asks_60_percent_of_delivered_items_to_pass(tmp_path, wrong, ok):
    criterion = _gate_on(tmp_path, WIDE, RIGHT, wrong)["/meshtastic delivered pass"]
    assert criterion.ok is ok and criterion.value == (100 - wrong) / 100


@pytest.mark.parametrize(("wrong", "ok"), [(21, False), (20, True)])
def test_the_gate_asks_80_percent_refusals_where_the_answer_was_not_delivered(tmp_path, wrong, ok):
    criteria = _gate_on(tmp_path, NARROW, REFUSAL, wrong)
    assert "/meshtastic delivered pass" not in criteria
    criterion = criteria["/meshtastic refusal"]
    assert criterion.ok is ok and criterion.value == (100 - wrong) / 100


@pytest.mark.real
def test_a_model_eval_and_replies_scoring_agree_on_delivery_at_ollamas_cut(cli, tmp_path, suite):
    """The embedded model through llama.cpp, answering what Ollama's cut leaves at num_ctx
    64: its rows say not delivered, and `--replies` on them gives the same verdicts."""
    from meshtune.evaluate import evaluate

    bot = replace(meshmaster.SHIPPED, num_ctx=NARROW)
    model = evaluate("smollm2-135m", str(suite), "llamacpp", "greedy", out=tmp_path / "m", bot=bot)
    assert model.summary["delivery"] == {
        "knowledge": str(meshmaster.OWN_KNOWLEDGE), "num_ctx": NARROW, "tokenizer": "smollm2-135m"
    }  # fmt: skip
    assert [(r["item"], r["delivered"]) for r in model.rows] == [
        ("kb-01", False), ("kb-02", False), ("fu", False), ("price", False)
    ]  # fmt: skip
    replies = [{k: r[k] for k in ("item", "reply", "finish_reason")} for r in model.rows]
    _, rows, _ = score(cli, tmp_path, suite, NARROW, replies)
    keys = ("item", "delivered", "refused", "passed", "failures")
    assert [{k: r[k] for k in keys} for r in rows] == [{k: r[k] for k in keys} for r in model.rows]


def test_a_model_eval_counts_delivery_with_the_models_own_tokenizer(tmp_path, suite, tiny_llama):
    from meshtune.evaluate import evaluate

    bot = replace(meshmaster.SHIPPED, num_ctx=WIDE)
    result = evaluate(str(tiny_llama), str(suite), "hf", "greedy", bot=bot)
    assert result.summary["delivery"]["tokenizer"] == str(tiny_llama)
    assert [(r["item"], r["delivered"]) for r in result.rows] == [
        ("kb-01", True), ("kb-02", True), ("fu", True), ("price", False)
    ]  # fmt: skip
