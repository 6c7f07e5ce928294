"""Tiny real models built in the tests: random-weight llama models with real tokenizers.

Shared by the training, export and evaluation tests (imported by conftest.py).
"""

from pathlib import Path

import pytest

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
    import json

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
    summary = {
        "base_model": base_name,
        "family": family,
        "best_adapter": "best",
        "best_step": 1,
        **(summary or {}),
    }
    (run / "train_summary.json").write_text(json.dumps(summary))
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
