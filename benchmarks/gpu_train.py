"""Training throughput on CUDA GPUs, side by side: the same conversations (the shipped data
under the Llama-3 template; the 135M shape under its own), the same LoRA (r=8 on every linear
layer), the same AdamW, random weights of the real shapes (throughput depends on shapes, not
values). Every leg reads one stream of conversations, each epoch in its own seeded order.

    (a) naive: Hugging Face + peft, padded micro batches of 4 conversations, sdpa
    (b) HF packed: rows of 4096 tokens, 4 per micro batch, torch.compile, no cross-chat masking
    (c) meshtune's training step (loop.Trainer.train_step, the CUDA engine): an optimizer step is
        STEP_MICRO_BATCHES micro batches at the token budget, whatever the number of GPUs (one
        GPU accumulates them all, two take half each), so one and two GPUs do the same steps
    (d) meshtune's training step at the v2 recipe's micro batch (4 rows of 512 tokens, one per
        step)

The (a) legs run first, alone: they are limited by the host, and a program started beside them
would slow them. Warm-up steps (compilation) are timed apart and cover every padded shape the
timed steps use. The timed steps are split into five windows timed by CUDA events (no extra
wait), whose tokens/s give the spread. MFU counts 4N FLOPs per token (N: every parameter,
embeddings once; forward plus the input gradient, since LoRA leaves the weights frozen) against
the bf16 matrix-product peak measured here; HFU counts the FLOPs each loop actually does
(projections at the positions it computes, the vocabulary projection where it takes logits,
attention over the query-key pairs it evaluates: forward plus twice that back).

    python benchmarks/gpu_train.py --tokenizer DIR --dry      (no GPU: each leg's steps, shapes)
    python benchmarks/gpu_train.py --tokenizer DIR --out one.json
    accelerate launch --num_processes 2 benchmarks/gpu_train.py --tokenizer DIR \
        --legs llama-3.2-1b:c --out two.json
    python benchmarks/gpu_train.py --tokenizer DIR --fp16-cap-gib 15 --out fp16.json
    python benchmarks/gpu_train.py --combine one.json two.json fp16.json --out RESULT.json
"""

import argparse
import datetime
import gc
import json
import math
import os
import random
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from meshtune import chat, data
from meshtune.meshmaster import DEFAULT_SYSTEM_PROMPT

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data" / "mesh_conversations.jsonl"

SHAPES = {
    # SmolLM2-135M-Instruct and Llama-3.2-1B-Instruct, from their published configs.
    "smollm2-135m": dict(
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        vocab_size=49152,
        tie_word_embeddings=True,
        rope_theta=100000.0,
    ),
    "llama-3.2-1b": dict(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        tie_word_embeddings=True,
        rope_theta=500000.0,
    ),
}
LLAMA3_TEMPLATE = (
    "{{- bos_token }}{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' "
    "+ message['content'] + '<|eot_id|>' }}{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>"]


