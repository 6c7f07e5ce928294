"""Evaluation suites: JSONL files of prompts and the checks every reply must pass.

One JSON object per line (see DESIGN.md):
    {"id": "relay-01", "category": "relay", "prompt": "How do I relay to alice?",
     "expect_any": ["alice"], "expect_all": [], "forbid": ["/relay"], "max_chars": 200}
`prompt` may be replaced by `messages` (a chat so far, ending with the user's turn);
`"channel": true` marks a question asked on a channel rather than in a DM. Checks are
case-insensitive and never bare substrings: a plain check is a phrase matched as whole words
("hi" does not match "this", "/node" does not match "/nodes"), and a check starting with `re:`
is a regular expression searched in the reply (`re:favou?rite`). Optional `good` and `bad`
keys hold a correct reply and a plausible wrong one: the shipped suite's tests prove that
every item's checks accept the first and reject the second. Unknown keys are errors, so a typo
such as `forbidd` cannot silently pass.

Optional keys make an item check the answer rather than its vocabulary (and `forbid` also
holds the item's known false claims):
    "allow_commands": ["/optout"]  the commands a right answer may name ([] for none); any other
                                   command, real or not, fails the reply (unset: not checked)
    "stance": "yes" | "no"         a yes/no question: the reply must open with that answer
    "need": "..."                  the expected answer in words, for a reply that misses it

A knowledge item (a `/meshtastic QUESTION` prompt, or a follow-up in the reference mode it
starts: `messages` whose earlier user turn is `/meshtastic ...`) is answered from the excerpts
the bot's retrieval hands the model, so it is scored by what the model saw (delivery.py). Its
expect_all checks, and its expect_any group, are the *facts*: a reply row is `delivered` when
each of them is in an excerpt and still in what Ollama's cut at num_ctx leaves of the request.
Delivered, the item's checks apply and the refusal fails; not delivered, the only right reply
is the bot's refusal "I don't have enough MeshTastic data for that." (metrics.is_refusal).
An item whose answer is not in the knowledge file at all has no facts (expect_any and
expect_all empty): it is never delivered, so it expects the refusal, with `good` set to it.

Built-in suites: `quick` (the v2 guide's four test prompts, shipped in meshtune/assets),
`mesh` (the repository's data/eval/mesh_eval.jsonl) and `knowledge`
(data/eval/knowledge_eval.jsonl: `/meshtastic` items for `meshtune kb check`).
"""

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from meshtune import jsontext
from meshtune.errors import MeshtuneError
from meshtune.files import input_file, read_text
from meshtune.meshmaster import AI_COMMANDS, KNOWLEDGE_COMMAND

DEFAULT_MAX_CHARS = 200  # the guide's limit for one reply
REGEX_PREFIX = "re:"
REPO_ROOT = Path(__file__).resolve().parents[2]
BUILTIN = {
    "quick": "meshtune/assets/quick_eval.jsonl",
    "mesh": "data/eval/mesh_eval.jsonl",
    "knowledge": "data/eval/knowledge_eval.jsonl",  # /meshtastic items, for `kb check`
}


# The bot's request kinds: a DM, a channel's `/ai`, a `/meshtastic` question (answered from
# the knowledge file's excerpts) and a follow-up in the reference mode `/meshtastic` starts.
KINDS = ("dm", "channel", "/meshtastic", "follow-up")
KNOWLEDGE_KINDS = ("/meshtastic", "follow-up")  # answered from the knowledge file's excerpts
# Meshtastic (not bot) topics: a DM item of these whose right answer names no command is a
# technical question the model answers from memory, or points to /meshtastic for.
TECHNICAL = frozenset({"radio", "roles", "channels", "hardware", "troubleshooting"})


