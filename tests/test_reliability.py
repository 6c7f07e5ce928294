"""Bad input never loses data and never shows a traceback (issue 12).

Each test is one case of the hostile probe, named after it, run through the real entry point
(`meshtune.cli.main`) on real files: tiny models built here, real GGUF files, real HTTP servers
on loopback, real signals. The property tests at the end throw random recipes, `--set` values
and bytes at the commands: the only outcomes allowed are success or one line with exit 2.
"""

import contextlib
import http.server
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.conftest import CONFIG_VARIANTS, REPO, config_bytes, rows_file, run_main
from tests.tiny import chat_row as chat
from tests.tiny import lora_run, stand_in_ollama, write_recipe

from meshtune import export, files
from meshtune.errors import MeshtuneError
from meshtune.export.gguf import write_gguf


def one_line_error(r) -> bool:
    """Exit 2 and exactly one line, `error: ...`, with no traceback."""
    return r.code == 2 and r.err.startswith("error: ") and r.err.count("\n") == 1


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """meshtune's model cache, private to the test (converted GGUF bases land here)."""
    monkeypatch.setenv("MESHTUNE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def data_file(tmp_path) -> Path:
    return rows_file(tmp_path, [chat(f"question {i}?", f"answer {i}.") for i in range(6)])


def tree(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def temps(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".tmp" in p.name]


# ---------------------------------------------------------------------------------------------
# Recipes and --set


@pytest.mark.parametrize(
    ("key", "value"),
    [("learning_rate", ".inf"), ("num_epochs", ".inf"), ("max_grad_norm", ".inf"),
     ("weight_decay", ".inf"), ("lora_alpha", "-16"), ("seed", "-1")],
)  # fmt: skip
def test_learning_rate_inf_and_other_numbers_that_must_be_finite_and_positive_are_refused(
    cli, tmp_path, data_file, key, value
):
    recipe = write_recipe(tmp_path, f"datasets: [{{path: {data_file}}}]\n{key}: {value}\n")
    r = cli("plan", recipe)
    assert one_line_error(r), r.err
    assert f"recipe.yaml: {key}: " in r.err


def test_num_epochs_inf_from_set_is_refused(cli, tmp_path, data_file):
    r = cli(
        "plan",
        write_recipe(tmp_path, datasets=[{"path": str(data_file)}]),
        "--set",
        "num_epochs=.inf",
    )
    assert one_line_error(r) and "num_epochs: must be a finite number" in r.err


def test_duplicate_yaml_keys_are_an_error_naming_both_lines(cli, tmp_path, data_file):
    text = f"datasets: [{{path: {data_file}}}]\nlearning_rate: 1e-4\nlearning_rate: 1e-3\n"
    r = cli("plan", write_recipe(tmp_path, text))
    assert one_line_error(r), r.err
    assert "recipe.yaml:3:" in r.err and "'learning_rate' appears twice (lines 2 and 3)" in r.err


@pytest.mark.parametrize("value", ["learning_rate=[", "lora_r={", "seed=: :", 'x="unclosed'])
def test_unparsable_set_value_is_a_one_line_error(cli, tmp_path, data_file, value):
    r = cli("plan", write_recipe(tmp_path, datasets=[{"path": str(data_file)}]), "--set", value)
    assert one_line_error(r), r.err
    assert f"--set {value!r}" in r.err


def test_datasets_given_as_a_number_is_a_one_line_error(cli, tmp_path):
    r = cli("plan", write_recipe(tmp_path, "datasets: 5\n"))
    assert one_line_error(r) and "datasets is a number (5), not a list" in r.err


def test_datasets_given_as_a_string_says_it_must_be_a_list_not_no_such_file(cli, tmp_path):
    r = cli("plan", write_recipe(tmp_path, "datasets: foo.jsonl\n"))
    assert one_line_error(r), r.err
    assert "datasets is a string ('foo.jsonl'), not a list" in r.err and "f: no such" not in r.err


def test_a_dataset_path_that_is_not_text_is_a_one_line_error(cli, tmp_path):
    r = cli("plan", write_recipe(tmp_path, "datasets: [{path: 5}]\n"))
    assert one_line_error(r) and "datasets.0.path" in r.err


# ---------------------------------------------------------------------------------------------
# Base models


@pytest.fixture
def tiny_gguf(tmp_path, tiny_llama) -> Path:
    gguf = tmp_path / "tiny-F32.gguf"
    write_gguf(tiny_llama, gguf, "F32", "tiny")
    return gguf


def test_plan_with_a_truncated_base_gguf_says_truncated(cli, tmp_path, tiny_gguf, data_file, cache):
    with tiny_gguf.open("r+b") as f:
        f.truncate(1_000_000)
    r = cli(
        "plan",
        write_recipe(tmp_path, base_model=str(tiny_gguf), datasets=[{"path": str(data_file)}]),
    )
    assert one_line_error(r), r.err
    assert "damaged or truncated GGUF" in r.err and "not available locally" not in r.out


def test_train_with_a_truncated_base_gguf_fails_before_creating_the_run(
    cli, tmp_path, tiny_gguf, data_file, cache
):
    with tiny_gguf.open("r+b") as f:
        f.truncate(1_000_000)
    recipe = write_recipe(tmp_path, base_model=str(tiny_gguf), datasets=[{"path": str(data_file)}])
    r = cli("train", recipe, "--output-dir", tmp_path / "run")
    assert one_line_error(r) and "damaged or truncated GGUF" in r.err, r.err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "damage", ["no-config", "config-not-json", "no-weights", "truncated-weights"]
)
def test_an_existing_but_invalid_base_model_is_an_error_not_not_available_locally(
    cli, tmp_path, tiny_llama, data_file, damage
):
    base = tmp_path / "base"
    shutil.copytree(tiny_llama, base)
    weights = base / "model.safetensors"
    if damage == "no-config":
        (base / "config.json").unlink()
    elif damage == "config-not-json":
        (base / "config.json").write_text("{ not json")
    elif damage == "no-weights":
        weights.unlink()
    else:
        with weights.open("r+b") as f:
            f.truncate(weights.stat().st_size // 2)
    r = cli(
        "plan", write_recipe(tmp_path, base_model=str(base), datasets=[{"path": str(data_file)}])
    )
    assert one_line_error(r), (r.code, r.out, r.err)
    assert "not available locally" not in r.out + r.err


def test_output_dir_that_is_a_file_is_refused_and_the_file_kept(
    cli, tmp_path, tiny_llama, data_file
):
    taken = tmp_path / "run"
    taken.write_text("my notes")
    recipe = write_recipe(tmp_path, base_model=str(tiny_llama), datasets=[{"path": str(data_file)}])
    r = cli("train", recipe, "--output-dir", taken, "--overwrite")
    assert one_line_error(r) and "is a file, not a folder" in r.err, r.err
    assert taken.read_text() == "my notes"


# ---------------------------------------------------------------------------------------------
# Export: a damaged adapter, temp files of a killed export


@pytest.fixture
def tiny_run(tmp_path, tiny_llama) -> Path:
    from transformers import AutoModelForCausalLM

    return lora_run(
        tmp_path, AutoModelForCausalLM.from_pretrained(tiny_llama), str(tiny_llama), "chatml"
    )


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("truncated-weights", "not a complete safetensors file"),
        ("empty-weights", "not a complete safetensors file"),
        ("config-not-json", "adapter_config.json: unreadable"),
        ("config-not-lora", "not a LoRA adapter config"),
    ],
)
def test_export_of_a_damaged_adapter_is_a_one_line_error_and_writes_nothing(
    cli, capsys, tiny_run, damage, message
):
    capsys.readouterr()  # the fixture's model loading output
    weights = tiny_run / "best" / "adapter_model.safetensors"
    config = tiny_run / "best" / "adapter_config.json"
    if damage == "truncated-weights":
        with weights.open("r+b") as f:
            f.truncate(weights.stat().st_size // 2)
    elif damage == "empty-weights":
        weights.write_bytes(b"")
    elif damage == "config-not-json":
        config.write_text('{"peft_type": "LORA", ')
    else:
        config.write_text(json.dumps({"r": "eight"}))
    before = tree(tiny_run)
    r = cli("export", tiny_run, "--quant", "F32")
    assert one_line_error(r) and message in r.err, r.err
    assert tree(tiny_run) == before


@pytest.fixture
def proved(stopper, tmp_path) -> Path:
    """A copy of an exported run whose proof passed (the stopper model of test_export)."""
    run = tmp_path / "proved"
    shutil.copytree(stopper[0], run)
    return run


def test_temp_files_of_a_killed_export_are_removed_by_the_next_export(proved, cli):
    dead = 2**22 + 12345  # above Linux's default pid_max: no process has it
    (proved / f"merged.tmp{dead}").mkdir()
    (proved / f"merged.tmp{dead}" / "model.safetensors").write_bytes(b"x" * 100)
    (proved / f"stopper-F32.gguf.tmp{dead}").write_bytes(b"GGUF")
    (proved / f".Modelfile.tmp{dead}").write_text("FROM x")
    r = cli("export", proved, "--quant", "F32", "--name", "stopper")
    assert r.code == 0, r.err
    assert temps(proved) == []


# ---------------------------------------------------------------------------------------------
# Deploy: the proof, backups, symlinks, a config that cannot change


def test_deploy_refuses_a_gguf_that_is_not_the_file_verify_json_proved(proved, cli, tmp_path):
    # What an export killed during its proof leaves: the new GGUF in place, the old proof.
    gguf = proved / "stopper-F32.gguf"
    write_gguf(proved / "merged", gguf, "F16", "stopper")
    for force in ([], ["--force"]):
        r = cli("deploy", proved, "--name", "mesh-bot", *force)
        assert one_line_error(r), r.err
        assert "not the file verify.json proved" in r.err and "meshtune verify" in r.err
    assert cli("verify", proved).code in (0, 1)  # the proof is made again for the new file
    assert cli("deploy", proved, "--name", "mesh-bot", "--force").code == 0


def test_deploy_refuses_a_proof_that_names_no_file(proved, cli):
    proof = json.loads((proved / "verify.json").read_text())
    del proof["sha256"]
    (proved / "verify.json").write_text(json.dumps(proof))
    r = cli("deploy", proved, "--name", "mesh-bot")
    assert one_line_error(r) and "does not say which file it proved" in r.err


@pytest.fixture
def config(real, tmp_path) -> Path:
    path = tmp_path / "mm" / "config.json"
    path.parent.mkdir()
    shutil.copy(real / "mesh-master-config.json", path)
    return path


class _SameSecond:
    """A clock stuck on one second (a fake: two deploys in one real second are a race)."""

    @staticmethod
    def now(tz=None):
        import datetime as dt

        return dt.datetime(2026, 11, 29, 12, 0, 0, tzinfo=tz)


def test_two_deploys_in_the_same_second_keep_both_backups_and_the_original_model(
    proved, config, cli, monkeypatch, tmp_path
):
    from meshtune import files as files_mod

    monkeypatch.setattr(export, "datetime", _SameSecond, raising=False)
    monkeypatch.setattr(files_mod, "datetime", _SameSecond, raising=False)
    stand_in_ollama(tmp_path / "bin")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    original = config.read_text()
    for name in ("bot-one", "bot-two"):
        assert cli("deploy", proved, "--name", name, "--mesh-master-config", config).code == 0
    backups = list(config.parent.glob("config.json.*.bak"))
    assert len(backups) == 2
    models = sorted(json.loads(b.read_text())["ollama_model"] for b in backups)
    assert models == ["bot-one", "llama3.2:1b"]  # the original model is kept
    assert original in [b.read_text() for b in backups]


def test_deploy_edits_the_target_of_a_symlinked_config(proved, config, cli, monkeypatch, tmp_path):
    stand_in_ollama(tmp_path / "bin")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    link = tmp_path / "config-link.json"
    link.symlink_to(config)
    r = cli("deploy", proved, "--name", "mesh-bot", "--mesh-master-config", link)
    assert r.code == 0, r.err
    assert link.is_symlink() and link.resolve() == config
    assert json.loads(config.read_text())["ollama_model"] == "mesh-bot"


# Found once, before a test narrows PATH: a `chattr -i` that cannot be found leaves a file no
# one can delete, and pytest then keeps every later run's gigabytes as undeletable garbage.
CHATTR = shutil.which("chattr")


def _chattr(flag: str, path: Path) -> bool:
    if CHATTR is None:
        return False
    return subprocess.run([CHATTR, flag, str(path)], capture_output=True).returncode == 0


def test_deploy_to_an_immutable_config_changes_nothing_and_leaves_no_temp_file(
    proved, config, cli, monkeypatch, tmp_path
):
    if not _chattr("+i", config):
        pytest.skip("chattr +i needs root on ext4-like filesystems; not available here")
    try:
        log = stand_in_ollama(tmp_path / "bin")
        monkeypatch.setenv("PATH", str(tmp_path / "bin"))
        original = config.read_text()
        r = cli("deploy", proved, "--name", "mesh-bot", "--mesh-master-config", config)
        assert one_line_error(r) and "cannot be changed" in r.err, r.err
        assert config.read_text() == original
        assert sorted(p.name for p in config.parent.iterdir()) == ["config.json"]
        assert not log.exists()  # checked before `ollama create` ran
    finally:
        assert _chattr("-i", config), f"could not clear the immutable flag of {config}"


# ---------------------------------------------------------------------------------------------
# Modelfile


def test_modelfile_from_a_folder_without_weights_is_an_error(cli, tmp_path):
    (tmp_path / "weights").mkdir()
    (tmp_path / "Modelfile").write_text("FROM ./weights\nPARAMETER stop <|im_end|>\n")
    r = cli("modelfile", "check", tmp_path / "Modelfile")
    assert r.code == 1 and "E304 FROM ./weights is a folder without model weights" in r.out


# ---------------------------------------------------------------------------------------------
# Data


def test_data_check_on_an_empty_file_exits_2_like_stats(cli, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    for command in ("check", "stats"):
        r = cli("data", command, empty)
        assert one_line_error(r) and "no conversations" in r.err, (command, r.err)


def test_a_json_array_file_gets_one_clear_error(cli, tmp_path):
    rows = [chat("hi?", "hello."), chat("snr?", "above 0 dB is good.")]
    path = tmp_path / "chats.json"
    path.write_text(json.dumps(rows, indent=2))
    r = cli("data", "check", path)
    assert one_line_error(r), r.out + r.err
    assert "one JSON array of 2 items, not JSONL" in r.err and "jq -c" in r.err


def test_data_convert_in_place_keeps_per_turn_keys(cli, tmp_path):
    row = {
        "category": "relay",
        "conversations": [
            {"from": "human", "value": "relay to bob", "name": "alice"},
            {"from": "gpt", "value": "DM me 'bob <msg>'.", "weight": 0, "tool_calls": [{"id": 1}]},
            {"from": "human", "value": "thanks"},
            {"from": "gpt", "value": "Any time.", "weight": 1},
        ],
    }
    path = rows_file(tmp_path, [row])
    assert cli("data", "convert", path, path, "--to", "openai").code == 0
    (converted,) = [json.loads(line) for line in path.read_text().splitlines()]
    assert converted == {
        "category": "relay",
        "messages": [
            {"role": "user", "content": "relay to bob", "name": "alice"},
            {
                "role": "assistant",
                "content": "DM me 'bob <msg>'.",
                "weight": 0,
                "tool_calls": [{"id": 1}],
            },
            {"role": "user", "content": "thanks"},
            {"role": "assistant", "content": "Any time.", "weight": 1},
        ],
    }
    assert cli("data", "convert", path, path, "--to", "sharegpt").code == 0
    assert [json.loads(line) for line in path.read_text().splitlines()] == [row]


def test_errors_never_name_internal_temp_files(cli, tmp_path, data_file):
    r = cli("data", "convert", data_file, tmp_path / "missing-folder" / "out.jsonl")
    assert one_line_error(r) and ".tmp" not in r.err, r.err
    assert "missing-folder/out.jsonl: cannot write" in r.err


# ---------------------------------------------------------------------------------------------
# Eval: arguments checked before any work, servers that answer nonsense


class _Server:
    """A real HTTP server on loopback answering every POST with `body` (counting requests)."""

    def __init__(self, body: bytes, content_type: str = "text/html", delay: float = 0.0):
        self.requests = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                outer.requests += 1
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                time.sleep(delay)
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


HTML = b"<!DOCTYPE html><html><body>Welcome to nginx!</body></html>"


@pytest.mark.parametrize("backend", ["openai", "ollama"])
def test_a_server_answering_http_200_with_html_is_a_one_line_error(cli, tmp_path, backend):
    server = _Server(HTML)
    try:
        r = cli("eval", "bot", "--backend", backend, "--url", server.url, "--suite", "quick",
                "--out", tmp_path / "out")  # fmt: skip
    finally:
        server.close()
    assert one_line_error(r), r.err
    assert "did not answer with JSON" in r.err and "<!DOCTYPE html>" in r.err


def test_eval_url_that_is_not_a_url_is_refused_before_any_request(cli, tmp_path):
    r = cli("eval", "bot", "--backend", "openai", "--url", "not a url", "--out", tmp_path / "o")
    assert one_line_error(r) and "--url 'not a url': not an http(s) URL" in r.err, r.err


def test_eval_threads_negative_is_refused(cli, tmp_path, tiny_llama):
    r = cli("eval", tiny_llama, "--backend", "hf", "--threads", "-3", "--out", tmp_path / "o")
    assert one_line_error(r) and "--threads -3: must be at least 1" in r.err, r.err


def test_eval_out_that_is_a_file_is_refused_before_evaluating(cli, tmp_path):
    reply = {"choices": [{"message": {"content": "ok."}, "finish_reason": "stop"}]}
    server = _Server(json.dumps(reply).encode(), "application/json")
    taken = tmp_path / "report"
    taken.write_text("keep me")
    try:
        r = cli("eval", "bot", "--backend", "openai", "--url", server.url, "--suite", "quick",
                "--out", taken)  # fmt: skip
    finally:
        server.close()
    assert one_line_error(r) and "is a file, not a folder" in r.err, r.err
    assert server.requests == 0 and taken.read_text() == "keep me"


# ---------------------------------------------------------------------------------------------
# Issue 22 (items 4-6): bounded waits, no "unexpected" errors, verdicts that say when they do not
# apply. The servers are real HTTP servers on loopback that misbehave on purpose; the ones that
# stand in for Ollama or an OpenAI server are named fake_ollama / fake_openai.


class _Misbehaving:
    """A real HTTP server on loopback whose every POST is answered by `answer(handler)`, which
    writes whatever bytes it likes (or nothing) to `handler.wfile`."""

    def __init__(self, answer):
        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    answer(self)  # (the client may give up first, as it should)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _headers(h, content_type="application/json", length=None):
    h.send_response(200)
    h.send_header("Content-Type", content_type)
    if length is not None:
        h.send_header("Content-Length", str(length))
    else:
        h.send_header("Connection", "close")
    h.end_headers()
    h.wfile.flush()


def _eval_against(cli, tmp_path, backend, answer, *extra):
    """`meshtune eval` of a served model against a misbehaving server; (result, seconds)."""
    server = _Misbehaving(answer)
    start = time.monotonic()
    try:
        r = cli("eval", "bot", "--backend", backend, "--url", server.url, "--suite", "quick",
                "--timeout", "0.5", "--out", tmp_path / "report", *extra)  # fmt: skip
    finally:
        seconds = time.monotonic() - start
        server.close()
    assert not (tmp_path / "report").exists()
    return r, seconds


def _ollama_chunk(text, done=False):
    return json.dumps({"response": text, "done": done}).encode() + b"\n"


def test_fake_ollama_streaming_forever_without_done_ends_with_a_clear_error(cli, tmp_path):
    def forever(h):
        _headers(h, "application/x-ndjson")
        while True:
            h.wfile.write(_ollama_chunk("more "))
            h.wfile.flush()
            time.sleep(0.05)

    r, seconds = _eval_against(cli, tmp_path, "ollama", forever)
    assert one_line_error(r), r.err
    assert "/api/generate: the reply was still coming after 2 s" in r.err
    assert "the server does not end its reply" in r.err and seconds < 10


def test_fake_ollama_closing_its_stream_without_done_says_so(cli, tmp_path):
    def cut(h):
        _headers(h, "application/x-ndjson")
        h.wfile.write(_ollama_chunk("Hi") + _ollama_chunk(" there"))

    r, _ = _eval_against(cli, tmp_path, "ollama", cut)
    assert one_line_error(r), r.err
    assert "the stream ended without a `done` chunk after 2 chunks" in r.err


@pytest.mark.parametrize("backend", ["ollama", "openai"])
def test_fake_server_that_accepts_and_never_answers_says_no_answer_not_cannot_connect(
    cli, tmp_path, backend
):
    r, seconds = _eval_against(cli, tmp_path, backend, lambda h: time.sleep(5))
    assert one_line_error(r), r.err
    assert "the server took the request but sent no answer within 0.5 s" in r.err
    assert "cannot connect" not in r.err and seconds < 4


@pytest.mark.parametrize(
    ("backend", "start"), [("ollama", _ollama_chunk("Hi")), ("openai", b'{"choi')]
)
def test_fake_server_whose_body_stalls_after_the_headers_says_stalled(
    cli, tmp_path, backend, start
):
    def stall(h):
        _headers(h, length=500)
        h.wfile.write(start)
        h.wfile.flush()
        time.sleep(5)

    r, seconds = _eval_against(cli, tmp_path, backend, stall)
    assert one_line_error(r), r.err
    assert f"the reply stalled: nothing for 0.5 s after {len(start)} bytes" in r.err
    assert seconds < 4


def test_fake_openai_with_a_truncated_body_says_the_server_closed_mid_reply(cli, tmp_path):
    def truncated(h):
        _headers(h, length=300)
        h.wfile.write(b'{"choices": [{"message": {"content": "Hel')
        h.close_connection = True

    r, _ = _eval_against(cli, tmp_path, "openai", truncated)
    assert one_line_error(r), r.err
    assert "the server closed the connection mid-reply (41 of 300 bytes)" in r.err


def test_fake_openai_closing_the_connection_without_answering_says_so(cli, tmp_path):
    def hang_up(h):
        h.close_connection = True

    r, _ = _eval_against(cli, tmp_path, "openai", hang_up)
    assert one_line_error(r), r.err
    assert "the server closed the connection without answering" in r.err


def test_fake_openai_body_cut_off_without_a_length_says_cut_off_not_not_json(cli, tmp_path):
    def cut(h):
        _headers(h)  # no Content-Length: the body ends when the connection closes
        h.wfile.write(b'{"choices": [{"message": {"content": "Hel')
        h.close_connection = True

    r, _ = _eval_against(cli, tmp_path, "openai", cut)
    assert one_line_error(r), r.err
    assert "the reply is cut off after 41 bytes" in r.err and "closed mid-reply" in r.err


def test_fake_ollama_stream_cut_mid_line_says_cut_off(cli, tmp_path):
    def cut(h):
        _headers(h, "application/x-ndjson")
        h.wfile.write(_ollama_chunk("Hi") + b'{"response": " th')
        h.close_connection = True

    r, _ = _eval_against(cli, tmp_path, "ollama", cut)
    assert one_line_error(r), r.err
    assert "the reply is cut off after 17 bytes" in r.err


def test_fake_openai_answering_with_an_endless_body_stops_at_16_mib(cli, tmp_path):
    def endless(h):
        _headers(h)
        h.wfile.write(b'{"choices": [{"message": {"content": "')
        while True:
            h.wfile.write(b"a" * 65536)

    r, _ = _eval_against(cli, tmp_path, "openai", endless)
    assert one_line_error(r), r.err
    assert "the reply is over 16 MiB, not a chat reply" in r.err


def _json_answer(reply):
    def answer(h):
        body = json.dumps(reply).encode()
        _headers(h, length=len(body))
        h.wfile.write(body)

    return answer


@pytest.mark.parametrize(
    ("content", "kind"), [(42, "a number (42)"), ([{"type": "text", "text": "hi"}], "a list ([{")]
)
def test_fake_openai_reply_with_content_a_number_or_a_list_names_the_field(
    cli, tmp_path, content, kind
):
    reply = {"choices": [{"message": {"content": content}, "finish_reason": "stop"}]}
    r, _ = _eval_against(cli, tmp_path, "openai", _json_answer(reply))
    assert one_line_error(r), r.err
    assert f"the reply's `choices.0.message.content` is {kind}" in r.err
    assert "not a string; the server does not answer as the OpenAI API does" in r.err


def test_fake_openai_reply_without_choices_names_the_field(cli, tmp_path):
    r, _ = _eval_against(cli, tmp_path, "openai", _json_answer({"choices": []}))
    assert one_line_error(r) and "the reply has no `choices[0]`" in r.err, r.err


def test_fake_ollama_reply_with_response_42_names_the_field(cli, tmp_path):
    def answer(h):
        _headers(h, "application/x-ndjson")
        h.wfile.write(json.dumps({"response": 42, "done": True}).encode() + b"\n")

    r, _ = _eval_against(cli, tmp_path, "ollama", answer)
    assert one_line_error(r), r.err
    assert "the reply's `response` is a number (42), not a string" in r.err
    assert "does not answer as Ollama does" in r.err


def test_fake_ollama_reply_with_a_5000_digit_integer_is_not_json_not_unexpected(cli, tmp_path):
    def answer(h):
        _headers(h, "application/x-ndjson")
        h.wfile.write(b'{"response": "hi", "eval_count": ' + b"9" * 5000 + b', "done": true}\n')

    r, _ = _eval_against(cli, tmp_path, "ollama", answer)
    assert one_line_error(r) and "the server did not answer with JSON" in r.err, r.err


@pytest.mark.parametrize("url", ["http://127.0.0.1:11434/a b", "http://local host:11434"])
def test_a_url_with_a_space_is_refused_before_any_request(cli, tmp_path, url):
    r = cli("eval", "bot", "--backend", "ollama", "--url", url, "--out", tmp_path / "o")
    assert one_line_error(r), r.err
    assert f"--url {url!r}: contains a space or control character" in r.err


def test_a_url_where_nothing_listens_says_connection_refused(cli, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = cli("eval", "bot", "--backend", "ollama", "--url", f"http://127.0.0.1:{port}",
            "--suite", "quick", "--out", tmp_path / "o")  # fmt: skip
    assert one_line_error(r), r.err
    assert "nothing is listening there (connection refused); start the server" in r.err


def test_chat_with_ollama_num_ctx_128000_uses_the_models_context_and_says_so(tmp_path):
    """Ollama clamps num_ctx to the model's trained context (8192 for the embedded model);
    chat does too, instead of allocating a 256,000-token context."""
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"ollama_num_ctx": 128000}))
    proc = _meshtune("chat", "smollm2-135m", "--mesh-master-config", config, stdin=subprocess.PIPE)
    proc.stdin.write("/quit\n")
    proc.stdin.close()
    out, err = proc.stdout.read(), proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, err
    assert (
        f"warning: ollama_num_ctx 128000 in {config} is more than smollm2-135m's context "
        "(8192 tokens); Ollama uses 8192 and so does chat" in " ".join(out.split())
    )
    assert "num_ctx 8192" in out
    # A 128,000-token context would take ~6 GB; 8192 takes well under 3 GB on every machine
    # seen (1.5 GB here, 1.9 GB on CI), so 3 GB tells the two apart without being flaky.
    assert usage.ru_maxrss < 3_000_000, f"{usage.ru_maxrss} KiB"


