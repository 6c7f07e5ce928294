"""`meshtune data check` on 100,000 conversations: prints the wall time and the ratio to the
20-second target.

    .venv/bin/python benchmarks/data_check.py [--rows 100000]
"""

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_S = 20.0


def make_file(path: Path, rows: int, seed: int = 0) -> None:
    """Varied single- and multi-turn rows in both formats, so every lint rule does real work."""
    rng = random.Random(seed)
    words = "node mesh relay snr rssi hop channel antenna router client battery gps lora".split()
    with path.open("w") as f:
        for i in range(rows):
            q = " ".join(rng.choices(words, k=6)) + f" {i}?"
            a = f"Reply {i}: " + " ".join(rng.choices(words, k=rng.randint(8, 25))) + " /nodes."
            turns = [("user", q), ("assistant", a)] * rng.choice((1, 1, 1, 2))
            if i % 2:
                row = {
                    "category": "bench",
                    "messages": [{"role": r, "content": c} for r, c in turns],
                }
            else:
                row = {
                    "conversations": [
                        {"from": {"user": "human", "assistant": "gpt"}[r], "value": c}
                        for r, c in turns
                    ]
                }
            f.write(json.dumps(row) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.jsonl"
        make_file(path, args.rows)
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "meshtune", "data", "check", str(path), "--json"],
            capture_output=True,
            text=True,
        )
        elapsed = time.perf_counter() - start
    report = json.loads(proc.stdout)
    print(
        f"data check: {report['conversations']:,} conversations, {report['errors']} errors, "
        f"{report['warnings']:,} warnings in {elapsed:.1f} s (whole command, start-up included)"
    )
    print(
        f"target {TARGET_S:.0f} s: ratio time/target = {elapsed / TARGET_S:.2f} "
        f"({'met' if elapsed < TARGET_S else 'MISSED'})"
    )


if __name__ == "__main__":
    main()
