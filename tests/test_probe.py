"""benchmarks/probe.py tells the hostile probe's outcomes apart: a probe that cannot see data
loss, a hang or an unexpected error would report zeros whatever the code does."""

import os
from pathlib import Path

from benchmarks.probe import Case, box, chats, classify, run_case, snapshot


def _case(root: Path, outputs: list[Path] = ()) -> Case:
    return Case("a case", [], root, list(outputs))


def test_a_file_outside_the_outputs_that_vanished_is_data_loss(tmp_path):
    b = box(tmp_path)
    before = snapshot(tmp_path)
    (b / "dir" / "keep.txt").unlink()
    result = classify(_case(b, [b / "out.jsonl"]), tmp_path, before, 0, "")
    assert result["class"] == "data loss" and result["lost"] == ["box/dir/keep.txt: file -> gone"]


def test_a_fifo_replaced_by_a_file_is_data_loss_even_when_it_is_the_output(tmp_path):
    b = box(tmp_path)
    before = snapshot(tmp_path)
    (b / "fifo").unlink()
    (b / "fifo").write_text("written\n")
    result = classify(_case(b, [b / "fifo"]), tmp_path, before, 0, "")
    assert result["class"] == "data loss" and result["lost"] == ["box/fifo: p -> file"]


def test_an_output_changed_by_a_command_that_failed_is_data_loss(tmp_path):
    b = box(tmp_path)
    before = snapshot(tmp_path)
    (b / "file.jsonl").write_text("half\n")
    result = classify(_case(b, [b / "file.jsonl"]), tmp_path, before, 2, "error: disk full\n")
    assert result["class"] == "data loss"


def test_outcomes_without_loss_are_told_apart(tmp_path):
    b = box(tmp_path)
    before = snapshot(tmp_path)
    kinds = {
        (None, ""): "hang",
        (2, "error: x: unexpected KeyError: 'a'; rerun with --debug\n"): "unexpected",
        (1, "Traceback (most recent call last):\n  ...\nKeyError: 'a'\n"): "unexpected",
        (3, "something went wrong\n"): "unclear error",
        (2, "error: one\nerror: two\n"): "unclear error",
        (1, "NOT READY: pass rate 0.31 < 0.6\n"): "success",  # a verdict, not an error
        (2, "error: x: no such file; check the path\n"): "clean error",
        (0, ""): "success",
    }
    for (code, err), kind in kinds.items():
        assert classify(_case(b), tmp_path, before, code, err)["class"] == kind, (code, err)
    (b / f"out.jsonl.tmp{os.getpid()}").write_text("")
    assert classify(_case(b), tmp_path, before, 2, "error: x\n")["class"] == "litter"


def test_the_probe_runs_the_real_cli_on_convert_to_the_parent_folder(tmp_path):
    def make(root: Path) -> Case:
        b, data = box(root), chats(root)
        return Case("data convert IN ..", ["data", "convert", str(data), ".."], b, [b / ".."])

    result = run_case(make)
    assert result["class"] == "clean error", result
    assert result["stderr"].startswith("error: ..: is a folder, not a file")