def test_eval_threads_64_is_capped_at_the_machines_cpus_with_a_warning(cli, tmp_path):
    reply = {"choices": [{"message": {"content": "Use /help."}, "finish_reason": "stop"}]}
    server = _Misbehaving(_json_answer(reply))
    try:
        r = cli("eval", "bot", "--backend", "openai", "--url", server.url, "--suite", "quick",
                "--threads", "64", "--out", tmp_path / "report")  # fmt: skip
    finally:
        server.close()
    cpus = len(os.sched_getaffinity(0))
    assert r.code in (0, 1), r.err
    assert f"warning: --threads 64: this machine runs {cpus} CPU threads; using {cpus}" in r.err


def _report(cli, tmp_path, name, reply_text):
    """A real report folder: `meshtune eval` of a served model whose every reply is
    `reply_text` (a fake_openai server)."""
    reply = {"choices": [{"message": {"content": reply_text}, "finish_reason": "stop"}]}
    server = _Misbehaving(_json_answer(reply))
    try:
        r = cli("eval", "bot", "--backend", "openai", "--url", server.url, "--suite", "quick",
                "--out", tmp_path / name)  # fmt: skip
    finally:
        server.close()
    assert r.code in (0, 1), r.err
    return tmp_path / name


def test_compare_reads_a_report_holding_a_reply_with_a_raw_u2028(cli, tmp_path):
    a = _report(cli, tmp_path, "a", "Use /help\u2028for the commands.")
    b = _report(cli, tmp_path, "b", "DM alice\u0085with /relay.")
    assert "\u2028" in (a / "replies.jsonl").read_text()  # written raw, valid JSON
    r = cli("eval", "--compare", a, b, "--suite", "quick", "--out", tmp_path / "cmp")
    assert r.code in (0, 1) and "wrote" in r.out, r.err
    assert (tmp_path / "cmp" / "compare.md").is_file()


