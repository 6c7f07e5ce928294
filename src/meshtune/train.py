"""LoRA fine-tuning, readable top to bottom.

    conversations -> token ids + labels (assistant turns and their end-of-turn token)
                  -> packed rows (padding-free; position ids restart per conversation)
                  -> optimizer steps (AdamW, warmup + schedule, clipping, accumulation)
                  -> eval loss, early stopping, best adapter, checkpoints, metrics, plot

`plan()` does the arithmetic before any weight is loaded, so a recipe that cannot train is
caught in seconds; `train()` prints the plan and runs it.
"""

import itertools
import json
import math
import os
import random
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from meshtune import chat, data
from meshtune.errors import MeshtuneError
from meshtune.files import write_json
from meshtune.models import EMBEDDED, resolve
from meshtune.recipe import LoadedRecipe, Recipe, dump_recipe
from meshtune.rendering import render

MIN_STEPS_PER_EPOCH = 20
# Tokens past the prefix every example shares that two examples must also share to be packed
# together: short enough that a system block differs within it from a plain question.
PREFIX_GROUP = 32

# ---------------------------------------------------------------------------- data


def load_splits(recipe: Recipe) -> tuple[list[data.Conversation], list[data.Conversation]]:
    """The recipe's datasets, split into train and held-out eval the way `data split` does,
    each with its share rendered as Mesh Master's request."""
    if not recipe.datasets:
        raise MeshtuneError(
            "the recipe has no datasets; add `datasets: [{path: FILE}]` or pass --data"
        )
    convs: list[data.Conversation] = []
    for spec in recipe.datasets:
        convs += data.load_conversations(spec.path, spec)
    if recipe.val_set_size <= 0:
        train, held_out = convs, []
    else:
        size = recipe.val_set_size
        train, held_out = data.split(convs, size if size < 1 else size / len(convs), recipe.seed)
    # a share of each split sent as Mesh Master's request (the recipe's `mesh_master:`)
    spec = recipe.mesh_master
    return render(train, spec, recipe.seed), render(held_out, spec, recipe.seed + 1)


def encode_all(
    tokenizer: Any, convs: Sequence[data.Conversation], recipe: Recipe, source: str
) -> list[chat.Encoded]:
    return [
        chat.encode(
            tokenizer,
            chat.with_system(c, recipe.system_prompt),
            recipe.sequence_len,
            c.line,
            source,
        )
        for c in convs
    ]


def shared_len(root: chat.Encoded, e: chat.Encoded) -> int:
    """How many leading tokens `e` can take from the row's first conversation instead of
    computing them again: their common prefix (the system prompt block every row renders), cut
    before `e`'s first trained target. Keys and values at those positions are the same in both
    conversations, since attention is causal."""
    first_trained = next(i for i, label in enumerate(e.labels) if label != chat.IGNORE)
    limit = min(len(root.input_ids), first_trained - 1)
    n = 0
    while n < limit and root.input_ids[n] == e.input_ids[n]:
        n += 1
    return n


def pack(
    examples: Sequence[chat.Encoded],
    seq_len: int,
    packing: bool,
    seed: int | None,
    share: bool = True,
) -> list[list[chat.Encoded]]:
    """Rows of at most `seq_len` computed tokens: a row's first conversation in full, each later
    one without the prefix it shares with the first (unless not `share`). Shuffled by `seed`
    (None: file order), then filled in order, so each epoch sees a different but reproducible
    arrangement."""
    order = list(examples)
    rng = random.Random(seed)
    if seed is not None:
        rng.shuffle(order)
    if not packing:
        return [[e] for e in order]
    if share:
        order = by_prefix(order)
    rows: list[list[chat.Encoded]] = []
    used = seq_len + 1
    for e in order:
        cost = len(e.input_ids) - (shared_len(rows[-1][0], e) if rows and share else 0)
        if used + cost > seq_len:
            rows.append([])
            used, cost = 0, len(e.input_ids)
        rows[-1].append(e)
        used += cost
    if share and seed is not None:
        rng.shuffle(rows)  # grouped rows, in random order
    return rows


