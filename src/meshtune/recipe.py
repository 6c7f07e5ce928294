"""Axolotl-compatible YAML recipes -> a typed, validated Recipe.

A user's existing Axolotl config runs: its keys keep their Axolotl meaning. Keys meshtune has
no use for are listed as ignored (never silently dropped); unknown keys are errors; keys that
contradict each other are resolved by a documented rule and reported.
"""

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from meshtune.data import DatasetSpec
from meshtune.errors import MeshtuneError
from meshtune.files import input_file
from meshtune.meshmaster import DEFAULT_SYSTEM_PROMPT

# Axolotl keys meshtune accepts but does not use, and why.
IGNORED_KEYS: dict[str, str] = {
    "model_type": "the architecture is read from the model's config",
    "tokenizer_type": "the tokenizer is the model's own",
    "strict": "meshtune is always strict",
    "pad_to_sequence_len": "meshtune packs without padding",
    "eval_batch_size": "evaluation packs rows like training",
    "tf32": "matmul precision is chosen per device",
    "flash_attention": "attention kernels are chosen by transformers",
    "flash_attn_cross_entropy": "attention kernels are chosen by transformers",
    "flash_attn_rms_norm": "attention kernels are chosen by transformers",
    "sdp_attention": "attention kernels are chosen by transformers",
    "xformers_attention": "attention kernels are chosen by transformers",
    "gradient_checkpointing": "not needed for LoRA on small models",
    "gradient_checkpointing_kwargs": "not needed for LoRA on small models",
    "dataset_prepared_path": "data is tokenized in memory",
    "evaluation_strategy": "evaluation follows eval_steps / evals_per_epoch",
    "eval_strategy": "evaluation follows eval_steps / evals_per_epoch",
    "save_strategy": "saving follows save_steps / saves_per_epoch",
    "save_total_limit": "meshtune keeps the last two checkpoints and the best adapter",
    "logging_steps": "every optimizer step is logged",
    "metric_for_best_model": "the best model is always the lowest eval loss",
    "greater_is_better": "the best model is always the lowest eval loss",
    "ddp_timeout": "the process group uses its default timeout",
    "group_by_length": "packing makes grouping by length unnecessary",
    "max_memory": "models are small enough to load whole",
    "low_cpu_mem_usage": "transformers' default is used",
    "wandb_project": "metrics go to metrics.jsonl",
    "wandb_entity": "metrics go to metrics.jsonl",
    "wandb_name": "metrics go to metrics.jsonl",
    "wandb_log_model": "metrics go to metrics.jsonl",
    "wandb_watch": "metrics go to metrics.jsonl",
    "hub_model_id": "meshtune never uploads",
    "train_on_inputs": "meshtune trains on assistant turns only",
    "eval_sample_packing": "evaluation packs rows like training",
    "logging_dir": "metrics go to metrics.jsonl",
}
IGNORED_DATASET_KEYS = {
    "ds_type",
    "data_files",
    "split",
    "name",
    "roles_to_train",
    "train_on_eos",
    "drop_system_message",
}


class MeshMasterRequests(BaseModel):
    """meshtune's `mesh_master:` key: send a share of the conversations (train and held-out) as
    Mesh Master's request, rendered by the one prompt builder at load time."""

    model_config = ConfigDict(extra="forbid")
    share: float = Field(0.5, ge=0, le=1)  # of the conversations the bot could send
    config: str | None = None  # the operator's config.json (default: the bot's shipped one)
    personas_file: str | None = None  # the bot's personas, for ids beyond its default
    personas: list[str] = Field(default_factory=list)  # sampled uniformly; default: the config's
    senders: list[str] = Field(default_factory=lambda: list(DEFAULT_SENDERS), min_length=1)


# Sender shortnames for rendered rows; varied so no name is learned as part of the prompt.
DEFAULT_SENDERS = ("K7QX", "BOB", "ALFA", "N0DE", "WX1", "MTN", "JEN", "RV42", "Ø7", "🐻")


