"""Fine-tuning (LoRA, or every parameter when the recipe has no adapter), readable top to
bottom.

    conversations -> token ids + labels (assistant turns and their end-of-turn token)
                  -> packed rows (padding-free; position ids restart per conversation)
                  -> optimizer steps (AdamW, warmup + schedule, clipping, accumulation)
                  -> eval loss, early stopping, best adapter, checkpoints, metrics, plot

`train()` checks everything the run needs (recipe, data, base model) before it touches the run
directory, prints the plan, then runs it. The engine is chosen by capability: on a CPU each
conversation is its own attention call and shared system prompts are computed once; on CUDA a
micro batch is one attention call per layer with a per-conversation causal mask, and losses stay
on the device until they are logged.
"""

import itertools
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from meshtune.errors import MeshtuneError
from meshtune.files import write_text
from meshtune.models import resolve
from meshtune.recipe import LoadedRecipe, Recipe, dump_recipe
from meshtune.rundir import RunDir, TrainSummary
from meshtune.train import model as models
from meshtune.train.loss import micro_loss, packed_causal_lm, to_device
from meshtune.train.outputs import (
    MetricsLog,
    check_run_dir,
    load_weights,
    plot_losses,
    prepare_run_dir,
    restore_checkpoint,
    save_checkpoint,
    save_weights,
)
from meshtune.train.packing import EMPTY, Batch, join, micro_batches, pack
from meshtune.train.plan import CPU_ENGINE, CUDA_ENGINE, Plan, plan_examples, tokenize
from meshtune.train.state import TrainState

CUDA_LOG_EVERY = 10  # steps between reads of the loss from the GPU (each read waits for it)


@dataclass
class Options:
    output_dir: Path
    overwrite: bool = False
    resume: bool = False
    trust_remote_code: bool = False
    allow_lora_fallback: bool = False
    progress: bool = True
    token_budget: int | None = None  # CUDA: tokens per micro batch (None: the plan's)
    compile: bool = True  # CUDA: compile the decoder layers
    engine: str | None = None  # CPU_ENGINE or CUDA_ENGINE (None: CUDA where there is a GPU)


