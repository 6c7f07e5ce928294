"""Choose the embedded recipe by the gate's numbers: train each variant of a recipe, export it
(GGUF + proof) and evaluate it on the `mesh` suite under Mesh Master's request, with the
`meshmaster` and `no-penalty` profiles, through llama.cpp, exactly as `meshtune run` does.

Each variant is a name and `--set` overrides of the base recipe. Trainings take the GPUs in
turn (one per GPU at a time; on a CPU machine, one at a time), exports and evaluations run
beside them on the CPU cores. Results are written as they come, so a run cut short keeps its
finished variants.

    python benchmarks/recipe_search.py --out results.json \
        base: lr2e-3:learning_rate=0.002 r64:lora_r=64,lora_alpha=128

Mind the engine: the CPU packs rows by computed length (shared system prompts counted once), the
CUDA engine by full length, so the same recipe takes different optimizer steps on each (123 and
472 for the embedded recipe; `meshtune plan` says which). `--engine cpu` trains with the CPU's
batching on the GPU, so a GPU search ranks variants under the steps the 2-core machine takes.

On a GPU, `--backend hf` evaluates each variant there (base + adapter through transformers'
batched generate, Ollama's sampler, the same seeds) and skips the export: a variant takes
seconds instead of minutes; the shipped recipe is then confirmed through `make run` (GGUF,
llama.cpp) on the CPU.

    python benchmarks/recipe_search.py --out results.json --engine cpu --backend hf \
        base: r32:lora_r=32,lora_alpha=64 full:adapter=,learning_rate=1e-4
"""

import argparse
import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from meshtune.rundir import RunDir

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "embedded-cpu.yaml"
PROFILES = ("meshmaster", "no-penalty")
MEASURES = (
    "pass_rate",
    "invented_command_rate",
    "loop_rate",
    "runaway_rate",
    "share_one_chunk",
)


def parse_variant(text: str) -> tuple[str, list[str]]:
    """`name:key=value,key=[1,2]` -> (name, ["key=value", "key=[1,2]"])."""
    name, _, sets = text.partition(":")
    if not name:
        sys.exit(f"variant {text!r}: no name; write NAME:key=value,...")
    return name, [s for s in re.split(r",(?=\w+=)", sets) if s]  # a value may hold commas


def meshtune(args: list[str], log: Path, env: dict[str, str] | None = None) -> float:
    """Run one meshtune command, its output into `log`; returns its seconds. A failed training
    is an error; a failed proof or a NOT READY evaluation (exit 1) is a result."""
    start = time.perf_counter()
    with log.open("a") as f:
        f.write(f"$ meshtune {' '.join(args)}\n")
        f.flush()
        rc = subprocess.run(
            [sys.executable, "-m", "meshtune", *args],
            stdout=f,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        ).returncode
    if rc not in (0, 1) or (rc == 1 and args[0] == "train"):
        raise RuntimeError(f"meshtune {args[0]} exited {rc}; see {log}")
    return time.perf_counter() - start


def trainers(gpus: int, per_gpu: int = 1) -> "queue.Queue[int | None]":
    """Slots for trainings: `per_gpu` per GPU (a 135M model at micro batch 1 leaves most of an
    H200 idle, so several variants share it), or a single CPU slot."""
    slots: queue.Queue[int | None] = queue.Queue()
    for slot in [g for g in range(gpus) for _ in range(per_gpu)] if gpus else [None]:
        slots.put(slot)
    return slots


def evaluate_variant(
    name: str,
    sets: list[str],
    work: Path,
    recipe: Path,
    slots: "queue.Queue[int | None]",
    threads: int,
    suite: str,
    backend: str,
    engine: str | None,
) -> dict[str, Any]:
    run = work / name
    log = work / f"{name}.log"
    overrides = [a for s in sets for a in ("--set", s)]
    gpu = slots.get()
    env = {"CUDA_VISIBLE_DEVICES": str(gpu)} if gpu is not None else {}
    train = ["train", str(recipe), "--output-dir", str(run), "--overwrite", *overrides]
    try:
        train_s = meshtune([*train, *(["--engine", engine] if engine else [])], log, env)
        if backend == "hf":  # evaluated on the same GPU, while the slot is held
            evals = {p: evaluate(run, p, suite, ["--backend", "hf"], log, env) for p in PROFILES}
    finally:
        slots.put(gpu)
    rundir = RunDir(run)
    summary = rundir.load_summary()
    result: dict[str, Any] = {
        "variant": name,
        "set": sets,
        "train_s": round(train_s, 1),
        "steps": summary.steps,
        "eval_loss_after": summary.eval_loss_after,
    }
    if backend == "llamacpp":
        result["export_s"] = round(meshtune(["export", str(run)], log, NO_GPU), 1)
        result["proof"] = {c.name: c.ok for c in rundir.load_verification().checks}
        lanes = ["--threads", str(threads)]
        evals = {p: evaluate(run, p, suite, lanes, log, NO_GPU) for p in PROFILES}
    return result | evals