class Recipe(BaseModel):
    """The recipe; field names and meanings are Axolotl's, plus `system_prompt` and `ollama`."""

    # inf and nan are never meaningful here (a learning_rate of .inf trains to NaN and exits 0)
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    base_model: str = "smollm2-135m"
    trust_remote_code: bool = False
    datasets: list[DatasetSpec] = Field(default_factory=list)
    chat_template: str | None = None  # chatml | llama3 | tokenizer_default: must match the model
    sequence_len: int = Field(2048, gt=8)
    sample_packing: bool = True
    special_tokens: dict[str, str] = Field(default_factory=dict)

    # No adapter (omitted, or null) is a full fine-tune, as in Axolotl: every parameter trains,
    # or those `unfrozen_parameters` names (regexes matched from the start of a parameter name).
    adapter: Literal["lora", "qlora"] | None = None
    unfrozen_parameters: list[str] | None = Field(None, min_length=1)
    load_in_4bit: bool = False
    load_in_8bit: bool = False
    lora_r: int = Field(8, gt=0)
    lora_alpha: float = Field(16, gt=0)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    lora_target_linear: bool = False
    lora_target_modules: list[str] | None = None
    # LoRA on these decoder layers only (0-based); on any engine the backward pass then stops
    # at the lowest of them, so top layers alone train in a fraction of the time.
    peft_layers_to_transform: list[int] | None = Field(None, min_length=1)

    learning_rate: float = Field(2e-4, gt=0)
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int | None = Field(None, ge=0)
    warmup_ratio: float | None = Field(None, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    optimizer: str = "adamw_torch"
    max_grad_norm: float = Field(1.0, gt=0)
    micro_batch_size: int = Field(1, gt=0)
    gradient_accumulation_steps: int = Field(1, gt=0)
    num_epochs: float = Field(1, gt=0)
    max_steps: int | None = Field(None, gt=0)

    val_set_size: float = Field(0.0, ge=0)
    eval_steps: int | None = Field(None, gt=0)
    evals_per_epoch: int | None = Field(None, gt=0)
    save_steps: int | None = Field(None, gt=0)
    saves_per_epoch: int | None = Field(None, gt=0)
    early_stopping_patience: int | None = Field(None, gt=0)
    load_best_model_at_end: bool = False

    bf16: bool | Literal["auto"] = "auto"
    fp16: bool = False
    seed: int = Field(42, ge=0, lt=2**32)  # numpy and torch take unsigned 32-bit seeds
    output_dir: str = "runs/meshtune"

    # meshtune's own keys
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    ollama: dict[str, Any] = Field(default_factory=dict)
    mesh_master: MeshMasterRequests | None = None

    @model_validator(mode="after")
    def _optimizer_known(self) -> "Recipe":
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer {self.optimizer!r} is not one of {', '.join(OPTIMIZERS)}")
        return self

    @field_validator("adapter", mode="before")
    @classmethod
    def _empty_adapter_is_none(cls, adapter: Any) -> Any:
        return None if adapter == "" else adapter  # `--set adapter=` or `adapter: ""`

    @field_validator("unfrozen_parameters")
    @classmethod
    def _patterns_compile(cls, patterns: list[str] | None) -> list[str] | None:
        for pattern in patterns or []:
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"{pattern!r} is not a regular expression ({e})") from e
        return patterns

    @field_validator("peft_layers_to_transform")
    @classmethod
    def _layers_distinct(cls, layers: list[int] | None) -> list[int] | None:
        if layers is not None and (min(layers) < 0 or len(set(layers)) != len(layers)):
            raise ValueError("peft_layers_to_transform: distinct layer numbers from 0")
        return sorted(layers) if layers else layers

    @property
    def full_fine_tune(self) -> bool:
        return self.adapter is None

    @property
    def unused_lora_keys(self) -> list[str]:
        """LoRA keys the recipe sets though it has no adapter."""
        return [k for k in LORA_KEYS if k in self.model_fields_set] if self.full_fine_tune else []

    @property
    def quantized(self) -> bool:
        return self.adapter == "qlora" or self.load_in_4bit or self.load_in_8bit

    @property
    def target_modules(self) -> str | list[str]:
        # lora_target_linear means every linear projection (peft's "all-linear").
        if self.lora_target_linear or not self.lora_target_modules:
            return "all-linear"
        return self.lora_target_modules


