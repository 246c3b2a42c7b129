"""A small client for the registry HTTP API v2: retries, token auth, and bounds.

A registry that is broken or hostile can cost a push some time, never unbounded time,
memory, or the user's secrets:

- time: each request connects within ``CONNECT_TIMEOUT`` and waits at most
  ``READ_TIMEOUT`` for any byte (``COMMIT_TIMEOUT`` for the answer to an uploaded blob,
  which the registry must store first); a request that uploads no blob gets
  ``REQUEST_LIMIT`` in all. The whole push has a ``Deadline`` (``--timeout``, else
  ``$AIBUILD_PUSH_TIMEOUT``, else ``PUSH_TIMEOUT``): every wait is cut to what is left
  of it, and once it has passed nothing is retried or started.
- memory: at most ``RESPONSE_LIMIT`` bytes of any answer are read.
- credentials: the ``Authorization`` header (a password or a token) goes only to the
  origin (scheme, host, port) that challenged for it, and never over plain HTTP to a
  host other than this machine. An upload ``Location`` or a redirect to another origin
  (blob storage behind a registry) gets the request without it. The password goes to
  a token service only over HTTPS (or on this machine).
"""

from __future__ import annotations

import base64
import http.client
import json
import math
import os
import re
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aibuild.errors import PublishError, one_line, shown
from aibuild.logs import Log, silent
from aibuild.oci.credentials import ENV_PASSWORD, ENV_USER, Credentials
from aibuild.oci.media import CHUNK
from aibuild.oci.reference import api_host, is_loopback

CONNECT_TIMEOUT = 10.0  # seconds to open a connection (and finish TLS)
READ_TIMEOUT = 30.0  # seconds without a byte, either way, before a request is given up
COMMIT_TIMEOUT = 300.0  # seconds for the answer to an uploaded blob (the registry stores it)
REQUEST_LIMIT = 60.0  # seconds in all for a request that uploads no blob
PUSH_TIMEOUT = 1800.0  # seconds for a whole push, unless --timeout or $AIBUILD_PUSH_TIMEOUT
PUSH_TIMEOUT_MAX = 7 * 86400.0
ENV_TIMEOUT = "AIBUILD_PUSH_TIMEOUT"
RESPONSE_LIMIT = 4 << 20  # bytes read of any answer (the distribution spec's manifest limit)
MAX_REDIRECTS = 5
_TOKEN_RE = re.compile(r"[\x21-\x7e]{1,65536}")


def seconds_text(value: float) -> str:
    """``12.5 s``: a duration as messages show it."""
    return f"{round(value, 1):g} s"


def _size(limit: int) -> str:
    return f"{limit >> 20} MiB" if limit >= 1 << 20 else f"{limit} bytes"


# ---------------------------------------------------------------------------
# Time bounds
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TimeBound:
    """How long one push may take in all, and where that figure came from."""

    seconds: float = PUSH_TIMEOUT
    source: str = "the default"


def push_time_bound(
    seconds: float | None = None, environ: Mapping[str, str] | None = None
) -> TimeBound:
    """The time bound of a push: ``seconds`` (``--timeout``), else ``$AIBUILD_PUSH_TIMEOUT``,
    else ``PUSH_TIMEOUT``. A value that is not a number of seconds in (0, 7 days] is an
    error naming where it came from."""
    if seconds is not None:
        return TimeBound(_check_bound(seconds, "--timeout", str(seconds)), "--timeout")
    env = os.environ if environ is None else environ
    raw = env.get(ENV_TIMEOUT, "").strip()
    if not raw:
        return TimeBound()
    try:
        value = float(raw) if len(raw) <= 32 else math.nan
    except ValueError:
        value = math.nan
    return TimeBound(_check_bound(value, ENV_TIMEOUT, raw), f"${ENV_TIMEOUT}")


def _check_bound(value: float, where: str, raw: str) -> float:
    if not (math.isfinite(value) and 0 < value <= PUSH_TIMEOUT_MAX):
        raise PublishError(
            one_line(
                f"{where}={shown(raw)} is not a push time bound: give a number of seconds "
                f"above 0 and at most {PUSH_TIMEOUT_MAX:g} (7 days)"
            )
        )
    return value


