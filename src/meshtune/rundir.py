"""The run directory: the one module that knows its layout and the records each stage leaves.

    RUN/recipe.yaml          the resolved recipe (train)
    RUN/metrics.jsonl        one line per step and per evaluation (train)
    RUN/loss.png             the loss plot (train)
    RUN/adapter/, best/      the final and the best LoRA adapter, or for a full fine-tune the
                             whole model with its tokenizer (train)
    RUN/checkpoints/         while training: the last two checkpoints (train)
    RUN/train_summary.json   TrainSummary (train)
    RUN/merged/              the adapter merged into the base weights, or a full fine-tune's
                             model in float32 (export)
    RUN/<name>-<TYPE>.gguf   the GGUF; ExportInfo names it (export)
    RUN/Modelfile, DEPLOY.md the Ollama Modelfile and the deploy note (export)
    RUN/meshtastic_knowledge.txt  the bot's knowledge file the model was trained with (export;
                             deploy installs it)
    RUN/export.json          ExportInfo (export)
    RUN/verify.json          Verification: the proof of that very GGUF (export verify)
    RUN/eval/                evaluation reports (evaluate)
    RUN/run.json             PipelineResult (`meshtune run`)

Stages read and write these through RunDir and the records below, never by file name; a record
is a dataclass whose JSON form is the file's (load(save(x)) == x).
"""

import dataclasses
import json
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Self

import yaml

from meshtune import jsontext
from meshtune.errors import MeshtuneError
from meshtune.files import read_json, write_json
from meshtune.meshmaster import DEFAULT_SYSTEM_PROMPT


