"""Deploy: `ollama create NAME -f Modelfile` here, and Mesh Master's config.json pointed at
NAME; only a GGUF whose proof (verify.json) names that very file is shipped."""

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from meshtune import ollama
from meshtune.errors import MeshtuneError
from meshtune.export.proof import file_digest
from meshtune.files import check_writable, real_path, unique_backup, write_text
from meshtune.rundir import RunDir, Verification


def default_name(run_dir: Path) -> str:
    name = re.sub(r"[^a-z0-9._-]+", "-", run_dir.resolve().name.lower()).strip("-._")
    return name or "mesh-master-bot"


def check_name(name: str) -> str:
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,63}", name):
        raise MeshtuneError(
            f"--name {name!r}: use lower-case letters, digits, '.', '_' and '-' (an Ollama model "
            "name and a file name)"
        )
    return name


@dataclass(slots=True)
class Deployed:
    command: list[str]
    ran: bool  # False: ollama is not on PATH, the command is printed instead
    config: str | None = None
    backup: str | None = None


def deploy(
    run_dir: str | Path, name: str, config: str | Path | None = None, force: bool = False
) -> Deployed:
    """`ollama create NAME -f Modelfile` (when ollama is on PATH) and Mesh Master's
    config.json pointed at NAME."""
    folder = Path(run_dir)
    name = check_name(name)
    mf_path, _ = proven_files(folder, force)
    # The config change is worked out and checked before ollama runs, so a config that cannot
    # be changed stops the deploy before anything changed.
    edit = plan_config_edit(Path(config), name) if config is not None else None
    command = ["ollama", "create", name, "-f", str(mf_path.resolve())]
    ollama = shutil.which("ollama")
    result = Deployed(command, ran=ollama is not None)
    if ollama:
        proc = subprocess.run(
            [ollama, *command[1:]], cwd=folder, capture_output=True, text=True, check=False
        )
        if proc.returncode:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise MeshtuneError(f"ollama create failed (exit {proc.returncode}): {tail[0]}")
    if edit is not None:
        result.config = str(config)
        result.backup = str(apply_config_edit(edit))
    return result


def proven_files(folder: Path, force: bool) -> tuple[Path, Path]:
    """The run's Modelfile and the GGUF its FROM names, once verify.json proved that very file
    (check_proof) and passed; `force` ships a file whose proof failed, never an unproved one."""
    mf_path = RunDir(folder).modelfile
    if not mf_path.is_file():
        raise MeshtuneError(f"{folder}: no Modelfile; run `meshtune export {folder}` first")
    mf = ollama.read(mf_path)
    verification = check_proof(folder, mf)
    if not verification.ok and not force:
        raise MeshtuneError(
            f"{folder}/verify.json: verification failed ({', '.join(verification.failed)}); fix "
            "the run, or pass --force to deploy anyway"
        )
    gguf = ollama.local_model(mf, folder)
    assert gguf is not None  # check_proof: FROM names the proved file
    return mf_path, gguf


def check_proof(folder: Path, mf: ollama.Modelfile) -> Verification:
    """verify.json, if it proved the very file the Modelfile's FROM names (same path, sha256
    and size); anything else is refused, --force or not: an export stopped during its proof
    leaves the new GGUF beside the previous proof."""
    verification = RunDir(folder).load_verification()
    again = f"run `meshtune verify {folder}` (or export again) before deploying"
    target = ollama.local_model(mf, folder)
    if target is None or not target.is_file():
        raise MeshtuneError(
            f"{folder}/Modelfile: FROM does not name a GGUF file in the run; re-run export"
        )
    if not verification.gguf or not verification.sha256:
        raise MeshtuneError(f"{folder}/verify.json: does not say which file it proved; {again}")
    if (folder / verification.gguf).resolve() != target.resolve():
        raise MeshtuneError(
            f"{folder}/verify.json: proved {verification.gguf}, but the Modelfile ships "
            f"{target.name}; {again}"
        )
    if file_digest(target) != (verification.sha256, verification.bytes):
        raise MeshtuneError(
            f"{target}: not the file verify.json proved (its sha256 or size differs: it changed "
            f"after verification, or an export stopped before its proof); {again}"
        )
    return verification


@dataclass(frozen=True, slots=True)
class ConfigEdit:
    path: Path  # the file itself (a symlink's target)
    text: str  # its new content


def set_ollama_model(path: Path, name: str) -> Path:
    """Set `ollama_model` in Mesh Master's config.json, changing nothing else (formatting
    included), after writing a backup beside it. Returns the backup's path."""
    return apply_config_edit(plan_config_edit(path, name))


def apply_config_edit(edit: ConfigEdit) -> Path:
    """A backup under a name of its own (the original ollama_model stays in it), then the new
    text, written beside the file and renamed over it."""
    backup = unique_backup(edit.path)
    write_text(edit.path, edit.text)
    return backup


def plan_config_edit(path: Path, name: str) -> ConfigEdit:
    """The new config.json text with only `ollama_model` changed; the file must be writable."""
    path = real_path(path)
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text)
    except FileNotFoundError as e:
        raise MeshtuneError(f"{path}: no such file; pass Mesh Master's config.json") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MeshtuneError(f"{path}: not readable JSON ({e}); fix the file first") from e
    if not isinstance(data, dict):
        raise MeshtuneError(f"{path}: not a JSON object; pass Mesh Master's config.json")
    value = json.dumps(name)
    key = re.compile(r'("ollama_model"\s*:\s*)"(?:[^"\\]|\\.)*"')
    if "ollama_model" in data:
        new = key.sub(lambda m: m[1] + value, text, count=1)
    else:  # add it as the first key, indented like the others
        m = re.match(r'(\s*\{)(\s*)(?=")', text)
        if m:
            new = f'{m[1]}{m[2]}"ollama_model": {value},{m[2]}{text[m.end() :]}'
        else:
            new = re.sub(r"\{\s*\}", '{"ollama_model": ' + value + "}", text, count=1)
    if json.loads(new) != {**data, "ollama_model": name}:
        raise MeshtuneError(f"{path}: cannot change ollama_model safely; set it by hand")
    check_writable(path, "Mesh Master's config")
    return ConfigEdit(path, new)