@cache
def check_pattern(check: str) -> re.Pattern[str]:
    """The pattern a check string stands for: `re:<regex>` as written, anything else as a
    phrase that must stand as whole words (no word character just before or after it)."""
    if check.startswith(REGEX_PREFIX):
        return re.compile(check.removeprefix(REGEX_PREFIX), re.IGNORECASE)
    return re.compile(rf"(?<!\w){re.escape(check)}(?!\w)", re.IGNORECASE)


def matches(check: str, text: str) -> bool:
    """Whether a reply satisfies one check string (see the module docstring)."""
    return check_pattern(check).search(text) is not None


class Turn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: str = Field(min_length=1)


class Item(BaseModel):
    """One suite line."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str = Field(min_length=1)
    category: str = "general"
    prompt: str | None = Field(default=None, min_length=1)
    messages: tuple[Turn, ...] | None = None
    expect_any: tuple[str, ...] = ()
    expect_all: tuple[str, ...] = ()
    forbid: tuple[str, ...] = ()
    max_chars: int = Field(default=DEFAULT_MAX_CHARS, gt=0)
    channel: bool = False  # asked on a channel (the bot's `/ai` request), not in a DM
    allow_commands: tuple[str, ...] | None = None  # canonical names; None: not checked
    stance: Literal["yes", "no"] | None = None  # the answer to a yes/no question
    need: str | None = Field(default=None, min_length=1)  # the expected answer, in words
    good: str | None = Field(default=None, min_length=1)  # a reply the checks must accept
    bad: str | None = Field(default=None, min_length=1)  # a plausible reply they must reject

    @model_validator(mode="before")
    @classmethod
    def _channel_question(cls, raw: Any) -> Any:
        """A channel item holds the question (it is sent as `/ai QUESTION`): `/ai hi` is
        stored as `hi`, since sending it as written would ask the model `/ai hi`."""
        if not isinstance(raw, dict) or raw.get("channel") is not True:
            return raw
        if isinstance(raw.get("prompt"), str):
            return {**raw, "prompt": _channel_question(raw["prompt"])}
        turns = raw.get("messages")
        if isinstance(turns, list) and turns and isinstance(turns[-1], dict):
            last = turns[-1]
            if isinstance(last.get("content"), str):
                last = {**last, "content": _channel_question(last["content"])}
                return {**raw, "messages": [*turns[:-1], last]}
        return raw

    @model_validator(mode="after")
    def _checks_compile(self) -> "Item":
        for check in (*self.expect_any, *self.expect_all, *self.forbid):
            if not check.strip() or check != check.strip():
                raise ValueError(
                    f"check {check!r} is empty or has spaces at its ends; whole words are "
                    "implied, so write the phrase alone"
                )
            try:
                check_pattern(check)
            except re.error as e:
                raise ValueError(f"check {check!r} is not a valid regular expression ({e})") from e
        for name in self.allow_commands or ():
            if not re.fullmatch(r"/[\w+]+", name):
                raise ValueError(f"allow_commands: {name!r} is not a command; write it as /name")
        return self

    @model_validator(mode="after")
    def _one_prompt(self) -> "Item":
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of `prompt` and `messages`")
        if self.messages is not None:
            if not self.messages or self.messages[-1].role != "user":
                raise ValueError("`messages` must end with a user turn")
            if any(m.role == "system" for m in self.messages[1:]):
                raise ValueError("a system turn may only come first in `messages`")
        return self

    @property
    def turns(self) -> list[Turn]:
        """The chat so far, ending with the user's question."""
        return list(self.messages) if self.messages else [Turn(role="user", content=self.prompt)]

    @property
    def question(self) -> str:
        return self.turns[-1].content

    @property
    def kind(self) -> str:
        """The bot's request kind (one of KINDS): `/meshtastic` when the question is one,
        `follow-up` when an earlier user turn started a `/meshtastic` session (no `/exit`
        since), else `channel` or `dm`."""
        if _first_word(self.question) == KNOWLEDGE_COMMAND:
            return "/meshtastic"
        session = False
        for turn in self.turns[:-1]:
            if turn.role == "user" and _first_word(turn.content) in (KNOWLEDGE_COMMAND, "/exit"):
                session = _first_word(turn.content) == KNOWLEDGE_COMMAND
        if session:
            return "follow-up"
        return "channel" if self.channel else "dm"

    @property
    def facts(self) -> list[tuple[str, ...]]:
        """What a right answer needs, each fact as its alternatives: every expect_all check
        is one, the expect_any checks together are one. A knowledge item without facts is one
        whose answer the knowledge file does not hold (see the module docstring)."""
        facts = [(check,) for check in self.expect_all]
        return [*facts, self.expect_any] if self.expect_any else facts

    @property
    def technical(self) -> bool:
        """A Meshtastic question asked in a DM whose right answer names no bot command:
        scored three ways (correct, a pointer to /meshtastic, wrong)."""
        return self.kind == "dm" and self.category in TECHNICAL and not self.allow_commands


