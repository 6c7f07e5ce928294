"""The gate: the v2 guide's success criteria as thresholds, and a READY / NOT READY verdict.

Defaults (each overridable in a small YAML file, `null` switches a criterion off):

    max_loop_rate: 0.0             # "No repetitive loops"
    max_runaway_rate: 0.0          # no reply runs into num_predict without ending its turn
    max_invented_command_rate: 0.0 # "Doesn't hallucinate commands"
    max_wrong_command_rate: 0.02   # a real command named for a job it does not do
    max_command_dump_rate: 0.02    # red flag "just listing commands instead of explaining"
    max_canned_rate: 0.02          # red flag "ignoring the question and giving a canned response"
    max_p90_chars: 200             # the guide's 200-character limit, for 9 replies in 10
    median_chars: [80, 150]        # "Responses are concise (80-150 chars typical)"
    min_pass_rate: 0.6             # mean item pass rate (see metrics.py)
    max_technical_wrong_rate: 0.1  # technical DM replies that are neither right nor a pointer
    min_delivered_pass_rate: 0.6   # knowledge items whose answer reached the model, per kind
    min_refusal_rate: 0.8          # the refusal, where the answer did not reach it, per kind

Every criterion is also given per request kind (DM, channel, `/meshtastic`, follow-up; the
verdict is on the whole suite): a kind's figures say which of the bot's requests the model
gets wrong.

Why 0.6: an item passes only when its reply answers with the expected facts (a command, a
shortname, a number), avoids forbidden ones, fits max_chars and shows no red flag, and a
sampled profile draws three replies at temperature 0.7. 0.6 asks a tuned model to get a clear
majority of those right while leaving room for a 135M model's sampling noise; the untuned base
stays far below it (see the README's baseline numbers).
Wrong commands are counted apart from invented ones: a model that knows the registry's names
can still send `/save` to relay or `/nodes` for every problem, and a user following it fails
just the same. They allow 2%, as the red flags do, for an item whose allowed commands are
drawn too narrowly. The two red-flag rates allow 2%: the guide names them as habits
("consistently"), and a question such as "what commands are there?" may deserve a short list.
Technical DM questions are answered from memory, where a 135M model can hold only a few core
facts: a short pointer to `/meshtastic` is an honest answer, a wrong fact is not; 10% allows
the occasional slip the issue names.
Knowledge items (`/meshtastic`, follow-ups) are judged apart for each kind, by what the model
saw (delivery.py): where the retrieval delivered the answer, a pass rate of 0.6 as for the
suite; where it did not, 80% of replies must be the bot's refusal sentence, since any other
reply states what the excerpts do not support.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from meshtune.errors import MeshtuneError
from meshtune.evaluate.backends import CUTTING_BACKENDS
from meshtune.files import read_text

EXAMPLES = 3  # example replies shown per failing criterion


class GateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_loop_rate: float | None = 0.0
    max_runaway_rate: float | None = 0.0
    max_invented_command_rate: float | None = 0.0
    max_wrong_command_rate: float | None = 0.02
    max_command_dump_rate: float | None = 0.02
    max_canned_rate: float | None = 0.02
    max_p90_chars: float | None = 200
    median_chars: tuple[float, float] | None = (80, 150)
    min_pass_rate: float | None = 0.6
    max_technical_wrong_rate: float | None = 0.1
    min_delivered_pass_rate: float | None = 0.6
    min_refusal_rate: float | None = 0.8

    @field_validator("median_chars")
    @classmethod
    def _range(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and v[0] > v[1]:
            raise ValueError("the lower bound is above the upper bound")
        return v


def load_gate(path: str | Path | None) -> GateConfig:
    if path is None:
        return GateConfig()
    path = Path(path)
    try:
        raw = yaml.safe_load(read_text(path)) or {}
    except yaml.YAMLError as e:
        raise MeshtuneError(f"{path}: not valid YAML; fix the syntax") from e
    try:
        return GateConfig.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            known = ", ".join(GateConfig.model_fields)
            raise MeshtuneError(f"{path}: unknown key '{key}'; the keys are {known}") from e
        raise MeshtuneError(f"{path}: '{key}': {err['msg']}; fix the value") from e


@dataclass(slots=True)
class Criterion:
    name: str
    ok: bool
    value: float
    limit: str  # e.g. "<= 0" or "80-150"
    what: str
    examples: list[dict[str, Any]] = field(default_factory=list)
    by_kind: dict[str, float] = field(default_factory=dict)  # the value per request kind

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ok": self.ok,
            "value": self.value,
            "limit": self.limit,
            "what": self.what,
            "examples": [_example(r) for r in self.examples],
            "by_kind": self.by_kind,
        }


@dataclass(slots=True)
class Verdict:
    ready: bool
    criteria: list[Criterion]

    @property
    def label(self) -> str:
        return "READY" if self.ready else "NOT READY"

    @property
    def failing(self) -> list[Criterion]:
        return [c for c in self.criteria if not c.ok]

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.label, "criteria": [c.to_dict() for c in self.criteria]}


def _example(r: dict[str, Any]) -> dict[str, Any]:
    return {
        "item": r["item"],
        "sample": r["sample"],
        "question": r["question"],
        "reply": r["reply"],
        "failures": r["failures"],
        "reasons": r.get("reasons", []),
    }


def _spread(rows: list[dict[str, Any]], n: int = EXAMPLES) -> list[dict[str, Any]]:
    """Up to n rows from different items, so examples are not three samples of one prompt."""
    picked, seen = [], set()
    for r in rows:
        if r["item"] not in seen:
            picked.append(r)
            seen.add(r["item"])
        if len(picked) == n:
            break
    return picked


# The rate criteria: (name, GateConfig limit, summary key, what it measures, flagged reply).
_RATES: tuple[tuple[str, str, str, str, Callable[[dict[str, Any]], Any]], ...] = (
    ("loops", "max_loop_rate", "loop_rate", "share of replies that loop",
     lambda r: r["loop"] is not None),
    ("runaways", "max_runaway_rate", "runaway_rate",
     "share of replies that hit num_predict without an end token", lambda r: r["runaway"]),
    ("invented commands", "max_invented_command_rate", "invented_command_rate",
     "share of replies naming a command the bot does not have",
     lambda r: r["invented_commands"]),
    ("wrong commands", "max_wrong_command_rate", "wrong_command_rate",
     "share of replies naming a real command the item does not allow (another job's command)",
     lambda r: r.get("wrong_commands")),
    ("command dumps", "max_command_dump_rate", "command_dump_rate",
     "share of replies that list commands instead of answering", lambda r: r["command_dump"]),
    ("canned replies", "max_canned_rate", "canned_rate",
     "share of replies given word for word to 3+ different prompts", lambda r: r.get("canned")),
)  # fmt: skip


def judge(summary: dict[str, Any], rows: list[dict[str, Any]], cfg: GateConfig) -> Verdict:
    criteria: list[Criterion] = []
    for name, limit_key, key, what, flagged in _RATES:
        limit = getattr(cfg, limit_key)
        value = summary.get(key)  # None: a report written before this rate was measured
        if limit is not None and value is not None:
            ok = value <= limit
            bad = [] if ok else _spread([r for r in rows if flagged(r)])
            criteria.append(Criterion(name, ok, value, f"<= {limit:g}", what, bad))
    if cfg.max_p90_chars is not None:
        value = summary["chars"]["p90"]
        ok = value <= cfg.max_p90_chars
        longest = sorted(rows, key=lambda r: -r["chars"])
        criteria.append(
            _criterion(
                "p90 length",
                ok,
                value,
                f"<= {cfg.max_p90_chars:g} chars",
                "90th percentile of reply characters",
                longest,
            )
        )
    if cfg.median_chars is not None:
        lo, hi = cfg.median_chars
        value = summary["chars"]["p50"]
        typical = sorted(rows, key=lambda r: abs(r["chars"] - value))  # replies near the median
        criteria.append(
            _criterion(
                "median length",
                lo <= value <= hi,
                value,
                f"{lo:g}-{hi:g} chars",
                "median reply characters",
                typical,
            )
        )
    if cfg.min_pass_rate is not None:
        value = summary["pass_rate"]
        failed = [r for r in rows if not r["passed"]]
        ok = value >= cfg.min_pass_rate
        criteria.append(
            _criterion(
                "item pass rate",
                ok,
                value,
                f">= {cfg.min_pass_rate:g}",
                "mean share of samples passing their item's checks",
                failed,
            )
        )
    if cfg.max_technical_wrong_rate is not None and summary.get("technical", {}).get("replies"):
        value = summary["technical"]["wrong"]
        ok = value <= cfg.max_technical_wrong_rate
        wrong = [r for r in rows if r.get("answer") == "wrong"]
        criteria.append(
            _criterion(
                "technical wrong",
                ok,
                value,
                f"<= {cfg.max_technical_wrong_rate:g}",
                "share of technical DM replies neither right nor a pointer to /meshtastic",
                wrong,
            )
        )
    criteria += _knowledge_criteria(summary, rows, cfg)
    criteria += _whole_prompts(summary, rows)
    for c in criteria:
        c.by_kind = _by_kind(c.name, summary)
    return Verdict(all(c.ok for c in criteria), criteria)


def _knowledge_criteria(
    summary: dict[str, Any], rows: list[dict[str, Any]], cfg: GateConfig
) -> list[Criterion]:
    """For each knowledge kind: the pass rate of its delivered items, and the refusal rate of
    the replies to the others (each only when the suite has such items)."""
    criteria = []
    for kind, k in summary.get("knowledge", {}).items():
        mine = [r for r in rows if r.get("kind") == kind]
        got, missed = k["delivered"], k["undelivered"]
        if cfg.min_delivered_pass_rate is not None and got["items"]:
            value = got["pass_rate"]
            failed = [r for r in mine if r.get("delivered") and not r["passed"]]
            criteria.append(
                _criterion(
                    f"{kind} delivered pass",
                    value >= cfg.min_delivered_pass_rate,
                    value,
                    f">= {cfg.min_delivered_pass_rate:g}",
                    f"mean pass rate of the {kind} items whose answer the retrieval delivered",
                    failed,
                )
            )
        if cfg.min_refusal_rate is not None and missed["items"]:
            value = missed["refusal_rate"]
            other = [r for r in mine if r.get("delivered") is False and not r.get("refused")]
            criteria.append(
                _criterion(
                    f"{kind} refusal",
                    value >= cfg.min_refusal_rate,
                    value,
                    f">= {cfg.min_refusal_rate:g}",
                    f"share of replies to {kind} items whose answer was not delivered that "
                    "are the bot's refusal sentence",
                    other,
                )
            )
    return criteria


def _whole_prompts(summary: dict[str, Any], rows: list[dict[str, Any]]) -> list[Criterion]:
    """Prompts Ollama would cut at the config's num_ctx, answered by a backend that saw them
    whole: those replies answer another input than the bot's model gets, so no READY."""
    over = (summary.get("over_num_ctx") or {}).get("items") or {}
    backend = summary.get("backend")
    if not over or backend in CUTTING_BACKENDS:
        return []
    num_ctx = summary["over_num_ctx"]["num_ctx"]
    what = (
        f"prompts the {backend} backend saw whole but Ollama cuts at num_ctx {num_ctx}; "
        "evaluate with --backend llamacpp or hf, or raise ollama_num_ctx"
    )
    cut = [r for r in rows if r["item"] in over]
    return [_criterion("prompts within num_ctx", False, len(over), "0", what, cut)]


# Where each criterion's value lies in a summary (the whole suite's or one kind's).
_VALUES: dict[str, Callable[[dict[str, Any]], Any]] = {
    **{name: (lambda s, key=key: s.get(key)) for name, _, key, _, _ in _RATES},
    "p90 length": lambda s: s["chars"]["p90"],
    "median length": lambda s: s["chars"]["p50"],
    "item pass rate": lambda s: s["pass_rate"],
}


def _by_kind(name: str, summary: dict[str, Any]) -> dict[str, float]:
    """A criterion's value in each request kind's figures (none for a criterion of one kind)."""
    value = _VALUES.get(name)
    if value is None:
        return {}
    kinds = summary.get("kinds", {})
    return {k: v for k, s in kinds.items() if (v := value(s)) is not None}


def _criterion(
    name: str, ok: bool, value: float, limit: str, what: str, examples: list[dict[str, Any]]
) -> Criterion:
    """A criterion with example replies (the first of `examples`) when it fails."""
    return Criterion(name, ok, value, limit, what, [] if ok else _spread(examples))
