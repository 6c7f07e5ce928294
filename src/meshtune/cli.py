"""The `meshtune` command: one thin command per stage; parsing and printing only."""

import json
import os
import shlex
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from meshtune import data as data_mod
from meshtune.commands import Registry, load_registry
from meshtune.errors import Interrupted, MeshtuneError
from meshtune.files import check_output_dir
from meshtune.meshmaster import BotConfig
from meshtune.models import EMBEDDED_ALIASES
from meshtune.rundir import PipelineResult, RunDir, TrainSummary

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Fine-tune, export and prove small chat models for Meshtastic mesh bots. "
    "Add --debug to any command to see the traceback of an error.",
)
data_app = typer.Typer(
    no_args_is_help=True, help="Check, describe, split and convert chat datasets."
)
app.add_typer(data_app, name="data")

RegistryOpt = Annotated[
    Path | None,
    typer.Option(
        "--registry", help="Command registry YAML for another bot (default: Mesh Master's)."
    ),
]
FileArg = Annotated[Path, typer.Argument(help="A JSONL chat file (ShareGPT or OpenAI messages).")]


def _echo_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, ensure_ascii=False))


@data_app.command("check")
def data_check(
    file: FileArg,
    registry: RegistryOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
    strict: Annotated[bool, typer.Option(help="Exit 1 on warnings too.")] = False,
) -> None:
    """Validate every row and lint replies against the v2 guide's rules.

    Exit code 0: no errors; 1: errors (or warnings with --strict); 2: the file cannot be read.
    """
    dataset, issues = data_mod.check(file, load_registry(registry))
    if dataset.rows == 0:  # as `data stats` says it: nothing to check is not a clean file
        raise MeshtuneError(f"{file}: no conversations (the file has no rows); add JSONL rows")
    errors = sum(i.severity == "error" for i in issues)
    warnings = len(issues) - errors
    by_code = {}
    for i in issues:
        by_code[f"{i.code} {i.name}"] = by_code.get(f"{i.code} {i.name}", 0) + 1
    if as_json:
        _echo_json(
            {
                "path": dataset.path,
                "rows": dataset.rows,
                "conversations": len(dataset.conversations),
                "errors": errors,
                "warnings": warnings,
                "by_code": by_code,
                "issues": [i.to_dict() for i in issues],
            }
        )
    else:
        for i in issues:
            typer.echo(str(i))
        summary = ", ".join(f"{n} x {code}" for code, n in sorted(by_code.items()))
        typer.echo(
            f"{dataset.path}: {dataset.rows} rows, {len(dataset.conversations)} valid "
            f"conversations, {errors} errors, {warnings} warnings"
            + (f" ({summary})" if summary else "")
        )
    if errors or (strict and warnings):
        raise typer.Exit(1)