@pytest.mark.parametrize(
    ("damage", "said"),
    [("[]", "summary.json: not a JSON object (a list)"),
     ("{", "summary.json: invalid JSON (Expecting property name"),
     ('{"suite": "quick"}', "summary.json: `profile`: Field required"),
     ("chars", "summary.json: `chars.p50`: Input should be a valid number")],
)  # fmt: skip
def test_compare_on_a_damaged_summary_json_names_the_file_and_the_field(
    cli, tmp_path, damage, said
):
    a = _report(cli, tmp_path, "a", "Use /help.")
    b = _report(cli, tmp_path, "b", "Use /help.")
    if damage == "chars":
        summary = json.loads((b / "summary.json").read_text())
        damage = json.dumps({**summary, "chars": {"p50": "x", "p90": 1}})
    (b / "summary.json").write_text(damage)
    r = cli("eval", "--compare", a, b, "--suite", "quick", "--out", tmp_path / "cmp")
    assert one_line_error(r), r.err
    assert f"{b}/{said}" in r.err and "re-run `meshtune eval` with --out" in r.err


def test_compare_on_a_damaged_replies_line_names_the_line(cli, tmp_path):
    a = _report(cli, tmp_path, "a", "Use /help.")
    b = _report(cli, tmp_path, "b", "Use /help.")
    lines = (b / "replies.jsonl").read_text().split("\n")
    lines[2] = json.dumps({**json.loads(lines[2]), "passed": "maybe"})
    (b / "replies.jsonl").write_text("\n".join(lines))
    r = cli("eval", "--compare", a, b, "--suite", "quick", "--out", tmp_path / "cmp")
    assert one_line_error(r), r.err
    assert f"{b}/replies.jsonl:3: `passed`: Input should be a valid boolean" in r.err


