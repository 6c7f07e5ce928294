"""Where a run stands: steps, evaluations, the best step, and warnings about its curves."""

import math
from dataclasses import dataclass, field

from meshtune.recipe import Recipe


@dataclass
class TrainState:
    step: int = 0
    epoch: float = 0.0
    eval_before: float | None = None
    best_loss: float = math.inf
    best_step: int | None = None
    bad_evals: int = 0
    stopped_early: bool = False
    evals: list[tuple[int, float]] = field(default_factory=list)
    train_losses: list[float] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def record_eval(self, step: int, loss: float) -> None:
        self.evals.append((step, loss))
        if loss < self.best_loss:
            self.best_loss, self.best_step, self.bad_evals = loss, step, 0
        else:
            self.bad_evals += 1

    def health(self, recipe: Recipe) -> list[str]:
        """Plain-language warnings about the curves, each given once."""
        found = []
        if len(self.evals) >= 3 and len(self.train_losses) >= 6:
            (_, a), (_, b), (_, c) = self.evals[-3:]
            recent = self.train_losses[-3:]
            earlier = self.train_losses[-6:-3]
            if a < b < c and sum(recent) < sum(earlier):
                found.append(
                    "eval loss has risen twice in a row while train loss falls: the model is "
                    "overfitting; fewer steps, a lower learning rate or more data will help"
                )
        if len(self.train_losses) >= 5 and max(self.train_losses[-5:]) < 0.05:
            found.append(
                "train loss is near zero: the model is memorising the data; it will repeat "
                "training replies verbatim"
            )
        new = [w for w in found if w not in self.warnings]
        self.warnings += new
        return new
