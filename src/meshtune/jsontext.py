"""JSON and JSONL text as meshtune reads it: every way a text can fail is a JSONDecodeError
(which callers turn into `file:line: invalid JSON (...)`), and JSONL is split on "\\n" only.

`json.loads` alone fails in three ways that are not JSONDecodeError: nesting deeper than
Python's recursion limit (RecursionError), an integer longer than Python's 4,300 digits
(ValueError), and an escaped lone surrogate ("\\ud800"), which loads fine and then cannot be
written, tokenized or sent as UTF-8. `str.splitlines` splits inside strings at U+2028, U+0085
and other characters that JSON allows raw.
"""

import json
import re
from collections.abc import Iterator
from typing import Any

from meshtune.errors import MeshtuneError

_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_LONG_NUMBER = re.compile(r"\d{4301,}")  # Python's int_max_str_digits, 4300


def loads(text: str) -> Any:
    """json.loads, with every failure a JSONDecodeError naming what is wrong."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise
    except RecursionError as e:
        raise json.JSONDecodeError("arrays or objects nested too deeply", text, 0) from e
    except ValueError as e:  # an integer beyond Python's digit limit
        digits = _LONG_NUMBER.search(text)
        where = digits.start() if digits else 0
        size = f"{len(digits[0]):,}-digit" if digits else "too long a"
        raise json.JSONDecodeError(
            f"a {size} number, longer than a number can be", text, where
        ) from e
    match = _SURROGATE_ESCAPE.search(text)
    if match and _has_lone_surrogate(value):
        raise json.JSONDecodeError(
            f"a lone surrogate {match[0]} is not a character (write the character itself)",
            text,
            match.start(),
        )
    return value


def load_object(text: str, where: str, fix: str) -> dict[str, Any]:
    """One JSON object (a JSONL line, a record); anything else is `where: what; fix`."""
    try:
        value = loads(text)
    except json.JSONDecodeError as e:
        at = f" at column {e.colno}" if e.pos else ""
        raise MeshtuneError(f"{where}: invalid JSON ({e.msg}{at}); {fix}") from e
    if not isinstance(value, dict):
        raise MeshtuneError(f"{where}: not a JSON object (a {type_name(value)}); {fix}")
    return value


def _has_lone_surrogate(value: Any) -> bool:
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            stack += [*v.keys(), *v.values()]
        elif isinstance(v, list):
            stack += v
        elif isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                return True
    return False


# Python's types as JSON names them, for errors that say what a value is
TYPE_NAMES = {str: "string", int: "number", float: "number", bool: "boolean", list: "list",
              dict: "object", type(None): "null"}  # fmt: skip


def type_name(value: Any) -> str:
    """What a parsed JSON value is, in JSON's words."""
    return TYPE_NAMES.get(type(value), type(value).__name__)


def lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) of a JSONL text, split on "\\n" only (a "\\r" before it dropped)."""
    for n, line in enumerate(text.split("\n"), start=1):
        yield n, line.removesuffix("\r")
