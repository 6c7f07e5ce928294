"""`meshtune eval` speed: 150 items x 3 samples of the embedded model through llama.cpp under
Mesh Master's options; prints the wall time and the ratio to the 5-minute target.

    .venv/bin/python benchmarks/eval_speed.py [--items 150] [--samples 3] [--threads 2]

The items are the first 150 of the shipped `mesh` suite. The untuned model is the slow case:
it runs to the 80-token limit on many questions. The numbers are also written as JSON.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

from meshtune.evaluate import evaluate
from meshtune.suites import Suite, load_suite

TARGET_S = 300.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=150)
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--profile", default="meshmaster")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    mesh = load_suite("mesh")
    suite = Suite(f"mesh[:{args.items}]", mesh.path, mesh.items[: args.items])
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:  # the report is written too, as the CLI does
        result = evaluate(
            "smollm2-135m",
            suite,
            backend="llamacpp",
            profile=args.profile,
            samples=args.samples,
            out=tmp,
            threads=args.threads,
        )
    elapsed = time.perf_counter() - start
    s = result.summary
    numbers = {
        "items": s["items"],
        "replies": s["replies"],
        "wall_s": round(elapsed, 1),
        "target_s": TARGET_S,
        "ratio": round(elapsed / TARGET_S, 3),
        "tokens": s["tokens"],
        "tokens_per_s_generation": s["tokens_per_s"],
        "runaway_rate": s["runaway_rate"],
        "threads": args.threads,
        "profile": args.profile,
    }
    print(
        f"eval speed: {s['items']} items x {args.samples} samples = {s['replies']} replies, "
        f"{s['tokens']} tokens ({s['runaway_rate']:.0%} hit the 80-token limit) in "
        f"{elapsed:.1f} s (load, generation and report), {s['tokens_per_s']} tokens/s"
    )
    print(
        f"target {TARGET_S:.0f} s: ratio time/target = {elapsed / TARGET_S:.2f} "
        f"({'met' if elapsed < TARGET_S else 'MISSED'})"
    )
    if args.json:
        args.json.write_text(json.dumps(numbers, indent=2) + "\n")


if __name__ == "__main__":
    main()