@data_app.command("stats")
def data_stats(
    file: FileArg,
    registry: RegistryOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Counts, reply lengths (characters, UTF-8 bytes, radio chunks), command usage, openings."""
    s = data_mod.stats(data_mod.load_conversations(file), load_registry(registry))
    if as_json:
        _echo_json(s)
        return
    pct = lambda d: " ".join(f"{k} {v:g}" for k, v in d.items())  # noqa: E731
    typer.echo(f"conversations        {s['conversations']}")
    typer.echo(f"categories           {', '.join(f'{k} {v}' for k, v in s['categories'].items())}")
    typer.echo(f"exchanges per conv.  {', '.join(f'{k}: {v}' for k, v in s['exchanges'].items())}")
    typer.echo(f"with system turn     {s['with_system_turn']}")
    typer.echo(f"Mesh Master prompts  {s['mesh_master_prompts']}")
    typer.echo(f"replies              {s['replies']}")
    typer.echo(f"reply characters     {pct(s['reply_chars'])}")
    typer.echo(f"reply UTF-8 bytes    {pct(s['reply_bytes'])}")
    typer.echo(
        f"radio chunks (160B)  {', '.join(f'{k}: {v}' for k, v in s['reply_chunks'].items())}"
        f"  (one chunk: {s['share_one_chunk']:.1%})"
    )
    typer.echo(f"replies 80-150 chars {s['share_80_150_chars']:.1%}")
    usage = ", ".join(f"{k} {v}" for k, v in s["command_usage"].items())
    typer.echo(f"commands used        {s['distinct_commands']} distinct: {usage}")
    if s["unknown_commands"]:
        unknown = ", ".join(f"{k} {v}" for k, v in s["unknown_commands"].items())
        typer.echo(f"unknown commands     {unknown}")
    fewer = ", ".join(f"{k} {v}" for k, v in s["commands_taught_under_15"].items()) or "none"
    typer.echo(f"commands taught 15+  {s['commands_taught_15_plus']}; in 1-14 replies: {fewer}")
    typer.echo(f"counter-examples     {s['counter_examples']}")
    typer.echo(f"channel rows         {s['channel_rows']}")
    typer.echo(
        "top reply openings   " + "; ".join(f"{k!r} {v}" for k, v in s["top_openings"].items())
    )


@data_app.command("split")
def data_split(
    file: FileArg,
    eval_fraction: Annotated[float, typer.Option(help="Share of conversations held out.")] = 0.15,
    seed: Annotated[
        int, typer.Option(help="Seed of the shuffle; the same seed gives the same split.")
    ] = 42,
    out_dir: Annotated[
        Path | None, typer.Option(help="Folder for the two files (default: beside FILE).")
    ] = None,
) -> None:
    """Split into FILE.train.jsonl and FILE.eval.jsonl; near-duplicate prompts stay together."""
    if out_dir is not None:
        check_output_dir(out_dir, "--out-dir")
    convs = data_mod.load_conversations(file)
    train, evals = data_mod.split(convs, eval_fraction, seed)
    folder = out_dir or file.parent
    stem = file.name.removesuffix(".jsonl")
    paths = {
        folder / f"{stem}.train.jsonl": [c.raw for c in train],
        folder / f"{stem}.eval.jsonl": [c.raw for c in evals],
    }
    data_mod.write_jsonl(paths)
    for path, rows in paths.items():
        typer.echo(f"wrote {path} ({len(rows)} conversations)")


@data_app.command("convert")
def data_convert(
    file: FileArg,
    output: Annotated[Path, typer.Argument(help="The JSONL file to write.")],
    to: Annotated[data_mod.Format, typer.Option(help="Target format.")] = "openai",
) -> None:
    """Convert between ShareGPT and OpenAI messages; every other key, of the row (category) and
    of each turn (weight, name, tool_calls), is kept, so OUTPUT may be FILE itself."""
    convs = data_mod.load_conversations(file)
    data_mod.write_jsonl({output: (data_mod.dumps(data_mod.to_row(c, to)) for c in convs)})
    typer.echo(f"wrote {output} ({len(convs)} conversations, {to})")


RecipeArg = Annotated[Path, typer.Argument(help="An Axolotl-style YAML recipe.")]
DataOpt = Annotated[
    str | None, typer.Option("--data", help="Train on this JSONL instead of the recipe's datasets.")
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a recipe key: --set learning_rate=1e-4 (repeatable)."),
]


@app.command("plan")
def plan_cmd(recipe: RecipeArg, data: DataOpt = None, set_: SetOpt = None) -> None:
    """Tokenize the data and state the training arithmetic, with warnings where it cannot work."""
    from meshtune.recipe import load_recipe
    from meshtune.train import make_plan

    loaded = load_recipe(recipe, set_ or [], data)
    _check_base_model(loaded.recipe.base_model, required=False)
    plan = make_plan(loaded)
    for line in plan.lines():
        typer.echo(line)


@app.command("train")
def train_cmd(
    recipe: RecipeArg,
    data: DataOpt = None,
    output_dir: Annotated[
        Path | None, typer.Option(help="The run directory (default: the recipe's output_dir).")
    ] = None,
    set_: SetOpt = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty output directory.")] = False,
    resume: Annotated[
        bool, typer.Option(help="Continue from the last checkpoint in the output directory.")
    ] = False,
    trust_remote_code: Annotated[
        bool, typer.Option(help="Allow the model folder's own code to run.")
    ] = False,
    allow_lora_fallback: Annotated[
        bool, typer.Option(help="Without CUDA, train plain LoRA for a qlora recipe.")
    ] = False,
    engine: Annotated[
        str | None,
        typer.Option(
            help="cpu | cuda: how rows become batches (default: cuda on a GPU). cpu on a GPU "
            "takes the CPU's exact steps (shared prompts counted once), so a GPU search "
            "ranks the recipe the CPU will run."
        ),
    ] = None,
) -> None:
    """LoRA fine-tuning from a recipe.

    Writes adapter/, best/, metrics.jsonl, loss.png and train_summary.json to the run directory.
    """
    from meshtune.recipe import load_recipe
    from meshtune.train import Options, train

    loaded = load_recipe(recipe, set_ or [], data)
    run = output_dir or Path(loaded.recipe.output_dir)
    check_output_dir(run, "--output-dir" if output_dir else f"{recipe}: output_dir")
    _check_base_model(loaded.recipe.base_model, required=True)
    _on_interrupt(lambda: _train_kept(run))
    opts = Options(run, overwrite, resume, trust_remote_code, allow_lora_fallback, engine=engine)
    summary = train(loaded, opts)
    if summary is None:  # not the main process of a multi-process run
        return
    typer.echo(train_line(summary, run))


def train_line(summary: TrainSummary, run: Path) -> str:
    """`meshtune train`'s last line; the eval losses only when the run held data out."""
    losses = summary.eval_losses(4)
    return (
        f"done: {summary.steps} steps in {summary.wall_time_s:.0f} s, "
        + (f"{losses}, " if losses else "")
        + f"{summary.tokens_per_s or 0:.0f} tokens/s; "
        + f"best {'model' if summary.fine_tune == 'full' else 'adapter'}: "
        + str(run / summary.best_adapter)
    )


# ---------------------------------------------------------------- prompt

MeshConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--mesh-master-config",
        help="The bot's config.json (default: the config Mesh Master ships with).",
    ),
]
PersonasOpt = Annotated[
    Path | None,
    typer.Option(
        help="The bot's personas (JSON list, or an object with `personalities`), for a config "
        "without ai_personalities (meshtune itself knows only the default, trail)."
    ),
]
PersonaOpt = Annotated[
    str | None, typer.Option(help="The sender's persona id (default: the config's default).")
]


