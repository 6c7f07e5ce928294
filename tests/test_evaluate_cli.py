"""`meshtune eval` end to end through the real entry point, on the embedded model through
llama.cpp: the verdict and exit code, the report files, gate overrides, compare, errors."""

import json

import pytest
from tests.conftest import REPO, rows_file
from tests.tiny import write_summary

from meshtune import models
from meshtune.evaluate import evaluate, load_result
from meshtune.suites import load_suite

EVAL = REPO / "data" / "eval" / "mesh_eval.jsonl"


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    """The untuned embedded model on the quick suite, greedy (one reply per prompt)."""
    out = tmp_path_factory.mktemp("quick")
    result = evaluate("smollm2-135m", "quick", profile="greedy", out=out, threads=2)
    return out, result


def test_untuned_model_is_not_ready_and_the_report_says_why(quick_report):
    out, result = quick_report
    assert not result.ready
    s = json.loads((out / "summary.json").read_text())
    assert s["gate"]["verdict"] == "NOT READY" and s["samples"] == 1 and s["items"] == 4
    assert s["backend"] == "llamacpp" and s["profile"] == "greedy"
    assert s["options"]["temperature"] == 0
    rows = [json.loads(line) for line in (out / "replies.jsonl").read_text().splitlines()]
    assert [r["item"] for r in rows] == ["quick-relay", "quick-greeting", "quick-snr", "quick-joke"]
    for r in rows:
        assert {
            "reply",
            "chars",
            "bytes",
            "chunks",
            "runaway",
            "loop",
            "invented_commands",
            "command_dump",
            "passed",
            "failures",
            "latency_s",
            "tokens_per_s",
            "canned",
        } <= set(r)
    md = (out / "report.md").read_text()
    assert "NOT READY" in md and "| item pass rate |" in md and "quick-relay" in md
    html = (out / "report.html").read_text()
    assert html.count("<svg") == 2 and "<img" not in html and "http" not in html.split("<svg")[0]
    assert "NOT READY" in html


def test_cli_exit_code_is_1_for_not_ready_with_failing_criteria_and_examples(cli, tmp_path):
    suite = rows_file(
        tmp_path,
        [
            {
                "id": "relay",
                "prompt": "How do I relay to alice?",
                "expect_any": ["alice"],
                "forbid": ["/relay"],
            }
        ],
        "one.jsonl",
    )
    r = cli(
        "eval",
        "smollm2-135m",
        "--suite",
        suite,
        "--profile",
        "greedy",
        "--out",
        tmp_path / "r",
        "--threads",
        "2",
    )
    assert r.code == 1, r.err
    assert "NOT READY" in r.out and "FAIL" in r.out and "for example:" in r.out
    assert (tmp_path / "r" / "report.html").is_file()


def test_cli_gate_override_can_make_it_ready(cli, tmp_path):
    gate = tmp_path / "gate.yaml"
    gate.write_text(
        "".join(
            f"{k}: null\n"
            for k in (
                "max_loop_rate",
                "max_runaway_rate",
                "max_invented_command_rate",
                "max_wrong_command_rate",
                "max_command_dump_rate",
                "max_canned_rate",
                "max_p90_chars",
                "median_chars",
                "min_pass_rate",
            )
        )
    )
    suite = rows_file(tmp_path, [{"id": "a", "prompt": "Say hi"}], "one.jsonl")
    r = cli(
        "eval",
        "smollm2-135m",
        "--suite",
        suite,
        "--profile",
        "greedy",
        "--gate",
        gate,
        "--out",
        tmp_path / "r",
    )
    assert r.code == 0, r.out + r.err
    assert r.out.rstrip().splitlines()[-2] == "READY"


def test_compare_two_report_folders(cli, quick_report, tmp_path):
    from meshtune.evaluate import load_result
    from meshtune.evaluate.report import write_report

    out, _ = quick_report
    for name, relay_passes in (("a", False), ("b", True)):
        result = load_result(out)
        for row in result.rows:
            if row["item"] == "quick-relay":
                row["passed"] = relay_passes
        write_report(tmp_path / name, result)
    r = cli("eval", "--compare", tmp_path / "a", tmp_path / "b", "--out", tmp_path / "c")
    assert r.code == 1  # B (the same untuned model, one item fixed) is still not ready
    assert "| item pass rate |" in r.out and "Improved items (1)" in r.out
    data = json.loads((tmp_path / "c" / "compare.json").read_text())
    assert [e["item"] for e in data["improved"]] == ["quick-relay"] and data["regressed"] == []


