"""Backends call the model the way the deployed bot does: llama.cpp in-process with the GGUF's
own template, transformers with a run's base + best adapter, llama-cpp-python's real
OpenAI-compatible server on loopback, and a stand-in for Ollama that checks Mesh Master's body.
"""

import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from tests.tiny import lora_run, save_tiny_llama

from meshtune import meshmaster, models
from meshtune.errors import MeshtuneError
from meshtune.evaluate.backends import (
    LlamaCppBackend,
    OllamaBackend,
    OllamaRepeatPenalty,
    OpenAIBackend,
    SeededDraw,
    resolve_model,
)
from meshtune.evaluate.profiles import Profile, build_request, get_profile
from meshtune.rundir import ExportInfo, RunDir
from meshtune.suites import Item

RELAY = Item(id="relay", prompt="How do I relay to alice?")


@pytest.fixture(scope="module")
def llama() -> LlamaCppBackend:
    backend = LlamaCppBackend(models.embedded_gguf(), threads=2)
    yield backend
    backend.close()


def request(profile: str = "greedy", item: Item = RELAY, **options):
    prof = get_profile(profile)
    if options:
        prof = Profile(prof.name, {**prof.options, **options}, prof.mesh_master_prompt)
    return build_request(item, prof, meshmaster.DEFAULT_SYSTEM_PROMPT)


# ---------------------------------------------------------------- llama.cpp


def test_llamacpp_renders_the_prompt_with_the_models_own_chat_template(llama):
    """The tokens llama.cpp evaluates are the HF tokenizer's tokens of the HF chat template,
    the same rendering training uses."""
    from transformers import AutoTokenizer

    from meshtune.chat import render
    from meshtune.data import Message

    req = request()
    gen = llama.generate(req, seed=0)
    seen = llama.lanes[0].cached[: gen.prompt_tokens]  # what the KV cache holds
    tok = AutoTokenizer.from_pretrained(models.resolve("smollm2-135m").folder)
    text = render(tok, [Message(m["role"], m["content"]) for m in req.messages], True)
    assert seen == tok(text, add_special_tokens=False)["input_ids"]
    assert text.startswith("<|im_start|>system\n" + meshmaster.DEFAULT_SYSTEM_PROMPT)


def test_llamacpp_greedy_is_deterministic_and_sampling_follows_the_seed(llama):
    assert (
        llama.generate(request(num_predict=30), 0).text
        == llama.generate(request(num_predict=30), 5).text
    )
    sampled = request("meshmaster", num_predict=30)
    first, again = llama.generate(sampled, 1), llama.generate(sampled, 1)
    other = llama.generate(sampled, 2)
    assert first.text == again.text
    assert other.text != first.text


def test_llamacpp_reports_a_runaway_when_num_predict_is_hit(llama):
    gen = llama.generate(request(num_predict=3), 0)
    assert gen.finish_reason == "length" and gen.completion_tokens == 3
    done = llama.generate(
        request(item=Item(id="g", prompt="Reply with just the word: yes"), num_predict=80), 0
    )
    assert done.finish_reason == "stop" and done.completion_tokens < 80


# ---------------------------------------------------------------- transformers