def _suite(tmp_path, *lines):
    path = tmp_path / "suite.jsonl"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_a_suite_line_with_a_raw_u2028_inside_a_string_is_valid_json(tmp_path):
    from meshtune.suites import load_suite

    line = json.dumps({"id": "a", "prompt": "hi\u2028there\u0085you"}, ensure_ascii=False)
    suite = load_suite(str(_suite(tmp_path, line, '{"id": "b", "prompt": "next"}')))
    assert [i.prompt for i in suite.items] == ["hi\u2028there\u0085you", "next"]


@pytest.mark.parametrize(
    ("value", "said"),
    [("[" * 100_000 + "]" * 100_000, "arrays or objects nested too deeply"),
     ("9" * 5000, "a 5,000-digit number, longer than a number can be")],
)  # fmt: skip
def test_a_suite_line_nested_100000_deep_or_with_a_5000_digit_integer_is_a_one_line_error(
    cli, tmp_path, value, said
):
    suite = _suite(tmp_path, '{"id": "a", "prompt": "hi"}', f'{{"id": "b", "prompt": {value}}}')
    r = cli("eval", "smollm2-135m", "--suite", suite, "--out", tmp_path / "o")
    assert one_line_error(r), r.err
    assert f"{suite}:2: invalid JSON ({said}" in r.err


def test_a_suite_line_with_a_lone_surrogate_is_a_one_line_error(cli, tmp_path):
    suite = _suite(tmp_path, '{"id": "a", "prompt": "hi \\ud800 there"}')
    r = cli("eval", "smollm2-135m", "--suite", suite, "--out", tmp_path / "o")
    assert one_line_error(r), r.err
    assert f"{suite}:1: invalid JSON (a lone surrogate \\ud800 is not a character" in r.err


def test_a_channel_suite_item_written_slash_ai_hi_is_sent_once_as_the_bot_sends_it(tmp_path):
    from meshtune.evaluate.profiles import build_request, get_profile
    from meshtune.meshmaster import build_prompt
    from meshtune.suites import load_suite

    line = json.dumps({"id": "a", "prompt": "/ai how do I relay?", "channel": True})
    (item,) = load_suite(str(_suite(tmp_path, line))).items
    assert item.prompt == "how do I relay?"
    request = build_request(item, get_profile("meshmaster"), "S")
    bot = build_prompt("/ai how do I relay?", channel=True)
    assert request.messages[-1]["content"] == bot and "/ai /ai" not in bot


@pytest.mark.parametrize(
    ("prompt", "said"),
    [("/ai", "'/ai' has no question: on a channel the bot answers it with help text"),
     ("/data hi", "'/data': a channel item is sent as /ai QUESTION; write the question alone")],
)  # fmt: skip
def test_a_bare_channel_slash_ai_suite_item_is_refused_in_eval_as_in_prompt(
    cli, tmp_path, prompt, said
):
    suite = _suite(tmp_path, json.dumps({"id": "a", "prompt": prompt, "channel": True}))
    r = cli("eval", "smollm2-135m", "--suite", suite, "--out", tmp_path / "o")
    assert one_line_error(r), r.err
    assert f"{suite}:1: {said}" in r.err


def test_channel_history_of_40000_ai_lines_is_built_in_linear_time(cli, tmp_path):
    history = tmp_path / "history.jsonl"
    senders = ["K7QX", "W1AW", "N0CALL"]
    # one plain message, then 40,000 /ai commands: each command's thread root is that message
    history.write_text(json.dumps({"from": "K7QX", "text": "q 0"}) + "\n" + "".join(
        json.dumps({"from": senders[i % 3], "text": f"/ai q {i}"}) + "\n"
        for i in range(1, 40_001)
    ))  # fmt: skip
    start = time.monotonic()
    r = cli("prompt", "/ai hi", "--channel", "--history", history)
    seconds = time.monotonic() - start
    assert r.code == 0, r.err
    # the thread's root: K7QX's latest message that is not a command
    assert "Context:\nK7QX: q 0\n\nQuestion: hi\n" in r.out
    assert seconds < 5, f"{seconds:.1f} s"  # was 69 s: quadratic in the history's length


@pytest.mark.parametrize(
    ("text", "said"),
    [('{"system_prompt": ' + "[" * 100_000 + "]" * 100_000 + "}",
      ":1: invalid JSON (arrays or objects nested too deeply)"),
     ('{\n"ollama_num_ctx": ' + "9" * 5000 + "}",
      ":2: invalid JSON (a 5,000-digit number, longer than a number can be)"),
     ('{\n"ai_node_name": "bot",\n"system_prompt": "You help \\ud83d on the mesh."}',
      ":3: invalid JSON (a lone surrogate \\ud83d is not a character")],
)  # fmt: skip
def test_a_config_nested_100000_deep_a_5000_digit_integer_or_a_lone_surrogate_is_one_line(
    cli, tmp_path, text, said
):
    config = tmp_path / "config.json"
    config.write_text(text)
    r = cli("prompt", "hi", "--mesh-master-config", config)
    assert one_line_error(r), r.err
    assert f"{config}{said}" in r.err and "fix the file" in r.err


@pytest.mark.parametrize(
    ("line", "said"),
    [('{"from": "K7QX", "text": ' + "[" * 100_000 + "]" * 100_000 + "}",
      ":2: invalid JSON (arrays or objects nested too deeply)"),
     ('{"from": "K7QX", "text": "hi", "ai": ' + "9" * 5000 + "}",
      ":2: invalid JSON (a 5,000-digit number, longer than a number can be at column 38)"),
     ('{"from": "K7QX", "text": "\\udc00"}', ":2: invalid JSON (a lone surrogate \\udc00")],
)  # fmt: skip
def test_a_history_line_nested_100000_deep_a_5000_digit_integer_or_a_lone_surrogate_is_one_line(
    cli, tmp_path, line, said
):
    history = tmp_path / "history.jsonl"
    history.write_text('{"from": "K7QX", "text": "hello"}\n' + line + "\n")
    r = cli("prompt", "hi", "--history", history)
    assert one_line_error(r), r.err
    assert f"{history}{said}" in r.err


def test_a_history_line_with_a_raw_u2028_inside_a_string_is_one_message(cli, tmp_path):
    history = tmp_path / "history.jsonl"
    line = json.dumps({"from": "K7QX", "text": "first\u2028line"}, ensure_ascii=False)
    history.write_text(line + "\n", encoding="utf-8")
    r = cli("prompt", "/ai hi", "--channel", "--history", history)
    assert r.code == 0, r.err
    assert "Context:\nK7QX: first\u2028line\n\nQuestion: hi\n" in r.out