def by_prefix(examples: Sequence[chat.Encoded]) -> list[chat.Encoded]:
    """`examples` with those that share a long prefix beyond the one all of them share (Mesh
    Master's system block in every rendered request) brought together, so packed rows compute
    it once; otherwise the order is kept."""
    if len(examples) < 2:
        return list(examples)
    first = examples[0].input_ids
    common = min(len(e.input_ids) for e in examples)
    for e in examples[1:]:
        common = next(
            (i for i, (a, b) in enumerate(zip(first, e.input_ids, strict=False)) if a != b),
            common,
        )
    groups: dict[tuple[int, ...], list[chat.Encoded]] = {}
    for e in examples:
        groups.setdefault(tuple(e.input_ids[: common + PREFIX_GROUP]), []).append(e)
    return [e for group in groups.values() for e in group]


@dataclass(slots=True)
class Batch:
    """Rows flattened into one padding-free sequence (batch dimension 1)."""

    input_ids: list[int]
    position_ids: list[int]
    targets: list[int]  # the label of the next token in the same conversation, else IGNORE
    # (start, end, root, shared): tokens [start, end) attend to the `shared` tokens from `root`
    # (their row's first conversation), then causally to themselves
    segments: list[tuple[int, int, int, int]]
    tokens: int  # conversation tokens represented, shared prefixes counted in each conversation

    @property
    def trained(self) -> int:
        return sum(t != chat.IGNORE for t in self.targets)


def flatten(rows: Sequence[Sequence[chat.Encoded]], share: bool = True) -> Batch:
    batch = Batch([], [], [], [], 0)
    for row in rows:
        root = len(batch.input_ids)
        for i, e in enumerate(row):
            shared = shared_len(row[0], e) if i and share else 0
            start = len(batch.input_ids)
            batch.input_ids += e.input_ids[shared:]
            batch.position_ids += range(shared, len(e.input_ids))
            batch.targets += [*e.labels[shared + 1 :], chat.IGNORE]
            batch.segments.append((start, len(batch.input_ids), root, shared))
            batch.tokens += len(e.input_ids)
    return batch


def micro_batches(
    rows: Sequence[Sequence[chat.Encoded]], micro_batch_size: int, share: bool = True
) -> list[Batch]:
    return [
        flatten(rows[i : i + micro_batch_size], share)
        for i in range(0, len(rows), micro_batch_size)
    ]


# ---------------------------------------------------------------------------- plan


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
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def trained_fraction(self) -> float:
        return self.trained_tokens / self.tokens if self.tokens else 0.0

    def lines(self) -> list[str]:
        est = " (estimated with the embedded model's tokenizer)" if self.estimate else ""
        out = [
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
            + (f" (every {self.eval_interval} steps)" if self.eval_interval else ""),
            f"checkpoints       {self.checkpoints}"
            + (f" (every {self.save_interval} steps)" if self.save_interval else ""),
        ]
        out += [f"note: {n}" for n in self.notes]
        out += [f"WARNING: {w}" for w in self.warnings]
        return out