OPTIMIZERS = (
    "adamw_torch",
    "adamw_torch_fused",
    "adamw",
    "adamw_8bit",
    "adamw_bnb_8bit",
    "paged_adamw_8bit",
)


class LoadedRecipe(BaseModel):
    recipe: Recipe
    notes: list[str]  # what meshtune did about the file: ignored keys, resolved contradictions
    path: str


def load_recipe(
    path: str | Path, overrides: list[str] = (), data: str | None = None
) -> LoadedRecipe:
    """Read, apply `--set key=value` overrides and `--data`, validate."""
    path = Path(path)
    input_file(path, "a YAML recipe")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except OSError as e:
        raise MeshtuneError(f"{path}: cannot read recipe ({e.strerror}); check the path") from e
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise MeshtuneError(f"{_yaml_where(e, str(path))}: {_yaml_problem(e)}") from e
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise MeshtuneError(
            f"{path}: a recipe is a YAML mapping of keys; found a {type(raw).__name__}"
        )
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise MeshtuneError(
                f"--set {item!r}: expected key=value, e.g. --set learning_rate=1e-4"
            )
        raw[key.strip()] = _override_value(item, value)
    if data:
        raw["datasets"] = [{"path": data}]
    recipe, notes = parse_recipe(raw, path)
    return LoadedRecipe(recipe=recipe, notes=notes, path=str(path))


def parse_recipe(raw: dict[str, Any], path: Path) -> tuple[Recipe, list[str]]:
    raw = dict(raw)
    notes: list[str] = []
    ignored = sorted(k for k in raw if k in IGNORED_KEYS)
    if ignored:
        notes.append(f"Axolotl keys meshtune does not use, ignored: {', '.join(ignored)}")
    for key in ignored:
        del raw[key]
    bad_keys = [k for k in raw if not isinstance(k, str)]
    if bad_keys:
        raise MeshtuneError(f"{path}: key {bad_keys[0]!r} is not a name; recipe keys are words")
    datasets = raw.get("datasets") or []
    if not isinstance(datasets, list):
        raise MeshtuneError(
            f"{path}: datasets is a {_yaml_type(datasets)} ({datasets!r:.60}), not a list; write "
            "it as a list of entries, e.g. `datasets: [{path: data.jsonl}]`"
        )
    raw["datasets"] = [_dataset(d, path, notes) for d in datasets]
    notes += _resolve_contradictions(raw)
    if (raw.get("special_tokens") or {}) == {}:
        raw.pop("special_tokens", None)
    # Datasets are relative to the recipe file, as in Axolotl run from the recipe's folder.
    for d in raw["datasets"]:
        if not isinstance(d["path"], str) or not d["path"]:
            continue  # validation below names the bad value
        if not Path(d["path"]).is_absolute() and not Path(d["path"]).exists():
            candidate = path.parent / d["path"]
            if candidate.exists():
                d["path"] = str(candidate)
    mesh = raw.get("mesh_master")
    if isinstance(mesh, dict):
        for key in ("config", "personas_file"):
            value = mesh.get(key)
            if isinstance(value, str) and not Path(value).is_absolute():
                mesh[key] = str(path.parent / value)
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as e:
        raise MeshtuneError(_one_line(e, path)) from e
    _check_method_keys(recipe, path)
    return recipe, notes


# Keys a full fine-tune does not use: ignored with a plan warning, as Axolotl ignores them.
LORA_KEYS = (
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "lora_target_linear",
    "lora_target_modules",
    "peft_layers_to_transform",
)


def _check_method_keys(recipe: Recipe, path: Path) -> None:
    """Keys that cannot work with the recipe's training method are errors."""
    if recipe.full_fine_tune and (recipe.load_in_4bit or recipe.load_in_8bit):
        raise MeshtuneError(
            f"{path}: load_in_4bit / load_in_8bit train an adapter on a quantized model, but "
            "there is no adapter (a full fine-tune); add `adapter: qlora`, or remove them"
        )
    if not recipe.full_fine_tune and recipe.unfrozen_parameters:
        raise MeshtuneError(
            f"{path}: unfrozen_parameters is for a full fine-tune, but adapter is "
            f"{recipe.adapter}; remove the adapter key, or use peft_layers_to_transform"
        )


