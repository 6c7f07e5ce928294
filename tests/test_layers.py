"""The dependency rule, read from the source: data flows one way.

    cli (and the terminal chat) -> pipeline -> {train, export, evaluate} -> shared modules

A stage never imports another stage (export reads what train wrote through meshtune.rundir, not
through train), and shared modules (rundir, recipe, data, chat, models, meshmaster, suites,
files, ollama, ...) import only each other.
"""

import ast
from pathlib import Path

import meshtune

SRC = Path(meshtune.__file__).parent
FRONT = {"cli", "__main__", "chat_terminal"}
PIPELINE = {"pipeline"}
STAGES = {"train", "export", "evaluate"}


def layer(part: str) -> int:
    """0: shared, 1: a stage, 2: pipeline, 3: front."""
    return 3 if part in FRONT else 2 if part in PIPELINE else 1 if part in STAGES else 0


def part_of(module: str) -> str:
    """meshtune.export.gguf.llama -> export; meshtune -> "" (the package itself)."""
    names = module.split(".")
    return names[1] if len(names) > 1 else ""


def imported(tree: ast.AST, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, module) of every meshtune import, top-level or inside a function."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("meshtune")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                package = module.split(".")[: len(module.split(".")) - node.level + is_package]
                base = ".".join([*package, *([base] if base else [])])
            if not base.startswith("meshtune"):
                continue
            if base == "meshtune":  # from meshtune import chat, export
                found += [(node.lineno, f"meshtune.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, base))
    return found


def violations(sources: dict[str, str]) -> list[str]:
    """Each import that breaks the rule, as `file:line: a -> b (why)`; `sources` maps a path
    under src/meshtune (e.g. export/proof.py) to its text."""
    problems = []
    for rel, text in sorted(sources.items()):
        path = Path(rel)
        is_package = path.name == "__init__.py"
        parts = path.with_suffix("").parts[: -1 if is_package else None]
        module = ".".join(["meshtune", *parts])
        source = part_of(module)
        for line, target in imported(ast.parse(text), module, is_package):
            dest = part_of(target)
            if dest in ("", source):
                continue
            why = None
            if layer(dest) > layer(source):
                why = f"{source or 'meshtune'} may not import {dest}: it sits above it"
            elif layer(dest) == layer(source) == 1:
                why = "a stage imports another stage"
            if why:
                problems.append(f"src/meshtune/{rel}:{line}: imports {target} ({why})")
    return problems


def test_no_stage_imports_another_and_shared_modules_import_no_stage():
    sources = {str(p.relative_to(SRC)): p.read_text() for p in SRC.rglob("*.py")}
    assert len(sources) > 30  # the whole package was read
    problems = violations(sources)
    assert not problems, "\n".join(problems)


def test_the_rule_names_each_offending_import():
    sources = {
        "export/proof.py": "from meshtune.evaluate.suite import load_suite\n",
        "evaluate/backends.py": "def f():\n    from meshtune.export import load_run\n",
        "rundir.py": "from meshtune import chat, train\n",
        "pipeline.py": "from meshtune import cli\n",
        "train/loop.py": "from meshtune.train.outputs import save_adapter\nimport meshtune.files\n",
        "export/gguf/__init__.py": "from . import llama\nfrom ..merge import merge\n",
    }
    assert violations(sources) == [
        "src/meshtune/evaluate/backends.py:2: imports meshtune.export (a stage imports another "
        "stage)",
        "src/meshtune/export/proof.py:1: imports meshtune.evaluate.suite (a stage imports "
        "another stage)",
        "src/meshtune/pipeline.py:1: imports meshtune.cli (pipeline may not import cli: it "
        "sits above it)",
        "src/meshtune/rundir.py:1: imports meshtune.train (rundir may not import train: it sits "
        "above it)",
    ]