def tiny_run(tmp_path: Path, gguf: bool = False) -> Path:
    """A run directory as `meshtune train` writes it: a tiny random llama base with the SmolLM2
    tokenizer, a perturbed LoRA adapter in best/, recipe.yaml and train_summary.json."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(models.resolve("smollm2-135m").folder)
    base_dir = save_tiny_llama(tmp_path / "base", tok, tie_word_embeddings=False)
    run = lora_run(
        tmp_path,
        LlamaForCausalLM.from_pretrained(base_dir),
        str(base_dir),
        "chatml",
        std=0.5,
        summary={"system_prompt": "RUN SYSTEM", "best_step": 3},
        ollama={"temperature": 0.4},
    )
    if gguf:
        (run / "model.gguf").symlink_to(models.embedded_gguf())
    return run


def test_run_dir_resolves_to_base_plus_best_adapter_with_its_system_prompt(tmp_path):
    run = tiny_run(tmp_path)
    spec = resolve_model(str(run))
    assert spec.backend == "hf" and spec.adapter == run / "best"
    assert spec.hf_name == str(tmp_path / "base") and spec.system_prompt == "RUN SYSTEM"
    assert spec.modelfile_options["temperature"] == 0.4
    with pytest.raises(MeshtuneError, match="meshtune export"):
        resolve_model(str(run), "llamacpp")
    (run / "m.gguf").symlink_to(models.embedded_gguf())
    spec = resolve_model(str(run))
    assert spec.backend == "llamacpp" and spec.gguf == run / "m.gguf"
    assert resolve_model(str(run), system="X").system_prompt == "X"
    (run / "n.gguf").symlink_to(models.embedded_gguf())
    with pytest.raises(MeshtuneError, match="several GGUF files"):
        resolve_model(str(run))
    ExportInfo(gguf="n.gguf").save(RunDir(run).export_info)  # the latest export's
    assert resolve_model(str(run)).gguf == run / "n.gguf"


def test_hf_backend_merges_the_adapter_and_generates_under_the_profile(tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from meshtune.evaluate.backends import open_backend

    run = tiny_run(tmp_path)
    backend = open_backend(resolve_model(str(run)), threads=2)
    ids = torch.tensor([[1, 2, 3, 4]])
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    with torch.no_grad():
        merged = backend.model(ids).logits
        plain = base(ids).logits
        adapted = PeftModel.from_pretrained(base, run / "best")(ids).logits
    assert torch.allclose(merged, adapted, atol=1e-4)
    assert not torch.allclose(merged, plain, atol=1e-2)
    gen = backend.generate(request(num_predict=6), 0)
    assert gen.finish_reason == ("length" if gen.completion_tokens == 6 else "stop")
    assert gen.prompt_tokens > 100  # the system prompt and Mesh Master's prompt string
    sampled = request("meshmaster", num_predict=6)
    assert backend.generate(sampled, 7).text == backend.generate(sampled, 7).text


def test_the_repeat_penalty_is_ollamas_over_the_last_64_tokens_prompt_included():
    import torch

    scores = torch.tensor([[2.0, -2.0, 1.0, 4.0]])
    pen = OllamaRepeatPenalty(2.0, pads=[0], last_n=3)
    # token 3 is in the prompt and in the window: penalised as Ollama's runner does
    out = pen(torch.tensor([[3, 0, 1]]), scores.clone())
    assert out.tolist() == [[1.0, -4.0, 1.0, 2.0]]
    # token 3 fell out of the 3-token window; a token seen twice is penalised once
    old = pen(torch.tensor([[3, 0, 2, 2]]), scores.clone())
    assert old.tolist() == [[1.0, -2.0, 0.5, 4.0]]
    # a row's left padding is not part of its sequence (the pad here is token 1)
    padded = OllamaRepeatPenalty(2.0, pads=[2], last_n=3)(torch.tensor([[1, 1, 2]]), scores)
    assert padded.tolist() == [[2.0, -2.0, 0.5, 4.0]]


def test_a_seeded_draw_follows_softmax_and_depends_only_on_its_seed_and_step():
    import torch

    logits = torch.log(torch.tensor([0.6, 0.3, 0.1, 0.0]))  # the last token is masked out
    seeds = list(range(3000))
    draw = SeededDraw(seeds, prompt_width=5)
    picked = draw(torch.zeros(3000, 5, dtype=torch.long), logits.repeat(3000, 1)).argmax(1)
    share = torch.bincount(picked, minlength=4) / 3000
    assert torch.allclose(share, torch.tensor([0.6, 0.3, 0.1, 0.0]), atol=0.03)
    # seed 7 draws the same token alone or in any batch; the next step draws anew
    alone = SeededDraw([7], 5)(torch.zeros(1, 5, dtype=torch.long), logits[None]).argmax(1)
    assert alone.item() == picked[7].item()
    steps = {
        SeededDraw([7], 5)(torch.zeros(1, 5 + s, dtype=torch.long), logits[None]).argmax().item()
        for s in range(30)
    }
    assert len(steps) > 1


def test_hf_batches_give_each_row_the_reply_it_gets_alone(tmp_path):
    """Many items and samples in one generate call, under the bot's sampler: a row's reply is
    its own (padding and neighbours change nothing), so base and tuned, given the same seeds,
    draw from the same stream."""
    from meshtune.evaluate.backends import open_backend

    run = tiny_run(tmp_path)
    backend = open_backend(resolve_model(str(run)), threads=2)
    backend.CPU_ROWS = 5
    items = [Item(id=f"q{i}", prompt="How do I relay to alice? " * (i + 1)) for i in range(3)]
    asks = [(request("meshmaster", item=it, num_predict=8), s) for it in items for s in (0, 1)]
    done: list[int] = []
    batched = backend.generate_many(asks, done.append)
    assert done == [5, 6]  # the longest prompts first, five rows a batch
    alone = [backend.generate(r, s) for r, s in asks]
    assert [g.text for g in batched] == [g.text for g in alone]
    assert [g.completion_tokens for g in batched] == [g.completion_tokens for g in alone]
    assert batched[0].text != batched[1].text  # two seeds, two draws


# ---------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def openai_server(tmp_path_factory):
    """llama-cpp-python's own OpenAI-compatible server, on loopback, serving the embedded GGUF."""
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    with log.open("wb") as sink:  # a file, not a pipe: the server's logging must never block
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "llama_cpp.server",
                "--model",
                str(models.embedded_gguf()),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--n_ctx",
                "2048",
                "--n_threads",
                "2",
                "--model_alias",
                "smollm2",
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(url + "/v1/models", timeout=2)
                break
            except OSError:
                if proc.poll() is not None:
                    break
                time.sleep(0.5)
        else:
            pytest.fail("llama_cpp.server did not answer within 2 minutes")
        if proc.poll() is not None:
            pytest.fail(f"llama_cpp.server exited: {log.read_text()[-800:]}")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_openai_backend_against_llama_cpp_server_matches_in_process_llama(openai_server, llama):
    backend = OpenAIBackend(openai_server + "/v1", "smollm2")
    gen = backend.generate(request(num_predict=24), 0)
    assert gen.text and gen.text == llama.generate(request(num_predict=24), 0).text
    assert gen.prompt_tokens == len(llama.prompt_tokens(request().messages))
    assert gen.completion_tokens and gen.prompt_tokens
    runaway = backend.generate(request(num_predict=4), 0)
    assert runaway.finish_reason == "length" and runaway.completion_tokens == 4