def llama3_tokenizer(folder: Path) -> Any:
    """SmolLM2's BPE given Llama-3's special tokens and template (Meta's files are not here)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    tok.add_special_tokens({"additional_special_tokens": [*SPECIALS, "<|eot_id|>"]})
    tok.bos_token, tok.eos_token, tok.pad_token = "<|begin_of_text|>", "<|eot_id|>", "<|eot_id|>"
    tok.chat_template = LLAMA3_TEMPLATE
    return tok


def examples(tokenizer: Any, max_len: int) -> list[chat.Encoded]:
    convs = data.load_conversations(DATA)
    return [
        chat.encode(tokenizer, chat.with_system(c, DEFAULT_SYSTEM_PROMPT), max_len) for c in convs
    ]


def base_model(shape: str, attention: str, dtype: Any) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        **SHAPES[shape], max_position_embeddings=8192, attn_implementation=attention
    )
    with torch.device("cuda"):
        return LlamaForCausalLM(config).to(dtype)


def with_lora(model: Any) -> Any:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules="all-linear")
    return get_peft_model(model, config)


def adamw(model: Any) -> Any:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=1e-4, fused=True)


def peak_tflops() -> float:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    return 10 * 2 * 8192**3 / (time.perf_counter() - t) / 1e12


class Flops:
    """FLOPs per step of a LoRA step (forward + input gradient), counted as done."""

    def __init__(self, shape: str):
        s = SHAPES[shape]
        self.d, self.layers, self.vocab = s["hidden_size"], s["num_hidden_layers"], s["vocab_size"]
        kv = self.d * s["num_key_value_heads"] // s["num_attention_heads"]
        per_layer = 2 * self.d * self.d + 2 * self.d * kv + 3 * self.d * s["intermediate_size"]
        self.linear = self.layers * per_layer
        self.total_params = self.linear + self.vocab * self.d  # embeddings once (tied)

    def done(self, positions: int, logits: int, pairs: int) -> float:
        attention = 12 * self.d * self.layers * pairs  # 4 d per pair forward, x3 with backward
        return 4 * self.linear * positions + 4 * self.d * self.vocab * logits + attention


A = "a_naive_padded_4"
B = "b_hf_packed_4x4096_compiled"
C = "c_meshtune_token_budget"
D = "d_meshtune_v2_micro_batch"
LEGS = {"a": A, "b": B, "c": C, "d": D}
# (warm-up, timed) optimizer steps per leg. (a) is host-bound and speeds up for a while on a
# freshly started machine (H200, 2026-11-30: 0.34 s a step in its first 16 timed steps after 10
# warm-up steps, 0.11-0.19 s later), so it warms up 30 steps and is timed over 150
STEPS = {"a": (30, 150), "b": (5, 15), "c": (3, 10), "d": (10, 40)}
STEP_MICRO_BATCHES = 2  # (c): micro batches at the token budget per optimizer step
WINDOWS = 5


def stream(exs: list[chat.Encoded], epochs: int) -> list[chat.Encoded]:
    """The conversations `epochs` times over, each epoch in its own seeded order."""
    return [e for seed in range(epochs) for e in random.Random(seed).sample(exs, len(exs))]


def measure(
    step: Callable[[Any], tuple[int, float]], warm: list[Any], timed: list[Any], barrier: Any
) -> dict[str, Any]:
    """Runs `step(batch) -> (tokens, flops)` over the warm-up batches, then the timed ones.
    tokens/s is over the whole timed wall time (all processes waited for at both ends); each
    window's rate comes from CUDA events recorded between steps, which wait for nothing."""
    t = time.perf_counter()
    for batch in warm:
        step(batch)
    torch.cuda.synchronize()
    barrier()
    warm_s = time.perf_counter() - t
    torch.cuda.reset_peak_memory_stats()
    bounds = [round(w * len(timed) / WINDOWS) for w in range(WINDOWS + 1)]
    events = [torch.cuda.Event(enable_timing=True) for _ in bounds]
    tokens, flops = [0] * WINDOWS, 0.0
    t = time.perf_counter()
    events[0].record()
    for w in range(WINDOWS):
        for batch in timed[bounds[w] : bounds[w + 1]]:
            n, f = step(batch)
            tokens[w], flops = tokens[w] + n, flops + f
        events[w + 1].record()
    torch.cuda.synchronize()
    barrier()
    wall = time.perf_counter() - t
    windows = [tokens[w] * 1000 / events[w].elapsed_time(events[w + 1]) for w in range(WINDOWS)]
    return {
        "tokens_per_s": sum(tokens) / wall,
        "flops_per_s": flops / wall,
        "window_tokens_per_s": windows,
        "spread": (max(windows) - min(windows)) / (sum(tokens) / wall),
        "warmup_s": warm_s,
        "warmup_steps": len(warm),
        "timed_s": wall,
        "steps": len(timed),
        "tokens_per_step": sum(tokens) / len(timed),
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
    }


