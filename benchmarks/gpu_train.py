"""Training throughput on one CUDA GPU, side by side in one process: the same conversations (the
shipped data under the Llama-3 template), the same LoRA (r=8 on every linear layer), the same
AdamW, random weights of the real shapes (throughput depends on shapes, not values).

    (a) naive: Hugging Face + peft, padded micro batches of 4 conversations, sdpa
    (b) HF packed: rows of 4096 tokens, 4 per micro batch, torch.compile, no cross-chat masking
    (c) meshtune's training step (loop.Trainer.train_step, the CUDA engine) at its token budget
    (d) meshtune's training step at the v2 recipe's micro batch (4 rows of 512 tokens)

Warm-up steps (compilation) are timed apart. MFU counts 4N FLOPs per token (N: every
parameter, embeddings once; forward plus the input gradient, since LoRA leaves the weights
frozen) against the bf16 matrix-product peak measured here; HFU counts the FLOPs each loop
actually does (projections at the positions it computes, the vocabulary projection where it
takes logits, attention over the query-key pairs it evaluates: forward plus twice that back).

    python benchmarks/gpu_train.py --tokenizer DIR --out benchmarks/results/X.json
    python benchmarks/gpu_train.py --tokenizer DIR --fp16-cap-gib 15   (the T4 path, alone)
    accelerate launch --num_processes 2 benchmarks/gpu_train.py --tokenizer DIR --legs c
        (two GPUs: the same global batch split between them)
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


def measure(step: Any, batches: list[Any], warmup: int, steps: int) -> dict[str, float]:
    """Runs `step(batch) -> (tokens, flops)` over the batches, cycling; warm-up timed apart."""
    t = time.perf_counter()
    for i in range(warmup):
        step(batches[i % len(batches)])
    torch.cuda.synchronize()
    warm = time.perf_counter() - t
    torch.cuda.reset_peak_memory_stats()
    tokens = flops = 0.0
    t = time.perf_counter()
    for i in range(warmup, warmup + steps):
        n, f = step(batches[i % len(batches)])
        tokens, flops = tokens + n, flops + f
    torch.cuda.synchronize()
    wall = time.perf_counter() - t
    return {
        "tokens_per_s": tokens / wall,
        "flops_per_s": flops / wall,
        "warmup_s": warm,
        "timed_s": wall,
        "steps": steps,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
    }


def naive(shape: str, exs: list[chat.Encoded], pad: int, warmup: int, steps: int) -> dict:
    """(a) the guide's loop: padded batches of 4, logits everywhere, the model's own loss."""
    model = with_lora(base_model(shape, "sdpa", torch.bfloat16))
    opt, flops = adamw(model), Flops(shape)
    order = random.Random(0).sample(exs, len(exs))
    batches = [order[i : i + 4] for i in range(0, len(order) - 3, 4)]

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

    return measure(step, batches, warmup, steps)


def hf_packed(shape: str, exs: list[chat.Encoded], warmup: int, steps: int) -> dict:
    """(b) rows of 4096 tokens filled end to end, 4 per micro batch, compiled, one causal mask
    over the whole row (conversations see each other)."""
    model = with_lora(base_model(shape, "sdpa", torch.bfloat16))
    model.compile()
    opt, flops = adamw(model), Flops(shape)
    ids = [t for e in random.Random(0).sample(exs, len(exs)) for t in e.input_ids]
    labels = [t for e in random.Random(0).sample(exs, len(exs)) for t in e.labels]
    n = len(ids) // 4096
    rows = torch.tensor(ids[: n * 4096]).view(n, 4096)
    targets = torch.tensor(labels[: n * 4096]).view(n, 4096)
    batches = [(rows[i : i + 4], targets[i : i + 4]) for i in range(0, n - 3, 4)]

    def step(batch: tuple[Any, Any]) -> tuple[int, float]:
        x, y = (t.pin_memory().cuda(non_blocking=True) for t in batch)
        loss = model(input_ids=x, labels=y).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return x.numel(), flops.done(x.numel(), x.numel(), 4 * 4096 * 4097 // 2)

    return measure(step, batches, warmup, steps)


def meshtune_step(
    shape: str,
    exs: list[chat.Encoded],
    seq_len: int,
    rows_per_step: int,
    budget: int,
    warmup: int,
    steps: int,
    dtype: Any = torch.bfloat16,
) -> dict:
    """(c), (d): meshtune's own training step (`Trainer.train_step`) on the CUDA engine."""
    from accelerate import Accelerator

    from meshtune.train.attention import DOCUMENT_ATTENTION, register_document_attention
    from meshtune.train.loop import Engine, Trainer
    from meshtune.train.packing import micro_batches, pack
    from meshtune.train.plan import CUDA_ENGINE

    register_document_attention()
    accelerator = Accelerator(mixed_precision="bf16" if dtype == torch.bfloat16 else "fp16")
    peft = with_lora(base_model(shape, DOCUMENT_ATTENTION, dtype))
    from meshtune.train.loss import packed_causal_lm

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
        peft_model=peft,
        optimizer=opt,
        scheduler=sched,
        params=[p for p in peft.parameters() if p.requires_grad],
        state=None,
        metrics=None,
        eval_batches=[],
        say=print,
    )
    flops = Flops(shape)
    rows = pack(exs, seq_len, True, 0, share=False)
    # the same global batch on any number of processes: each takes its share of the step's rows
    world, rank = accelerator.num_processes, accelerator.process_index
    per_process = math.ceil(rows_per_step / world)
    groups = [
        micro_batches(rows[i : i + rows_per_step], per_process, share=False)
        for i in range(0, len(rows) - rows_per_step + 1, rows_per_step)
    ]
    losses: list[Any] = []

    def step(group: list[Any]) -> tuple[int, float]:
        mine = group[rank::world]
        losses.append(trainer.train_step(group, mine))
        joined = engine.batches(mine)
        positions = sum(
            math.ceil(len(b.input_ids) / engine.quantum) * engine.quantum for b in joined
        )
        pairs = sum((e - s) * (e - s + 1) // 2 for b in mine for s, e, _, _ in b.segments)
        # tokens of the whole step (all processes); FLOPs of this process's share, times world
        return sum(b.tokens for b in group), world * flops.done(
            positions, sum(b.trained for b in mine), pairs
        )

    result = measure(step, groups, warmup, steps)
    result["token_budget"] = budget
    result["first_losses"] = [round(x, 4) for x in torch.stack(losses[:5]).tolist()]
    return result


def leg_runs(
    shape: str, exs: list[chat.Encoded], pad: int, budget: int, steps: int
) -> dict[str, Any]:
    return {
        "a_naive_padded_4": lambda: naive(shape, exs, pad, 3, steps),
        "b_hf_packed_4x4096_compiled": lambda: hf_packed(shape, exs, 5, steps),
        "c_meshtune_token_budget": lambda: meshtune_step(
            shape, exs, 4096, budget // 4096, budget, 10, steps
        ),
        "d_meshtune_v2_micro_batch": lambda: meshtune_step(shape, exs, 512, 4, 2048, 25, steps * 4),
    }


def free() -> None:
    gc.collect()
    torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokenizer", type=Path, required=True)
    parser.add_argument("--shapes", default="llama-3.2-1b,smollm2-135m")
    parser.add_argument("--legs", default="a,b,c,d")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--fp16-cap-gib", type=float, help="only the fp16 path, memory capped")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    assert torch.cuda.is_available(), "this benchmark needs a CUDA GPU"
    from accelerate import PartialState

    process = PartialState()  # under `accelerate launch`: one process per GPU, device set
    torch.cuda.set_device(process.local_process_index)
    from transformers import AutoTokenizer

    from meshtune.train.plan import token_budget

    # the 1B shape under Llama-3's template, the 135M shape under its own (ChatML)
    tokenizers = {
        "llama-3.2-1b": llama3_tokenizer(args.tokenizer),
        "smollm2-135m": AutoTokenizer.from_pretrained(args.tokenizer),
    }
    exs = examples(tokenizers["llama-3.2-1b"], 4096)
    if args.fp16_cap_gib:
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(args.fp16_cap_gib * 2**30 / total)
        shape = "llama-3.2-1b"
        weights = Flops(shape).total_params * 2
        budget = token_budget(SHAPES[shape], 4096, int(args.fp16_cap_gib * 2**30 - weights))
        r = meshtune_step(
            shape, exs, 4096, max(1, budget // 4096), budget, 3, args.steps, torch.float16
        )
        print(json.dumps({"fp16_capped": {"cap_gib": args.fp16_cap_gib, **r}}), flush=True)
        return
    peak = peak_tflops()
    commit = (
        os.environ.get("MESHTUNE_COMMIT")
        or subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO
        ).stdout.strip()
    )
    import peft
    import transformers

    out: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "gpu": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "commit": commit,
        "peak_bf16_tflops_measured": round(peak, 1),
        "conversations": len(exs),
        "tokens_llama3_template": sum(len(e.input_ids) for e in exs),
        "trained_tokens_llama3_template": sum(e.trained for e in exs),
        "shapes": {},
    }
    legs = args.legs.split(",")
    for shape in args.shapes.split(","):
        flops = Flops(shape)
        tokenizer = tokenizers[shape]
        exs = examples(tokenizer, 4096)
        results: dict[str, Any] = {}
        runs = leg_runs(
            shape, exs, tokenizer.pad_token_id, token_budget(SHAPES[shape], 4096), args.steps
        )
        for name, leg in runs.items():
            if name[0] not in legs:
                continue
            r = leg()
            free()
            gpus_peak = peak * 1e12 * process.num_processes
            r["mfu"] = 4 * flops.total_params * r["tokens_per_s"] / gpus_peak
            r["hfu"] = r.pop("flops_per_s") / gpus_peak
            results[name] = {k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}
            if process.is_main_process:
                print(shape, name, json.dumps(results[name]), flush=True)
        for name, r in results.items():
            for ref in ("a_naive_padded_4", "b_hf_packed_4x4096_compiled"):
                if ref in results and name != ref:
                    r[f"x_{ref[0]}"] = round(r["tokens_per_s"] / results[ref]["tokens_per_s"], 2)
        out["shapes"][shape] = {"params": flops.total_params, **results}
        if args.out and process.is_main_process:  # a run cut short keeps what it measured
            args.out.write_text(json.dumps(out, indent=1) + "\n")
    out["processes"] = process.num_processes
    if process.is_main_process:
        print(json.dumps(out, indent=1))
        if args.out:
            args.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
