"""The request the bot posts to Ollama's /api/generate for one incoming message: one prompt
string, rendered by Ollama as the user turn:

    <system block>            config system_prompt, the frustration paragraph, persona line and
                              the persona's prompt, joined by blank lines (Unicode kept)
    Context:                  the bot's message log for this DM or channel thread: a DM is
    <shortname>: <logged>     logged as "📨 dm received", never its words
    Question: <message>       transliterated to ASCII, as the bot's unidecode does
    Answer:
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from text_unidecode import unidecode

from meshtune.errors import MeshtuneError
from meshtune.meshmaster.config import SHIPPED, BotConfig
from meshtune.meshmaster.history import Line, thread_context

AI_COMMANDS = ("/ai", "/bot", "/data")  # on a channel, only these reach the model


@dataclass(frozen=True, slots=True)
class Request:
    """What the bot posts to Ollama's /api/generate for one incoming message."""

    prompt: str
    question: str
    options: dict[str, Any] = field(default_factory=dict)

    def body(self, model: str) -> dict[str, Any]:
        return {"model": model, "prompt": self.prompt, "stream": True, "options": self.options}


def build_request(
    message: str,
    config: BotConfig = SHIPPED,
    *,
    persona: str | None = None,
    history: Sequence[Line] = (),
    sender: str = "K7QX",
    bot: str | None = None,
    channel: bool = False,
) -> Request:
    """The request the bot sends when `sender` writes `message` (a DM, or on a channel an
    `/ai`, `/bot` or `/data` command) after the earlier messages `history` of that DM or
    channel. The bot's per-sender state (web findings, prompt overrides, pending-answer
    redaction) is not modelled."""
    question = _question(message, channel)
    context = thread_context(history, message, sender, channel, config.bot_name(bot), config)
    sections = [config.system_block(config.persona(persona))]
    if context:
        sections.append(f"Context:\n{context}")
    sections.append(f"Question: {unidecode(question)}")
    prompt = "\n\n".join(s.strip() for s in sections if s.strip()) + "\nAnswer:"
    return Request(prompt, question, config.options())


def build_prompt(message: str, config: BotConfig = SHIPPED, **kwargs: Any) -> str:
    """The prompt string alone (see build_request)."""
    return build_request(message, config, **kwargs).prompt


def chat_prompt(
    turns: Sequence[tuple[str, str]],
    config: BotConfig = SHIPPED,
    *,
    persona: str | None = None,
    sender: str = "K7QX",
    channel: bool = False,
) -> str:
    """A chat (`(role, text)` user/assistant turns ending with the user's) as the bot sends its
    last message: the earlier turns are the DM's or channel thread's log, and on a channel the
    last message is an `/ai` command. In a DM the earlier words are gone, as on the radio."""
    *earlier, (role, last) = turns
    if role != "user":
        raise MeshtuneError("a chat sent as Mesh Master must end with the user's turn")
    history = [Line(sender, text, ai=r == "assistant") for r, text in earlier]
    message = f"/ai {last}" if channel else last
    return build_prompt(
        message, config, persona=persona, history=history, sender=sender, channel=channel
    )


def reaches_model(message: str) -> bool:
    """Whether a DM with this text is sent to the model (a slash command is run instead)."""
    return bool(message.strip()) and not message.strip().startswith("/")


def _question(message: str, channel: bool) -> str:
    text = message.strip()
    if not text:
        raise MeshtuneError("the message is empty; the bot sends nothing to the model")
    first = text.split()[0].lower()
    if first in AI_COMMANDS:
        question = text[len(first) :].strip()
        if question:
            return question
        if channel:
            raise MeshtuneError(
                f"'{text}' has no question: on a channel the bot answers it with help text, "
                "not the model; write a question after it"
            )
        return first[1:]  # a bare /ai in a DM is asked as the word "ai"
    if channel:
        raise MeshtuneError(
            f"'{text}': on a channel only /ai, /bot or /data reach the model; start the "
            "message with /ai"
        )
    if not reaches_model(text):
        raise MeshtuneError(
            f"'{text}' is a command: in a DM the bot runs it instead of asking the model; "
            "send a question"
        )
    return message


def question_of(prompt: str) -> str:
    """The user's own message inside a Mesh Master prompt, or the prompt itself."""
    _, sep, tail = prompt.rpartition("Question: ")
    if not sep or not tail.endswith("\nAnswer:"):
        return prompt
    return tail.removesuffix("\nAnswer:")