@app.command("prompt")
def prompt_cmd(
    message: Annotated[str, typer.Argument(help="The incoming message (on a channel: /ai ...).")],
    mesh_master_config: MeshConfigOpt = None,
    personas: PersonasOpt = None,
    persona: PersonaOpt = None,
    history: Annotated[
        Path | None,
        typer.Option(
            help='Earlier messages of the DM or channel, JSONL: {"from": "<shortname>", '
            '"text": "...", "ai": false} (ai: true for the bot\'s own replies).'
        ),
    ] = None,
    sender: Annotated[str, typer.Option(help="The sender's shortname.")] = "K7QX",
    bot: Annotated[
        str | None,
        typer.Option(help="The bot node's shortname (used when the config sets force_node_num)."),
    ] = None,
    channel: Annotated[
        bool, typer.Option("--channel", help="The message was sent on a channel, not as a DM.")
    ] = False,
    model: Annotated[
        str | None,
        typer.Option(
            help="Model name in the body (default: the config's). A local model (run "
            "directory, model folder, .gguf, 'smollm2-135m') also counts the prompt's tokens "
            "and shows, on stderr, what survives Ollama's cut at the config's num_ctx."
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the /api/generate body the bot posts.")
    ] = False,
    knowledge: Annotated[
        Path | None,
        typer.Option(
            help="The bot's Meshtastic knowledge file, for /meshtastic and reference mode "
            "(default: the config's meshtastic_knowledge_file, next to the config)."
        ),
    ] = None,
    at: Annotated[
        float | None,
        typer.Option(help="When MESSAGE is sent, in seconds, against the history's `at` times."),
    ] = None,
) -> None:
    """Show exactly what Mesh Master sends its model for MESSAGE: the prompt string (Ollama
    renders it as the user turn), or with --json the whole request body. A /meshtastic
    question nothing matches prints the bot's own reply (no model is called)."""
    from meshtune import meshmaster

    config = meshmaster.load_config(mesh_master_config, personas)
    lines = meshmaster.load_history(history) if history else []
    kb = None
    if meshmaster.uses_knowledge(message, lines, sender, channel, config, at):
        kb = meshmaster.open_knowledge(knowledge, config)
    request = meshmaster.build_request(
        message,
        config,
        persona=persona,
        history=lines,
        sender=sender,
        bot=bot,
        channel=channel,
        knowledge=kb,
        now=at,
    )
    if request.reply is not None:
        _echo_json({"reply": request.reply}) if as_json else typer.echo(request.reply)
        return
    if as_json:
        _echo_json(request.body(model or config.model))
    else:
        typer.echo(request.prompt)
    if model is not None and (Path(model).exists() or model in EMBEDDED_ALIASES):
        _echo_model_view(model, request.prompt, config.num_ctx)


def _local_tokenizer(model: str) -> tuple[Any, str, str]:
    """A local model's tokenizer, deployment system prompt and label."""
    from meshtune.delivery import model_tokenizer
    from meshtune.evaluate.backends import resolve_model

    spec = resolve_model(model)
    return model_tokenizer(spec)[0], spec.system_prompt, spec.label


def _echo_model_view(model: str, prompt: str, num_ctx: int) -> None:
    """The prompt's tokens for a local model and what Ollama leaves of them, on stderr."""
    from meshtune.meshmaster.truncation import model_view

    tokenizer, system, label = _local_tokenizer(model)
    cut = model_view(tokenizer, system, prompt, num_ctx)
    where = f"{cut.total} tokens with {label}'s system prompt and chat template"
    if not cut.truncated:
        typer.echo(f"{where}: within num_ctx {num_ctx}, the model sees it all", err=True)
        return
    typer.echo(
        f"{where}: over num_ctx {num_ctx}, so Ollama cuts them to {len(cut.tokens)} (the first "
        f"{cut.keep} and the last {len(cut.tokens) - cut.keep}); the model sees:",
        err=True,
    )
    typer.echo(tokenizer.decode(cut.tokens), err=True)


# ---------------------------------------------------------------- kb


kb_app = typer.Typer(no_args_is_help=True, help="Measure the bot's Meshtastic knowledge path.")
app.add_typer(kb_app, name="kb")


@kb_app.command("check")
def kb_check(
    knowledge: Annotated[
        Path | None,
        typer.Argument(help="A knowledge file (default: the config's meshtastic_knowledge_file)."),
    ] = None,
    suite: Annotated[
        str, typer.Option(help="A suite with /meshtastic items: a JSONL file, or knowledge.")
    ] = "knowledge",
    mesh_master_config: MeshConfigOpt = None,
    num_ctx: Annotated[
        int | None, typer.Option(help="Ollama's context (default: the config's ollama_num_ctx).")
    ] = None,
    model: Annotated[
        str, typer.Option(help="The local model whose tokenizer and system prompt count.")
    ] = "smollm2-135m",
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
) -> None:
    """For each knowledge item of SUITE: does the bot's retrieval put its facts into the
    request, and do they survive Ollama's cut at num_ctx? The hit rate, and per item the
    titles retrieved and where each fact was found or lost."""
    from dataclasses import replace

    from meshtune import kbcheck, meshmaster
    from meshtune.suites import load_suite

    if num_ctx is not None and num_ctx < 2:
        raise MeshtuneError(f"--num-ctx {num_ctx}: must be at least 2")
    config = meshmaster.load_config(mesh_master_config)
    if num_ctx is not None:
        config = replace(config, num_ctx=num_ctx)
    kb = meshmaster.open_knowledge(knowledge, config)
    the_suite = load_suite(suite)
    kbcheck.knowledge_items(the_suite)  # a suite without them fails before the model loads
    tokenizer, system, _ = _local_tokenizer(model)
    result = kbcheck.check(kb, the_suite, config, tokenizer, system)
    typer.echo(json.dumps(result.to_dict(), indent=2) if as_json else result.render())


# ---------------------------------------------------------------- eval


EvalModelArg = Annotated[
    str | None,
    typer.Argument(
        help="A run directory, merged HF folder, .gguf file, 'smollm2-135m', or a served "
        "model's name (with --backend openai|ollama)."
    ),
]
SuiteOpt = Annotated[str, typer.Option(help="A suite JSONL file, or a built-in: quick, mesh.")]
BackendOpt = Annotated[
    str | None, typer.Option(help="hf | llamacpp | openai | ollama (default: chosen from MODEL).")
]
ProfileOpt = Annotated[str, typer.Option(help="meshmaster | modelfile | no-penalty | greedy.")]
ReportOpt = Annotated[
    Path | None, typer.Option(help="Report folder (default: RUN/eval/... or out/eval/...).")
]
GateOpt = Annotated[Path | None, typer.Option(help="YAML file overriding the gate's thresholds.")]
CompareOpt = Annotated[
    tuple[str, str] | None,
    typer.Option(help="Evaluate two models (or two report folders) side by side."),
]
SystemOpt = Annotated[
    str | None, typer.Option(help="System prompt (default: the run's, else meshtune's).")
]
ThreadsOpt = Annotated[
    int | None,
    typer.Option(help="CPU threads: llamacpp decodes one item per thread; hf: torch threads."),
]

TimeoutOpt = Annotated[
    float | None,
    typer.Option(
        help="Seconds a server may take to start its reply, and to pause in it (default 120, "
        "Mesh Master's ollama_timeout); a whole reply gets 4 times that."
    ),
]


@app.command("eval")
def eval_cmd(
    model: EvalModelArg = None,
    suite: SuiteOpt = "mesh",
    backend: BackendOpt = None,
    profile: ProfileOpt = "meshmaster",
    samples: Annotated[int, typer.Option(help="Replies per item for sampled profiles.")] = 3,
    out: ReportOpt = None,
    gate: GateOpt = None,
    compare: CompareOpt = None,
    system: SystemOpt = None,
    url: Annotated[str | None, typer.Option(help="Server URL for openai / ollama.")] = None,
    timeout: TimeoutOpt = None,
    seed: Annotated[int, typer.Option(help="Seed of the first sample.")] = 0,
    threads: ThreadsOpt = None,
    registry: RegistryOpt = None,
    mesh_master_config: MeshConfigOpt = None,
    personas: PersonasOpt = None,
    persona: PersonaOpt = None,
    replies: Annotated[
        Path | None,
        typer.Option(
            help='Score given replies instead of a model: JSONL, one {"item": ID, "reply": '
            "TEXT} a line (a report's replies.jsonl works too)."
        ),
    ] = None,
) -> None:
    """Measure the model on a suite the way Mesh Master calls it; READY (exit 0) or NOT READY
    (exit 1), with the failing criteria and example replies. With --replies, the same checks
    and gate score replies written elsewhere, with no model."""
    from meshtune.evaluate.backends import capped_threads, check_url
    from meshtune.meshmaster import load_config

    # Every argument checked before a model is loaded: a wrong one fails in a second, not
    # after the whole evaluation.
    if threads is not None and threads < 1:
        raise MeshtuneError(f"--threads {threads}: must be at least 1")
    if threads is not None:
        threads, warning = capped_threads(threads)
        if warning:
            typer.echo(f"warning: {warning}", err=True)
    if url is not None:
        check_url(url)
    if timeout is not None and not timeout > 0:
        raise MeshtuneError(f"--timeout {timeout:g}: must be more than 0 seconds")
    if out is not None:
        check_output_dir(out, "--out")
    _on_interrupt(lambda: "nothing was written (the report is written when evaluation ends)")
    opts = dict(
        backend=backend,
        profile=profile,
        samples=samples,
        gate=gate,
        system=system,
        url=url,
        timeout=timeout,
        seed=seed,
        threads=threads,
        registry=load_registry(registry),
        bot=load_config(mesh_master_config, personas),
        persona=persona,
    )
    if replies is not None:
        _eval_replies(replies, model, compare, suite, out, gate, opts["registry"], opts["bot"])
    if compare:
        _eval_compare(*compare, suite, profile, out, opts)
    if model is None:
        raise MeshtuneError("give MODEL, or --compare A B; see `meshtune eval --help`")
    from meshtune import evaluate as ev

    folder = out or _eval_dir(model, suite, profile)
    with _progress() as progress:
        result = ev.evaluate(model, suite, out=folder, progress=progress, **opts)
    from meshtune.evaluate.report import render_verdict

    typer.echo(render_verdict(result))
    _warn_over_num_ctx(result.summary)
    typer.echo(f"wrote {folder}/report.md, report.html, replies.jsonl, summary.json")
    raise typer.Exit(0 if result.ready else 1)


def _warn_over_num_ctx(summary: dict[str, Any]) -> None:
    from meshtune.evaluate.backends import CUTTING_BACKENDS

    over = summary.get("over_num_ctx") or {}
    if over.get("items"):
        n, num_ctx = len(over["items"]), over["num_ctx"]
        seen = (
            "the replies answer what it leaves"
            if summary["backend"] in CUTTING_BACKENDS
            else f"this {summary['backend']} backend saw the whole prompt"
        )
        typer.echo(
            f"warning: {n} of {summary.get('items', '?')} prompts exceed num_ctx {num_ctx} (up to "
            f"{max(over['items'].values())} tokens); Ollama keeps their first tokens and the "
            f"tail, about half the context; {seen}",
            err=True,
        )


def _eval_replies(
    replies: Path,
    model: str | None,
    compare: tuple[str, str] | None,
    suite: str,
    out: Path | None,
    gate: Path | None,
    registry: Registry,
    bot: BotConfig,
) -> None:
    """`eval --replies FILE`: the given replies judged like a model's (a knowledge item's
    delivery counted for the embedded model under the bot's config); exit 0 if READY."""
    from meshtune import evaluate as ev
    from meshtune.evaluate.report import render_verdict

    if model is not None or compare:
        raise MeshtuneError("--replies scores a file's replies: give no MODEL and no --compare")
    folder = out or Path("out/eval") / _slug(f"{replies.stem}-{Path(suite).stem}-replies")
    result = ev.score_replies(replies, suite, out=folder, gate=gate, registry=registry, bot=bot)
    typer.echo(render_verdict(result))
    typer.echo(f"wrote {folder}/report.md, report.html, replies.jsonl, summary.json")
    raise typer.Exit(0 if result.ready else 1)


def _eval_compare(
    a: str, b: str, suite: str, profile: str, out: Path | None, opts: dict[str, Any]
) -> None:
    """`eval --compare A B`: both evaluated (or read back), side by side; exit 0 if B is READY."""
    from meshtune import evaluate as ev
    from meshtune.evaluate.report import render_comparison

    folder = out or Path("out/compare") / _slug(f"{a}-vs-{b}-{suite}-{profile}")
    with _progress() as progress:
        comp = ev.compare(a, b, suite, out=folder, progress=progress, **opts)
    typer.echo(render_comparison(comp))
    typer.echo(f"wrote {folder}/compare.md, compare.html")
    raise typer.Exit(0 if comp.b.ready else 1)


def _check_base_model(name: str, required: bool) -> None:
    """The base model readable before anything runs. Only a model that is nowhere here may be
    skipped (`plan` then estimates with the embedded tokenizer); one that is here but damaged
    is an error, never "not available"."""
    from meshtune.models import ModelNotFound, resolve

    try:
        resolve(name)
    except ModelNotFound:
        if required:
            raise


def _train_kept(run: Path) -> str:
    steps = sorted(RunDir(run).checkpoints.glob("step-*"))
    if steps:
        return f"kept the last checkpoint, {steps[-1]} (continue with --resume)"
    return f"no checkpoint was written yet; {run} has what was finished before the stop"


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text).strip("_")[:120]


