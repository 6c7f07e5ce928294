"""`meshtune run`: the stages composed in order, stopping where a stage's proof fails."""

import json

import pytest
from tests.test_train import tiny_recipe

from meshtune import pipeline
from meshtune.errors import MeshtuneError


def test_run_trains_then_exports_and_stops_when_the_export_fails_its_proof(tmp_path, tiny_llama):
    # A tiny random model never learns to end its turn in 4 steps: the export's stop check
    # fails, and the run must not go on to evaluate (or deploy) it.
    recipe = tiny_recipe(tmp_path, tiny_llama, max_steps=4, val_set_size=8, eval_steps=2)
    run = tmp_path / "run"
    lines: list[str] = []
    with pytest.raises(MeshtuneError, match="failed verification"):
        pipeline.run(recipe, run, quant="F32", samples=1, suite="quick", log=lines.append)
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["steps"] == 4
    assert (run / "Modelfile").is_file() and list(run.glob("*-F32.gguf"))
    assert any("FAIL    stops" in line for line in lines)
    assert not (run / "eval").exists()


def test_run_names_a_missing_recipe(tmp_path):
    with pytest.raises(MeshtuneError, match="no such recipe"):
        pipeline.run(tmp_path / "nope.yaml", tmp_path / "run")
