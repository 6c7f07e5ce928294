"""Evaluation: the guide's quick tests and red flags as measurements, run the way Mesh Master
really calls the model.

    evaluate(model, suite="mesh")   -> EvalResult (summary, every reply, READY / NOT READY)
    score_replies(file, suite)      -> EvalResult for given replies (no model, same checks)
    compare(a, b, suite="mesh")     -> Comparison (per-category deltas, improved / regressed)

A suite (suite.py) is turned into requests by a profile (profiles.py), sent through a backend
(backends.py), every reply is measured (metrics.py), the suite is judged by the gate
(gate.py), and report.py writes report.md, report.html, replies.jsonl and summary.json.
"""

import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from meshtune import jsontext, meshmaster
from meshtune.commands import Registry, load_registry
from meshtune.delivery import FALLBACK_TOKENIZER, Delivery, deliver, model_tokenizer
from meshtune.errors import MeshtuneError
from meshtune.evaluate import metrics
from meshtune.evaluate.backends import (
    CUTTING_BACKENDS,
    Backend,
    Generation,
    ModelSpec,
    open_backend,
    resolve_model,
)
from meshtune.evaluate.gate import GateConfig, Verdict, judge, load_gate
from meshtune.evaluate.http_post import TIMEOUT_S
from meshtune.evaluate.profiles import Profile, Request, build_request, get_profile
from meshtune.files import read_text
from meshtune.meshmaster import SHIPPED, BotConfig
from meshtune.suites import KNOWLEDGE_KINDS, Item, Suite, load_suite

__all__ = ["Comparison", "EvalResult", "compare", "evaluate", "load_result", "score_replies"]

DEFAULT_SAMPLES = 3
Progress = Callable[[int, int], None]


@dataclass(slots=True)
class EvalResult:
    summary: dict[str, Any]  # run info, suite-level numbers and the verdict (summary.json)
    rows: list[dict[str, Any]]  # one per reply (replies.jsonl)
    verdict: Verdict

    @property
    def ready(self) -> bool:
        return self.verdict.ready


def evaluate(
    model: str,
    suite: str | Suite = "mesh",
    backend: str | None = None,
    profile: str = "meshmaster",
    samples: int = DEFAULT_SAMPLES,
    out: str | Path | None = None,
    gate: str | Path | GateConfig | None = None,
    system: str | None = None,
    url: str | None = None,
    timeout: float | None = None,
    seed: int = 0,
    threads: int | None = None,
    registry: Registry | None = None,
    progress: Progress | None = None,
    bot: BotConfig = SHIPPED,
    persona: str | None = None,
) -> EvalResult:
    """Run every suite item through the model under a profile and judge the replies.

    Sampled profiles draw `samples` replies per item with seeds seed, seed+1, ...; the same
    seeds for every item and every model, so comparisons are paired. With `out`, the report
    files are written there. Under Mesh Master's profiles, `bot` (the operator's config) and
    `persona` shape the request as the bot builds it.
    """
    if samples < 1:
        raise MeshtuneError(f"--samples {samples}: must be at least 1")
    the_suite = suite if isinstance(suite, Suite) else load_suite(suite)
    gate_cfg = gate if isinstance(gate, GateConfig) else load_gate(gate)
    spec = resolve_model(model, backend, system)
    prof = get_profile(profile, spec.modelfile_options, bot)
    bot.persona(persona)  # an unknown persona fails before the model loads
    ask = Asker(prof, spec.system_prompt, bot, persona)
    n = samples if prof.sampled else 1  # a greedy reply is the same every time
    registry = registry or load_registry()
    num_ctx = prof.num_ctx if spec.backend in CUTTING_BACKENDS else None
    deliveries, delivery_info = _deliveries(the_suite.items, spec, ask, num_ctx)
    start = time.perf_counter()
    engine = open_backend(spec, url, threads, timeout or TIMEOUT_S)
    try:
        loaded = time.perf_counter()
        rows = _run(engine, the_suite, ask, n, seed, registry, deliveries, progress)
        generation = time.perf_counter() - loaded
    finally:
        engine.close()
    wall = time.perf_counter() - start
    first = ask(the_suite.items[0])
    info = {
        **_run_info(spec.name, spec.label, spec.backend, the_suite, prof.name, n, wall),
        "model_file": str(spec.gguf or spec.hf_name or spec.name),
        "adapter": str(spec.adapter) if spec.adapter else None,
        "options": prof.options,
        "system_prompt": spec.system_prompt,
        "seeds": [seed + s for s in range(n)],
        **({"mesh_master": ask.describe()} if prof.mesh_master_prompt else {}),
        "request_example": first.messages,  # exactly what the first item sent
        **_over_num_ctx(rows, prof.num_ctx),
        **delivery_info,
    }
    return _judged(info, rows, gate_cfg, out, generation)


