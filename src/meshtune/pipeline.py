"""`meshtune run`: the whole path on one recipe, as the composition of the stages.

    train (recipe -> run dir) -> export (GGUF, Modelfile, proof) -> eval (base vs tuned, the
    `mesh` suite, Mesh Master's request; through transformers on a GPU, llama.cpp on a CPU)

Each stage is its own command too; this module only calls them in order and reports.
"""

import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from meshtune.errors import MeshtuneError
from meshtune.meshmaster import SHIPPED, BotConfig
from meshtune.rundir import PipelineResult, RunDir

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_RECIPE = REPO_ROOT / "recipes" / "embedded-cpu.yaml"


def run(
    recipe: Path = DEFAULT_RECIPE,
    output_dir: Path | None = None,
    overwrite: bool = False,
    quant: str = "Q8_0",
    samples: int = 3,
    suite: str = "mesh",
    log: Callable[[str], None] = print,
    bot: BotConfig = SHIPPED,
    persona: str | None = None,
) -> PipelineResult:
    """Train, export and evaluate; returns what each stage measured (also in RUN/run.json).
    The evaluation sends Mesh Master's request for the operator's config `bot` and `persona`."""
    from meshtune.evaluate import compare, evaluate
    from meshtune.evaluate.backends import on_gpu
    from meshtune.export import QUANTS, export
    from meshtune.recipe import load_recipe
    from meshtune.train import Options, train

    if quant not in QUANTS:  # checked before hours of training, not after
        raise MeshtuneError(f"--quant {quant}: not offered; choose one of {', '.join(QUANTS)}")
    if not recipe.is_file():
        raise MeshtuneError(f"{recipe}: no such recipe; run from a meshtune checkout or pass one")
    loaded = load_recipe(recipe)
    run_dir = output_dir or Path(loaded.recipe.output_dir)
    clock = _Clock()

    log(f"== train: {recipe} -> {run_dir}")
    trained = train(loaded, Options(run_dir, overwrite=overwrite), log)
    assert trained is not None  # `meshtune run` is one process
    clock.lap("train")

    log(f"== export: {quant} GGUF, Modelfile, proof")
    exported, verification = export(run_dir, quant, progress=log)
    for check in verification.checks:
        log(f"   {check.status:7} {check.name}: {check.detail}")
    if not verification.ok:
        raise MeshtuneError(f"{run_dir}: the exported model failed verification; see above")
    clock.lap("export")

    # On a GPU both models go through transformers, batched, with one sampler; on a CPU
    # through llama.cpp (the tuned model as its exported GGUF).
    gpu = on_gpu()
    where = "transformers on the GPU" if gpu else "llama.cpp"
    log(f"== eval: the {suite} suite under Mesh Master's request, through {where}")
    out = RunDir(run_dir).eval
    backend = None if gpu else "llamacpp"
    asked = {"backend": backend, "samples": samples, "bot": bot, "persona": persona}
    tuned = evaluate(str(run_dir), suite, out=out / "tuned", **asked)
    clock.lap("eval_tuned")
    measured = asdict(trained)
    result = PipelineResult(
        run_dir=str(run_dir),
        train={k: measured[k] for k in PipelineResult.TRAIN_KEYS},
        export={"gguf": exported.gguf, "seconds": exported.seconds, "verified": verification.ok},
        verdict=tuned.verdict.label,
        ready=tuned.ready,
    )
    base = loaded.recipe.base_model
    if gpu or _runs_in_llama_cpp(base):  # the baseline the training must beat
        evaluate(base, suite, out=out / "base", **asked)
        clock.lap("eval_base")
        result.comparison = compare(str(out / "base"), str(out / "tuned"), suite, out=out).to_dict()
    result.seconds = clock.laps
    result.save(RunDir(run_dir).run_record)
    return result


class _Clock:
    """Seconds of each stage, and of the whole run."""

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.laps[stage] = round(now - self.last, 1)
        self.laps["total"] = round(now - self.start, 1)
        self.last = now


def _runs_in_llama_cpp(base_model: str) -> bool:
    from meshtune.models import EMBEDDED_ALIASES

    return base_model in EMBEDDED_ALIASES or base_model.endswith(".gguf")
