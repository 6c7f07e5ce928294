"""Chat templates: the contract between training, export and evaluation.

The model's own (Jinja) chat template renders every prompt. Training labels come from the
rendered text by message spans; the Modelfile's Go TEMPLATE is written per family and proven
(in export) to render the same string.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from meshtune.data import Conversation, Message
from meshtune.errors import MeshtuneError

IGNORE = -100  # label of a token that is not trained


@dataclass(frozen=True, slots=True)
class ChatFamily:
    """Everything meshtune knows about one chat template family; a new family is one record."""

    name: str
    end_of_turn: str  # the token that closes every turn; the model must learn to emit it
    marker: str  # a string only this family's template contains
    stops: tuple[str, ...]  # Ollama `PARAMETER stop` values
    system_header: str  # what opens a system turn; a fixed preamble may follow it
    # Ollama's Go TEMPLATE for the turns (what comes before the first turn, such as BOS, is
    # taken from the model's own template). `{{ .Content }}` of a system turn gets the
    # template's fixed system preamble in front, when it has one (Llama-3.1/3.2's date lines).
    ollama_turns: str


FAMILIES = (
    ChatFamily(
        "chatml",
        "<|im_end|>",
        "<|im_start|>",
        ("<|im_start|>", "<|im_end|>"),
        "<|im_start|>system\n",
        "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n"
        "{{ end }}<|im_start|>assistant\n",
    ),
    ChatFamily(
        "llama3",
        "<|eot_id|>",
        "<|start_header_id|>",
        ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
        "<|start_header_id|>system<|end_header_id|>\n\n",
        "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n"
        "{{ .Content }}<|eot_id|>"
        "{{- end }}<|start_header_id|>assistant<|end_header_id|>\n\n",
    ),
)


def family_of(tokenizer: Any) -> ChatFamily:
    return family_of_template(tokenizer.chat_template or "")


def family_of_template(template: str) -> ChatFamily:
    """The family of a Jinja chat template (a tokenizer's, or a GGUF's metadata)."""
    for family in FAMILIES:
        if family.marker in template:
            return family
    names = ", ".join(f.name for f in FAMILIES)
    raise MeshtuneError(
        f"the tokenizer's chat template is not a supported family ({names}); "
        "set `chat_template: chatml` or `llama3` in the recipe"
    )


def adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer (and so the GGUF's add_bos_token) puts BOS before every text."""
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and tokenizer.bos_token_id is not None and ids[0] == tokenizer.bos_token_id


def as_dicts(messages: Sequence[Message]) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in messages]


def with_system(conv: Conversation, system_prompt: str | None) -> tuple[Message, ...]:
    """The conversation as the deployed model sees it: with the deployment system prompt
    (the Modelfile's SYSTEM) unless the row brings its own."""
    if system_prompt and conv.messages[0].role != "system":
        return (Message("system", system_prompt), *conv.messages)
    return conv.messages


# Llama-3.x templates print "Today Date: <today>" unless given a date, so one conversation would
# render differently on the day of training, of export and of evaluation. Pinned to those
# templates' own fallback date; templates that do not use `date_string` ignore it.
TEMPLATE_DATE = "26 Jul 2024"


def render(tokenizer: Any, messages: Sequence[Message], generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(
        as_dicts(messages),
        tokenize=False,
        add_generation_prompt=generation_prompt,
        date_string=TEMPLATE_DATE,
    )


@dataclass(frozen=True, slots=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]  # IGNORE where not trained
    line: int  # the row in the data file
    truncated: bool  # whole exchanges were dropped to fit sequence_len

    @property
    def trained(self) -> int:
        return sum(label != IGNORE for label in self.labels)


def encode(
    tokenizer: Any,
    messages: Sequence[Message],
    max_len: int | None = None,
    line: int = 0,
    source: str = "data",
) -> Encoded:
    """Token ids and labels: assistant replies and the end-of-turn token closing each are
    trained, everything else is not. Spans come from rendering message prefixes, so they hold
    for any template; exchanges that do not fit `max_len` are dropped whole."""
    eot = tokenizer.convert_tokens_to_ids(family_of(tokenizer).end_of_turn)
    full = render(tokenizer, messages)
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = enc["input_ids"]
    offsets: list[tuple[int, int]] = enc["offset_mapping"]
    labels = [IGNORE] * len(ids)
    ends: list[int] = []  # token index just past each assistant turn's end-of-turn token
    for i, m in enumerate(messages):
        if m.role != "assistant":
            continue
        start = _prefix_len(tokenizer, messages[:i], full, True, line, source)
        stop = _prefix_len(tokenizer, messages[: i + 1], full, False, line, source)
        span = [t for t, (a, _) in enumerate(offsets) if start <= a < stop]
        closing = [t for t in span if ids[t] == eot]
        if not closing:
            raise MeshtuneError(
                f"{source}:{line}: assistant turn {i + 1} has no end-of-turn token "
                f"{family_of(tokenizer).end_of_turn!r} in the chat template's output; "
                "use the model's own chat template"
            )
        for t in span:
            if t <= closing[-1]:
                labels[t] = ids[t]
        ends.append(closing[-1] + 1)
    truncated = False
    if max_len is not None and len(ids) > max_len:
        fitting = [e for e in ends if e <= max_len]
        if not fitting:
            raise MeshtuneError(
                f"{source}:{line}: the first exchange is {ends[0]} tokens, longer than "
                f"sequence_len {max_len}; raise sequence_len or shorten the conversation"
            )
        cut = fitting[-1]
        ids, labels, truncated = ids[:cut], labels[:cut], True
    if not any(label != IGNORE for label in labels):
        raise MeshtuneError(f"{source}:{line}: no trained token; the row needs an assistant reply")
    return Encoded(ids, labels, line, truncated)


def _prefix_len(
    tokenizer: Any,
    messages: Sequence[Message],
    full: str,
    generation_prompt: bool,
    line: int,
    source: str,
) -> int:
    prefix = render(tokenizer, messages, generation_prompt)
    if not full.startswith(prefix):
        raise MeshtuneError(
            f"{source}:{line}: the chat template renders this conversation differently turn by "
            "turn, so replies cannot be located; use a template that appends turns"
        )
    return len(prefix)
