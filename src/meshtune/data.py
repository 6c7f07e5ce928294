"""Chat datasets: read ShareGPT / OpenAI-messages JSONL into Conversations, validate every row,
lint against the v2 guide's rules, describe, split and convert.

Every problem is an Issue printed as `file:line: CODE what is wrong; how to fix`. Codes are
stable: E1xx are errors (the row cannot be used), W2xx are warnings (the row trains, but the
guide says it teaches the wrong thing).
"""

import json
import random
import re
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from meshtune import jsontext
from meshtune.commands import Registry, load_registry
from meshtune.errors import Issue, MeshtuneError, register_codes
from meshtune.files import atomic_files, input_file
from meshtune.jsontext import type_name
from meshtune.meshmaster import CHUNK_BYTES, question_of, split_chunks

MAX_LINE_BYTES = 1_000_000

# code -> (name, severity) of the findings this module reports
CODES: dict[str, tuple[str, str]] = {
    "E101": ("invalid-json", "error"),
    "E102": ("not-an-object", "error"),
    "E103": ("no-turns", "error"),
    "E104": ("unknown-role", "error"),
    "E105": ("bad-content", "error"),
    "E106": ("system-not-first", "error"),
    "E107": ("repeated-role", "error"),
    "E108": ("no-assistant-turn", "error"),
    "E109": ("last-turn-not-assistant", "error"),
    "E110": ("invalid-utf8", "error"),
    "E111": ("line-too-long", "error"),
    "E112": ("bad-turn", "error"),
    "E113": ("reply-far-too-long", "error"),
    "W201": ("reply-too-long", "warning"),
    "W202": ("reply-over-one-chunk", "warning"),
    "W203": ("duplicate-row", "warning"),
    "W204": ("conflicting-replies", "warning"),
    "W205": ("near-duplicate-prompt", "warning"),
    "W206": ("canned-reply", "warning"),
    "W207": ("repeated-opening", "warning"),
    "W208": ("command-dump", "warning"),
    "W209": ("unknown-command", "warning"),
    "W210": ("dataset-size", "warning"),
    "W211": ("command-without-subcommand", "warning"),
    "W212": ("dm-only-command-on-channel", "warning"),
    "W213": ("alias-not-canonical", "warning"),
    "W214": ("rarely-taught-command", "warning"),
}
MISUSE_CODES = {"subcommand": "W211", "dm-only": "W212", "alias": "W213"}
COMMAND_MENTIONS_MIN = 15
COUNTER_CATEGORY = "counter"  # rows that ask for a command or ability the bot lacks
register_codes(CODES)

Role = Literal["system", "user", "assistant"]
DEFAULT_ROLE_NAMES: dict[str, Role] = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
}


@dataclass(frozen=True, slots=True)
class Message:
    role: Role
    content: str


@dataclass(slots=True)
class Conversation:
    messages: tuple[Message, ...]
    line: int = 0
    meta: dict[str, Any] = field(default_factory=dict)  # other row keys, e.g. category
    raw: str = ""  # the row as read, so split writes it back unchanged

    @property
    def prompt(self) -> tuple[Message, ...]:
        return self.messages[:-1]

    @property
    def reply(self) -> str:
        return self.messages[-1].content

    @property
    def replies(self) -> list[str]:
        return [m.content for m in self.messages if m.role == "assistant"]

    @property
    def category(self) -> str:
        return str(self.meta.get("category", ""))

    @property
    def channel(self) -> bool:
        """The row's `"channel": true`: the exchange happens on a channel, not in a DM."""
        return self.meta.get("channel") is True


