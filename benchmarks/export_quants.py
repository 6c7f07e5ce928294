"""`meshtune export` of a SmolLM2-135M run for every offered GGUF type: wall time, peak
memory, file size and the logit bounds the proof measured. The README's "Export" numbers.

    .venv/bin/python benchmarks/export_quants.py [RUN] [--quants Q8_0 F16 ...] [--json OUT]

Without RUN, a run is made in a temporary folder: the embedded model with a LoRA adapter whose
B matrices are perturbed (so the merge changes the model), as an untrained stand-in for a
`meshtune train` run. Each type is exported in its own process, so peak memory is the export's.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

TARGET_S = 60.0  # the issue's limit for the embedded model
MEMORY_FACTOR = 3.0  # peak memory must stay under 3x the merged model's size


def make_run(root: Path) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from meshtune.models import resolve

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(resolve("smollm2-135m").folder)
    peft = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.002)
    run = root / "run"
    peft.save_pretrained(run / "best")
    (run / "recipe.yaml").write_text(yaml.safe_dump({"base_model": "smollm2-135m"}))
    summary = {"base_model": "smollm2-135m", "family": "chatml", "best_adapter": "best"}
    (run / "train_summary.json").write_text(json.dumps(summary))
    return run


def export_one(run: Path, quant: str) -> dict:
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "meshtune", "export", str(run), "--quant", quant],
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - started
    if proc.returncode not in (0, 1):
        sys.exit(f"export --quant {quant} failed:\n{proc.stderr}")
    info = json.loads((run / "export.json").read_text())
    checks = {c["name"]: c for c in json.loads((run / "verify.json").read_text())["checks"]}
    logits = checks["logits"]["data"]
    return {
        "quant": quant,
        "wall_s": round(wall, 1),
        "export_s": info["seconds"],
        "peak_rss_mb": round(info["peak_rss_bytes"] / 1e6),
        "merged_mb": round(info["merged_bytes"] / 1e6),
        "gguf_mb": round(info["gguf_bytes"] / 1e6, 1),
        "top1": round(logits["top1_agreement"], 4),
        "top1_strict": round(logits["top1_strict"], 4),
        "decisions": logits["decisions"],
        "max_abs_diff": round(logits["max_abs_diff"], 4),
        "mean_abs_diff": round(logits["mean_abs_diff"], 4),
        "bound": logits["bound"],
        "checks_failed": [n for n, c in checks.items() if c["ok"] is False],
    }


def main() -> None:
    from meshtune.export import QUANTS

    parser = argparse.ArgumentParser()
    parser.add_argument("run", nargs="?", type=Path)
    parser.add_argument("--quants", nargs="+", default=list(QUANTS))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run or make_run(Path(tmp))
        rows = [export_one(run, q) for q in args.quants]
    print(f"{'type':7} {'export s':>8} {'peak MB':>8} {'x merged':>8} {'GGUF MB':>8} "
          f"{'top-1':>7} {'strict':>7} {'max|d|':>7} {'mean|d|':>7} bound")  # fmt: skip
    for r in rows:
        print(
            f"{r['quant']:7} {r['export_s']:8.1f} {r['peak_rss_mb']:8d} "
            f"{r['peak_rss_mb'] / r['merged_mb']:8.2f} {r['gguf_mb']:8.1f} {r['top1']:7.1%} "
            f"{r['top1_strict']:7.1%} {r['max_abs_diff']:7.3f} {r['mean_abs_diff']:7.4f} "
            f"{r['bound']}  {' '.join(r['checks_failed'])}"
        )
    q8 = next((r for r in rows if r["quant"] == "Q8_0"), rows[0])
    print(
        f"{q8['quant']}: export {q8['export_s']:.1f} s = {q8['export_s'] / TARGET_S:.2f} of the "
        f"{TARGET_S:.0f} s target; peak {q8['peak_rss_mb'] / q8['merged_mb']:.2f}x the merged "
        f"model (limit {MEMORY_FACTOR:g}x)"
    )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