class Deadline:
    """The end of a push's time bound (a monotonic clock), started when it is made."""

    def __init__(
        self, bound: TimeBound | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.bound = bound or push_time_bound()
        self.clock = clock
        self.end = clock() + self.bound.seconds

    def left(self) -> float:
        return self.end - self.clock()

    def error(self, what: str, last: object = None) -> PublishError:
        """The error for a push that ran out of time, saying what the bound was."""
        origin = (
            f"the default; set another with --timeout or ${ENV_TIMEOUT}"
            if self.bound.source == TimeBound.source
            else f"from {self.bound.source}"
        )
        text = (
            f"{what} did not finish within {seconds_text(self.bound.seconds)}, "
            f"the time bound of a push ({origin})"
        )
        if last:
            text += f"; the last error: {last}"
        return PublishError(one_line(text))


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff: ``attempts`` tries, waiting initial, initial*factor, ... (capped)."""

    attempts: int = 8
    initial: float = 0.5
    factor: float = 2.0
    max_delay: float = 10.0

    def delays(self) -> Iterator[float]:
        delay = self.initial
        for _ in range(self.attempts - 1):
            yield min(delay, self.max_delay)
            delay *= self.factor


def retry_with_backoff(
    what: str,
    action: Callable[[], Any],
    *,
    retry: RetryPolicy,
    deadline: Deadline,
    log: Log,
    sleep: Callable[[float], None],
    transient: type[Exception] | tuple[type[Exception], ...],
) -> Any:
    """Run ``action``, retrying ``transient`` errors with backoff while the deadline allows;
    PublishError when the attempts or the time are spent."""
    delays = retry.delays()
    attempt = 1
    while True:
        try:
            return action()
        except transient as exc:
            last = exc
        delay = next(delays, None)
        if delay is not None and delay >= deadline.left():
            raise deadline.error(what, last)
        if delay is None:
            raise PublishError(
                one_line(f"{what} failed after {attempt} attempts, the last with: {last}")
            )
        log(one_line(f"{what}: {last}; retrying in {delay:.1f}s ({attempt}/{retry.attempts})"))
        sleep(delay)
        attempt += 1


# ---------------------------------------------------------------------------
# One HTTP exchange
# ---------------------------------------------------------------------------


class TransientError(Exception):
    """A failure worth retrying (the connection broke or stalled, the registry answered 5xx)."""


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    truncated: bool = False  # the answer was longer than RESPONSE_LIMIT; body holds the start

    def json(self) -> Any:
        return json.loads(self.body or b"null")

    def error_text(self) -> str:
        """The registry's own error messages (``{"errors": [...]}``), else the body; one line."""
        cut = f" (its answer was cut at {_size(RESPONSE_LIMIT)})" if self.truncated else ""
        try:
            errors = self.json().get("errors") or []
            parts = [f"{e.get('code', '')}: {e.get('message', '')}".strip(": ") for e in errors]
            if parts:
                return one_line("; ".join(parts))[:300] + cut
        except (ValueError, AttributeError, TypeError):
            pass
        text = self.body[:600].decode("utf-8", "replace").strip()
        return (one_line(text)[:300] or f"HTTP {self.status}") + cut


Body = bytes | Path | None


def origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a URL: where a credential may go."""
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    default = 443 if parts.scheme == "https" else 80
    return parts.scheme, (parts.hostname or "").lower(), port or default


def may_carry_secret(url: str) -> bool:
    """Whether a secret may travel to ``url``: over HTTPS, or plain HTTP on this machine."""
    scheme, host, _ = origin(url)
    return scheme == "https" or (scheme == "http" and is_loopback(host))


def _shown(url: str) -> str:
    """A URL as shown in messages: without its query (upload state, signatures)."""
    return shown(url.split("?", 1)[0], quote=False, limit=200)


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="x",service="y"`` -> ("bearer", {"realm": "x", "service": "y"})."""
    scheme, _, rest = header.strip().partition(" ")
    params: dict[str, str] = {}
    i = 0
    while i < len(rest):
        eq = rest.find("=", i)
        if eq < 0:
            break
        key = rest[i:eq].strip().strip(",").strip()
        i = eq + 1
        if i < len(rest) and rest[i] == '"':
            end = rest.find('"', i + 1)
            end = len(rest) if end < 0 else end
            value = rest[i + 1 : end]
            i = end + 1
        else:
            end = rest.find(",", i)
            end = len(rest) if end < 0 else end
            value = rest[i:end].strip()
            i = end
        params[key.lower()] = value
        while i < len(rest) and rest[i] in ", ":
            i += 1
    return scheme.lower(), params


class RegistryClient:
    """A small client for one repository of a registry (HTTP API v2).

    Scheme: HTTPS, except for loopback hosts (or ``insecure=True``), which get plain
    HTTP as Docker allows. Every request goes through ``request``: it retries
    transient failures per ``retry`` within ``deadline`` and raises ``PublishError``
    for the rest.
    """

    def __init__(
        self,
        registry: str,
        repository: str,
        credentials: Credentials | None = None,
        *,
        insecure: bool | None = None,
        retry: RetryPolicy | None = None,
        deadline: Deadline | None = None,
        log: Log = silent,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        host = api_host(registry)
        plain = is_loopback(host) if insecure is None else insecure
        self.registry = registry
        self.repository = repository
        self.base = f"{'http' if plain else 'https'}://{host}"
        self.credentials = credentials
        self.retry = retry or RetryPolicy()
        self.deadline = deadline or Deadline()
        self.log = log
        self.sleep = sleep
        self._auth: str | None = None  # the Authorization header value
        self._auth_origin: tuple[str, str, int] | None = None  # where it may go
        self._challenge: tuple[str, dict[str, str]] | None = None
        self._authenticated = False

    # -- low level -----------------------------------------------------------

    def _url(self, path_or_url: str) -> str:
        if path_or_url.startswith("/") and not path_or_url.startswith("//"):
            return self.base + path_or_url
        return urllib.parse.urljoin(self.base + "/", path_or_url)

    def _send_once(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: Body,
        on_bytes: Callable[[int], None] | None = None,
    ) -> Response:
        """One exchange, within the time bounds; a stall or timeout is a TransientError."""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise PublishError(f"{method} {_shown(url)}: not an http(s) URL")
        left = self.deadline.left()
        if left <= 0:
            raise TransientError(f"no time was left for {method} {_shown(url)}")
        blob = isinstance(body, Path)
        limit = left if blob else min(REQUEST_LIMIT, left)
        connect = min(CONNECT_TIMEOUT, left)
        conn = _connection(parts, connect)
        stalled = threading.Event()
        unfinished = f"{method} {_shown(url)}: no whole answer within {seconds_text(limit)}"

        def abort() -> None:  # the watchdog: past ``limit`` the socket is shut, whatever it does
            stalled.set()
            if conn.sock is not None:
                with suppress(OSError):
                    conn.sock.shutdown(socket.SHUT_RDWR)

        timer = threading.Timer(limit, abort)
        timer.daemon = True
        timer.start()
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        waiting = f"could not connect within {seconds_text(connect)}"
        try:
            conn.connect()
            assert conn.sock is not None
            idle = max(min(READ_TIMEOUT, self.deadline.left()), 0.001)
            waiting = f"stalled for {seconds_text(idle)}"
            conn.sock.settimeout(idle)
            _send_request(conn, method, target, headers, body, on_bytes)
            wait = min(COMMIT_TIMEOUT if blob else READ_TIMEOUT, max(self.deadline.left(), 0.001))
            waiting = f"no answer within {seconds_text(wait)}"
            conn.sock.settimeout(wait)
            resp = conn.getresponse()
            data = resp.read(RESPONSE_LIMIT + 1)
            headers_in = {k.lower(): v for k, v in resp.getheaders()}
        except (OSError, http.client.HTTPException) as exc:
            if stalled.is_set():
                raise TransientError(unfinished) from None
            if isinstance(exc, TimeoutError):
                raise TransientError(f"{method} {_shown(url)}: {waiting}") from None
            raise
        finally:
            timer.cancel()
            conn.close()
        if stalled.is_set():  # the watchdog cut the answer short
            raise TransientError(unfinished)
        truncated = len(data) > RESPONSE_LIMIT
        return Response(resp.status, headers_in, data[:RESPONSE_LIMIT], truncated)

    def _send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: Body,
        on_bytes: Callable[[int], None] | None = None,
    ) -> Response:
        """One request; connection-level failures become TransientError or PublishError."""
        host = one_line(urllib.parse.urlsplit(url).netloc)
        try:
            resp = self._send_once(method, url, headers, body, on_bytes)
        except socket.gaierror as exc:
            raise PublishError(
                f"unknown registry {host}: its name does not resolve ({exc.strerror or exc}). "
                "Check the image name's registry part."
            ) from None
        except ssl.SSLError as exc:
            raise PublishError(
                f"TLS to registry {host} failed: {exc}. A registry without TLS is only used "
                "on this machine's loopback addresses."
            ) from None
        except (OSError, http.client.HTTPException) as exc:
            text = one_line(str(exc))[:200]
            raise TransientError(f"{method} {_shown(url)}: {type(exc).__name__}: {text}") from None
        except ValueError as exc:  # http.client refusing a URL or header the registry gave
            raise PublishError(
                one_line(f"{method} {_shown(url)}: unusable URL or header ({exc})")[:400]
            ) from None
        if resp.status >= 500 or resp.status == 429:
            raise TransientError(f"{method} {_shown(url)}: HTTP {resp.status} {resp.error_text()}")
        return resp

    def _exchange(
        self,
        method: str,
        url: str,
        extra: Mapping[str, str],
        body: Body = None,
        on_bytes: Callable[[int], None] | None = None,
    ) -> Response:
        """``_send`` that follows redirects (307/308 for every method, 301-303 for GET and
        HEAD), with the Authorization header only where ``_headers`` allows it."""
        first = url
        for _ in range(MAX_REDIRECTS + 1):
            resp = self._send(method, url, self._headers(url, extra), body, on_bytes)
            location = resp.headers.get("location")
            redirect = resp.status in (307, 308) or (
                resp.status in (301, 302, 303) and method in ("GET", "HEAD")
            )
            if not (redirect and location):
                return resp
            url = urllib.parse.urljoin(url, location)
        raise PublishError(f"{method} {_shown(first)}: more than {MAX_REDIRECTS} redirects")

    def with_retries(self, what: str, action: Callable[[], Any]) -> Any:
        """Run ``action``, retrying TransientError with backoff within the deadline."""
        return retry_with_backoff(
            what,
            action,
            retry=self.retry,
            deadline=self.deadline,
            log=self.log,
            sleep=self.sleep,
            transient=TransientError,
        )

    # -- authentication --------------------------------------------------------

    def _auth_failed(self, resp: Response) -> PublishError:
        where = f"registry {self.registry} (repository {self.repository})"
        if self.credentials is None:
            return PublishError(
                f"{where} requires authentication ({resp.error_text()}). Log in with "
                "`docker login`, pass --username with --password-stdin, or set "
                f"{ENV_USER} and {ENV_PASSWORD}."
            )
        verb = "denied access for" if resp.status == 403 else "rejected the credentials of"
        return PublishError(
            one_line(
                f"{where} {verb} user {self.credentials.username!r} "
                f"(from {self.credentials.source}): {resp.error_text()}"
            )
        )

    def _basic(self) -> str:
        assert self.credentials is not None
        pair = f"{self.credentials.username}:{self.credentials.password}".encode()
        return "Basic " + base64.b64encode(pair).decode("ascii")

    def _fetch_token(self, params: Mapping[str, str]) -> str:
        realm = params.get("realm")
        if not realm:
            raise PublishError(f"registry {self.registry} sent a Bearer challenge without a realm")
        realm_url = self._url(realm)
        realm_shown = _shown(realm_url)
        if origin(realm_url)[0] not in ("http", "https"):
            raise PublishError(
                f"registry {self.registry} names a token service {realm_shown} that is not http(s)"
            )
        query = {"scope": f"repository:{self.repository}:pull,push"}
        if params.get("service"):
            query["service"] = params["service"]
        url = realm_url + ("&" if "?" in realm_url else "?") + urllib.parse.urlencode(query)
        headers = {"User-Agent": "aibuild"}
        if self.credentials:
            if not may_carry_secret(realm_url):
                raise PublishError(
                    f"registry {self.registry} sends the login to token service {realm_shown} over "
                    "plain HTTP on another machine; aibuild sends a password only over HTTPS "
                    "(or to this machine)"
                )
            headers["Authorization"] = self._basic()
        resp: Response = self.with_retries(
            f"authenticating to {self.registry}", lambda: self._send("GET", url, headers, None)
        )
        if resp.status in (401, 403):
            raise self._auth_failed(resp)
        if resp.status != 200:
            raise PublishError(
                f"token service {realm_shown} answered HTTP {resp.status}: {resp.error_text()}"
            )
        if resp.truncated:
            raise PublishError(
                f"token service {realm_shown} answered with more than {_size(RESPONSE_LIMIT)}; "
                f"aibuild reads at most {_size(RESPONSE_LIMIT)} of an answer"
            )
        try:
            data = resp.json()
        except ValueError:
            data = None
        token = (data.get("token") or data.get("access_token")) if isinstance(data, dict) else None
        if not isinstance(token, str) or not _TOKEN_RE.fullmatch(token):
            raise PublishError(f"token service {realm_shown} answered without a usable token")
        return f"Bearer {token}"

    def _answer(self, challenge: tuple[str, dict[str, str]], resp: Response) -> None:
        scheme, params = challenge
        if scheme == "basic":
            if self.credentials is None:
                raise self._auth_failed(resp)
            if not may_carry_secret(self.base):
                raise PublishError(
                    f"registry {self.registry} asks for a password over plain HTTP on another "
                    "machine; aibuild sends a password only over HTTPS (or to this machine)"
                )
            self._auth = self._basic()
        elif scheme == "bearer":
            self._auth = self._fetch_token(params)
        else:
            raise PublishError(
                one_line(f"registry {self.registry} asks for unsupported auth {scheme[:40]!r}")
            )
        self._auth_origin = origin(self.base)

    def authenticate(self) -> None:
        """Ping ``/v2/`` and answer its challenge; fails at once on bad credentials."""
        resp: Response = self.with_retries(
            f"reaching registry {self.registry}",
            lambda: self._send("GET", self._url("/v2/"), self._headers(self.base, {}), None),
        )
        self._authenticated = True
        if resp.status == 200:
            return
        if resp.status != 401:
            raise PublishError(
                f"{self.base}/v2/ answered HTTP {resp.status}; is {self.registry} a registry? "
                f"({resp.error_text()})"
            )
        header = resp.headers.get("www-authenticate", "")
        if not header:
            raise self._auth_failed(resp)
        self._challenge = parse_challenge(header)
        self._answer(self._challenge, resp)
        if self._challenge[0] == "basic":
            # Basic is checked by the ping itself; a token was checked by the token service.
            check: Response = self.with_retries(
                f"logging in to {self.registry}",
                lambda: self._send("GET", self._url("/v2/"), self._headers(self.base, {}), None),
            )
            if check.status in (401, 403):
                raise self._auth_failed(check)

    def _headers(self, url: str, extra: Mapping[str, str]) -> dict[str, str]:
        """Headers for a request to ``url``: the Authorization header only when ``url`` is on
        the origin that challenged for it, over HTTPS or on this machine."""
        headers = {"User-Agent": "aibuild", **extra}
        if self._auth and origin(url) == self._auth_origin and may_carry_secret(url):
            headers["Authorization"] = self._auth
        return headers

    def request(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: Body = None,
        ok: Iterable[int] = (200,),
        what: str = "",
        on_bytes: Callable[[int], None] | None = None,
    ) -> Response:
        """An authenticated request with retries; a status outside ``ok`` is a PublishError.

        404 is returned (not raised) when it is in ``ok``. A 401 with a Bearer token
        fetches a fresh token once (tokens expire during long pushes).
        """
        if not self._authenticated:
            self.authenticate()
        label = what or f"{method} {path}"
        accepted = set(ok)
        refreshed = False
        while True:
            resp: Response = self.with_retries(
                label,
                lambda: self._exchange(method, self._url(path), headers or {}, body, on_bytes),
            )
            if resp.status in accepted:
                return resp
            if resp.status == 401 and not refreshed and self._challenge is not None:
                refreshed = True
                challenge = resp.headers.get("www-authenticate")
                self._challenge = parse_challenge(challenge) if challenge else self._challenge
                self._answer(self._challenge, resp)
                continue
            if resp.status in (401, 403):
                raise self._auth_failed(resp)
            raise PublishError(
                f"{label}: registry answered HTTP {resp.status}: {resp.error_text()}"
            )

    # -- the push protocol -----------------------------------------------------

    def has_blob(self, digest: str) -> bool:
        resp = self.request(
            "HEAD",
            f"/v2/{self.repository}/blobs/{digest}",
            ok=(200, 404),
            what=f"checking blob {digest[:19]}",
        )
        return resp.status == 200

    def upload_blob(
        self, digest: str, body: Path | bytes, on_bytes: Callable[[int], None] | None = None
    ) -> None:
        """POST an upload session, then PUT the whole blob (monolithic); retried as a unit.

        A broken upload is restarted from a fresh session: its partial data is
        never referenced, and the registry garbage-collects it. The session's
        ``Location`` may be on another origin (blob storage): it gets no credentials.
        """
        what = f"uploading blob {digest[:19]}"

        def attempt() -> None:
            start = self.request(
                "POST", f"/v2/{self.repository}/blobs/uploads/", ok=(202,), what=what
            )
            location = start.headers.get("location")
            if not location:
                raise PublishError(f"{what}: the registry gave no upload location")
            url = self._url(location)
            url += ("&" if "?" in url else "?") + urllib.parse.urlencode({"digest": digest})
            resp = self._exchange(
                "PUT", url, {"Content-Type": "application/octet-stream"}, body, on_bytes
            )
            if resp.status == 201:
                return
            if resp.status in (401, 403) and origin(url) == origin(self.base):
                raise self._auth_failed(resp)
            raise PublishError(
                f"{what}: {_shown(url)} answered HTTP {resp.status}: {resp.error_text()}"
            )

        self.with_retries(what, attempt)

    def put_manifest(self, reference: str, manifest: bytes, media_type: str) -> str:
        """PUT the manifest under ``reference`` (a tag); returns the digest the registry reports."""
        resp = self.request(
            "PUT",
            f"/v2/{self.repository}/manifests/{reference}",
            headers={"Content-Type": media_type},
            body=manifest,
            ok=(201, 200),
            what=f"putting manifest {reference}",
        )
        return resp.headers.get("docker-content-digest", "")


def _connection(parts: urllib.parse.SplitResult, timeout: float) -> http.client.HTTPConnection:
    """An unopened connection to the URL's host, TLS for https."""
    if parts.scheme == "https":
        return http.client.HTTPSConnection(
            parts.hostname or "",
            parts.port,
            timeout=timeout,
            context=ssl.create_default_context(),
        )
    return http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)


def _send_request(
    conn: http.client.HTTPConnection,
    method: str,
    target: str,
    headers: Mapping[str, str],
    body: Body,
    on_bytes: Callable[[int], None] | None,
) -> None:
    """The request line, the headers (with Content-Length for a method that sends a body)
    and the body, a file sent in chunks with ``on_bytes`` told of each."""
    conn.putrequest(method, target, skip_accept_encoding=True)
    size = len(body) if isinstance(body, bytes) else body.stat().st_size if body else 0
    for key, value in headers.items():
        conn.putheader(key, value)
    if method in ("PUT", "POST", "PATCH"):
        conn.putheader("Content-Length", str(size))
    conn.endheaders()
    if isinstance(body, bytes):
        conn.send(body)
    elif isinstance(body, Path):
        with body.open("rb") as handle:
            while chunk := handle.read(CHUNK):
                conn.send(chunk)
                if on_bytes:
                    on_bytes(len(chunk))
