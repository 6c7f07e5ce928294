"""The pointer experiment's training files (issue 21, rounds 3 and 4 of
benchmarks/recipe_search_h200.sh): the hand-written technical DM replies the 135M model gets
wrong (88% of its technical replies state a wrong fact) replaced by the `/meshtastic` pointer
build_core.py teaches, in several shares.

    python benchmarks/pointer_data.py runs/pointer-data   # writes conv_<variant>.jsonl there

A technical row (radio, troubleshooting, roles, hardware, channels) whose reply states a core
fact (the ones build_core.py drills: LongFast, AQ==, region UNSET, the hop limit, 8 channels,
SF11 / 250 kHz, -17.5 dB) keeps its reply; of the others, `share` get the pointer and the rest
are kept or dropped; `copies` repeats every other hand-written row (commands, relay, greetings,
...) so that bot usage keeps its weight beside the pointer.
"""

import importlib.util
import json
import random
import re
import sys
from pathlib import Path
from types import ModuleType

TRAIN = Path(__file__).resolve().parents[1] / "data" / "mesh_conversations.jsonl"
TECHNICAL = {"radio", "troubleshooting", "roles", "hardware", "channels"}
CORE = re.compile(
    r"LongFast|AQ==|\bUNSET\b|hop limit|\b3 hops\b|\b8 channels\b|SF11|250 kHz|-17\.5", re.I
)


def _build_core() -> ModuleType:
    """data/build_core.py (a script, not a package): its pointer frames are the ones taught."""
    spec = importlib.util.spec_from_file_location("build_core", TRAIN.parent / "build_core.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FRAMES = _build_core().POINTERS
SHORT = (
    "I'd be guessing from memory. Ask me with /meshtastic and your question, and I'll answer "
    "from the reference."
)
# name: (share of the other technical rows given the pointer, keep the rest?, copies)
VARIANTS = {
    "point": (1.0, False, 1),
    "point3d": (1 / 3, False, 1),
    "point3k": (1 / 3, True, 1),
    "point3dup2": (1 / 3, False, 2),
}


def pointer(question: str, i: int) -> str:
    """A pointer naming the question, in one radio chunk (160 bytes)."""
    reply = FRAMES[i % len(FRAMES)].format(q=question.strip().rstrip("?!. "))
    return reply if len(reply.encode()) <= 160 else SHORT


def variant(rows: list[dict], share: float, keep_rest: bool, copies: int) -> list[dict]:
    rng = random.Random(7)
    out = []
    for i, row in enumerate(rows):
        turns = row["conversations"]
        hand = row.get("source") != "build_core"
        if row.get("category") in TECHNICAL and hand and len(turns) == 2:
            if CORE.search(turns[1]["value"]):
                out.append(row)
            elif rng.random() < share:
                answer = {"from": "gpt", "value": pointer(turns[0]["value"], i)}
                out.append({**row, "conversations": [turns[0], answer]})
            elif keep_rest:
                out.append(row)
            continue
        out += [row] * (copies if hand and row.get("category") not in TECHNICAL else 1)
    return out


def main(folder: Path) -> None:
    rows = [json.loads(line) for line in TRAIN.read_text().splitlines() if line.strip()]
    folder.mkdir(parents=True, exist_ok=True)
    for name, args in VARIANTS.items():
        out = variant(rows, *args)
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in out)
        (folder / f"conv_{name}.jsonl").write_text(text)
        pointed = sum("/meshtastic" in r["conversations"][-1]["value"] for r in out)
        print(f"{name}: {len(out)} rows, {pointed} replies point to /meshtastic")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
