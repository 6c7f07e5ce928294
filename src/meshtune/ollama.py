"""What Ollama reads: a Modelfile's syntax (parser/parser.go's rules), the PARAMETER names and
value types it accepts, its own sampling defaults, and the v2 guide's Modelfile values.

Export writes Modelfiles and evaluation reads their SYSTEM and sampling PARAMETERs; both take
the format and the values from here.
"""

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshtune.errors import MeshtuneError
from meshtune.files import read_text
from meshtune.meshmaster import CHUNK_BYTES, MAX_CHUNKS

# PARAMETER names Ollama accepts (api.Options), by value type; others are "unknown parameter".
PARAMETERS: dict[str, type] = {
    "num_ctx": int,
    "repeat_last_n": int,
    "repeat_penalty": float,
    "temperature": float,
    "seed": int,
    "stop": str,
    "num_predict": int,
    "top_k": int,
    "top_p": float,
    "min_p": float,
    "num_keep": int,
    "typical_p": float,
    "presence_penalty": float,
    "frequency_penalty": float,
    "num_batch": int,
    "num_gpu": int,
    "main_gpu": int,
    "use_mmap": bool,
    "num_thread": int,
}


# Accepted by Ollama's parser with a warning and then ignored.
DEPRECATED_PARAMETERS = {
    "penalize_newline", "low_vram", "f16_kv", "logits_all", "vocab_only", "use_mlock",
    "mirostat", "mirostat_tau", "mirostat_eta",
}  # fmt: skip


INSTRUCTIONS = {
    "from", "parameter", "template", "system", "adapter", "license", "message", "draft",
    "renderer", "parser", "requires",
}  # fmt: skip


# The longest reply Mesh Master sends is MAX_CHUNKS radio chunks of CHUNK_BYTES; at about four
# bytes per token of English that is this many tokens. (Mesh Master itself sends num_predict 80.)
NUM_PREDICT = MAX_CHUNKS * CHUNK_BYTES // 4


# The v2 guide's sampling values; a recipe's `ollama:` section overrides them.
DEFAULT_PARAMETERS: dict[str, Any] = {
    "temperature": 0.5,
    "repeat_penalty": 1.15,
    "top_p": 0.85,
    "top_k": 30,
    "num_ctx": 2048,
    "num_predict": NUM_PREDICT,
}


# Ollama's (and llama.cpp's) defaults for the options a request does not send.
SAMPLING_DEFAULTS: dict[str, float | int] = {
    "temperature": 0.8,
    "top_p": 0.9,
    "top_k": 40,
    "min_p": 0.0,
    "repeat_penalty": 1.1,
}
REPEAT_LAST_N = 64  # Ollama's and llama.cpp's default look-back of repeat_penalty
SAMPLING_KEYS = ("num_predict", "temperature", "top_p", "top_k", "repeat_penalty", "min_p")


@dataclass(frozen=True, slots=True)
class Sampling:
    """The sampling options of one request, Ollama's defaults where it sends none."""

    temperature: float
    top_p: float
    top_k: int
    min_p: float
    repeat_penalty: float

    @classmethod
    def of(cls, options: dict[str, Any]) -> "Sampling":
        o = {**SAMPLING_DEFAULTS, **options}
        return cls(
            float(o["temperature"]),
            float(o["top_p"]),
            int(o["top_k"]),
            float(o["min_p"]),
            float(o["repeat_penalty"]),
        )


# ---------------------------------------------------------------------------------------------
# Parsing (Ollama's rules: parser/parser.go)


@dataclass(frozen=True, slots=True)
class Command:
    name: str  # lower case; "model" for FROM, the parameter's name for PARAMETER
    args: str
    line: int


@dataclass(frozen=True, slots=True)
class Modelfile:
    path: str
    commands: tuple[Command, ...]

    def first(self, name: str) -> Command | None:
        return next((c for c in self.commands if c.name == name), None)

    @property
    def parameters(self) -> list[Command]:
        fixed = INSTRUCTIONS | {"model"}
        return [c for c in self.commands if c.name not in fixed]

    @property
    def stops(self) -> list[str]:
        return [c.args for c in self.commands if c.name == "stop"]


