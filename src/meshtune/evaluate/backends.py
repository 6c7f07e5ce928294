"""Backends: how the model is called.

- hf: transformers in-process (a base model, base + LoRA adapter, or a merged folder).
- llamacpp: a GGUF in-process through llama-cpp-python.
- openai: any OpenAI-compatible /v1/chat/completions server.
- ollama: POST /api/generate with Mesh Master's body (prompt string, options, stream).

The in-process backends send what Ollama would: the deployment system prompt as the system
message, the request's user turn, rendered by the model's own chat template (the one training
uses). Every backend reports whether the reply ended with an end-of-turn token ("stop") or ran
into num_predict ("length").
"""

import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from meshtune import models, rundir
from meshtune.errors import MeshtuneError
from meshtune.evaluate.profiles import Request, modelfile_options, modelfile_system
from meshtune.meshmaster.truncation import ollama_cut, shift_discard
from meshtune.ollama import REPEAT_LAST_N, Sampling
from meshtune.rundir import RunDir

BACKENDS = ("hf", "llamacpp", "openai", "ollama")
DEFAULT_URLS = {"openai": "http://127.0.0.1:8000", "ollama": "http://localhost:11434"}
TIMEOUT_S = 120  # Mesh Master's ollama_timeout


@dataclass(frozen=True, slots=True)
class Generation:
    text: str
    finish_reason: str  # "stop": ended with an end-of-turn token; "length": hit num_predict
    completion_tokens: int | None
    prompt_tokens: int | None
    seconds: float


class Backend(Protocol):
    name: str

    def generate(self, request: Request, seed: int) -> Generation: ...

    def close(self) -> None: ...


# ---------------------------------------------------------------- which model, which backend


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A MODEL argument resolved to what a backend needs."""

    name: str  # as given
    label: str  # short name for reports
    backend: str
    system_prompt: str
    gguf: Path | None = None
    hf_name: str | None = None  # for models.resolve (the embedded name, a folder, a .gguf)
    adapter: Path | None = None
    run_dir: Path | None = None
    modelfile_options: dict[str, Any] | None = None


def resolve_model(model: str, backend: str | None = None, system: str | None = None) -> ModelSpec:
    """A run directory, merged HF folder, GGUF file, the embedded model's name, or (with
    --backend openai|ollama) a served model's name."""
    if backend is not None and backend not in BACKENDS:
        raise MeshtuneError(f"unknown backend '{backend}'; use one of {', '.join(BACKENDS)}")
    path = Path(model).expanduser()
    run = path if RunDir(path).is_trained() else None
    deploy_system = system if system is not None else rundir.system_prompt(run)
    if backend == "ollama":
        # Ollama adds the served model's Modelfile SYSTEM itself; Mesh Master sends none.
        if system is not None:
            raise MeshtuneError(
                "--system has no effect with --backend ollama: the served model's Modelfile "
                "SYSTEM applies; drop --system"
            )
        return ModelSpec(model, model, backend, "")
    if backend == "openai":
        return ModelSpec(model, model, backend, deploy_system)
    if run is not None:
        return _run_spec(model, run, backend, deploy_system)
    if model in models.EMBEDDED_ALIASES:
        gguf = models.embedded_gguf()
        return ModelSpec(
            model, models.EMBEDDED, backend or "llamacpp", deploy_system, gguf, hf_name=model
        )
    if path.is_file() and path.suffix == ".gguf":
        # A Modelfile beside the GGUF (as export writes it) gives the SYSTEM and PARAMETERs.
        opts = modelfile_options(path.parent)
        if system is None:
            deploy_system = modelfile_system(path.parent) or deploy_system
        return ModelSpec(
            model, path.stem, backend or "llamacpp", deploy_system, path, model, None, None, opts
        )
    if path.is_dir() and (path / "config.json").is_file():
        if backend == "llamacpp":
            raise MeshtuneError(
                f"{path}: a Hugging Face folder, not a GGUF; pass the .gguf (meshtune export "
                "writes one) or use --backend hf"
            )
        return ModelSpec(model, path.name, "hf", deploy_system, hf_name=model)
    raise MeshtuneError(
        f"{model}: not a run directory, model folder, .gguf file or '{models.EMBEDDED}'; "
        "for a model served by Ollama or an OpenAI-compatible server pass --backend ollama|openai"
    )