def train(loaded: LoadedRecipe, opts: Options, log: Any = print) -> TrainSummary | None:
    """Run the recipe; returns the summary also written to train_summary.json (None on the
    other processes of a multi-process run)."""
    import torch
    from accelerate import Accelerator

    recipe, run = loaded.recipe, opts.output_dir
    check_run_dir(run, opts.overwrite, opts.resume)
    if recipe.trust_remote_code and not opts.trust_remote_code:
        raise MeshtuneError(
            "the recipe sets trust_remote_code: true, which runs code shipped with the "
            "model; pass --trust-remote-code if you trust it, or remove the key"
        )
    cuda = torch.cuda.is_available()
    precision = models.precision(recipe, cuda)
    accelerator = Accelerator(cpu=not cuda, mixed_precision=precision)
    world, main = accelerator.num_processes, accelerator.is_main_process
    if not cuda:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    say = log if main else (lambda *_: None)

    notes = list(loaded.notes)
    data = tokenize(recipe, notes)  # the data is loaded and tokenized here, once
    if data.estimate:
        raise MeshtuneError(
            f"base model {recipe.base_model!r} is not available locally; copy its Hugging "
            "Face folder or GGUF here and set base_model to its path"
        )
    if opts.engine not in (None, CPU_ENGINE, CUDA_ENGINE):
        raise MeshtuneError(f"--engine {opts.engine!r}: write {CPU_ENGINE} or {CUDA_ENGINE}")
    if opts.engine == CUDA_ENGINE and not cuda:
        raise MeshtuneError("--engine cuda needs a CUDA GPU; leave --engine out on this machine")
    engine_name = opts.engine or (CUDA_ENGINE if cuda else CPU_ENGINE)
    plan = plan_examples(recipe, data, notes, world, engine_name)
    plan.token_budget = opts.token_budget or plan.token_budget
    for line in plan.lines():
        say(line)

    base = resolve(recipe.base_model)
    torch.manual_seed(recipe.seed)
    model = models.load_model(
        recipe,
        base.folder,
        cuda,
        precision,
        opts.trust_remote_code,
        opts.allow_lora_fallback,
        say,
        document=plan.engine == CUDA_ENGINE,
    )
    engine = Engine.create(plan, model, opts.compile)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = models.optimizer(recipe, params, cuda, say)
    scheduler = models.scheduler(recipe, optimizer, plan.warmup_steps, plan.total_steps)
    engine.module, optimizer = accelerator.prepare(engine.module, optimizer)

    if main:  # all checks passed: now replace a run, once (another rank would see its files)
        prepare_run_dir(run, opts.overwrite, opts.resume)
    accelerator.wait_for_everyone()
    state = TrainState()
    if opts.resume:
        state = restore_checkpoint(run, model, optimizer, scheduler, say)
    if main:
        write_text(RunDir(run).recipe, dump_recipe(recipe))
    eval_rows = pack(data.eval, recipe.sequence_len, recipe.sample_packing, None, engine.share)
    trainer = Trainer(
        recipe=recipe,
        plan=plan,
        run=run,
        accelerator=accelerator,
        engine=engine,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        params=params,
        state=state,
        metrics=MetricsLog(RunDir(run).metrics, state.step if opts.resume else 0, main),
        eval_batches=engine.batches(
            micro_batches(eval_rows, recipe.micro_batch_size, engine.share)
        ),
        tokenizer=data.tokenizer,
        say=say,
    )
    if trainer.eval_batches and state.step == 0:
        trainer.evaluate_before()
    progress = Progress(plan.total_steps, state.step, opts.progress and main, say)
    wall = trainer.fit(data.train, progress)
    progress.close()
    summary = trainer.finish(base.folder, wall, cuda, precision)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return summary if main else None


@dataclass
class Engine:
    """How micro batches become losses on this machine."""

    name: str
    module: Any  # what accelerate prepares: the model (CPU) or a PackedCausalLM (CUDA)
    budget: int | None  # CUDA: tokens per micro batch
    log_every: int  # steps between reads of the loss

    @classmethod
    def create(cls, plan: Plan, model: Any, compile_layers: bool) -> "Engine":
        if plan.engine == CPU_ENGINE:
            return cls(CPU_ENGINE, model, None, 1)
        return cls(
            CUDA_ENGINE,
            packed_causal_lm(model, compile_layers),
            plan.token_budget,
            CUDA_LOG_EVERY,
        )

    @property
    def share(self) -> bool:
        """Whether rows compute a shared system prompt once (CPU only: on a GPU it would cost
        three kernel launches per conversation and layer to save little arithmetic)."""
        return self.name == CPU_ENGINE

    def batches(self, batches: Sequence[Batch]) -> list[Batch]:
        if self.name == CPU_ENGINE:
            return list(batches)
        return join(batches, self.budget or 0)

    def loss(self, batch: Batch, device: Any) -> Any:
        if self.name == CPU_ENGINE:
            return micro_loss(self.module, batch, device)
        return self.module(to_device(batch, device))