def score_replies(
    replies: str | Path,
    suite: str | Suite = "mesh",
    out: str | Path | None = None,
    gate: str | Path | GateConfig | None = None,
    registry: Registry | None = None,
    bot: BotConfig = SHIPPED,
) -> EvalResult:
    """Judge given replies (JSONL, one `{"item": ID, "reply": TEXT}` a line; an optional
    `finish_reason` "length" marks a reply that ran into the token limit) with no model: the
    same per-reply checks, summary and gate as `evaluate`, rows in the file's order. A
    knowledge item's delivery is counted as for the embedded model deployed with `bot` (its
    tokenizer and system prompt, Ollama's cut at the config's num_ctx)."""
    the_suite = suite if isinstance(suite, Suite) else load_suite(suite)
    gate_cfg = gate if isinstance(gate, GateConfig) else load_gate(gate)
    registry = registry or load_registry()
    given = read_replies(Path(replies), the_suite)
    knowledge = list({i.id: i for i, _ in given if i.kind in KNOWLEDGE_KINDS}.values())
    deliveries, delivery_info = {}, {}
    if knowledge:  # the embedded model is only looked for when it counts
        spec = resolve_model(FALLBACK_TOKENIZER, "llamacpp")
        ask = Asker(get_profile("meshmaster", None, bot), spec.system_prompt, bot, None)
        deliveries, delivery_info = _deliveries(knowledge, spec, ask, bot.num_ctx)
    start = time.perf_counter()
    rows, samples = [], Counter()
    for item, gen in given:
        rows.append(_row(item, samples[item.id], None, gen, registry, deliveries.get(item.id)))
        samples[item.id] += 1
    wall = time.perf_counter() - start
    most = max(samples.values())
    info = {
        **_run_info(str(replies), "replies", "replies", the_suite, "replies", most, wall),
        "options": {},
        "system_prompt": None,
        **delivery_info,
    }
    return _judged(info, rows, gate_cfg, out)


def read_replies(path: Path, suite: Suite) -> list[tuple[Item, Generation]]:
    """A replies file, every line checked before anything is scored. Other keys are ignored,
    so a judged file or a report's replies.jsonl reads as it is."""
    items = {i.id: i for i in suite.items}
    given = []
    for lineno, line in jsontext.lines(read_text(path)):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        raw = jsontext.load_object(line, where, "write one JSON object per line")
        item, reply = raw.get("item"), raw.get("reply")
        finish = raw.get("finish_reason") or "stop"
        if not isinstance(item, str) or item not in items:
            raise MeshtuneError(
                f"{where}: 'item' {item!r} is not an item of the suite '{suite.name}'; "
                "give the id of the item the reply answers"
            )
        if not isinstance(reply, str):
            raise MeshtuneError(f"{where}: 'reply' must be a string (the reply's text)")
        if finish not in ("stop", "length"):
            raise MeshtuneError(f"{where}: 'finish_reason' {finish!r} must be stop or length")
        given.append((items[item], Generation(reply, finish, None, None, 0.0)))
    if not given:
        raise MeshtuneError(f"{path}: no replies; write one JSON object per line")
    return given


def _judged(
    info: dict[str, Any],
    rows: list[dict[str, Any]],
    gate_cfg: GateConfig,
    out: str | Path | None,
    generation_s: float | None = None,
) -> EvalResult:
    """The suite-level numbers and the gate's verdict on measured rows; the report with `out`."""
    metrics.mark_canned(rows)
    summary = {**info, **metrics.summarize(rows, generation_s)}
    verdict = judge(summary, rows, gate_cfg)
    summary["gate"] = verdict.to_dict()
    summary["gate_config"] = gate_cfg.model_dump()
    result = EvalResult(summary, rows, verdict)
    if out is not None:
        from meshtune.evaluate.report import write_report

        write_report(Path(out), result)
    return result


