"""`meshtune deploy RUN --to USER@HOST`: the guide's manual Pi steps over the system's ssh/scp.

Copy the GGUF and Modelfile, `ollama create` there, ask the new model one quick prompt through
the Pi's Ollama exactly as Mesh Master would, and only then point Mesh Master's config.json at
it (a backup beside it) and restart the service. The order is the safety: until the new model
has answered, nothing the bot uses has changed, so any failure leaves the old model and config
in place; a failed restart puts the old config.json back.
"""

import json
import re
import shlex
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from meshtune import meshmaster, modelfile
from meshtune.errors import MeshtuneError
from meshtune.export import check_name, quick_prompts, set_ollama_model
from meshtune.files import read_json

DEFAULT_OLLAMA_URL = "http://localhost:11434/api/generate"
SSH_OPTIONS = ("-o", "BatchMode=yes", "-o", "ConnectTimeout=15")  # never wait on a password
VERIFY_TIMEOUT_S = 300  # a first request loads the model from the Pi's SD card

# Runs on the Pi with its own python3 (Mesh Master needs one): POST the bot's body, read the
# streamed reply, print it as one JSON line; an Ollama error is the last line of stderr.
_POST = """
import json, sys, urllib.error, urllib.request
req = urllib.request.Request(sys.argv[1], data=sys.stdin.buffer.read(),
                             headers={"Content-Type": "application/json"})
parts, final = [], {}
try:
    with urllib.request.urlopen(req, timeout=float(sys.argv[2])) as resp:
        for line in resp:
            if not line.strip():
                continue
            chunk = json.loads(line)
            if "error" in chunk:
                sys.exit("ollama: " + str(chunk["error"]))
            parts.append(chunk.get("response", ""))
            if chunk.get("done"):
                final = chunk
                break
except urllib.error.HTTPError as e:
    sys.exit(f"ollama: HTTP {e.code}: {e.read().decode(errors='replace')[:300]}")
except OSError as e:
    sys.exit(f"ollama: cannot reach {sys.argv[1]}: {e}")
print(json.dumps({"reply": "".join(parts), "done": bool(final),
                  "done_reason": final.get("done_reason"), "eval_count": final.get("eval_count")}))
"""


@dataclass(slots=True)
class RemoteDeployed:
    target: str
    folder: str  # on the Pi
    reply: str | None = None  # the new model's answer to the quick prompt
    config: str | None = None
    backup: str | None = None
    restarted: str | None = None
    steps: list[str] = field(default_factory=list)  # the commands run (or, dry, to be run)


def check_target(to: str) -> str:
    """`[user@]host` as ssh takes it; anything else (an option, a path, spaces) is refused."""
    if not re.fullmatch(r"(?:[A-Za-z0-9._][A-Za-z0-9._-]*@)?[A-Za-z0-9._:\[\]-]+", to) or (
        to.startswith("-")
    ):
        raise MeshtuneError(f"--to {to!r}: expected USER@HOST (e.g. pi@meshpi.local)")
    return to


def remote_path(path: str) -> str:
    """A path for the Pi's shell, quoted; `~/x` becomes `x`, since ssh starts in the home."""
    return shlex.quote(path[2:] if path.startswith("~/") else path)


