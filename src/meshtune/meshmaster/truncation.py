"""What Ollama lets the model see of the bot's request: its truncation to `num_ctx`.

Read from Ollama's source (llm/llama_server.go, v0.30.11 and later, which runs llama.cpp's
llama-server): Ollama renders the Modelfile TEMPLATE (SYSTEM and the bot's prompt string) and
tokenizes it. A prompt of at most num_ctx - 1 tokens is sent whole. A longer one is cut: the
first `keep` tokens (num_keep, 4 by default, plus the BOS token when the tokenizer adds one)
and then only the tail, so that the whole is num_ctx - max((num_ctx - keep) // 2, 1) tokens:
about half the context, the other half left for the reply ("truncating input prompt ...
keep=4" in Ollama's log).

While generating, llama-server shifts the context when the next token would not fit (the
cache holds num_ctx - 1 tokens): it keeps the first `keep` tokens and drops half of the rest
((held - keep) // 2, the oldest first).
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

NUM_KEEP = 4  # Ollama's default num_keep; Mesh Master does not send one


def keep_tokens(num_ctx: int, adds_bos: bool, num_keep: int = NUM_KEEP) -> int:
    """How many leading tokens Ollama always keeps."""
    return min(num_keep + int(adds_bos), num_ctx - 1)


@dataclass(frozen=True, slots=True)
class Cut:
    """A tokenized prompt as Ollama hands it to the model."""

    tokens: list[int]  # what the model sees
    total: int  # the rendered prompt's tokens
    keep: int  # leading tokens always kept

    @property
    def dropped(self) -> int:
        return self.total - len(self.tokens)

    @property
    def truncated(self) -> bool:
        return self.dropped > 0


def ollama_cut(tokens: Sequence[int], num_ctx: int, adds_bos: bool) -> Cut:
    """`tokens` (the rendered prompt, BOS included when the tokenizer adds one) as Ollama
    truncates them for a context of `num_ctx`."""
    tokens = list(tokens)
    keep = keep_tokens(num_ctx, adds_bos)
    if num_ctx <= 1 or len(tokens) <= num_ctx - 1:
        return Cut(tokens, len(tokens), keep)
    limit = num_ctx - max((num_ctx - keep) // 2, 1)
    return Cut(tokens[:keep] + tokens[len(tokens) - (limit - keep) :], len(tokens), keep)


def shift_discard(held: int, num_ctx: int, keep: int) -> int:
    """How many tokens after the first `keep` llama-server drops before the next token, with
    `held` tokens in the cache (0: no shift needed)."""
    if held + 1 < num_ctx:
        return 0
    return (held - keep) // 2


def cut_trained_row(
    ids: list[int], labels: list[int], num_ctx: int, adds_bos: bool, ignore: int
) -> tuple[list[int], list[int]]:
    """A training row rendered as the bot's request, with its prompt (everything before the
    first trained token) cut as Ollama cuts it: the model trains on what it will see."""
    first = next((i for i, label in enumerate(labels) if label != ignore), len(ids))
    cut = ollama_cut(ids[:first], num_ctx, adds_bos)
    if not cut.truncated:
        return ids, labels
    return cut.tokens + ids[first:], [ignore] * len(cut.tokens) + labels[first:]


def model_view(tokenizer: Any, system: str, prompt: str, num_ctx: int) -> Cut:
    """The bot's `prompt` as Ollama hands it to a model with this tokenizer: rendered by its
    chat template after the Modelfile's SYSTEM (Ollama renders the same text), BOS included
    when the tokenizer adds one, then cut at `num_ctx`."""
    from meshtune import chat  # chat's data module needs this package: imported late
    from meshtune.data import Message

    messages = ([Message("system", system)] if system else []) + [Message("user", prompt)]
    ids = tokenizer(chat.render(tokenizer, messages, True), add_special_tokens=False)["input_ids"]
    bos = chat.adds_bos(tokenizer)
    if bos and ids[:1] != [tokenizer.bos_token_id]:
        ids = [tokenizer.bos_token_id, *ids]
    return ollama_cut(ids, num_ctx, bos)