NO_GPU = {"CUDA_VISIBLE_DEVICES": ""}


def evaluate(
    run: Path, profile: str, suite: str, extra: list[str], log: Path, env: dict[str, str]
) -> dict[str, Any]:
    """One profile's figures: the headline measures, each request kind's and the gate's."""
    out = RunDir(run).eval / profile
    args = ["eval", str(run), "--suite", suite, "--profile", profile, "--out", str(out), *extra]
    meshtune(args, log, env)
    report = json.loads((out / "summary.json").read_text())
    return {m: report[m] for m in MEASURES} | {
        "p90_chars": report["chars"]["p90"],
        "verdict": report["gate"]["verdict"],
        "invented": report["invented_commands"],
        "kinds": report.get("kinds", {}),
        "technical": report.get("technical", {}),
        "gate": {c["name"]: [c["value"], c["ok"]] for c in report["gate"]["criteria"]},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("variants", nargs="+", help="NAME:key=value,key=value (empty: the recipe)")
    ap.add_argument("--recipe", type=Path, default=RECIPE)
    ap.add_argument("--work", type=Path, default=Path("runs/search"))
    ap.add_argument("--out", type=Path, required=True, help="results JSON")
    ap.add_argument("--parallel", type=int, default=1, help="variants in flight at once")
    ap.add_argument("--suite", default="mesh", help="eval suite (quick: a smoke test)")
    ap.add_argument("--threads", type=int, default=2, help="llama.cpp lanes per evaluation")
    ap.add_argument(
        "--backend", choices=("llamacpp", "hf"), default="llamacpp",
        help="llamacpp: export and evaluate the GGUF on the CPU; hf: evaluate on the GPU",
    )  # fmt: skip
    ap.add_argument("--engine", choices=("cpu", "cuda"), help="train --engine (default: by device)")
    ap.add_argument("--per-gpu", type=int, default=1, help="variants sharing one GPU at once")
    args = ap.parse_args()

    import torch

    variants = [parse_variant(v) for v in args.variants]
    args.work.mkdir(parents=True, exist_ok=True)
    slots = trainers(torch.cuda.device_count(), args.per_gpu)
    done: list[dict[str, Any]] = []
    lock = threading.Lock()

    def one(variant: tuple[str, list[str]]) -> None:
        name, sets = variant
        try:
            result = evaluate_variant(
                name, sets, args.work, args.recipe, slots, args.threads, args.suite,
                args.backend, args.engine,
            )  # fmt: skip
        except Exception as e:  # one failed variant must not lose the others
            result = {"variant": name, "set": sets, "error": str(e)}
        with lock:
            done.append(result)
            tmp = args.out.with_suffix(".tmp")
            tmp.write_text(json.dumps({"recipe": str(args.recipe), "results": done}, indent=1))
            os.replace(tmp, args.out)
            print(line(result), flush=True)

    with ThreadPoolExecutor(args.parallel) as pool:
        list(pool.map(one, variants))


def line(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"{r['variant']:>14}  ERROR {r['error']}"
    cells = [f"{r['variant']:>14}", f"train {r['train_s']:6.1f}s", f"loss {r['eval_loss_after']}"]
    for p in PROFILES:
        m = r[p]
        cells.append(
            f"{p}: pass {m['pass_rate']:.3f} inv {m['invented_command_rate']:.3f} "
            f"loop {m['loop_rate']:.3f} run {m['runaway_rate']:.3f} p90 {m['p90_chars']:.0f}"
        )
    return "  ".join(cells)


if __name__ == "__main__":
    main()