def _dataset(entry: Any, path: Path, notes: list[str]) -> dict[str, Any]:
    if isinstance(entry, str):
        return {"path": entry}
    if not isinstance(entry, dict) or "path" not in entry:
        raise MeshtuneError(
            f"{path}: datasets entry {entry!r:.60} has no path; write each entry as "
            "`- path: data.jsonl`"
        )
    entry = dict(entry)
    for key in sorted(IGNORED_DATASET_KEYS & entry.keys()):
        notes.append(f"ignored datasets.{key}")
        del entry[key]
    if entry.get("type") == "sharegpt":
        notes.append(
            "datasets.type sharegpt is read as Axolotl's chat_template over "
            "conversations/from/value (current Axolotl deprecates the sharegpt type)"
        )
    return entry


CONTRADICTIONS = (
    ("warmup_steps", "warmup_ratio"),
    ("save_steps", "saves_per_epoch"),
    ("eval_steps", "evals_per_epoch"),
)


def _resolve_contradictions(raw: dict[str, Any]) -> list[str]:
    """Current Axolotl rejects these pairs. The rule: the explicit step count wins, as in the
    Hugging Face Trainer older Axolotl ran on ("warmup_steps overrides any effect of
    warmup_ratio"), so the recipe behaves as it did for its author."""
    notes = []
    for steps, relative in CONTRADICTIONS:
        if raw.get(steps) is not None and raw.get(relative) is not None:
            notes.append(
                f"{steps} {raw[steps]} and {relative} {raw[relative]} both set: using "
                f"{steps} (an explicit step count wins, as in the Hugging Face Trainer)"
            )
            raw[relative] = None
    if raw.get("bf16") is True and raw.get("fp16") is True:
        notes.append("bf16 and fp16 both true: using bf16 where the device has it, else fp16")
    return notes


def _one_line(e: ValidationError, path: Path) -> str:
    err = e.errors()[0]
    key = ".".join(str(p) for p in err["loc"]) or "recipe"
    if err["type"] == "extra_forbidden":
        return (
            f"{path}: unknown key {key!r}; check the spelling against Axolotl's config keys "
            "(meshtune docs list the ones it reads and ignores)"
        )
    if err["type"] == "finite_number":
        return f"{path}: {key}: must be a finite number, not {err['input']!r}; fix the value"
    return f"{path}: {key}: {err['msg']}; fix the value"


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error: with the
    plain loader the last one silently wins, and the recipe does not do what it says."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            try:
                key = self.construct_object(key_node, deep=True)
                hash(key)
            except (TypeError, yaml.constructor.ConstructorError):
                continue  # the base class reports an unhashable key
            line = key_node.start_mark.line + 1
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key {key!r} appears twice (lines {seen[key]} and {line}); keep one",
                    key_node.start_mark,
                )
            seen[key] = line
        return super().construct_mapping(node, deep)


def _yaml_where(e: Exception, where: str) -> str:
    mark = getattr(e, "problem_mark", None)
    return f"{where}:{mark.line + 1}" if mark else where


def _yaml_problem(e: Exception) -> str:
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    if "appears twice" in problem:
        return problem
    return f"not valid YAML ({problem}); fix the syntax"


def _override_value(item: str, value: str) -> Any:
    """A `--set` value read as YAML (1e-4, true, [a, b]); an empty value is null."""
    if not value.strip():
        return None
    try:
        return yaml.load(value, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise MeshtuneError(
            f"--set {item!r}: the value is not valid YAML ({problem}); quote text, "
            "e.g. --set 'system_prompt=\"...\"'"
        ) from e


def _yaml_type(value: Any) -> str:
    return {int: "number", float: "number", str: "string", bool: "boolean", dict: "mapping"}.get(
        type(value), type(value).__name__
    )


def dump_recipe(recipe: Recipe) -> str:
    """The resolved recipe as YAML that loads back: a full fine-tune's without the LoRA keys."""
    exclude = set(LORA_KEYS) if recipe.full_fine_tune else {"unfrozen_parameters"}
    keys = recipe.model_dump(mode="json", exclude=exclude)
    return yaml.safe_dump(keys, sort_keys=False, allow_unicode=True)
