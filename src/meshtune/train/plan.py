"""The training arithmetic, worked out from already-encoded examples before any weight is
loaded, so a recipe that cannot train is caught in seconds."""

import json
import math
from dataclasses import dataclass, field
from typing import Any

from meshtune import chat
from meshtune.errors import MeshtuneError
from meshtune.models import EMBEDDED, resolve
from meshtune.recipe import LoadedRecipe, Recipe
from meshtune.train.examples import encode_all, load_splits
from meshtune.train.packing import micro_batches, pack

MIN_STEPS_PER_EPOCH = 20

CPU_ENGINE = "cpu"
CUDA_ENGINE = "cuda"
ENGINES = {
    CPU_ENGINE: "CPU: one attention call per conversation, shared system prompts computed once",
    CUDA_ENGINE: "CUDA: one flex-attention call per layer per micro batch (per-conversation "
    "causal mask), compiled decoder layers, chunked loss at trained positions",
}


@dataclass
class Tokenized:
    """The recipe's data, loaded and tokenized once, and the tokenizer that did it."""

    tokenizer: Any
    tokenizer_from: str
    estimate: bool  # the base model is missing: the embedded model's tokenizer stands in
    train: list[chat.Encoded]
    eval: list[chat.Encoded]


def tokenize(recipe: Recipe, notes: list[str]) -> Tokenized:
    tokenizer, tokenizer_from, estimate = _plan_tokenizer(recipe, notes)
    train_convs, eval_convs = load_splits(recipe)
    return Tokenized(
        tokenizer,
        tokenizer_from,
        estimate,
        encode_all(tokenizer, train_convs, recipe, "train"),
        encode_all(tokenizer, eval_convs, recipe, "eval"),
    )


@dataclass
class Plan:
    base_model: str
    tokenizer_from: str
    estimate: bool  # token counts come from a stand-in tokenizer
    family: str
    conversations: int
    train_conversations: int
    eval_conversations: int
    tokens: int
    trained_tokens: int
    truncated: int
    packed_rows: int
    computed_tokens: int  # per epoch, each row's shared prefix counted once
    eval_rows: int
    micro_batches_per_epoch: int
    world_size: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    eval_interval: int | None
    evals: int
    save_interval: int | None
    checkpoints: int
    engine: str = CPU_ENGINE
    method: str = ""  # what trains: the adapter, or the full fine-tune's parameter count
    token_budget: int | None = None  # CUDA: tokens per joined micro batch
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def trained_fraction(self) -> float:
        return self.trained_tokens / self.tokens if self.tokens else 0.0

    def lines(self) -> list[str]:
        est = " (estimated with the embedded model's tokenizer)" if self.estimate else ""
        budget = (
            f"; micro batches joined up to {self.token_budget:,} tokens"
            if self.token_budget
            else ""
        )
        out = [
            f"method            {self.method}",
            f"base model        {self.base_model} ({self.family} chat template; "
            f"tokens from {self.tokenizer_from}{est})",
            f"conversations     {self.conversations}: {self.train_conversations} train, "
            f"{self.eval_conversations} eval",
            f"tokens            {self.tokens:,} train tokens, {self.trained_tokens:,} trained "
            f"({self.trained_fraction:.1%}), {self.truncated} truncated examples",
            f"packed rows       {self.packed_rows} train rows, {self.eval_rows} eval rows; "
            f"{self.computed_tokens:,} tokens computed per epoch "
            f"({1 - self.computed_tokens / max(1, self.tokens):.0%} shared prefixes saved)",
            f"optimizer steps   {self.steps_per_epoch} per epoch, {self.total_steps} in total "
            f"({self.micro_batches_per_epoch} micro batches per epoch, "
            f"{self.world_size} process(es))",
            f"warmup            {self.warmup_steps} of {self.total_steps} steps",
            f"evaluations       {self.evals}"
            + (f" (every {self.eval_interval} steps" if self.eval_interval else "")
            + (
                " and the last"
                if self.eval_interval and self.total_steps % self.eval_interval
                else ""
            )
            + (")" if self.eval_interval else ""),
            f"checkpoints       {self.checkpoints}"
            + (f" (every {self.save_interval} steps)" if self.save_interval else ""),
            f"engine            {ENGINES[self.engine]}{budget}",
        ]
        out += [f"note: {n}" for n in self.notes]
        out += [f"WARNING: {w}" for w in self.warnings]
        return out