def _run_ggufs(run: Path) -> list[Path]:
    """The GGUF the latest `meshtune export` wrote (the one its Modelfile names), else every
    GGUF in the run."""
    named = RunDir(run).exported_gguf()
    return [named] if named is not None else sorted(run.glob("*.gguf"))


def _run_spec(model: str, run: Path, backend: str | None, system: str) -> ModelSpec:
    """A run directory: its exported GGUF for llamacpp (the default once export has run),
    else base + best adapter (or the merged folder) for hf."""
    ggufs = _run_ggufs(run)
    backend = backend or ("llamacpp" if ggufs else "hf")
    opts = modelfile_options(run)
    if backend == "llamacpp":
        if not ggufs:
            raise MeshtuneError(
                f"{run}: no .gguf in this run; run `meshtune export {run}` first "
                "or use --backend hf"
            )
        if len(ggufs) > 1:
            names = ", ".join(g.name for g in ggufs)
            raise MeshtuneError(f"{run}: several GGUF files ({names}); pass the one to evaluate")
        return ModelSpec(model, run.name, backend, system, ggufs[0], None, None, run, opts)
    merged = RunDir(run).merged
    if (merged / "config.json").is_file():
        return ModelSpec(model, run.name, backend, system, None, str(merged), None, run, opts)
    trained = rundir.load_trained(run)
    return ModelSpec(
        model, run.name, backend, system, None, trained.base_model, trained.adapter, run, opts
    )


def open_backend(spec: ModelSpec, url: str | None = None, threads: int | None = None) -> Backend:
    if spec.backend == "llamacpp":
        assert spec.gguf is not None
        return LlamaCppBackend(spec.gguf, threads=threads)
    if spec.backend == "hf":
        assert spec.hf_name is not None
        return HFBackend(models.resolve(spec.hf_name).folder, spec.adapter, threads=threads)
    if spec.backend == "openai":
        return OpenAIBackend(url or DEFAULT_URLS["openai"], spec.name)
    return OllamaBackend(url or DEFAULT_URLS["ollama"], spec.name)


def default_threads() -> int:
    # Small models gain little from many threads (benchmarks/eval_speed.py measures it).
    return max(1, min(8, os.cpu_count() or 1))


# ---------------------------------------------------------------- llama.cpp


