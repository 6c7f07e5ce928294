"""How meshtune reports problems: a fatal error, or findings with stable codes."""

from dataclasses import dataclass
from typing import Any


class MeshtuneError(Exception):
    """A problem with the user's input or environment, shown as one line without a traceback.

    The message names the file (and line) when there is one, says what is wrong and how to fix
    it.
    """


class Interrupted(BaseException):
    """SIGINT or SIGTERM: unwinds like KeyboardInterrupt, so every `finally` removes its temp
    files, and reaches the CLI, which says what was kept (typer would swallow a
    KeyboardInterrupt into a silent exit 130)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


# code -> (name, severity), filled by each checker (data: E1xx/W2xx, modelfile: E3xx/W3xx)
CODES: dict[str, tuple[str, str]] = {}


def register_codes(codes: dict[str, tuple[str, str]]) -> None:
    CODES.update(codes)


@dataclass(frozen=True, slots=True)
class Issue:
    """One finding, printed as `file:line: CODE what; fix`."""

    code: str
    path: str
    line: int | None
    message: str
    fix: str

    @property
    def name(self) -> str:
        return CODES[self.code][0]

    @property
    def severity(self) -> str:
        return CODES[self.code][1]

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        return f"{where}: {self.code} {self.message}; {self.fix}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "name": self.name,
            "severity": self.severity,
            "path": self.path,
            "line": self.line,
            "message": self.message,
            "fix": self.fix,
        }