def naive_batches(exs: list[chat.Encoded], steps: int) -> list[list[chat.Encoded]]:
    order = stream(exs, math.ceil(4 * steps / len(exs)))
    return [order[i : i + 4] for i in range(0, 4 * steps, 4)]


def naive(shape: str, exs: list[chat.Encoded], pad: int, barrier: Any) -> dict:
    """(a) the guide's loop: padded batches of 4, logits everywhere, the model's own loss."""
    model = with_lora(base_model(shape, "sdpa", torch.bfloat16))
    opt, flops = adamw(model), Flops(shape)
    warmup, steps = STEPS["a"]
    batches = naive_batches(exs, warmup + steps)

    def step(batch: list[chat.Encoded]) -> tuple[int, float]:
        width = max(len(e.input_ids) for e in batch)
        ids = torch.full((4, width), pad)
        labels = torch.full((4, width), chat.IGNORE)
        mask = torch.zeros((4, width), dtype=torch.long)
        for r, e in enumerate(batch):
            ids[r, : len(e.input_ids)] = torch.tensor(e.input_ids)
            labels[r, : len(e.labels)] = torch.tensor(e.labels)
            mask[r, : len(e.input_ids)] = 1
        loss = model(input_ids=ids.cuda(), attention_mask=mask.cuda(), labels=labels.cuda()).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        real = sum(len(e.input_ids) for e in batch)
        return real, flops.done(4 * width, 4 * width, 4 * width * width)

    return measure(step, batches[:warmup], batches[warmup:], barrier)


def packed_batches(exs: list[chat.Encoded], steps: int) -> list[tuple[Any, Any]]:
    """Micro batches of 4 rows of 4096 tokens, conversations end to end."""
    order = stream(exs, math.ceil(steps * 4 * 4096 / sum(len(e.input_ids) for e in exs)) + 1)
    ids = torch.tensor([t for e in order for t in e.input_ids][: steps * 4 * 4096])
    labels = torch.tensor([t for e in order for t in e.labels][: steps * 4 * 4096])
    rows, targets = ids.view(steps * 4, 4096), labels.view(steps * 4, 4096)
    return [(rows[i : i + 4], targets[i : i + 4]) for i in range(0, steps * 4, 4)]


