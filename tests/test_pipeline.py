"""`meshtune run`: the stages composed in order, stopping where a stage's proof fails."""

import json
import shutil

import pytest
from tests.tiny import tiny_recipe

from meshtune import pipeline, suites
from meshtune.errors import MeshtuneError
from meshtune.rundir import RunDir


def test_run_trains_then_exports_and_stops_when_the_export_fails_its_proof(tmp_path, tiny_llama):
    # A tiny random model never learns to end its turn in 4 steps: the export's stop check
    # fails, and the run must not go on to evaluate (or deploy) it.
    recipe = tiny_recipe(tmp_path, tiny_llama, max_steps=4, val_set_size=8, eval_steps=2)
    run = tmp_path / "run"
    lines: list[str] = []
    with pytest.raises(MeshtuneError, match="failed verification"):
        pipeline.run(recipe, run, quant="F32", samples=1, suite="quick", log=lines.append)
    assert RunDir(run).load_summary().steps == 4
    assert (run / "Modelfile").is_file() and list(run.glob("*-F32.gguf"))
    assert any("FAIL    stops" in line for line in lines)
    assert not (run / "eval").exists()


def test_run_names_a_missing_recipe(tmp_path):
    with pytest.raises(MeshtuneError, match="no such recipe"):
        pipeline.run(tmp_path / "nope.yaml", tmp_path / "run")


@pytest.mark.real
def test_meshtune_run_on_the_embedded_model_trains_exports_proves_and_compares(tmp_path, cli):
    """The README's main job, shortened (24 steps, the 4-prompt quick suite, one sample): every
    stage runs for real on the embedded model, llama.cpp included. (3 steps are too few: the
    export's stop check then fails, as it should, on a reply that runs to the token limit.)"""
    from tests.test_train import REPO

    recipe = tiny_recipe(
        tmp_path,
        "smollm2-135m",
        datasets=[{"path": str(REPO / "data" / "mesh_conversations.jsonl")}],
        sequence_len=256,
        micro_batch_size=1,
        max_steps=24,
        learning_rate=2e-3,
        eval_steps=12,
        save_steps=12,
    )
    run = tmp_path / "run"
    result = cli("run", recipe, "--output-dir", run, "--suite", "quick", "--samples", "1")
    summary = json.loads((run / "run.json").read_text())
    assert result.code == (0 if summary["ready"] else 1), result.err
    assert summary["train"]["steps"] == 24 and summary["export"]["verified"]
    assert summary["train"]["eval_loss_after"] < summary["train"]["eval_loss_before"]
    assert (run / summary["export"]["gguf"]).is_file() and (run / "Modelfile").is_file()
    sides = summary["comparison"]["a"], summary["comparison"]["b"]
    assert [s["suite"] for s in sides] == ["quick", "quick"]
    assert sides[0]["model"] == "smollm2-135m" and sides[1]["model"] == str(run)
    for report in ("base/report.md", "tuned/report.md", "tuned/replies.jsonl"):
        assert (run / "eval" / report).is_file()
    assert f"tuned {summary['verdict']}" in result.out and "item pass rate" in result.out


def test_the_base_evaluation_is_reused_while_nothing_it_depends_on_changes(tmp_path, monkeypatch):
    """The untuned base model's evaluation (16 of `make run`'s 36 minutes) is the same in every
    run of a recipe: a second run copies the first one's, byte for byte, and any change to the
    model, suite, settings or meshtune's code evaluates it anew."""
    from meshtune.meshmaster import SHIPPED

    monkeypatch.setenv("MESHTUNE_CACHE", str(tmp_path / "cache"))
    asked = {"backend": "llamacpp", "samples": 1, "bot": SHIPPED, "persona": None}
    key = pipeline.base_eval_key("smollm2-135m", "quick", asked)
    logs: list[str] = []

    def base(out: str) -> str | None:
        return pipeline.evaluate_base(
            "smollm2-135m", "quick", tmp_path / out, asked, key, logs.append
        )

    assert base("first") is None and logs == []  # evaluated, then kept
    reused = base("second")
    assert reused == str(tmp_path / "cache" / "base-evals" / key)
    assert "the base model's evaluation is reused from" in logs[0]
    for name in ("replies.jsonl", "summary.json", "report.md"):
        assert (tmp_path / "second" / name).read_bytes() == (tmp_path / "first" / name).read_bytes()

    suite = tmp_path / "quick.jsonl"
    suite.write_text(suites.suite_path("quick")[1].read_text().replace("?", "??", 1))
    assert pipeline.base_eval_key("smollm2-135m", "quick", asked) == key
    assert pipeline.base_eval_key("smollm2-135m", str(suite), asked) != key
    assert pipeline.base_eval_key("smollm2-135m", "quick", {**asked, "samples": 3}) != key
    assert pipeline.base_eval_key("smollm2-135m", "quick", {**asked, "persona": "x"}) != key

    code = tmp_path / "meshtune"  # the same code elsewhere gives the same key; an edit, another
    shutil.copytree(pipeline.Path(pipeline.__file__).parent, code)
    monkeypatch.setattr(pipeline, "__file__", str(code / "pipeline.py"))
    assert pipeline.base_eval_key("smollm2-135m", "quick", asked) == key
    (code / "evaluate" / "metrics.py").write_text("# a changed check\n", "utf-8")
    assert pipeline.base_eval_key("smollm2-135m", "quick", asked) != key