def default_engine() -> str:
    """The engine is chosen by capability: CUDA where there is a CUDA GPU."""
    import torch

    return CUDA_ENGINE if torch.cuda.is_available() else CPU_ENGINE


def make_plan(loaded: LoadedRecipe, world_size: int = 1, engine: str | None = None) -> Plan:
    """Tokenize the data and work out the training arithmetic; warn where it cannot work."""
    notes = list(loaded.notes)
    data = tokenize(loaded.recipe, notes)
    return plan_examples(loaded.recipe, data, notes, world_size, engine or default_engine())


def plan_examples(
    recipe: Recipe, data: Tokenized, notes: list[str], world_size: int, engine: str
) -> Plan:
    share = engine == CPU_ENGINE
    rows = pack(data.train, recipe.sequence_len, recipe.sample_packing, recipe.seed, share)
    eval_rows = pack(data.eval, recipe.sequence_len, recipe.sample_packing, None, share)
    micro = math.ceil(len(rows) / recipe.micro_batch_size)
    per_step = recipe.gradient_accumulation_steps * world_size
    steps_per_epoch = max(1, math.ceil(micro / per_step))
    total = recipe.max_steps or max(1, math.ceil(steps_per_epoch * recipe.num_epochs))
    warmup = warmup_steps(recipe, total)
    eval_interval = (
        _interval(recipe.eval_steps, recipe.evals_per_epoch, steps_per_epoch) if data.eval else None
    )
    # every interval, and the last step whatever the interval
    evals = math.ceil(total / eval_interval) if eval_interval else 0
    save_interval = _interval(recipe.save_steps, recipe.saves_per_epoch, steps_per_epoch)
    checkpoints = total // save_interval if save_interval else 0
    notes = list(notes)
    warnings = _warnings(
        recipe,
        len(rows),
        steps_per_epoch,
        per_step,
        total,
        warmup,
        bool(data.eval),
        eval_interval,
        evals,
    )
    long = [len(e.input_ids) for e in data.train if len(e.input_ids) > recipe.sequence_len]
    if long:
        notes.append(
            f"{len(long)} bot requests are longer than sequence_len {recipe.sequence_len} (up "
            f"to {max(long)} tokens, as Ollama cuts them): each trains as a row of its own"
        )
    if checkpoints == 0:
        notes.append(
            f"no intermediate checkpoint (every {save_interval} steps, {total} in total); "
            "--resume will restart from the beginning"
        )
    if recipe.quantized:
        notes.append("qlora / 4-bit loading needs bitsandbytes on CUDA")
    budget = None
    if engine == CUDA_ENGINE and not data.estimate:
        config = json.loads((resolve(recipe.base_model).folder / "config.json").read_text())
        held = full_fine_tune_bytes(recipe) if recipe.full_fine_tune else 0
        budget = token_budget(config, recipe.sequence_len, held_bytes=held)
    return Plan(
        base_model=recipe.base_model,
        tokenizer_from=data.tokenizer_from,
        estimate=data.estimate,
        family=chat.family_of(data.tokenizer).name,
        conversations=len(data.train) + len(data.eval),
        train_conversations=len(data.train),
        eval_conversations=len(data.eval),
        tokens=sum(len(e.input_ids) for e in data.train),
        trained_tokens=sum(e.trained for e in data.train),
        truncated=sum(e.truncated for e in data.train),
        packed_rows=len(rows),
        computed_tokens=sum(len(b.input_ids) for b in micro_batches(rows, 1, share)),
        eval_rows=len(eval_rows),
        micro_batches_per_epoch=micro,
        world_size=world_size,
        steps_per_epoch=steps_per_epoch,
        total_steps=total,
        warmup_steps=warmup,
        eval_interval=eval_interval,
        evals=evals,
        save_interval=save_interval,
        checkpoints=checkpoints,
        engine=engine,
        method=method(recipe, data.estimate),
        token_budget=budget,
        notes=notes,
        warnings=warnings,
    )


