"""The guide's 1B path on a CUDA GPU, measured with a stand-in for
meta-llama/Llama-3.2-1B-Instruct (benchmarks/standin.py: random weights of its shapes, Meta's
chat template) in an offline Hugging Face cache.

    python benchmarks/gpu_guide.py run --tokenizer DIR --out DIR [--cpu-items 48]
        `meshtune run recipes/mesh-master-1b-v2.yaml` (train, export with proof, eval base vs
        tuned: the mesh suite, 3 samples, through transformers on the GPU), each stage's
        seconds; then the tuned model's replies/s on the first --cpu-items items through the
        CPU llama.cpp lane (its exported GGUF, one lane per core) and through the GPU path,
        side by side in the same run.
    python benchmarks/gpu_guide.py notebook --tokenizer DIR --out DIR
        notebooks/meshtune_colab.ipynb's 1B branch top to bottom, every cell, as on a T4
        (benchmarks/t4_like: no bf16, a 15 GiB cap); the executed notebook is saved.

Results: OUT/gpu_guide_<what>.json with the date, GPU and --commit.
"""

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "src")]

from benchmarks import standin  # noqa: E402


def environment(cache: Path, extra_path: str = "") -> dict[str, str]:
    paths = [p for p in (extra_path, str(REPO / "src"), os.environ.get("PYTHONPATH", "")) if p]
    return {
        **os.environ,
        "HF_HUB_CACHE": str(cache),
        "HF_HUB_OFFLINE": "1",
        "HF_TOKEN": "stand-in",
        "PYTHONPATH": os.pathsep.join(paths),
        "PYTHONUNBUFFERED": "1",
    }


def stand_in(tokenizer: Path, cache: Path) -> float:
    start = time.perf_counter()
    if not (cache / "models--meta-llama--Llama-3.2-1B-Instruct").is_dir():
        print(f"built {standin.build(tokenizer, cache)}", flush=True)
    return round(time.perf_counter() - start, 1)


def meshtune_run(args: Any, env: dict[str, str]) -> dict[str, Any]:
    run = Path("/tmp/gpu_guide/run")
    cmd = [sys.executable, "-m", "meshtune", "run", str(REPO / "recipes/mesh-master-1b-v2.yaml"),
           "--output-dir", str(run), "--overwrite", "--quant", args.quant]  # fmt: skip
    start = time.perf_counter()
    with open(args.out / "meshtune_run.log", "w") as log:
        code = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    wall = round(time.perf_counter() - start, 1)
    record = json.loads((run / "run.json").read_text()) if (run / "run.json").is_file() else {}
    evals = {side: replies_per_s(run / "eval" / side) for side in ("base", "tuned")}
    return {"exit_code": code, "wall_s": wall, "run": record, "eval": evals, "run_dir": str(run)}


def replies_per_s(folder: Path) -> dict[str, Any]:
    path = folder / "summary.json"
    if not path.is_file():
        return {}
    s = json.loads(path.read_text())
    rows = sum(1 for line in (folder / "replies.jsonl").open() if line.strip())
    return {
        "backend": s["backend"],
        "replies": rows,
        "generation_s": s["generation_s"],
        "wall_s": s["wall_s"],
        "replies_per_s": round(rows / s["generation_s"], 2) if s["generation_s"] else None,
        "tokens_per_s": s["tokens_per_s"],
    }


def side_by_side(run: Path, items: int, env: dict[str, str]) -> dict[str, Any]:
    """The tuned model on the same first `items` items: the CPU llama.cpp lane, then the GPU."""
    from meshtune.suites import suite_path

    _, mesh = suite_path("mesh")
    subset = Path("/tmp/gpu_guide/subset.jsonl")
    subset.parent.mkdir(parents=True, exist_ok=True)
    subset.write_text("".join(mesh.read_text().splitlines(keepends=True)[:items]))
    out = {}
    lanes = {
        "cpu_llamacpp": ["--backend", "llamacpp", "--threads", str(os.cpu_count())],
        "gpu_hf": ["--backend", "hf"],
    }
    for lane, extra in lanes.items():
        folder = Path(f"/tmp/gpu_guide/{lane}")
        cmd = [sys.executable, "-m", "meshtune", "eval", str(run), "--suite", str(subset),
               "--samples", "3", "--out", str(folder), *extra]  # fmt: skip
        code = subprocess.run(cmd, env=env, capture_output=True, text=True)
        out[lane] = {"exit_code": code.returncode, **replies_per_s(folder)}
        if code.returncode not in (0, 1):
            out[lane]["error"] = code.stdout[-2000:] + code.stderr[-2000:]
        print(lane, json.dumps(out[lane]), flush=True)
    return {"items": items, "samples": 3, "cpu_cores": os.cpu_count(), **out}


def notebook(args: Any, env: dict[str, str]) -> dict[str, Any]:
    import nbformat
    from nbclient import NotebookClient

    path = REPO / "notebooks" / "meshtune_colab.ipynb"
    nb = nbformat.read(path, as_version=4)
    settings = ('INSTALL = False\nBASE = "llama-3.2-1b"\nHF_TOKEN = "stand-in"\n'
                f'RUN_DIR = "/tmp/gpu_guide/colab"\nQUANT = "{args.quant}"\n')  # fmt: skip
    tagged = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    nb.cells.insert(tagged + 1, nbformat.v4.new_code_cell(settings))
    os.environ.update(env)
    start = time.perf_counter()
    error = None
    try:
        where = {"metadata": {"path": str(path.parent)}}
        NotebookClient(nb, timeout=900, kernel_name="python3", resources=where).execute()
    except Exception as e:  # the executed notebook shows the failing cell; keep it
        error = f"{type(e).__name__}: {str(e)[-1500:]}"
    wall = round(time.perf_counter() - start, 1)
    nbformat.write(nb, args.out / "colab_1b_t4like.ipynb")
    colab = Path("/tmp/gpu_guide/colab")
    evals = {side: replies_per_s(colab / "eval" / side) for side in ("a", "b")}
    return {"wall_s": wall, "error": error, "eval": evals, "t4_gib": 15}


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["run", "notebook"])
    parser.add_argument("--tokenizer", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--commit", default="unknown")
    parser.add_argument("--cpu-items", type=int, default=48)
    parser.add_argument("--quant", default="Q8_0", help="the GGUF type export writes")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    cache = Path("/tmp/gpu_guide/hub")
    Path("/tmp/gpu_guide").mkdir(exist_ok=True)
    result: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "commit": args.commit,
        "torch": torch.__version__,
        "stand_in_s": stand_in(args.tokenizer, cache),
    }
    if args.what == "run":
        result["meshtune_run"] = meshtune_run(args, environment(cache))
        print(json.dumps(result["meshtune_run"]["run"].get("seconds")), flush=True)
        run = Path(result["meshtune_run"]["run_dir"])
        result["side_by_side"] = side_by_side(run, args.cpu_items, environment(cache))
    else:
        t4 = str(REPO / "benchmarks" / "t4_like")
        result["notebook"] = notebook(args, environment(cache, t4))
    target = args.out / f"gpu_guide_{args.what}.json"
    target.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
