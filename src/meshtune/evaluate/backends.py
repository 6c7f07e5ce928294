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
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from meshtune import jsontext, models, rundir
from meshtune.chat import TEMPLATE_DATE, adds_bos
from meshtune.errors import MeshtuneError
from meshtune.evaluate.http_post import TIMEOUT_S, Answer, json_object
from meshtune.evaluate.profiles import Request, modelfile_options, modelfile_system
from meshtune.meshmaster.truncation import ollama_cut, shift_discard
from meshtune.ollama import REPEAT_LAST_N, Sampling
from meshtune.rundir import RunDir

BACKENDS = ("hf", "llamacpp", "openai", "ollama")
DEFAULT_URLS = {"openai": "http://127.0.0.1:8000", "ollama": "http://localhost:11434"}


# The backends that hand the model what Ollama's cut at num_ctx leaves (an OpenAI-compatible
# server gets the whole prompt).
CUTTING_BACKENDS = ("llamacpp", "ollama", "hf")


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
        backend = backend or ("hf" if on_gpu() else "llamacpp")
        return ModelSpec(model, models.EMBEDDED, backend, deploy_system, gguf, hf_name=model)
    if path.is_file() and path.suffix == ".gguf":
        # A Modelfile beside the GGUF (as export writes it) gives the SYSTEM and PARAMETERs.
        opts = modelfile_options(path.parent)
        if system is None:
            deploy_system = modelfile_system(path.parent) or deploy_system
        return ModelSpec(
            model, path.stem, backend or "llamacpp", deploy_system, path, model, None, None, opts
        )
    folder = _hf_folder(model, path)
    if folder is None:
        raise MeshtuneError(
            f"{model}: not a run directory, model folder, .gguf file, '{models.EMBEDDED}' or a "
            "Hugging Face id in the local cache; for a model served by Ollama or an "
            "OpenAI-compatible server pass --backend ollama|openai"
        )
    if backend == "llamacpp":
        raise MeshtuneError(
            f"{model}: a Hugging Face model, not a GGUF; pass the .gguf (meshtune export "
            "writes one) or use --backend hf"
        )
    label = path.name if path.is_dir() else model  # a cached id by its id, not its snapshot
    return ModelSpec(model, label, "hf", deploy_system, hf_name=str(folder))


def _hf_folder(model: str, path: Path) -> Path | None:
    """A Hugging Face folder, or an id in the local cache, found the way `train` finds its
    base model (models.resolve); None when it is neither."""
    if path.is_dir() and not (path / "config.json").is_file():
        return None
    if not path.is_dir() and (path.exists() or model.count("/") != 1):
        return None
    try:
        return models.resolve(model).folder
    except models.ModelNotFound:
        return None


def on_gpu() -> bool:
    """With a GPU, a run and the embedded model are evaluated through transformers by default:
    the base and the tuned model on one batched path with one sampler (export's proof checks
    the GGUF itself; --backend llamacpp still evaluates it)."""
    import torch

    return torch.cuda.is_available()


def _run_ggufs(run: Path) -> list[Path]:
    """The GGUF the latest `meshtune export` wrote (the one its Modelfile names), else every
    GGUF in the run."""
    named = RunDir(run).exported_gguf()
    return [named] if named is not None else sorted(run.glob("*.gguf"))


def _run_spec(model: str, run: Path, backend: str | None, system: str) -> ModelSpec:
    """A run directory: its exported GGUF for llamacpp (the default once export has run, on a
    CPU), else for hf the merged folder, base + best adapter, or a full fine-tune's best model."""
    ggufs = _run_ggufs(run)
    backend = backend or ("llamacpp" if ggufs and not on_gpu() else "hf")
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
        folder, adapter = str(merged), None
    else:
        trained = rundir.load_trained(run)
        if trained.full:  # the whole model, saved with its tokenizer
            folder, adapter = str(trained.adapter), None
        else:
            folder, adapter = trained.base_model, trained.adapter
    return ModelSpec(model, run.name, backend, system, None, folder, adapter, run, opts)