class Ssh:
    """The system's ssh and scp, with the operator's own -o options (port, key, known hosts)."""

    def __init__(self, target: str, options: Sequence[str], log: Callable[[str], None]):
        self.target = check_target(target)
        self.options: list[str] = []
        for opt in options:
            if "=" not in opt or opt.startswith("-"):
                raise MeshtuneError(f"--ssh-option {opt!r}: expected KEY=VALUE, e.g. Port=2222")
            self.options += ["-o", opt]
        self.log = log

    def ssh_argv(self, command: str) -> list[str]:
        return ["ssh", *SSH_OPTIONS, *self.options, "--", self.target, command]

    def scp_argv(self, files: Sequence[Path], folder: str) -> list[str]:
        dest = f"{self.target}:{remote_path(folder).removesuffix('/')}/"
        return ["scp", "-q", *SSH_OPTIONS, *self.options, *map(str, files), dest]

    def run(self, step: str, argv: list[str], stdin: bytes | None = None) -> str:
        """One step; its failure is a one-line error naming the step and ssh's last words."""
        self.log(f"{step}: {shlex.join(argv)}")
        try:
            proc = subprocess.run(argv, input=stdin, capture_output=True, check=False)
        except FileNotFoundError as e:
            raise MeshtuneError(f"{argv[0]} is not installed here; install openssh-client") from e
        if proc.returncode:
            words = (proc.stderr or proc.stdout).decode(errors="replace").strip().splitlines()
            raise MeshtuneError(
                f"{step} failed on {self.target} (exit {proc.returncode}): "
                f"{words[-1] if words else 'no output'}"
            )
        return proc.stdout.decode(errors="replace")


def _local_files(folder: Path, force: bool) -> tuple[Path, Path]:
    """The run's Modelfile and the GGUF its FROM names, after export's own proof passed."""
    mf_path = folder / "Modelfile"
    if not mf_path.is_file():
        raise MeshtuneError(f"{folder}: no Modelfile; run `meshtune export {folder}` first")
    verification = read_json(folder / "verify.json", f"run `meshtune verify {folder}` first")
    if not verification.get("ok") and not force:
        raise MeshtuneError(
            f"{folder}/verify.json: verification failed; fix the run, or pass --force to deploy "
            "anyway"
        )
    source = modelfile.read(mf_path).first("model")
    gguf = (folder / source.args).resolve() if source else None
    if gguf is None or gguf.parent != folder.resolve() or not gguf.is_file():
        raise MeshtuneError(
            f"{mf_path}: FROM must name a .gguf file in {folder} (it is copied beside the "
            "Modelfile); run `meshtune export` again"
        )
    return mf_path, gguf


def bot_request(name: str, bot: meshmaster.BotConfig) -> dict[str, Any]:
    """Mesh Master's /api/generate body for the guide's first quick prompt, sent as a DM."""
    return meshmaster.build_request(quick_prompts()[0], bot).body(name)


