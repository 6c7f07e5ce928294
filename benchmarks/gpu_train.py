"""meshtune's training loop on a CUDA GPU: tokens/s for a SmolLM2-135M-shaped and a
Llama-3.2-1B-shaped model on the shipped dataset, in bf16 and (the T4 path) fp16 with loss
scaling.

The weights are random (no hub here): throughput depends on the shapes, not on the values.
The tokenizer is SmolLM2's (pass its folder). Prints one line per run with the measured
tokens/s and the wall time of the steps.

    python benchmarks/gpu_train.py --tokenizer DIR [--steps 40]
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import yaml
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from meshtune.recipe import load_recipe
from meshtune.train import Options, train

DATA = Path(__file__).resolve().parents[1] / "data" / "mesh_conversations.jsonl"

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


def random_model(shape: str, tokenizer_dir: Path, out: Path) -> Path:
    torch.manual_seed(0)
    config = LlamaConfig(
        **SHAPES[shape],
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    LlamaForCausalLM(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(out)
    return out


def run_one(shape: str, precision: str, tokenizer: Path, steps: int, tmp: Path) -> None:
    folder = tmp / shape
    if not folder.exists():
        random_model(shape, tokenizer, folder)
    recipe = tmp / "recipe.yaml"
    keys = dict(
        base_model=str(folder),
        datasets=[{"path": str(DATA)}],
        sequence_len=2048,
        micro_batch_size=4,
        gradient_accumulation_steps=1,
        max_steps=steps,
        learning_rate=1e-4,
        lora_r=8,
        lora_alpha=16,
        lora_dropout=0.15,
        lora_target_linear=True,
        val_set_size=0.1,
        eval_steps=steps,
        warmup_ratio=0.05,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
    )
    recipe.write_text(yaml.safe_dump(keys))
    torch.cuda.reset_peak_memory_stats()
    summary = train(
        load_recipe(recipe),
        Options(tmp / f"run-{shape}", overwrite=True, progress=False),
        lambda *_: None,
    )
    peak = torch.cuda.max_memory_allocated() / 2**30
    print(
        json.dumps(
            {
                "shape": shape,
                "precision": summary["precision"],
                "steps": summary["steps"],
                "wall_s": summary["wall_time_s"],
                "tokens_per_s": summary["tokens_per_s"],
                "trained_tokens_per_s": summary["trained_tokens_per_s"],
                "eval_loss": [summary["eval_loss_before"], summary["eval_loss_after"]],
                "peak_gib": round(peak, 2),
            }
        ),
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokenizer", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--only", help="shape:precision, e.g. llama-3.2-1b:fp16 (one run)")
    args = parser.parse_args()
    assert torch.cuda.is_available(), "this benchmark needs a CUDA GPU"
    if args.only:
        shape, precision = args.only.split(":")
        with tempfile.TemporaryDirectory() as tmp:
            run_one(shape, precision, args.tokenizer, args.steps, Path(tmp))
        return
    print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}", flush=True)
    # One process per run: accelerate's precision is fixed for the life of a process.
    for only in ("smollm2-135m:bf16", "llama-3.2-1b:bf16", "llama-3.2-1b:fp16"):
        subprocess.run(
            [
                sys.executable,
                __file__,
                "--tokenizer",
                str(args.tokenizer),
                "--steps",
                str(args.steps),
                "--only",
                only,
            ],
            check=True,
        )


if __name__ == "__main__":
    main()
