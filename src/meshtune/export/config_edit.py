"""Mesh Master's config.json, edited as a careful person edits it by hand: only the values
deploy sets (`ollama_model`, and `meshtastic_knowledge_file` when the run carries a knowledge
file) change; every other byte stays: the encoding (UTF-8 or Latin-1), a BOM, CRLF line
endings, key order and spacing. The same edit serves the local deploy and the one over ssh.
"""

import codecs
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshtune.errors import MeshtuneError
from meshtune.files import check_writable, read_source, unique_backup, write_files

MODEL_KEY = "ollama_model"
KNOWLEDGE_KEY = "meshtastic_knowledge_file"
_WS = re.compile(r"[ \t\n\r]*")


@dataclass(frozen=True, slots=True)
class Decoded:
    """A config's text, and how to turn it back into the very same bytes."""

    text: str
    encoding: str  # utf-8, or latin-1 for a file that is not UTF-8 (every byte maps to itself)
    bom: bytes

    @classmethod
    def of(cls, data: bytes) -> "Decoded":
        bom = codecs.BOM_UTF8 if data.startswith(codecs.BOM_UTF8) else b""
        body = data[len(bom) :]
        try:
            return cls(body.decode("utf-8"), "utf-8", bom)
        except UnicodeDecodeError:
            return cls(body.decode("latin-1"), "latin-1", bom)

    def encode(self, text: str) -> bytes:
        return self.bom + text.encode(self.encoding)


def parse(data: bytes, where: str) -> tuple[Decoded, dict[str, Any]]:
    decoded = Decoded.of(data)
    try:
        obj = json.loads(decoded.text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise MeshtuneError(f"{where}: not readable JSON ({e}); fix the file first") from e
    if not isinstance(obj, dict):
        raise MeshtuneError(f"{where}: not a JSON object; pass Mesh Master's config.json")
    return decoded, obj


def edit(data: bytes, values: Mapping[str, str], where: str) -> bytes:
    """`data` with the top-level `values` set (a key it lacks is added first, indented like
    the others) and not one other byte changed; refused when the result would not read back
    as exactly that."""
    decoded, obj = parse(data, where)
    text = decoded.text
    spans = _top_level_values(text)
    changes = sorted(
        (span, json.dumps(value)) for key, value in values.items() for span in spans.get(key, [])
    )
    for (start, end), value in reversed(changes):
        text = text[:start] + value + text[end:]
    missing = [key for key in values if key not in spans]
    if missing:
        text = _add_first(text, {key: values[key] for key in missing})
    if json.loads(text) != {**obj, **values}:
        raise MeshtuneError(f"{where}: cannot change {', '.join(values)} safely; set it by hand")
    return decoded.encode(text)


def _top_level_values(text: str) -> dict[str, list[tuple[int, int]]]:
    """Where each top-level key's value starts and ends in a valid JSON object's text."""
    decoder = json.JSONDecoder()
    spans: dict[str, list[tuple[int, int]]] = {}
    i = _WS.match(text, _WS.match(text).end() + 1).end()  # past the opening brace
    while text[i] == '"':
        key, i = json.decoder.scanstring(text, i + 1)  # type: ignore[attr-defined]
        i = _WS.match(text, _WS.match(text, i).end() + 1).end()  # past the colon
        _, end = decoder.raw_decode(text, i)
        spans.setdefault(key, []).append((i, end))
        i = _WS.match(text, end).end()
        if text[i] == ",":
            i = _WS.match(text, i + 1).end()
    return spans


def _add_first(text: str, values: Mapping[str, str]) -> str:
    m = re.match(r'(\s*\{)(\s*)(?=")', text)
    if m is None:  # an empty object
        pairs = ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in values.items())
        return re.sub(r"\{\s*\}", lambda _: "{" + pairs + "}", text, count=1)
    added = "".join(f"{json.dumps(k)}: {json.dumps(v)},{m[2]}" for k, v in values.items())
    return f"{m[1]}{m[2]}{added}{text[m.end() :]}"


def deploy_edit(data: bytes, name: str, knowledge: str | None, where: str) -> bytes:
    """The config with `ollama_model` set to `name` (and the knowledge file); the name the bot
    runs now is refused: `ollama create` would overwrite it before the new model is proven."""
    _, obj = parse(data, where)
    if obj.get(MODEL_KEY) == name:
        raise MeshtuneError(
            f"{where}: ollama_model is already {name!r}; deploy under a new --name (e.g. "
            f"{name}-2) so the running model stays until the new one has answered"
        )
    values = {MODEL_KEY: name, **({KNOWLEDGE_KEY: knowledge} if knowledge else {})}
    return edit(data, values, where)


@dataclass(frozen=True, slots=True)
class ConfigEdit:
    path: Path  # the file itself (a symlink's target)
    old: bytes
    new: bytes


def plan_config_edit(path: Path, name: str, knowledge: str | None = None) -> ConfigEdit:
    """The local config's edit, worked out and checked (a regular, writable file) before
    anything changes."""
    old = read_source(path, "Mesh Master's config.json")
    target = path.resolve()
    new = deploy_edit(old, name, knowledge, str(target))
    check_writable(target, "Mesh Master's config")
    return ConfigEdit(target, old, new)


def apply_config_edit(edit: ConfigEdit) -> Path:
    """A backup under a name of its own (the original values stay in it), then the new bytes,
    written beside the file and renamed over it; returns the backup's path."""
    if read_source(edit.path, "Mesh Master's config.json") != edit.old:
        raise MeshtuneError(f"{edit.path}: changed while deploying; run deploy again")
    backup = unique_backup(edit.path)
    write_files({edit.path: edit.new}, "Mesh Master's config")
    return backup
