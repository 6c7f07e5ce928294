"""`meshtune deploy RUN --to USER@HOST`: the guide's manual Pi steps over the system's ssh/scp.

Copy the GGUF and Modelfile, `ollama create` there, ask the new model one quick prompt through
the Pi's Ollama exactly as Mesh Master would, and only then point Mesh Master's config.json at
it (a backup beside it) and restart the service. The order is the safety: until the new model
has answered, nothing the bot uses has changed, so any failure leaves the old model and config
in place; a failed restart puts the old config.json back. The config is edited byte for byte
as locally (config_edit), in the file a symlink names, with a backup created exclusively.
"""

import hashlib
import json
import re
import shlex
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshtune import meshmaster
from meshtune.errors import MeshtuneError
from meshtune.export import config_edit
from meshtune.export.deploy import check_name, proven_files
from meshtune.export.proof import quick_prompts
from meshtune.files import read_text
from meshtune.rundir import RunDir

DEFAULT_OLLAMA_URL = "http://localhost:11434/api/generate"
# Never wait on a password; a Pi that stops answering (mid-session too) ends the step in ~1 min.
SSH_OPTIONS = ("-o", "BatchMode=yes", "-o", "ConnectTimeout=15", "-o", "ServerAliveInterval=15",
               "-o", "ServerAliveCountMax=4")  # fmt: skip
VERIFY_TIMEOUT_S = 300  # a first request loads the model from the Pi's SD card
# How long a step may take in all, even on a live connection (a command that never returns).
STEP_TIMEOUT_S = {"ollama create": 1800.0, "ask the new model": VERIFY_TIMEOUT_S + 60.0}
DEFAULT_STEP_TIMEOUT_S = 120.0
COPY_BYTES_PER_S = 64 * 1024  # the slowest link a copy is given time for (plus 60 s)

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

# Runs on the Pi: replace CONFIG's file (a symlink's target) with stdin's bytes, if it still
# holds what was read (sha256 OLD); with `backup`, first copy it to a .bak name created
# exclusively (never overwriting another deploy's backup). Prints the backup's path.
_SWAP = """
import hashlib, os, shutil, sys, time
config, old, mode = sys.argv[1:4]
new = sys.stdin.buffer.read()
target = os.path.realpath(config)
with open(target, "rb") as f:
    if hashlib.sha256(f.read()).hexdigest() != old:
        sys.exit(config + " changed since it was read; run deploy again")
folder, name = os.path.split(target)
backup = ""
if mode == "backup":
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    for n in range(1, 1000):
        backup = os.path.join(folder, name + "." + stamp + ("" if n == 1 else "-%d" % n) + ".bak")
        try:
            fd = os.open(backup, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        with os.fdopen(fd, "wb") as out, open(target, "rb") as src:
            shutil.copyfileobj(src, out)
        shutil.copystat(target, backup)
        break
    else:
        sys.exit("999 backups of " + config + " this second; remove old .bak files")
tmp = os.path.join(folder, "." + name + ".meshtune-tmp%d" % os.getpid())
try:
    with open(tmp, "xb") as out:
        out.write(new)
        out.flush()
        os.fsync(out.fileno())
    shutil.copymode(target, tmp)
    os.replace(tmp, target)
finally:
    if os.path.exists(tmp):
        os.unlink(tmp)
print(backup)
"""


@dataclass(slots=True)
class RemoteDeployed:
    target: str
    folder: str  # on the Pi
    reply: str | None = None  # the new model's answer to the quick prompt
    config: str | None = None
    backup: str | None = None  # on the Pi, beside config.json's file
    knowledge: str | None = None  # the knowledge file on the Pi, when the run has one
    restarted: str | None = None


@dataclass(frozen=True, slots=True)
class Step:
    """One command run here (ssh or scp), and how it is printed."""

    name: str
    argv: list[str]
    stdin: bytes | None = None
    shown: str | None = None  # instead of the argv, where that is a script
    timeout_s: float = DEFAULT_STEP_TIMEOUT_S

    def line(self) -> str:
        return f"{self.name}: {self.shown or shlex.join(self.argv)}"


def check_target(to: str) -> str:
    """`[user@]host` as ssh takes it; anything else (an option, a path, spaces) is refused."""
    if to.startswith("-") or not re.fullmatch(
        r"(?:[A-Za-z0-9._][A-Za-z0-9._-]*@)?[A-Za-z0-9._\[\]:-]+", to
    ):
        raise MeshtuneError(f"--to {to!r}: expected USER@HOST (e.g. pi@meshpi.local)")
    return to


