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
from meshtune.meshmaster.history import AI_COMMANDS, Line, thread_context
from meshtune.meshmaster.knowledge import (
    CITE_INSTRUCTIONS,
    KNOWLEDGE_SYSTEM_PROMPT,
    NO_MATCH_REPLY,
    Knowledge,
    excerpts,
)

KNOWLEDGE_COMMAND = "/meshtastic"


@dataclass(frozen=True, slots=True)
class Request:
    """What the bot posts to Ollama's /api/generate for one incoming message; `reply` is set
    instead when the bot answers by itself (a `/meshtastic` question nothing matches)."""

    prompt: str
    question: str
    options: dict[str, Any] = field(default_factory=dict)
    reply: str | None = None

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
    knowledge: Knowledge | None = None,
    now: float | None = None,
) -> Request:
    """The request the bot sends when `sender` writes `message` (a DM, on a channel an `/ai`,
    `/bot` or `/data` command, or `/meshtastic QUESTION` on either) after the earlier messages
    `history` of that DM or channel, at time `now` (seconds; only reference mode's timeout
    reads it). `knowledge` is the bot's knowledge file, needed by `/meshtastic` and by
    reference mode. The bot's other per-sender state (web findings, prompt overrides,
    pending-answer redaction, the knowledge warm cache) is not modelled."""
    if _first_word(message) == KNOWLEDGE_COMMAND:
        return _knowledge_request(message, config, _needed(knowledge))
    question = _question(message, channel)
    bot_name = config.bot_name(bot)
    block = _session_excerpts(history, sender, channel, config, knowledge, now)
    if block is None:
        system = config.system_block(config.persona(persona))
        context = thread_context(history, message, sender, channel, bot_name, config)
    else:  # reference mode: the excerpts first, the history in what room they leave
        system = KNOWLEDGE_SYSTEM_PROMPT
        room = max(500, config.context_chars // 3, config.context_chars - len(block))
        thread = thread_context(history, message, sender, channel, bot_name, config, room)
        context = "\n\n".join(part for part in (block, thread) if part)
    return Request(_prompt(system, context, question), question, config.options())


def uses_knowledge(
    message: str,
    history: Sequence[Line] = (),
    sender: str = "K7QX",
    channel: bool = False,
    config: BotConfig = SHIPPED,
    now: float | None = None,
) -> bool:
    """Whether the bot's request for `message` is built from its knowledge file."""
    return _first_word(message) == KNOWLEDGE_COMMAND or (
        reference_query(history, sender, channel, config, now) is not None
    )


def reference_query(
    history: Sequence[Line],
    sender: str,
    channel: bool,
    config: BotConfig = SHIPPED,
    now: float | None = None,
) -> str | None:
    """The question of the `/meshtastic` session `sender` is in after `history`, or None: the
    sender's last `/meshtastic QUESTION` starts one, `/exit` in a DM ends it, and so does the
    config's session timeout (when `now` and the line's time are known)."""
    query, started = None, None
    for line in history:
        if line.ai or line.sender != sender:
            continue
        word = _first_word(line.text)
        if word == KNOWLEDGE_COMMAND and _knowledge_query(line.text):
            query, started = _knowledge_query(line.text), line.at
        elif word == "/exit" and not channel:  # on a channel the bot refuses /exit
            query = None
    expired = now is not None and started is not None and now > started + config.session_seconds
    return None if expired else query


def _knowledge_request(message: str, config: BotConfig, knowledge: Knowledge) -> Request:
    query = _knowledge_query(message)
    if not query:
        raise MeshtuneError(
            f"'{message.strip()}' has no question: the bot answers it with usage help, not the "
            "model; write a question after /meshtastic"
        )
    chunks = knowledge.search(query, config.kb_max_chars)
    if not chunks:
        return Request("", query, {}, reply=NO_MATCH_REPLY)
    block = excerpts(chunks)
    payload = f"{block}\n\nQuestion: {query}\n{CITE_INSTRUCTIONS}"
    return Request(_prompt(KNOWLEDGE_SYSTEM_PROMPT, block, payload), query, config.options())


def _session_excerpts(
    history: Sequence[Line],
    sender: str,
    channel: bool,
    config: BotConfig,
    knowledge: Knowledge | None,
    now: float | None,
) -> str | None:
    query = reference_query(history, sender, channel, config, now)
    if query is None:
        return None
    chunks = _needed(knowledge).search(query, config.kb_max_chars)
    return excerpts(chunks) if chunks else None  # no match: the bot started no session


def _prompt(system: str, context: str, question: str) -> str:
    """The bot's prompt string: system, Context and the transliterated question."""
    sections = [system]
    if context:
        sections.append(f"Context:\n{context}")
    sections.append(f"Question: {unidecode(question)}")
    return "\n\n".join(s.strip() for s in sections if s.strip()) + "\nAnswer:"


def _needed(knowledge: Knowledge | None) -> Knowledge:
    if knowledge is None:
        raise MeshtuneError(
            "this message is answered from the bot's Meshtastic knowledge file (/meshtastic or "
            "reference mode); give the file with --knowledge FILE"
        )
    return knowledge


def _first_word(text: str) -> str:
    words = text.strip().split()
    return words[0].lower() if words else ""


def _knowledge_query(text: str) -> str:
    return text.strip()[len(KNOWLEDGE_COMMAND) :].strip()


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
    knowledge: Knowledge | None = None,
) -> str:
    """A chat (`(role, text)` user/assistant turns ending with the user's) as the bot sends its
    last message: the earlier turns are the DM's or channel thread's log, and on a channel the
    last message is an `/ai` command unless it is `/meshtastic QUESTION`. In a DM the earlier
    words are gone, as on the radio. `knowledge` answers `/meshtastic` and reference mode; ""
    when its retrieval finds nothing (the bot then answers without the model)."""
    *earlier, (role, last) = turns
    if role != "user":
        raise MeshtuneError("a chat sent as Mesh Master must end with the user's turn")
    history = [Line(sender, text, ai=r == "assistant") for r, text in earlier]
    ask_ai = channel and _first_word(last) != KNOWLEDGE_COMMAND
    message = f"/ai {last}" if ask_ai else last
    return build_prompt(
        message,
        config,
        persona=persona,
        history=history,
        sender=sender,
        channel=channel,
        knowledge=knowledge,
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
