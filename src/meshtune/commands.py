"""The bot's command registry, and finding command mentions in text.

The registry is data (assets/mesh_master_commands.yaml); users pass their own for another bot.
"""

import re
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path

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
    admin: bool = False
    meaning: str

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _slash(v)

    @field_validator("aliases")
    @classmethod
    def _aliases(cls, v: list[str]) -> list[str]:
        return [_slash(a) for a in v]


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


@dataclass(slots=True)
class Registry:
    bot: str
    commands: list[CommandSpec]
    nonexistent: dict[str, NonexistentSpec]
    keywords: list[KeywordSpec] = field(default_factory=list)
    _canonical: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for c in self.commands:
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
    return Registry(spec.bot, spec.commands, {n.name: n for n in spec.nonexistent}, spec.keywords)


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
