"""How training writes its files: adapters (or a full fine-tune's whole model), checkpoints,
the metrics log and the loss plot.

Where they go is meshtune.rundir's (RunDir); their formats are training's own: only training
reads a checkpoint or appends to metrics.jsonl.
"""

import json
import random
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

from meshtune.errors import MeshtuneError
from meshtune.files import atomic, atomic_folder, write_text
from meshtune.rundir import RunDir
from meshtune.train.model import is_adapter
from meshtune.train.state import TrainState


def check_run_dir(run: Path, overwrite: bool, resume: bool) -> None:
    """Refuse a run directory that cannot be used, touching nothing."""
    if run.exists() and not run.is_dir():
        raise MeshtuneError(f"{run}: not a directory; choose another --output-dir")
    if resume:
        if not RunDir(run).checkpoints.is_dir():
            raise MeshtuneError(f"{run}: no checkpoints to resume from; run without --resume")
        return
    if run.exists() and any(run.iterdir()) and not overwrite:
        raise MeshtuneError(
            f"{run}: output directory is not empty; pass --overwrite to replace it, "
            "--resume to continue it, or choose another --output-dir"
        )


def prepare_run_dir(run: Path, overwrite: bool, resume: bool) -> None:
    """Called once everything the run needs has been checked and loaded: only then is an
    existing run replaced (`overwrite`)."""
    check_run_dir(run, overwrite, resume)
    if not resume and run.exists() and any(run.iterdir()):
        shutil.rmtree(run)
    run.mkdir(parents=True, exist_ok=True)


def save_weights(model: Any, folder: Path, tokenizer: Any = None) -> None:
    """LoRA: the adapter. Full fine-tune: the whole model, with `tokenizer` when given, so the
    folder loads as a model of its own."""
    with atomic_folder(folder) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None and not is_adapter(model):
            tokenizer.save_pretrained(tmp)


def load_weights(model: Any, folder: Path) -> None:
    """Put what save_weights wrote back into the model being trained."""
    from safetensors.torch import load_file

    if is_adapter(model):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(folder / "adapter_model.safetensors"))
        return
    state: dict[str, Any] = {}
    for shard in sorted(folder.glob("*.safetensors")):
        state.update(load_file(shard))
    # named_parameters() lists a tied output head once, under the name save_pretrained keeps
    missing = sorted({name for name, _ in model.named_parameters()} - state.keys())
    if missing:
        raise MeshtuneError(
            f"{folder}: {len(missing)} weights missing (e.g. {missing[0]}); the saved model is "
            "damaged: train again without --resume"
        )
    model.load_state_dict(state, strict=False)


def save_checkpoint(
    run: Path, model: Any, optimizer: Any, scheduler: Any, state: TrainState
) -> None:
    import torch

    root = RunDir(run).checkpoints
    root.mkdir(parents=True, exist_ok=True)
    rng = {"torch": torch.get_rng_state(), "random": random.getstate()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    with atomic_folder(root / f"step-{state.step:06d}") as tmp:
        tmp.mkdir()
        model.save_pretrained(tmp / _weights_folder(model))
        torch.save(
            {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": rng,
                "state": asdict(state),
            },
            tmp / "state.pt",
        )
    for old in sorted(root.glob("step-*"))[:-2]:  # keep the last two
        shutil.rmtree(old)


def restore_checkpoint(
    run: Path, model: Any, optimizer: Any, scheduler: Any, say: Any
) -> TrainState:
    import torch

    checkpoints = sorted(RunDir(run).checkpoints.glob("step-*"))
    if not checkpoints:
        raise MeshtuneError(f"{run}: no checkpoints to resume from; run without --resume")
    last = checkpoints[-1]
    saved = torch.load(last / "state.pt", weights_only=False)
    load_weights(model, last / _weights_folder(model))
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["rng"]["torch"])
    random.setstate(saved["rng"]["random"])
    if "cuda" in saved["rng"]:
        torch.cuda.set_rng_state_all(saved["rng"]["cuda"])
    state = TrainState(**saved["state"])
    state.evals = [tuple(e) for e in state.evals]  # type: ignore[misc]
    say(f"resuming from {last.name} (step {state.step})")
    return state


def _weights_folder(model: Any) -> str:
    return "adapter" if is_adapter(model) else "model"


class MetricsLog:
    """metrics.jsonl, one JSON object per line; on resume, lines after the checkpoint go."""

    def __init__(self, path: Path, keep_until: int, enabled: bool):
        self.path, self.enabled = path, enabled
        if not enabled:
            return
        kept = []
        if keep_until and path.exists():
            kept = [
                line
                for line in path.read_text().splitlines()
                if line and json.loads(line)["step"] <= keep_until
            ]
        write_text(path, "".join(line + "\n" for line in kept))

    def write(self, row: dict[str, Any]) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(row) + "\n")


def plot_losses(metrics: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line]
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss", lw=1)
    if evals:
        ax.plot(*zip(*evals, strict=True), "o-", label="eval loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (assistant tokens)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic(out) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