def test_an_unknown_default_personality_id_is_named_with_the_personas_known(cli, tmp_path, real):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"default_personality_id": "medik"}))
    r = cli("prompt", "hi", "--mesh-master-config", config)
    assert one_line_error(r), r.err
    assert f"{config}: default_personality_id 'medik' names no persona (known: trail)" in r.err
    assert "pass them with --personas FILE" in r.err
    r = cli("prompt", "hi", "--mesh-master-config", config,
            "--personas", real / "mesh-master-personas.json")  # fmt: skip
    assert one_line_error(r), r.err
    assert "default_personality_id 'medik' names no persona (known: trail, " in r.err
    assert "the bot falls back to 'trail'; fix the id" in r.err


def test_personas_beside_a_config_with_its_own_ai_personalities_is_refused(cli, tmp_path, real):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"ai_personalities": [{"id": "ops", "prompt": "Be brief."}]}))
    personas = real / "mesh-master-personas.json"
    r = cli("prompt", "hi", "--mesh-master-config", config, "--personas", personas)
    assert one_line_error(r), r.err
    assert f"--personas {personas}: has no effect, {config} lists its own ai_personalities" in r.err
    assert cli("prompt", "hi", "--mesh-master-config", config).code == 0


@pytest.mark.parametrize(
    ("change", "said"),
    [({"gguf": 5}, "export.json: `gguf` is 5, not a string"),
     ({"verified": "yes"}, 'export.json: `verified` is "yes", not a boolean'),
     ({"quant": "Q2_K"}, "export.json: `quant` 'Q2_K' is not a type meshtune exports")],
)  # fmt: skip
def test_export_json_with_gguf_5_or_quant_q2_k_is_a_one_line_error_naming_the_key(
    cli, tmp_path, change, said
):
    from tests.tiny import write_summary

    run = tmp_path / "run"
    write_summary(run, "smollm2-135m")
    info = {"run": str(run), "name": "m", "quant": "Q8_0", "gguf": "m-Q8_0.gguf", "verified": True}
    (run / "export.json").write_text(json.dumps({**info, **change}))
    r = cli("verify", run)
    assert one_line_error(r), r.err
    assert f"{run}/{said}" in r.err and "meshtune export" in r.err


def test_plan_with_val_set_size_100_on_20_rows_names_val_set_size(cli, tmp_path):
    rows = rows_file(tmp_path, [chat(f"question {i}?", f"answer {i}.") for i in range(20)])
    recipe = write_recipe(tmp_path, f"datasets: [{{path: {rows}}}]\nval_set_size: 100\n")
    r = cli("plan", recipe)
    assert one_line_error(r), r.err
    assert "val_set_size 100: the datasets hold only 20 conversations" in r.err
    assert "eval fraction" not in r.err


def test_a_data_row_nested_100000_deep_is_an_invalid_json_finding_not_unexpected(cli, tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    path = rows_file(tmp_path, [chat("hi?", "hello."), '{"conversations": ' + deep + "}"])
    r = cli("data", "check", path)
    assert r.code == 1 and "unexpected" not in r.err, r.err
    assert f"{path.name}:2: E101 invalid JSON (arrays or objects nested too deeply" in r.out


def test_a_system_prompt_argument_that_is_not_utf8_is_a_one_line_error(tmp_path):
    """Bytes that are not UTF-8 reach Python as a lone surrogate (here in --system)."""
    system = os.fsdecode(b"be brief \xff")
    proc = _meshtune(
        "eval", "bot", "--backend", "openai", "--system", system, "--out", tmp_path / "o"
    )
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and err.count("\n") == 1, err
    assert "error: argument 'be brief \ufffd': character 10 is not UTF-8 text" in err


# ---------------------------------------------------------------------------------------------
# The error boundary and signals


def test_an_unexpected_exception_is_one_line_naming_the_command_and_debug_shows_the_traceback(
    cli, monkeypatch, tmp_path, data_file
):
    # a fake failure: every real one found by the probe is fixed at its cause
    def broken(*_args, **_kwargs):
        raise RuntimeError("disk on fire\nsecond line")

    monkeypatch.setattr("meshtune.data.stats", broken)
    r = cli("data", "stats", data_file)
    assert one_line_error(r), r.err
    assert (
        f"meshtune data stats {data_file}: unexpected RuntimeError: disk on fire second line"
        in r.err
    )
    assert "--debug" in r.err
    r = cli("data", "stats", data_file, "--debug")
    assert r.code == 2 and "Traceback (most recent call last)" in r.err


def _meshtune(*args: str, **kwargs) -> subprocess.Popen:
    import meshtune

    # the meshtune these tests import, wherever it is
    env = {**os.environ, "PYTHONPATH": str(Path(meshtune.__file__).parents[1])}
    return subprocess.Popen(
        [sys.executable, "-m", "meshtune", *map(str, args)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **kwargs,
    )  # fmt: skip


def test_sigint_during_eval_says_nothing_was_written_and_exits_130(tmp_path):
    reply = {"choices": [{"message": {"content": "ok."}, "finish_reason": "stop"}]}
    server = _Server(json.dumps(reply).encode(), "application/json", delay=0.5)
    try:
        proc = _meshtune("eval", "bot", "--backend", "openai", "--url", server.url,
                         "--suite", "quick", "--out", tmp_path / "out")  # fmt: skip
        deadline = time.time() + 60
        while server.requests == 0 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        server.close()
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == [
        "interrupted (SIGINT): nothing was written (the report is written when evaluation ends)"
    ]
    assert not (tmp_path / "out").exists()


def test_sigterm_during_export_removes_its_temp_files_and_exits_130(proved):
    proc = _meshtune("export", proved, "--quant", "F32", "--name", "stopper")
    # stop it while it writes: its temp folder (merged.tmpPID) or temp GGUF exists
    deadline = time.time() + 120
    while not temps(proved) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert temps(proved), "the export finished before it could be stopped"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("interrupted (SIGTERM): export stopped")
    assert temps(proved) == []


def test_sigint_during_train_names_the_checkpoint_it_kept_and_exits_130(tmp_path, tiny_llama):
    from tests.test_train import tiny_recipe

    recipe = tiny_recipe(tmp_path, tiny_llama, max_steps=100_000, save_steps=1, eval_steps=1000)
    run = tmp_path / "run"
    proc = _meshtune("train", recipe, "--output-dir", run)
    deadline = time.time() + 180
    while not list(run.glob("checkpoints/step-*")) and time.time() < deadline:
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    # (the progress bar shares stderr)
    said = re.findall(r"interrupted \(SIGINT\): [^\r\n]*", err)
    assert said == [said[0]] and "Traceback" not in err, err
    assert said[0].startswith(f"interrupted (SIGINT): kept the last checkpoint, {run}/checkpoints/")
    assert said[0].endswith("(continue with --resume)")


# ---------------------------------------------------------------------------------------------
# Properties: random recipes, --set values and bytes; success or one line with exit 2


def _outcome_is_allowed(code: int, err: str, allowed=(0, 2)) -> bool:
    if code not in allowed:
        return False
    if code == 2:
        return (
            err.startswith("error: ") and err.count("\n") == 1 and "rerun with --debug" not in err
        )
    return "Traceback" not in err


RECIPE_KEYS = ["learning_rate", "num_epochs", "max_steps", "sequence_len", "micro_batch_size",
               "lora_r", "lora_alpha", "val_set_size", "warmup_ratio", "warmup_steps", "seed",
               "datasets", "base_model", "eval_steps", "special_tokens", "chat_template",
               "sample_packing", "ollama", "optimizer", "nonsense_key"]  # fmt: skip
yaml_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
)  # fmt: skip
yaml_values = st.recursive(
    yaml_scalars,
    lambda inner: st.lists(inner, min_size=1, max_size=3)
    | st.dictionaries(st.text(max_size=6), inner, min_size=1, max_size=3),
    max_leaves=6,
)  # fmt: skip
FAST = settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@FAST
@given(st.lists(st.tuples(st.sampled_from(RECIPE_KEYS), yaml_values), min_size=1, max_size=4))
def test_property_random_recipe_yaml_at_plan(tmp_path_factory, changes):
    folder = tmp_path_factory.mktemp("recipe")
    data = rows_file(folder, [chat("hi?", "hello.")])
    recipe = {"datasets": [{"path": str(data)}], "max_steps": 1, **dict(changes)}
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, allow_unicode=True))
    code, _, err = run_main("plan", path)
    assert _outcome_is_allowed(code, err), err


@FAST
@given(
    st.sampled_from(RECIPE_KEYS),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20),
)
def test_property_random_set_values_at_plan(tmp_path_factory, key, value):
    folder = tmp_path_factory.mktemp("set")
    data = rows_file(folder, [chat("hi?", "hello.")])
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump({"datasets": [{"path": str(data)}], "max_steps": 1}))
    code, _, err = run_main("plan", path, "--set", f"{key}={value}")
    assert _outcome_is_allowed(code, err), err