class LlamaCppBackend:
    """llama.cpp in-process, with the GGUF's own chat template.

    Throughput: one lane per CPU thread, each a llama.cpp context decoding on one thread, and
    items are spread over the lanes (faster than one context on all threads, and no collapse
    when other processes take a core, since no thread waits for another; the README's eval
    speed figures come from benchmarks/eval_speed.py).
    In a lane, all samples of one request are decoded together as parallel sequences of one
    batch: the prompt is evaluated once and its KV cells are shared. The prompt prefix shared
    with the lane's previous request (system prompt, Mesh Master's text) stays cached.

    Each sample has llama-cpp-python's sampler chain (repeat penalty over the last 64
    generated tokens, top_k, top_p, min_p, temperature, then a draw seeded with its own seed),
    so a single sample reproduces `Llama.create_chat_completion` with that seed. Sequences
    decoded together sum their attention in another order, so a near-tie token may differ from
    a one-at-a-time run. Runs are deterministic: the same seeds give the same replies.
    """

    name = "llamacpp"
    MAX_SEQ = 8  # samples decoded together; more are done in rounds

    def __init__(self, gguf: Path, threads: int | None = None, n_ctx: int = 2048):
        from llama_cpp import Llama, llama_chat_format
        from llama_cpp import _internals as internals
        from llama_cpp import llama_cpp as C

        if not gguf.is_file():
            raise MeshtuneError(f"{gguf}: no such GGUF file; check the path")
        try:
            # Llama loads the model, its metadata and tokenizer; the lanes decode.
            self.llm = Llama(str(gguf), n_ctx=256, n_threads=1, verbose=False)
        except ValueError as e:
            raise MeshtuneError(f"{gguf}: llama.cpp cannot load it ({e}); check the file") from e
        template = self.llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise MeshtuneError(
                f"{gguf}: no chat template in the GGUF metadata; export it with meshtune export"
            )
        vocab = C.llama_model_get_vocab(self.llm.model)
        eos, bos = self.llm.token_eos(), self.llm.token_bos()
        self.formatter = llama_chat_format.Jinja2ChatFormatter(
            template,
            eos_token=C.llama_vocab_get_text(vocab, eos).decode() if eos != -1 else "",
            bos_token=C.llama_vocab_get_text(vocab, bos).decode() if bos != -1 else "",
            stop_token_ids=[eos],
        )
        # Llama's own context settings (flash attention off, as llama-cpp-python sets it), one
        # thread, room for parallel sequences in one shared cell pool (copied prompt cells are
        # shared, not duplicated).
        params = C.llama_context_params.from_buffer_copy(self.llm.context_params)
        params.n_ctx = n_ctx
        params.n_batch = params.n_ubatch = _Lane.BATCH  # a prompt chunk is decoded at once
        params.n_seq_max = self.MAX_SEQ
        params.kv_unified = True
        params.n_threads = params.n_threads_batch = 1
        self.C, self.internals, self.n_ctx = C, internals, n_ctx
        # A lane's context needs llama-cpp-python's model wrapper, which it exposes only as
        # Llama._model (no public accessor); the wrapper frees the contexts with the model.
        model = self.llm._model
        self.lanes = [
            _Lane(C, internals, model, params) for _ in range(threads or default_threads())
        ]

    def prompt_tokens(self, messages: list[dict[str, str]]) -> list[int]:
        """The tokens of the chat, rendered by the GGUF's template as llama-cpp-python does."""
        rendered = self.formatter(messages=messages)
        return self.llm.tokenize(
            rendered.prompt.encode(), add_bos=not rendered.added_special, special=True
        )

    def generate(self, request: Request, seed: int) -> Generation:
        return self.generate_batch(request, [seed])[0]

    def generate_batch(self, request: Request, seeds: list[int], lane: int = 0) -> list[Generation]:
        """All samples of one request, on one lane (a lane serves one caller at a time)."""
        out: list[Generation] = []
        for i in range(0, len(seeds), self.MAX_SEQ):
            out += self._generate(self.lanes[lane], request, seeds[i : i + self.MAX_SEQ])
        return out

    def _generate(self, lane: "_Lane", request: Request, seeds: list[int]) -> list[Generation]:
        C = self.C
        sent = self.prompt_tokens(request.messages)
        prompt, num_ctx, keep = self._as_ollama_cuts(request, sent)
        limit = request.profile.num_predict
        shifts = num_ctx is not None and len(prompt) + limit >= num_ctx
        if shifts and len(seeds) > 1:  # a context shift moves one sequence's cells: one by one
            return [g for seed in seeds for g in self._generate(lane, request, [seed])]
        need = min(num_ctx, len(prompt) + limit) if shifts else len(prompt) + limit * len(seeds)
        if need > self.n_ctx:
            raise MeshtuneError(
                f"llama.cpp: a {len(prompt)}-token prompt and {len(seeds)} x {limit} new tokens "
                f"do not fit the {self.n_ctx}-token context; shorten the suite item"
            )
        start = time.perf_counter()
        last = lane.eval_prompt(prompt)
        for s in range(1, len(seeds)):
            C.llama_memory_seq_cp(lane.ctx.memory, 0, s, -1, -1)
        samplers = [self._sampler(request.profile.sampling, seed) for seed in seeds]
        vocab = C.llama_model_get_vocab(self.llm.model)
        tokens: list[list[int]] = [[] for _ in seeds]
        finish = ["length"] * len(seeds)
        logits_at = [last] * len(seeds)  # where each sequence's next-token logits are
        seconds = [0.0] * len(seeds)  # when each sample's last token came
        held = len(prompt)  # tokens in each live sequence's cells (they advance together)
        moved = False  # a context shift changed the cells: the cache no longer holds a prefix
        live = list(range(len(seeds)))
        while live:
            step = []
            for s in live:
                token = C.llama_sampler_sample(samplers[s].sampler, lane.ctx.ctx, logits_at[s])
                if C.llama_vocab_is_eog(vocab, token):
                    finish[s] = "stop"
                else:
                    tokens[s].append(token)
                    if len(tokens[s]) < limit:
                        step.append((s, token))
                        continue
                seconds[s] = time.perf_counter() - start
            live = [s for s, _ in step]
            if step:
                discard = shift_discard(held, num_ctx, keep) if shifts else 0
                if discard:  # only one sequence runs when a shift can happen
                    lane.shift(discard, keep, held)
                    held, moved = held - discard, True
                # one new token per live sequence, each at its own next position
                lane.decode([(s, t, held, True) for s, t in step])
                held += 1
                for i, (s, _) in enumerate(step):
                    logits_at[s] = i
        lane.cached = [] if moved else prompt + tokens[0]
        return [
            Generation(
                self.llm.detokenize(t).decode("utf-8", errors="ignore"),
                finish[s],
                len(t),
                len(sent),
                seconds[s],
            )
            for s, t in enumerate(tokens)
        ]

    def _as_ollama_cuts(
        self, request: Request, tokens: list[int]
    ) -> tuple[list[int], int | None, int]:
        """The prompt as Ollama hands it to the model at the request's num_ctx (None: no
        num_ctx, the whole prompt), the context and the tokens a shift keeps."""
        num_ctx = request.profile.options.get("num_ctx")
        if num_ctx is None:
            return tokens, None, 0
        adds_bos = self.llm.metadata.get("tokenizer.ggml.add_bos_token") == "true"
        cut = ollama_cut(tokens, int(num_ctx), adds_bos)
        return cut.tokens, int(num_ctx), cut.keep

    def _sampler(self, o: Sampling, seed: int) -> Any:
        """llama-cpp-python's chain (Llama._init_sampler)."""
        sampler = self.internals.LlamaSampler()
        sampler.add_penalties(self.llm.n_vocab(), REPEAT_LAST_N, o.repeat_penalty, 0.0, 0.0)
        if o.temperature <= 0:
            sampler.add_greedy()
            return sampler
        sampler.add_top_k(o.top_k)
        sampler.add_typical(1.0, 1)
        sampler.add_top_p(o.top_p, 1)
        sampler.add_min_p(o.min_p, 1)
        sampler.add_temp(o.temperature)
        sampler.add_dist(seed)
        return sampler

    def close(self) -> None:
        for lane in self.lanes:
            lane.close()
        self.llm.close()