class DatasetSpec(BaseModel):
    """One entry of an Axolotl recipe's `datasets:` list (the keys meshtune reads)."""

    model_config = ConfigDict(extra="forbid")
    path: str
    type: Literal["sharegpt", "chat_template"] | None = None
    field_messages: str | None = None
    conversation: str | None = None  # Axolotl's template name for sharegpt; the recipe decides
    message_property_mappings: dict[str, str] | None = None
    message_field_role: str | None = None
    message_field_content: str | None = None
    roles: dict[str, list[str]] | None = None
    # Axolotl's subset: split the rows into `shards` contiguous parts (as Hugging Face
    # datasets' `shard` does) and train on part `shards_idx`.
    shards: int | None = Field(None, ge=1)
    shards_idx: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _shard_exists(self) -> "DatasetSpec":
        if self.shards is not None and self.shards_idx >= self.shards:
            raise ValueError(
                f"shards_idx {self.shards_idx} is not one of the {self.shards} shards "
                f"(0 to {self.shards - 1})"
            )
        return self

    def shard(self, rows: list[Any]) -> list[Any]:
        """This entry's part of `rows`: all of them without `shards`."""
        if self.shards is None:
            return rows
        size, extra = divmod(len(rows), self.shards)
        start = size * self.shards_idx + min(self.shards_idx, extra)
        return rows[start : start + size + (self.shards_idx < extra)]

    def keys(self) -> tuple[str | None, str, str]:
        """The turn-list key (None: detect per row), and the role and content keys."""
        mapping = self.message_property_mappings or {}
        if self.type == "sharegpt":
            role = self.message_field_role or mapping.get("role", "from")
            content = self.message_field_content or mapping.get("content", "value")
            return self.field_messages or "conversations", role, content
        if self.type == "chat_template":
            role = self.message_field_role or mapping.get("role", "role")
            content = self.message_field_content or mapping.get("content", "content")
            return self.field_messages or "messages", role, content
        return self.field_messages, "", ""

    def role_names(self) -> dict[str, Role]:
        if not self.roles:
            return DEFAULT_ROLE_NAMES
        names: dict[str, Role] = {}
        for role, aliases in self.roles.items():
            if role in ("system", "user", "assistant"):
                for alias in aliases:
                    names[alias] = role  # type: ignore[assignment]
        return names


@dataclass(slots=True)
class Dataset:
    path: str
    conversations: list[Conversation]
    issues: list[Issue]  # validation errors; rows with errors are not in `conversations`
    rows: int  # non-blank lines

    @property
    def ok(self) -> bool:
        return not any(i.severity == "error" for i in self.issues)


# ---------------------------------------------------------------- reading and validation


def read_dataset(path: str | Path, spec: DatasetSpec | None = None) -> Dataset:
    """Read a JSONL chat file. Every bad row becomes an Issue; good rows become Conversations."""
    path = Path(path)
    input_file(path, "a .jsonl file")
    try:
        data = path.read_bytes()
    except FileNotFoundError as e:
        raise MeshtuneError(f"{path}: no such file; check the path") from e
    except OSError as e:
        raise MeshtuneError(f"{path}: cannot read ({e.strerror}); check permissions") from e
    _refuse_json_document(data, path)
    spec = spec or DatasetSpec(path=str(path))
    name = str(path)
    conversations: list[Conversation] = []
    issues: list[Issue] = []
    rows = 0
    for lineno, raw in _lines(data):
        if len(raw) > MAX_LINE_BYTES:
            rows += 1
            issues.append(
                Issue(
                    "E111",
                    name,
                    lineno,
                    f"line is {len(raw):,} bytes, over the 1 MB limit",
                    "split this conversation or drop it",
                )
            )
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            rows += 1
            issues.append(
                Issue(
                    "E110",
                    name,
                    lineno,
                    f"invalid UTF-8 at byte {e.start}",
                    "re-save the file as UTF-8",
                )
            )
            continue
        if not text.strip():
            continue
        rows += 1
        conv, row_issues = parse_row(text, spec, name, lineno)
        issues.extend(row_issues)
        if conv is not None:
            conversations.append(conv)
    return Dataset(name, conversations, issues, rows)