def _eval_dir(model: str, suite: str, profile: str) -> Path:
    name = _slug(f"{Path(suite).stem}-{profile}")
    if RunDir(Path(model)).is_trained():
        return RunDir(Path(model)).eval / name
    return Path("out/eval") / _slug(f"{Path(model).stem}-{name}")


class _progress:
    """A progress bar on stderr when it is a terminal; nothing otherwise (logs, CI, tests)."""

    def __enter__(self) -> Any:
        from rich.console import Console
        from rich.progress import Progress

        self.bar = Progress(console=Console(stderr=True), transient=True)
        self.bar.disable = not sys.stderr.isatty()
        self.bar.start()
        self.task = self.bar.add_task("evaluating", total=None)
        return self

    def __call__(self, done: int, total: int) -> None:
        self.bar.update(self.task, completed=done, total=total)

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()


# --- export, verify, modelfile check, deploy ---------------------------------------------------

RunArg = Annotated[Path, typer.Argument(help="A training run directory (meshtune train).")]
modelfile_app = typer.Typer(no_args_is_help=True, help="Lint Ollama Modelfiles.")
app.add_typer(modelfile_app, name="modelfile")


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _print_verification(verification: Any) -> None:
    for c in verification.checks:
        typer.echo(f"  {c.status:<7} {c.name:<9} {c.detail}")