class _Lane:
    """One llama.cpp context on one thread, and the tokens its sequence 0 holds in the cache."""

    BATCH = 512

    def __init__(self, C: Any, internals: Any, model: Any, params: Any):
        self.C = C
        self.ctx = internals.LlamaContext(model=model, params=params, verbose=False)
        self.batch = internals.LlamaBatch(
            n_tokens=self.BATCH, embd=0, n_seq_max=params.n_seq_max, verbose=False
        )
        self.n_seq = params.n_seq_max
        self.cached: list[int] = []

    def eval_prompt(self, prompt: list[int]) -> int:
        """Evaluate the prompt as sequence 0, reusing the cached common prefix; the other
        sequences are dropped. Returns the batch index of the last token's logits."""
        common = 0
        for a, b in zip(self.cached, prompt, strict=False):
            if a != b:
                break
            common += 1
        common = min(common, len(prompt) - 1)  # the last token is decoded again for its logits
        self.cached = []  # until the prompt is in the cache
        self.C.llama_memory_seq_rm(self.ctx.memory, 0, common, -1)
        for s in range(1, self.n_seq):
            self.C.llama_memory_seq_rm(self.ctx.memory, s, -1, -1)
        rest = prompt[common:]
        for i in range(0, len(rest), self.BATCH):
            chunk = rest[i : i + self.BATCH]
            last = i + len(chunk) == len(rest)
            self.decode(
                [(0, t, common + i + j, last and j == len(chunk) - 1) for j, t in enumerate(chunk)]
            )
        self.cached = list(prompt)
        return self.batch.batch.n_tokens - 1

    def shift(self, discard: int, keep: int, held: int) -> None:
        """llama-server's context shift on sequence 0: drop `discard` cells after the first
        `keep` and move the rest back."""
        self.C.llama_memory_seq_rm(self.ctx.memory, 0, keep, keep + discard)
        self.C.llama_memory_seq_add(self.ctx.memory, 0, keep + discard, held, -discard)

    def decode(self, entries: list[tuple[int, int, int, bool]]) -> None:
        """Decode (sequence, token, position, want logits) entries as one batch."""
        b = self.batch.batch
        b.n_tokens = len(entries)
        for i, (seq, token, pos, logits) in enumerate(entries):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = token, pos, 1, logits
            b.seq_id[i][0] = seq
        self.ctx.decode(self.batch)

    def close(self) -> None:
        self.batch.close()
        self.ctx.close()