def _refuse_json_document(data: bytes, path: Path) -> None:
    """A whole file that is one JSON array (or one pretty-printed object) is not JSONL: one
    error for the file, not one per line."""
    head = data.removeprefix(b"\xef\xbb\xbf").lstrip()
    if not head.startswith((b"[", b"{")) or b"\n" not in head.strip():
        return
    try:
        doc = jsontext.loads(head.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return  # JSONL (or damaged lines): read line by line
    what = f"one JSON array of {len(doc)} items" if isinstance(doc, list) else "one JSON object"
    raise MeshtuneError(
        f"{path}: the file is {what}, not JSONL (one JSON object per line); convert it, "
        f"e.g. jq -c '.[]' {path.name} > {path.stem}.jsonl"
    )


def _lines(data: bytes) -> Iterator[tuple[int, bytes]]:
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    for i, raw in enumerate(data.split(b"\n"), start=1):
        yield i, raw.removesuffix(b"\r")


def parse_row(
    text: str, spec: DatasetSpec, path: str, line: int
) -> tuple[Conversation | None, list[Issue]]:
    """One JSONL row -> a Conversation, or None and the reasons it cannot be used."""

    def issue(code: str, message: str, fix: str) -> Issue:
        return Issue(code, path, line, message, fix)

    try:
        row = jsontext.loads(text)
    except json.JSONDecodeError as e:
        return None, [
            issue(
                "E101",
                f"invalid JSON ({e.msg} at column {e.colno})",
                "fix the JSON syntax; each line must be one JSON object",
            )
        ]
    if not isinstance(row, dict):
        return None, [
            issue(
                "E102",
                f"row is a JSON {type_name(row)}, not an object",
                'wrap it as {"conversations": [...]} or {"messages": [...]}',
            )
        ]
    found = _turn_list(row, spec, issue)
    if isinstance(found, Issue):
        return None, [found]
    key, role_key, content_key, turns = found
    messages, issues = _messages(turns, role_key, content_key, spec.role_names(), issue)
    if issues:
        return None, issues
    issues = _check_order(messages, issue)
    if issues:
        return None, issues
    meta = {k: v for k, v in row.items() if k != key}
    return Conversation(tuple(messages), line, meta, text), []


def _turn_list(
    row: dict[str, Any], spec: DatasetSpec, issue: Any
) -> tuple[str, str, str, list[Any]] | Issue:
    """(turn list key, role key, content key, turns) of a row in the spec's format (or, with
    none given, the row's own), else the one issue that stops it."""
    key, role_key, content_key = spec.keys()
    if key is None:  # detect the format per row
        if "conversations" in row:
            key, role_key, content_key = "conversations", "from", "value"
        elif "messages" in row:
            key, role_key, content_key = "messages", "role", "content"
        else:
            return issue(
                "E103",
                'no "conversations" or "messages" list',
                "add the turn list (ShareGPT: conversations, OpenAI: messages)",
            )
    turns = row.get(key)
    if not isinstance(turns, list) or not turns:
        what = "missing" if key not in row else ("empty" if turns == [] else "not a list")
        return issue(
            "E103",
            f'"{key}" is {what}',
            f'give "{key}" a list of turns ending with the assistant reply',
        )
    return key, role_key, content_key, turns


def _messages(
    turns: list[Any], role_key: str, content_key: str, role_names: dict[str, Role], issue: Any
) -> tuple[list[Message], list[Issue]]:
    """The turns as messages, and an issue for each turn that is not one."""
    issues: list[Issue] = []
    messages: list[Message] = []
    for n, turn in enumerate(turns, start=1):
        if not isinstance(turn, dict) or role_key not in turn or content_key not in turn:
            issues.append(
                issue(
                    "E112",
                    f'turn {n} is not an object with "{role_key}" and "{content_key}"',
                    f'write each turn as {{"{role_key}": ..., "{content_key}": ...}}',
                )
            )
            continue
        role = role_names.get(turn[role_key]) if isinstance(turn[role_key], str) else None
        if role is None:
            known = ", ".join(sorted(role_names))
            issues.append(
                issue(
                    "E104", f"turn {n} has unknown role {turn[role_key]!r}", f"use one of: {known}"
                )
            )
            continue
        content = turn[content_key]
        if not isinstance(content, str):
            issues.append(
                issue(
                    "E105",
                    f'turn {n} ({role}) "{content_key}" is a {type_name(content)}, not a string',
                    "make the content a string",
                )
            )
        elif not content.strip():
            issues.append(
                issue(
                    "E105",
                    f"turn {n} ({role}) is empty",
                    "write the turn's text or remove the turn",
                )
            )
        else:
            messages.append(Message(role, content))
    return messages, issues


def _check_order(messages: Sequence[Message], issue: Any) -> list[Issue]:
    issues = []
    for n, m in enumerate(messages, start=1):
        if m.role == "system" and n != 1:
            issues.append(
                issue("E106", f"system turn at position {n}", "move the system turn first")
            )
    dialog = [m.role for m in messages if m.role != "system"]
    for n in range(1, len(dialog)):
        if dialog[n] == dialog[n - 1]:
            issues.append(
                issue(
                    "E107",
                    f"two {dialog[n]} turns in a row",
                    "merge them or add the missing turn between them",
                )
            )
            break
    if "assistant" not in dialog:
        issues.append(issue("E108", "no assistant turn", "add the reply the model should learn"))
    elif dialog[-1] != "assistant":
        issues.append(
            issue(
                "E109",
                f"last turn is {dialog[-1]}, not assistant",
                "end the conversation with the assistant reply",
            )
        )
    elif dialog[0] != "user":
        issues.append(
            issue(
                "E107",
                "conversation starts with the assistant",
                "start with a user turn (after an optional system turn)",
            )
        )
    return issues


# ---------------------------------------------------------------- lint: the guide's rules


@dataclass(frozen=True, slots=True)
class LintLimits:
    reply_chars: int = 200  # the guide: "under 200 chars ideal"
    reply_chars_error: int = 300  # the guide's red flag: "longer than 300 chars"
    chunk_bytes: int = CHUNK_BYTES  # Mesh Master's shipped chunk_size
    canned_prompts: int = 3  # one reply to this many different prompts is canned
    opening_words: int = 3
    opening_share: float = 0.03  # an opening used by more than 3% of replies...
    opening_count: int = 10  # ...and more than 10 times
    size_min: int = 500  # the guide's recommended dataset size
    size_max: int = 2000
    # A command named in a few replies is learned as a frame ("Send /x"), not as a fact:
    # name it in at least this many replies, or in none. Checked from size_min rows up.
    command_mentions: int = COMMAND_MENTIONS_MIN


_NON_WORD = re.compile(r"[^\w\s]+")


def normalize(text: str) -> str:
    """Lowercase words only: near-duplicates differ only in case, punctuation and spacing."""
    return " ".join(_NON_WORD.sub(" ", text.lower()).split())


# How close two user turns are: their content words (lowercase letters, digits and `/`, apostrophes
# dropped so "what's" is "whats") minus STOPWORDS, compared by Jaccard index (shared words / all
# words of either). An eval prompt must stay below MAX_OVERLAP against every training prompt, or
# the suite measures recall of the training set rather than what the model learned.
STOPWORDS = frozenset(
    "a an the and or but if of to in on at for with by from is are was were be been am do does "
    "did i you he she it we they me my your our their this that these those what whats how why "
    "when where who which can could would should will shall may might must have has had not no "
    "yes so just about there here get got any some more very too up out as into than then".split()
)
MAX_OVERLAP = 0.5
_TOKEN = re.compile(r"[a-z0-9/]+")


def content_words(text: str) -> frozenset[str]:
    text = text.lower().replace("'", "").replace("\u2019", "")
    return frozenset(w for w in _TOKEN.findall(text) if w not in STOPWORDS)


def overlap(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / len(a | b) if a | b else 0.0


def far_from(question: str, evals: Iterable[frozenset[str]]) -> bool:
    """Whether `question` stays below MAX_OVERLAP against every eval prompt's content words."""
    words = content_words(question)
    return all(overlap(words, e) < MAX_OVERLAP for e in evals)


def canned_replies(answers: Iterable[tuple[str, str]], min_keys: int) -> set[str]:
    """The normalized replies given to `min_keys` or more different keys (prompts, suite
    items): `answers` are (reply, key) pairs; an empty reply is never canned."""
    keys_by_reply: dict[str, set[str]] = defaultdict(set)
    for reply, key in answers:
        keys_by_reply[normalize(reply)].add(key)
    return {r for r, keys in keys_by_reply.items() if r and len(keys) >= min_keys}


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100); 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))])


