"""`meshtune run`: the whole path on one recipe, as the composition of the stages.

    train (recipe -> run dir) -> export (GGUF, Modelfile, proof) -> eval (base vs tuned, the
    `mesh` suite, Mesh Master's request; through transformers on a GPU, llama.cpp on a CPU)

Each stage is its own command too; this module only calls them in order and reports.
"""

import hashlib
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

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
        key = None if gpu else base_eval_key(base, suite, asked)
        result.base_reused_from = evaluate_base(base, suite, out / "base", asked, key, log)
        clock.lap("eval_base")
        result.comparison = compare(str(out / "base"), str(out / "tuned"), suite, out=out).to_dict()
    result.seconds = clock.laps
    result.save(RunDir(run_dir).run_record)
    return result


def base_eval_key(base: str, suite: str, asked: dict[str, Any]) -> str:
    """What the base model's llama.cpp evaluation depends on, hashed: the GGUF (and a Modelfile
    beside it), the suite file, the request settings (samples, the bot's config and knowledge
    file, persona), the lanes, llama.cpp's version and meshtune's own code. The same key gives
    the same replies: the lanes decode deterministically."""
    import llama_cpp

    from meshtune.evaluate.backends import default_threads, resolve_model
    from meshtune.suites import suite_path

    gguf = resolve_model(base, "llamacpp").gguf
    assert gguf is not None  # _runs_in_llama_cpp: the embedded model or a .gguf
    bot = asked["bot"]
    parts = [
        _digest(gguf),
        _digest(gguf.parent / "Modelfile"),
        _digest(suite_path(suite)[1]),
        _digest(bot.knowledge_file),
        repr((asked["samples"], asked["persona"], bot, default_threads(), llama_cpp.__version__)),
        *(_digest(f) for f in sorted(Path(__file__).parent.rglob("*")) if _is_source(f)),
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def evaluate_base(
    base: str,
    suite: str,
    out: Path,
    asked: dict[str, Any],
    key: str | None,
    log: Callable[[str], None],
) -> str | None:
    """Evaluate the base model into `out`, or copy the evaluation a run with the same key
    made (the base model, suite and settings do not change between runs, and its evaluation
    is the longest stage on a CPU). Returns the cache folder it came from, if any."""
    from meshtune.evaluate import evaluate
    from meshtune.files import atomic_folder
    from meshtune.models import cache_root

    cached = cache_root() / "base-evals" / key if key else None
    if cached is not None and (cached / "summary.json").is_file():
        with atomic_folder(out) as tmp:
            shutil.copytree(cached, tmp)
        log(f"   the base model's evaluation is reused from {cached}: same model, suite, "
            "settings, llama.cpp and meshtune code")  # fmt: skip
        return str(cached)
    evaluate(base, suite, out=out, **asked)
    if cached is not None:
        with atomic_folder(cached) as tmp:
            shutil.copytree(out, tmp)
    return None


def _is_source(path: Path) -> bool:
    return path.is_file() and "__pycache__" not in path.parts


def _digest(path: Path | None) -> str:
    """A file's sha256 (export's, read in blocks: a GGUF can be gigabytes), or "-" where there
    is none."""
    from meshtune.export.proof import file_digest

    return file_digest(path)[0] if path is not None and path.is_file() else "-"


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
