"""A registry on this machine that misbehaves on purpose (stdlib http.server in a thread).

It speaks enough of the registry HTTP API v2 for a real push (ping, blob HEAD, upload
POST + PUT with the digest checked, manifest PUT) and records every request it gets
(which server, method, path, Authorization header). A test sets ``HostileRegistry.mode``
to make it misbehave:

- ``auth``: None, "basic" (user/password), or "bearer" (a token service at ``realm``,
  by default its own ``/token``);
- ``upload_to``: a base URL (another server, e.g. a ``StorageServer``) named in the
  upload ``Location``, as blob storage behind a registry does; ``redirect_put_to``: the
  same, by a 307 answer to the upload PUT;
- ``huge``: {path prefix: (status, bytes)}: answer with a body of that many bytes
  (streamed, never held in memory here);
- ``silent``: path prefixes answered by silence (the connection is accepted, the request
  read, and nothing is ever sent back until the server stops);
- ``trickle``: path prefixes answered one header byte every ``trickle_every`` seconds;
- ``fail``: {path prefix: n}: the first n such requests get HTTP 503.

Loaded by the tests with runpy (tests are not a package).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import http.server
import json
import socket
import struct
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from typing import Any

CHUNK = 1 << 16


@dataclass
class Seen:
    server: str  # "registry" or "storage"
    method: str
    path: str
    authorization: str | None


@dataclass
class Mode:
    auth: str | None = None
    username: str = "hostile-user"
    password: str = "s3cret-Passw0rd-never-shown"
    token: str = "t0ken-never-shown"
    realm: str | None = None
    upload_to: str | None = None
    redirect_put_to: str | None = None
    huge: dict[str, tuple[int, int]] = field(default_factory=dict)
    silent: tuple[str, ...] = ()
    trickle: tuple[str, ...] = ()
    trickle_every: float = 0.5
    fail: dict[str, int] = field(default_factory=dict)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    owner: Any  # HostileRegistry or StorageServer

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _body(self) -> bytes:
        """The request body (read once; at most 1 MiB kept), its sha256 in ``digest``."""
        if hasattr(self, "body"):
            return bytes(self.body)
        length = int(self.headers.get("Content-Length") or 0)
        sha = hashlib.sha256()
        data = bytearray()
        while length > 0:
            chunk = self.rfile.read(min(CHUNK, length))
            if not chunk:
                break
            sha.update(chunk)
            if len(data) < 1 << 20:
                data += chunk
            length -= len(chunk)
        self.digest = "sha256:" + sha.hexdigest()
        self.body = bytes(data)
        return self.body

    def send(self, status: int, headers: dict[str, str] | None = None, body: bytes = b"") -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _answer(self) -> None:
        self.owner.record(self)
        with contextlib.suppress(OSError):
            self.owner.answer(self)

    do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _answer


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False


class _Base:
    """A threaded HTTP server on ``address`` (port 0: a free one) that records requests."""

    name = "server"

    def __init__(self, address: str = "127.0.0.1", seen: list[Seen] | None = None) -> None:
        handler = type("Handler", (_Handler,), {"owner": self})
        self.server = _Server((address, 0), handler)
        self.host = f"{address}:{self.server.server_address[1]}"
        self.seen = [] if seen is None else seen
        self.stopping = threading.Event()
        self.blobs: set[str] = set()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def record(self, handler: _Handler) -> None:
        with self.lock:
            self.seen.append(
                Seen(self.name, handler.command, handler.path, handler.headers.get("Authorization"))
            )

    def answer(self, handler: _Handler) -> None:  # pragma: no cover - overridden
        handler.send(404)

    def put_blob(self, handler: _Handler) -> None:
        """An upload PUT: the body's sha256 must be the ``digest`` in the query."""
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(handler.path).query)
        handler._body()
        want = (query.get("digest") or [""])[0]
        if want != handler.digest:
            handler.send(400, body=b'{"errors":[{"code":"DIGEST_INVALID"}]}')
            return
        self.blobs.add(want)
        handler.send(201, {"Docker-Content-Digest": want})

    def stop(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


class StorageServer(_Base):
    """Blob storage on another origin: takes upload PUTs into its owner's blob set."""

    name = "storage"

    def __init__(self, registry: HostileRegistry, address: str = "127.0.0.1") -> None:
        super().__init__(address, registry.seen)
        self.blobs = registry.blobs

    def answer(self, handler: _Handler) -> None:
        if handler.command == "PUT" and handler.path.startswith("/upload/"):
            self.put_blob(handler)
            return
        handler.send(404)


class HostileRegistry(_Base):
    """The fake registry; ``mode`` says how it misbehaves (see the module docstring)."""

    name = "registry"

    def __init__(self, address: str = "127.0.0.1") -> None:
        super().__init__(address)
        self.mode = Mode()
        self.manifests: dict[str, bytes] = {}
        self.failed: dict[str, int] = {}

    # -- what the test reads back ------------------------------------------------

    def authorized(self, server: str | None = None) -> list[Seen]:
        """Requests that carried an Authorization header (to ``server`` when given)."""
        return [s for s in self.seen if s.authorization and server in (None, s.server)]

    def requests_to(self, server: str) -> list[Seen]:
        return [s for s in self.seen if s.server == server]

    # -- answering ---------------------------------------------------------------

    def _match(self, prefixes: Any, path: str) -> str | None:
        """The first of ``prefixes`` that ``path`` starts with ("/v2/" only matches itself);
        for ``fail``, the first that has failures left."""
        for prefix in prefixes:
            hit = path == prefix if prefix == "/v2/" else path.startswith(prefix)
            if hit and (prefixes is not self.mode.fail or self._fails_left(prefix)):
                return str(prefix)
        return None

    def _fails_left(self, prefix: str) -> bool:
        return self.failed.get(prefix, 0) < self.mode.fail[prefix]

    def _authorized(self, handler: _Handler) -> bool:
        mode = self.mode
        given = handler.headers.get("Authorization") or ""
        if mode.auth == "basic":
            pair = base64.b64encode(f"{mode.username}:{mode.password}".encode()).decode()
            return given == f"Basic {pair}"
        if mode.auth == "bearer":
            return given == f"Bearer {mode.token}"
        return True

    def _challenge(self) -> dict[str, str]:
        if self.mode.auth == "basic":
            return {"WWW-Authenticate": 'Basic realm="hostile"'}
        realm = self.mode.realm or f"{self.url}/token"
        return {"WWW-Authenticate": f'Bearer realm="{realm}",service="hostile"'}

    def answer(self, handler: _Handler) -> None:
        mode, path, method = self.mode, handler.path, handler.command
        if self._match(mode.silent, path):  # the request is not even read to its end
            self.stopping.wait()
            handler.close_connection = True
            return
        if method in ("PUT", "POST", "PATCH"):
            handler._body()
        if self._match(mode.trickle, path):
            self._trickle(handler)
            return
        prefix = self._match(mode.fail, path)
        if prefix:
            self.failed[prefix] = self.failed.get(prefix, 0) + 1
            handler.send(503, body=b'{"errors":[{"code":"UNAVAILABLE","message":"try later"}]}')
            return
        prefix = self._match(mode.huge, path)
        if prefix:
            self._huge(handler, *mode.huge[prefix])
            return
        if path.startswith("/token"):
            self._token(handler)
            return
        if path.startswith("/upload/"):
            if mode.redirect_put_to and method == "PUT":
                handler.send(307, {"Location": mode.redirect_put_to + path})
                return
            self.put_blob(handler)
            return
        if not self._authorized(handler):
            handler.send(401, self._challenge(), b'{"errors":[{"code":"UNAUTHORIZED"}]}')
            return
        self._api(handler)

    def _api(self, handler: _Handler) -> None:
        path, method = urllib.parse.urlsplit(handler.path).path, handler.command
        if path == "/v2/":
            handler.send(200, {"Content-Type": "application/json"}, b"{}")
        elif "/blobs/uploads/" in path and method == "POST":
            base = self.mode.upload_to or ""
            handler.send(202, {"Location": f"{base}/upload/{uuid.uuid4().hex}?state=s"})
        elif "/blobs/" in path and method == "HEAD":
            digest = path.rsplit("/", 1)[1]
            handler.send(200 if digest in self.blobs else 404)
        elif "/manifests/" in path and method == "PUT":
            body = handler._body()
            self.manifests[path.rsplit("/", 1)[1]] = body
            digest = "sha256:" + hashlib.sha256(body).hexdigest()
            handler.send(201, {"Docker-Content-Digest": digest})
        else:
            handler.send(404, body=b'{"errors":[{"code":"NOT_FOUND"}]}')

    def _token(self, handler: _Handler) -> None:
        mode = self.mode
        pair = base64.b64encode(f"{mode.username}:{mode.password}".encode()).decode()
        if handler.headers.get("Authorization") != f"Basic {pair}":
            handler.send(401, body=b'{"errors":[{"code":"UNAUTHORIZED"}]}')
            return
        handler.send(
            200, {"Content-Type": "application/json"}, json.dumps({"token": mode.token}).encode()
        )

    def _huge(self, handler: _Handler, status: int, size: int) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(size))
        handler.end_headers()
        block = b'{"errors":[' + b" " * (CHUNK - 12)
        sent = 0
        while sent < size and not self.stopping.is_set():
            piece = block[: min(len(block), size - sent)]
            handler.wfile.write(piece)
            sent += len(piece)

    def _trickle(self, handler: _Handler) -> None:
        for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"y" * 10_000:
            if self.stopping.wait(self.mode.trickle_every):
                return
            handler.wfile.write(bytes([byte]))
            handler.wfile.flush()


def non_loopback_address() -> str:
    """An IPv4 address of this machine that is not a loopback one (Linux)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        for _, name in socket.if_nameindex():
            with contextlib.suppress(OSError):
                packed = fcntl.ioctl(
                    probe.fileno(), 0x8915, struct.pack("256s", name.encode()[:15])
                )  # SIOCGIFADDR
                address = socket.inet_ntoa(packed[20:24])
                if not address.startswith("127."):
                    return address
    raise RuntimeError("this machine has no IPv4 address outside loopback")


def wait_until(predicate: Any, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())
