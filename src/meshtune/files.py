"""Reading files with one-line errors, and writing them atomically: a temp file beside the
target, then a rename, so a crash or a full disk never leaves a half-written output where a
finished one is expected.

Temp names end in `.tmp<PID>`, so a later run can tell the leftovers of a killed process
(`remove_stale_temps`) from the files of one still running.
"""

import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from meshtune import jsontext
from meshtune.errors import MeshtuneError

_TEMP = re.compile(r".+\.tmp(\d+)$")


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
        data = jsontext.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise MeshtuneError(f"{path}: missing; {fix}") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MeshtuneError(f"{path}: unreadable ({e}); {fix}") from e
    if not isinstance(data, dict):
        raise MeshtuneError(f"{path}: not a JSON object; {fix}")
    return data


def temp_path(path: Path, hidden: bool = True) -> Path:
    """Where `path` is written before its rename: beside it, named for this process."""
    return path.with_name(f"{'.' if hidden else ''}{path.name}.tmp{os.getpid()}")


def real_path(path: Path) -> Path:
    """The file a path means: a symlink's target, so an edit changes the file the link names
    instead of replacing the link with a plain file."""
    return Path(os.path.realpath(path)) if path.is_symlink() else path


@contextmanager
def atomic(
    path: Path, hidden: bool = True, fix: str = "check the folder", what: str = ""
) -> Iterator[Path]:
    """The one way meshtune replaces an output: the caller writes a file or a folder at the
    yielded temp path beside `path`; once the block ends without error it replaces `path` (a
    folder there is removed first), otherwise it is removed and `path` is untouched. An OSError
    is a one-line error naming `path`, never the temp file."""
    tmp = temp_path(path, hidden)
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except OSError as e:
        raise MeshtuneError(
            f"{path}: cannot write{what and ' ' + what} ({e.strerror}); {fix}"
        ) from e
    finally:
        _remove(tmp)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    """Replace `path` (a symlink's target) with `text` once it is fully written; an existing
    file keeps its permissions."""
    path = real_path(path)
    with atomic(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
        if path.exists():
            shutil.copymode(path, tmp)


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def check_writable(path: Path, what: str) -> None:
    """An existing file that can be replaced in place: a read-only or immutable file is an
    error before anything is written, not a failure half-way."""
    path = real_path(path)
    folder = path.parent
    if not os.access(path, os.W_OK) or not os.access(folder, os.W_OK | os.X_OK):
        raise MeshtuneError(
            f"{path}: {what} cannot be changed (it or its folder is read-only or immutable); "
            "make it writable (chmod u+w, chattr -i) or edit it by hand"
        )
    # root passes os.access on anything; an immutable file (chattr +i) only shows when opened.
    try:
        with path.open("r+b"):
            pass
    except OSError as e:
        raise MeshtuneError(
            f"{path}: {what} cannot be changed ({e.strerror}); make it writable "
            "(chattr -i / chmod u+w) or edit it by hand"
        ) from e


def check_output_dir(path: Path, option: str) -> None:
    """A folder meshtune may create or write into: not a file, under a writable folder.
    Checked before any work, so a long run never fails at its last step."""
    if path.exists() and not path.is_dir():
        raise MeshtuneError(f"{option} {path}: is a file, not a folder; choose a folder")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise MeshtuneError(f"{option} {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise MeshtuneError(f"{option} {path}: {existing} is not writable; choose another folder")


def unique_backup(path: Path) -> Path:
    """A copy of `path` under a name no other backup has (created exclusively, so two runs in
    the same second never overwrite each other's backup)."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    for n in range(1, 1000):
        backup = path.with_name(f"{path.name}.{stamp}{'' if n == 1 else f'-{n}'}.bak")
        try:
            with backup.open("xb") as out, path.open("rb") as src:
                shutil.copyfileobj(src, out)
        except FileExistsError:
            continue
        except OSError as e:
            backup.unlink(missing_ok=True)
            raise MeshtuneError(f"{backup}: cannot write the backup ({e.strerror})") from e
        shutil.copymode(path, backup)
        return backup
    raise MeshtuneError(f"{path}: 999 backups this second; remove old .bak files")


def remove_stale_temps(folder: Path) -> list[Path]:
    """Remove the temp files and folders in `folder` left by meshtune processes that no longer
    run (killed mid-write); returns what was removed."""
    removed = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        m = _TEMP.fullmatch(p.name)
        if not m or _alive(int(m[1])):
            continue
        _remove(p)
        removed.append(p)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # a leftover of an earlier process that had this id
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True
