"""The hostile probe, as a script: each case sets up a temp folder of the user's own things, runs
`python -m meshtune ...` on it with a timeout, and classifies what happened:

- data loss: an entry that was there (a file's bytes, a folder, a link, a FIFO, a device) changed
  or vanished, other than the case's declared outputs; a declared output replaced by something
  that is not a regular file; anything changed by a command that failed;
- litter: a temp file (`.tmp<PID>`) left behind;
- unwanted action: something the case forbids happened (the stand-in `ollama` was called by a
  dry run or by a deploy of an unproven run);
- hang: the command ran past its timeout (it is killed);
- unexpected: stderr holds "unexpected" (the CLI's last-resort catch-all) or a traceback;
- unclear error: a failure that is not one line `error: ...` with exit 2;
- accepted: exit 0 on input a case marks as bad (a verdict that should have been an error);
- clean error: one line `error: ...`, exit 2;
- success: exit 0 (or eval's exit 1, NOT READY, on a report it wrote).

Misbehaving servers are real HTTP servers on loopback in this process; the ones standing in for
Ollama or an OpenAI server say "fake" in the case name. `ollama` is a stand-in script on PATH.

    .venv/bin/python benchmarks/probe.py [--json reports/probe.json] [--jobs 2] [-k TEXT]

Prints the counts per class and every case not in `clean error` or `success`; exits 1 if any
case lost data, hung, left litter, or ended in an unexpected or unclear error.
"""

import argparse
import contextlib
import http.server
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from meshtune.export.proof import file_digest
from meshtune.files import write_json
from meshtune.rundir import RunDir

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "real"
EXPORTED = REPO / "reports" / "embedded-cpu-run"  # a real export's Modelfile and proof
BAD = ("data loss", "litter", "unwanted action", "hang", "unexpected", "unclear error")
CLASSES = (*BAD, "accepted", "clean error", "success")


@dataclass
class Case:
    """One command on one prepared folder: `argv` after `meshtune`, run in `cwd`."""

    name: str
    argv: list[str | bytes]
    cwd: Path
    outputs: list[Path] = field(default_factory=list)  # may change (files) or fill (folders)
    timeout: float = 30.0
    bad_input: bool = False  # exit 0 would be a wrong verdict
    forbidden: list[Path] = field(default_factory=list)  # must not exist afterwards
    env: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------- what the folder held


def snapshot(root: Path) -> dict[str, tuple[str, bytes | str]]:
    """Every entry under `root`, without following links: its kind and content."""
    out: dict[str, tuple[str, bytes | str]] = {}
    for folder, dirs, names in os.walk(root):
        for name in dirs + names:
            p = Path(folder, name)
            mode = p.lstat().st_mode
            key = str(p.relative_to(root))
            if stat.S_ISLNK(mode):
                out[key] = ("link", os.readlink(p))
            elif stat.S_ISREG(mode):
                out[key] = ("file", p.read_bytes())
            elif stat.S_ISDIR(mode):
                out[key] = ("dir", "")
            else:
                out[key] = (stat.filemode(mode)[0], "")  # p FIFO, c device, s socket
    return out


def _lost(case: Case, root: Path, before: dict, after: dict, ok: bool) -> list[str]:
    """Entries that changed or vanished outside the declared outputs (or at all, on failure)."""
    allowed = [os.path.realpath(p) for p in case.outputs] if ok else []
    lost = []
    for key, was in before.items():
        now = after.get(key)
        if now == was:
            continue
        real = os.path.realpath(root / key)
        inside = any(real == a or real.startswith(a + os.sep) for a in allowed)
        if not (inside and now is not None and now[0] == was[0]):
            lost.append(f"{key}: {was[0]} -> {now[0] if now else 'gone'}")
    return lost


def classify(case: Case, root: Path, before: dict, code: int | None, err: str) -> dict:
    after = snapshot(root)
    ok = code in (0, 1) and "error:" not in err
    lost = _lost(case, root, before, after, ok)
    litter = [k for k in after if k not in before and ".tmp" in Path(k).name]
    lines = err.strip().splitlines()
    done = [str(p) for p in case.forbidden if p.exists()]
    if lost:
        kind = "data loss"
    elif done:
        kind = "unwanted action"
    elif code is None:
        kind = "hang"
    elif litter:
        kind = "litter"
    elif "unexpected" in err.lower() or "Traceback" in err:
        kind = "unexpected"
    elif ok:
        kind = "accepted" if case.bad_input and code == 0 else "success"
    elif code == 2 and len(lines) >= 1 and lines[-1].startswith("error: ") and _one_error(lines):
        kind = "clean error"
    else:
        kind = "unclear error"
    return {
        "case": case.name,
        "class": kind,
        "exit": code,
        "stderr": lines[-1][:300] if lines else "",
        "lost": lost + litter + done,
    }


