"""The suite's agreement with a careful judge: scores the judged replies with the `mesh`
suite's checks (the code path of `meshtune eval --replies`) and writes the figures as JSON.

    .venv/bin/python benchmarks/calibration.py [--judged FILE] [--suite mesh] [--json OUT]

Run it from the repository root: the defaults are the shared judged file and
reports/calibration.json.

Prints agreement, false passes and judged-correct replies passed, then every reply where the
suite and the judge disagree, with the suite's reasons.
"""

import argparse
import json
from pathlib import Path

from meshtune.evaluate.calibration import calibrate
from meshtune.files import write_json

JUDGED = Path("../shared/judged/mesh-suite-tuned-135m-sample0.jsonl")  # from the repo root


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--judged", type=Path, default=JUDGED)
    parser.add_argument("--suite", default="mesh")
    parser.add_argument("--json", type=Path, default=Path("reports/calibration.json"))
    args = parser.parse_args()
    cal = calibrate(args.judged, args.suite)
    write_json(args.json, cal.to_dict())
    v = cal.verdicts
    print(
        f"{cal.replies} judged replies ({v['correct']} correct, {v['partial']} partial, "
        f"{v['wrong']} wrong); the suite passes {cal.passed}"
    )
    print(
        f"agreement {cal.agreement:.1%}; false passes {cal.false_passes} (passed, judged wrong); "
        f"partial passed {cal.partial_passes}; judged correct passed {cal.correct_passed} "
        f"of {v['correct']}"
    )
    for d in cal.disagreements:
        said = "passes" if d["passed"] else "; ".join(d["reasons"])
        print(f"  {d['item']} judged {d['verdict']}, suite: {said}\n    {json.dumps(d['reply'])}")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
