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
import stat
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from meshtune import jsontext
from meshtune.errors import MeshtuneError

_TEMP = re.compile(r".+\.tmp(\d+)$")


def read_text(path: Path) -> str:
    """A UTF-8 text file (a leading BOM dropped); unreadable is a one-line error."""
    input_file(path)
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise MeshtuneError(f"{path}: invalid UTF-8 at byte {e.start}; re-save as UTF-8") from e
    except OSError as e:
        raise MeshtuneError(f"{path}: cannot read ({e.strerror}); check the path") from e


def read_json(path: Path, fix: str) -> dict[str, Any]:
    """A JSON object file meshtune wrote; missing or damaged says `fix`."""
    input_file(path)
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
    """The file a path means: a symlink's target (through every link), so an edit changes the
    file the link names instead of replacing the link with a plain file."""
    return Path(os.path.realpath(path)) if path.is_symlink() else path


_KINDS = {
    stat.S_IFDIR: "a folder",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
}


def _not_a_file(path: Path) -> str | None:
    """What `path` resolves to when that is not a regular file (a folder, a FIFO, a device);
    None for a regular file or nothing at all."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return None  # missing, or a link loop: the open that follows names it
    return None if stat.S_ISREG(mode) else _KINDS.get(stat.S_IFMT(mode), "not a regular file")


def input_file(path: Path, what: str = "a regular file") -> Path:
    """A path meshtune reads, checked before it is opened: a FIFO's or a terminal device's read
    would wait forever for a writer, a folder's fails later with a vaguer message."""
    kind = _not_a_file(path)
    if kind is not None:
        raise MeshtuneError(f"{path}: is {kind}, not a regular file; give {what}")
    return path


def output_file(path: Path, what: str = "the output") -> Path:
    """The regular file a write to `path` replaces: a symlink's target, the link kept. A path
    that is (or resolves to) a folder, a device, a FIFO or a socket is refused before anything
    is written: replacing it would destroy what the user did not ask meshtune to touch."""
    target = real_path(path)
    try:
        mode = target.stat().st_mode
    except FileNotFoundError:
        return target  # a new file (or the missing target of a dangling link)
    except OSError as e:
        raise MeshtuneError(f"{path}: cannot write {what} ({e.strerror}); choose a file") from e
    if stat.S_ISREG(mode):
        return target
    kind = _KINDS.get(stat.S_IFMT(mode), "not a regular file")
    via = f" ({target})" if target != path else ""
    raise MeshtuneError(
        f"{path}: is {kind}{via}, not a file; meshtune writes {what} only as a new or "
        "existing regular file: give a file path"
    )


def read_source(path: Path, what: str) -> bytes:
    """The bytes of a regular file meshtune is about to edit; a folder, FIFO or device (whose
    read would block or mean nothing) is refused like a write to it."""
    target = output_file(path, what)
    try:
        return target.read_bytes()
    except FileNotFoundError as e:
        raise MeshtuneError(f"{path}: no such file; pass {what}") from e
    except OSError as e:
        raise MeshtuneError(f"{path}: cannot read {what} ({e.strerror})") from e


@contextmanager
def atomic_files(
    paths: Sequence[Path], hidden: bool = True, fix: str = "check the folder", what: str = ""
) -> Iterator[list[Path]]:
    """The one way meshtune writes output files. Every target is checked first (output_file:
    a symlink's target, never a folder, device or FIFO); the caller writes each file at its
    yielded temp path; once the block ends without error all are renamed into place together
    (an existing file keeps its permissions), and if one rename fails the ones before it are
    put back, so the outputs are replaced together or not at all. Anything else leaves every
    target untouched. An OSError is a one-line error naming the target, never a temp file."""
    targets = [output_file(p, what or "the output") for p in paths]
    if len(set(targets)) < len(targets):
        shown = ", ".join(map(str, paths))
        raise MeshtuneError(f"{shown}: two of these outputs are the same file; choose others")
    temps = [temp_path(t, hidden) for t in targets]
    try:
        yield temps
        _replace_all(targets, temps)
    except OSError as e:
        failed = next((p for p, t in zip(paths, targets, strict=True) if _names(e, t)), paths[0])
        raise MeshtuneError(
            f"{failed}: cannot write{what and ' ' + what} ({e.strerror}); {fix}"
        ) from e
    finally:
        for tmp in temps:
            _remove(tmp)


@contextmanager
def atomic(
    path: Path, hidden: bool = True, fix: str = "check the folder", what: str = ""
) -> Iterator[Path]:
    """atomic_files for one file."""
    with atomic_files([path], hidden, fix, what) as (tmp,):
        yield tmp


def _names(e: OSError, target: Path) -> bool:
    return str(target) in (str(e.filename), str(e.filename2), str(temp_path(target)))


def _replace_all(targets: Sequence[Path], temps: Sequence[Path]) -> None:
    """Rename each temp file over its target; a hard link keeps each old file until all are in
    place, and puts it back if a later rename fails."""
    for target, tmp in zip(targets, temps, strict=True):
        output_file(target)  # still a file (or absent) now, right before the rename
        if target.exists():
            shutil.copymode(target, tmp)
    replaced: list[tuple[Path, Path | None]] = []
    try:
        for target, tmp in zip(targets, temps, strict=True):
            old = None
            if target.exists():
                old = temp_path(target.with_name(target.name + ".old"))
                _keep(target, old)
            replaced.append((target, old))
            os.replace(tmp, target)
    except OSError:
        for target, old in reversed(replaced):
            if old is not None:
                os.replace(old, target)
            else:
                target.unlink(missing_ok=True)  # meshtune created it a moment ago
        raise
    finally:
        for _, old in replaced:
            if old is not None:
                old.unlink(missing_ok=True)


def _keep(target: Path, old: Path) -> None:
    try:
        os.link(target, old)
    except OSError:  # a filesystem without hard links
        shutil.copy2(target, old)


@contextmanager
def atomic_folder(
    path: Path, hidden: bool = True, fix: str = "check the folder", what: str = ""
) -> Iterator[Path]:
    """A folder output meshtune owns (merged/, an adapter, a checkpoint, a converted model):
    the caller fills the yielded temp folder; once the block ends without error it replaces
    `path` (meshtune's own earlier folder there is removed), otherwise `path` is untouched. A
    file, link or anything else at `path` is refused, never removed."""
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise MeshtuneError(f"{path}: exists and is not a folder; move it away or choose another")
    tmp = temp_path(path, hidden)
    try:
        yield tmp
        if path.is_dir():
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
    """Replace `path` (a symlink's target) with `text` once it is fully written."""
    write_files({path: text.encode()})


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json_text(obj))


def json_text(obj: Any) -> str:
    """How meshtune writes a JSON record: indented, UTF-8, one trailing newline."""
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"


def write_files(contents: Mapping[Path, str | bytes], what: str = "") -> None:
    """Replace several files together (atomic_files): a report's files, a config's edit."""
    with atomic_files(list(contents), what=what) as temps:
        for tmp, data in zip(temps, contents.values(), strict=True):
            tmp.write_bytes(data.encode() if isinstance(data, str) else data)


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
        if existing.is_symlink():  # mkdir would fail on it after the work, not before
            raise MeshtuneError(
                f"{option} {path}: {existing} is a link to nothing ({os.readlink(existing)}); "
                "choose a folder"
            )
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
