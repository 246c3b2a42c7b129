"""A small client for the registry HTTP API v2, with retries and token auth."""

from __future__ import annotations

import base64
import http.client
import json
import socket
import ssl
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aibuild.errors import PublishError
from aibuild.logs import Log, silent
from aibuild.oci.credentials import ENV_PASSWORD, ENV_USER, Credentials
from aibuild.oci.media import CHUNK
from aibuild.oci.reference import api_host, is_loopback


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


class TransientError(Exception):
    """A failure worth retrying (the connection broke, the registry answered 5xx)."""


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body or b"null")

    def error_text(self) -> str:
        """The registry's own error messages (``{"errors": [...]}``), else the body."""
        try:
            errors = self.json().get("errors") or []
            parts = [f"{e.get('code', '')}: {e.get('message', '')}".strip(": ") for e in errors]
            if parts:
                return "; ".join(parts)
        except (ValueError, AttributeError):
            pass
        return self.body.decode("utf-8", "replace").strip()[:300] or f"HTTP {self.status}"


Body = bytes | Path | None


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
    transient failures per ``retry`` and raises ``PublishError`` for the rest.
    """

    def __init__(
        self,
        registry: str,
        repository: str,
        credentials: Credentials | None = None,
        *,
        insecure: bool | None = None,
        retry: RetryPolicy | None = None,
        timeout: float = 120.0,
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
        self.timeout = timeout
        self.log = log
        self.sleep = sleep
        self._auth: str | None = None  # the Authorization header value
        self._challenge: tuple[str, dict[str, str]] | None = None
        self._authenticated = False

    # -- low level -----------------------------------------------------------

    def _url(self, path_or_url: str) -> str:
        if path_or_url.startswith(("http://", "https://")):
            return path_or_url
        if path_or_url.startswith("/"):
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
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        conn: http.client.HTTPConnection
        if parts.scheme == "https":
            conn = http.client.HTTPSConnection(
                host, parts.port, timeout=self.timeout, context=ssl.create_default_context()
            )
        else:
            conn = http.client.HTTPConnection(host, parts.port, timeout=self.timeout)
        target = parts.path or "/"
        if parts.query:
            target += f"?{parts.query}"
        try:
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
            resp = conn.getresponse()
            data = resp.read()
            return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
        finally:
            conn.close()

    def _send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: Body,
        on_bytes: Callable[[int], None] | None = None,
    ) -> Response:
        """One request; connection-level failures become TransientError or PublishError."""
        host = urllib.parse.urlsplit(url).netloc
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
            raise TransientError(f"{method} {url}: {type(exc).__name__}: {exc}") from None
        if resp.status >= 500 or resp.status == 429:
            raise TransientError(f"{method} {url}: HTTP {resp.status} {resp.error_text()}")
        return resp

    def with_retries(self, what: str, action: Callable[[], Any]) -> Any:
        """Run ``action``, retrying TransientError with backoff; PublishError when spent."""
        delays = self.retry.delays()
        attempt = 1
        while True:
            try:
                return action()
            except TransientError as exc:
                delay = next(delays, None)
                if delay is None:
                    raise PublishError(
                        f"{what} failed after {attempt} attempts, the last with: {exc}"
                    ) from None
                self.log(
                    f"{what}: {exc}; retrying in {delay:.1f}s ({attempt}/{self.retry.attempts})"
                )
                self.sleep(delay)
                attempt += 1

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
            f"{where} {verb} user {self.credentials.username!r} "
            f"(from {self.credentials.source}): {resp.error_text()}"
        )

    def _basic(self) -> str:
        assert self.credentials is not None
        pair = f"{self.credentials.username}:{self.credentials.password}".encode()
        return "Basic " + base64.b64encode(pair).decode("ascii")

    def _fetch_token(self, params: Mapping[str, str]) -> str:
        realm = params.get("realm")
        if not realm:
            raise PublishError(f"registry {self.registry} sent a Bearer challenge without a realm")
        query = {"scope": f"repository:{self.repository}:pull,push"}
        if params.get("service"):
            query["service"] = params["service"]
        url = realm + ("&" if "?" in realm else "?") + urllib.parse.urlencode(query)
        headers = {"Authorization": self._basic()} if self.credentials else {}
        resp: Response = self.with_retries(
            f"authenticating to {self.registry}", lambda: self._send("GET", url, headers, None)
        )
        if resp.status in (401, 403):
            raise self._auth_failed(resp)
        if resp.status != 200:
            raise PublishError(
                f"token service {realm} answered HTTP {resp.status}: {resp.error_text()}"
            )
        data = resp.json() or {}
        token = data.get("token") or data.get("access_token")
        if not token:
            raise PublishError(f"token service {realm} answered without a token")
        return f"Bearer {token}"

    def _answer(self, challenge: tuple[str, dict[str, str]], resp: Response) -> None:
        scheme, params = challenge
        if scheme == "basic":
            if self.credentials is None:
                raise self._auth_failed(resp)
            self._auth = self._basic()
        elif scheme == "bearer":
            self._auth = self._fetch_token(params)
        else:
            raise PublishError(f"registry {self.registry} asks for unsupported auth {scheme!r}")

    def authenticate(self) -> None:
        """Ping ``/v2/`` and answer its challenge; fails at once on bad credentials."""
        resp: Response = self.with_retries(
            f"reaching registry {self.registry}",
            lambda: self._send("GET", self._url("/v2/"), {}, None),
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
                lambda: self._send("GET", self._url("/v2/"), self._headers({}), None),
            )
            if check.status in (401, 403):
                raise self._auth_failed(check)

    def _headers(self, extra: Mapping[str, str]) -> dict[str, str]:
        headers = {"User-Agent": "aibuild", **extra}
        if self._auth:
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
                lambda: self._send(
                    method, self._url(path), self._headers(headers or {}), body, on_bytes
                ),
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
        never referenced, and the registry garbage-collects it.
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
            resp = self._send(
                "PUT",
                url,
                self._headers({"Content-Type": "application/octet-stream"}),
                body,
                on_bytes,
            )
            if resp.status in (401, 403):
                raise self._auth_failed(resp)
            if resp.status != 201:
                raise PublishError(
                    f"{what}: registry answered HTTP {resp.status}: {resp.error_text()}"
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