def prompt_key(conv: Conversation) -> str:
    """What the user asked, normalized; a Mesh Master prompt counts by its question."""
    return " | ".join(normalize(question_of(m.content)) for m in conv.prompt if m.role == "user")


def opening(reply: str, words: int = 3) -> str:
    return " ".join(normalize(reply).split()[:words])


def lint(
    dataset: Dataset, registry: Registry | None = None, limits: LintLimits = LintLimits()
) -> list[Issue]:
    registry = registry or load_registry()
    path, convs = dataset.path, dataset.conversations
    issues: list[Issue] = []
    for conv in convs:
        issues.extend(_lint_replies(conv, path, registry, limits))
    issues.extend(_lint_duplicates(convs, path))
    issues.extend(_lint_canned(convs, path, limits))
    n = dataset.rows
    if n >= limits.size_min:
        issues.extend(_lint_rare_commands(convs, path, registry, limits))
    if not limits.size_min <= n <= limits.size_max:
        issues.append(
            Issue(
                "W210",
                path,
                None,
                f"{n:,} conversations, outside the guide's {limits.size_min:,}-{limits.size_max:,}",
                "add varied conversations"
                if n < limits.size_min
                else "keep the best and most varied conversations",
            )
        )
    return sorted(issues, key=_by_line)