@dataclass(frozen=True, slots=True)
class RunDir:
    path: Path

    @property
    def recipe(self) -> Path:
        return self.path / "recipe.yaml"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def loss_plot(self) -> Path:
        return self.path / "loss.png"

    @property
    def adapter(self) -> Path:
        return self.path / "adapter"

    @property
    def best(self) -> Path:
        return self.path / "best"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def summary(self) -> Path:
        return self.path / "train_summary.json"

    @property
    def merged(self) -> Path:
        return self.path / "merged"

    @property
    def modelfile(self) -> Path:
        return self.path / "Modelfile"

    @property
    def knowledge(self) -> Path:
        """The Meshtastic knowledge file for the bot's /meshtastic with this model."""
        return self.path / "meshtastic_knowledge.txt"

    @property
    def deploy_note(self) -> Path:
        return self.path / "DEPLOY.md"

    @property
    def export_info(self) -> Path:
        return self.path / "export.json"

    @property
    def verification(self) -> Path:
        return self.path / "verify.json"

    @property
    def eval(self) -> Path:
        return self.path / "eval"

    @property
    def run_record(self) -> Path:
        return self.path / "run.json"

    def is_trained(self) -> bool:
        """Whether this folder is a run directory `meshtune train` finished."""
        return self.summary.is_file()

    def load_summary(self) -> "TrainSummary":
        return TrainSummary.load(self.summary, "run `meshtune train` first")

    def load_export(self) -> "ExportInfo":
        return ExportInfo.load(self.export_info, "run `meshtune export` first")

    def load_verification(self) -> "Verification":
        fix = f"run `meshtune verify {self.path}` first"
        return Verification.from_dict(read_json(self.verification, fix))

    def exported_gguf(self) -> Path | None:
        """The GGUF the latest export wrote, if export.json names one that is there."""
        try:
            name = read_json(self.export_info, "").get("gguf")
        except MeshtuneError:
            return None
        gguf = self.path / name if isinstance(name, str) and name else None
        return gguf if gguf is not None and gguf.is_file() else None

    def recipe_keys(self) -> dict[str, Any]:
        """The resolved recipe as written (empty when there is none)."""
        if not self.recipe.is_file():
            return {}
        try:
            data = yaml.safe_load(self.recipe.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            raise MeshtuneError(
                f"{self.recipe}: unreadable ({str(e).splitlines()[0]}); fix or re-train"
            ) from e
        return data if isinstance(data, dict) else {}

    def ollama_overrides(self) -> dict[str, Any]:
        """The recipe's `ollama:` section: Modelfile PARAMETERs over the guide's values."""
        overrides = self.recipe_keys().get("ollama") or {}
        if not isinstance(overrides, dict):
            raise MeshtuneError(f"{self.recipe}: `ollama:` must map PARAMETER names to values")
        return overrides


class _Record:
    """JSON <-> dataclass for the records: keys the class does not know are ignored (a file
    from a newer meshtune), keys it lacks take their defaults (a file from an older one)."""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def load(cls, path: Path, fix: str) -> Self:
        """The record in `path`; a value of the wrong type is an error naming its key."""
        data = read_json(path, fix)
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.name in data and not _is_a(data[f.name], hints[f.name]):
                raise MeshtuneError(
                    f"{path}: `{f.name}` is {json.dumps(data[f.name])[:40]}, not a "
                    f"{_type_name(hints[f.name])}; {fix}"
                )
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    def save(self, path: Path) -> None:
        write_json(path, self.to_dict())


def _is_a(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a record field's type (an int fits a float; a bool is not a
    number)."""
    if hint is Any:
        return True
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return any(_is_a(value, h) for h in typing.get_args(hint))
    kind = typing.get_origin(hint) or hint
    if kind is type(None):
        return value is None
    if isinstance(value, bool):
        return kind is bool
    if kind is float:
        return isinstance(value, int | float)
    return isinstance(value, kind)


def _type_name(hint: Any) -> str:
    names = {**jsontext.TYPE_NAMES, int: "whole number"}
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    return " or ".join(names.get(typing.get_origin(h) or h, str(h)) for h in options)


@dataclass(slots=True)
class TrainSummary(_Record):
    """What `meshtune train` measured and chose (train_summary.json)."""

    base_model: str = ""
    base_folder: str = ""
    family: str | None = None  # the chat family trained
    system_prompt: str | None = None
    steps: int = 0
    total_steps_planned: int = 0
    epochs: float = 0.0
    stopped_early: bool = False
    eval_loss_before: float | None = None  # None: no held-out set (val_set_size 0)
    eval_loss_after: float | None = None
    best_step: int | None = None
    best_eval_loss: float | None = None
    best_adapter: str = "adapter"  # the folder export uses: "best" or "adapter"
    final_adapter_is: str = "last"
    fine_tune: str = "lora"  # "lora": adapter/ and best/ are adapters; "full": whole models
    final_train_loss: float | None = None
    wall_time_s: float = 0.0
    tokens_per_s: float | None = None
    trained_tokens_per_s: float | None = None
    device: str = "cpu"
    precision: str = "no"
    world_size: int = 1
    warnings: list[str] = field(default_factory=list)
    plan: dict[str, Any] = field(default_factory=dict)

    def eval_losses(self, digits: int) -> str | None:
        """ "eval loss A -> B", or None when the run had no held-out set to measure."""
        before, after = self.eval_loss_before, self.eval_loss_after
        if before is None or after is None:
            return None
        return f"eval loss {before:.{digits}f} -> {after:.{digits}f}"


@dataclass(slots=True)
class ExportInfo(_Record):
    """What `meshtune export` wrote (export.json)."""

    run: str = ""
    name: str = ""
    quant: str = ""
    gguf: str = ""  # file name, beside the Modelfile
    knowledge: str = ""  # the Meshtastic knowledge file's name, beside the Modelfile
    gguf_bytes: int = 0
    merged_bytes: int = 0
    family: str = ""
    seconds: float = 0.0
    stages: dict[str, float] = field(default_factory=dict)  # seconds per stage
    peak_rss_bytes: int = 0
    verified: bool = False


@dataclass(slots=True)
class Check:
    name: str
    ok: bool | None  # None: not run (a tool is missing)
    detail: str
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> str:
        return {True: "ok", False: "FAIL", None: "skipped"}[self.ok]


@dataclass(slots=True)
class Verification(_Record):
    """The proof of one GGUF file and the Modelfile that ships it (verify.json); deploy ships
    nothing else. Proven means every check the proof runs is there and none failed."""

    gguf: str
    quant: str
    checks: list[Check]
    sha256: str = ""
    bytes: int = 0
    modelfile_sha256: str = ""

    CHECKS = ("metadata", "tokens", "template", "logits", "stops", "modelfile")

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def failed(self) -> list[str]:
        """The checks that failed, and those the proof runs that are not there at all."""
        names = {c.name for c in self.checks}
        missing = [f"{n} (missing)" for n in self.CHECKS if n not in names]
        return [c.name for c in self.checks if c.ok is False] + missing

    def to_dict(self) -> dict[str, Any]:
        return {
            "gguf": self.gguf,
            "sha256": self.sha256,
            "bytes": self.bytes,
            "modelfile_sha256": self.modelfile_sha256,
            "quant": self.quant,
            "ok": self.ok,
            "checks": [asdict(c) for c in self.checks],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Verification":
        """A check passed only where its `ok` is JSON true (null: it could not run); any other
        value (0, "false", "true") is a failure, never a pass."""
        checks = [
            Check(str(c.get("name", "")), _check_ok(c), str(c.get("detail", "")), _dict(c))
            for c in data.get("checks") or []
            if isinstance(c, dict)
        ]
        text = lambda key: data[key] if isinstance(data.get(key), str) else ""  # noqa: E731
        size = data.get("bytes")
        return cls(
            text("gguf"),
            str(data.get("quant") or ""),
            checks,
            text("sha256"),
            size if isinstance(size, int) and not isinstance(size, bool) else 0,
            text("modelfile_sha256"),
        )


def _check_ok(check: dict[str, Any]) -> bool | None:
    ok = check.get("ok", False)
    return None if ok is None else ok is True


def _dict(check: dict[str, Any]) -> dict[str, Any]:
    data = check.get("data")
    return data if isinstance(data, dict) else {}


@dataclass(slots=True)
class PipelineResult(_Record):
    """What `meshtune run` measured, stage by stage (run.json)."""

    run_dir: str
    train: dict[str, Any]  # the TrainSummary keys the run reports
    export: dict[str, Any]  # gguf, seconds, verified
    verdict: str
    ready: bool
    comparison: dict[str, Any] | None = None  # base vs tuned, when the base was evaluated
    base_reused_from: str | None = None  # the cached base evaluation copied, if one was
    seconds: dict[str, float] = field(default_factory=dict)  # each stage's, and the total

    TRAIN_KEYS = (
        "steps",
        "wall_time_s",
        "tokens_per_s",
        "eval_loss_before",
        "eval_loss_after",
        "best_step",
    )

    @property
    def base_verdict(self) -> str | None:
        """The untuned base model's verdict, when it was evaluated beside the tuned one."""
        return self.comparison["a"]["verdict"] if self.comparison else None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if self.comparison is None:
            del out["comparison"]
        return out


@dataclass(frozen=True, slots=True)
class Trained:
    """A finished training run as export and the hf backend use it."""

    dir: Path
    base_model: str
    adapter: Path  # best/ when it holds the trained weights, else adapter/
    full: bool  # a full fine-tune: `adapter` is the whole model, not a LoRA adapter
    family: str | None  # as train recorded it
    system_prompt: str
    ollama: dict[str, Any]  # the recipe's Modelfile PARAMETERs


def load_trained(run_dir: str | Path) -> Trained:
    """The run's base model, adapter and deployment settings, checked: a missing or damaged
    piece is a one-line error naming it."""
    folder = Path(run_dir)
    if not folder.is_dir():
        raise MeshtuneError(
            f"{folder}: no such run directory; pass the folder `meshtune train` wrote"
        )
    run = RunDir(folder)
    summary = run.load_summary()
    recipe = run.recipe_keys()
    base = summary.base_model or recipe.get("base_model")
    if not base:
        raise MeshtuneError(f"{run.summary}: no base_model; re-run training")
    full = summary.fine_tune == "full"
    marker, what = ("config.json", "model") if full else ("adapter_config.json", "LoRA adapter")
    adapter = folder / (summary.best_adapter or "best")
    if not (adapter / marker).is_file():
        adapter = run.adapter
    if not (adapter / marker).is_file():
        raise MeshtuneError(
            f"{folder}: no {what} (best/ or adapter/ with {marker}); "
            "the training run did not finish"
        )
    if full:
        from meshtune.models import check_folder

        check_folder(adapter)
    else:
        check_adapter(adapter)
    return Trained(
        dir=folder,
        base_model=str(base),
        adapter=adapter,
        full=full,
        family=summary.family,
        system_prompt=summary.system_prompt or recipe.get("system_prompt") or DEFAULT_SYSTEM_PROMPT,
        ollama=run.ollama_overrides(),
    )


def system_prompt(folder: Path | None) -> str:
    """The deployment system prompt of a run (meshtune's default outside a run)."""
    run = RunDir(folder) if folder is not None else None
    if run is None or not run.is_trained():
        return DEFAULT_SYSTEM_PROMPT
    return run.load_summary().system_prompt or DEFAULT_SYSTEM_PROMPT


def check_adapter(folder: Path) -> None:
    """A LoRA adapter folder peft can load: its config a LoRA config, its weights complete.
    Checked before anything is written, so a damaged adapter is named, not a traceback."""
    from meshtune.models import check_safetensors

    fix = "the adapter is damaged: re-run training, or export another run"
    config = read_json(folder / "adapter_config.json", fix)
    if config.get("peft_type") != "LORA" or not isinstance(config.get("r"), int):
        raise MeshtuneError(
            f"{folder}/adapter_config.json: not a LoRA adapter config (peft_type LORA and r); {fix}"
        )
    weights = folder / "adapter_model.safetensors"
    if not weights.is_file():
        raise MeshtuneError(f"{folder}: no adapter_model.safetensors; {fix}")
    check_safetensors(weights)