def open_backend(
    spec: ModelSpec, url: str | None = None, threads: int | None = None, timeout: float = TIMEOUT_S
) -> Backend:
    if spec.backend == "llamacpp":
        assert spec.gguf is not None
        return LlamaCppBackend(spec.gguf, threads=threads)
    if spec.backend == "hf":
        assert spec.hf_name is not None
        return HFBackend(models.resolve(spec.hf_name).folder, spec.adapter, threads=threads)
    if spec.backend == "openai":
        return OpenAIBackend(url or DEFAULT_URLS["openai"], spec.name, timeout)
    return OllamaBackend(url or DEFAULT_URLS["ollama"], spec.name, timeout)


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_threads() -> int:
    # Small models gain little from many threads (benchmarks/eval_speed.py measures it).
    return max(1, min(8, usable_cpus()))


def capped_threads(threads: int) -> tuple[int, str | None]:
    """--threads within the machine's CPUs, and a warning when it was more: each llama.cpp
    lane is a context of its own, so threads beyond the cores only take memory."""
    cpus = usable_cpus()
    if threads <= cpus:
        return threads, None
    return cpus, (
        f"--threads {threads}: this machine runs {cpus} CPU threads; using {cpus} (more only "
        "take memory: each is a llama.cpp context)"
    )


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
        # A context beyond the model's trained one holds nothing it can use, only memory (Ollama
        # clamps num_ctx the same way).
        self.n_ctx_train = C.llama_model_n_ctx_train(self.llm.model)
        n_ctx = min(n_ctx, self.n_ctx_train) if self.n_ctx_train > 0 else n_ctx
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
        """The tokens of the chat, rendered by the GGUF's template as llama-cpp-python does, with
        the date training rendered (a Llama-3 template would print today's date)."""
        rendered = self.formatter(messages=messages, date_string=TEMPLATE_DATE)
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
        num_ctx = request.profile.num_ctx
        if num_ctx is None:
            return tokens, None, 0
        adds_bos = self.llm.metadata.get("tokenizer.ggml.add_bos_token") == "true"
        cut = ollama_cut(tokens, num_ctx, adds_bos)
        return cut.tokens, num_ctx, cut.keep

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
    """transformers in-process: on the GPU when there is one (bf16, or fp16 where the card has
    no bf16, as on a T4), else float32 on the CPU. A LoRA adapter is merged into the base once
    at load.

    Many requests and samples go through one batched `generate` (its KV cache, left padding,
    the longest prompts first), under Ollama's sampler: the repeat penalty over the last
    REPEAT_LAST_N tokens of prompt and reply (OllamaRepeatPenalty), top_k, temperature, top_p,
    min_p, then each row's own seeded draw (SeededDraw). A row's reply depends on its request
    and seed, not on the rows beside it, so two models given the same seeds sample from the
    same random stream: their replies are paired.
    """

    name = "hf"
    CPU_ROWS = 8  # rows a CPU batch decodes together

    def __init__(self, folder: Path, adapter: Path | None = None, threads: int | None = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from meshtune.chat import family_of

        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if self.device == "cpu":
            torch.set_num_threads(threads or default_threads())
            dtype = torch.float32
        else:
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(self.device)
        if adapter is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
        self.model = model.eval()
        self.dtype = str(dtype).removeprefix("torch.")
        eot = self.tokenizer.convert_tokens_to_ids(family_of(self.tokenizer).end_of_turn)
        self.stop_ids = sorted({eot, self.tokenizer.eos_token_id} - {None})

    def prompt_ids(self, request: Request) -> list[int]:
        from meshtune.chat import render
        from meshtune.data import Message

        messages = [Message(m["role"], m["content"]) for m in request.messages]  # type: ignore[arg-type]
        text = render(self.tokenizer, messages, generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def seen_ids(self, request: Request, ids: list[int]) -> list[int]:
        """What Ollama lets the model see of the prompt `ids`, as the llama.cpp backend does:
        a `/meshtastic` request at num_ctx 1024 loses its middle. (A reply long enough to shift
        the context is not modelled: num_predict is 80 and the cut leaves half the context.)"""
        num_ctx = request.profile.num_ctx
        return ids if num_ctx is None else ollama_cut(ids, num_ctx, adds_bos(self.tokenizer)).tokens

    def generate(self, request: Request, seed: int) -> Generation:
        return self.generate_many([(request, seed)])[0]

    def generate_many(
        self, asks: list[tuple[Request, int]], done: Callable[[int], None] | None = None
    ) -> list[Generation]:
        """Every (request, seed), in batches that fit the device; `done(n)` after each batch.
        The requests share one profile (its options and num_predict)."""
        if any(r.profile != asks[0][0].profile for r, _ in asks):
            raise MeshtuneError("hf: one batch of requests must share one profile")
        sent = [self.prompt_ids(r) for r, _ in asks]
        prompts = [self.seen_ids(r, ids) for (r, _), ids in zip(asks, sent, strict=True)]
        limit = asks[0][0].profile.num_predict
        order = sorted(range(len(asks)), key=lambda i: -len(prompts[i]))
        out: list[Generation | None] = [None] * len(asks)
        start = 0
        while start < len(order):
            rows = self.rows_per_batch(len(prompts[order[start]]) + limit)
            batch = order[start : start + rows]
            gens = self._generate(
                [prompts[i] for i in batch], [asks[i][1] for i in batch], asks[0][0].profile
            )
            for i, gen in zip(batch, gens, strict=True):
                out[i] = replace(gen, prompt_tokens=len(sent[i]))  # as sent, like Ollama's count
            start += len(batch)
            if done:
                done(start)
        return [g for g in out if g is not None]

    def rows_per_batch(self, tokens: int) -> int:
        """Rows decoded together: a few on the CPU; on the GPU as many as a quarter of the free
        memory (under a per-process cap, if one is set) holds, counting each row's KV cache and
        its float32 logits."""
        if self.device == "cpu":
            return self.CPU_ROWS
        torch, config = self.torch, self.model.config
        free, total = torch.cuda.mem_get_info()
        fraction = getattr(torch.cuda, "get_per_process_memory_fraction", lambda: 1.0)()
        capped = fraction * total - torch.cuda.memory_reserved()
        free = min(free, int(capped))
        head_dim = (
            getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        )
        kv = 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * 2 * tokens
        logits = 12 * config.vocab_size * 4  # the float32 scores and the sampler's copies
        return max(1, min(1024, free // 4 // (kv + logits)))

    def _generate(
        self, prompts: list[list[int]], seeds: list[int], profile: Any
    ) -> list[Generation]:
        from transformers import GenerationConfig

        torch = self.torch
        pad = self.stop_ids[0]
        width = max(len(p) for p in prompts)
        pads = [width - len(p) for p in prompts]
        ids = torch.tensor(
            [[pad] * n + p for n, p in zip(pads, prompts, strict=True)], device=self.device
        )
        mask = torch.tensor(
            [[0] * n + [1] * len(p) for n, p in zip(pads, prompts, strict=True)], device=self.device
        )
        # The profile's options only: the model's generation_config.json (Llama-3.2 ships
        # temperature 0.6) must not change the sampler.
        config = GenerationConfig(
            do_sample=False,
            max_new_tokens=profile.num_predict,
            eos_token_id=self.stop_ids,
            pad_token_id=pad,
        )
        start = time.perf_counter()
        with torch.no_grad():
            out = self.model.generate(
                ids,
                attention_mask=mask,
                generation_config=config,
                logits_processor=ollama_sampler(profile.sampling, pads, seeds, width),
            )
        if self.device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        gens = []
        for row, prompt in zip(out[:, width:].tolist(), prompts, strict=True):
            stop = next((i for i, t in enumerate(row) if t in self.stop_ids), None)
            new = row if stop is None else row[:stop]
            text = self.tokenizer.decode(new, skip_special_tokens=True)
            finish = "length" if stop is None else "stop"
            gens.append(Generation(text, finish, len(new), len(prompt), seconds))
        return gens

    def close(self) -> None:
        pass


def ollama_sampler(o: Sampling, pads: list[int], seeds: list[int], width: int) -> Any:
    """Ollama's sampling chain as transformers logits processors (sample/samplers.go: the
    penalty, top_k, temperature, softmax, top_p, min_p, the draw); greedy at temperature 0."""
    from transformers import (
        LogitsProcessorList,
        MinPLogitsWarper,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    chain = LogitsProcessorList()
    if o.repeat_penalty != 1.0:
        chain.append(OllamaRepeatPenalty(o.repeat_penalty, pads))
    if o.temperature <= 0:
        return chain
    if o.top_k > 0:
        chain.append(TopKLogitsWarper(o.top_k))
    chain.append(TemperatureLogitsWarper(o.temperature))
    if o.top_p < 1.0:
        chain.append(TopPLogitsWarper(o.top_p))
    if o.min_p > 0:
        chain.append(MinPLogitsWarper(o.min_p))
    chain.append(SeededDraw(seeds, width))
    return chain


class OllamaRepeatPenalty:
    """Ollama's repeat_penalty: every token among the last REPEAT_LAST_N of the sequence, prompt
    included (its runner accepts each prompt token into the sampler before the first draw), has
    its logit divided by the penalty if positive, multiplied if not. transformers' own
    repetition_penalty looks at the whole context, llama-cpp-python's at the reply only.
    `pads`: each row's left padding, which is not part of its sequence."""

    def __init__(self, penalty: float, pads: list[int], last_n: int = REPEAT_LAST_N):
        self.penalty, self.pads, self.last_n = penalty, pads, last_n

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        window = input_ids[:, -self.last_n :]
        first = input_ids.shape[1] - window.shape[1]
        positions = torch.arange(first, input_ids.shape[1], device=input_ids.device)
        pads = torch.tensor(self.pads, device=input_ids.device)[:, None]
        seen = torch.zeros_like(scores, dtype=torch.int32)
        seen.scatter_add_(1, window, (positions[None, :] >= pads).to(torch.int32))
        penalised = torch.where(scores > 0, scores / self.penalty, scores * self.penalty)
        return torch.where(seen > 0, penalised, scores)


def _signed(x: int) -> int:
    return x - (1 << 64) if x >> 63 else x


# splitmix64's constants, as the signed 64-bit integers torch computes with
_GOLDEN, _MIX1, _MIX2 = (
    _signed(c) for c in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB)
)


def _mix(x: Any) -> Any:
    """splitmix64's finaliser on int64 tensors (multiplication wraps; shifts made logical)."""
    x = x ^ ((x >> 30) & ((1 << 34) - 1))
    x = x * _MIX1
    x = x ^ ((x >> 27) & ((1 << 37) - 1))
    x = x * _MIX2
    return x ^ ((x >> 31) & ((1 << 33) - 1))


class SeededDraw:
    """Each row's draw from its own seed, by the Gumbel-max trick: the token with the largest
    score + Gumbel noise is a draw from softmax(score), and the noise of token t at reply step
    s is a hash of (seed, s, t). So a row's draws do not depend on the rows beside it, and the
    same seed gives two models the same noise. Returns scores that only the drawn token
    survives (0, else -inf), so generate's greedy step picks it."""

    def __init__(self, seeds: list[int], prompt_width: int):
        self.seeds, self.width = seeds, prompt_width

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        vocab = scores.shape[1]
        step = input_ids.shape[1] - self.width
        # Only the tokens top_k/top_p left are drawn from: noise for those alone.
        kept = int(torch.isfinite(scores).sum(dim=1).max())
        scores, tokens = scores.topk(max(1, kept), dim=1)
        seeds = torch.tensor(self.seeds, dtype=torch.int64, device=scores.device)[:, None]
        key = _mix(_mix(seeds * _GOLDEN + step) + tokens)
        uniform = (((key >> 40) & ((1 << 24) - 1)).to(torch.float32) + 0.5) / (1 << 24)
        noisy = scores + -torch.log(-torch.log(uniform))
        drawn = tokens.gather(1, noisy.argmax(dim=1, keepdim=True))
        out = torch.full((scores.shape[0], vocab), float("-inf"), device=scores.device)
        return out.scatter(1, drawn, 0.0)


# ---------------------------------------------------------------- servers


def check_url(url: str) -> str:
    """A server URL: http(s)://host[:port][/path]. Checked before any model is loaded."""
    from urllib.parse import urlsplit

    example = "e.g. http://127.0.0.1:11434"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises on a port that is not a number)
    except ValueError as e:
        raise MeshtuneError(f"--url {url!r}: not a URL ({e}); {example}") from e
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise MeshtuneError(f"--url {url!r}: not an http(s) URL with a host; {example}")
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise MeshtuneError(
            f"--url {url!r}: contains a space or control character; remove it (or write a "
            f"space in the path as %20), {example}"
        )
    return url


def reply_field(reply: dict[str, Any], path: str, kind: type, url: str, api: str) -> Any:
    """A server reply's value at a dotted path ("choices.0.message.content"), which must be a
    `kind` (an int for float); absent or null is None. Anything else is an error naming the
    field, since a reply read wrong would be judged as the model's words."""
    value: Any = reply
    for key in path.split("."):
        if isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        elif isinstance(value, dict) and key in value:
            value = value[key]
        else:
            return None
    ok = isinstance(value, kind) and not (isinstance(value, bool) and kind is not bool)
    if value is None or ok or (kind is float and type(value) is int):
        return value
    raise MeshtuneError(
        f"{url}: the reply's `{path}` is a {jsontext.type_name(value)} "
        f"({json.dumps(value)[:60]}), not a {jsontext.TYPE_NAMES[kind]}; the server does not "
        f"answer as {api} does: check --url and --backend"
    )


class OpenAIBackend:
    """An OpenAI-compatible /v1/chat/completions server (llama.cpp's, llama-cpp-python's,
    vLLM, LM Studio, Ollama's /v1). top_k and repeat_penalty are sent as the extra fields
    llama.cpp servers read; OPENAI_API_KEY is sent as a bearer token when set."""

    name = "openai"
    API = "the OpenAI API"

    def __init__(self, url: str, model: str, timeout: float = TIMEOUT_S):
        self.url = url.rstrip("/").removesuffix("/v1") + "/v1/chat/completions"
        self.model, self.timeout = model, timeout
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
        with Answer(self.url, body, self.headers, self.timeout) as answer:
            out = answer.json()
        seconds = time.perf_counter() - start

        def field(path: str, kind: type) -> Any:
            return reply_field(out, path, kind, self.url, self.API)

        if field("choices.0", dict) is None:
            raise MeshtuneError(
                f"{self.url}: the reply has no `choices[0]` ({str(out)[:120]!r}); check --url "
                "points at an OpenAI-compatible server"
            )
        return Generation(
            field("choices.0.message.content", str) or "",
            "length" if field("choices.0.finish_reason", str) == "length" else "stop",
            field("usage.completion_tokens", int),
            field("usage.prompt_tokens", int),
            seconds,
        )

    def close(self) -> None:
        pass


class OllamaBackend:
    """Ollama's /api/generate with Mesh Master's body: {"model", "prompt", "stream": true,
    "options"}. The server adds the Modelfile's SYSTEM and TEMPLATE, so the request's system
    text is not sent. Under the modelfile profile only the seed is sent, so the Modelfile's
    PARAMETERs apply; a multi-turn chat goes to /api/chat as `ollama run` does."""

    name = "ollama"
    API = "Ollama"

    def __init__(self, url: str, model: str, timeout: float = TIMEOUT_S):
        self.base = url.rstrip("/").removesuffix("/api/generate")
        self.model, self.timeout = model, timeout

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
        url = self.base + path
        start = time.perf_counter()
        parts: list[str] = []
        final: dict[str, Any] = {}
        with Answer(url, body, {}, self.timeout) as answer:
            for raw in answer.lines():  # newline-delimited JSON chunks; the last has "done"
                if not raw.strip():
                    continue
                chunk = json_object(raw, url)

                def field(path: str, kind: type, chunk: dict[str, Any] = chunk) -> Any:
                    return reply_field(chunk, path, kind, url, self.API)

                if "error" in chunk:
                    raise MeshtuneError(f"{url}: the server says: {str(chunk['error'])[:200]}")
                parts.append(field("response", str) or field("message.content", str) or "")
                if field("done", bool):
                    final = chunk
                    break
        seconds = time.perf_counter() - start
        if not final:
            raise MeshtuneError(
                f"{url}: the stream ended without a `done` chunk after {len(parts)} chunks "
                "(the server closed it mid-reply); check the server's log and retry"
            )
        return Generation(
            "".join(parts),
            "length" if field("done_reason", str) == "length" else "stop",
            field("eval_count", int),
            field("prompt_eval_count", int),
            seconds,
        )

    def close(self) -> None:
        pass
