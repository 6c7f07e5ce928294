"""`meshtune deploy RUN --to USER@HOST` against a real OpenSSH server on loopback.

The test starts Debian's sshd on a free port with a temporary host key and authorized key, as
the current user. On the "Pi" side the ssh session's PATH begins with stand-ins: `ollama` (its
`create` checks the Modelfile's FROM file and records the model), `sudo` and `systemctl` (they
record the restart), and the Pi's Ollama API is a stand-in HTTP server on loopback that answers
only models the stand-in created. Everything else (ssh, scp, the remote shell, python3, the
file copies, the config.json edit) is real.
"""

import getpass
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from tests.conftest import CONFIG_VARIANTS, REPO, config_bytes

from meshtune import meshmaster
from meshtune.export import remote
from meshtune.export.proof import file_digest, quick_prompts
from meshtune.rundir import RunDir

SSHD = Path("/usr/sbin/sshd")
RUN = REPO / "reports" / "embedded-cpu-run"  # a real export's Modelfile and verify.json
GGUF = next(
    line.split("./", 1)[1]
    for line in (RUN / "Modelfile").read_text().splitlines()
    if line.startswith("FROM ./")
)

STANDIN_OLLAMA = """#!/bin/sh
# stand-in for ollama: `create NAME -f Modelfile` checks FROM's file and records NAME
[ "$1" = create ] || { echo "stand-in ollama: only create" >&2; exit 2; }
[ -f "$STANDIN/fail-create" ] && { echo "Error: stand-in refuses to create $2" >&2; exit 1; }
[ -f "$STANDIN/hang-create" ] && sleep 20
from=$(sed -n 's|^FROM \\./||p' "$4")
[ -f "$from" ] || { echo "Error: no such file $from" >&2; exit 1; }
echo "$2 $(pwd)" >> "$STANDIN/created"
"""
STANDIN_SUDO = '#!/bin/sh\n[ "$1" = -n ] && shift\nexec "$@"\n'
STANDIN_SYSTEMCTL = """#!/bin/sh
echo "$*" >> "$STANDIN/systemctl"
[ -f "$STANDIN/fail-restart" ] && { echo "Job for $2.service failed" >&2; exit 1; }
exit 0
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Pi:
    """The loopback "Pi": where its files live and what its stand-ins recorded."""

    home: Path  # the standin folder: created models, restarts, failure switches
    config: Path
    ssh_options: list[str]
    target: str
    requests: list[dict] = field(default_factory=list)  # bodies the Ollama stand-in received

    def created(self) -> list[str]:
        path = self.home / "created"
        return path.read_text().splitlines() if path.exists() else []

    def restarts(self) -> list[str]:
        path = self.home / "systemctl"
        return path.read_text().splitlines() if path.exists() else []

    def fail(self, what: str) -> None:
        (self.home / f"fail-{what}").touch()

    def hang(self, what: str) -> None:
        (self.home / f"hang-{what}").touch()


def _ollama_standin(pi: Pi) -> ThreadingHTTPServer:
    """A stand-in for the Pi's Ollama API: streams a reply for a model the stand-in `ollama
    create` made, and answers 404 like Ollama for any other."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            pi.requests.append(body)
            known = {line.split()[0] for line in pi.created()}
            if self.path != "/api/generate":
                self._send(404, [{"error": "404 page not found"}])
            elif body["model"] not in known:
                self._send(404, [{"error": f"model '{body['model']}' not found"}])
                return
            self._send(
                200,
                [
                    {"response": "Hi! I'm Mesh Master", "done": False},
                    {
                        "response": ", the mesh's AI.",
                        "done": True,
                        "done_reason": "stop",
                        "eval_count": 9,
                    },
                ],
            )

        def _send(self, code: int, chunks: list[dict]) -> None:
            data = b"".join(json.dumps(c).encode() + b"\n" for c in chunks)
            self.send_response(code)
            self.send_header("Content-Type", "application/x-ndjson")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    return ThreadingHTTPServer(("127.0.0.1", 0), Handler)


@pytest.fixture
def pi(tmp_path: Path) -> Iterator[Pi]:
    assert SSHD.exists(), "openssh-server is missing: `make sshd` installs it"
    if os.geteuid() == 0:  # sshd's privilege separation folder, made at boot by systemd
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    keys, home, bin_ = tmp_path / "keys", tmp_path / "pi", tmp_path / "pi-bin"
    for d in (keys, home, bin_):
        d.mkdir()
    for name, text in {
        "ollama": STANDIN_OLLAMA,
        "sudo": STANDIN_SUDO,
        "systemctl": STANDIN_SYSTEMCTL,
    }.items():
        (bin_ / name).write_text(text)
        (bin_ / name).chmod(0o755)
    for key in ("host", "user"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", keys / key], check=True
        )
    shutil.copy(keys / "user.pub", keys / "authorized_keys")
    port = _free_port()
    (keys / "known_hosts").write_text(f"[127.0.0.1]:{port} {(keys / 'host.pub').read_text()}")
    (keys / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {keys / 'host'}\n"
        f"PidFile {keys / 'sshd.pid'}\nAuthorizedKeysFile {keys / 'authorized_keys'}\n"
        "PubkeyAuthentication yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n"
        "Subsystem sftp /usr/lib/openssh/sftp-server\n"
        f"SetEnv PATH={bin_}:/usr/bin:/bin STANDIN={home}\n"
    )
    sshd = subprocess.Popen([SSHD, "-D", "-e", "-f", keys / "sshd_config"], stderr=subprocess.PIPE)
    config = home / "config.json"
    pi = Pi(
        home,
        config,
        [
            f"Port={port}",
            f"IdentityFile={keys / 'user'}",
            "IdentitiesOnly=yes",
            f"UserKnownHostsFile={keys / 'known_hosts'}",
            "StrictHostKeyChecking=yes",
        ],
        f"{getpass.getuser()}@127.0.0.1",
    )
    api = _ollama_standin(pi)
    threading.Thread(target=api.serve_forever, daemon=True).start()
    shipped = json.loads((REPO.parent / "shared/real/mesh-master-config.json").read_text())
    shipped["ollama_url"] = f"http://127.0.0.1:{api.server_port}/api/generate"
    config.write_text(json.dumps(shipped, indent=2, ensure_ascii=False) + "\n")
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                    if s.recv(64).startswith(b"SSH-"):
                        break
            except OSError:
                pass
            assert sshd.poll() is None, sshd.stderr.read().decode()
            assert time.monotonic() < deadline, "sshd did not start"
            time.sleep(0.1)
        yield pi
    finally:
        api.shutdown()
        sshd.terminate()
        sshd.wait(10)


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """An exported run: the real embedded run's Modelfile, and bytes standing in for its GGUF
    (the stand-in ollama only checks that FROM's file arrived) with a verify.json made to prove
    those bytes (sha256 and size), since deploy ships nothing else."""
    run = tmp_path / "run1"
    run.mkdir()
    for name in ("Modelfile", "verify.json", "export.json"):
        shutil.copy(RUN / name, run / name)
    gguf = run / GGUF
    gguf.write_bytes(b"GGUF" + os.urandom(4096))
    prove(run)
    return run


def prove(run: Path) -> None:
    """verify.json made to prove the run's GGUF bytes and Modelfile as they are now."""
    digest, size = file_digest(run / GGUF)
    proof = RunDir(run).load_verification()
    proof.gguf, proof.sha256, proof.bytes = GGUF, digest, size
    proof.modelfile_sha256 = file_digest(run / "Modelfile")[0]
    proof.save(RunDir(run).verification)


def test_a_gguf_that_is_not_the_proved_one_is_never_shipped(cli, run_dir, tmp_path):
    (run_dir / GGUF).write_bytes(b"GGUF changed after the proof")
    r = cli("deploy", run_dir, "--name", "meshtune-v2", "--to", "pi@127.0.0.1", "--dry-run")
    assert r.code == 2 and "not the file verify.json proved" in r.err


def deploy(cli, pi: Pi, run: Path, *extra: str, name: str = "meshtune-v2"):
    opts = [x for o in pi.ssh_options for x in ("--ssh-option", o)]
    return cli(
        "deploy",
        run,
        "--name",
        name,
        "--to",
        pi.target,
        "--remote-dir",
        pi.home / "models" / name,
        "--mesh-master-config",
        pi.config,
        *opts,
        *extra,
    )


def test_deploy_to_copies_creates_asks_and_changes_one_key_via_real_sshd_and_standin_ollama(
    cli, pi: Pi, run_dir: Path
):
    before = pi.config.read_text()
    (pi.home / "config-before.json").write_text(before)
    r = deploy(cli, pi, run_dir, "--restart", "mesh-ai")
    assert r.code == 0, r.err
    folder = pi.home / "models" / "meshtune-v2"
    for name in (GGUF, "Modelfile"):  # copied byte for byte
        assert (folder / name).read_bytes() == (run_dir / name).read_bytes()
    assert pi.created() == [f"meshtune-v2 {folder}"]  # created in the Modelfile's folder
    # the bot's own request reached the Pi's Ollama: its prompt and options, the config's num_ctx
    shipped = json.loads(before)
    (body,) = pi.requests
    as_read = meshmaster.load_config(pi.home / "config-before.json")
    assert body == meshmaster.build_request(quick_prompts()[0], as_read).body("meshtune-v2")
    assert body["stream"] is True and body["options"]["num_ctx"] == shipped["ollama_num_ctx"]
    # config.json: a byte-exact backup, and only ollama_model changed
    (backup,) = pi.home.glob("config.json.*.bak")
    assert backup.read_text() == before
    after = json.loads(pi.config.read_text())
    assert after == {**shipped, "ollama_model": "meshtune-v2"}
    assert pi.config.read_text() == before.replace('"llama3.2:1b"', '"meshtune-v2"')
    assert pi.restarts() == ["restart mesh-ai"]
    assert "Mesh Master, the mesh's AI." in r.out and f"backup: {backup}" in r.out


def test_failed_create_by_standin_ollama_leaves_old_model_and_config_in_place(
    cli, pi: Pi, run_dir: Path
):
    before = pi.config.read_text()
    pi.fail("create")
    r = deploy(cli, pi, run_dir, "--restart", "mesh-ai")
    assert r.code == 2
    assert "ollama create failed" in r.err and "stand-in refuses to create" in r.err
    assert pi.config.read_text() == before and not list(pi.home.glob("config.json.*"))
    assert pi.requests == [] and pi.restarts() == []


def test_a_model_the_standin_ollama_api_does_not_serve_leaves_config_in_place(
    cli, pi: Pi, run_dir: Path
):
    before = pi.config.read_text()
    pi.config.write_text(before.replace("/api/generate", "/nowhere"))  # the API answers 404
    before = pi.config.read_text()
    r = deploy(cli, pi, run_dir)
    assert r.code == 2 and "ask the new model failed" in r.err and "404" in r.err
    assert pi.config.read_text() == before and not list(pi.home.glob("config.json.*"))


def test_failed_restart_by_standin_systemctl_puts_the_old_config_back(cli, pi: Pi, run_dir: Path):
    before = pi.config.read_text()
    pi.fail("restart")
    r = deploy(cli, pi, run_dir, "--restart", "mesh-ai")
    assert r.code == 2 and "restart mesh-ai failed" in r.err and "restored" in r.err
    assert pi.config.read_text() == before
    assert pi.restarts() == ["restart mesh-ai"]


def test_the_running_model_name_is_refused_so_standin_ollama_never_overwrites_it(cli, pi, run_dir):
    pi.config.write_text(pi.config.read_text().replace('"llama3.2:1b"', '"meshtune-v1"'))
    before = pi.config.read_text()
    r = deploy(cli, pi, run_dir, name="meshtune-v1")
    assert r.code == 2 and "already 'meshtune-v1'" in r.err and "new --name" in r.err
    assert pi.created() == [] and pi.config.read_text() == before


def test_dry_run_prints_every_step_and_connects_nowhere(cli, tmp_path: Path, run_dir: Path):
    r = cli(
        "deploy",
        run_dir,
        "--name",
        "meshtune-v2",
        "--to",
        "pi@meshpi.invalid",
        "--mesh-master-config",
        "~/mesh-master/config.json",
        "--restart",
        "mesh-ai",
        "--dry-run",
    )
    assert r.code == 0, r.err
    steps = [line.split(":")[0] for line in r.out.splitlines()[1:]]
    assert steps == [
        "check ollama",
        "read config.json",
        "make the model folder",
        "copy GGUF and Modelfile",
        "ollama create",
        "ask the new model",
        "set ollama_model",
        "restart mesh-ai",
    ]
    assert "scp -q" in r.out and "pi@meshpi.invalid:meshtune-models/meshtune-v2/" in r.out
    assert "cd -- meshtune-models/meshtune-v2 && ollama create meshtune-v2" in r.out
    assert "back up mesh-master/config.json (a new .bak), then replace it" in r.out
    assert "sudo -n systemctl restart mesh-ai" in r.out


@pytest.mark.parametrize("to", ["-oProxyCommand=x", "pi@host name", "pi@host:/tmp"])
def test_a_target_that_is_not_user_at_host_is_refused(cli, run_dir: Path, to: str):
    r = cli("deploy", run_dir, "--name", "m", "--to", to, "--dry-run")
    assert r.code == 2 and "expected USER@HOST" in r.err


# --- Issue 22: the Pi's config.json edited byte for byte, backups created exclusively ----------


@pytest.mark.parametrize("kind", CONFIG_VARIANTS)
@pytest.mark.parametrize("symlinked", [False, True], ids=["file", "symlink"])
def test_deploy_to_changes_only_the_ollama_model_bytes_of_the_pis_config(
    cli, pi: Pi, run_dir: Path, kind: str, symlinked: bool
):
    before = config_bytes(pi.config.read_text(), kind)
    target = pi.config
    if symlinked:  # config.json a link into the bot's folder, as some Pis keep it
        target = pi.home / "mesh-master" / "config.json"
        target.parent.mkdir()
        pi.config.unlink()
        pi.config.symlink_to(target)
    target.write_bytes(before)
    r = deploy(cli, pi, run_dir)
    assert r.code == 0, r.err
    assert target.read_bytes() == before.replace(b'"llama3.2:1b"', b'"meshtune-v2"')
    assert pi.config.is_symlink() == symlinked
    (backup,) = target.parent.glob("config.json.*.bak")  # beside the file the link names
    assert backup.read_bytes() == before


def test_deploy_to_never_overwrites_a_backup_of_the_same_second(cli, pi: Pi, run_dir: Path):
    before = pi.config.read_bytes()
    now = time.time()
    theirs = {}
    for dt in range(0, 60):  # every name this deploy could take in the next minute
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now + dt))
        theirs[pi.home / f"config.json.{stamp}.bak"] = f"another deploy's backup {dt}\n".encode()
    for path, data in theirs.items():
        path.write_bytes(data)
    r = deploy(cli, pi, run_dir)
    assert r.code == 0, r.err
    assert all(path.read_bytes() == data for path, data in theirs.items())
    (ours,) = [p for p in pi.home.glob("config.json.*.bak") if p not in theirs]
    assert ours.name.endswith("-2.bak") and ours.read_bytes() == before
    assert f"backup: {ours}" in r.out


def test_deploy_to_copies_the_runs_knowledge_file_and_points_the_config_at_it(
    cli, pi: Pi, run_dir: Path, real: Path
):
    knowledge = run_dir / "meshtastic_knowledge.txt"
    shutil.copy(real / "mesh-master-meshtastic-knowledge.txt", knowledge)
    before = config_bytes(pi.config.read_text(), "crlf")
    pi.config.write_bytes(before)
    r = deploy(cli, pi, run_dir)
    assert r.code == 0, r.err
    on_pi = pi.home / "models" / "meshtune-v2" / "meshtastic_knowledge.txt"
    assert on_pi.read_bytes() == knowledge.read_bytes()
    key = json.dumps(str(on_pi)).encode()
    assert pi.config.read_bytes() == before.replace(b'"llama3.2:1b"', b'"meshtune-v2"').replace(
        b"{\r\n  ", b'{\r\n  "meshtastic_knowledge_file": ' + key + b",\r\n  ", 1
    )
    assert "set ollama_model and meshtastic_knowledge_file" in r.out


def test_a_failed_restart_puts_back_both_keys_byte_for_byte(cli, pi: Pi, run_dir: Path, real: Path):
    shutil.copy(real / "mesh-master-meshtastic-knowledge.txt", run_dir / "meshtastic_knowledge.txt")
    before = config_bytes(pi.config.read_text(), "crlf-latin-1-bom")
    pi.config.write_bytes(before)
    pi.fail("restart")
    r = deploy(cli, pi, run_dir, "--restart", "mesh-ai")
    assert r.code == 2 and "restored" in r.err, r.err
    assert pi.config.read_bytes() == before


# --- Issue 22, the probe re-run: a Pi that never answers ends at a deadline --------------------


def test_an_ssh_server_that_never_answers_ends_at_the_operators_connect_timeout(cli, run_dir):
    with socket.socket() as silent:  # takes the connection, never sends ssh's banner
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        start = time.monotonic()
        r = cli("deploy", run_dir, "--name", "meshtune-v2", "--to", "pi@127.0.0.1",
                "--ssh-option", f"Port={port}", "--ssh-option", "ConnectTimeout=2")  # fmt: skip
        seconds = time.monotonic() - start
    assert r.code == 2 and r.err.count("\n") == 1, r.err
    assert "check ollama failed on pi@127.0.0.1 (exit 255)" in r.err and "timed out" in r.err
    assert seconds < 10  # the operator's ConnectTimeout=2, not meshtune's own 15 s


def test_a_pi_command_that_never_returns_ends_at_its_step_deadline_and_changes_nothing(
    cli, pi: Pi, run_dir: Path, monkeypatch
):
    monkeypatch.setitem(remote.STEP_TIMEOUT_S, "ollama create", 2.0)
    before = pi.config.read_bytes()
    pi.hang("create")
    start = time.monotonic()
    r = deploy(cli, pi, run_dir, "--restart", "mesh-ai")
    assert r.code == 2 and r.err.count("\n") == 1, r.err
    assert f"ollama create on {pi.target}: no end after 2 s (the command did not return)" in r.err
    assert time.monotonic() - start < 15
    assert pi.config.read_bytes() == before and pi.requests == [] and pi.restarts() == []