def remote_path(path: str, option: str) -> str:
    """A path on the Pi, relative to the home (where ssh starts) for `~/x`. Plain characters
    only, so the same text is right for the Pi's shell and for scp."""
    if not re.fullmatch(r"[A-Za-z0-9._/~+-]+", path) or path.startswith("-"):
        raise MeshtuneError(
            f"{option} {path!r}: use letters, digits and . _ / ~ + - in paths on the Pi"
        )
    return path[2:] if path.startswith("~/") else path


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

    def step(self, name: str, command: str, stdin: bytes | None = None, shown: str = "") -> Step:
        argv = ["ssh", *self.options, *SSH_OPTIONS, "--", self.target, command]
        timeout = STEP_TIMEOUT_S.get(name, DEFAULT_STEP_TIMEOUT_S)
        return Step(name, argv, stdin, shown or None, timeout)

    def copy(self, files: Sequence[Path], folder: str) -> Step:
        what = "GGUF and Modelfile" if len(files) == 2 else "GGUF, Modelfile and knowledge file"
        argv = [
            "scp",
            "-q",
            *self.options,
            *SSH_OPTIONS,
            *map(str, files),
            f"{self.target}:{folder}/",
        ]
        size = sum(f.stat().st_size for f in files)
        return Step(f"copy {what}", argv, timeout_s=60 + size / COPY_BYTES_PER_S)

    def run(self, step: Step) -> bytes:
        """One step; its failure is a one-line error naming the step and ssh's last words."""
        self.log(step.line())
        try:
            proc = subprocess.run(
                step.argv, input=step.stdin, capture_output=True, check=False,
                timeout=step.timeout_s,
            )  # fmt: skip
        except FileNotFoundError as e:
            raise MeshtuneError(
                f"{step.argv[0]} is not installed here; install openssh-client"
            ) from e
        except subprocess.TimeoutExpired as e:
            raise MeshtuneError(
                f"{step.name} on {self.target}: no end after {step.timeout_s:g} s (the command "
                "did not return); check the Pi, then run deploy again"
            ) from e
        if proc.returncode:
            words = (proc.stderr or proc.stdout).decode(errors="replace").strip().splitlines()
            raise MeshtuneError(
                f"{step.name} failed on {self.target} (exit {proc.returncode}): "
                f"{words[-1] if words else 'no output'}"
            )
        return proc.stdout


def _local_files(folder: Path, force: bool) -> tuple[Path, Path]:
    """The run's proven Modelfile and GGUF (export.proven_files), which must lie side by side:
    they are copied into one folder on the Pi."""
    mf_path, gguf = proven_files(folder, force)
    if gguf.resolve().parent != folder.resolve():
        raise MeshtuneError(
            f"{mf_path}: FROM must name a .gguf file in {folder} (it is copied beside the "
            "Modelfile); run `meshtune export` again"
        )
    return mf_path, gguf.resolve()


def bot_request(name: str, bot: meshmaster.BotConfig) -> dict[str, Any]:
    """Mesh Master's /api/generate body for the guide's first quick prompt, sent as a DM."""
    return meshmaster.build_request(quick_prompts()[0], bot).body(name)


@dataclass(frozen=True, slots=True)
class PiConfig:
    """The Pi's config.json as the bot reads it, its bytes, and its new bytes with only the
    deploy's values changed."""

    bot: meshmaster.BotConfig
    url: str
    old: bytes
    new: bytes


def read_config(data: bytes, name: str, knowledge: str | None, where: str) -> PiConfig:
    """Edit the bytes read from the Pi (config_edit, which refuses the name the bot runs now)
    and parse them with meshmaster's reader, from a local UTF-8 copy."""
    new = config_edit.deploy_edit(data, name, knowledge, where)
    decoded, raw = config_edit.parse(data, where)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.json"
        path.write_text(decoded.text, encoding="utf-8")
        try:
            bot = meshmaster.load_config(path)
        except MeshtuneError as e:
            raise MeshtuneError(str(e).replace(str(path), where)) from e
    return PiConfig(bot, str(raw.get("ollama_url") or DEFAULT_OLLAMA_URL), data, new)


def ask_step(ssh: Ssh, name: str, bot: meshmaster.BotConfig, url: str) -> Step:
    body = json.dumps(bot_request(name, bot)).encode()
    command = f"python3 -c {shlex.quote(_POST)} {shlex.quote(url)} {VERIFY_TIMEOUT_S}"
    shown = f"ssh {ssh.target} python3: POST {url} {body.decode()}"
    return ssh.step("ask the new model", command, body, shown)