def _by_line(issue: Issue) -> tuple[bool, int, str]:
    """Row issues in file order, then issues about the whole file."""
    return issue.line is None, issue.line or 0, issue.code


def _lint_replies(
    conv: Conversation, path: str, registry: Registry, limits: LintLimits
) -> Iterator[Issue]:
    for n, reply in enumerate(conv.replies, start=1):
        which = f"reply {n}" if len(conv.replies) > 1 else "reply"
        chars = len(reply)
        if chars > limits.reply_chars_error:
            yield Issue(
                "E113",
                path,
                conv.line,
                f"{which} is {chars} characters (over {limits.reply_chars_error})",
                f"shorten it to under {limits.reply_chars}",
            )
        elif chars > limits.reply_chars:
            yield Issue(
                "W201",
                path,
                conv.line,
                f"{which} is {chars} characters (over {limits.reply_chars})",
                f"shorten it to under {limits.reply_chars}",
            )
        size = len(reply.encode())
        if size > limits.chunk_bytes:
            chunks = len(split_chunks(reply, limits.chunk_bytes))
            yield Issue(
                "W202",
                path,
                conv.line,
                f"{which} is {size} bytes: {chunks} radio chunks of {limits.chunk_bytes}",
                f"fit it in {limits.chunk_bytes} UTF-8 bytes (one packet)",
            )
        if registry.is_command_dump(reply):
            yield Issue(
                "W208",
                path,
                conv.line,
                f"{which} is a list of commands, not an explanation",
                "explain one command conversationally",
            )
        for mention in dict.fromkeys(registry.unknown(reply)):
            why = "listed as not working in" if mention.nonexistent else "not a command of"
            spec = registry.nonexistent.get(mention.written)
            instead = (
                spec.instead
                if spec and spec.instead
                else "use a real command or explain without one"
            )
            yield Issue(
                "W209",
                path,
                conv.line,
                f"{which} mentions {mention.written}, {why} {registry.bot}",
                instead,
            )
        for misuse in dict.fromkeys(registry.misuses(reply, conv.channel)):
            what = {
                "subcommand": f"{misuse.written} without its subcommand",
                "dm-only": f"{misuse.written} on a channel row; it works only in a DM",
                "alias": f"the alias {misuse.written} instead of {misuse.canonical}",
            }[misuse.kind]
            yield Issue(
                MISUSE_CODES[misuse.kind], path, conv.line, f"{which} uses {what}", misuse.hint
            )


def _lint_rare_commands(
    convs: Sequence[Conversation], path: str, registry: Registry, limits: LintLimits
) -> Iterator[Issue]:
    counts, first_line = command_counts(convs, registry)
    for name, count in counts.items():
        if count < limits.command_mentions:
            yield Issue(
                "W214",
                path,
                first_line[name],
                f"{name} is named in {count} replies (fewer than {limits.command_mentions})",
                f"teach it in {limits.command_mentions}+ varied replies or name it in none",
            )


def command_counts(
    convs: Sequence[Conversation], registry: Registry
) -> tuple[Counter[str], dict[str, int]]:
    """How many replies name each real command (by its canonical name), and the first line."""
    counts: Counter[str] = Counter()
    first_line: dict[str, int] = {}
    for conv in convs:
        for reply in conv.replies:
            for name in {m.canonical for m in registry.mentions(reply) if m.canonical}:
                counts[name] += 1
                first_line.setdefault(name, conv.line)
    return counts, first_line


def _lint_duplicates(convs: Sequence[Conversation], path: str) -> Iterator[Issue]:
    first_row: dict[tuple[Message, ...], int] = {}
    first_prompt: dict[tuple[Message, ...], Conversation] = {}
    first_key: dict[str, Conversation] = {}
    for conv in convs:
        if conv.messages in first_row:
            yield Issue(
                "W203",
                path,
                conv.line,
                f"exact duplicate of line {first_row[conv.messages]}",
                "delete the repeated row",
            )
            continue
        first_row[conv.messages] = conv.line
        earlier = first_prompt.setdefault(conv.prompt, conv)
        if earlier is not conv:
            yield Issue(
                "W204",
                path,
                conv.line,
                f"same prompt as line {earlier.line} with a different reply",
                "keep the one correct reply",
            )
            continue
        key = prompt_key(conv)
        earlier = first_key.setdefault(key, conv)
        if earlier is not conv:
            yield Issue(
                "W205",
                path,
                conv.line,
                f"prompt is a near-duplicate of line {earlier.line} (same words: {key[:60]!r})",
                "rephrase it into a different question or delete it",
            )


