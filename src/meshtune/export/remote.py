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
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from meshtune import meshmaster
from meshtune.errors import MeshtuneError
from meshtune.export.deploy import check_name, proven_files, set_ollama_model
from meshtune.export.proof import quick_prompts

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


@dataclass(frozen=True, slots=True)
class Step:
    """One command run here (ssh or scp), and how it is printed."""

    name: str
    argv: list[str]
    stdin: bytes | None = None
    shown: str | None = None  # instead of the argv, where that is a script

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
        argv = ["ssh", *SSH_OPTIONS, *self.options, "--", self.target, command]
        return Step(name, argv, stdin, shown or None)

    def copy(self, files: Sequence[Path], folder: str) -> Step:
        argv = [
            "scp",
            "-q",
            *SSH_OPTIONS,
            *self.options,
            *map(str, files),
            f"{self.target}:{folder}/",
        ]
        return Step("copy GGUF and Modelfile", argv)

    def run(self, step: Step) -> str:
        """One step; its failure is a one-line error naming the step and ssh's last words."""
        self.log(step.line())
        try:
            proc = subprocess.run(step.argv, input=step.stdin, capture_output=True, check=False)
        except FileNotFoundError as e:
            raise MeshtuneError(
                f"{step.argv[0]} is not installed here; install openssh-client"
            ) from e
        if proc.returncode:
            words = (proc.stderr or proc.stdout).decode(errors="replace").strip().splitlines()
            raise MeshtuneError(
                f"{step.name} failed on {self.target} (exit {proc.returncode}): "
                f"{words[-1] if words else 'no output'}"
            )
        return proc.stdout.decode(errors="replace")


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
    """The Pi's config.json as the bot reads it, and its text with only `ollama_model` set."""

    bot: meshmaster.BotConfig
    url: str
    new_text: str


def read_config(text: str, name: str, where: str) -> PiConfig:
    """Parse and edit a local copy, with meshmaster's reader and export's own editor; refuse
    the name the bot runs now, which `ollama create` would overwrite before it is proven."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.json"
        path.write_text(text, encoding="utf-8")
        try:
            bot = meshmaster.load_config(path)
            set_ollama_model(path, name)
        except MeshtuneError as e:
            raise MeshtuneError(str(e).replace(str(path), where)) from e
        new_text = path.read_text(encoding="utf-8")
    raw = json.loads(text)
    if raw.get("ollama_model") == name:
        raise MeshtuneError(
            f"{where}: ollama_model is already {name!r}; deploy under a new --name (e.g. "
            f"{name}-2) so the running model stays until the new one has answered"
        )
    return PiConfig(bot, str(raw.get("ollama_url") or DEFAULT_OLLAMA_URL), new_text)


def ask_step(ssh: Ssh, name: str, bot: meshmaster.BotConfig, url: str) -> Step:
    body = json.dumps(bot_request(name, bot)).encode()
    command = f"python3 -c {shlex.quote(_POST)} {shlex.quote(url)} {VERIFY_TIMEOUT_S}"
    shown = f"ssh {ssh.target} python3: POST {url} {body.decode()}"
    return ssh.step("ask the new model", command, body, shown)


def swap_step(ssh: Ssh, config: str, backup: str, new_text: str) -> Step:
    """Back up config.json (mode and time kept), then replace it atomically (rename)."""
    tmp = f"{config}.meshtune-tmp"
    command = (
        f"cp -p -- {config} {backup} && "
        f"{{ cat > {tmp} && chmod --reference={config} -- {tmp} && mv -- {tmp} {config}; }} "
        f"|| {{ rm -f -- {tmp}; exit 1; }}"
    )
    return ssh.step("set ollama_model", command, new_text.encode())


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
    if restart is not None and not re.fullmatch(r"[A-Za-z0-9@._-]+", restart):
        raise MeshtuneError(f"--restart {restart!r}: expected a systemd service name (mesh-ai)")
    ssh = Ssh(to, ssh_options, log)
    folder = remote_path(remote_dir or f"meshtune-models/{name}", "--remote-dir")
    conf = remote_path(config, "--mesh-master-config") if config else None
    stamp = f"{datetime.now(UTC):%Y%m%d-%H%M%S}"
    backup = f"{conf}.{stamp}.bak" if conf else None
    result = RemoteDeployed(ssh.target, folder, config=config)
    check = ssh.step("check ollama", "command -v ollama")
    read = ssh.step("read config.json", f"cat -- {conf}") if conf else None
    install = [
        ssh.step("make the model folder", f"mkdir -p -- {folder}"),
        ssh.copy([gguf, mf_path], folder),
        ssh.step("ollama create", f"cd -- {folder} && ollama create {name} -f Modelfile"),
    ]
    restart_step = ssh.step(f"restart {restart}", f"sudo -n systemctl restart {restart}")

    if dry_run:
        log("dry run: nothing is copied, created or changed; these steps would run:")
        url = "the config's ollama_url" if conf else DEFAULT_OLLAMA_URL
        steps = [check, read, *install, ask_step(ssh, name, meshmaster.SHIPPED, url)]
        if conf and backup:
            steps.append(swap_step(ssh, conf, backup, "<config.json with ollama_model set>"))
        steps.append(restart_step if restart else None)
        for step in steps:
            if step is not None:
                log(step.line())
        return result

    ssh.run(check)
    pi = read_config(ssh.run(read), name, f"{ssh.target}:{config}") if read else None
    for step in install:
        ssh.run(step)
    url = pi.url if pi else DEFAULT_OLLAMA_URL
    out = ssh.run(ask_step(ssh, name, pi.bot if pi else meshmaster.SHIPPED, url)).split("\n")
    answer = json.loads(out[-2] if len(out) > 1 else "{}")  # the script's last line
    if not answer.get("done") or not answer.get("reply", "").strip():
        raise MeshtuneError(
            f"{url} on {ssh.target}: {name} gave no reply to the quick prompt; config.json was "
            "not changed"
        )
    result.reply = answer["reply"]
    log(f"  {name} answered: {answer['reply']!r}")
    if pi and conf and backup:
        ssh.run(swap_step(ssh, conf, backup, pi.new_text))
        result.backup = f"{config}.{stamp}.bak"
    if restart:
        try:
            ssh.run(restart_step)
        except MeshtuneError as e:
            if not (conf and backup):
                raise
            ssh.run(ssh.step("restore config.json", f"cp -p -- {backup} {conf}"))
            raise MeshtuneError(f"{e}; config.json restored from {result.backup}") from e
        result.restarted = restart
    return result
