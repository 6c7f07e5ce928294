"""The bot's command registry, and finding command mentions in text.

The registry is data (assets/mesh_master_commands.yaml); users pass their own for another bot.
"""

import re
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from meshtune.errors import MeshtuneError

# A slash command starts a word: after start of text, whitespace, or an opening bracket/quote.
# Slashes inside words ("and/or", "4/5", "SNR/RSSI", URLs) are not commands.
COMMAND_RE = re.compile(r"(?<![\w/.:~\\-])/([A-Za-z0-9][A-Za-z0-9_]*(?:\+[A-Za-z0-9_]+)*)")
LIST_LINE_RE = re.compile(r"^\s*(?:[-*•·▪]|\d+[.)])?\s*/[A-Za-z0-9]", re.MULTILINE)
WORD_RE = re.compile(r"\S+")


def _slash(name: str) -> str:
    name = name.strip().lower()
    return name if name.startswith("/") else "/" + name


class CommandSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    aliases: list[str] = []
    usage: str = ""
    subcommands: list[str] = []  # one of these words must follow the command
    dm_only: bool = False
    admin: bool = False  # admin commands work only in a DM, so they are DM-only too
    meaning: str

    @property
    def direct_only(self) -> bool:
        return self.dm_only or self.admin

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _slash(v)

    @field_validator("aliases")
    @classmethod
    def _aliases(cls, v: list[str]) -> list[str]:
        return [_slash(a) for a in v]

    @field_validator("subcommands")
    @classmethod
    def _subcommands(cls, v: list[str]) -> list[str]:
        return [s.strip().lower() for s in v]


class KeywordSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    word: str
    meaning: str


class NonexistentSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    instead: str = ""

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _slash(v)


class RegistryFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bot: str
    commands: list[CommandSpec]
    keywords: list[KeywordSpec] = []
    nonexistent: list[NonexistentSpec] = []


@dataclass(frozen=True, slots=True)
class Mention:
    """One `/word` in a text: the word as written and the canonical command it names, if any."""

    written: str
    canonical: str | None
    nonexistent: bool  # listed as a command that does not work


@dataclass(frozen=True, slots=True)
class Misuse:
    """A real command written against its usage."""

    kind: Literal["subcommand", "dm-only", "alias"]
    written: str
    canonical: str
    hint: str  # the right way to write it


# What follows a command: a word, or a `<placeholder>` standing for one.
_NEXT_WORD_RE = re.compile(r"[ \t]+(<[^>\s]*>|[\w|]+)")
_DM_RE = re.compile(r"\bDMs?\b|\bdirect message", re.IGNORECASE)


@dataclass(slots=True)
class Registry:
    bot: str
    commands: list[CommandSpec]
    nonexistent: dict[str, NonexistentSpec]
    keywords: list[KeywordSpec] = field(default_factory=list)
    _canonical: dict[str, str] = field(default_factory=dict)
    _specs: dict[str, CommandSpec] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for c in self.commands:
            self._specs[c.name] = c
            for name in (c.name, *c.aliases):
                self._canonical[name] = c.name

    def canonical(self, written: str) -> str | None:
        return self._canonical.get(_slash(written))

    def mentions(self, text: str) -> list[Mention]:
        out = []
        for m in COMMAND_RE.finditer(text):
            written = "/" + m.group(1).lower()
            out.append(Mention(written, self.canonical(written), written in self.nonexistent))
        return out

    def spec(self, canonical: str) -> CommandSpec:
        return self._specs[canonical]

    def misuses(self, text: str, channel: bool = False) -> list[Misuse]:
        """Real commands written against their usage: an alias instead of the canonical name,
        a command without its required subcommand (a bare `/wordle`), and, when the text is a
        reply on a channel, a command that works only in a DM."""
        out = []
        says_dm = bool(_DM_RE.search(text))  # "DM me /trivia" is the right advice on a channel
        for m in COMMAND_RE.finditer(text):
            written = "/" + m.group(1).lower()
            canonical = self.canonical(written)
            if canonical is None:
                continue
            spec = self._specs[canonical]
            if written != canonical:
                out.append(Misuse("alias", written, canonical, f"write {canonical}"))
            if spec.subcommands:
                after = _NEXT_WORD_RE.match(text, m.end())
                word = after.group(1).lower() if after else ""
                if not (word.startswith("<") or word.split("|")[0] in spec.subcommands):
                    usage = " or ".join(f"{canonical} {s}" for s in spec.subcommands)
                    out.append(Misuse("subcommand", written, canonical, f"write {usage}"))
            if channel and spec.direct_only and not says_dm:
                out.append(Misuse("dm-only", written, canonical, "say it works in a DM to the bot"))
        return out

    def unknown(self, text: str) -> list[Mention]:
        """Mentions of commands the bot does not have (invented or known not to work)."""
        return [m for m in self.mentions(text) if m.canonical is None]

    def is_command_dump(self, text: str) -> bool:
        """A reply that lists commands instead of explaining.

        Three or more distinct commands, and either three list lines that start with a
        command or commands making up at least 30% of the words.
        """
        mentions = self.mentions(text)
        if len({m.written for m in mentions}) < 3:
            return False
        words = len(WORD_RE.findall(text)) or 1
        return len(LIST_LINE_RE.findall(text)) >= 3 or len(mentions) / words >= 0.3


def load_registry(path: str | Path | None = None) -> Registry:
    """The registry in `path`, or Mesh Master's shipped one."""
    if path is None:
        return _default_registry()
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise MeshtuneError(f"{path}: cannot read registry ({e.strerror}); check the path") from e
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise MeshtuneError(f"{path}: not valid YAML ({_first_line(e)}); fix the syntax") from e
    return _parse(raw, str(path))


@cache
def _default_registry() -> Registry:
    text = resources.files("meshtune").joinpath("assets/mesh_master_commands.yaml").read_text()
    return _parse(yaml.safe_load(text), "mesh_master_commands.yaml")


def _parse(raw: object, source: str) -> Registry:
    try:
        spec = RegistryFile.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise MeshtuneError(
            f"{source}: registry field '{where}': {err['msg']}; "
            "see meshtune/assets/mesh_master_commands.yaml for the format"
        ) from e
    real = {name for c in spec.commands for name in (c.name, *c.aliases)}
    both = sorted(real & {n.name for n in spec.nonexistent})
    if both:
        raise MeshtuneError(
            f"{source}: {', '.join(both)} listed both as a command and as nonexistent; keep one"
        )
    return Registry(spec.bot, spec.commands, {n.name: n for n in spec.nonexistent}, spec.keywords)


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