@FAST
@given(
    st.binary(max_size=300)
    # FROM with what a path can hold: ~user, NUL bytes, folders, quotes
    | st.lists(st.sampled_from(["~", "\x00", "/", ".", "..", "a", " ", '"', ".gguf", "\n"])).map(
        lambda parts: f"FROM {''.join(parts)}\nPARAMETER stop x\n".encode()
    )
)
def test_property_random_bytes_at_modelfile_check(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("mf") / "Modelfile"
    path.write_bytes(content)
    code, _, err = run_main("modelfile", "check", path)
    assert _outcome_is_allowed(code, err, allowed=(0, 1, 2)), err


@FAST
@given(st.binary(max_size=400), st.booleans())
def test_property_random_bytes_at_the_base_model_loader(tmp_path_factory, content, magic):
    from meshtune.errors import MeshtuneError
    from meshtune.models import resolve

    folder = tmp_path_factory.mktemp("gguf")
    path = folder / "model.gguf"
    path.write_bytes((b"GGUF\x03\x00\x00\x00" if magic else b"") + content)
    os.environ["MESHTUNE_CACHE"] = str(folder / "cache")
    try:
        resolve(str(path))
    except MeshtuneError as e:
        assert "\n" not in str(e) and str(path) in str(e)
    finally:
        del os.environ["MESHTUNE_CACHE"]
    assert files.remove_stale_temps(folder / "cache" / "models") == []


# =============================================================================================
# Issue 22, items 1-3: writes that cannot destroy, config edits that keep every other byte,
# deploy ships only what was proven. One test per case of the second hostile probe.


def snapshot(folder: Path) -> dict[str, tuple[str, bytes | str]]:
    """Every entry under `folder` (links not followed): its kind and its bytes or target."""
    out: dict[str, tuple[str, bytes | str]] = {}
    for p in sorted(folder.rglob("*")):
        name = str(p.relative_to(folder))
        if p.is_symlink():
            out[name] = ("link", os.readlink(p))
        elif p.is_fifo() or p.is_char_device():
            out[name] = ("fifo" if p.is_fifo() else "device", b"")
        elif p.is_dir():
            out[name] = ("dir", b"")
        else:
            out[name] = ("file", p.read_bytes())
    return out


@pytest.fixture
def exports(tmp_path) -> Path:
    """A folder of the user's own files, the probe's target."""
    folder = tmp_path / "exports"
    (folder / "older").mkdir(parents=True)
    (folder / "README.txt").write_text("mine\n")
    (folder / "older" / "run.jsonl").write_text("{}\n")
    return folder


def test_data_convert_to_an_existing_folder_is_refused_and_the_folder_kept(
    cli, tmp_path, data_file, exports
):
    before = snapshot(tmp_path)
    for target in (exports, f"{exports}/", f"{exports}/."):
        r = cli("data", "convert", data_file, target)
        assert one_line_error(r) and "is a folder, not a file" in r.err, r.err
    assert snapshot(tmp_path) == before


def test_data_convert_to_dot_dot_keeps_the_parent_folder(cli, tmp_path, data_file, monkeypatch):
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    before = snapshot(tmp_path)
    r = cli("data", "convert", data_file, "..")
    assert one_line_error(r) and "is a folder" in r.err, r.err
    assert snapshot(tmp_path) == before


def test_data_convert_to_the_current_folder_with_a_slash_keeps_it(
    cli, tmp_path, data_file, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    for target in (".", f"{tmp_path}/"):
        r = cli("data", "convert", data_file, target)
        assert one_line_error(r) and "is a folder" in r.err, r.err
    assert snapshot(tmp_path) == before


def test_data_convert_to_a_fifo_is_refused_without_blocking_and_the_fifo_kept(
    cli, tmp_path, data_file
):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    r = cli("data", "convert", data_file, fifo)
    assert one_line_error(r) and "is a FIFO, not a file" in r.err, r.err
    assert fifo.is_fifo()


def device(folder: Path) -> Path:
    """A character device to aim at: a private copy of /dev/null where this user may make one
    (as root, a test run against code with the bug must not replace the real /dev/null)."""
    path = folder / "null"
    try:
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    except PermissionError:
        return Path("/dev/null")  # not root: it cannot be replaced either
    return path


def test_data_convert_to_a_device_is_refused_and_the_device_kept(cli, tmp_path, data_file):
    null = device(tmp_path)
    r = cli("data", "convert", data_file, null)
    assert one_line_error(r) and "is a character device" in r.err, r.err
    assert null.is_char_device()


def test_data_convert_to_a_symlink_to_a_folder_is_refused_and_both_kept(
    cli, tmp_path, data_file, exports
):
    link = tmp_path / "out.jsonl"
    link.symlink_to(exports)
    before = snapshot(tmp_path)
    r = cli("data", "convert", data_file, link)
    assert one_line_error(r) and f"is a folder ({exports})" in r.err, r.err
    assert snapshot(tmp_path) == before


def test_data_convert_through_a_symlink_writes_its_target_and_keeps_the_link(
    cli, tmp_path, data_file
):
    target = tmp_path / "real.jsonl"
    target.write_text("old\n")
    target.chmod(0o640)
    link = tmp_path / "out.jsonl"
    link.symlink_to(target.name)
    r = cli("data", "convert", data_file, link)
    assert r.code == 0, r.err
    assert link.is_symlink() and os.readlink(link) == "real.jsonl"
    assert len(target.read_text().splitlines()) == 6 and (target.stat().st_mode & 0o777) == 0o640


def test_data_split_refuses_a_folder_named_like_its_output_and_writes_neither_file(
    cli, tmp_path, data_file
):
    (tmp_path / "chats.eval.jsonl").mkdir()
    (tmp_path / "chats.eval.jsonl" / "keep.txt").write_text("mine")
    before = snapshot(tmp_path)
    r = cli("data", "split", data_file, "--eval-fraction", "0.3")
    assert one_line_error(r) and "chats.eval.jsonl: is a folder" in r.err, r.err
    assert snapshot(tmp_path) == before  # no chats.train.jsonl either


def test_data_split_refuses_two_outputs_that_are_one_file(cli, tmp_path, data_file):
    (tmp_path / "both.jsonl").write_text("mine\n")
    for side in ("train", "eval"):
        (tmp_path / f"chats.{side}.jsonl").symlink_to("both.jsonl")
    before = snapshot(tmp_path)
    r = cli("data", "split", data_file, "--eval-fraction", "0.3")
    assert one_line_error(r) and "the same file" in r.err, r.err
    assert snapshot(tmp_path) == before


def test_data_split_replaces_both_files_or_neither_when_the_second_rename_fails(
    cli, tmp_path, data_file, monkeypatch
):
    for side in ("train", "eval"):
        (tmp_path / f"chats.{side}.jsonl").write_text(f"old {side}\n")
    before = snapshot(tmp_path)
    real_replace, calls = os.replace, []

    def replace_then_fail(src, dst):  # a fault injected into the second rename
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(28, "No space left on device", str(src))
        return real_replace(src, dst)

    monkeypatch.setattr(files.os, "replace", replace_then_fail)
    r = cli("data", "split", data_file, "--eval-fraction", "0.3")
    monkeypatch.undo()
    assert one_line_error(r) and "No space left on device" in r.err, r.err
    assert snapshot(tmp_path) == before  # the first file put back, no temp file left


def test_an_eval_report_is_written_together_or_not_at_all(tmp_path):
    out = tmp_path / "report"
    out.mkdir()
    (out / "summary.json").write_text("{}")
    (out / "report.html").mkdir()  # the last of the four cannot be written
    before = snapshot(tmp_path)
    with pytest.raises(MeshtuneError, match=r"report\.html: is a folder"):
        files.write_files({out / n: "new" for n in ("replies.jsonl", "summary.json", "report.md",
                                                     "report.html")})  # fmt: skip
    assert snapshot(tmp_path) == before


# --- Config edits that keep every other byte, local and over ssh ------------------------------


def config_variant(real: Path, kind: str) -> bytes:
    return config_bytes((real / "mesh-master-config.json").read_text(), kind)


@pytest.mark.parametrize("kind", CONFIG_VARIANTS)
@pytest.mark.parametrize("symlinked", [False, True], ids=["file", "symlink"])
def test_local_deploy_changes_only_the_ollama_model_bytes_of_the_config(
    proved, real, cli, monkeypatch, tmp_path, kind, symlinked
):
    (proved / "meshtastic_knowledge.txt").unlink(missing_ok=True)  # only ollama_model to set
    stand_in_ollama(tmp_path / "bin")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    target = tmp_path / "mm" / "config.json"
    target.parent.mkdir()
    before = config_variant(real, kind)
    target.write_bytes(before)
    config = target
    if symlinked:
        config = tmp_path / "config-link.json"
        config.symlink_to(target)
    r = cli("deploy", proved, "--name", "mesh-bot", "--mesh-master-config", config)
    assert r.code == 0, r.err
    assert target.read_bytes() == before.replace(b'"llama3.2:1b"', b'"mesh-bot"')
    assert config.is_symlink() == symlinked
    (backup,) = target.parent.glob("config.json.*.bak")
    assert backup.read_bytes() == before


@pytest.fixture
def knowledge_run(proved, real) -> Path:
    """A proved run carrying the knowledge file its model was trained with (issue 20)."""
    shutil.copy(real / "mesh-master-meshtastic-knowledge.txt", proved / "meshtastic_knowledge.txt")
    return proved


def test_local_deploy_installs_the_runs_knowledge_file_and_points_the_config_at_it(
    knowledge_run, real, cli, monkeypatch, tmp_path
):
    stand_in_ollama(tmp_path / "bin")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    config = tmp_path / "mm" / "config.json"
    config.parent.mkdir()
    before = config_variant(real, "crlf")
    config.write_bytes(before)
    r = cli("deploy", knowledge_run, "--name", "mesh-bot", "--mesh-master-config", config)
    assert r.code == 0, r.err
    installed = config.parent / "meshtastic_knowledge.mesh-bot.txt"
    assert installed.read_bytes() == (knowledge_run / "meshtastic_knowledge.txt").read_bytes()
    key = json.dumps(str(installed)).encode()
    want = before.replace(b'"llama3.2:1b"', b'"mesh-bot"').replace(
        b"{\r\n  ", b'{\r\n  "meshtastic_knowledge_file": ' + key + b",\r\n  ", 1
    )
    assert config.read_bytes() == want
    assert "installed the run's knowledge file" in r.out


def test_a_failed_ollama_create_leaves_config_and_knowledge_file_as_they_were(
    knowledge_run, config, cli, monkeypatch, tmp_path
):
    stand_in_ollama(tmp_path / "bin", exit_code=1)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    before = snapshot(config.parent)
    r = cli("deploy", knowledge_run, "--name", "mesh-bot", "--mesh-master-config", config)
    assert one_line_error(r) and "ollama create failed" in r.err, r.err
    assert snapshot(config.parent) == before


def test_local_deploy_refuses_a_config_that_is_a_fifo_without_blocking(
    proved, cli, monkeypatch, tmp_path
):
    stand_in_ollama(tmp_path / "bin")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    fifo = tmp_path / "config.json"
    os.mkfifo(fifo)
    r = cli("deploy", proved, "--name", "mesh-bot", "--mesh-master-config", fifo)
    assert one_line_error(r) and "is a FIFO" in r.err, r.err
    assert fifo.is_fifo() and not (tmp_path / "bin" / "calls.jsonl").exists()


# --- Deploy ships only what was proven -------------------------------------------------------


def test_deploy_dry_run_without_to_runs_nothing_and_changes_nothing(
    knowledge_run, config, cli, monkeypatch, tmp_path
):
    log = stand_in_ollama(tmp_path / "bin")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    before = snapshot(config.parent)
    r = cli("deploy", knowledge_run, "--name", "mesh-bot", "--mesh-master-config", config,
            "--dry-run")  # fmt: skip
    assert r.code == 0, r.err
    assert not log.exists() and snapshot(config.parent) == before
    assert "dry run" in r.out and "ollama create mesh-bot" in r.out
    assert "set ollama_model and meshtastic_knowledge_file in" in r.out


def test_local_deploy_without_ollama_changes_nothing_and_says_how_to_finish_on_the_pi(
    proved, config, cli, monkeypatch, tmp_path
):
    monkeypatch.setenv("PATH", str(tmp_path / "no-ollama"))
    before = snapshot(config.parent)
    r = cli("deploy", proved, "--name", "mesh-bot", "--mesh-master-config", config)
    assert r.code == 0, r.err
    assert snapshot(config.parent) == before  # ollama_model never names a model not created
    assert "nothing was changed" in r.out and "ollama create mesh-bot -f" in r.out
    assert f"set ollama_model and meshtastic_knowledge_file in {config}" in r.out
    assert "deploy --to" in r.out


def test_local_deploy_refuses_the_name_of_the_model_the_bot_runs(
    proved, config, cli, monkeypatch, tmp_path
):
    log = stand_in_ollama(tmp_path / "bin")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    before = snapshot(config.parent)
    r = cli("deploy", proved, "--name", "llama3.2", "--mesh-master-config", config)
    assert r.code == 0  # another name: fine
    config.write_bytes(before["config.json"][1])
    for p in config.parent.glob("*.bak"):
        p.unlink()
    log.unlink()
    config.write_text(config.read_text().replace('"llama3.2:1b"', '"mesh-bot"'))
    r = cli("deploy", proved, "--name", "mesh-bot", "--mesh-master-config", config)
    assert one_line_error(r) and "already 'mesh-bot'" in r.err and "new --name" in r.err
    assert not log.exists() and not list(config.parent.glob("*.bak"))


MODELFILE_EDITS = {
    "a_second_template": ('TEMPLATE """{{ .Prompt }}"""\n', "E309"),
    "a_second_system_naming_send": ('SYSTEM """Use /send to reach anyone."""\n', "E309"),
    "a_stop_that_is_a_common_word": ('PARAMETER stop "the"\n', "E310"),
    "num_predict_abc": ("PARAMETER num_predict abc\n", "E303"),
    "an_unknown_parameter": ("PARAMETER temprature 0.2\n", "E302"),
    "num_ctx_beyond_the_model": ("PARAMETER num_ctx 65536\n", "E311"),
}


@pytest.mark.parametrize("edit", MODELFILE_EDITS)
def test_a_modelfile_edited_after_verify_fails_check_verify_and_deploy(
    proved, cli, monkeypatch, tmp_path, edit
):
    line, code = MODELFILE_EDITS[edit]
    log = stand_in_ollama(tmp_path / "bin")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    with (proved / "Modelfile").open("a") as f:
        f.write(line)
    r = cli("deploy", proved, "--name", "mesh-bot", "--force")
    assert one_line_error(r) and "not the Modelfile verify.json proved" in r.err, r.err
    r = cli("modelfile", "check", proved / "Modelfile")
    assert r.code == 1 and f" {code} " in r.out, r.out
    r = cli("verify", proved)
    assert r.code == 1 and "FAIL    modelfile" in r.out and code in r.out, r.out + r.err
    r = cli("deploy", proved, "--name", "mesh-bot")  # proven again: and it failed
    assert one_line_error(r) and "verification failed (modelfile)" in r.err, r.err
    assert not log.exists()


def test_a_harmless_modelfile_edit_ships_once_verified_again(proved, cli, monkeypatch, tmp_path):
    log = stand_in_ollama(tmp_path / "bin")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    with (proved / "Modelfile").open("a") as f:
        f.write("# a comment\n")
    assert cli("deploy", proved, "--name", "mesh-bot").code == 2
    assert cli("verify", proved).code == 0
    assert cli("deploy", proved, "--name", "mesh-bot").code == 0 and log.exists()


@pytest.mark.parametrize("source", ["/etc/passwd", "../elsewhere.gguf", "./notes.gguf"])
def test_modelfile_check_refuses_a_from_that_is_not_a_gguf_beside_it(cli, tmp_path, source):
    folder = tmp_path / "run"
    folder.mkdir()
    (tmp_path / "elsewhere.gguf").write_bytes(b"GGUF\x03\x00\x00\x00")
    (folder / "notes.gguf").write_text("not a model")
    (folder / "Modelfile").write_text(f'FROM {source}\nPARAMETER stop "<|im_end|>"\n')
    r = cli("modelfile", "check", folder / "Modelfile")
    assert r.code == 1 and "E304" in r.out, r.out
    assert ("outside the Modelfile's folder" in r.out) == (source != "./notes.gguf")


@pytest.mark.parametrize(
    "ok", [0, 1, "false", "true", "yes", [], {}], ids=lambda v: f"ok={json.dumps(v)}"
)
def test_verify_json_counts_a_check_as_passed_only_when_ok_is_true(
    proved, cli, monkeypatch, tmp_path, ok
):
    monkeypatch.setenv("PATH", str(tmp_path / "no-ollama"))
    proof = json.loads((proved / "verify.json").read_text())
    proof["checks"][0]["ok"] = ok
    (proved / "verify.json").write_text(json.dumps(proof))
    r = cli("deploy", proved, "--name", "mesh-bot")
    assert one_line_error(r) and "verification failed (metadata)" in r.err, r.err


def test_verify_json_with_no_checks_is_not_verified(proved, cli, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path / "no-ollama"))
    proof = json.loads((proved / "verify.json").read_text())
    proof["checks"] = []
    (proved / "verify.json").write_text(json.dumps(proof))
    r = cli("deploy", proved, "--name", "mesh-bot")
    assert one_line_error(r) and "verification failed (metadata (missing)" in r.err, r.err


# --- Properties: random paths (folders, links, FIFOs, devices) at every command that writes ---


def _hostile_folder(root: Path, real: Path) -> Path:
    """A folder of the user's things of every kind, each a tempting output path."""
    box = root / "box"
    (box / "dir" / "sub").mkdir(parents=True)
    (box / "dir" / "keep.txt").write_text("mine\n")
    (box / "file.jsonl").write_text("mine\n")
    shutil.copy(real / "mesh-master-config.json", box / "config.json")
    os.mkfifo(box / "fifo")
    device(box)
    for name, target in {
        "link-dir": "dir",
        "link-file": "file.jsonl",
        "link-config": "config.json",
        "link-fifo": "fifo",
        "dangling": "dir/missing.jsonl",
        "loop": "loop",
    }.items():
        (box / name).symlink_to(target)
    return box


HOSTILE_PATHS = st.tuples(
    st.sampled_from(["dir", "dir/sub", "file.jsonl", "config.json", "fifo", "link-dir",
                     "link-file", "link-config", "link-fifo", "dangling", "loop", "new.jsonl",
                     ".", "..", "null"]),
    st.sampled_from(["", "/", "/.", "/..", "/new.jsonl", "/dir"]),
).map("".join)  # fmt: skip


def _only_the_target_changed(before: dict, after: dict, box: Path, target: str) -> bool:
    """Every entry that was there is unchanged, except the one regular file the path names."""
    written = os.path.realpath(box / target)
    changed = [k for k in before if after.get(k) != before[k]]
    return all(os.path.realpath(box.parent / k) == written for k in changed)


@FAST
@given(HOSTILE_PATHS)
def test_property_random_paths_at_data_convert(tmp_path_factory, real, target):
    root = tmp_path_factory.mktemp("convert")
    box = _hostile_folder(root, real)
    data = rows_file(root, [chat(f"q {i}?", f"a {i}.") for i in range(4)])
    before = snapshot(root)
    cwd = os.getcwd()
    os.chdir(box)
    try:
        code, _, err = run_main("data", "convert", data, target)
    finally:
        os.chdir(cwd)
    after = snapshot(root)
    assert _outcome_is_allowed(code, err), err
    assert _only_the_target_changed(before, after, box, target), (target, err)
    if code == 0:
        assert Path(os.path.realpath(box / target)).is_file()
    assert temps(root) == []


@FAST
@given(HOSTILE_PATHS)
def test_property_random_out_dirs_at_data_split(tmp_path_factory, real, target):
    root = tmp_path_factory.mktemp("split")
    box = _hostile_folder(root, real)
    data = rows_file(root, [chat(f"q {i}?", f"a {i}.") for i in range(6)], name="new.jsonl")
    before = snapshot(root)
    cwd = os.getcwd()
    os.chdir(box)
    try:
        code, _, err = run_main("data", "split", data, "--out-dir", target)
    finally:
        os.chdir(cwd)
    assert _outcome_is_allowed(code, err), err
    assert [k for k in before if snapshot(root).get(k) != before[k]] == []  # only new files
    assert temps(root) == []


@FAST
@given(HOSTILE_PATHS)
def test_property_random_config_paths_at_deploy(tmp_path_factory, real, stopper, target):
    root = tmp_path_factory.mktemp("deploy")
    box = _hostile_folder(root, real)
    run = root / "run"
    shutil.copytree(stopper[0], run)
    log = stand_in_ollama(root / "bin")
    before = snapshot(root)
    cwd, path = os.getcwd(), os.environ["PATH"]
    os.chdir(box)
    os.environ["PATH"] = str(root / "bin")
    try:
        code, _, err = run_main("deploy", run, "--name", "mesh-bot", "--mesh-master-config",
                                target)  # fmt: skip
    finally:
        os.chdir(cwd)
        os.environ["PATH"] = path
    after = snapshot(root)
    assert _outcome_is_allowed(code, err), err
    assert _only_the_target_changed(before, after, box, target), (target, err)
    if code != 0:
        assert not log.exists() or "ollama create" in err
    assert temps(root) == []


# --- Issue 22's second probe, re-run (benchmarks/probe.py): inputs that are not files ---------


def _within(seconds: float, *args) -> tuple[int | None, str]:
    """`meshtune ARGS` in a process of its own, killed after `seconds`: (exit or None, stderr).
    A read that blocks fails the test instead of hanging it."""
    proc = _meshtune(*args, stdin=subprocess.DEVNULL)
    try:
        _, err = proc.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        return None, proc.communicate()[1]
    return proc.returncode, err


FIFO_INPUTS = {
    "prompt --mesh-master-config": lambda f, run: ["prompt", "hi", "--mesh-master-config", f],
    "prompt --history": lambda f, run: ["prompt", "hi", "--history", f],
    "prompt --personas": lambda f, run: ["prompt", "hi", "--personas", f],
    "data check": lambda f, run: ["data", "check", f],
    "data stats": lambda f, run: ["data", "stats", f],
    "plan RECIPE": lambda f, run: ["plan", f],
    "plan --data": lambda f, run: ["plan", REPO / "recipes/embedded-cpu.yaml", "--data", f],
    "eval --suite": lambda f, run: ["eval", "--replies", run / "empty.jsonl", "--suite", f],
    "eval --replies": lambda f, run: ["eval", "--replies", f, "--suite", "quick"],
    "eval --gate": lambda f, run: ["eval", "--replies", run / "empty.jsonl", "--gate", f],
    "kb check": lambda f, run: ["kb", "check", f],
    "modelfile check": lambda f, run: ["modelfile", "check", f],
}


@pytest.mark.parametrize("command", FIFO_INPUTS)
def test_a_fifo_given_as_an_input_file_is_refused_without_blocking(tmp_path, command):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    (tmp_path / "empty.jsonl").write_text("")
    code, err = _within(20, *FIFO_INPUTS[command](fifo, tmp_path))
    assert code == 2, f"exit {code} (None: still reading the FIFO after 20 s): {err}"
    assert err.strip().splitlines()[-1] == (
        f"error: {fifo}: is a FIFO, not a regular file; give "
        + {"data check": "a .jsonl file", "data stats": "a .jsonl file", "plan --data":
           "a .jsonl file", "plan RECIPE": "a YAML recipe", "eval --suite": "a suite JSONL file",
           "kb check": "a knowledge file"}.get(command, "a regular file")
    )  # fmt: skip
    assert fifo.is_fifo()


def test_verify_of_a_run_whose_modelfile_is_a_fifo_is_refused_without_blocking(proved):
    (proved / "Modelfile").unlink()
    os.mkfifo(proved / "Modelfile")
    code, err = _within(30, "verify", proved)
    assert code == 2, f"exit {code} (None: still reading the FIFO after 30 s): {err}"
    assert f"{proved / 'Modelfile'}: is a FIFO, not a regular file" in err
    assert (proved / "Modelfile").is_fifo()


@settings(FAST, max_examples=15)
@given(HOSTILE_PATHS)
def test_property_random_report_folders_at_eval_out(tmp_path_factory, real, target):
    root = tmp_path_factory.mktemp("eval")
    box = _hostile_folder(root, real)
    reply = {"choices": [{"message": {"content": "ok."}, "finish_reason": "stop"}]}
    server = _Server(json.dumps(reply).encode(), "application/json")
    before = snapshot(root)
    with contextlib.chdir(box), contextlib.closing(server):
        code, _, err = run_main("eval", "bot", "--backend", "openai", "--url", server.url,
                                "--suite", "quick", "--samples", "1", "--out", target)  # fmt: skip
    assert _outcome_is_allowed(code, err, allowed=(0, 1, 2)), err
    assert [k for k in before if snapshot(root).get(k) != before[k]] == []  # only new files
    if code != 2:
        assert (box / target / "summary.json").is_file()
    else:
        assert server.requests == 0  # refused before evaluating
    assert temps(root) == []


@FAST
@given(HOSTILE_PATHS)
def test_property_random_output_dirs_at_train_touch_nothing_before_the_model_loads(
    tmp_path_factory, real, target
):
    # The base model is missing, so every target that is not refused fails at the model check:
    # either way nothing under the folder may change, not even a new empty run folder.
    root = tmp_path_factory.mktemp("train")
    box = _hostile_folder(root, real)
    data = rows_file(root, [chat(f"q {i}?", f"a {i}.") for i in range(6)])
    before = snapshot(root)
    with contextlib.chdir(box):
        code, _, err = run_main("train", REPO / "recipes" / "embedded-cpu.yaml", "--data", data,
                                "--output-dir", target, "--set",
                                f"base_model={root / 'no-such-model'}")  # fmt: skip
    assert code == 2 and _outcome_is_allowed(code, err), err
    assert snapshot(root) == before, (target, err)


@pytest.mark.parametrize("link", ["dangling", "loop"])
def test_eval_out_through_a_dangling_or_looping_link_is_refused_before_evaluating(
    cli, tmp_path, link
):
    reply = {"choices": [{"message": {"content": "ok."}, "finish_reason": "stop"}]}
    server = _Server(json.dumps(reply).encode(), "application/json")
    out = tmp_path / link
    out.symlink_to(tmp_path / ("missing" if link == "dangling" else link))
    try:
        r = cli("eval", "bot", "--backend", "openai", "--url", server.url, "--suite", "quick",
                "--out", out / "report")  # fmt: skip
    finally:
        server.close()
    assert one_line_error(r) and f"{out} is a link to nothing" in r.err, r.err
    assert server.requests == 0 and out.is_symlink()


def test_eval_is_not_ready_when_the_backend_saw_whole_prompts_ollama_cuts_at_num_ctx(cli, tmp_path):
    from meshtune.evaluate.gate import GateConfig, judge

    reply = {"choices": [{"message": {"content": "ok."}, "finish_reason": "stop"}],
             "usage": {"prompt_tokens": 900, "completion_tokens": 2}}  # fmt: skip
    server = _Server(json.dumps(reply).encode(), "application/json")
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"ollama_num_ctx": 512}))
    gate = tmp_path / "gate.yaml"  # every other criterion off: only the prompts' fit decides
    gate.write_text("".join(f"{key}: null\n" for key in GateConfig.model_fields))
    try:
        r = cli("eval", "bot", "--backend", "openai", "--url", server.url, "--suite", "quick",
                "--samples", "1", "--mesh-master-config", config, "--gate", gate,
                "--out", tmp_path / "report")  # fmt: skip
    finally:
        server.close()
    assert r.code == 1, r.err
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["gate"]["verdict"] == "NOT READY"
    (c,) = summary["gate"]["criteria"]
    assert c["name"] == "prompts within num_ctx" and not c["ok"]
    assert c["value"] == len(summary["over_num_ctx"]["items"]) == summary["items"]
    assert "openai backend saw whole but Ollama cuts at num_ctx 512" in c["what"]
    # the same replies from a backend that cuts as Ollama does answered the bot's input
    rows = [json.loads(line) for line in (tmp_path / "report" / "replies.jsonl").open()]
    off = GateConfig(**dict.fromkeys(GateConfig.model_fields))
    assert judge({**summary, "backend": "hf"}, rows, off).ready


@pytest.mark.parametrize("output", ["Modelfile", "verify.json", "DEPLOY.md", "stopper-F32.gguf"])
@pytest.mark.parametrize("kind", ["folder", "fifo", "link to a folder"])
def test_export_refuses_an_output_that_is_not_a_file_before_merging(proved, cli, output, kind):
    path = proved / output
    path.unlink(missing_ok=True)
    {"folder": path.mkdir, "fifo": lambda: os.mkfifo(path),
     "link to a folder": lambda: path.symlink_to(proved / "best")}[kind]()  # fmt: skip
    merged = (proved / "merged").stat().st_ino
    r = cli("export", proved, "--quant", "F32", "--name", "stopper")
    assert one_line_error(r) and f"{output}: is a " in r.err and "an export output" in r.err, r.err
    assert (proved / "merged").stat().st_ino == merged  # not merged again
    assert os.path.lexists(path) and temps(proved) == []
