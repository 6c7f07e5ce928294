"""The loss of one micro batch: summed cross-entropy over its trained tokens.

Logits are computed only where a token is trained: the vocabulary projection is the costliest
layer of a small model. On CUDA they are also computed in chunks, with the gradient of each
chunk taken at once, so no (tokens x vocabulary) float32 tensor ever exists.
"""

import math
from dataclasses import dataclass
from typing import Any

import torch

from meshtune import chat
from meshtune.train.attention import document_mask
from meshtune.train.model import base_model
from meshtune.train.packing import Batch


def micro_loss(model: Any, batch: Batch, device: Any) -> Any:
    """The CPU loss: the model's own forward with `logits_to_keep` at the trained positions."""
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


def padded_length(n: int) -> int:
    """The length a CUDA micro batch of `n` tokens is padded to, so that compiled layers see a
    handful of shapes: a multiple of 1024 up to 16,384 tokens, then eight lengths per doubling
    (a multiple of 2048 up to 32,768, of 4096 up to 65,536, ...). Padding is relative to the
    micro batch itself: at most 1023 tokens or an eighth, whatever the budget."""
    step = max(1024, 2 ** (n.bit_length() - 4))
    return max(1, math.ceil(n / step)) * step


@dataclass
class DeviceBatch:
    """A micro batch on the GPU, padded to `padded_length` tokens; padding is its own
    conversation and is never trained."""

    input_ids: Any  # (1, n)
    position_ids: Any  # (1, n)
    keep: Any  # (k,) positions whose next token is trained
    targets: Any  # (k,)
    block_mask: Any
    trained: int
    tokens: int


def to_device(batch: Batch, device: Any) -> DeviceBatch:
    """Tensors built on the host in pinned memory and copied without waiting; the block mask is
    built on the device."""
    n = len(batch.input_ids)
    pad = padded_length(n) - n
    documents = [0] * n
    for i, (start, end, _, _) in enumerate(batch.segments):
        documents[start:end] = [i] * (end - start)
    keep = [i for i, t in enumerate(batch.targets) if t != chat.IGNORE]

    def send(values: list[int], dtype: Any = torch.long) -> Any:
        return torch.tensor(values, dtype=dtype).pin_memory().to(device, non_blocking=True)

    docs = send(documents + [len(batch.segments)] * pad, torch.int32)
    return DeviceBatch(
        input_ids=send(batch.input_ids + [0] * pad)[None],
        position_ids=send(batch.position_ids + list(range(pad)))[None],
        keep=send(keep),
        targets=send([batch.targets[i] for i in keep]),
        block_mask=document_mask(docs),
        trained=len(keep),
        tokens=batch.tokens,
    )


class LinearCrossEntropy(torch.autograd.Function):
    """sum(cross_entropy(hidden @ weight.T, targets)) in chunks of rows. The gradient with
    respect to `hidden` (and `weight`, if it is trained) is computed chunk by chunk in the
    forward pass and kept; backward only scales it."""

    @staticmethod
    def forward(ctx: Any, hidden: Any, weight: Any, targets: Any) -> Any:
        chunk = max(256, 2**28 // weight.shape[0])  # about 1 GiB of float32 logits
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_h = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] else None
        for i in range(0, hidden.shape[0], chunk):
            h, t = hidden[i : i + chunk], targets[i : i + chunk]
            logits = (h @ weight.T).float()
            lse = logits.logsumexp(-1)
            loss += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
            if grad_h is None and grad_w is None:
                continue
            probs = (logits - lse[:, None]).exp_()  # softmax, then minus the one-hot target
            probs[torch.arange(len(t), device=t.device), t] -= 1
            probs = probs.to(h.dtype)
            if grad_h is not None:
                grad_h[i : i + chunk] = probs @ weight
            if grad_w is not None:
                grad_w += (probs.T @ h).float()
        ctx.save_for_backward(grad_h, grad_w)
        ctx.weight_dtype = weight.dtype
        return loss

    @staticmethod
    def backward(ctx: Any, grad: Any) -> Any:
        grad_h, grad_w = ctx.saved_tensors
        return (
            None if grad_h is None else grad_h * grad.to(grad_h.dtype),
            None if grad_w is None else (grad_w * grad).to(ctx.weight_dtype),
            None,
        )


class PackedCausalLM(torch.nn.Module):
    """The trained model (PEFT, or plain for a full fine-tune) with a forward that takes a
    `DeviceBatch` and returns the summed loss, so that accelerate's wrapper (DDP, autocast)
    sees the whole computation. `.model` is what gets saved."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: DeviceBatch) -> Any:
        model = base_model(self.model)
        hidden = model.get_decoder()(
            input_ids=batch.input_ids,
            position_ids=batch.position_ids,
            use_cache=False,
            meshtune_block_mask=batch.block_mask,
        ).last_hidden_state[0]
        weight = model.get_output_embeddings().weight
        return LinearCrossEntropy.apply(hidden[batch.keep], weight.to(hidden.dtype), batch.targets)


def packed_causal_lm(model: Any, compile_layers: bool = True) -> Any:
    """The CUDA training module: decoder layers compiled (they are all one shape, so one
    compilation serves every layer), hidden states at trained positions only, then the chunked
    loss."""
    base = base_model(model)
    if compile_layers:
        # up to eight padded shapes, each in training and in evaluation (no_grad)
        torch._dynamo.config.cache_size_limit = max(64, torch._dynamo.config.cache_size_limit)
        for layer in base.get_decoder().layers:
            layer.compile(dynamic=False)

    return PackedCausalLM(model)