def parse(text: str, path: str = "Modelfile") -> Modelfile:
    """Commands as Ollama reads them. A value runs to the end of its line unless it opens a
    quote: triple-quoted and "quoted" values may span lines and are taken verbatim."""
    lines = text.splitlines()
    commands: list[Command] = []
    i = 0
    while i < len(lines):
        start = i
        stripped = lines[i].lstrip(" \t")
        i += 1
        if not stripped or stripped.startswith("#"):
            continue
        instruction = re.match(r"([A-Za-z]+)[ \t]+(\S.*)", stripped)
        if not instruction or instruction[1].lower() not in INSTRUCTIONS:
            raise MeshtuneError(
                f"{path}:{start + 1}: expected an instruction and its value, e.g. FROM ./x.gguf "
                f"(instructions: {', '.join(sorted(n.upper() for n in INSTRUCTIONS))})"
            )
        name, value = instruction[1].lower(), instruction[2]
        if name == "parameter":
            parameter = re.match(r"([A-Za-z0-9_]+)[ \t]+(\S.*)", value)
            if not parameter:
                raise MeshtuneError(f"{path}:{start + 1}: PARAMETER needs a name and a value")
            name, value = parameter[1], parameter[2]
        if name == "from":
            name = "model"
        while (unquoted := _unquote(value.strip())) is None:
            if i >= len(lines):
                raise MeshtuneError(
                    f"{path}:{start + 1}: unterminated quoted value; close it with the same quote"
                )
            value += "\n" + lines[i]
            i += 1
        if name == "message":
            role, _, content = unquoted.partition(" ")
            unquoted = f"{role}: {content}"
        commands.append(Command(name, unquoted, start + 1))
    if not any(c.name == "model" for c in commands):
        raise MeshtuneError(f"{path}: no FROM line; add `FROM ./<model>.gguf`")
    return Modelfile(path, tuple(commands))


def _unquote(s: str) -> str | None:
    """Ollama's unquote: None while a quoted value is still open."""
    if s.startswith('"""'):
        return s[3:-3] if len(s) >= 6 and s.endswith('"""') else None
    if s.startswith('"'):
        return s[1:-1] if len(s) >= 2 and s.endswith('"') else None
    return s


def read(path: str | Path) -> Modelfile:
    path = Path(path)
    return parse(read_text(path), str(path))


def sampling_options(path: Path) -> dict[str, Any]:
    """The sampling PARAMETERs of an Ollama Modelfile (others, such as stop, are ignored)."""
    options: dict[str, Any] = {}
    for c in read(path).parameters:
        if c.name in SAMPLING_KEYS:
            try:
                value = float(c.args)
            except ValueError as e:
                raise MeshtuneError(
                    f"{path}:{c.line}: PARAMETER {c.name} {c.args!r} is not a number; fix it"
                ) from e
            options[c.name] = int(value) if c.name in ("num_predict", "top_k") else value
    return options


def guide_sampling(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The guide's sampling values (DEFAULT_PARAMETERS' sampling keys), then `overrides`'."""
    picked = {**DEFAULT_PARAMETERS, **(overrides or {})}
    return {k: v for k, v in picked.items() if k in SAMPLING_KEYS}


def check_parameters(parameters: dict[str, Any], where: str) -> None:
    """PARAMETER values meshtune may write: Ollama's names and value types. `stop` is not
    among them: the stops are the chat family's."""
    for name, value in parameters.items():
        if name not in PARAMETERS or name == "stop":
            accepted = ", ".join(n for n in PARAMETERS if n != "stop")
            raise MeshtuneError(
                f"{where}: {name!r} is not a PARAMETER meshtune writes (stops come from the chat "
                f"family); use one of {accepted}"
            )
        if isinstance(value, (dict, list)) or not _valid_value(PARAMETERS[name], str(value)):
            raise MeshtuneError(
                f"{where}: {name} {value!r} is not a valid {PARAMETERS[name].__name__}; fix it"
            )


def local_model(mf: Modelfile, folder: Path) -> Path | None:
    """The local file or folder FROM names (None for a model name or an unusable path)."""
    model = mf.first("model")
    return _from_target(model.args, folder)[0] if model else None


def _from_target(args: str, folder: Path) -> tuple[Path | None, str]:
    """FROM's local path and what is there: file, dir, missing, invalid (a name Ollama cannot
    open: a NUL byte, an unknown ~user, too long); (None, "name") for a model name."""
    try:
        target = _from_path(args, folder)
        if target is None:
            return None, "name"
        if target.is_dir():
            return target, "dir"
        return target, "file" if target.exists() else "missing"
    except (ValueError, RuntimeError, OSError):
        return None, "invalid"


def _from_path(args: str, folder: Path) -> Path | None:
    """The local file FROM names, resolved as Ollama does; None for a model name."""
    if args.startswith(("/", "./", "../", "~")) or args.endswith((".gguf", ".bin")):
        return (folder / Path(args).expanduser()).resolve()
    return None


def _valid_value(kind: type, value: str) -> bool:
    value = value.strip()
    if kind is str:
        return True
    if kind is bool:
        return value.lower() in {"true", "false", "1", "0", "t", "f"}
    try:
        kind(value)
    except ValueError:
        return False
    return True