def method(recipe: Recipe, estimate: bool) -> str:
    """What trains, in words: the adapter, or how many parameters a full fine-tune trains."""
    if not recipe.full_fine_tune:
        return f"{recipe.adapter} adapter (r {recipe.lora_r}, alpha {recipe.lora_alpha:g})"
    if estimate:
        return "full fine-tune (the base model is not here to count its parameters)"
    trained, total = trainable_parameters(recipe)
    return f"full fine-tune: {trained:,} of {total:,} parameters train"


def trainable_parameters(recipe: Recipe) -> tuple[int, int]:
    """(trainable, all) parameters of a full fine-tune, counted on a weightless copy of the
    base model (no memory, no load)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from meshtune.train.model import unfreeze

    config = AutoConfig.from_pretrained(resolve(recipe.base_model).folder)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    unfreeze(model, recipe.unfrozen_parameters)
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def _warnings(
    recipe: Recipe,
    rows: int,
    steps_per_epoch: int,
    per_step: int,
    total: int,
    warmup: int,
    held_out: bool,
    eval_interval: int | None,
    evals: int,
) -> list[str]:
    warnings = []
    if recipe.unused_lora_keys:
        # meshtune's default was LoRA once: such a recipe now trains every parameter
        warnings.append(
            f"no adapter: a full fine-tune, as in Axolotl; {', '.join(recipe.unused_lora_keys)} "
            "ignored. Add `adapter: lora` to train LoRA"
        )
    if recipe.trust_remote_code:
        warnings.append(
            "trust_remote_code: true runs code from the model folder; training refuses it "
            "unless you pass --trust-remote-code"
        )
    if steps_per_epoch < MIN_STEPS_PER_EPOCH:
        warnings.append(
            f"an epoch is only {steps_per_epoch} optimizer step(s) ({rows} rows / "
            f"{recipe.micro_batch_size} per micro batch / {per_step} micro batches per step): the "
            "model barely trains; lower micro_batch_size x gradient_accumulation_steps "
            "or sequence_len"
        )
    if warmup >= total:
        warnings.append(
            f"warmup ({warmup} steps) never finishes within {total} steps: the learning "
            f"rate never reaches {recipe.learning_rate:g}; use warmup_ratio 0.05-0.1"
        )
    if not held_out:
        warnings.append(
            "no held-out data (val_set_size 0): evaluation and early stopping cannot run"
        )
    elif eval_interval and eval_interval > total and recipe.load_best_model_at_end:
        # Only a recipe that selects by eval loss loses anything; one that evaluates before and
        # after on purpose does not need telling.
        warnings.append(
            f"evaluation every {eval_interval} steps never comes round in {total} steps: only "
            "the last step is evaluated, so early stopping and best-model selection see no "
            "other trained step; lower eval_steps or use evals_per_epoch"
        )
    if recipe.early_stopping_patience and evals < recipe.early_stopping_patience + 1:
        warnings.append(
            f"early stopping (patience {recipe.early_stopping_patience}) can never trigger "
            f"with {evals} evaluation(s); it needs at least {recipe.early_stopping_patience + 1}"
        )
    if recipe.load_best_model_at_end and evals == 0:
        warnings.append("load_best_model_at_end has no evaluations to choose from")
    return warnings


def token_budget(
    config: dict[str, Any],
    sequence_len: int,
    free_bytes: int | None = None,
    held_bytes: int = 0,
) -> int:
    """Tokens per CUDA micro batch: the activations training keeps (about the inputs of every
    projection, in 16-bit) fitted into half the GPU memory that is free once `held_bytes` (a
    full fine-tune's weights, gradients and optimizer state) are set aside, between one row
    (`sequence_len`) and 64k tokens, in multiples of 1024. A full fine-tune that cannot hold
    even one row is refused here, before the model loads, not by an out-of-memory error."""
    import torch

    if free_bytes is None:
        free_bytes = torch.cuda.mem_get_info()[0]
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    per_token = config["num_hidden_layers"] * (8 * hidden + 4 * inter) * 2
    left = free_bytes - held_bytes
    if held_bytes and left < per_token * sequence_len:
        raise MeshtuneError(
            f"a full fine-tune holds about {held_bytes / 1e9:.1f} GB on the GPU (float32 "
            f"weights, gradients and optimizer state) and a row of {sequence_len} tokens about "
            f"{per_token * sequence_len / 1e9:.1f} GB more, but {free_bytes / 1e9:.1f} GB are "
            "free: train an adapter (adapter: lora), use optimizer: adamw_8bit with "
            "bitsandbytes, or lower sequence_len"
        )
    fits = int(left * 0.5 / per_token) // 1024 * 1024
    return max(sequence_len, min(65536, fits))


def full_fine_tune_bytes(recipe: Recipe) -> int:
    """What a full fine-tune on CUDA holds before any activation: float32 weights and autocast's
    16-bit copies of them (6 bytes a parameter), and for each trained parameter a float32
    gradient and AdamW's two moments (12 bytes; 6 with bitsandbytes' 8-bit AdamW)."""
    from meshtune.train.model import eight_bit_adamw

    trained, total = trainable_parameters(recipe)
    return 6 * total + (6 if eight_bit_adamw(recipe, cuda=True) else 12) * trained


def _plan_tokenizer(recipe: Recipe, notes: list[str]) -> tuple[Any, str, bool]:
    from transformers import AutoTokenizer

    try:
        base = resolve(recipe.base_model)
    except MeshtuneError:
        base = resolve(EMBEDDED)
        notes.append(
            f"{recipe.base_model} is not available locally: token counts are estimates made "
            f"with the embedded {EMBEDDED} tokenizer and chat template"
        )
        return AutoTokenizer.from_pretrained(base.folder), EMBEDDED, True
    tokenizer = AutoTokenizer.from_pretrained(base.folder, trust_remote_code=False)
    check_tokens(recipe, tokenizer)
    return tokenizer, recipe.base_model, False


def check_tokens(recipe: Recipe, tokenizer: Any) -> None:
    """The eos the recipe sets must be the token the chat template ends turns with, or the model
    never learns to stop where the runtime stops it."""
    family = chat.family_of(tokenizer)
    if recipe.chat_template not in (None, "tokenizer_default", family.name):
        raise MeshtuneError(
            f"chat_template {recipe.chat_template} does not match the model's own "
            f"template ({family.name}); remove chat_template or set it to {family.name}"
        )
    eos = recipe.special_tokens.get("eos_token")
    if eos and eos != family.end_of_turn:
        raise MeshtuneError(
            f"special_tokens.eos_token {eos!r} is not the chat template's end-of-turn "
            f'token {family.end_of_turn!r}; set eos_token: "{family.end_of_turn}" or remove it'
        )


def warmup_steps(recipe: Recipe, total: int) -> int:
    if recipe.warmup_ratio is not None:
        return math.ceil(recipe.warmup_ratio * total)
    return recipe.warmup_steps or 0


def _interval(steps: int | None, per_epoch: int | None, steps_per_epoch: int) -> int:
    if steps:
        return steps
    return max(1, steps_per_epoch // (per_epoch or 1))