def _lint_canned(convs: Sequence[Conversation], path: str, limits: LintLimits) -> Iterator[Issue]:
    answers = [(reply, prompt_key(conv)) for conv in convs for reply in conv.replies]
    canned = canned_replies(answers, limits.canned_prompts)
    lines_by_reply: dict[str, list[int]] = defaultdict(list)
    prompts_by_reply: dict[str, set[str]] = defaultdict(set)
    openings: Counter[str] = Counter()
    first_opening_line: dict[str, int] = {}
    for conv in convs:
        for reply in conv.replies:
            norm = normalize(reply)
            lines_by_reply[norm].append(conv.line)
            prompts_by_reply[norm].add(prompt_key(conv))
            op = " ".join(norm.split()[: limits.opening_words])
            openings[op] += 1
            first_opening_line.setdefault(op, conv.line)
    for norm, lines in lines_by_reply.items():
        if norm in canned:
            yield Issue(
                "W206",
                path,
                lines[0],
                f"the same reply answers {len(prompts_by_reply[norm])} different prompts "
                f"(lines {_few(lines)})",
                "write a reply that fits each question",
            )
    total = len(answers)
    cap = max(limits.opening_count, limits.opening_share * total)
    for op, count in openings.items():
        if op and count > cap:
            yield Issue(
                "W207",
                path,
                first_opening_line[op],
                f"{count} replies ({count / total:.0%}) open with {op!r}",
                "vary how replies start",
            )


def _few(lines: Sequence[int], n: int = 5) -> str:
    head = ", ".join(map(str, lines[:n]))
    return head + (f" and {len(lines) - n} more" if len(lines) > n else "")


def check(
    path: str | Path, registry: Registry | None = None, spec: DatasetSpec | None = None
) -> tuple[Dataset, list[Issue]]:
    """Validate and lint a file: the dataset and every issue, errors first by line."""
    dataset = read_dataset(path, spec)
    issues = dataset.issues + lint(dataset, registry)
    return dataset, sorted(issues, key=_by_line)


def load_conversations(path: str | Path, spec: DatasetSpec | None = None) -> list[Conversation]:
    """The conversations of a file that has no errors; the first error otherwise."""
    dataset = read_dataset(path, spec)
    errors = [i for i in dataset.issues if i.severity == "error"]
    if errors:
        more = (
            f" (and {len(errors) - 1} more; run `meshtune data check {path}`)"
            if len(errors) > 1
            else ""
        )
        raise MeshtuneError(f"{errors[0]}{more}")
    if not dataset.conversations:
        raise MeshtuneError(f"{path}: no conversations; add JSONL rows")
    return dataset.conversations


# ---------------------------------------------------------------- stats


def _percentiles(values: Sequence[int]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)
    return {
        "min": float(ordered[0]),
        **{f"p{p}": percentile(ordered, p) for p in (10, 50, 90, 99)},
        "max": float(ordered[-1]),
        "mean": round(statistics.fmean(ordered), 1),
    }