@app.command("export")
def export_cmd(
    run: RunArg,
    quant: Annotated[
        str, typer.Option(help="GGUF type: F32, F16, BF16, Q8_0, Q4_0 or Q4_K_M.")
    ] = "Q8_0",
    name: Annotated[
        str | None, typer.Option(help="Ollama model name (default: the run folder's name).")
    ] = None,
) -> None:
    """Merge the adapter, write GGUF + Modelfile + DEPLOY.md, and verify them (exit 1 if not)."""
    from meshtune import export

    _quiet_transformers()
    _on_interrupt(
        lambda: (
            f"export stopped; the files it had finished stay in {run}, its temp files are "
            "removed, and deploy refuses any GGUF verify.json did not prove; run export again"
        )
    )
    info, verification = export.export(run, quant=quant, name=name, progress=typer.echo)
    _print_verification(verification)
    typer.echo(
        f"wrote {run / 'merged'}, {run / info.gguf} ({info.gguf_bytes / 1e6:.1f} MB), "
        f"{run / 'Modelfile'}, {run / 'DEPLOY.md'} in {info.seconds:.0f} s "
        f"(peak memory {info.peak_rss_bytes / 1e9:.2f} GB)"
    )
    if not verification.ok:
        typer.echo(f"verification FAILED: see {run / 'verify.json'}; do not deploy", err=True)
        raise typer.Exit(1)
    typer.echo(f"verified; next: {run / 'DEPLOY.md'}")