def _deliveries(
    items: list[Item], spec: ModelSpec, ask: "Asker", num_ctx: int | None
) -> tuple[dict[str, Delivery], dict[str, Any]]:
    """Whether each knowledge item's answer reaches the model: the requests `ask` builds (the
    knowledge file profiles.build_request uses; none under a profile that sends the plain
    chat), rendered with the model's tokenizer and cut at `num_ctx` (None: sent whole)."""
    knowledge = [i for i in items if i.kind in KNOWLEDGE_KINDS]
    if not knowledge:
        return {}, {}
    tokenizer, name = model_tokenizer(spec)
    kb = meshmaster.own_knowledge() if ask.profile.mesh_master_prompt else None
    deliveries = {
        i.id: deliver(i, kb, ask.bot, tokenizer, ask(i).system, num_ctx) for i in knowledge
    }
    info = {"knowledge": str(kb.path) if kb else None, "num_ctx": num_ctx, "tokenizer": name}
    return deliveries, {"delivery": info}


@dataclass(frozen=True, slots=True)
class Asker:
    """Turns suite items into requests: one profile, system prompt, bot config and persona."""

    profile: Profile
    system_prompt: str
    bot: BotConfig
    persona: str | None

    def __call__(self, item: Item) -> Request:
        return build_request(item, self.profile, self.system_prompt, self.bot, self.persona)

    def describe(self) -> dict[str, Any]:
        persona = self.bot.persona(self.persona)
        return {"config": self.bot.source, "persona": persona.id if persona else None}


def _run(
    engine: Backend,
    suite: Suite,
    ask: Asker,
    samples: int,
    seed: int,
    registry: Registry,
    deliveries: dict[str, Delivery],
    progress: Progress | None,
) -> list[dict[str, Any]]:
    """Every item's replies, in suite order. transformers decodes every item and sample in
    batches; a llama.cpp backend with several lanes runs items k, k+n, k+2n, ... on lane k (a
    fixed split, so a run is reproducible); the other backends send one request at a time, as
    the bot does."""
    seeds = [seed + s for s in range(samples)]
    if hasattr(engine, "generate_many"):
        return _run_batched(engine, suite, ask, seeds, registry, deliveries, progress)
    lanes = len(getattr(engine, "lanes", [None]))
    results: dict[int, list[dict[str, Any]]] = {}
    lock, failed = threading.Lock(), threading.Event()

    def run_lane(k: int) -> None:
        for i in range(k, len(suite.items), lanes):
            if failed.is_set():  # another lane hit an error: stop early
                return
            item = suite.items[i]
            request = ask(item)
            try:
                if hasattr(engine, "generate_batch"):  # llama.cpp: samples decoded together
                    gens = engine.generate_batch(request, seeds, lane=k)
                else:
                    gens = [engine.generate(request, x) for x in seeds]
            except BaseException:
                failed.set()
                raise
            got = deliveries.get(item.id)
            rows = [_row(item, s, seed + s, gen, registry, got) for s, gen in enumerate(gens)]
            with lock:
                results[i] = rows
                if progress:
                    progress(len(results), len(suite.items))

    if lanes == 1:
        run_lane(0)
    else:
        with ThreadPoolExecutor(lanes) as pool:  # llama.cpp releases the GIL while decoding
            futures = [pool.submit(run_lane, k) for k in range(lanes)]
            try:
                for future in futures:
                    future.result()
            except BaseException:  # interrupted: the lanes stop after their current item
                failed.set()
                raise
    return [row for i in range(len(suite.items)) for row in results[i]]