def stats(
    convs: Sequence[Conversation], registry: Registry | None = None, top: int = 10
) -> dict[str, Any]:
    registry = registry or load_registry()
    replies = [r for c in convs for r in c.replies]
    chars = [len(r) for r in replies]
    sizes = [len(r.encode()) for r in replies]
    chunks = Counter(len(split_chunks(r)) for r in replies)
    commands: Counter[str] = Counter()
    unknown: Counter[str] = Counter()
    for r in replies:
        for m in registry.mentions(r):
            if m.canonical:
                commands[m.canonical] += 1
            else:
                unknown[m.written] += 1
    per_reply, _ = command_counts(convs, registry)
    turns = Counter(sum(m.role == "assistant" for m in c.messages) for c in convs)
    mesh_master = sum(
        1
        for c in convs
        for m in c.prompt
        if m.role == "user" and question_of(m.content) != m.content
    )
    return {
        "conversations": len(convs),
        "categories": dict(Counter(c.category or "(none)" for c in convs).most_common()),
        "exchanges": {str(k): v for k, v in sorted(turns.items())},
        "with_system_turn": sum(c.messages[0].role == "system" for c in convs),
        "mesh_master_prompts": mesh_master,
        "replies": len(replies),
        "reply_chars": _percentiles(chars),
        "reply_bytes": _percentiles(sizes),
        "reply_chunks": {str(k): v for k, v in sorted(chunks.items())},
        "share_one_chunk": round(chunks.get(1, 0) / len(replies), 4) if replies else 0.0,
        "share_80_150_chars": round(sum(80 <= c <= 150 for c in chars) / len(replies), 4)
        if replies
        else 0.0,
        "channel_rows": sum(c.channel for c in convs),
        "counter_examples": sum(c.category == COUNTER_CATEGORY for c in convs),
        "replies_naming_a_command": sum(bool(registry.mentions(r)) for r in replies),
        "distinct_commands": len(commands),
        "commands_taught_15_plus": sum(n >= COMMAND_MENTIONS_MIN for n in per_reply.values()),
        "commands_taught_under_15": {
            k: v for k, v in per_reply.most_common() if v < COMMAND_MENTIONS_MIN
        },
        "command_usage": dict(commands.most_common()),
        "unknown_commands": dict(unknown.most_common()),
        "top_openings": dict(Counter(opening(r) for r in replies).most_common(top)),
    }


# ---------------------------------------------------------------- split and convert


def split(
    convs: Sequence[Conversation], eval_fraction: float, seed: int
) -> tuple[list[Conversation], list[Conversation]]:
    """Deterministic train/eval split; near-duplicate prompts stay on the same side."""
    if not 0 < eval_fraction < 1:
        raise MeshtuneError(f"eval fraction {eval_fraction} is not between 0 and 1; use e.g. 0.15")
    groups: dict[str, list[Conversation]] = {}
    for conv in convs:
        groups.setdefault(prompt_key(conv), []).append(conv)
    if len(groups) < 2:
        raise MeshtuneError("cannot split: fewer than two distinct prompts; add more conversations")
    order = list(groups.values())
    random.Random(seed).shuffle(order)
    target = max(1, round(len(convs) * eval_fraction))
    evals: list[Conversation] = []
    trains: list[Conversation] = []
    for group in order:
        (evals if len(evals) < target else trains).extend(group)
    if not trains:
        raise MeshtuneError(
            "cannot split: every conversation landed in eval; lower the eval fraction"
        )
    by_line = lambda c: c.line  # noqa: E731
    return sorted(trains, key=by_line), sorted(evals, key=by_line)


Format = Literal["sharegpt", "openai"]
_SHAREGPT_ROLE = {"system": "system", "user": "human", "assistant": "gpt"}


def to_row(conv: Conversation, fmt: Format) -> dict[str, Any]:
    """The row in `fmt`, every other key kept: the row's (category) and each turn's (weight,
    name, tool_calls), so converting loses nothing."""
    source = json.loads(conv.raw) if conv.raw else {}
    old_key = "conversations" if "conversations" in source else "messages"
    old_turns = source.get(old_key) or [{} for _ in conv.messages]
    turns = []
    for m, old in zip(conv.messages, old_turns, strict=True):
        extra = {k: v for k, v in old.items() if k not in ("from", "value", "role", "content")}
        if fmt == "sharegpt":
            turns.append({"from": _SHAREGPT_ROLE[m.role], "value": m.content, **extra})
        else:
            turns.append({"role": m.role, "content": m.content, **extra})
    return {**conv.meta, ("conversations" if fmt == "sharegpt" else "messages"): turns}


def write_jsonl(outputs: Mapping[Path, Iterable[str]]) -> None:
    """Write each file's lines, then rename them all into place together (files.atomic_files):
    a failure, or a target that is a folder, device or FIFO, leaves every output as it was."""
    fix = "check the folder exists and is writable"
    with atomic_files(list(outputs), fix=fix) as temps:
        for tmp, lines in zip(temps, outputs.values(), strict=True):
            with tmp.open("w", encoding="utf-8", newline="\n") as f:
                for line in lines:
                    f.write(line.rstrip("\r\n") + "\n")


def dumps(row: dict[str, Any]) -> str:
    return json.dumps(row, ensure_ascii=False)
