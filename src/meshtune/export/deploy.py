"""Deploy: `ollama create NAME -f Modelfile` here, the run's knowledge file installed beside
Mesh Master's config.json, and the config pointed at both. Only a Modelfile and GGUF that
verify.json proved (both by sha256) are shipped; nothing changes until every input is checked,
and nothing at all without `ollama` (the steps are printed instead)."""

import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from meshtune import ollama
from meshtune.errors import MeshtuneError
from meshtune.export.config_edit import ConfigEdit, apply_config_edit, plan_config_edit
from meshtune.export.proof import file_digest
from meshtune.files import output_file, read_text, write_files
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
    command: list[str]  # ollama create
    ran: bool  # False: a dry run, or ollama is not on PATH (then nothing was changed)
    steps: list[str]  # every step, as --dry-run prints it and a user finishes by hand
    config: str | None = None
    backup: str | None = None
    knowledge: str | None = None  # where the run's knowledge file was installed


@dataclass(frozen=True, slots=True)
class _Plan:
    """A deploy worked out and checked, before anything changes."""

    command: list[str]
    knowledge: tuple[Path, Path] | None  # the run's file, and where it goes
    edit: ConfigEdit | None

    def steps(self) -> list[str]:
        steps = [shlex.join(self.command)]
        if self.knowledge:
            steps.append(f"copy {self.knowledge[0]} to {self.knowledge[1]}")
        if self.edit:
            keys = "ollama_model" + (" and meshtastic_knowledge_file" if self.knowledge else "")
            steps.append(f"set {keys} in {self.edit.path} (a backup beside it)")
        return steps


def deploy(
    run_dir: str | Path,
    name: str,
    config: str | Path | None = None,
    force: bool = False,
    dry_run: bool = False,
) -> Deployed:
    """`ollama create NAME -f Modelfile`, the run's knowledge file installed beside the config,
    and Mesh Master's config.json pointed at both; a failed step leaves the config as it was."""
    folder = Path(run_dir)
    plan = _plan(folder, check_name(name), Path(config) if config is not None else None, force)
    result = Deployed(plan.command, ran=False, steps=plan.steps())
    binary = shutil.which("ollama")
    if dry_run or binary is None:
        return result
    _ollama_create(binary, plan.command, folder)
    result.ran = True
    created = plan.knowledge is not None and _install(*plan.knowledge)
    if plan.knowledge:
        result.knowledge = str(plan.knowledge[1])
    if plan.edit is not None:
        try:
            result.backup = str(apply_config_edit(plan.edit))
        except MeshtuneError:
            if created and plan.knowledge:
                plan.knowledge[1].unlink(missing_ok=True)  # meshtune made it a moment ago
            raise
        result.config = str(config)
    return result


def _plan(folder: Path, name: str, config: Path | None, force: bool) -> _Plan:
    mf_path, _ = proven_files(folder, force)
    command = ["ollama", "create", name, "-f", str(mf_path.resolve())]
    if config is None:
        return _Plan(command, None, None)
    source = RunDir(folder).knowledge
    knowledge = (source, knowledge_target(config, name)) if source.is_file() else None
    if knowledge:
        read_text(source)  # UTF-8, as the bot reads it
        _needs_install(*knowledge)
    edit = plan_config_edit(config, name, str(knowledge[1]) if knowledge else None)
    return _Plan(command, knowledge, edit)


def _ollama_create(binary: str, command: list[str], folder: Path) -> None:
    proc = subprocess.run(
        [binary, *command[1:]], cwd=folder, capture_output=True, text=True, check=False
    )
    if proc.returncode:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise MeshtuneError(f"ollama create failed (exit {proc.returncode}): {tail[0]}")


def knowledge_target(config: Path, name: str) -> Path:
    """Where a run's knowledge file is installed: beside the config (a symlink's target), under
    the model's name, so a later deploy never overwrites the file a running model uses."""
    config = output_file(config, "Mesh Master's config.json")  # no folder, FIFO or link loop
    return config.absolute().parent / f"meshtastic_knowledge.{name}.txt"


def _needs_install(source: Path, target: Path) -> bool:
    """Whether `target` is still to be written; a different file already there is refused
    (meshtune never replaces what it did not write)."""
    output_file(target, "the knowledge file")
    if not target.exists():
        return True
    if target.read_bytes() == source.read_bytes():
        return False
    raise MeshtuneError(
        f"{target}: exists with other content; move it away or deploy under another --name"
    )


def _install(source: Path, target: Path) -> bool:
    """Copy the knowledge file into place; True when this call created it."""
    if not _needs_install(source, target):
        return False
    write_files({target: source.read_bytes()}, "the knowledge file")
    return True


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
    """verify.json, if it proved this very Modelfile (sha256) and the very file its FROM names
    (same path, sha256 and size); anything else is refused, --force or not: an export stopped
    during its proof leaves the new GGUF beside the previous proof."""
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
    if file_digest(RunDir(folder).modelfile)[0] != verification.modelfile_sha256:
        raise MeshtuneError(
            f"{folder}/Modelfile: not the Modelfile verify.json proved (it was edited after "
            f"verification, or proved by an older meshtune); {again}"
        )
    if file_digest(target) != (verification.sha256, verification.bytes):
        raise MeshtuneError(
            f"{target}: not the file verify.json proved (its sha256 or size differs: it changed "
            f"after verification, or an export stopped before its proof); {again}"
        )
    return verification
