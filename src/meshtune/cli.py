"""The `meshtune` command: one thin command per stage; parsing and printing only."""

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from meshtune import data as data_mod
from meshtune.commands import load_registry
from meshtune.errors import MeshtuneError

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Fine-tune, export and prove small chat models for Meshtastic mesh bots.",
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
    """Convert between ShareGPT and OpenAI messages; other row keys (category) are kept."""
    convs = data_mod.load_conversations(file)
    data_mod.write_jsonl({output: (data_mod.dumps(data_mod.to_row(c, to)) for c in convs)})
    typer.echo(f"wrote {output} ({len(convs)} conversations, {to})")


def main() -> None:
    try:
        app()
    except MeshtuneError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
