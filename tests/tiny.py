"""Tiny real models built in the tests: random-weight llama models with real tokenizers.

Shared by the training, export and evaluation tests (imported by conftest.py), with the one
builder of each file the tests need: a recipe, a small chat file, a run's train_summary.json.
"""

import json
import sys
from pathlib import Path

import pytest
import yaml
from benchmarks.standin import llama32_tokenizer as llama32_tokenizer_from  # noqa: F401 (re-exported)

from meshtune.rundir import RunDir, TrainSummary

# Llama 3.x's chat template (without the date header Meta's adds to system prompts), enough to
# test the llama3 family end to end with a tokenizer built here.
LLAMA3_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' "
    "+ message['content'] + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- endif %}"
)
LLAMA3_SPECIALS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
]


@pytest.fixture(scope="session")
def smol_folder() -> Path:
    """The embedded SmolLM2-135M-Instruct as a Hugging Face folder (converted once, cached)."""
    from meshtune.models import resolve

    return resolve("smollm2-135m").folder


@pytest.fixture(scope="session")
def smol_tokenizer(smol_folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smol_folder)


def save_tiny_llama(folder: Path, tokenizer, seed: int = 0, layers: int = 2, **config) -> Path:
    """A random llama (tied embeddings unless `config` says otherwise) saved with `tokenizer`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = {"tie_word_embeddings": True, **config}
    llama = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tokenizer),
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **config,
    )
    LlamaForCausalLM(llama).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def lora_run(
    root: Path,
    base,
    base_name: str,
    family: str,
    std: float = 0.05,
    summary: dict | None = None,
    **recipe,
) -> Path:
    """ROOT/run as `meshtune train` writes it: best/ (a LoRA adapter on every linear layer of
    `base`, B perturbed so merging changes the model), recipe.yaml and train_summary.json."""
    import torch
    import yaml
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    peft = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(std=std)
    run = root / "run"
    peft.save_pretrained(run / "best")
    (run / "recipe.yaml").write_text(yaml.safe_dump({"base_model": base_name, **recipe}))
    fields = {"family": family, "best_adapter": "best", "best_step": 1, **(summary or {})}
    write_summary(run, base_name, **fields)
    return run


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, smol_tokenizer) -> Path:
    """A 2-layer random llama with SmolLM2's tokenizer and ChatML template, as an HF folder."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-chatml"), smol_tokenizer)


@pytest.fixture(scope="session")
def llama3_tokenizer(smol_folder):
    """SmolLM2's tokenizer given Llama-3's special tokens and chat template: a llama3-family
    tokenizer without downloading Meta's."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smol_folder)
    tok.add_special_tokens({"additional_special_tokens": LLAMA3_SPECIALS})
    tok.bos_token, tok.eos_token, tok.pad_token = "<|begin_of_text|>", "<|eot_id|>", "<|eot_id|>"
    tok.chat_template = LLAMA3_TEMPLATE
    return tok


@pytest.fixture(scope="session")
def tiny_llama3(tmp_path_factory, llama3_tokenizer) -> Path:
    """A 2-layer random llama with the Llama-3 chat template, as an HF folder."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama3"), llama3_tokenizer)


def write_summary(run: Path, base_model: str, **fields) -> TrainSummary:
    """RUN/train_summary.json as `meshtune train` writes it (rundir's record), for a run
    built by hand."""
    summary = TrainSummary(base_model=base_model, **fields)
    run.mkdir(parents=True, exist_ok=True)
    summary.save(RunDir(run).summary)
    return summary


def write_recipe(folder: Path, text: str | None = None, **keys) -> Path:
    """FOLDER/recipe.yaml: `text` as written, or the keys as YAML."""
    path = folder / "recipe.yaml"
    path.write_text(text if text is not None else yaml.safe_dump(keys))
    return path


def chat_row(user: str, reply: str, **meta) -> dict:
    """One ShareGPT training row."""
    return {
        **meta,
        "conversations": [{"from": "human", "value": user}, {"from": "gpt", "value": reply}],
    }


def small_data(tmp_path: Path, n: int = 48) -> Path:
    path = tmp_path / "chats.jsonl"
    words = ["relay", "snr", "hops", "router", "channel", "antenna", "battery", "region"]
    rows = [
        chat_row(f"tell me about {words[i % 8]} number {i}", f"{words[i % 8]} is fine. ok {i % 3}.")
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def tiny_recipe(tmp_path: Path, model: Path, **extra) -> Path:
    """A recipe that trains a LoRA adapter on `model` for a few steps on small_data (seed 7);
    `adapter=None` makes it a full fine-tune (its LoRA keys then ignored)."""
    keys = dict(
        base_model=str(model),
        datasets=[{"path": str(small_data(tmp_path))}],
        sequence_len=128,
        micro_batch_size=2,
        gradient_accumulation_steps=1,
        num_epochs=2,
        learning_rate=5e-3,
        adapter="lora",
        lora_r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        lora_target_linear=True,
        val_set_size=8,
        eval_steps=4,
        save_steps=4,
        warmup_ratio=0.1,
        seed=7,
    )
    keys.update(extra)
    return write_recipe(tmp_path, **keys)


def tiny_base(folder: Path, tokenizer, *, tie=False, init=0.5, rope=None, seed=0):
    """A 2-layer random llama. A large init makes its logits spread like a real model's, so a
    wrong tensor layout shows in them."""
    from transformers import LlamaForCausalLM

    rope = {"rope_parameters": rope} if rope else {}
    save_tiny_llama(
        folder, tokenizer, seed, tie_word_embeddings=tie, initializer_range=init, **rope
    )
    return LlamaForCausalLM.from_pretrained(folder)


@pytest.fixture(scope="module")
def stopper(tmp_path_factory, smol_tokenizer):
    """A tied-embedding chatml model built to end every turn at once: its layers write nothing
    to the residual stream and one embedding direction, shared by every token, points at
    <|im_end|>. It passes every check, so its export exits 0."""
    import torch

    root = tmp_path_factory.mktemp("stopper")
    base = tiny_base(root / "base", smol_tokenizer, tie=True, init=0.02)
    eot = smol_tokenizer.convert_tokens_to_ids("<|im_end|>")
    with torch.no_grad():
        for layer in base.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        base.model.embed_tokens.weight[:, 0] = 1.0
        base.model.embed_tokens.weight[eot] = 0.0
        base.model.embed_tokens.weight[eot, 0] = 50.0
    base.save_pretrained(root / "base")
    run = lora_run(root, base, str(root / "base"), "chatml", std=0.001)
    from meshtune import export

    info, verification = export.export(run, quant="F32", name="stopper")
    return run, info, verification


def stand_in_ollama(folder: Path, exit_code: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "calls.jsonl"
    script = folder / "ollama"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        f"open({str(log)!r}, 'a').write(json.dumps({{'argv': sys.argv[1:], "
        "'cwd': os.getcwd()}) + '\\n')\n"
        f"sys.exit({exit_code})\n"
    )
    script.chmod(0o755)
    return log