def make_plan(loaded: LoadedRecipe, world_size: int = 1, share: bool = True) -> Plan:
    """Tokenize the data and work out the training arithmetic; warn where it cannot work.
    `share`: whether rows compute shared prefixes once (on CPU; see `train`)."""
    recipe = loaded.recipe
    notes = list(loaded.notes)
    tokenizer, tokenizer_from, estimate = _plan_tokenizer(recipe, notes)
    family = chat.family_of(tokenizer).name
    train_convs, eval_convs = load_splits(recipe)
    train_ex = encode_all(tokenizer, train_convs, recipe, "train")
    eval_ex = encode_all(tokenizer, eval_convs, recipe, "eval")
    rows = pack(train_ex, recipe.sequence_len, recipe.sample_packing, recipe.seed, share)
    eval_rows = pack(eval_ex, recipe.sequence_len, recipe.sample_packing, None, share)
    micro = math.ceil(len(rows) / recipe.micro_batch_size)
    per_step = recipe.gradient_accumulation_steps * world_size
    steps_per_epoch = max(1, math.ceil(micro / per_step))
    total = recipe.max_steps or max(1, math.ceil(steps_per_epoch * recipe.num_epochs))
    warmup = warmup_steps(recipe, total)
    eval_interval = (
        _interval(recipe.eval_steps, recipe.evals_per_epoch, steps_per_epoch) if eval_ex else None
    )
    evals = total // eval_interval if eval_interval else 0
    save_interval = _interval(recipe.save_steps, recipe.saves_per_epoch, steps_per_epoch)
    checkpoints = total // save_interval if save_interval else 0

    warnings = []
    if recipe.trust_remote_code:
        warnings.append(
            "trust_remote_code: true runs code from the model folder; training refuses it "
            "unless you pass --trust-remote-code"
        )
    if steps_per_epoch < MIN_STEPS_PER_EPOCH:
        warnings.append(
            f"an epoch is only {steps_per_epoch} optimizer step(s) ({len(rows)} rows / "
            f"{recipe.micro_batch_size} per micro batch / {per_step} micro batches per step): the "
            "model barely trains; lower micro_batch_size x gradient_accumulation_steps "
            "or sequence_len"
        )
    if warmup >= total:
        warnings.append(
            f"warmup ({warmup} steps) never finishes within {total} steps: the learning "
            f"rate never reaches {recipe.learning_rate:g}; use warmup_ratio 0.05-0.1"
        )
    if not eval_ex:
        warnings.append(
            "no held-out data (val_set_size 0): evaluation and early stopping cannot run"
        )
    elif evals == 0:
        warnings.append(
            f"evaluation never runs: every {eval_interval} steps, but training has {total}; "
            "lower eval_steps or use evals_per_epoch"
        )
    if recipe.early_stopping_patience and evals < recipe.early_stopping_patience + 1:
        warnings.append(
            f"early stopping (patience {recipe.early_stopping_patience}) can never trigger "
            f"with {evals} evaluation(s); it needs at least {recipe.early_stopping_patience + 1}"
        )
    if recipe.load_best_model_at_end and evals == 0:
        warnings.append("load_best_model_at_end has no evaluations to choose from")
    if checkpoints == 0:
        notes.append(
            f"no intermediate checkpoint (every {save_interval} steps, {total} in total); "
            "--resume will restart from the beginning"
        )
    if recipe.quantized:
        notes.append("qlora / 4-bit loading needs bitsandbytes on CUDA")
    return Plan(
        base_model=recipe.base_model,
        tokenizer_from=tokenizer_from,
        estimate=estimate,
        family=family,
        conversations=len(train_convs) + len(eval_convs),
        train_conversations=len(train_convs),
        eval_conversations=len(eval_convs),
        tokens=sum(len(e.input_ids) for e in train_ex),
        trained_tokens=sum(e.trained for e in train_ex),
        truncated=sum(e.truncated for e in train_ex),
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
        notes=notes,
        warnings=warnings,
    )


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


# ---------------------------------------------------------------------------- training


@dataclass
class Options:
    output_dir: Path
    overwrite: bool = False
    resume: bool = False
    trust_remote_code: bool = False
    allow_lora_fallback: bool = False
    progress: bool = True


