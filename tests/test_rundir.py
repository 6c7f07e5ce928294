"""The run directory's records, and the one way outputs are replaced (files.atomic)."""

import json

import pytest

from meshtune.cli import run_lines, train_line
from meshtune.errors import MeshtuneError
from meshtune.files import atomic, atomic_folder
from meshtune.rundir import (
    Check,
    ExportInfo,
    PipelineResult,
    RunDir,
    TrainSummary,
    Verification,
)


def test_each_record_reads_back_what_was_saved(tmp_path):
    run = RunDir(tmp_path)
    summary = TrainSummary(
        base_model="smollm2-135m",
        family="chatml",
        steps=3,
        eval_loss_before=1.5,
        eval_loss_after=1.25,
        best_step=2,
        best_adapter="best",
        warnings=["eval loss rose"],
        plan={"total_steps": 3},
    )
    summary.save(run.summary)
    assert run.load_summary() == summary
    info = ExportInfo(run=str(tmp_path), name="bot", quant="Q8_0", gguf="bot-Q8_0.gguf")
    info.stages = {"merge": 1.5, "gguf": 0.5}
    info.save(run.export_info)
    assert run.load_export() == info
    proof = Verification(
        "bot-Q8_0.gguf",
        "Q8_0",
        [Check("tokens", True, "11 chats", {"chats": 11}), Check("template", None, "no go")]
        + [Check(n, True, "") for n in ("metadata", "logits", "stops", "modelfile")],
        "ab" * 32,
        145,
        "cd" * 32,
    )
    proof.save(run.verification)
    back = run.load_verification()
    assert back == proof and back.ok and back.failed == []


def test_a_summary_from_another_version_keeps_what_it_knows(tmp_path):
    run = RunDir(tmp_path)
    run.summary.write_text(json.dumps({"base_model": "b", "steps": 2, "from_the_future": 1}))
    summary = run.load_summary()
    assert (summary.base_model, summary.steps, summary.best_adapter) == ("b", 2, "adapter")
    assert summary.eval_loss_before is None  # an older run that held nothing out


def test_a_missing_record_names_the_command_that_writes_it(tmp_path):
    with pytest.raises(MeshtuneError, match=r"train_summary\.json: missing; run `meshtune train`"):
        RunDir(tmp_path).load_summary()
    with pytest.raises(MeshtuneError, match=r"export\.json: missing; run `meshtune export`"):
        RunDir(tmp_path).load_export()


def test_a_run_without_a_held_out_set_prints_no_eval_loss_instead_of_crashing(tmp_path):
    # val_set_size 0: there is no eval loss; `meshtune run` formatted None with :.3f and crashed
    summary = TrainSummary(base_model="b", steps=4, wall_time_s=12.0, tokens_per_s=900.0)
    assert train_line(summary, tmp_path) == (
        f"done: 4 steps in 12 s, 900 tokens/s; best adapter: {tmp_path / 'adapter'}"
    )
    measured = {k: getattr(summary, k) for k in PipelineResult.TRAIN_KEYS}
    result = PipelineResult(str(tmp_path), measured, {}, "NOT READY", ready=False)
    assert run_lines(result)[1] == "train: 4 steps in 12 s, no held-out set (val_set_size 0)"
    summary.eval_loss_before, summary.eval_loss_after = 2.0, 1.5
    measured = {k: getattr(summary, k) for k in PipelineResult.TRAIN_KEYS}
    result = PipelineResult(str(tmp_path), measured, {}, "READY", ready=True)
    assert run_lines(result)[1] == "train: 4 steps in 12 s, eval loss 2.000 -> 1.500"
    assert "eval loss 2.0000 -> 1.5000, 900 tokens/s" in train_line(summary, tmp_path)


def test_atomic_folder_replaces_a_folder_only_once_the_new_one_is_complete(tmp_path):
    out = tmp_path / "merged"
    out.mkdir()
    (out / "old").write_text("old")
    with pytest.raises(RuntimeError), atomic_folder(out) as tmp:
        tmp.mkdir()
        (tmp / "new").write_text("half")
        raise RuntimeError("stopped half-way")
    assert [p.name for p in tmp_path.iterdir()] == ["merged"]  # no temp left behind
    assert [p.name for p in out.iterdir()] == ["old"]
    with atomic_folder(out) as tmp:
        tmp.mkdir()
        (tmp / "new").write_text("done")
    assert [p.name for p in out.iterdir()] == ["new"]


def test_atomic_names_the_output_not_its_temp_file(tmp_path):
    missing = tmp_path / "no-such-folder" / "x.json"
    with pytest.raises(MeshtuneError) as e, atomic(missing) as tmp:
        tmp.write_text("x")
    assert str(e.value).startswith(f"{missing}: cannot write (") and ".tmp" not in str(e.value)