def swap_step(ssh: Ssh, name: str, config: str, old: bytes, new: bytes, backup: bool) -> Step:
    """Replace config.json's file with `new` if it still holds `old`, a backup first."""
    script = shlex.quote(_SWAP)
    digest = hashlib.sha256(old).hexdigest()
    mode = "backup" if backup else "no-backup"
    command = f"python3 -c {script} {config} {digest} {mode}"
    shown = f"ssh {ssh.target} python3: back up {config} (a new .bak), then replace it"
    return ssh.step(name, command, new, shown)


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
    """Every input is checked before the first connection; then the steps run in the order
    that keeps the bot on its old model and config until the new model has answered."""
    name = check_name(name)
    mf_path, gguf = _local_files(Path(run_dir), force)
    knowledge = _knowledge(Path(run_dir))
    if restart is not None and not re.fullmatch(r"[A-Za-z0-9@._-]+", restart):
        raise MeshtuneError(f"--restart {restart!r}: expected a systemd service name (mesh-ai)")
    ssh = Ssh(to, ssh_options, log)
    folder = remote_path(remote_dir or f"meshtune-models/{name}", "--remote-dir")
    conf = remote_path(config, "--mesh-master-config") if config else None
    result = RemoteDeployed(ssh.target, folder, config=config)
    check = ssh.step("check ollama", "command -v ollama && pwd")  # pwd: the home, for paths
    read = ssh.step("read config.json", f"cat -- {conf}") if conf else None
    install = [
        ssh.step("make the model folder", f"mkdir -p -- {folder}"),
        ssh.copy([gguf, mf_path, *([knowledge] if knowledge else [])], folder),
        ssh.step("ollama create", f"cd -- {folder} && ollama create {name} -f Modelfile"),
    ]
    set_keys = "set ollama_model" + (" and meshtastic_knowledge_file" if knowledge else "")
    restart_step = ssh.step(f"restart {restart}", f"sudo -n systemctl restart {restart}")
    if dry_run:
        log("dry run: nothing is copied, created or changed; these steps would run:")
        url = "the config's ollama_url" if conf else DEFAULT_OLLAMA_URL
        steps = [check, read, *install, ask_step(ssh, name, meshmaster.SHIPPED, url)]
        if conf:
            steps.append(swap_step(ssh, set_keys, conf, b"", b"", backup=True))
        steps.append(restart_step if restart else None)
        for step in steps:
            if step is not None:
                log(step.line())
        return result

    home = ssh.run(check).decode(errors="replace").strip().splitlines()[-1]
    if knowledge:
        base = folder if folder.startswith("/") else f"{home}/{folder}"
        result.knowledge = f"{base}/{knowledge.name}"
    where = f"{ssh.target}:{config}"
    pi = read_config(ssh.run(read), name, result.knowledge, where) if read else None
    for step in install:
        ssh.run(step)
    result.reply = _ask(ssh, name, pi)
    log(f"  {name} answered: {result.reply!r}")
    if pi and conf:
        out = ssh.run(swap_step(ssh, set_keys, conf, pi.old, pi.new, backup=True))
        result.backup = out.decode(errors="replace").strip().splitlines()[-1]
    if restart:
        try:
            ssh.run(restart_step)
        except MeshtuneError as e:
            if not (pi and conf):
                raise
            ssh.run(swap_step(ssh, "restore config.json", conf, pi.new, pi.old, backup=False))
            raise MeshtuneError(f"{e}; config.json restored from {result.backup}") from e
        result.restarted = restart
    return result


def _knowledge(run: Path) -> Path | None:
    """The run's knowledge file, copied beside the model on the Pi (UTF-8, as the bot reads)."""
    path = RunDir(run).knowledge
    if not path.is_file():
        return None
    read_text(path)
    return path


def _ask(ssh: Ssh, name: str, pi: PiConfig | None) -> str:
    """The new model's reply to the quick prompt, sent as the bot sends it; none is an error
    before config.json changes."""
    url = pi.url if pi else DEFAULT_OLLAMA_URL
    out = ssh.run(ask_step(ssh, name, pi.bot if pi else meshmaster.SHIPPED, url))
    lines = out.decode(errors="replace").split("\n")
    answer = json.loads(lines[-2] if len(lines) > 1 else "{}")  # the script's last line
    if not answer.get("done") or not answer.get("reply", "").strip():
        raise MeshtuneError(
            f"{url} on {ssh.target}: {name} gave no reply to the quick prompt; config.json was "
            "not changed"
        )
    return answer["reply"]