def train(loaded: LoadedRecipe, opts: Options, log: Any = print) -> dict[str, Any]:
    """Run the recipe; returns the summary also written to train_summary.json (an empty dict
    on the other processes of a multi-process run)."""
    import torch
    from accelerate import Accelerator
    from transformers import AutoTokenizer

    recipe = loaded.recipe
    run = opts.output_dir
    _prepare_run_dir(run, opts)
    if recipe.trust_remote_code and not opts.trust_remote_code:
        raise MeshtuneError(
            "the recipe sets trust_remote_code: true, which runs code shipped with the "
            "model; pass --trust-remote-code if you trust it, or remove the key"
        )

    cuda = torch.cuda.is_available()
    precision = _precision(recipe, cuda)
    accelerator = Accelerator(cpu=not cuda, mixed_precision=precision)
    world, rank = accelerator.num_processes, accelerator.process_index
    main = accelerator.is_main_process
    if not cuda:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    say = log if main else (lambda *_: None)
    # Sharing prefixes saves a third of the arithmetic, which is what limits a CPU; a GPU is
    # limited by kernel launches here, and a shared prefix adds three per conversation and layer.
    share = not cuda

    plan = make_plan(loaded, world, share)
    if plan.estimate:
        raise MeshtuneError(
            f"base model {recipe.base_model!r} is not available locally; copy its Hugging "
            "Face folder or GGUF here and set base_model to its path"
        )
    for line in plan.lines():
        say(line)

    base = resolve(recipe.base_model)
    tokenizer = AutoTokenizer.from_pretrained(base.folder, trust_remote_code=opts.trust_remote_code)
    train_convs, eval_convs = load_splits(recipe)
    train_ex = encode_all(tokenizer, train_convs, recipe, "train")
    eval_batches = micro_batches(
        pack(
            encode_all(tokenizer, eval_convs, recipe, "eval"),
            recipe.sequence_len,
            recipe.sample_packing,
            None,
            share,
        ),
        recipe.micro_batch_size,
        share,
    )

    torch.manual_seed(recipe.seed)
    model = _load_model(recipe, base.folder, cuda, precision, opts, say)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = _optimizer(recipe, params, cuda, say)
    from transformers import get_scheduler

    scheduler = get_scheduler(
        {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[
            recipe.lr_scheduler
        ],
        optimizer,
        num_warmup_steps=plan.warmup_steps,
        num_training_steps=plan.total_steps,
    )
    model, optimizer = accelerator.prepare(model, optimizer)

    state = TrainState()
    if opts.resume:
        state = _restore(run, accelerator.unwrap_model(model), optimizer, scheduler, say)
    if main:
        (run / "recipe.yaml").write_text(dump_recipe(recipe))
    metrics = MetricsLog(
        run / "metrics.jsonl", keep_until=state.step if opts.resume else 0, enabled=main
    )

    def evaluate() -> float:
        return eval_loss(model, eval_batches, accelerator)

    if eval_batches and state.step == 0:
        state.eval_before = state.best_loss = evaluate()
        state.best_step = 0
        metrics.write({"step": 0, "eval_loss": state.eval_before})
        say(f"eval loss before training: {state.eval_before:.4f}")
        if main:
            _save_adapter(accelerator.unwrap_model(model), run / "best")

    start, tokens_seen, trained_seen = time.perf_counter(), 0, 0
    progress = _progress(plan.total_steps, state.step, opts.progress and main, say)
    for step, epoch, batches in _steps(train_ex, recipe, plan, world, rank, state.step, share):
        model.train()
        global_trained = sum(b.trained for b in batches[0])
        loss_sum = 0.0
        for i, batch in enumerate(batches[1]):
            sync = i == len(batches[1]) - 1
            with nullcontext() if sync else accelerator.no_sync(model):
                loss = micro_loss(model, batch, accelerator.device)
                # Normalised by the whole step's trained tokens (all processes), times the world
                # size because DDP averages gradients: the same gradient as one process.
                accelerator.backward(loss * world / max(1, global_trained))
            loss_sum += loss.item()
            tokens_seen += batch.tokens
            trained_seen += batch.trained
        accelerator.clip_grad_norm_(params, recipe.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step_loss = _all_sum(accelerator, loss_sum) / max(1, global_trained)
        state.step, state.epoch = step, epoch
        elapsed = time.perf_counter() - start
        lr = scheduler.get_last_lr()[0]
        metrics.write(
            {
                "step": step,
                "epoch": round(epoch, 4),
                "loss": step_loss,
                "lr": lr,
                "tokens_per_s": round(tokens_seen * world / elapsed, 1),
                "trained_tokens_per_s": round(trained_seen * world / elapsed, 1),
            }
        )
        progress.update(step_loss, lr, tokens_seen * world / elapsed)
        state.train_losses.append(step_loss)

        if plan.eval_interval and step % plan.eval_interval == 0:
            loss = evaluate()
            metrics.write({"step": step, "eval_loss": loss})
            progress.write(f"step {step}: eval loss {loss:.4f} (train {step_loss:.4f})")
            state.record_eval(step, loss)
            if state.best_step == step and main:
                _save_adapter(accelerator.unwrap_model(model), run / "best")
            for warning in state.health(recipe):
                progress.write(f"WARNING: {warning}")
            if recipe.early_stopping_patience and state.bad_evals >= recipe.early_stopping_patience:
                progress.write(
                    f"early stopping: eval loss has not improved for {state.bad_evals} "
                    f"evaluations (best {state.best_loss:.4f} at step {state.best_step})"
                )
                state.stopped_early = True
        if (
            plan.save_interval
            and step % plan.save_interval == 0
            and step < plan.total_steps
            and main
        ):
            _checkpoint(run, accelerator.unwrap_model(model), optimizer, scheduler, state)
        if state.stopped_early:
            break
    progress.close()
    wall = time.perf_counter() - start

    unwrapped = accelerator.unwrap_model(model)
    final_step = state.step
    if recipe.load_best_model_at_end and (run / "best").is_dir() and state.best_step is not None:
        _load_adapter(unwrapped, run / "best")
        final_step = state.best_step
    # The final weights were already evaluated unless training ended between evaluations.
    eval_after = {0: state.eval_before, **dict(state.evals)}.get(final_step)
    if eval_batches and eval_after is None:
        eval_after = evaluate()
    summary = {
        "base_model": recipe.base_model,
        "base_folder": str(base.folder),
        "family": plan.family,
        "system_prompt": recipe.system_prompt,
        "steps": state.step,
        "total_steps_planned": plan.total_steps,
        "epochs": round(state.epoch, 4),
        "stopped_early": state.stopped_early,
        "eval_loss_before": state.eval_before,
        "eval_loss_after": eval_after,
        "best_step": state.best_step,
        "best_eval_loss": state.best_loss if eval_batches else None,
        "best_adapter": "best" if eval_batches else "adapter",
        "final_adapter_is": "best" if recipe.load_best_model_at_end and eval_batches else "last",
        "final_train_loss": state.train_losses[-1] if state.train_losses else None,
        "wall_time_s": round(wall, 1),
        "tokens_per_s": round(tokens_seen * world / wall, 1) if wall else None,
        "trained_tokens_per_s": round(trained_seen * world / wall, 1) if wall else None,
        "device": "cuda" if cuda else "cpu",
        "precision": precision,
        "world_size": world,
        "warnings": state.warnings,
        "plan": asdict(plan),
    }
    if main:
        _save_adapter(unwrapped, run / "adapter")
        if not eval_batches:
            shutil.rmtree(run / "best", ignore_errors=True)
        write_json(run / "train_summary.json", summary)
        plot_losses(run / "metrics.jsonl", run / "loss.png")
        shutil.rmtree(run / "checkpoints", ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return summary if main else {}


PACKED_ATTENTION = "meshtune_packed"


def register_packed_attention() -> None:
    """Attention that runs each packed conversation on its own, over the prefix it shares with
    its row's first conversation and then itself (`Batch.segments`, passed through the model's
    forward as `meshtune_segments`).

    The stock kernels would build a (tokens x tokens) block-diagonal mask and compute attention
    across the whole row, most of it masked away, and could not reuse a shared prefix.
    Registered with transformers' attention interface, so the model code is unchanged."""
    import torch
    import torch.nn.functional as F
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    def attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
        parts = []
        for start, end, root, shared in kwargs["meshtune_segments"]:
            k, v = key[:, :, start:end], value[:, :, start:end]
            mask = None
            if shared:
                k = torch.cat([key[:, :, root : root + shared], k], dim=2)
                v = torch.cat([value[:, :, root : root + shared], v], dim=2)
                mask = torch.ones(
                    end - start, shared + end - start, dtype=torch.bool, device=query.device
                ).tril_(diagonal=shared)
            parts.append(
                F.scaled_dot_product_attention(
                    query[:, :, start:end],
                    k,
                    v,
                    attn_mask=mask,
                    dropout_p=dropout,
                    is_causal=not shared,
                    scale=scaling,
                    enable_gqa=True,
                )
            )
        return torch.cat(parts, dim=2).transpose(1, 2).contiguous(), None

    AttentionInterface.register(PACKED_ATTENTION, attention)
    AttentionMaskInterface.register(PACKED_ATTENTION, lambda *args, **kwargs: None)


def micro_loss(model: Any, batch: Batch, device: Any) -> Any:
    """Summed cross-entropy over the trained tokens of one micro batch. Logits are computed only
    where a token is trained (`logits_to_keep`): the vocabulary projection is the costliest
    layer of a small model."""
    import torch
    import torch.nn.functional as F

    ids = torch.tensor([batch.input_ids], device=device)
    pos = torch.tensor([batch.position_ids], device=device)
    targets = torch.tensor(batch.targets, device=device)
    keep = (targets != chat.IGNORE).nonzero().squeeze(-1)
    segments = {"meshtune_segments": batch.segments, "use_cache": False}
    if keep.numel() == 0:  # a padding micro batch (uneven split across processes)
        return model(input_ids=ids, position_ids=pos, **segments).logits.sum() * 0.0
    logits = model(input_ids=ids, position_ids=pos, logits_to_keep=keep, **segments).logits[0]
    # bf16/fp16 logits are upcast: the loss is summed over thousands of tokens
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return F.cross_entropy(logits, targets[keep], reduction="sum")


def eval_loss(model: Any, batches: Sequence[Batch], accelerator: Any) -> float:
    import torch

    model.eval()
    world, rank = accelerator.num_processes, accelerator.process_index
    loss, tokens = 0.0, 0
    with torch.no_grad():
        for batch in batches[rank::world]:
            loss += micro_loss(model, batch, accelerator.device).item()
            tokens += batch.trained
    return _all_sum(accelerator, loss) / max(1, _all_sum(accelerator, tokens))


def _steps(
    examples: Sequence[chat.Encoded],
    recipe: Recipe,
    plan: Plan,
    world: int,
    rank: int,
    done: int,
    share: bool,
) -> Iterator[tuple[int, float, tuple[list[Batch], list[Batch]]]]:
    """(step, epoch, (all micro batches of the step, this process's share)) after `done` steps.
    Each epoch reshuffles with seed + epoch, so a resumed run sees the same order. A reshuffled
    epoch may pack into a row more or less than the plan's; the step count is what is kept."""
    per_step = recipe.gradient_accumulation_steps * world
    step = 0
    for epoch in itertools.count():
        rows = pack(
            examples, recipe.sequence_len, recipe.sample_packing, recipe.seed + epoch, share
        )
        batches = micro_batches(rows, recipe.micro_batch_size, share)
        for i in range(0, len(batches), per_step):
            step += 1
            if step > plan.total_steps:
                return
            if step <= done:
                continue
            group = batches[i : i + per_step]
            mine = group[rank::world] or [Batch([0], [0], [chat.IGNORE], [(0, 1, 0, 0)], 0)]
            yield step, epoch + (i + per_step) / len(batches), (group, mine)


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


# ---------------------------------------------------------------------------- model and optimizer


def _precision(recipe: Recipe, cuda: bool) -> str:
    """CPU: float32. CUDA: bf16 where the card has it, else fp16 with loss scaling (a T4)."""
    import torch

    if not cuda:
        return "no"
    if recipe.bf16 is not False and torch.cuda.is_bf16_supported():
        return "bf16"
    if recipe.fp16 or recipe.bf16 in (True, "auto"):
        return "fp16"
    return "no"


def _load_model(
    recipe: Recipe, folder: Path, cuda: bool, precision: str, opts: Options, say: Any
) -> Any:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    register_packed_attention()
    kwargs: dict[str, Any] = {
        "dtype": dtype,
        "trust_remote_code": opts.trust_remote_code,
        "attn_implementation": PACKED_ATTENTION,
    }
    if recipe.quantized:
        if cuda and _has("bitsandbytes"):
            from peft import prepare_model_for_kbit_training
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=recipe.adapter == "qlora" or recipe.load_in_4bit,
                load_in_8bit=recipe.load_in_8bit and not recipe.load_in_4bit,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_compute_dtype=dtype,
            )
        elif opts.allow_lora_fallback:
            say(
                "WARNING: qlora / 4-bit loading needs bitsandbytes on CUDA; "
                "training plain LoRA instead "
                "(--allow-lora-fallback)"
            )
        else:
            raise MeshtuneError(
                "qlora / load_in_4bit needs bitsandbytes on a CUDA GPU, and there is none "
                "here; use adapter: lora, or pass --allow-lora-fallback"
            )
    model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    if "quantization_config" in kwargs:
        model = prepare_model_for_kbit_training(model)
    config = LoraConfig(
        r=recipe.lora_r,
        lora_alpha=recipe.lora_alpha,
        lora_dropout=recipe.lora_dropout,
        target_modules=recipe.target_modules,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, config)
    return model.to("cuda") if cuda and "quantization_config" not in kwargs else model


def _optimizer(recipe: Recipe, params: list[Any], cuda: bool, say: Any) -> Any:
    import torch

    if recipe.optimizer in ("adamw_8bit", "adamw_bnb_8bit", "paged_adamw_8bit"):
        if cuda and _has("bitsandbytes"):
            import bitsandbytes as bnb

            return bnb.optim.AdamW8bit(
                params, lr=recipe.learning_rate, weight_decay=recipe.weight_decay
            )
        say(
            f"note: {recipe.optimizer} needs bitsandbytes on CUDA; using AdamW (LoRA's optimizer "
            "state is small either way)"
        )
    return torch.optim.AdamW(
        params, lr=recipe.learning_rate, weight_decay=recipe.weight_decay, fused=cuda or None
    )


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _all_sum(accelerator: Any, value: float) -> float:
    if accelerator.num_processes == 1:
        return float(value)
    import torch

    t = torch.tensor([float(value)], device=accelerator.device, dtype=torch.float64)
    return float(accelerator.reduce(t, reduction="sum").item())


# ---------------------------------------------------------------------------- files


def _prepare_run_dir(run: Path, opts: Options) -> None:
    if opts.resume:
        if not (run / "checkpoints").is_dir():
            raise MeshtuneError(f"{run}: no checkpoints to resume from; run without --resume")
        return
    if run.exists() and any(run.iterdir()):
        if not opts.overwrite:
            raise MeshtuneError(
                f"{run}: output directory is not empty; pass --overwrite to replace it, "
                "--resume to continue it, or choose another --output-dir"
            )
        shutil.rmtree(run)
    run.mkdir(parents=True, exist_ok=True)


def _save_adapter(model: Any, folder: Path) -> None:
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def _load_adapter(model: Any, folder: Path) -> None:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(folder / "adapter_model.safetensors"))


def _checkpoint(run: Path, model: Any, optimizer: Any, scheduler: Any, state: TrainState) -> None:
    import torch

    root = run / "checkpoints"
    folder = root / f"step-{state.step:06d}"
    tmp = root / f".step-{state.step:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp / "adapter")
    rng = {"torch": torch.get_rng_state(), "random": random.getstate()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": rng,
            "state": asdict(state),
        },
        tmp / "state.pt",
    )
    os.replace(tmp, folder)
    for old in sorted(root.glob("step-*"))[:-2]:  # keep the last two
        shutil.rmtree(old)