# ---------------------------------------------------------------- transformers


class HFBackend:
    """transformers in-process; a LoRA adapter is merged into the base once at load."""

    name = "hf"

    def __init__(self, folder: Path, adapter: Path | None = None, threads: int | None = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from meshtune.chat import family_of

        torch.set_num_threads(threads or default_threads())
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        if adapter is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
        self.model = model.eval()
        eot = self.tokenizer.convert_tokens_to_ids(family_of(self.tokenizer).end_of_turn)
        self.stop_ids = sorted({eot, self.tokenizer.eos_token_id} - {None})

    def generate(self, request: Request, seed: int) -> Generation:
        from transformers import LogitsProcessorList

        from meshtune.chat import render
        from meshtune.data import Message

        o = request.profile.sampling
        messages = [Message(m["role"], m["content"]) for m in request.messages]  # type: ignore[arg-type]
        text = render(self.tokenizer, messages, generation_prompt=True)
        ids = self.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        sampling: dict[str, Any] = {"do_sample": False}
        if o.temperature > 0:
            sampling = {
                "do_sample": True,
                "temperature": o.temperature,
                "top_p": o.top_p,
                "top_k": o.top_k,
            }
        processors = LogitsProcessorList()
        if o.repeat_penalty != 1.0:
            processors.append(WindowRepeatPenalty(o.repeat_penalty, ids.shape[1]))
        self.torch.manual_seed(seed)
        start = time.perf_counter()
        with self.torch.no_grad():
            out = self.model.generate(
                ids,
                attention_mask=self.torch.ones_like(ids),
                max_new_tokens=request.profile.num_predict,
                eos_token_id=self.stop_ids,
                pad_token_id=self.stop_ids[0],
                logits_processor=processors,
                **sampling,
            )
        seconds = time.perf_counter() - start
        new = out[0, ids.shape[1] :].tolist()
        stopped = bool(new) and new[-1] in self.stop_ids
        if stopped:
            new = new[:-1]
        return Generation(
            self.tokenizer.decode(new, skip_special_tokens=True),
            "stop" if stopped else "length",
            len(new),
            ids.shape[1],
            seconds,
        )

    def close(self) -> None:
        pass


class WindowRepeatPenalty:
    """llama.cpp's repeat_penalty: the last REPEAT_LAST_N generated tokens are penalised
    (logit / p if positive, * p if negative), as llama-cpp-python does. transformers' own
    repetition_penalty looks at the whole context, prompt included, which is not what the
    deployed model sees."""

    def __init__(self, penalty: float, prompt_len: int, last_n: int = REPEAT_LAST_N):
        self.penalty, self.prompt_len, self.last_n = penalty, prompt_len, last_n

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        generated = input_ids[:, self.prompt_len :][:, -self.last_n :]
        if generated.shape[1] == 0:
            return scores
        picked = scores.gather(1, generated)
        picked = picked.where(picked < 0, picked / self.penalty)
        picked = picked.where(picked >= 0, picked * self.penalty)
        return scores.scatter(1, generated, picked)


# ---------------------------------------------------------------- servers


def check_url(url: str) -> str:
    """A server URL: http(s)://host[:port][/path]. Checked before any model is loaded."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises on a port that is not a number)
    except ValueError as e:
        raise MeshtuneError(f"--url {url!r}: not a URL ({e}); e.g. http://127.0.0.1:11434") from e
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise MeshtuneError(
            f"--url {url!r}: not an http(s) URL with a host; e.g. http://127.0.0.1:11434"
        )
    return url


def _post(url: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    data = json.dumps(body).encode()
    try:
        req = urllib.request.Request(
            url, data, {"Content-Type": "application/json", **(headers or {})}, method="POST"
        )
        return urllib.request.urlopen(req, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as e:
        detail = " ".join(e.read().decode(errors="replace")[:200].split())
        raise MeshtuneError(f"{url}: HTTP {e.code} ({detail}); check the model name") from e
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise MeshtuneError(f"{url}: cannot connect ({reason}); is the server running?") from e
    except ValueError as e:  # urllib's "unknown url type"
        raise MeshtuneError(f"{url}: not a URL meshtune can call ({e}); check --url") from e


def _json_object(raw: bytes, url: str) -> dict[str, Any]:
    """A server's JSON reply; anything else (an HTML page, a proxy's error) is named as such."""
    try:
        out = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        start = " ".join(raw[:80].decode(errors="replace").split())
        raise MeshtuneError(
            f"{url}: the server did not answer with JSON (it sent {start!r}); check --url "
            "points at the model server itself"
        ) from e
    if not isinstance(out, dict):
        raise MeshtuneError(f"{url}: unexpected reply {str(out)[:120]!r}; check --url")
    return out


class OpenAIBackend:
    """An OpenAI-compatible /v1/chat/completions server (llama.cpp's, llama-cpp-python's,
    vLLM, LM Studio, Ollama's /v1). top_k and repeat_penalty are sent as the extra fields
    llama.cpp servers read; OPENAI_API_KEY is sent as a bearer token when set."""

    name = "openai"

    def __init__(self, url: str, model: str):
        self.url = url.rstrip("/").removesuffix("/v1") + "/v1/chat/completions"
        self.model = model
        key = os.environ.get("OPENAI_API_KEY")
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}

    def generate(self, request: Request, seed: int) -> Generation:
        o = request.profile.sampling
        body = {
            "model": self.model,
            "messages": request.messages,
            "temperature": o.temperature,
            "top_p": o.top_p,
            "top_k": o.top_k,
            "min_p": o.min_p,
            "repeat_penalty": o.repeat_penalty,
            "max_tokens": request.profile.num_predict,
            "seed": seed,
        }
        start = time.perf_counter()
        with _post(self.url, body, self.headers) as resp:
            out = _json_object(resp.read(), self.url)
        seconds = time.perf_counter() - start
        try:
            choice = out["choices"][0]
            usage = out.get("usage") or {}
            return Generation(
                choice["message"].get("content") or "",
                "length" if choice.get("finish_reason") == "length" else "stop",
                usage.get("completion_tokens"),
                usage.get("prompt_tokens"),
                seconds,
            )
        except (KeyError, IndexError, TypeError, AttributeError) as e:
            raise MeshtuneError(f"{self.url}: unexpected reply {str(out)[:200]}") from e

    def close(self) -> None:
        pass


class OllamaBackend:
    """Ollama's /api/generate with Mesh Master's body: {"model", "prompt", "stream": true,
    "options"}. The server adds the Modelfile's SYSTEM and TEMPLATE, so the request's system
    text is not sent. Under the modelfile profile only the seed is sent, so the Modelfile's
    PARAMETERs apply; a multi-turn chat goes to /api/chat as `ollama run` does."""

    name = "ollama"

    def __init__(self, url: str, model: str):
        self.base = url.rstrip("/").removesuffix("/api/generate")
        self.model = model

    def body(self, request: Request, seed: int) -> tuple[str, dict[str, Any]]:
        """The endpoint and the exact JSON body for one request."""
        p = request.profile
        options = {"seed": seed} if p.from_modelfile else {**p.options, "seed": seed}
        if len(request.turns) == 1 and not request.own_system:
            body = {"model": self.model, "prompt": request.prompt, "stream": True}
            return "/api/generate", {**body, "options": options}
        messages = request.messages if request.own_system else request.turns
        body = {"model": self.model, "messages": messages, "stream": True}
        return "/api/chat", {**body, "options": options}

    def generate(self, request: Request, seed: int) -> Generation:
        path, body = self.body(request, seed)
        start = time.perf_counter()
        parts: list[str] = []
        final: dict[str, Any] = {}
        with _post(self.base + path, body) as resp:
            for raw in resp:  # newline-delimited JSON chunks; the last has "done": true
                if not raw.strip():
                    continue
                chunk = _json_object(raw, self.base + path)
                if "error" in chunk:
                    raise MeshtuneError(f"{self.base}{path}: {chunk['error']}")
                parts.append(chunk.get("response") or chunk.get("message", {}).get("content", ""))
                if chunk.get("done"):
                    final = chunk
                    break
        seconds = time.perf_counter() - start
        if not final:
            raise MeshtuneError(f"{self.base}{path}: the stream ended without done; retry")
        return Generation(
            "".join(parts),
            "length" if final.get("done_reason") == "length" else "stop",
            final.get("eval_count"),
            final.get("prompt_eval_count"),
            seconds,
        )

    def close(self) -> None:
        pass
