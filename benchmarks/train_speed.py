"""Training throughput on CPU: meshtune's loop vs the plain per-example padded Hugging Face +
peft loop the v2 guide's notebook runs, on the same model, data and LoRA settings.

Both loops train on the same conversations with the same labels (assistant turns and their
end-of-turn token) and the same LoRA; the plain loop pads each batch of 8 to its longest
example and computes logits for every position, as `model(input_ids, attention_mask, labels)`
does; meshtune's packs rows without padding, computes each row's shared system prompt once and
logits only where a token is trained. Throughput counts each conversation's own tokens, so both
loops are measured on the same work. Rounds alternate between the two so that background load
affects both alike (figures in the README).

    .venv/bin/python benchmarks/train_speed.py [--conversations 96] [--rounds 2]
"""

import argparse
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from meshtune import chat, data
from meshtune.meshmaster import DEFAULT_SYSTEM_PROMPT
from meshtune.models import resolve
from meshtune.train import micro_batches, micro_loss, pack

DATA = Path(__file__).resolve().parents[1] / "data" / "mesh_conversations.jsonl"


def lora_model(folder: Path) -> torch.nn.Module:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    config = LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM"
    )
    return get_peft_model(model, config)


def plain_loop(
    model, examples: list[chat.Encoded], batch_size: int, pad_id: int
) -> tuple[int, int]:
    """One pass of the guide-style loop; returns (tokens including padding, real tokens)."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    seen = padded = 0
    for i in range(0, len(examples), batch_size):
        batch = examples[i : i + batch_size]
        width = max(len(e.input_ids) for e in batch)
        ids = torch.full((len(batch), width), pad_id)
        labels = torch.full((len(batch), width), chat.IGNORE)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, e in enumerate(batch):
            n = len(e.input_ids)
            ids[row, :n] = torch.tensor(e.input_ids)
            labels[row, :n] = torch.tensor(e.labels)
            mask[row, :n] = 1
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        seen += sum(len(e.input_ids) for e in batch)
        padded += ids.numel()
    return padded, seen


def meshtune_loop(model, examples: list[chat.Encoded], seq_len: int) -> int:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    seen = 0
    for batch in micro_batches(pack(examples, seq_len, True, 0), 1):
        loss = micro_loss(model, batch, "cpu") / max(1, batch.trained)
        loss.backward()
        opt.step()
        opt.zero_grad()
        seen += batch.tokens
    return seen


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--conversations", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=512)
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    folder = resolve("smollm2-135m").folder
    tokenizer = AutoTokenizer.from_pretrained(folder)
    convs = data.load_conversations(DATA)[: args.conversations]
    examples = [chat.encode(tokenizer, chat.with_system(c, DEFAULT_SYSTEM_PROMPT)) for c in convs]
    real = sum(len(e.input_ids) for e in examples)
    print(f"{len(examples)} conversations, {real:,} tokens, {torch.get_num_threads()} threads")

    plain_model, mesh_model = lora_model(folder), lora_model(folder)
    plain_s = mesh_s = 0.0
    for r in range(args.rounds):
        t = time.perf_counter()
        padded, _ = plain_loop(plain_model, examples, 8, tokenizer.pad_token_id)
        plain_s += time.perf_counter() - t
        t = time.perf_counter()
        meshtune_loop(mesh_model, examples, args.seq_len)
        mesh_s += time.perf_counter() - t
        print(
            f"round {r + 1}: plain {plain_s:.1f} s cumulative, meshtune {mesh_s:.1f} s cumulative "
            f"(plain batches hold {padded:,} positions for {real:,} real tokens)"
        )
    plain_tps = real * args.rounds / plain_s
    mesh_tps = real * args.rounds / mesh_s
    print(f"plain padded HF+peft loop: {plain_tps:.0f} real tokens/s")
    print(f"meshtune packed loop:      {mesh_tps:.0f} real tokens/s (rows of {args.seq_len})")
    print(f"speed-up: {mesh_tps / plain_tps:.2f}x (target 2x)")


if __name__ == "__main__":
    main()