@dataclass
class Trainer:
    recipe: Recipe
    plan: Plan
    run: Path
    accelerator: Any
    engine: Engine
    model: Any  # what trains: the PEFT model, or the plain model of a full fine-tune
    optimizer: Any
    scheduler: Any
    params: list[Any]
    state: TrainState
    metrics: MetricsLog
    eval_batches: list[Batch]
    tokenizer: Any  # saved beside a full fine-tune's model
    say: Any
    tokens_seen: int = 0
    trained_seen: int = 0
    start: float = 0.0  # perf_counter() when the steps began
    pending: list[tuple[int, float, float, Any]] = field(default_factory=list)

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    def fit(self, examples: Sequence[Any], progress: "Progress") -> float:
        """Every planned step after the ones already done; returns the wall time."""
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        state, plan = self.state, self.plan
        self.start = time.perf_counter()
        steps = _steps(examples, self.recipe, plan, world, rank, state.step, self.engine.share)
        for step, epoch, (group, mine) in steps:
            loss = self.train_step(group, mine)
            state.step, state.epoch = step, epoch
            self.pending.append((step, epoch, self.scheduler.get_last_lr()[0], loss))
            last = step == plan.total_steps
            evaluate = bool(plan.eval_interval) and (step % plan.eval_interval == 0 or last)
            save = bool(plan.save_interval) and step % plan.save_interval == 0 and not last
            if evaluate or save or last or len(self.pending) >= self.engine.log_every:
                self.log_steps(progress)
            if evaluate:
                self.evaluate_step(step, progress)
            if save and self.main:
                save_checkpoint(self.run, self.model, self.optimizer, self.scheduler, state)
            if state.stopped_early:
                break
        self.log_steps(progress)
        return time.perf_counter() - self.start

    def train_step(self, group: list[Batch], mine: list[Batch]) -> Any:
        """One optimizer step over this process's micro batches; returns the step's mean loss
        per trained token, still on the device (reading it would wait for the GPU)."""
        import torch

        accelerator, world = self.accelerator, self.accelerator.num_processes
        self.engine.module.train()
        global_trained = sum(b.trained for b in group)
        loss_sum = torch.zeros((), dtype=torch.float64, device=accelerator.device)
        batches = self.engine.batches(mine)
        for i, batch in enumerate(batches):
            sync = i == len(batches) - 1
            with nullcontext() if sync else accelerator.no_sync(self.engine.module):
                loss = self.engine.loss(batch, accelerator.device)
                # Normalised by the whole step's trained tokens (all processes), times the world
                # size because DDP averages gradients: the same gradient as one process.
                accelerator.backward(loss * world / max(1, global_trained))
            loss_sum = loss_sum + loss.detach().double()
            self.tokens_seen += batch.tokens
            self.trained_seen += batch.trained
        accelerator.clip_grad_norm_(self.params, self.recipe.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return _all_sum(accelerator, loss_sum) / max(1, global_trained)

    def log_steps(self, progress: "Progress") -> None:
        """Write the steps whose losses are still on the device: one wait for all of them."""
        if not self.pending:
            return
        import torch

        losses = torch.stack([loss for *_, loss in self.pending]).tolist()
        world = self.accelerator.num_processes
        elapsed = time.perf_counter() - self.start
        for (step, epoch, lr, _), loss in zip(self.pending, losses, strict=True):
            self.metrics.write(
                {
                    "step": step,
                    "epoch": round(epoch, 4),
                    "loss": loss,
                    "lr": lr,
                    "tokens_per_s": round(self.tokens_seen * world / elapsed, 1),
                    "trained_tokens_per_s": round(self.trained_seen * world / elapsed, 1),
                }
            )
            progress.update(loss, lr, self.tokens_seen * world / elapsed)
            self.state.train_losses.append(loss)
        self.pending = []

    def eval_loss(self) -> float:
        """Mean loss per trained token over the held-out micro batches (all processes)."""
        import torch

        accelerator = self.accelerator
        world, rank = accelerator.num_processes, accelerator.process_index
        self.engine.module.eval()
        loss = torch.zeros((), dtype=torch.float64, device=accelerator.device)
        tokens = 0
        with torch.no_grad():
            for batch in self.eval_batches[rank::world]:
                loss = loss + self.engine.loss(batch, accelerator.device).double()
                tokens += batch.trained
        return float(_all_sum(accelerator, loss)) / max(1, float(_all_sum(accelerator, tokens)))

    def evaluate_before(self) -> None:
        state = self.state
        state.eval_before = state.best_loss = self.eval_loss()
        state.best_step = 0
        self.metrics.write({"step": 0, "eval_loss": state.eval_before})
        self.say(f"eval loss before training: {state.eval_before:.4f}")
        if self.main:
            save_weights(self.model, RunDir(self.run).best, self.tokenizer)

    def evaluate_step(self, step: int, progress: "Progress") -> None:
        state, recipe = self.state, self.recipe
        loss = self.eval_loss()
        self.metrics.write({"step": step, "eval_loss": loss})
        progress.write(f"step {step}: eval loss {loss:.4f} (train {state.train_losses[-1]:.4f})")
        state.record_eval(step, loss)
        if state.best_step == step and self.main:
            save_weights(self.model, RunDir(self.run).best, self.tokenizer)
        for warning in state.health(recipe):
            progress.write(f"WARNING: {warning}")
        if recipe.early_stopping_patience and state.bad_evals >= recipe.early_stopping_patience:
            progress.write(
                f"early stopping: eval loss has not improved for {state.bad_evals} "
                f"evaluations (best {state.best_loss:.4f} at step {state.best_step})"
            )
            state.stopped_early = True

    def finish(self, base_folder: Path, wall: float, cuda: bool, precision: str) -> TrainSummary:
        """The final adapter (the best one if the recipe asks), its eval loss, the summary and
        the files."""
        recipe, state, run = self.recipe, self.state, RunDir(self.run)
        final_step = state.step
        if recipe.load_best_model_at_end and run.best.is_dir() and state.best_step is not None:
            load_weights(self.model, run.best)
            final_step = state.best_step
        eval_after = {0: state.eval_before, **dict(state.evals)}.get(final_step)
        if self.eval_batches and eval_after is None:  # a resumed run that had nothing left
            eval_after = self.eval_loss()
        summary = self.summary(base_folder, eval_after, wall, cuda, precision)
        if self.main:
            save_weights(self.model, run.adapter, self.tokenizer)
            if not self.eval_batches:
                shutil.rmtree(run.best, ignore_errors=True)
            summary.save(run.summary)
            plot_losses(run.metrics, run.loss_plot)
            shutil.rmtree(run.checkpoints, ignore_errors=True)
        return summary

    def summary(
        self, base_folder: Path, eval_after: float | None, wall: float, cuda: bool, precision: str
    ) -> TrainSummary:
        recipe, state, plan = self.recipe, self.state, self.plan
        world = self.accelerator.num_processes
        held_out = bool(self.eval_batches)
        return TrainSummary(
            base_model=recipe.base_model,
            base_folder=str(base_folder),
            family=plan.family,
            system_prompt=recipe.system_prompt,
            steps=state.step,
            total_steps_planned=plan.total_steps,
            epochs=round(state.epoch, 4),
            stopped_early=state.stopped_early,
            eval_loss_before=state.eval_before,
            eval_loss_after=eval_after,
            best_step=state.best_step,
            best_eval_loss=state.best_loss if held_out else None,
            best_adapter="best" if held_out else "adapter",
            fine_tune="full" if recipe.full_fine_tune else "lora",
            final_adapter_is="best" if recipe.load_best_model_at_end and held_out else "last",
            final_train_loss=state.train_losses[-1] if state.train_losses else None,
            wall_time_s=round(wall, 1),
            tokens_per_s=round(self.tokens_seen * world / wall, 1) if wall else None,
            trained_tokens_per_s=round(self.trained_seen * world / wall, 1) if wall else None,
            device="cuda" if cuda else "cpu",
            precision=precision,
            world_size=world,
            warnings=state.warnings,
            plan=asdict(plan),
        )


def _steps(
    examples: Sequence[Any],
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
            mine = group[rank::world] or [EMPTY]
            yield step, epoch + (i + per_step) / len(batches), (group, mine)


def _all_sum(accelerator: Any, value: Any) -> Any:
    """The sum over processes, as a float64 tensor on the device (or `value` itself with one
    process): no wait for the GPU."""
    if accelerator.num_processes == 1:
        return value
    import torch

    t = torch.as_tensor(value, dtype=torch.float64, device=accelerator.device).reshape(1)
    return accelerator.reduce(t, reduction="sum")[0]


class Progress:
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
