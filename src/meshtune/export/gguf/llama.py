"""The llama architecture (SmolLM2, Llama-3.x), as convert_hf_to_gguf.py's LlamaModel writes
it: tensors renamed to llama.cpp's names, q/k re-permuted into llama.cpp's rotary layout, norms
in F32, and the tokenizer's vocabulary, merges and chat template copied, with eos/eot set to the
family's end-of-turn token."""

import math
import re
from hashlib import sha256
from pathlib import Path
from typing import Any

from meshtune import chat
from meshtune.errors import MeshtuneError
from meshtune.export.gguf.writer import Architecture, register, supported
from meshtune.files import read_json


@register
class Llama(Architecture):
    model_type = "llama"
    hf_class = "LlamaForCausalLM"
    supported = "llama (SmolLM2, Llama-3.x)"
    gguf_arch = "LLAMA"

    rope_freqs: Any = None  # Llama-3.1/3.2 rope scaling: per-frequency factors

    def set_gguf_parameters(self, writer: Any) -> None:
        self.rope_freqs = _add_hparams(writer, self.config)

    def set_vocab(self, writer: Any) -> None:
        _add_tokenizer(writer, self.tokenizer, self.config["vocab_size"], self.merged)

    def modify_tensor(self, hf_name: str, data: Any) -> Any:
        # transformers un-permutes q/k when it reads a llama GGUF; put llama.cpp's rotary layout
        # back (k with the KV-head count), or the model is broken (stack.md).
        heads = self.config["num_attention_heads"]
        if re.search(r"self_attn\.q_proj\.(weight|bias)$", hf_name):
            return _permute(data, heads)
        if re.search(r"self_attn\.k_proj\.(weight|bias)$", hf_name):
            return _permute(data, self.config.get("num_key_value_heads", heads))
        return data

    def extra_tensors(self) -> list[tuple[str, Any]]:
        if self.rope_freqs is None:
            return []
        import gguf

        return [(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", self.rope_freqs)]


def _permute(w: Any, n_head: int) -> Any:
    """llama.cpp's rotary layout for q/k rows (convert_hf_to_gguf's LlamaModel.permute)."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def _add_hparams(writer: Any, config: dict[str, Any]) -> Any:
    """The llama hyper-parameters; returns the rope_freqs tensor for Llama-3.1/3.2 rope
    scaling (None otherwise)."""
    import gguf
    import numpy as np

    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.get("num_key_value_heads", heads))
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_vocab_size(config["vocab_size"])
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config["hidden_size"] // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    # transformers 5 writes rope_parameters; older configs rope_theta + rope_scaling.
    rope = dict(config.get("rope_parameters") or {})
    if not rope:
        rope = dict(config.get("rope_scaling") or {})
        rope.setdefault("rope_theta", config.get("rope_theta", 10000.0))
    writer.add_rope_freq_base(rope.get("rope_theta", 10000.0))
    kind = (rope.get("rope_type") or rope.get("type") or "default").lower()
    if kind == "default":
        return None
    if kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(rope["factor"])
        return None
    if kind == "llama3":  # per-frequency factors, as convert_hf_to_gguf computes them
        base, factor = rope.get("rope_theta", 10000.0), rope.get("factor", 8.0)
        low, high = rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
        old_ctx = rope.get("original_max_position_embeddings", 8192)
        freqs = 1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
        factors = []
        for freq in freqs:
            wavelen = 2 * math.pi / freq
            if wavelen < old_ctx / high:
                factors.append(1.0)
            elif wavelen > old_ctx / low:
                factors.append(factor)
            else:
                smooth = (old_ctx / wavelen - low) / (high - low)
                factors.append(1 / ((1 - smooth) / factor + smooth))
        return np.array(factors, dtype=np.float32)
    raise MeshtuneError(f"rope scaling {kind!r} is not supported by meshtune's export")


# llama.cpp picks its pre-tokenizer (how text is split before BPE) by the hash of the token ids
# of this text (convert_hf_to_gguf.py, get_vocab_base_pre); these are the llama-family
# tokenizers meshtune exports.
_CHKTXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis "
    "concatenated) ✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 "
    "កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ ------======= нещо на Български "
    "''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? "
    "'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)


_PRE_TOKENIZERS = {
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",
}


def _pre_tokenizer(tokenizer: Any, where: Path) -> str:
    # Hash with and without special tokens, so a BOS-adding variant of a known tokenizer
    # (the same splitting) is recognised too.
    for ids in (tokenizer.encode(_CHKTXT), tokenizer.encode(_CHKTXT, add_special_tokens=False)):
        pre = _PRE_TOKENIZERS.get(sha256(str(ids).encode()).hexdigest())
        if pre:
            return pre
    raise MeshtuneError(
        f"{where}: the tokenizer is not one llama.cpp can reproduce here (known: SmolLM2's "
        f"and Llama-3's BPE tokenizers); supported: {supported()}"
    )


def _add_tokenizer(writer: Any, tokenizer: Any, vocab_size: int, merged: Path) -> None:
    import gguf

    tokenizer_json = read_json(merged / "tokenizer.json", "re-run export")
    if (tokenizer_json.get("model") or {}).get("type") != "BPE":
        raise MeshtuneError(f"{merged}: not a BPE tokenizer; supported: {supported()}")
    vocab = {i: t for t, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in vocab:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(vocab[i])
            types.append(
                gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED
            )
        else:
            tokens.append(vocab[i])
            types.append(gguf.TokenType.NORMAL)
    family = chat.family_of(tokenizer)
    eot = tokenizer.convert_tokens_to_ids(family.end_of_turn)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer(tokenizer, merged))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(gguf.SpecialVocab(merged, load_merges=True).merges)
    if tokenizer.bos_token_id is not None:
        writer.add_bos_token_id(tokenizer.bos_token_id)
    # The token the model ends its turns with, as eos and eot: llama.cpp and Ollama stop there
    # (a Llama-3 GGUF with eos <|end_of_text|> runs on: unsloth#468).
    writer.add_eos_token_id(eot)
    writer.add_eot_token_id(eot)
    if tokenizer.unk_token_id is not None:
        writer.add_unk_token_id(tokenizer.unk_token_id)
    if tokenizer.pad_token_id is not None:
        writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_add_bos_token(chat.adds_bos(tokenizer))
    writer.add_add_eos_token(False)
    writer.add_chat_template(tokenizer.chat_template)