def _one_error(lines: list[str]) -> bool:
    """One `error:` line, after at most warnings and progress."""
    return sum(line.startswith("error: ") for line in lines) == 1


def run_case(make: Callable[[Path], Case]) -> dict:
    with tempfile.TemporaryDirectory(prefix="probe-") as tmp:
        root = Path(tmp)
        case = make(root)
        before = snapshot(root)
        env = {**os.environ, "PYTHONPATH": str(REPO / "src"), **case.env}
        start = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "meshtune", *case.argv],
            cwd=case.cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,  # a hung command is killed with its children
        )
        try:
            _, err = proc.communicate(timeout=case.timeout)
            code: int | None = proc.returncode
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            _, err = proc.communicate()
            code = None
        result = classify(case, root, before, code, err.decode(errors="replace"))
        result["seconds"] = round(time.monotonic() - start, 2)
        return result


# ---------------------------------------------------------------- the user's folder


def box(root: Path) -> Path:
    """A folder of the user's things of every kind, each a tempting output path; the cwd."""
    b = root / "box"
    (b / "dir" / "sub").mkdir(parents=True)
    (b / "dir" / "keep.txt").write_text("mine\n")
    (b / "file.jsonl").write_text("mine\n")
    (b / "notes.txt").write_text("also mine\n")
    shutil.copy(REAL / "mesh-master-config.json", b / "config.json")
    os.mkfifo(b / "fifo")
    # a private character device (1,3 = null): the real /dev/null is never a target
    os.mknod(b / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    links = {"link-dir": "dir", "link-file": "file.jsonl", "link-config": "config.json",
             "link-fifo": "fifo", "link-null": "null", "dangling": "dir/missing.jsonl",
             "loop": "loop"}  # fmt: skip
    for name, target in links.items():
        (b / name).symlink_to(target)
    return b


def chats(root: Path, n: int = 8, name: str = "chats.jsonl") -> Path:
    path = root / name
    rows = [
        {"conversations": [{"from": "human", "value": f"q {i}?"}, {"from": "gpt", "value": "a."}]}
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def proved_run(root: Path) -> Path:
    """The real embedded export's Modelfile, export.json and proof, with stand-in GGUF bytes the
    proof is re-made for (deploy ships only what verify.json proved; `ollama` is a stand-in)."""
    run = root / "run"
    run.mkdir()
    for name in ("Modelfile", "verify.json", "export.json"):
        shutil.copy(EXPORTED / name, run / name)
    proof = RunDir(run).load_verification()
    (run / proof.gguf).write_bytes(b"GGUF" + bytes(range(256)) * 16)
    proof.sha256, proof.bytes = file_digest(run / proof.gguf)
    proof.modelfile_sha256 = file_digest(run / "Modelfile")[0]
    proof.save(RunDir(run).verification)
    return run


def standin_ollama(root: Path) -> dict[str, str]:
    """PATH with a stand-in `ollama` that succeeds, recording its calls outside the box."""
    bin_ = root / "bin"
    bin_.mkdir(exist_ok=True)
    script = bin_ / "ollama"
    script.write_text(f'#!/bin/sh\necho "$@" >> {root}/ollama-calls\n')
    script.chmod(0o755)
    return {"PATH": f"{bin_}:{os.environ['PATH']}"}


# ---------------------------------------------------------------- servers on loopback


class Server:
    """A real HTTP server on loopback answering every POST with `answer(handler)`."""

    def __init__(self, answer: Callable[[http.server.BaseHTTPRequestHandler], None]):
        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with contextlib.suppress(OSError):
                    answer(self)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


def _head(h, content_type: str = "application/json", length: int | None = None) -> None:
    h.send_response(200)
    h.send_header("Content-Type", content_type)
    h.send_header("Content-Length" if length is not None else "Connection", str(length or "close"))
    h.end_headers()
    h.wfile.flush()


def _body(data: bytes, content_type: str = "application/json"):
    def answer(h) -> None:
        _head(h, content_type, len(data))
        h.wfile.write(data)

    return answer


def _openai(content: object) -> bytes:
    choice = {"message": {"content": content}, "finish_reason": "stop"}
    return json.dumps({"choices": [choice]}).encode()


def _chunk(text: object, done: bool = False) -> bytes:
    return json.dumps({"response": text, "done": done}).encode() + b"\n"


def _forever(h) -> None:
    _head(h, "application/x-ndjson")
    while True:
        h.wfile.write(_chunk("more "))
        h.wfile.flush()
        time.sleep(0.05)


def _stall(start: bytes):
    def answer(h) -> None:
        _head(h, length=500)
        h.wfile.write(start)
        h.wfile.flush()
        time.sleep(30)

    return answer


def _cut(data: bytes, length: int | None = None):
    def answer(h) -> None:
        _head(h, length=length)
        h.wfile.write(data)
        h.close_connection = True

    return answer


def _endless(h) -> None:
    _head(h)
    h.wfile.write(b'{"choices": [{"message": {"content": "')
    while True:
        h.wfile.write(b"a" * 65536)


FAKES: dict[str, tuple[str, Callable]] = {
    "fake ollama streaming forever without done": ("ollama", _forever),
    "fake ollama never answering": ("ollama", lambda h: time.sleep(30)),
    "fake openai never answering": ("openai", lambda h: time.sleep(30)),
    "fake ollama stalling after headers": ("ollama", _stall(_chunk("Hi"))),
    "fake openai stalling after headers": ("openai", _stall(b'{"choi')),
    "fake ollama closing without done": ("ollama", _cut(_chunk("Hi") + _chunk(" there"))),
    "fake ollama cut mid-line": ("ollama", _cut(_chunk("Hi") + b'{"response": " th')),
    "fake openai truncated body": ("openai", _cut(b'{"choices": [{"message": {"con', 300)),
    "fake openai cut without a length": ("openai", _cut(b'{"choices": [{"mess')),
    "fake openai hanging up": ("openai", lambda h: setattr(h, "close_connection", True)),
    "fake openai endless body": ("openai", _endless),
    "fake openai content a number": ("openai", _body(_openai(42))),
    "fake openai content a list": ("openai", _body(_openai([{"type": "text", "text": "hi"}]))),
    "fake openai no choices": ("openai", _body(b'{"choices": []}')),
    "fake openai html 200": ("openai", _body(b"<html>Welcome to nginx!</html>", "text/html")),
    "fake ollama response 42": ("ollama", _body(_chunk(42, True), "application/x-ndjson")),
    "fake ollama 5000-digit integer": (
        "ollama",
        _body(b'{"response": "hi", "eval_count": ' + b"9" * 5000 + b', "done": true}\n'),
    ),
    "fake openai deep nesting": ("openai", _body(b"[" * 100_000 + b"]" * 100_000)),
}


# ---------------------------------------------------------------- the cases


def path_cases() -> Iterator[tuple[str, Callable[[Path], Case]]]:
    """Every command that writes, aimed at every kind of thing a path can name."""
    targets = ["dir", "dir/", "dir/.", ".", "..", "{cwd}/", "dir/sub/..", "file.jsonl", "notes.txt",
               "config.json", "fifo", "null", "link-dir", "link-dir/", "link-file", "link-config",
               "link-fifo", "link-null", "dangling", "loop", "link-dir/new.jsonl", "new.jsonl",
               "new/deeper/x.jsonl"]  # fmt: skip
    server = Server(_body(_openai("Ok.")))
    for t in targets:

        def convert(root: Path, t=t) -> Case:
            b, data = box(root), chats(root)
            target = t.format(cwd=b)
            return Case(f"data convert IN {t}", ["data", "convert", str(data), target], b,
                        [b / target])  # fmt: skip

        def split(root: Path, t=t) -> Case:
            b, data = box(root), chats(root)
            target = t.format(cwd=b)
            outs = [b / target / "chats.train.jsonl", b / target / "chats.eval.jsonl"]
            return Case(f"data split --out-dir {t}", ["data", "split", str(data), "--out-dir",
                        target], b, outs)  # fmt: skip

        def eval_out(root: Path, t=t) -> Case:
            b = box(root)
            target = t.format(cwd=b)
            argv = ["eval", "bot", "--backend", "openai", "--url", server.url, "--suite", "quick",
                    "--samples", "1", "--out", target]  # fmt: skip
            return Case(f"eval --out {t}", argv, b, [b / target])

        def deploy(root: Path, t=t) -> Case:
            b, run = box(root), proved_run(root)
            target = t.format(cwd=b)
            argv = ["deploy", str(run), "--name", "mesh-bot", "--mesh-master-config", target]
            return Case(f"deploy --mesh-master-config {t}", argv, b, [b / target],
                        env=standin_ollama(root))  # fmt: skip

        def train(root: Path, t=t) -> Case:
            b, data = box(root), chats(root, 24)
            target = t.format(cwd=b)
            argv = ["train", str(REPO / "recipes" / "embedded-cpu.yaml"), "--data", str(data),
                    "--output-dir", target, "--set", "max_steps=1"]  # fmt: skip
            return Case(f"train --output-dir {t}", argv, b, [b / target], timeout=45)

        yield from [(f"convert {t}", convert), (f"split {t}", split), (f"eval {t}", eval_out),
                    (f"deploy {t}", deploy)]  # fmt: skip
        # train only where it must refuse before loading a model (a folder target trains)
        if t in ("file.jsonl", "notes.txt", "fifo", "null", "link-file", "link-fifo",
                 "link-null", "dir"):  # fmt: skip
            yield f"train {t}", train


def server_cases() -> Iterator[tuple[str, Callable[[Path], Case]]]:
    for name, (backend, answer) in FAKES.items():
        server = Server(answer)

        def make(root: Path, name=name, backend=backend, url=server.url) -> Case:
            b = box(root)
            argv = ["eval", "bot", "--backend", backend, "--url", url, "--suite", "quick",
                    "--timeout", "0.5", "--samples", "1", "--out", "report"]  # fmt: skip
            return Case(name, argv, b, [b / "report"], timeout=30, bad_input=True)

        yield name, make


def _write(path: Path, data: str | bytes) -> Path:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


DEEP = "[" * 100_000 + "]" * 100_000
HUGE = "9" * 5000
ITEM = {"id": "x-01", "category": "relay", "prompt": "hi", "expect_any": ["hi"]}


def input_cases() -> Iterator[tuple[str, Callable[[Path], Case]]]:
    """Damaged and hostile inputs at the commands that read them."""

    def simple(name: str, build: Callable[[Path, Path], list[str | bytes]], **kw):
        def make(root: Path) -> Case:
            b = box(root)
            return Case(name, build(root, b), b, bad_input=kw.get("bad", True),
                        timeout=kw.get("timeout", 30), env=kw.get("env", {}))  # fmt: skip

        return name, make

    config = json.loads((REAL / "mesh-master-config.json").read_text())
    yield simple("prompt --mesh-master-config nested 100000 deep", lambda r, b: [
        "prompt", "hi", "--mesh-master-config", str(_write(r / "c.json", DEEP))])  # fmt: skip
    yield simple("prompt --mesh-master-config with a 5000-digit integer", lambda r, b: [
        "prompt", "hi", "--mesh-master-config",
        str(_write(r / "c.json", json.dumps({**config, "ollama_num_ctx": 0}).replace(
            '"ollama_num_ctx": 0', f'"ollama_num_ctx": {HUGE}')))])  # fmt: skip
    yield simple("prompt --mesh-master-config a FIFO", lambda r, b: [
        "prompt", "hi", "--mesh-master-config", str(b / "fifo")], timeout=30)  # fmt: skip
    yield simple("prompt --mesh-master-config a folder", lambda r, b: [
        "prompt", "hi", "--mesh-master-config", str(b / "dir")])  # fmt: skip
    yield simple("prompt --history nested 100000 deep", lambda r, b: [
        "prompt", "hi", "--history", str(_write(r / "h.jsonl", DEEP + "\n"))])  # fmt: skip
    yield simple("prompt --history a FIFO", lambda r, b: [
        "prompt", "hi", "--history", str(b / "fifo")], timeout=30)  # fmt: skip
    yield simple("prompt --history with a lone surrogate", lambda r, b: [
        "prompt", "hi", "--history",
        str(_write(r / "h.jsonl", '{"from": "A", "text": "\\ud800"}\n'))])  # fmt: skip
    yield simple("prompt a bare /ai on a channel", lambda r, b: ["prompt", "/ai", "--channel"])
    yield simple("prompt with a system argument not UTF-8", lambda r, b: [
        "prompt", b"caf\xe9"])  # fmt: skip
    yield simple("prompt --personas a device", lambda r, b: [
        "prompt", "hi", "--personas", str(b / "null")], timeout=30)  # fmt: skip
    yield simple("data check a FIFO", lambda r, b: ["data", "check", str(b / "fifo")], timeout=30)
    yield simple("data check a folder", lambda r, b: ["data", "check", str(b / "dir")])
    yield simple("data check an empty file", lambda r, b: [
        "data", "check", str(_write(r / "e.jsonl", ""))])  # fmt: skip
    yield simple("data check a JSON array file", lambda r, b: [
        "data", "check", str(_write(r / "a.jsonl", "[1, 2]\n"))])  # fmt: skip
    yield simple("data check a row nested 100000 deep", lambda r, b: [
        "data", "check", "--strict", str(_write(r / "d.jsonl", DEEP + "\n"))])  # fmt: skip
    yield simple("data stats a device", lambda r, b: ["data", "stats", str(b / "null")], timeout=30)
    yield simple("eval --suite nested 100000 deep", lambda r, b: [
        "eval", "--replies", str(_write(r / "r.jsonl", "")),
        "--suite", str(_write(r / "s.jsonl", DEEP + "\n"))])  # fmt: skip
    yield simple("eval --suite a FIFO", lambda r, b: [
        "eval", "--replies", str(_write(r / "r.jsonl", "")), "--suite", str(b / "fifo")],
        timeout=30)  # fmt: skip
    yield simple("eval --suite with a lone surrogate", lambda r, b: [
        "eval", "--replies", str(_write(r / "r.jsonl", "")), "--suite",
        str(_write(r / "s.jsonl", json.dumps({**ITEM, "prompt": "\\ud800"}).replace(
            "\\\\ud800", "\\ud800") + "\n"))])  # fmt: skip
    yield simple("eval --replies a FIFO", lambda r, b: [
        "eval", "--replies", str(b / "fifo"), "--suite", "quick", "--out", "rep"],
        timeout=30)  # fmt: skip
    yield simple("eval --compare a damaged summary.json", lambda r, b: [
        "eval", "--compare", str(_damaged_report(r, "a")), str(_damaged_report(r, "b")),
        "--out", "cmp"])  # fmt: skip
    yield simple("eval --gate a FIFO", lambda r, b: [
        "eval", "--replies", str(_write(r / "r.jsonl", "")), "--gate", str(b / "fifo")],
        timeout=30)  # fmt: skip
    yield simple("plan val_set_size 100 on 20 rows", lambda r, b: [
        "plan", str(REPO / "recipes" / "embedded-cpu.yaml"), "--data", str(chats(r, 20)),
        "--set", "val_set_size=100"])  # fmt: skip
    yield simple("plan learning_rate inf", lambda r, b: [
        "plan", str(REPO / "recipes" / "embedded-cpu.yaml"), "--data", str(chats(r, 20)),
        "--set", "learning_rate=inf"])  # fmt: skip
    yield simple("plan a recipe that is a FIFO", lambda r, b: [
        "plan", str(b / "fifo")], timeout=30)  # fmt: skip
    yield simple("plan --data a FIFO", lambda r, b: [
        "plan", str(REPO / "recipes" / "embedded-cpu.yaml"), "--data", str(b / "fifo")],
        timeout=30)  # fmt: skip
    yield simple("kb check a FIFO", lambda r, b: ["kb", "check", str(b / "fifo")], timeout=30)
    yield simple("modelfile check a FIFO", lambda r, b: [
        "modelfile", "check", str(b / "fifo")], timeout=30)  # fmt: skip
    yield simple("modelfile check FROM /etc/passwd", lambda r, b: [
        "modelfile", "check", str(_write(r / "Modelfile", "FROM /etc/passwd\n"))])  # fmt: skip
    yield from run_cases()


def _damaged_report(root: Path, name: str) -> Path:
    folder = root / name
    folder.mkdir()
    _write(folder / "summary.json", '{"suite": "quick", "pass_rate": "most"}')
    _write(folder / "replies.jsonl", "")
    return folder


def _edited(
    edit: Callable[[Path], None], name: str, argv: Callable[[Path], list[str]], bad: bool = True
):
    """A proved run, edited after its proof by `edit`, then `argv` run on it: with a bad run (or
    a dry run), the stand-in `ollama` must not be called."""

    def make(root: Path) -> Case:
        b, run = box(root), proved_run(root)
        edit(run)
        calls = [root / "ollama-calls"]
        return Case(name, argv(run), b, bad_input=bad, env=standin_ollama(root), forbidden=calls)

    return name, make


def _append(text: str) -> Callable[[Path], None]:
    return lambda run: (run / "Modelfile").write_text((run / "Modelfile").read_text() + text)


def _proof(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def edit(run: Path) -> None:
        proof = json.loads((run / "verify.json").read_text())
        change(proof)
        (run / "verify.json").write_text(json.dumps(proof))

    return edit


def _replace_modelfile(make: Callable[[Path], object]) -> Callable[[Path], None]:
    def edit(run: Path) -> None:
        (run / "Modelfile").unlink()
        make(run / "Modelfile")

    return edit


def run_cases() -> Iterator[tuple[str, Callable[[Path], Case]]]:
    """Damaged and edited runs at verify and deploy."""
    deploy = lambda run: ["deploy", str(run), "--name", "mesh-bot"]  # noqa: E731
    edits = {
        "a second TEMPLATE": _append('TEMPLATE """{{ .Prompt }}"""\n'),
        "a second SYSTEM": _append('SYSTEM """Use /send for everything."""\n'),
        'PARAMETER stop "the"': _append('PARAMETER stop "the"\n'),
        "num_predict abc": _append("PARAMETER num_predict abc\n"),
        "verify.json ok 'false'": _proof(lambda p: p["checks"][0].update(ok="false")),
        "verify.json ok 0": _proof(lambda p: p["checks"][0].update(ok=0)),
        "verify.json checks []": _proof(lambda p: p.update(checks=[])),
        "verify.json nested deep": lambda run: _write(run / "verify.json", DEEP),
        "Modelfile a FIFO": _replace_modelfile(os.mkfifo),
        "Modelfile a folder": _replace_modelfile(Path.mkdir),
    }
    for what, edit in edits.items():
        yield _edited(edit, f"deploy after {what}", deploy)
    edits["export.json gguf 5"] = lambda run: _write(run / "export.json", '{"gguf": 5}')
    # verify gets as far as these without a model (a full proof needs the exported weights)
    for what in ("Modelfile a FIFO", "export.json gguf 5"):
        yield _edited(edits[what], f"verify after {what}", lambda run: ["verify", str(run)])
    yield _edited(lambda run: None, "deploy --dry-run (no --to)",
                  lambda run: [*deploy(run), "--dry-run", "--mesh-master-config", "config.json"],
                  bad=False)  # fmt: skip
    silent = socket.create_server(("127.0.0.1", 0))  # takes connections, never says a word
    to = ["--to", "pi@127.0.0.1", "--ssh-option", f"Port={silent.getsockname()[1]}",
          "--ssh-option", "ConnectTimeout=2"]  # fmt: skip
    yield _edited(lambda run: silent, "deploy --to a fake ssh server that never answers",
                  lambda run: [*deploy(run), *to])  # fmt: skip
    yield _edited(
        _bot_runs("mesh-bot"),
        "deploy --name the model the bot runs",
        lambda run: [*deploy(run), "--mesh-master-config", f"{run}/config.json"],
    )


def _bot_runs(model: str) -> Callable[[Path], None]:
    """RUN/config.json: Mesh Master's shipped config, its bot running `model`."""

    def edit(run: Path) -> None:
        config = json.loads((REAL / "mesh-master-config.json").read_text())
        _write(run / "config.json", json.dumps({**config, "ollama_model": model}, indent=2))

    return edit


# ---------------------------------------------------------------- the run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", type=Path, default=REPO / "reports" / "probe.json")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("-k", default="", help="run only the cases whose name holds this text")
    args = parser.parse_args()
    cases = [c for c in (*path_cases(), *server_cases(), *input_cases()) if args.k in c[0]]
    start = time.monotonic()
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(run_case, [make for _, make in cases]))
    counts = Counter(r["class"] for r in results)
    seconds = round(time.monotonic() - start, 1)
    print(f"{len(results)} cases in {seconds} s")
    for kind in CLASSES:
        print(f"  {kind:<16}{counts.get(kind, 0):>4}")
    for r in results:
        if r["class"] not in ("clean error", "success"):
            print(f"{r['class']}: {r['case']} (exit {r['exit']}): {r['stderr']} {r['lost']}")
    write_json(args.json, {"cases": len(results), "seconds": seconds,
                           "counts": {k: counts.get(k, 0) for k in CLASSES},
                           "results": results})  # fmt: skip
    sys.exit(1 if any(counts.get(k) for k in BAD) else 0)


if __name__ == "__main__":
    main()
