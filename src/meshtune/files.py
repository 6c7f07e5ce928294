"""Writing files atomically: a temp file beside the target, then a rename, so a crash or a
full disk never leaves a half-written output where a finished one is expected."""

import json
import os
from pathlib import Path
from typing import Any

from meshtune.errors import MeshtuneError


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
