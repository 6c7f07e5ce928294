"""Calibration: how far the suite's pass agrees with a careful judge's reading of the same
replies (`../shared/judged/`: one JSON object a line with `item`, `reply` and `verdict`
correct | partial | wrong).

The replies are scored by `score_replies`, the code path of `meshtune eval --replies`, so the
figures are those of the checks a model's evaluation applies. A pass agrees with the judge
when the judge found the reply correct; partial counts as not passed (a user following a
partial answer does not succeed).
"""

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from meshtune.errors import MeshtuneError
from meshtune.evaluate import score_replies
from meshtune.files import read_text
from meshtune.suites import Suite, json_object

VERDICTS = ("correct", "partial", "wrong")


@dataclass(slots=True)
class Calibration:
    judged: str  # the judged file
    suite: str
    replies: int
    verdicts: dict[str, int]  # the judge's counts
    passed: int  # replies the suite passes
    agreement: float  # share of replies where pass == judged correct
    false_passes: int  # passed, judged wrong
    partial_passes: int  # passed, judged partial
    correct_passed: int  # judged correct and passed
    disagreements: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def judged_verdicts(path: Path) -> list[str]:
    """The judge's verdict of every reply line, in order."""
    verdicts = []
    for lineno, line in enumerate(read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        verdict = json_object(line, f"{path}:{lineno}").get("verdict")
        if verdict not in VERDICTS:
            raise MeshtuneError(
                f"{path}:{lineno}: 'verdict' {verdict!r} must be one of {', '.join(VERDICTS)}"
            )
        verdicts.append(verdict)
    return verdicts


def calibrate(judged: str | Path, suite: str | Suite = "mesh") -> Calibration:
    """The suite's verdicts on the judged replies, against the judge's."""
    path = Path(judged)
    verdicts = judged_verdicts(path)
    result = score_replies(path, suite)
    rows = result.rows
    passed = [r["passed"] for r in rows]
    disagreements = [
        {
            "item": r["item"],
            "verdict": v,
            "passed": r["passed"],
            "reasons": r["reasons"],
            "reply": r["reply"],
        }
        for r, v in zip(rows, verdicts, strict=True)
        if r["passed"] != (v == "correct")
    ]
    pairs = Counter(zip(passed, verdicts, strict=True))
    return Calibration(
        judged=str(path),
        suite=result.summary["suite"],
        replies=len(rows),
        verdicts={v: verdicts.count(v) for v in VERDICTS},
        passed=sum(passed),
        agreement=round(1 - len(disagreements) / len(rows), 4),
        false_passes=pairs[True, "wrong"],
        partial_passes=pairs[True, "partial"],
        correct_passed=pairs[True, "correct"],
        disagreements=disagreements,
    )
