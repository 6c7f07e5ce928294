"""A stand-in for meta-llama/Llama-3.2-1B-Instruct in a Hugging Face cache, so the guide's 1B
path (the notebook's GPU branch, `meshtune run recipes/mesh-master-1b-v2.yaml`) runs without
Meta's gated files: random weights of the model's shapes (or a tiny model of the same family),
Meta's Llama-3.2 chat template (tests/data, from its tokenizer_config.json), and SmolLM2's BPE
given Llama-3's special tokens, BOS on every encode as Llama-3's tokenizer does. The vocabulary
rows past the tokenizer's are padded by export, as for any model whose embedding is larger than
its tokenizer. Throughput depends on the shapes, not the values; the replies are noise.

    python benchmarks/standin.py tokenizer DIR          # the tokenizer files alone (small)
    python benchmarks/standin.py model DIR --cache HF_HUB_CACHE [--shape llama-3.2-1b|tiny]

Then `HF_HUB_CACHE=... HF_HUB_OFFLINE=1` make the id resolve from the cache, as after the
notebook's `snapshot_download`.
"""

import argparse
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.gpu_train import SHAPES as TRAIN_SHAPES

REPO = Path(__file__).resolve().parents[1]
REPO_ID = "meta-llama/Llama-3.2-1B-Instruct"
TEMPLATE = REPO / "tests" / "data" / "llama-3.2-chat-template.jinja"
SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
            "<|eot_id|>"]  # fmt: skip

# Llama-3.2-1B-Instruct's config.json (the published one); `tiny` keeps its family and rope.
ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}  # fmt: skip
SHAPES: dict[str, dict[str, Any]] = {
    # gpu_train's shape, with the published head_dim and context
    "llama-3.2-1b": {
        **TRAIN_SHAPES["llama-3.2-1b"],
        "head_dim": 64,
        "max_position_embeddings": 131072,
    },
    "tiny": dict(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        vocab_size=None,  # the tokenizer's
        tie_word_embeddings=True,
        max_position_embeddings=2048,
    ),
}
# Meta's generation_config.json: sampling defaults meshtune's evaluation must not pick up.
GENERATION = {"do_sample": True, "temperature": 0.6, "top_p": 0.9}


def llama32_tokenizer(smol_folder: Path) -> Any:
    """A llama3-family tokenizer with Meta's Llama-3.2-1B-Instruct chat template: SmolLM2's
    vocabulary plus Llama-3's special tokens, so nothing is downloaded."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smol_folder)
    tok.add_special_tokens({"additional_special_tokens": SPECIALS})
    tok.bos_token, tok.eos_token = "<|begin_of_text|>", "<|eot_id|>"
    tok.add_bos_token = True
    tok.chat_template = TEMPLATE.read_text()
    return tok


def build(tokenizer_dir: Path, cache: Path, shape: str = "llama-3.2-1b", seed: int = 0) -> Path:
    """The stand-in saved in `cache` (bf16, as Meta ships it) under REPO_ID; its snapshot."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    dims = {k: v for k, v in SHAPES[shape].items() if k != "rope_theta"}  # rope below
    dims["vocab_size"] = dims["vocab_size"] or -(-len(tok) // 64) * 64  # rows padded, as Meta's
    # a tiny model's context is shorter than the rope's original one; scaling is kept
    original = min(8192, dims["max_position_embeddings"] // 2)
    rope = {**ROPE, "original_max_position_embeddings": original}
    config = LlamaConfig(
        **dims,
        rope_parameters=rope,
        rms_norm_eps=1e-5,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        dtype="bfloat16",
    )
    torch.manual_seed(seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        Path(tmp, "generation_config.json").write_text(
            json.dumps(
                {**GENERATION, "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}
            )
        )
        return put_in_cache(Path(tmp), cache, REPO_ID)


def put_in_cache(folder: Path, cache: Path, repo_id: str) -> Path:
    """`folder`'s files as huggingface_hub lays a download out: blobs named by their hash, a
    snapshot of links to them, refs/main naming the snapshot. Returns the snapshot."""
    root = cache / ("models--" + repo_id.replace("/", "--"))
    revision = hashlib.sha1(repo_id.encode()).hexdigest()
    snapshot = root / "snapshots" / revision
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for f in sorted(folder.iterdir()):
        digest = hashlib.sha256(f.read_bytes()).hexdigest()
        blob = root / "blobs" / digest
        if not blob.exists():
            shutil.copyfile(f, blob)
        link = snapshot / f.name
        link.unlink(missing_ok=True)
        link.symlink_to(os.path.relpath(blob, snapshot))
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(revision)
    return snapshot


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    t = sub.add_parser("tokenizer", help="save the Llama-3.2 stand-in tokenizer to DIR")
    t.add_argument("dir", type=Path)
    m = sub.add_parser("model", help="build the stand-in into the HF cache")
    m.add_argument("tokenizer_dir", type=Path)
    m.add_argument("--cache", type=Path, required=True)
    m.add_argument("--shape", choices=sorted(SHAPES), default="llama-3.2-1b")
    args = parser.parse_args()
    if args.what == "tokenizer":
        from meshtune.models import resolve

        llama32_tokenizer(resolve("smollm2-135m").folder).save_pretrained(args.dir)
        print(f"wrote {args.dir}")
    else:
        print(f"wrote {build(args.tokenizer_dir, args.cache, args.shape)}")


if __name__ == "__main__":
    main()
