"""The bot's message log and the `Context:` it builds from it: which earlier lines of a DM or
channel thread the model sees, and how each was logged."""

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from meshtune.errors import MeshtuneError
from meshtune.files import read_text
from meshtune.meshmaster.config import BotConfig

AI_COMMANDS = ("/ai", "/bot", "/data")  # on a channel, only these reach the model

# How the bot logs what it receives: a DM's words are never logged (privacy), and some commands
# are logged as markers. The Context the model sees is built from this log.
DM_PLACEHOLDER = "📨 dm received"
COMMAND_MARKERS = {
    "m": "✉️ mail sent",
    "mail": "✉️ mail sent",
    "c": "📬 mail checked",
    "check": "📬 mail checked",
    "checkmail": "📬 mail checked",
    "log": "📝 log created",
    "logs": "📋 logs viewed",
    "report": "📄 report filed",
    "find": "🔎 search performed",
}


@dataclass(frozen=True, slots=True)
class Line:
    """One earlier message of the DM or channel thread: who sent it (a shortname; ignored for
    the bot's own lines, whose name comes from the config), its words, and whether the bot
    (the AI) wrote it."""

    sender: str
    text: str
    ai: bool = False
    at: float | None = None  # when it was sent, in seconds (reference mode's timeout needs it)


def thread_context(
    history: Sequence[Line],
    message: str,
    sender: str,
    channel: bool,
    bot_name: str,
    config: BotConfig,
    limit: int | None = None,
) -> str:
    """The `Context:` text the bot sends when `sender` writes `message` after `history`, cut to
    its last `limit` characters (default: the config's ollama_context_chars)."""
    lines = [*_without_command_replies(history), Line(sender, message)]
    log = [_logged(line, channel) for line in lines]
    return _context(log, sender, channel, bot_name, config, limit or config.context_chars)


def is_command(text: str) -> bool:
    """Whether the bot's command handler answers `text` itself (its reply is not the model's)."""
    words = text.strip().split()
    return bool(words) and words[0].startswith("/") and words[0].lower() not in AI_COMMANDS


def _without_command_replies(history: Sequence[Line]) -> list[Line]:
    """The bot logs its reply to a command as an automated response, not an AI reply, so no
    thread picks it up (the golden reference-mode follow-ups show it)."""
    kept, last_human = [], None
    for line in history:
        if not line.ai:
            last_human = line
        elif last_human is not None and is_command(last_human.text):
            continue
        kept.append(line)
    return kept


@dataclass(frozen=True, slots=True)
class _Entry:
    sender: str  # shortname; "" for the bot's lines
    text: str  # as the bot logs it
    ai: bool


def _logged(line: Line, channel: bool) -> _Entry:
    return _Entry("" if line.ai else line.sender, _log_text(line.text, channel), line.ai)


def _log_text(text: str, channel: bool) -> str:
    if text.startswith("/"):
        words = text.split()
        return COMMAND_MARKERS.get(words[0][1:].lower(), text) if words else text
    return text if channel else DM_PLACEHOLDER


def _context(
    log: list[_Entry], sender: str, channel: bool, bot_name: str, config: BotConfig, limit: int
) -> str:
    picked = _dm_thread(log, sender) if not channel else _channel_thread(log, sender)
    lines = [f"{bot_name if e.ai else e.sender}: {e.text}" for e in picked[-config.max_messages :]]
    history = "\n".join(lines)
    if len(history) > limit:
        history = history[-limit:]
    return history.strip()


def _dm_thread(log: list[_Entry], sender: str) -> list[_Entry]:
    """The sender's DMs, and the bot's replies to them (each reply answers the message
    before it)."""
    picked, last_human = [], None
    for e in log:
        if e.ai:
            if last_human is not None and last_human.sender == sender:
                picked.append(e)
        else:
            last_human = e
            if e.sender == sender:
                picked.append(e)
    return picked


def _channel_thread(log: list[_Entry], sender: str) -> list[_Entry]:
    """The thread of the last message: its root (the message itself, or for a command the
    sender's latest earlier non-command message) and the bot's replies to that root."""
    roots: list[int | None] = []  # per entry: the root its reply (if any) belongs to
    for i, e in enumerate(log):
        roots.append(None if e.ai else _root(log, i))
    for i, e in enumerate(log):
        if e.ai:
            roots[i] = next((roots[j] for j in range(i - 1, -1, -1) if not log[j].ai), None)
    root = roots[-1]
    return [e for i, e in enumerate(log) if i == root or (e.ai and roots[i] == root)]


def _root(log: list[_Entry], i: int) -> int:
    e = log[i]
    if not e.text.strip().startswith("/"):
        return i
    for j in range(i - 1, -1, -1):
        m = log[j]
        if not m.ai and m.sender == e.sender and not m.text.strip().startswith("/"):
            return j
    return i


def load_history(path: Path) -> list[Line]:
    """Earlier messages, JSONL: {"from": "<shortname>", "text": "...", "ai": true|false}, with
    an optional "at" (seconds) where reference mode's timeout matters."""
    lines = []
    for n, raw_line in enumerate(read_text(path).splitlines(), start=1):
        if not raw_line.strip():
            continue
        try:
            row = json.loads(raw_line)
        except json.JSONDecodeError as e:
            raise MeshtuneError(f"{path}:{n}: invalid JSON ({e.msg}); fix the line") from e
        if not isinstance(row, dict):
            raise MeshtuneError(f"{path}:{n}: not a JSON object; write one message per line")
        ai = row.get("ai", False)
        sender, text = row.get("from"), row.get("text")
        if not isinstance(ai, bool):
            raise MeshtuneError(f"{path}:{n}: `ai` must be true or false")
        if not isinstance(text, str):
            raise MeshtuneError(f"{path}:{n}: `text` must be a string (the message's words)")
        if not ai and (not isinstance(sender, str) or not sender.strip()):
            raise MeshtuneError(f"{path}:{n}: `from` must be the sender's shortname")
        at = row.get("at")
        if at is not None and (isinstance(at, bool) or not isinstance(at, int | float)):
            raise MeshtuneError(f"{path}:{n}: `at` must be a time in seconds")
        unknown = set(row) - {"from", "text", "ai", "at"}
        if unknown:
            raise MeshtuneError(
                f"{path}:{n}: unknown key(s) {', '.join(sorted(unknown))}; use from, text, ai, at"
            )
        lines.append(Line(sender or "", text, ai, at))
    return lines
