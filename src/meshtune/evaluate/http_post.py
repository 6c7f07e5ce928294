"""One JSON POST to a model server, read under deadlines.

A server that never answers, stalls mid-reply or streams forever must not hang an evaluation,
and the error must say which of these happened. Every read has a deadline: the answer must
start within `timeout` seconds, no pause in it may be longer, and the whole reply must end
within TOTAL_FACTOR timeouts. The socket's own timeout is re-armed before each read, so a
deadline is exact, not "the next read after it".
"""

import http.client
import json
import socket
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from meshtune.errors import MeshtuneError

TIMEOUT_S = 120.0  # Mesh Master's ollama_timeout: how long the bot waits for an answer
TOTAL_FACTOR = 4  # a whole reply gets this many timeouts (the longest capped reply fits)
MAX_BYTES = 16 << 20  # a reply, or a line of a stream: far beyond any chat reply
_RAISE = "raise --timeout if the server is only slow"


class Answer:
    """A server's HTTP answer to one JSON POST, its body read under the deadlines."""

    def __init__(self, url: str, body: dict[str, Any], headers: dict[str, str], timeout: float):
        self.url, self.timeout = url, timeout
        self.deadline = time.monotonic() + TOTAL_FACTOR * timeout
        self.received = 0
        conn = _send(url, json.dumps(body).encode(), headers, timeout)
        self.sock = conn.sock  # the response keeps it after the connection hands it over
        try:
            self.resp = self._guard(conn.getresponse, "no answer")
        except BaseException:
            conn.close()
            raise
        if self.resp.status >= 400:
            detail = " ".join(self._read(200).decode(errors="replace").split())
            self.resp.close()
            raise MeshtuneError(
                f"{url}: HTTP {self.resp.status} ({detail}); check the model name and --url"
            )

    def json(self) -> dict[str, Any]:
        """The whole body as one JSON object."""
        chunks = []
        while chunk := self._read(65536):
            chunks.append(chunk)
            if self.received > MAX_BYTES:
                raise self._too_big("the reply")
        length = self.resp.getheader("Content-Length")
        if length is not None and length.isdigit() and self.received < int(length):
            raise self._closed_mid_reply(f"{self.received} of {length} bytes")
        return json_object(b"".join(chunks), self.url)

    def lines(self) -> Iterator[bytes]:
        """The body line by line (a stream of JSON chunks)."""
        while line := self._guard(lambda: self.resp.readline(MAX_BYTES + 1), "stalled"):
            self.received += len(line)
            if len(line) > MAX_BYTES:
                raise self._too_big("a line of the stream")
            yield line

    def close(self) -> None:
        self.resp.close()

    def __enter__(self) -> "Answer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read(self, size: int) -> bytes:
        chunk = self._guard(lambda: self.resp.read1(size), "stalled")
        self.received += len(chunk)
        return chunk

    def _guard(self, read: Any, waiting_for: str) -> Any:
        """One read with the socket's timeout set to what is left of the deadlines; a
        timeout or a closed connection becomes an error saying which it was."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise self._too_long()
        if self.sock.fileno() != -1:  # closed once a body with a length is read to its end
            self.sock.settimeout(min(self.timeout, left))
        try:
            return read()
        except TimeoutError as e:
            if time.monotonic() >= self.deadline:
                raise self._too_long() from e
            if waiting_for == "no answer":
                raise MeshtuneError(
                    f"{self.url}: the server took the request but sent no answer within "
                    f"{self.timeout:g} s; check it is not hung ({_RAISE})"
                ) from e
            raise MeshtuneError(
                f"{self.url}: the reply stalled: nothing for {self.timeout:g} s after "
                f"{self.received} bytes; check the server ({_RAISE})"
            ) from e
        except (http.client.RemoteDisconnected, ConnectionResetError) as e:
            if waiting_for == "no answer":
                raise MeshtuneError(
                    f"{self.url}: the server closed the connection without answering; check its log"
                ) from e
            raise self._closed_mid_reply(f"after {self.received} bytes") from e
        except http.client.IncompleteRead as e:
            raise self._closed_mid_reply(f"after {self.received} bytes") from e
        except (http.client.HTTPException, ConnectionError) as e:
            raise MeshtuneError(
                f"{self.url}: not a proper HTTP answer ({type(e).__name__}: {e}); check --url "
                "points at the model server"
            ) from e

    def _closed_mid_reply(self, how_much: str) -> MeshtuneError:
        return MeshtuneError(
            f"{self.url}: the server closed the connection mid-reply ({how_much}); check its "
            "log and retry"
        )

    def _too_big(self, what: str) -> MeshtuneError:
        return MeshtuneError(
            f"{self.url}: {what} is over {MAX_BYTES >> 20} MiB, not a chat reply; check --url "
            "points at the model server"
        )

    def _too_long(self) -> MeshtuneError:
        return MeshtuneError(
            f"{self.url}: the reply was still coming after {TOTAL_FACTOR * self.timeout:g} s "
            f"({self.received} bytes); the server does not end its reply ({_RAISE})"
        )


def _send(url: str, data: bytes, headers: dict[str, str], timeout: float) -> Any:
    """Connect and send the POST; the connection waits for its answer."""
    parts = urlsplit(url)
    https = parts.scheme == "https"
    kind = http.client.HTTPSConnection if https else http.client.HTTPConnection
    conn = kind(parts.hostname or "", parts.port, timeout=timeout)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        conn.request("POST", path, data, {"Content-Type": "application/json", **headers})
    except socket.gaierror as e:
        raise MeshtuneError(f"{url}: unknown host ({e.strerror}); check --url") from e
    except (ConnectionResetError, BrokenPipeError) as e:
        raise MeshtuneError(
            f"{url}: the server closed the connection while the request was sent; check its log"
        ) from e
    except ConnectionRefusedError as e:
        raise MeshtuneError(
            f"{url}: nothing is listening there (connection refused); start the server or fix --url"
        ) from e
    except TimeoutError as e:
        raise MeshtuneError(
            f"{url}: no answer to the connection within {timeout:g} s; check the host is up "
            "and --url is right"
        ) from e
    except OSError as e:
        raise MeshtuneError(f"{url}: cannot connect ({e.strerror or e}); check --url") from e
    return conn


def json_object(raw: bytes, url: str) -> dict[str, Any]:
    """A server's JSON reply; anything else (an HTML page, a proxy's error, a cut-off body) is
    named as such."""
    try:
        out = json.loads(raw)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, bad UTF-8, a huge integer
        text = raw.strip()
        if text.startswith(b"{") and not text.endswith(b"}"):
            raise MeshtuneError(
                f"{url}: the reply is cut off after {len(raw)} bytes (it ends "
                f"{text[-40:].decode(errors='replace')!r}); the server closed mid-reply: check "
                "its log and retry"
            ) from e
        start = " ".join(raw[:80].decode(errors="replace").split())
        raise MeshtuneError(
            f"{url}: the server did not answer with JSON (it sent {start!r}); check --url "
            "points at the model server itself"
        ) from e
    if not isinstance(out, dict):
        raise MeshtuneError(
            f"{url}: the reply is a JSON {type(out).__name__}, not an object "
            f"({str(out)[:80]!r}); check --url"
        )
    return out