def test_compare_lists_improved_and_regressed_items(quick_report, tmp_path):
    from meshtune.evaluate import compare, load_result
    from meshtune.evaluate.report import write_report

    out, _ = quick_report
    for name, fixed, broken in (
        ("a", "quick-joke", "quick-relay"),
        ("b", "quick-relay", "quick-joke"),
    ):
        result = load_result(out)
        for row in result.rows:
            if row["item"] in (fixed, broken):
                row["passed"] = row["item"] == fixed
        write_report(tmp_path / name, result)
    comp = compare(str(tmp_path / "a"), str(tmp_path / "b"))
    assert [e["item"] for e in comp.improved] == ["quick-relay"]
    assert [e["item"] for e in comp.regressed] == ["quick-joke"]
    assert comp.improved[0]["a"] == 0 and comp.improved[0]["b"] == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["smollm2-135m", "--suite", "BAD"], "bad.jsonl:2: unknown key 'promt'"),
        (["smollm2-135m", "--suite", "quick", "--profile", "fast"], "unknown profile 'fast'"),
        (["smollm2-135m", "--suite", "quick", "--samples", "0"], "--samples 0"),
        (["not-a-model", "--suite", "quick"], "--backend ollama|openai"),
        (["--suite", "quick"], "give MODEL"),
    ],
)
def test_bad_input_is_a_one_line_error_with_exit_2(cli, tmp_path, args, message):
    bad = rows_file(tmp_path, [{"id": "a", "prompt": "hi"}, {"id": "b", "promt": "x"}], "bad.jsonl")
    r = cli("eval", *[str(bad) if a == "BAD" else a for a in args], "--out", tmp_path / "o")
    assert r.code == 2
    assert r.err.startswith("error: ") and message in r.err and len(r.err.splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_run_dir_with_gguf_is_evaluated_through_llamacpp_with_the_runs_system_prompt(tmp_path):
    run = tmp_path / "run"
    write_summary(run, "smollm2-135m", system_prompt="You are a terse mesh bot.")
    (run / "model.gguf").symlink_to(models.embedded_gguf())
    suite = rows_file(tmp_path, [{"id": "a", "prompt": "Say hi"}], "one.jsonl")
    result = evaluate(str(run), str(suite), profile="greedy", out=run / "eval" / "x")
    assert result.summary["backend"] == "llamacpp"
    assert result.summary["system_prompt"] == "You are a terse mesh bot."
    assert (run / "eval" / "x" / "report.md").is_file()


# ---------------------------------------------------------------- eval --replies

JUDGED = REPO.parent / "shared" / "judged" / "mesh-suite-tuned-135m-sample0.jsonl"
FIVE = ("relay-01", "commands-36", "radio-19", "roles-13", "greetings-10")  # one per kind of check


def read_rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def five_items(tmp_path_factory, tiny_llama):
    """Five `mesh` items as a suite file, and a tiny random model's replies to them (two
    samples each, under the bot's request and options)."""
    folder = tmp_path_factory.mktemp("five")
    lines = [line for line in EVAL.read_text().splitlines() if json.loads(line)["id"] in FIVE]
    suite = folder / "five.jsonl"
    suite.write_text("\n".join(lines) + "\n")
    evaluate(str(tiny_llama), str(suite), backend="hf", samples=2, out=folder / "model")
    return suite, folder / "model"


def test_replies_scored_without_a_model_get_the_model_evals_verdicts(cli, five_items, tmp_path):
    suite, model = five_items
    r = cli("eval", "--replies", model / "replies.jsonl", "--suite", suite, "--out", tmp_path)
    assert r.code == 1 and "NOT READY" in r.out
    keys = ("item", "reply", "finish_reason", "passed", "failures", "reasons", "canned")
    given, scored = read_rows(model / "replies.jsonl"), read_rows(tmp_path / "replies.jsonl")
    assert [r["item"] for r in given] == [i for i in FIVE for _ in range(2)]
    assert [{k: r[k] for k in keys} for r in scored] == [{k: r[k] for k in keys} for r in given]
    a, b = json.loads((model / "summary.json").read_text()), load_result(tmp_path).summary
    for key in ("pass_rate", "failures", "categories", "invented_command_rate", "chars"):
        assert a[key] == b[key], key
    assert a["gate"]["verdict"] == b["gate"]["verdict"]


def test_the_report_gives_each_figure_per_request_kind(cli, tmp_path):
    suite = {i.id: i for i in load_suite("mesh").items}
    pointer = "Ask me with /meshtastic <question> and I'll answer from the reference."
    given = [
        ("radio-19", suite["radio-19"].good),  # a technical DM, three ways
        ("radio-19", pointer),
        ("radio-19", suite["radio-19"].bad),
        ("relay-01", suite["relay-01"].good),  # a DM about the bot
        ("channels-01", pointer),
    ]
    given += [(i.id, i.good) for i in suite.values() if i.channel][:2]
    replies = rows_file(tmp_path, [{"item": i, "reply": t} for i, t in given], "r.jsonl")
    r = cli("eval", "--replies", replies, "--suite", "mesh", "--out", tmp_path / "o")
    assert "by request kind: dm | channel" in r.out
    assert "technical DM replies correct 25.0%, pointer 50.0%, wrong 25.0%" in " ".join(
        r.out.split()
    )
    s = load_result(tmp_path / "o").summary
    assert s["kinds"]["channel"]["pass_rate"] == 1.0 and s["kinds"]["dm"]["items"] == 3
    report = (tmp_path / "o" / "report.md").read_text()
    assert "## By request kind\n\n| criterion | dm | channel |" in report
    assert "| item pass rate | 0.4444 | 1 |" in report


def test_replies_keep_the_files_order_and_a_failed_reply_says_what_failed(cli, tmp_path):
    suite = {i.id: i for i in load_suite("mesh").items}
    given = [
        ("relay-01", suite["relay-01"].bad),
        ("commands-36", suite["commands-36"].good),
        ("relay-01", "DM /save vk3z your note."),
        ("relay-01", suite["relay-01"].good),
    ]
    replies = rows_file(tmp_path, [{"item": i, "reply": t} for i, t in given], "r.jsonl")
    r = cli("eval", "--replies", replies, "--suite", "mesh", "--out", tmp_path / "o")
    assert r.code == 1
    rows = read_rows(tmp_path / "o" / "replies.jsonl")
    assert [(r["item"], r["reply"]) for r in rows] == given
    assert [r["sample"] for r in rows] == [0, 0, 1, 2]
    assert [r["passed"] for r in rows] == [False, True, False, True]
    assert rows[2]["failures"] == ["wrong-command", "missing-required"]
    assert rows[2]["reasons"] == [
        "names /save, not a command for this question (a right answer names no command)",
        "misses the answer: the DM form 'VK3Z <message>' (shortname first, no slash)",
    ]
    md = (tmp_path / "o" / "report.md").read_text()
    html = (tmp_path / "o" / "report.html").read_text()
    assert rows[0]["reasons"][0] == "invents /relay: the bot has no such command"
    assert "invents /relay: the bot has no such command; misses the answer: the DM form" in md
    assert "invents /relay: the bot has no such command; misses the answer: the DM form" in html


def test_the_judged_replies_score_through_the_cli_as_through_calibration(cli, tmp_path):
    r = cli("eval", "--replies", JUDGED, "--suite", "mesh", "--out", tmp_path)
    assert r.code == 1 and r.out.splitlines()[-2] == "NOT READY"
    given, rows = read_rows(JUDGED), read_rows(tmp_path / "replies.jsonl")
    assert [(g["item"], g["reply"]) for g in given] == [(r["item"], r["reply"]) for r in rows]
    s = json.loads((tmp_path / "summary.json").read_text())
    report = json.loads((REPO / "reports" / "calibration.json").read_text())
    assert s["replies"] == 201 and sum(r["passed"] for r in rows) == report["passed"]
    assert s["wrong_command_rate"] > 0 and s["wrong_commands"]  # counted apart from invented


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"item": "relay-01"}', "r.jsonl:2: 'reply' must be a string"),
        ('{"item": "nope", "reply": "hi"}', "r.jsonl:2: 'item' 'nope' is not an item of"),
        ('{"item": ["relay-01"], "reply": "hi"}', "r.jsonl:2: 'item' ['relay-01'] is not an"),
        ("[1, 2]", "r.jsonl:2: not a JSON object"),
        ("{not json", "r.jsonl:2: invalid JSON"),
        ('{"item": "relay-01", "reply": "x", "finish_reason": "eos"}', "must be stop or length"),
    ],
)
def test_a_bad_replies_line_is_a_one_line_error_and_nothing_is_written(
    cli, tmp_path, line, message
):
    replies = rows_file(tmp_path, [{"item": "relay-01", "reply": "hi"}, line], "r.jsonl")
    r = cli("eval", "--replies", replies, "--suite", "mesh", "--out", tmp_path / "o")
    assert r.code == 2 and message in r.err and len(r.err.splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_an_empty_replies_file_is_an_error(cli, tmp_path):
    replies = rows_file(tmp_path, [], "r.jsonl")
    r = cli("eval", "--replies", replies, "--out", tmp_path / "o")
    assert r.code == 2 and "no replies; write one JSON object per line" in r.err
    assert not (tmp_path / "o").exists()


def test_replies_with_a_model_is_refused(cli, tmp_path):
    replies = rows_file(tmp_path, [{"item": "relay-01", "reply": "hi"}], "r.jsonl")
    r = cli("eval", "smollm2-135m", "--replies", replies, "--out", tmp_path / "o")
    assert r.code == 2 and "give no MODEL" in r.err


def test_compare_gives_each_request_kinds_figures_where_the_suite_has_them(quick_report):
    from meshtune.evaluate import compare

    run = REPO / "reports" / "embedded-cpu-run-5034a2b"
    rows = {m["name"]: m for m in compare(str(run / "base"), str(run / "tuned")).metrics}
    delivered = rows["/meshtastic delivered pass"]
    assert (delivered["a"], delivered["b"], delivered["better"]) == (0.0156, 0.1719, "b")
    assert rows["/meshtastic refusal"]["b"] == 0.359
    assert rows["technical replies wrong"]["better"] == "b"  # 100% wrong -> 89%
    assert rows["wrong-command rate"]["better"] == "a"  # the base names fewer commands at all
    out, _ = quick_report  # the quick suite has no knowledge items: no empty rows for them
    names = [m["name"] for m in compare(str(out), str(out)).metrics]
    assert "item pass rate" in names and not any("/meshtastic" in n for n in names)