def _read_config(text: str, name: str, where: str) -> tuple[meshmaster.BotConfig, str]:
    """The Pi's config.json as the bot reads it, and its text with only `ollama_model`
    changed (by export's own editor), both from a local copy."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.json"
        path.write_text(text, encoding="utf-8")
        try:
            bot = meshmaster.load_config(path)
            set_ollama_model(path, name)
        except MeshtuneError as e:
            raise MeshtuneError(str(e).replace(str(path), where)) from e
        return bot, path.read_text(encoding="utf-8")


def deploy_remote(
    run_dir: str | Path,
    name: str,
    to: str,
    config: str | None = None,
    restart: str | None = None,
    remote_dir: str | None = None,
    ssh_options: Sequence[str] = (),
    force: bool = False,
    dry_run: bool = False,
    log: Callable[[str], None] = print,
) -> RemoteDeployed:
    folder = Path(run_dir)
    name = check_name(name)
    mf_path, gguf = _local_files(folder, force)
    if restart is not None and not re.fullmatch(r"[A-Za-z0-9@._-]+", restart):
        raise MeshtuneError(f"--restart {restart!r}: expected a systemd service name (mesh-ai)")
    steps: list[str] = []
    ssh = Ssh(to, ssh_options, lambda line: (steps.append(line), log(line)))
    where = remote_dir or f"meshtune-models/{name}"
    result = RemoteDeployed(ssh.target, where, config=config, steps=steps)
    rdir, rconf = remote_path(where), remote_path(config) if config else None
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    backup = f"{config}.{stamp}.bak" if config else None

    if dry_run:
        log("dry run: nothing is copied, created or changed; these steps would run:")
    # 1. What the Pi has: ollama, and the config whose one key will change.
    current: dict[str, Any] = {}
    bot = meshmaster.SHIPPED  # without the Pi's config, the bot as it ships
    if dry_run:
        log(f"check ollama: {shlex.join(ssh.ssh_argv('command -v ollama'))}")
    else:
        ssh.run("check ollama", ssh.ssh_argv("command -v ollama"))
    new_text = None
    if config and not dry_run:
        text = ssh.run("read config.json", ssh.ssh_argv(f"cat -- {rconf}"))
        where_conf = f"{ssh.target}:{config}"
        bot, new_text = _read_config(text, name, where_conf)
        current = json.loads(text)
        if current.get("ollama_model") == name:
            raise MeshtuneError(
                f"{where_conf}: ollama_model is already {name!r}; deploy under a new --name "
                f"(e.g. {name}-2) so the running model stays until the new one has answered"
            )
    elif config:
        log(f"read config.json: {shlex.join(ssh.ssh_argv(f'cat -- {rconf}'))}")

    # 2. Copy, create, and ask: nothing the bot uses has changed yet.
    commands = [
        ("make the model folder", ssh.ssh_argv(f"mkdir -p -- {rdir}"), None),
        ("copy GGUF and Modelfile", ssh.scp_argv([gguf, mf_path], where), None),
        ("ollama create", ssh.ssh_argv(f"cd -- {rdir} && ollama create {name} -f Modelfile"), None),
    ]
    url = str(current.get("ollama_url") or DEFAULT_OLLAMA_URL)
    body = json.dumps(bot_request(name, bot)).encode()
    post = f"python3 -c {shlex.quote(_POST)} {shlex.quote(url)} {VERIFY_TIMEOUT_S}"
    commands.append(("ask the new model", ssh.ssh_argv(post), body))
    for step, argv, stdin in commands:
        if dry_run:
            shown = (
                shlex.join(argv)
                if step != "ask the new model"
                else (f"ssh {ssh.target} python3 (POST {url}): {body.decode()}")
            )
            log(f"{step}: {shown}")
            continue
        out = ssh.run(step, argv, stdin)
        if step == "ask the new model":
            answer = json.loads(out.strip().splitlines()[-1])
            if not answer["done"] or not answer["reply"].strip():
                raise MeshtuneError(
                    f"{url} on {ssh.target}: {name} gave no reply to the quick prompt; "
                    "config.json was not changed"
                )
            result.reply = answer["reply"]
            log(f"  {name} answered: {answer['reply']!r}")

    # 3. Point the bot at it: backup, then an atomic replace of config.json.
    if config:
        tmp = remote_path(f"{config}.meshtune-tmp")
        swap = (
            f"cp -p -- {rconf} {remote_path(backup or '')} && "
            f"{{ cat > {tmp} && chmod --reference={rconf} -- {tmp} && mv -- {tmp} {rconf}; }} "
            f"|| {{ rm -f -- {tmp}; exit 1; }}"
        )
        if dry_run:
            log(f"set ollama_model: {shlex.join(ssh.ssh_argv(swap))}")
        else:
            ssh.run("set ollama_model", ssh.ssh_argv(swap), (new_text or "").encode())
        result.backup = backup
    # 4. Restart the bot; if it will not, the old config goes back.
    if restart:
        argv = ssh.ssh_argv(f"sudo -n systemctl restart {restart}")
        if dry_run:
            log(f"restart {restart}: {shlex.join(argv)}")
        else:
            try:
                ssh.run(f"restart {restart}", argv)
            except MeshtuneError as e:
                if config:
                    restore = f"cp -p -- {remote_path(backup or '')} {rconf}"
                    ssh.run("restore config.json", ssh.ssh_argv(restore))
                    raise MeshtuneError(f"{e}; config.json restored from {backup}") from e
                raise
        result.restarted = restart
    return result
