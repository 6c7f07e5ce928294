"""Reading files with one-line errors, and writing them atomically: a temp file beside the
target, then a rename, so a crash or a full disk never leaves a half-written output where a
finished one is expected."""

import json
import os
from pathlib import Path
from typing import Any

from meshtune.errors import MeshtuneError


def read_text(path: Path) -> str:
    """A UTF-8 text file (a leading BOM dropped); unreadable is a one-line error."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise MeshtuneError(f"{path}: invalid UTF-8 at byte {e.start}; re-save as UTF-8") from e
    except OSError as e:
        raise MeshtuneError(f"{path}: cannot read ({e.strerror}); check the path") from e


def read_json(path: Path, fix: str) -> dict[str, Any]:
    """A JSON object file meshtune wrote; missing or damaged says `fix`."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise MeshtuneError(f"{path}: missing; {fix}") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MeshtuneError(f"{path}: unreadable ({e}); {fix}") from e
    if not isinstance(data, dict):
        raise MeshtuneError(f"{path}: not a JSON object; {fix}")
    return data


def write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as e:
        raise MeshtuneError(f"{path}: cannot write ({e.strerror}); check the folder") from e
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