def _restore(run: Path, model: Any, optimizer: Any, scheduler: Any, say: Any) -> TrainState:
    import torch

    checkpoints = sorted((run / "checkpoints").glob("step-*"))
    if not checkpoints:
        raise MeshtuneError(f"{run}: no checkpoints to resume from; run without --resume")
    last = checkpoints[-1]
    saved = torch.load(last / "state.pt", weights_only=False)
    _load_adapter(model, last / "adapter")
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["rng"]["torch"])
    random.setstate(saved["rng"]["random"])
    if "cuda" in saved["rng"]:
        torch.cuda.set_rng_state_all(saved["rng"]["cuda"])
    state = TrainState(**saved["state"])
    state.evals = [tuple(e) for e in state.evals]  # type: ignore[misc]
    say(f"resuming from {last.name} (step {state.step})")
    return state


class MetricsLog:
    """metrics.jsonl, one JSON object per line; on resume, lines after the checkpoint go."""

    def __init__(self, path: Path, keep_until: int, enabled: bool):
        self.path, self.enabled = path, enabled
        if not enabled:
            return
        kept = []
        if keep_until and path.exists():
            kept = [
                line
                for line in path.read_text().splitlines()
                if line and json.loads(line)["step"] <= keep_until
            ]
        path.write_text("".join(line + "\n" for line in kept))

    def write(self, row: dict[str, Any]) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(row) + "\n")


def plot_losses(metrics: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line]
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss", lw=1)
    if evals:
        ax.plot(*zip(*evals, strict=True), "o-", label="eval loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (assistant tokens)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, out)


class _progress:
    """A tqdm bar with loss, learning rate and tokens/s (tqdm shows the ETA)."""

    def __init__(self, total: int, done: int, enabled: bool, say: Any):
        from tqdm import tqdm

        self.say = say
        self.bar = tqdm(
            total=total, initial=done, disable=not enabled, unit="step", dynamic_ncols=True
        )

    def update(self, loss: float, lr: float, tokens_per_s: float) -> None:
        self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_s:.0f}")
        self.bar.update(1)

    def write(self, text: str) -> None:
        if self.bar.disable:
            self.say(text)
        else:
            self.bar.write(text)

    def close(self) -> None:
        self.bar.close()