def _run_batched(
    engine: Any,
    suite: Suite,
    ask: Asker,
    seeds: list[int],
    registry: Registry,
    deliveries: dict[str, Delivery],
    progress: Progress | None,
) -> list[dict[str, Any]]:
    asks = [(ask(item), s) for item in suite.items for s in seeds]
    n = len(suite.items)
    done = (lambda rows: progress(rows // len(seeds), n)) if progress else None
    gens = engine.generate_many(asks, done)
    return [
        _row(item, s, seeds[s], gens[i * len(seeds) + s], registry, deliveries.get(item.id))
        for i, item in enumerate(suite.items)
        for s in range(len(seeds))
    ]


def _row(
    item: Item,
    sample: int,
    seed: int | None,
    gen: Generation,
    registry: Registry,
    delivery: Delivery | None = None,
) -> dict[str, Any]:
    delivered = delivery.delivered if delivery else None
    excerpts = len(delivery.titles) if delivery else 0
    return {
        "item": item.id,
        "category": item.category,
        "kind": item.kind,
        "sample": sample,
        "seed": seed,
        "question": item.question,
        "reply": gen.text,
        **metrics.measure(
            gen.text,
            gen.finish_reason,
            item,
            registry,
            gen.completion_tokens,
            gen.seconds,
            delivered,
            excerpts,
        ),
        "prompt_tokens": gen.prompt_tokens,
    }


def _over_num_ctx(rows: list[dict], num_ctx: int | None) -> dict[str, Any]:
    """The items whose prompt Ollama would cut at the request's num_ctx (it sends whole only
    num_ctx - 1 tokens); the llamacpp backend answered what the cut leaves."""
    if num_ctx is None:
        return {}
    over = {r["item"]: r["prompt_tokens"] for r in rows if (r["prompt_tokens"] or 0) >= num_ctx}
    return {"over_num_ctx": {"num_ctx": num_ctx, "items": over}}


def _run_info(
    model: str,
    label: str,
    backend: str,
    suite: Suite,
    profile: str,
    samples: int,
    wall: float,
) -> dict[str, Any]:
    try:
        version = metadata.version("meshtune")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return {
        "meshtune_version": version,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": model,
        "label": label,
        "backend": backend,
        "profile": profile,
        "suite": suite.name,
        "suite_path": suite.path,
        "samples": samples,
        "wall_s": round(wall, 1),
    }


class _Category(BaseModel):
    items: int
    pass_rate: float


class _Chars(BaseModel):
    p50: float
    p90: float


class _Summary(BaseModel):
    """What a comparison and the gate read from a report's summary.json."""

    model_config = ConfigDict(extra="allow")
    suite: str
    profile: str
    categories: dict[str, _Category]
    chars: _Chars
    pass_rate: float
    # rates the gate reads (None: a report written before the rate was measured)
    loop_rate: float | None = None
    runaway_rate: float | None = None
    invented_command_rate: float | None = None
    wrong_command_rate: float | None = None
    command_dump_rate: float | None = None
    canned_rate: float | None = None
    gate_config: GateConfig | None = None


class _Reply(BaseModel):
    """What they read from each line of replies.jsonl."""

    model_config = ConfigDict(extra="allow")
    item: str
    sample: int
    category: str
    question: str
    reply: str
    failures: list[str]
    passed: bool
    chars: float
    loop: Any
    runaway: bool
    command_dump: bool
    invented_commands: list[str]


def load_result(folder: str | Path) -> EvalResult:
    """A finished evaluation read back from its report folder (summary.json, replies.jsonl);
    a damaged file is an error naming it, the line and the field."""
    folder = Path(folder)
    fix = "re-run `meshtune eval` with --out to write the report again"
    summary = _report_record(
        _Summary, folder / "summary.json", 0, read_text(folder / "summary.json"), fix
    )
    path = folder / "replies.jsonl"
    rows = [
        _report_record(_Reply, path, n, line, fix)
        for n, line in jsontext.lines(read_text(path))
        if line.strip()
    ]
    verdict = judge(summary, rows, GateConfig.model_validate(summary.get("gate_config") or {}))
    summary["gate"] = verdict.to_dict()
    return EvalResult(summary, rows, verdict)


def _report_record(kind: type[BaseModel], path: Path, line: int, text: str, fix: str) -> dict:
    """One JSON object of a report file, checked to hold what is read from it (kept whole)."""
    where = f"{path}:{line}" if line else str(path)
    raw = jsontext.load_object(text, where, fix)
    try:
        kind.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        raise MeshtuneError(f"{where}: `{field}`: {err['msg']}; {fix}") from e
    return raw


def is_report(path: str | Path) -> bool:
    p = Path(path)
    return (p / "summary.json").is_file() and (p / "replies.jsonl").is_file()


# ---------------------------------------------------------------- compare


@dataclass(slots=True)
class Comparison:
    a: EvalResult
    b: EvalResult
    metrics: list[dict[str, Any]]  # name, a, b, delta, better ("a" | "b" | "")
    categories: list[dict[str, Any]]  # category, items, a, b, delta
    improved: list[dict[str, Any]]  # item, category, question, a, b
    regressed: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        def side(r: EvalResult) -> dict[str, Any]:
            keys = ("model", "label", "backend", "profile", "suite", "samples")
            return {**{k: r.summary.get(k) for k in keys}, "verdict": r.verdict.label}

        return {
            "a": side(self.a),
            "b": side(self.b),
            "metrics": self.metrics,
            "categories": self.categories,
            "improved": self.improved,
            "regressed": self.regressed,
        }


# (summary key path, display name, True when higher is better)
COMPARED = (
    (("pass_rate",), "item pass rate", True),
    (("kinds", "dm", "pass_rate"), "DM pass rate", True),
    (("knowledge", "/meshtastic", "delivered", "pass_rate"), "/meshtastic delivered pass", True),
    (("knowledge", "/meshtastic", "undelivered", "refusal_rate"), "/meshtastic refusal", True),
    (("knowledge", "follow-up", "delivered", "pass_rate"), "follow-up delivered pass", True),
    (("knowledge", "follow-up", "undelivered", "refusal_rate"), "follow-up refusal", True),
    (("technical", "wrong"), "technical replies wrong", False),
    (("wrong_command_rate",), "wrong-command rate", False),
    (("loop_rate",), "loop rate", False),
    (("runaway_rate",), "runaway rate", False),
    (("invented_command_rate",), "invented-command rate", False),
    (("command_dump_rate",), "command-dump rate", False),
    (("canned_rate",), "canned rate", False),
    (("chars", "p50"), "median chars", None),
    (("chars", "p90"), "p90 chars", False),
    (("share_80_150_chars",), "share 80-150 chars", True),
    (("share_one_chunk",), "share in one chunk", True),
    (("tokens_per_s",), "tokens/s", True),
)


def compare(
    a: str,
    b: str,
    suite: str | Suite = "mesh",
    out: str | Path | None = None,
    progress: Progress | None = None,
    **kwargs: Any,
) -> Comparison:
    """Two models (or two finished report folders) on the same suite and profile."""
    results = []
    for tag, model in (("a", a), ("b", b)):
        if is_report(model):
            results.append(load_result(model))
        else:
            sub = Path(out) / tag if out is not None else None
            results.append(evaluate(model, suite, out=sub, progress=progress, **kwargs))
    ra, rb = results
    for key in ("suite", "profile"):
        if ra.summary[key] != rb.summary[key]:
            raise MeshtuneError(
                f"cannot compare: {key} '{ra.summary[key]}' vs '{rb.summary[key]}'; "
                "evaluate both with the same --suite and --profile"
            )
    comp = _comparison(ra, rb)
    if out is not None:
        from meshtune.evaluate.report import write_comparison

        write_comparison(Path(out), comp)
    return comp


def _get(summary: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = summary
    for k in path:
        value = value.get(k) if isinstance(value, dict) else None
    return value


def _comparison(ra: EvalResult, rb: EvalResult) -> Comparison:
    rows = []
    for path, name, higher in COMPARED:
        va, vb = _get(ra.summary, path), _get(rb.summary, path)
        if va is None and vb is None:  # a measure neither suite has (no knowledge items)
            continue
        delta = round(vb - va, 4) if va is not None and vb is not None else None
        better = ""
        if delta and higher is not None:
            better = "b" if (delta > 0) == higher else "a"
        rows.append({"name": name, "a": va, "b": vb, "delta": delta, "better": better})
    cats = []
    ca, cb = ra.summary["categories"], rb.summary["categories"]
    for cat in sorted(set(ca) | set(cb)):
        va = ca.get(cat, {}).get("pass_rate")
        vb = cb.get(cat, {}).get("pass_rate")
        delta = round(vb - va, 4) if va is not None and vb is not None else None
        items = (cb.get(cat) or ca.get(cat))["items"]
        cats.append({"category": cat, "items": items, "a": va, "b": vb, "delta": delta})
    pa, pb = metrics.item_pass_rates(ra.rows), metrics.item_pass_rates(rb.rows)
    info = {r["item"]: (r["category"], r["question"]) for r in ra.rows + rb.rows}
    improved, regressed = [], []
    for item in [i for i in pa if i in pb]:
        entry = {
            "item": item,
            "category": info[item][0],
            "question": info[item][1],
            "a": round(pa[item], 3),
            "b": round(pb[item], 3),
        }
        if pb[item] > pa[item]:
            improved.append(entry)
        elif pb[item] < pa[item]:
            regressed.append(entry)
    improved.sort(key=lambda e: e["a"] - e["b"])
    regressed.sort(key=lambda e: e["b"] - e["a"])
    return Comparison(ra, rb, rows, cats, improved, regressed)