def hf_packed(shape: str, exs: list[chat.Encoded], barrier: Any) -> dict:
    """(b) rows of 4096 tokens filled end to end, 4 per micro batch, compiled, one causal mask
    over the whole row (conversations see each other)."""
    model = with_lora(base_model(shape, "sdpa", torch.bfloat16))
    model.compile()
    opt, flops = adamw(model), Flops(shape)
    warmup, steps = STEPS["b"]
    batches = packed_batches(exs, warmup + steps)

    def step(batch: tuple[Any, Any]) -> tuple[int, float]:
        x, y = (t.pin_memory().cuda(non_blocking=True) for t in batch)
        loss = model(input_ids=x, labels=y).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return x.numel(), flops.done(x.numel(), x.numel(), 4 * 4096 * 4097 // 2)

    return measure(step, batches[:warmup], batches[warmup:], barrier)


def meshtune_groups(
    exs: list[chat.Encoded], seq_len: int, rows_per_micro: int, per_step: int, steps: int
) -> list[list[Any]]:
    """`steps` optimizer steps of `per_step` micro batches of `rows_per_micro` rows each, packed
    from the stream of epochs (every step its own conversations, no partial last row)."""
    from meshtune.train.packing import micro_batches, pack

    size = rows_per_micro * per_step
    epochs = 1
    while len(rows := pack(stream(exs, epochs), seq_len, True, None, share=False)) <= size * steps:
        epochs += 1
    return [
        micro_batches(rows[i : i + size], rows_per_micro, share=False)
        for i in range(0, size * steps, size)
    ]


def shapes(group: list[Any], world: int, budget: int) -> set[tuple[int, int]]:
    """(process, padded length) of every micro batch the processes compute for this step."""
    from meshtune.train.loss import padded_length
    from meshtune.train.packing import join

    return {
        (rank, padded_length(len(b.input_ids)))
        for rank in range(world)
        for b in join(group[rank::world], budget)
    }


def warm_and_timed(
    groups: list[list[Any]], warmup: int, world: int, budget: int
) -> tuple[list[list[Any]], list[list[Any]]]:
    """The first `warmup` steps, and after them any timed step whose padded shapes (on any
    process) they have not compiled yet; then the timed steps."""
    warm, timed = groups[:warmup], groups[warmup:]
    seen = set().union(*(shapes(g, world, budget) for g in warm))
    for g in timed:
        if not shapes(g, world, budget) <= seen:
            warm.append(g)
            seen |= shapes(g, world, budget)
    return warm, timed


def meshtune_step(
    shape: str,
    exs: list[chat.Encoded],
    leg: str,
    seq_len: int,
    rows_per_micro: int,
    per_step: int,
    budget: int,
    barrier: Any,
    dtype: Any = torch.bfloat16,
    profile: Path | None = None,
) -> dict:
    """(c), (d): meshtune's own training step (`Trainer.train_step`) on the CUDA engine."""
    from accelerate import Accelerator

    from meshtune.train.attention import DOCUMENT_ATTENTION, register_document_attention
    from meshtune.train.loop import Engine, Trainer
    from meshtune.train.loss import packed_causal_lm, padded_length
    from meshtune.train.plan import CUDA_ENGINE

    register_document_attention()
    accelerator = Accelerator(mixed_precision="bf16" if dtype == torch.bfloat16 else "fp16")
    world, rank = accelerator.num_processes, accelerator.process_index
    assert per_step % world == 0, "every process takes the same number of micro batches"
    peft = with_lora(base_model(shape, DOCUMENT_ATTENTION, dtype))
    engine = Engine(CUDA_ENGINE, packed_causal_lm(peft), budget, 10)
    opt = adamw(peft)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    engine.module, opt = accelerator.prepare(engine.module, opt)
    trainer = Trainer(
        recipe=SimpleNamespace(max_grad_norm=1.0),
        plan=None,
        run=None,
        accelerator=accelerator,
        engine=engine,
        model=peft,
        optimizer=opt,
        scheduler=sched,
        params=[p for p in peft.parameters() if p.requires_grad],
        state=None,
        metrics=None,
        eval_batches=[],
        say=print,
    )
    flops = Flops(shape)
    warmup, steps = STEPS[leg]
    groups = meshtune_groups(exs, seq_len, rows_per_micro, per_step, warmup + steps)
    warm, timed = warm_and_timed(groups, warmup, world, budget)
    losses: list[Any] = []

    def step(group: list[Any]) -> tuple[int, float]:
        mine = group[rank::world]
        losses.append(trainer.train_step(group, mine))
        joined = engine.batches(mine)
        positions = sum(padded_length(len(b.input_ids)) for b in joined)
        pairs = sum((e - s) * (e - s + 1) // 2 for b in mine for s, e, _, _ in b.segments)
        # tokens of the whole step (all processes); FLOPs of this process's share, times world
        return sum(b.tokens for b in group), world * flops.done(
            positions, sum(b.trained for b in mine), pairs
        )

    result = measure(step, warm, timed, barrier)
    result["token_budget"] = budget
    result["micro_batches_per_step"] = per_step
    result["padded_lengths"] = sorted({n for g in groups for _, n in shapes(g, world, budget)})
    result["losses"] = [round(x, 5) for x in torch.stack(losses).tolist()]
    if profile:
        with torch.profiler.profile() as prof:
            step(timed[0])
            torch.cuda.synchronize()
        table = prof.key_averages().table(sort_by="self_device_time_total", row_limit=40)
        profile.write_text(table + "\n")
    return result


def leg_result(
    shape: str, leg: str, exs: list[chat.Encoded], pad: int, budget: int, barrier: Any, args: Any
) -> dict:
    if leg == "a":
        return naive(shape, exs, pad, barrier)
    if leg == "b":
        return hf_packed(shape, exs, barrier)
    if leg == "c":
        return meshtune_step(
            shape,
            exs,
            "c",
            4096,
            budget // 4096,
            STEP_MICRO_BATCHES,
            budget,
            barrier,
            profile=args.profile if shape == "llama-3.2-1b" else None,
        )
    return meshtune_step(shape, exs, "d", 512, 4, 1, budget, barrier)


def free() -> None:
    gc.collect()
    torch.cuda.empty_cache()


def parse_legs(text: str) -> dict[str, str]:
    """'llama-3.2-1b:abcd,smollm2-135m:ac' -> {shape: legs}."""
    out = {}
    for item in text.split(","):
        shape, _, legs = item.partition(":")
        if shape not in SHAPES or not legs or set(legs) - set(LEGS):
            raise SystemExit(
                f"--legs: {item!r} is not SHAPE:LEGS (shapes {list(SHAPES)}, legs abcd)"
            )
        out[shape] = legs
    return out


def dry(args: Any, tokenizers: dict[str, Any], legs: dict[str, str]) -> None:
    """What each leg would run, without a GPU: steps, tokens per step, padded lengths."""
    from meshtune.train.plan import token_budget

    for shape, letters in legs.items():
        exs = examples(tokenizers[shape], 4096)
        budget = token_budget(SHAPES[shape], 4096, int(args.dry_free_gib * 2**30))
        print(f"{shape}: {len(exs)} conversations, {sum(len(e.input_ids) for e in exs):,} tokens")
        for leg in letters:
            warmup, steps = STEPS[leg]
            if leg == "a":
                batches = naive_batches(exs, warmup + steps)
                per = [sum(len(e.input_ids) for e in b) for b in batches]
                print(f"  (a) {len(batches)} steps, {sum(per) / len(per):.0f} tokens per step")
            elif leg == "b":
                print(f"  (b) {len(packed_batches(exs, warmup + steps))} steps of 16,384 tokens")
            else:
                rows, per_step, seq = (budget // 4096, STEP_MICRO_BATCHES, 4096)
                if leg == "d":
                    rows, per_step, seq = 4, 1, 512
                groups = meshtune_groups(exs, seq, rows, per_step, warmup + steps)
                for world in (1, 2) if leg == "c" else (1,):
                    warm, timed = warm_and_timed(groups, warmup, world, budget)
                    tokens = [sum(b.tokens for b in g) for g in timed]
                    lengths = sorted({n for g in groups for _, n in shapes(g, world, budget)})
                    print(
                        f"  ({leg}) {world} process(es): budget {budget:,}, {len(warm)} warm-up "
                        f"+ {len(timed)} timed steps of {sum(tokens) / len(tokens):,.0f} tokens, "
                        f"padded lengths {lengths}"
                    )


def header(process: Any) -> dict[str, Any]:
    import accelerate
    import peft
    import transformers

    commit = (
        os.environ.get("MESHTUNE_COMMIT")
        or subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO
        ).stdout.strip()
    )
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "gpu": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "accelerate": accelerate.__version__,
        "commit": commit,
        "processes": process.num_processes,
    }


def rounded(r: dict[str, Any]) -> dict[str, Any]:
    def one(v: Any) -> Any:
        return round(v, 4) if isinstance(v, float) else v

    return {k: [one(x) for x in v] if isinstance(v, list) else one(v) for k, v in r.items()}


def fp16_capped(args: Any, tokenizers: dict[str, Any], process: Any) -> dict[str, Any]:
    """The T4 path: fp16 with loss scaling, the 1B shape, memory capped at `--fp16-cap-gib`."""
    from meshtune.train.plan import token_budget

    free()
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(args.fp16_cap_gib * 2**30 / total)
    shape = "llama-3.2-1b"
    weights = Flops(shape).total_params * 2
    budget = token_budget(SHAPES[shape], 4096, int(args.fp16_cap_gib * 2**30 - weights))
    exs = examples(tokenizers[shape], 4096)
    r = meshtune_step(
        shape,
        exs,
        "c",
        4096,
        max(1, budget // 4096),
        STEP_MICRO_BATCHES,
        budget,
        process.wait_for_everyone,
        torch.float16,
    )
    r["mfu"] = 4 * Flops(shape).total_params * r["tokens_per_s"] / (args.peak * 1e12)
    r.pop("flops_per_s")
    return {"cap_gib": args.fp16_cap_gib, **rounded(r)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokenizer", type=Path, help="SmolLM2's tokenizer folder")
    parser.add_argument("--legs", default="llama-3.2-1b:abcd,smollm2-135m:ac")
    parser.add_argument("--fp16-cap-gib", type=float, help="only the fp16 path, memory capped")
    parser.add_argument(
        "--steps", action="append", default=[], help="LEG=WARMUP,TIMED, e.g. a=30,150"
    )
    parser.add_argument("--profile", type=Path, help="(c), 1B shape: one step's kernel table")
    parser.add_argument("--dry", action="store_true", help="no GPU: what each leg would run")
    parser.add_argument("--dry-free-gib", type=float, default=139.0)
    parser.add_argument("--combine", type=Path, nargs="+", help="one-GPU, two-GPU, fp16 JSON")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.combine:
        out = combine([json.loads(f.read_text()) for f in args.combine if f.is_file()])
        print(json.dumps(out["targets"], indent=1))
        if args.out:
            args.out.write_text(json.dumps(out, indent=1) + "\n")
        return
    if args.tokenizer is None:
        raise SystemExit("--tokenizer DIR is needed")
    legs = parse_legs(args.legs)
    for item in args.steps:
        leg, _, counts = item.partition("=")
        STEPS[leg] = tuple(int(n) for n in counts.split(","))
    from transformers import AutoTokenizer

    # the 1B shape under Llama-3's template, the 135M shape under its own (ChatML)
    tokenizers = {
        "llama-3.2-1b": llama3_tokenizer(args.tokenizer),
        "smollm2-135m": AutoTokenizer.from_pretrained(args.tokenizer),
    }
    if args.dry:
        dry(args, tokenizers, legs)
        return
    assert torch.cuda.is_available(), "this benchmark needs a CUDA GPU"
    from accelerate import PartialState

    process = PartialState()  # under `accelerate launch`: one process per GPU
    torch.cuda.set_device(process.local_process_index)
    out = header(process)
    args.peak = peak_tflops()
    out["peak_bf16_tflops_measured"] = round(args.peak, 1)
    if args.fp16_cap_gib:
        out["fp16_capped"] = fp16_capped(args, tokenizers, process)
        print(json.dumps(out["fp16_capped"]), flush=True)
        if args.out:
            args.out.write_text(json.dumps(out, indent=1) + "\n")
        return
    from meshtune.train.plan import token_budget

    exs = {shape: examples(tokenizers[shape], 4096) for shape in legs}
    big = exs.get("llama-3.2-1b") or exs[next(iter(exs))]
    out["conversations"] = len(big)
    out["tokens_llama3_template"] = sum(len(e.input_ids) for e in big)
    out["trained_tokens_llama3_template"] = sum(e.trained for e in big)
    out["shapes"] = {s: {"params": Flops(s).total_params} for s in legs}
    budgets = {s: token_budget(SHAPES[s], 4096) for s in legs}  # before any model is loaded
    for letter in "abcd":  # (a) first: nothing else runs yet
        for shape in [s for s, letters in legs.items() if letter in letters]:
            pad = tokenizers[shape].pad_token_id
            r = leg_result(
                shape, letter, exs[shape], pad, budgets[shape], process.wait_for_everyone, args
            )
            free()
            gpus_peak = args.peak * 1e12 * process.num_processes
            r["mfu"] = 4 * Flops(shape).total_params * r["tokens_per_s"] / gpus_peak
            r["hfu"] = r.pop("flops_per_s") / gpus_peak
            results = out["shapes"][shape]
            results[LEGS[letter]] = rounded(r)
            for name, result in results.items():
                for ref, key in ((A, "x_a"), (B, "x_b")):
                    if isinstance(result, dict) and ref in results and name != ref:
                        result[key] = round(
                            result["tokens_per_s"] / results[ref]["tokens_per_s"], 2
                        )
            if process.is_main_process:
                print(shape, LEGS[letter], json.dumps(results[LEGS[letter]]), flush=True)
                if args.out:  # after every leg: a run cut short keeps what it measured
                    args.out.write_text(json.dumps(out, indent=1) + "\n")


def combine(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The one-GPU run with the two-GPU run and the fp16 run beside it, and the targets."""
    one = next(p for p in parts if p.get("processes") == 1 and "shapes" in p)
    out = dict(one)
    reference = one["shapes"].get("llama-3.2-1b", {}).get(C)
    for p in parts:
        if "fp16_capped" in p:
            out["fp16_capped"] = {"date": p["date"], "commit": p["commit"], **p["fp16_capped"]}
        if p.get("processes", 1) > 1 and reference:
            two = p["shapes"]["llama-3.2-1b"][C]
            # steps beyond the common warm-up are the same steps only if both warmed up alike
            common = min(STEPS["c"][0], len(two["losses"]))
            if two["warmup_steps"] == reference["warmup_steps"]:
                common = min(len(two["losses"]), len(reference["losses"]))
            pairs = list(zip(two["losses"][:common], reference["losses"][:common], strict=True))
            out["two_gpus"] = {
                "date": p["date"],
                "commit": p["commit"],
                "processes": p["processes"],
                **two,
                "x_one_gpu": round(two["tokens_per_s"] / reference["tokens_per_s"], 3),
                "losses_compared": len(pairs),
                "max_relative_loss_difference": max(abs(a - b) / abs(b) for a, b in pairs),
            }
    out["targets"] = targets(out)
    return out


def targets(out: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, each with the measured value and whether it is met."""
    big = out["shapes"].get("llama-3.2-1b", {})
    small = out["shapes"].get("smollm2-135m", {})
    c, two, fp16 = big.get(C, {}), out.get("two_gpus", {}), out.get("fp16_capped", {})
    rows: dict[str, Any] = {}

    def at_least(name: str, value: float | None, goal: float) -> None:
        rows[name] = {
            "value": value,
            "goal": f">= {goal:g}",
            "met": value is not None and value >= goal,
        }

    at_least("1b_c_over_b", c.get("x_b"), 1.5)
    at_least("1b_c_over_a", c.get("x_a"), 40)
    at_least("1b_c_mfu", c.get("mfu"), 0.45)
    at_least("135m_c_tokens_per_s", small.get(C, {}).get("tokens_per_s"), 100_000)
    at_least("two_gpus_x_one_gpu", two.get("x_one_gpu"), 1.8)
    loss_gap = two.get("max_relative_loss_difference")
    rows["two_gpus_same_losses"] = {
        "value": loss_gap,
        "goal": "<= 0.001 relative, every compared step",
        "met": loss_gap is not None and loss_gap <= 1e-3,
    }
    finite = bool(fp16.get("losses")) and all(math.isfinite(x) for x in fp16["losses"])
    rows["fp16_capped_trains"] = {
        "value": fp16.get("peak_gib"),
        "goal": f"peak <= {fp16.get('cap_gib')} GiB, finite losses",
        "met": finite and fp16.get("peak_gib", math.inf) <= fp16.get("cap_gib", 0),
    }
    return rows


if __name__ == "__main__":
    main()