@app.command("verify")
def verify_cmd(run: RunArg) -> None:
    """Re-run the export's proof: metadata, tokens, TEMPLATE, logits, stopping (exit 1 if not)."""
    from meshtune import export

    _quiet_transformers()
    verification = export.verify(run)
    typer.echo(f"{run / verification.gguf} ({verification.quant})")
    _print_verification(verification)
    if not verification.ok:
        typer.echo(f"verification FAILED: see {run / 'verify.json'}", err=True)
        raise typer.Exit(1)
    typer.echo("verified")


@modelfile_app.command("check")
def modelfile_check(
    file: Annotated[Path, typer.Argument(help="An Ollama Modelfile.")],
    gguf: Annotated[
        Path | None,
        typer.Option(help="The model's GGUF (default: FROM's file, when it exists)."),
    ] = None,
    registry: RegistryOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Lint a Modelfile: commands in SYSTEM, FROM, PARAMETERs; with a GGUF, stops and TEMPLATE.

    Exit code 0: no errors; 1: errors; 2: the file cannot be read at all.
    """
    from meshtune.export import modelfile

    _quiet_transformers()
    findings = modelfile.check(file, gguf, load_registry(registry))
    errors = sum(f.severity == "error" for f in findings)
    if as_json:
        _echo_json({"path": str(file), "errors": errors, "warnings": len(findings) - errors,
                    "findings": [f.to_dict() for f in findings]})  # fmt: skip
    else:
        for f in findings:
            typer.echo(str(f))
        typer.echo(f"{file}: {errors} errors, {len(findings) - errors} warnings")
    if errors:
        raise typer.Exit(1)


@app.command("deploy")
def deploy_cmd(
    run: RunArg,
    name: Annotated[str, typer.Option(help="The Ollama model name to create.")],
    mesh_master_config: Annotated[
        Path | None,
        typer.Option(help="Mesh Master's config.json: ollama_model is set (a backup is kept)."),
    ] = None,
    force: Annotated[bool, typer.Option(help="Deploy even if verification failed.")] = False,
    to: Annotated[
        str | None, typer.Option(help="USER@HOST: deploy to the Pi over ssh (config: its path).")
    ] = None,
    restart: Annotated[
        str | None, typer.Option(help="With --to: the service to restart, e.g. mesh-ai.")
    ] = None,
    remote_dir: Annotated[
        str | None, typer.Option(help="With --to: folder for the files (meshtune-models/NAME).")
    ] = None,
    ssh_option: Annotated[
        list[str] | None, typer.Option(help="With --to: an ssh -o option, e.g. Port=2222.")
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="Print every step, run none.")] = False,
) -> None:
    """`ollama create NAME -f Modelfile` and config.json (ollama_model, and the run's knowledge
    file when it has one); without ollama here nothing changes and the steps are printed. With
    --to, on the Pi over ssh, the new model proven by one prompt before the config changes."""
    from meshtune.export.deploy import deploy

    if to is not None:
        from meshtune.export.remote import deploy_remote

        done = deploy_remote(
            run,
            name,
            to,
            config=str(mesh_master_config) if mesh_master_config else None,
            restart=restart,
            remote_dir=remote_dir,
            ssh_options=ssh_option or [],
            force=force,
            dry_run=dry_run,
            log=typer.echo,
        )
        if dry_run:
            return
        typer.echo(f"deployed {name} to {done.target}:{done.folder}")
        if done.config:
            knowledge = f" and meshtastic_knowledge_file ({done.knowledge})" * bool(done.knowledge)
            typer.echo(f"set ollama_model{knowledge} in {done.config} (backup: {done.backup})")
        if done.restarted:
            typer.echo(f"restarted {done.restarted}")
        return

    result = deploy(run, name, mesh_master_config, force, dry_run)
    if not result.ran:
        why = "dry run" if dry_run else "ollama is not on PATH here, so nothing was changed"
        typer.echo(f"{why}; the steps, to run on the Pi (or: meshtune deploy --to USER@HOST):")
        for step in result.steps:
            typer.echo(f"  {step}")
        return
    typer.echo(f"ran: {result.steps[0]}")
    if result.knowledge:
        typer.echo(f"installed the run's knowledge file as {result.knowledge}")
    if result.config:
        knowledge = " and meshtastic_knowledge_file" * bool(result.knowledge)
        typer.echo(
            f"set ollama_model to {name!r}{knowledge} in {result.config} (backup: "
            f"{result.backup}); restart Mesh Master (sudo systemctl restart mesh-ai)"
        )


@app.command("chat")
def chat_cmd(
    model: Annotated[str, typer.Argument(help="A run directory, a .gguf file, or 'smollm2-135m'.")],
    raw: Annotated[
        bool, typer.Option(help="A plain chat with the Modelfile's options, not the bot's.")
    ] = False,
    mesh_master_config: MeshConfigOpt = None,
    personas: PersonasOpt = None,
    persona: PersonaOpt = None,
    channel: Annotated[
        bool, typer.Option(help="Start on a channel (messages go as /ai ...), not in a DM.")
    ] = False,
    sender: Annotated[str, typer.Option(help="Your node's shortname.")] = "K7QX",
    seed: Annotated[int, typer.Option(help="Seed of the first reply (then +1 per reply).")] = 0,
    registry: RegistryOpt = None,
) -> None:
    """Talk to the model through llama.cpp as Mesh Master will: each reply with its characters,
    UTF-8 bytes, 160-byte radio chunks, the 80-token cap, and commands the bot does not have."""
    from rich.console import Console

    from meshtune import chat_terminal

    session = chat_terminal.open_session(
        model,
        raw=raw,
        config=mesh_master_config,
        personas=personas,
        persona=persona,
        channel=channel,
        sender=sender,
        seed=seed,
        registry=load_registry(registry),
    )
    chat_terminal.run(session, Console(highlight=False))


@app.command("run")
def run_cmd(
    recipe: Annotated[
        Path | None, typer.Argument(help="Recipe (default: recipes/embedded-cpu.yaml).")
    ] = None,
    output_dir: Annotated[
        Path | None, typer.Option(help="The run directory (default: the recipe's).")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty output directory.")] = False,
    quant: Annotated[str, typer.Option(help="GGUF type: Q8_0, F16, Q4_K_M, ...")] = "Q8_0",
    samples: Annotated[int, typer.Option(help="Replies per eval item.")] = 3,
    suite: Annotated[str, typer.Option(help="Eval suite: mesh, quick or a JSONL file.")] = "mesh",
    mesh_master_config: MeshConfigOpt = None,
    personas: PersonasOpt = None,
    persona: PersonaOpt = None,
) -> None:
    """The whole path on the embedded default: train, export (GGUF + Modelfile, proven), and
    evaluate base vs tuned the way Mesh Master calls the model. Exit 0 when READY."""
    from meshtune import pipeline
    from meshtune.meshmaster import load_config

    bot = load_config(mesh_master_config, personas)
    bot.persona(persona)  # an unknown persona fails before training starts
    result = pipeline.run(
        recipe or pipeline.DEFAULT_RECIPE,
        output_dir,
        overwrite,
        quant=quant,
        samples=samples,
        suite=suite,
        log=typer.echo,
        bot=bot,
        persona=persona,
    )
    if result.comparison:  # the same view as `meshtune eval --compare`
        typer.echo((RunDir(Path(result.run_dir)).eval / "compare.md").read_text(encoding="utf-8"))
    for line in run_lines(result):
        typer.echo(line)
    if not result.ready:
        raise typer.Exit(1)


def run_lines(result: PipelineResult) -> list[str]:
    """`meshtune run`'s closing lines; a run with no held-out set has no eval losses to show."""
    train = TrainSummary.from_dict(result.train)
    losses = train.eval_losses(3) or "no held-out set (val_set_size 0)"
    base = f"base {result.base_verdict}, " if result.base_verdict else ""
    return [
        f"== done: {result.run_dir}",
        f"train: {train.steps} steps in {train.wall_time_s:.0f} s, {losses}",
        f"verdict: {base}tuned {result.verdict} (reports in {result.run_dir}/eval)",
        "seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in result.seconds.items()),
    ]


# ---------------------------------------------------------------- the error boundary

_interrupt_note: Callable[[], str] = lambda: "nothing was written"  # noqa: E731


def _on_interrupt(note: Callable[[], str]) -> None:
    """What a command says it kept when Ctrl-C or SIGTERM stops it."""
    global _interrupt_note
    _interrupt_note = note


def _interrupt(signum: int, _frame: object) -> None:
    # Raised where the program is; every temp file is removed by the `finally` that made it.
    raise Interrupted(signum)


def main() -> None:
    """Run a command. Bad input is one line and exit 2; anything else that goes wrong is one
    line naming the command and its input, exit 2 (`--debug`: the traceback); SIGINT and SIGTERM
    say what was kept and exit 130."""
    global _interrupt_note
    debug = "--debug" in sys.argv[1:] or bool(os.environ.get("MESHTUNE_DEBUG"))
    sys.argv = [a for a in sys.argv if a != "--debug"]
    _interrupt_note = lambda: "nothing was written"  # noqa: E731
    previous = {s: signal.signal(s, _interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        _check_text_arguments(sys.argv[1:])
        app()
    except MeshtuneError as e:
        if debug:
            traceback.print_exc()
        typer.echo(f"error: {_one_line(str(e))}", err=True)
        sys.exit(2)
    except Interrupted as e:
        # a second signal while cleaning up must not leave a traceback either
        for s in previous:
            signal.signal(s, signal.SIG_IGN)
        name = signal.Signals(e.signum).name
        typer.echo(f"interrupted ({name}): {_interrupt_note()}", err=True)
        sys.exit(130)
    except Exception as e:  # the boundary: never a traceback unless asked for
        if debug:
            traceback.print_exc()
        command = shlex.join(["meshtune", *sys.argv[1:]])
        typer.echo(
            f"error: {command}: unexpected {type(e).__name__}: {_one_line(str(e))[:300]}; "
            "rerun with --debug for the traceback and report it",
            err=True,
        )
        sys.exit(2)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _check_text_arguments(args: list[str]) -> None:
    """Every argument is UTF-8 text: other bytes reach Python as lone surrogates, which no
    prompt, report or request can hold."""
    for arg in args:
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError as e:
            shown = arg.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            raise MeshtuneError(
                f"argument {shown!r}: character {e.start + 1} is not UTF-8 text; type it again in "
                "UTF-8 (or rename the file)"
            ) from e


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "no message"
