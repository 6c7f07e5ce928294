"""The model, its LoRA adapter (none for a full fine-tune), precision, optimizer and
learning-rate schedule."""

import importlib.util
import re
from pathlib import Path
from typing import Any

from meshtune.errors import MeshtuneError
from meshtune.recipe import Recipe
from meshtune.train.attention import (
    DOCUMENT_ATTENTION,
    PACKED_ATTENTION,
    register_document_attention,
    register_packed_attention,
)


def precision(recipe: Recipe, cuda: bool) -> str:
    """CPU: float32. CUDA: bf16 where the card has it, else fp16 with loss scaling (a T4)."""
    import torch

    if not cuda:
        return "no"
    if recipe.bf16 is not False and torch.cuda.is_bf16_supported():
        return "bf16"
    if recipe.fp16 or recipe.bf16 in (True, "auto"):
        return "fp16"
    return "no"


def weights_dtype(recipe: Recipe, precision: str) -> Any:
    """The dtype the weights are loaded in. LoRA's frozen base computes in bf16 / fp16 (peft keeps
    the adapter in float32). A full fine-tune keeps float32 weights and computes in bf16 / fp16
    under accelerate's autocast: a step of lr 1e-4 changes a weight by about 1e-4 of itself,
    below bf16's 8-bit mantissa, so in 16 bits most updates round away (and fp16 loss scaling
    refuses 16-bit parameters)."""
    import torch

    if recipe.full_fine_tune:
        return torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)


def load_model(
    recipe: Recipe,
    folder: Path,
    cuda: bool,
    precision: str,
    trust_remote_code: bool,
    allow_lora_fallback: bool,
    say: Any,
    document: bool,
) -> Any:
    """The base model with the engine's attention (`document`: the CUDA engine's) and a LoRA
    adapter on it; for a full fine-tune, the model itself with `unfrozen_parameters` alone
    trainable (every parameter without it)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    dtype = weights_dtype(recipe, precision)
    if document:
        register_document_attention()
    else:
        register_packed_attention()
    kwargs: dict[str, Any] = {
        "dtype": dtype,
        "trust_remote_code": trust_remote_code,
        "attn_implementation": DOCUMENT_ATTENTION if document else PACKED_ATTENTION,
    }
    if recipe.quantized:
        if cuda and has("bitsandbytes"):
            from peft import prepare_model_for_kbit_training
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=recipe.adapter == "qlora" or recipe.load_in_4bit,
                load_in_8bit=recipe.load_in_8bit and not recipe.load_in_4bit,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_compute_dtype=dtype,
            )
        elif allow_lora_fallback:
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
    if recipe.full_fine_tune:
        unfreeze(model, recipe.unfrozen_parameters)
        return model.to("cuda") if cuda else model
    if "quantization_config" in kwargs:
        model = prepare_model_for_kbit_training(model)
    layers = recipe.peft_layers_to_transform
    count = model.config.num_hidden_layers
    if layers and layers[-1] >= count:
        raise MeshtuneError(
            f"peft_layers_to_transform: layer {layers[-1]} does not exist; the base model has "
            f"{count} layers, numbered 0 to {count - 1}"
        )
    targets = recipe.target_modules
    if layers and targets == "all-linear":
        targets = _linear_names(model)
    config = LoraConfig(
        r=recipe.lora_r,
        lora_alpha=recipe.lora_alpha,
        lora_dropout=recipe.lora_dropout,
        target_modules=targets,
        layers_to_transform=layers,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, config)
    return model.to("cuda") if cuda and "quantization_config" not in kwargs else model


def is_adapter(model: Any) -> bool:
    """Whether the model trains a PEFT adapter (else it is a full fine-tune)."""
    from peft import PeftModel

    return isinstance(model, PeftModel)


def base_model(model: Any) -> Any:
    """The transformers model under a PEFT wrapper; a full fine-tune's model is not wrapped."""
    return model.get_base_model() if is_adapter(model) else model


def unfreeze(model: Any, patterns: list[str] | None) -> None:
    """Parameters whose names match a pattern from their start train, the rest are frozen
    (Axolotl's unfrozen_parameters); no patterns: all train."""
    names = [name for name, _ in model.named_parameters()]
    chosen = {n for n in names if not patterns or any(re.match(p, n) for p in patterns)}
    if not chosen:
        raise MeshtuneError(
            f"unfrozen_parameters {patterns} match no parameter of the model; names look like "
            f"{names[0]!r} or {names[-1]!r}"
        )
    for name, param in model.named_parameters():
        param.requires_grad_(name in chosen)


def _linear_names(model: Any) -> list[str]:
    """peft's "all-linear" spelled out (it takes no layer list with a pattern): every linear
    projection's name, the output head excepted."""
    import torch

    return sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] != "lm_head"
        }
    )


EIGHT_BIT_ADAMW = ("adamw_8bit", "adamw_bnb_8bit", "paged_adamw_8bit")


def eight_bit_adamw(recipe: Recipe, cuda: bool) -> bool:
    """Whether the optimizer keeps 8-bit state: bitsandbytes' AdamW, which runs on CUDA only."""
    return recipe.optimizer in EIGHT_BIT_ADAMW and cuda and has("bitsandbytes")


def optimizer(recipe: Recipe, params: list[Any], cuda: bool, say: Any) -> Any:
    import torch

    groups = decay_groups(params, recipe.weight_decay)
    if eight_bit_adamw(recipe, cuda):
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(groups, lr=recipe.learning_rate)
    if recipe.optimizer in EIGHT_BIT_ADAMW:
        say(
            f"note: {recipe.optimizer} needs bitsandbytes on CUDA; using AdamW (32-bit "
            "optimizer state)"
        )
    return torch.optim.AdamW(groups, lr=recipe.learning_rate, fused=cuda or None)


def decay_groups(params: list[Any], weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices only: norm weights and biases (what a full fine-tune adds to
    LoRA's matrices) are not decayed, as in the Hugging Face Trainer Axolotl runs on."""
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def scheduler(recipe: Recipe, optimizer: Any, warmup_steps: int, total_steps: int) -> Any:
    from transformers import get_scheduler

    name = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}
    return get_scheduler(
        name[recipe.lr_scheduler],
        optimizer,
        num_warmup_steps=warmup_steps,
        num_training_steps=total_steps,
    )


def has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None
