import codecs
import contextlib
import io
import json
import sys
from pathlib import Path

import pytest
from tests.tiny import (  # noqa: F401  (shared fixtures)
    llama3_tokenizer,
    smol_folder,
    smol_tokenizer,
    stopper,
    tiny_llama,
    tiny_llama3,
)

from meshtune.cli import main

REPO = Path(__file__).resolve().parents[1]
SHARED_REAL = REPO.parent / "shared" / "real"


@pytest.fixture
def real() -> Path:
    """The Mesh Master project's published files (../shared/real), read as real inputs."""
    assert SHARED_REAL.is_dir(), f"{SHARED_REAL} is missing: tests read real files from it"
    return SHARED_REAL


CONFIG_VARIANTS = ["crlf", "latin-1", "bom", "crlf-latin-1-bom"]


def config_bytes(text: str, kind: str) -> bytes:
    """A Mesh Master config.json as the probe found them on Pis: CRLF line endings, Latin-1
    (a value with é; its few non-Latin-1 marks become "?"), a UTF-8 BOM, or all three."""
    latin = text.replace('"llama3.2:1b",', '"llama3.2:1b",\n  "motd": "Caf\u00e9 \u00e0 la mesh",')
    crlf = lambda t: t.replace("\n", "\r\n")  # noqa: E731
    return {
        "crlf": crlf(text).encode(),
        "latin-1": latin.encode("latin-1", "replace"),
        "bom": codecs.BOM_UTF8 + text.encode(),
        "crlf-latin-1-bom": codecs.BOM_UTF8 + crlf(latin).encode("latin-1", "replace"),
    }[kind]


def rows_file(tmp_path: Path, rows: list, name: str = "chats.jsonl") -> Path:
    """A JSONL file with one row per item: dicts/lists are JSON-encoded, str/bytes written as is."""
    path = tmp_path / name
    lines = []
    for row in rows:
        if isinstance(row, bytes):
            lines.append(row)
        elif isinstance(row, str):
            lines.append(row.encode())
        else:
            lines.append(json.dumps(row).encode())
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def run_main(*args: str) -> tuple[int, str, str]:
    """`meshtune ARGS` in-process without pytest fixtures (for hypothesis and module-scoped
    fixtures, where `cli` cannot be used); returns exit code, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = ["meshtune", *map(str, args)]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 0
    finally:
        sys.argv = argv
    return code, out.getvalue(), err.getvalue()


class CliResult:
    def __init__(self, code: int, out: str, err: str):
        self.code, self.out, self.err = code, out, err


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run `meshtune ARGS...` in-process through the real entry point (its error handling
    included); returns exit code, stdout and stderr."""

    def run(*args: str) -> CliResult:
        monkeypatch.setattr(sys, "argv", ["meshtune", *map(str, args)])
        try:
            main()
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run