def test_openai_backend_unreachable_server_is_a_one_line_error():
    with pytest.raises(MeshtuneError, match="nothing is listening there"):
        OpenAIBackend(f"http://127.0.0.1:{free_port()}", "m").generate(request(), 0)


class FakeOllama(BaseHTTPRequestHandler):
    """A stand-in for Ollama (which cannot run here): records each request and streams a
    reply as newline-delimited JSON chunks, the last with done and done_reason."""

    requests: ClassVar[list] = []
    reply: ClassVar[list[str]] = ["Just DM me ", "'alice <msg>'", "."]
    done_reason = "stop"

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeOllama.requests.append((self.path, body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.end_headers()
        key = "response" if self.path == "/api/generate" else "message"
        for part in self.reply:
            value = part if key == "response" else {"role": "assistant", "content": part}
            self.wfile.write(json.dumps({key: value, "done": False}).encode() + b"\n")
        final = {
            key: "" if key == "response" else {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": self.done_reason,
            "eval_count": 7,
            "prompt_eval_count": 90,
        }
        self.wfile.write(json.dumps(final).encode() + b"\n")

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_ollama():
    FakeOllama.requests = []
    FakeOllama.done_reason = "stop"
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeOllama)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_ollama_backend_posts_the_body_meshtune_prompt_prints_to_a_fake_ollama(fake_ollama, cli):
    """The only addition to the bot's body is the seed, so samples are reproducible."""
    backend = OllamaBackend(fake_ollama, "mesh-master-bot")
    gen = backend.generate(request("meshmaster"), seed=2)
    path, body = FakeOllama.requests[0]
    assert path == "/api/generate"
    printed = cli("prompt", "How do I relay to alice?", "--model", "mesh-master-bot", "--json")
    bot_body = json.loads(printed.out)
    assert body == {**bot_body, "options": {**bot_body["options"], "seed": 2}}
    assert gen.text == "Just DM me 'alice <msg>'." and gen.finish_reason == "stop"
    assert gen.completion_tokens == 7 and gen.prompt_tokens == 90


def test_fake_ollama_done_reason_length_is_a_runaway(fake_ollama):
    FakeOllama.done_reason = "length"
    gen = OllamaBackend(fake_ollama, "m").generate(request("no-penalty"), 0)
    assert gen.finish_reason == "length"
    assert FakeOllama.requests[0][1]["options"]["repeat_penalty"] == 1.0


def test_fake_ollama_modelfile_profile_sends_only_the_seed_and_chats_for_multi_turn(fake_ollama):
    item = Item(
        id="m",
        messages=[
            {"role": "user", "content": "whats snr"},
            {"role": "assistant", "content": "Signal to noise."},
            {"role": "user", "content": "good value?"},
        ],
    )
    OllamaBackend(fake_ollama, "m").generate(build_request(item, get_profile("modelfile"), "S"), 4)
    path, body = FakeOllama.requests[0]
    assert path == "/api/chat" and body["options"] == {"seed": 4}
    assert [m["content"] for m in body["messages"]] == [
        "whats snr",
        "Signal to noise.",
        "good value?",
    ]


def test_served_model_names_need_a_served_backend():
    with pytest.raises(MeshtuneError, match="--backend ollama"):
        resolve_model("mesh-master-bot-v2")
    served = resolve_model("mesh-master-bot-v2", "ollama")
    assert served.backend == "ollama" and served.system_prompt == ""  # the Modelfile's applies
    with pytest.raises(MeshtuneError, match="--system has no effect"):
        resolve_model("mesh-master-bot-v2", "ollama", system="S")
    with pytest.raises(MeshtuneError, match="unknown backend"):
        resolve_model("smollm2-135m", "vllm")


def test_embedded_name_and_gguf_default_to_llamacpp(tmp_path):
    spec = resolve_model("smollm2-135m")
    assert spec.backend == "llamacpp" and spec.system_prompt == meshmaster.DEFAULT_SYSTEM_PROMPT
    gguf = tmp_path / "m.gguf"
    gguf.symlink_to(models.embedded_gguf())
    assert resolve_model(str(gguf)).gguf == gguf


def test_a_modelfile_beside_the_gguf_gives_its_system_and_parameters(tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.symlink_to(models.embedded_gguf())
    (tmp_path / "Modelfile").write_text(
        'FROM ./m.gguf\nSYSTEM """You relay.\nBe brief."""\nPARAMETER temperature 0.3\n'
    )
    spec = resolve_model(str(gguf))
    assert spec.system_prompt == "You relay.\nBe brief."
    assert spec.modelfile_options["temperature"] == 0.3
    assert resolve_model(str(gguf), system="S").system_prompt == "S"