def _first_word(text: str) -> str:
    words = text.strip().split()
    return words[0].lower() if words else ""


def _channel_question(text: str) -> str:
    words = text.split()
    command = words[0].lower() if words else ""
    if command not in AI_COMMANDS:
        return text
    if len(words) == 1:
        raise ValueError(
            f"'{text.strip()}' has no question: on a channel the bot answers it with help text, "
            "not the model; write the question alone (it is sent as /ai QUESTION)"
        )
    if command != "/ai":
        raise ValueError(
            f"'{command}': a channel item is sent as /ai QUESTION; write the question alone"
        )
    return text.strip()[len(command) :].strip()


@dataclass(frozen=True, slots=True)
class Suite:
    name: str  # the built-in name or the file's stem
    path: str
    items: list[Item]

    @property
    def categories(self) -> list[str]:
        return sorted({i.category for i in self.items})


def suite_path(name_or_path: str) -> tuple[str, Path]:
    """A built-in suite name or a file path -> (display name, path)."""
    if name_or_path in BUILTIN:
        rel = BUILTIN[name_or_path]
        if rel.startswith("meshtune/"):
            path = Path(str(resources.files("meshtune").joinpath(rel.removeprefix("meshtune/"))))
        else:
            path = REPO_ROOT / rel
        if not path.is_file():
            raise MeshtuneError(
                f"{path}: the built-in suite '{name_or_path}' is missing; run from a meshtune "
                "checkout or pass the suite file's path"
            )
        return name_or_path, path
    path = input_file(Path(name_or_path).expanduser(), "a suite JSONL file")
    if not path.is_file():
        names = ", ".join(BUILTIN)
        raise MeshtuneError(
            f"{name_or_path}: no such suite file and not a built-in suite ({names}); check the path"
        )
    return path.stem, path


def load_suite(name_or_path: str) -> Suite:
    """Read and validate a suite; the first bad line is a `file:line:` error."""
    name, path = suite_path(name_or_path)
    text = read_text(path)
    items: list[Item] = []
    seen: dict[str, int] = {}
    for lineno, line in jsontext.lines(text):
        if not line.strip():
            continue
        item = parse_item(line, f"{path}:{lineno}")
        if item.id in seen:
            raise MeshtuneError(
                f"{path}:{lineno}: id '{item.id}' already used on line {seen[item.id]}; "
                "give every item its own id"
            )
        seen[item.id] = lineno
        items.append(item)
    if not items:
        raise MeshtuneError(f"{path}: no items; add one JSON object per line")
    return Suite(name, str(path), items)


def parse_item(line: str, where: str) -> Item:
    raw = jsontext.load_object(line, where, "write one JSON object per line")
    try:
        return Item.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            known = ", ".join(Item.model_fields)
            raise MeshtuneError(f"{where}: unknown key '{field}'; the keys are {known}") from e
        what = f"'{field}': {err['msg']}" if field else err["msg"].removeprefix("Value error, ")
        raise MeshtuneError(f"{where}: {what}; see the suite format in DESIGN.md") from e
