"""Hostile requests for any gvloop JSON API, built from one valid body: sizes, depths,
encodings and number forms that crash naive servers, and auth headers that must be refused.
Each case names the 4xx it must get; none may get a 5xx or hang.

They are sent as raw bytes on a socket (`raw_post`): an HTTP client library would refuse to
send half of them (a lying Content-Length, a non-ASCII header)."""

from __future__ import annotations

import copy
import json
import select
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from services.schemas import MAX_TEXT_CHARS

JSON = {"Content-Type": "application/json"}
TextPath = tuple[str | int, ...]


@dataclass(frozen=True)
class HostileCase:
    name: str
    content: bytes | Iterator[bytes]
    expect: frozenset[int]
    headers: dict[str, str] = field(default_factory=lambda: dict(JSON))
    by_server: bool = False
    """Malformed HTTP: uvicorn refuses it before the app, in plain text, not JSON."""

    def answered_well(self, response: RawResponse) -> bool:
        """The expected status, and a 4xx says why."""
        if response.status not in self.expect:
            return False
        if response.status < 400:
            return True
        return bool(response.body) if self.by_server else b'"detail"' in response.body


@dataclass(frozen=True)
class RawResponse:
    status: int
    body: bytes


def raw_post(
    base_url: str,
    path: str,
    body: bytes | Iterator[bytes],
    headers: dict[str, str],
    timeout_s: float = 60.0,
) -> RawResponse:
    """POST exactly these bytes (chunked when `body` is an iterator); a read past
    `timeout_s` raises TimeoutError: the server hung."""
    url = urlsplit(base_url)
    assert url.hostname and url.port
    lines = [f"POST {path} HTTP/1.1", f"Host: {url.hostname}:{url.port}", "Connection: close"]
    chunked = not isinstance(body, bytes)
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    elif "content-length" not in {k.lower() for k in headers}:
        lines.append(f"Content-Length: {len(body)}")
    lines += [f"{key}: {value}" for key, value in headers.items()]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    with socket.create_connection((url.hostname, url.port), timeout=timeout_s) as sock:
        sock.sendall(head)
        for piece in _pieces(body, chunked):
            # A server that refuses early (413) answers and closes: stop sending, or the
            # unread bytes make its kernel reset the connection before we read the answer.
            if select.select([sock], [], [], 0)[0]:
                break
            try:
                sock.sendall(piece)
            except (BrokenPipeError, ConnectionResetError):
                break
        received = b""
        try:
            while data := sock.recv(65536):
                received += data
        except ConnectionResetError:
            pass  # what arrived before the reset is the answer
    assert received, f"no answer from {base_url}{path}"
    status_line, _, rest = received.partition(b"\r\n")
    return RawResponse(int(status_line.split(b" ")[1]), rest.partition(b"\r\n\r\n")[2])


def _with(valid: dict[str, Any], path: TextPath, raw: str) -> bytes:
    """`valid` as JSON with the string at `path` replaced by raw JSON text (maybe invalid)."""
    body = copy.deepcopy(valid)
    node: Any = body
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = "__RAW__"
    return json.dumps(body).replace('"__RAW__"', raw).encode()


def _pieces(body: bytes | Iterator[bytes], chunked: bool, size: int = 16 * 1024) -> Iterator[bytes]:
    if chunked:
        for chunk in body:
            yield b"%x\r\n%s\r\n" % (len(chunk), chunk)
        yield b"0\r\n\r\n"
        return
    assert isinstance(body, bytes)
    for start in range(0, len(body), size):
        yield body[start : start + size]


def _chunks(total: int, size: int = 64 * 1024) -> Iterator[bytes]:
    for _ in range(total // size + 1):
        yield b"x" * size


REFUSED = frozenset({400, 422})
ACCEPTED_OR_REFUSED = frozenset({200, 202, 422})


def hostile_bodies(
    valid: dict[str, Any], text_path: TextPath, max_body_bytes: int
) -> list[HostileCase]:
    """Cases for a POST whose `valid` body has a required string at `text_path`."""

    def at(raw: str) -> bytes:
        return _with(valid, text_path, raw)

    c = HostileCase
    deep = min(50_000, max_body_bytes // 4)  # far past any recursion limit, under the size one
    lying = {**JSON, "Content-Length": "99999999999"}
    negative = {**JSON, "Content-Length": "-1"}
    return [
        c("text over the length limit", at('"' + "x" * (MAX_TEXT_CHARS + 1) + '"'), REFUSED),
        c("body over the size limit", b"x" * (max_body_bytes + 1), frozenset({413})),
        c("chunked body over the limit", _chunks(max_body_bytes + 1), frozenset({413})),
        c("lying Content-Length", b"{}", frozenset({413}), lying),
        c("negative Content-Length", b"{}", frozenset({400}), negative, by_server=True),
        c("deeply nested body", b"[" * deep + b"]" * deep, REFUSED),
        c("deeply nested field", at("[" * deep + "]" * deep), REFUSED),
        c("non-UTF-8 bytes", at('"__X__"').replace(b"__X__", b"\xff\xfe\xc3("), REFUSED),
        c("not JSON", b"{not json", REFUSED),
        c("truncated JSON", json.dumps(valid).encode()[:-3], REFUSED),
        c("empty body", b"", REFUSED),
        c("JSON null", b"null", REFUSED),
        c("top-level array", json.dumps([valid]).encode(), REFUSED),
        c("NaN literal", at("NaN"), REFUSED),
        c("Infinity literal", at("-Infinity"), REFUSED),
        c("5000-digit integer", at("9" * 5000), REFUSED),
        c("1e999999 float", at("1e999999"), REFUSED),
        c("lone surrogate", at('"\\ud800 x"'), ACCEPTED_OR_REFUSED),
        c("NUL bytes", at('"a\\u0000b"'), ACCEPTED_OR_REFUSED),
        c("unknown field", _with(valid, ("extra",), "1"), REFUSED),
        c("duplicate keys", at(f'"a", "{text_path[-1]}": 5'), REFUSED),
        c("no Content-Type", json.dumps(valid).encode(), frozenset({415, 422}), {}),
    ]


def auth_cases(token: str) -> list[tuple[str, dict[str, str]]]:
    """Headers that must all get 401 from a service whose token is `token`."""
    return [
        ("no token", {}),
        ("wrong token", {"Authorization": "Bearer not-" + token}),
        ("token prefix", {"Authorization": f"Bearer {token[:-1]}"}),
        ("token plus suffix", {"Authorization": f"Bearer {token}x"}),
        ("bearer without token", {"Authorization": "Bearer"}),
        ("basic scheme", {"Authorization": f"Basic {token}"}),
        ("token without scheme", {"Authorization": token}),
        ("non-ASCII token", {"Authorization": "Bearer \xe9\xe9"}),
        ("huge token", {"Authorization": "Bearer " + "a" * 60_000}),
    ]
