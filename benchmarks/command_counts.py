"""Issue 21 asks "every command taught often enough to be right (measure which count is
enough)". This measures it on a finished evaluation: for each `commands` item of the `mesh`
suite, how many training replies name the command a right answer names first, against how
often the tuned model's replies to that item pass and name a wrong command.

    PYTHONPATH=src .venv/bin/python benchmarks/command_counts.py \
        reports/embedded-cpu-run-5034a2b/tuned/replies.jsonl

The counts are of the training set as `meshtune data stats` counts them (replies naming the
command, data/mesh_conversations.jsonl; the knowledge rows name none but `/meshtastic`).
"""

import json
import sys
from collections import defaultdict
from pathlib import Path

from meshtune import data
from meshtune.commands import load_registry

REPO = Path(__file__).resolve().parents[1]
BINS = [(0, 20), (20, 30), (30, 40), (40, 10_000)]


def main(replies: Path) -> None:
    registry = load_registry()
    taught, _ = data.command_counts(
        data.load_conversations(REPO / "data" / "mesh_conversations.jsonl"), registry
    )
    suite = [json.loads(line) for line in (REPO / "data/eval/mesh_eval.jsonl").open()]
    items = {i["id"]: i for i in suite if i["category"] == "commands" and i["allow_commands"]}
    by_item: dict[str, list[dict]] = defaultdict(list)
    for row in map(json.loads, replies.open()):
        if row["item"] in items:
            by_item[row["item"]].append(row)
    rows = []
    for item_id, item in items.items():
        command = registry.canonical(item["allow_commands"][0]) or item["allow_commands"][0]
        got = by_item[item_id]
        passed = sum(r["passed"] for r in got) / len(got)
        wrong = sum(bool(r["wrong_commands"]) for r in got) / len(got)
        rows.append((taught[command], command, item_id, passed, wrong, len(got)))
    rows.sort()
    print(f"{'taught':>6}  {'command':14} {'item':12} pass  wrong-command  (replies)")
    for count, command, item_id, passed, wrong, n in rows:
        print(f"{count:6}  {command:14} {item_id:12} {passed:4.2f}  {wrong:4.2f}  ({n})")
    print(f"\n{'taught replies':>16}  items  pass  wrong-command")
    for lo, hi in BINS:
        inside = [r for r in rows if lo <= r[0] < hi]
        if inside:
            passed = sum(r[3] for r in inside) / len(inside)
            wrong = sum(r[4] for r in inside) / len(inside)
            label = f"{lo}-{hi - 1}" if hi < 10_000 else f"{lo}+"
            print(f"{label:>16}  {len(inside):5}  {passed:4.2f}  {wrong:4.2f}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
