"""Publish: an image -> a registry digest.

Two ways to push, one result (``name@sha256:DIGEST``):

- ``engine_push``: the Docker engine pushes (``docker push``). Fast, uses the
  engine's layer cache, but the engine compresses the layers itself and may reuse
  compressed digests from its history, so the registry digest depends on the
  engine and its past.
- ``direct_push``: aibuild pushes through the registry HTTP API v2 itself. The
  image is exported (``docker save``), each layer is gzipped deterministically
  (mtime 0, no file name, level ``GZIP_LEVEL``) into a blob cache keyed by the
  layer's diff ID, and the blobs, then the config, then the manifest last are
  uploaded. The same image ID gives the same manifest digest on any machine with
  the same zlib: this is how reproducible images are published.

Credentials come from, in order: ``--username`` + ``--password-stdin``; the
environment (``AIBUILD_REGISTRY_USER``/``AIBUILD_REGISTRY_PASSWORD``); the
Docker config file (``credHelpers``, ``credsStore``, then ``auths``). They are
never logged, written to a record, or baked into an image.

Transient failures (connection refused/reset, timeouts, HTTP 5xx and 429) are
retried with exponential backoff; an authentication failure, an unknown host or
another 4xx fails at once with a message saying what to do.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import http.client
import io
import json
import os
import shutil
import socket
import ssl
import subprocess
import tarfile
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from aibuild.errors import PublishError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import docker

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
DOCKER_HUB_AUTH_KEY = "https://index.docker.io/v1/"

MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG_V1 = "application/vnd.docker.container.image.v1+json"
LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
MANIFEST_ACCEPT = ", ".join(
    [
        MANIFEST_V2,
        OCI_MANIFEST,
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.index.v1+json",
    ]
)

# Fixed gzip settings: the compressed bytes (and so the registry digest) depend
# only on the layer's bytes and zlib's algorithm for this level.
GZIP_LEVEL = 6
CHUNK = 1 << 20

ENV_USER = "AIBUILD_REGISTRY_USER"
ENV_PASSWORD = "AIBUILD_REGISTRY_PASSWORD"
ENV_CACHE = "AIBUILD_CACHE_DIR"

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


# ---------------------------------------------------------------------------
# References
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    """An image reference split the way Docker splits it.

    ``registry`` is the host[:port] as written (``docker.io`` for Docker Hub),
    ``repository`` the path inside it (``library/`` added for official Hub images).
    """

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """``registry/repository`` as a user writes it."""
        if self.registry == DOCKER_HUB:
            return self.repository.removeprefix("library/")
        return f"{self.registry}/{self.repository}"

    @property
    def api_host(self) -> str:
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    def with_tag(self, tag: str) -> Reference:
        return Reference(self.registry, self.repository, tag, None)

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def parse_reference(ref: str) -> Reference:
    """``[registry/]repo[:tag][@digest]`` -> ``Reference`` (tag defaults to ``latest``).

    The first component is a registry when it contains ``.`` or ``:`` or is
    ``localhost``, as Docker decides.
    """
    text = ref.strip()
    if not text or any(c.isspace() for c in text):
        raise PublishError(f"not an image reference: {ref!r}")
    name, _, digest = text.partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")
    tag: str | None = None
    if colon > slash:
        name, tag = name[:colon], name[colon + 1 :]
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        registry, repository = first, rest
    else:
        registry, repository = DOCKER_HUB, name
        if "/" not in repository:
            repository = f"library/{repository}"
    if registry in ("index.docker.io", "registry-1.docker.io"):
        registry = DOCKER_HUB
    if not repository or repository != repository.lower() or "//" in repository:
        raise PublishError(
            f"not an image reference: {ref!r} (repository names are lower case: {repository!r})"
        )
    if not tag and not digest:
        tag = "latest"
    return Reference(registry, repository, tag, digest or None)


def is_loopback(host: str) -> bool:
    """Whether ``host[:port]`` is this machine (where Docker, too, allows plain HTTP)."""
    hostname = urllib.parse.urlsplit(f"//{host}").hostname or host
    return hostname == "localhost" or hostname.startswith("127.") or hostname == "::1"


# ---------------------------------------------------------------------------
# Credentials
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    """A user name and secret for one registry; ``source`` says where they came from."""

    username: str
    password: str = field(repr=False)
    source: str = ""


def docker_config_path(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    base = env.get("DOCKER_CONFIG") or str(Path.home() / ".docker")
    return Path(base) / "config.json"


def _config_keys(registry: str) -> list[str]:
    """The keys a Docker config may file ``registry`` under."""
    if registry == DOCKER_HUB:
        return [DOCKER_HUB_AUTH_KEY, "docker.io", "index.docker.io", DOCKER_HUB_API]
    return [registry, f"https://{registry}", f"http://{registry}", f"https://{registry}/v1/"]


def credential_helper(helper: str, server: str) -> Credentials | None:
    """Ask ``docker-credential-<helper> get`` for ``server``; None when it has none."""
    program = f"docker-credential-{helper}"
    if shutil.which(program) is None:
        raise PublishError(
            f"the Docker config names the credential helper {helper!r} but {program} is not on PATH"
        )
    try:
        proc = subprocess.run(
            [program, "get"], input=server, capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PublishError(f"credential helper {program} failed: {exc}") from None
    if proc.returncode != 0:
        # "credentials not found in native keychain" and friends: nothing stored.
        return None
    try:
        data = json.loads(proc.stdout)
        return Credentials(
            str(data["Username"]), str(data["Secret"]), f"credential helper {helper}"
        )
    except (ValueError, KeyError, TypeError):
        raise PublishError(
            f"credential helper {program} printed something that is not JSON"
        ) from None


def resolve_credentials(
    registry: str,
    *,
    username: str | None = None,
    password: str | None = None,
    environ: Mapping[str, str] | None = None,
    config_path: Path | None = None,
) -> Credentials | None:
    """The credentials to use for ``registry`` (host[:port]), or None for anonymous.

    Order: explicit ``username``/``password`` (the CLI's ``--password-stdin``), the
    environment, the Docker config's helpers, then its ``auths`` entries.
    """
    env = os.environ if environ is None else environ
    if username is not None or password is not None:
        if not username or password is None:
            raise PublishError("--username needs a password on stdin (--password-stdin), and back")
        return Credentials(username, password, "--username/--password-stdin")
    if env.get(ENV_USER) and env.get(ENV_PASSWORD) is not None:
        return Credentials(env[ENV_USER], env[ENV_PASSWORD], f"{ENV_USER}/{ENV_PASSWORD}")
    path = config_path or docker_config_path(env)
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PublishError(f"cannot read the Docker config {path}: {exc}") from None
    if not isinstance(config, dict):
        return None
    keys = _config_keys(registry)
    helpers = config.get("credHelpers") or {}
    for key in keys:
        if isinstance(helpers, dict) and helpers.get(key):
            return credential_helper(str(helpers[key]), key)
    auths = config.get("auths") or {}
    entry_key = next((k for k in keys if isinstance(auths, dict) and k in auths), None)
    if config.get("credsStore"):
        found = credential_helper(str(config["credsStore"]), entry_key or keys[0])
        if found is not None:
            return found
    if entry_key is None:
        return None
    entry = auths[entry_key] or {}
    if entry.get("auth"):
        try:
            user, _, secret = base64.b64decode(entry["auth"]).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            raise PublishError(f"the auth entry for {entry_key} in {path} is not base64") from None
        return Credentials(user, secret, f"Docker config {path}")
    if entry.get("username") and entry.get("password"):
        return Credentials(entry["username"], entry["password"], f"Docker config {path}")
    return None


# ---------------------------------------------------------------------------
# HTTP with retries
# ---------------------------------------------------------------------------


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
        log: Progress = _quiet,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        host = DOCKER_HUB_API if registry == DOCKER_HUB else registry
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

    def get_manifest(self, reference: str) -> Response:
        """GET a manifest (tag or digest); 404 is returned, not raised."""
        return self.request(
            "GET",
            f"/v2/{self.repository}/manifests/{reference}",
            headers={"Accept": MANIFEST_ACCEPT},
            ok=(200, 404),
            what=f"reading manifest {reference}",
        )


# ---------------------------------------------------------------------------
# Exported images and the blob cache
# ---------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


class HashingWriter(io.RawIOBase):
    """A write-only file that hashes what passes through to ``out`` (tarfile and gzip
    need ``write`` and ``tell``)."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self.sha = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self.sha.update(view)
        self.out.write(view)
        self.size += len(view)
        return len(view)

    def tell(self) -> int:
        return self.size

    @property
    def digest(self) -> str:
        return "sha256:" + self.sha.hexdigest()


def gzip_deterministic(src: Path, dst: Path, level: int = GZIP_LEVEL) -> str:
    """gzip ``src`` into ``dst`` with a fixed header (mtime 0, no name); its sha256 digest."""
    with src.open("rb") as raw, dst.open("wb") as out:
        tee = HashingWriter(out)
        with gzip.GzipFile(filename="", mode="wb", fileobj=tee, compresslevel=level, mtime=0) as gz:
            while chunk := raw.read(CHUNK):
                gz.write(chunk)
    return tee.digest


@dataclass(frozen=True)
class Blob:
    """A registry blob on disk: its digest, size and media type."""

    digest: str
    size: int
    media_type: str
    path: Path


class BlobCache:
    """Compressed layers and configs on disk, keyed by digest; diff ID -> gzip digest index.

    Location: ``$AIBUILD_CACHE_DIR``, else ``$XDG_CACHE_HOME/aibuild``, else
    ``~/.cache/aibuild``. Deterministic compression makes entries valid forever;
    delete the directory to reclaim the space.
    """

    def __init__(self, root: Path | None = None) -> None:
        if root is None:
            env = os.environ.get(ENV_CACHE)
            xdg = os.environ.get("XDG_CACHE_HOME")
            root = Path(env) if env else Path(xdg or Path.home() / ".cache") / "aibuild"
        self.root = Path(root)
        self.blobs = self.root / "blobs" / "sha256"
        self.index = self.root / f"gzip{GZIP_LEVEL}"

    def path(self, digest: str) -> Path:
        return self.blobs / digest.removeprefix("sha256:")

    def layer(self, diff_id: str) -> Blob | None:
        """The compressed blob for an uncompressed layer, when cached."""
        entry = self.index / diff_id.removeprefix("sha256:")
        if not entry.is_file():
            return None
        digest = entry.read_text(encoding="ascii").strip()
        path = self.path(digest)
        if not path.is_file():
            return None
        return Blob(digest, path.stat().st_size, LAYER_GZIP, path)

    def config(self, image_id: str) -> Blob | None:
        path = self.path(image_id)
        return Blob(image_id, path.stat().st_size, CONFIG_V1, path) if path.is_file() else None

    def add_config(self, data: bytes) -> Blob:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        path = self.path(digest)
        if not path.is_file():
            self.blobs.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
        return Blob(digest, len(data), CONFIG_V1, path)

    def add_layers(self, layers: Mapping[str, Path]) -> None:
        """``add_layer`` for each (diff ID, tar), in parallel (zlib releases the GIL)."""
        with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
            list(pool.map(lambda item: self.add_layer(*item), layers.items()))

    def add_layer(self, diff_id: str, layer_tar: Path) -> Blob:
        """Compress an uncompressed layer tar into the cache (no-op when already there)."""
        found = self.layer(diff_id)
        if found is not None:
            return found
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.index.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=self.blobs, prefix=".gz-", delete=False) as tmp:
            tmp_path = Path(tmp.name)
        try:
            digest = gzip_deterministic(layer_tar, tmp_path)
            tmp_path.replace(self.path(digest))
        finally:
            tmp_path.unlink(missing_ok=True)
        entry_tmp = self.index / f".{diff_id.removeprefix('sha256:')}.tmp"
        entry_tmp.write_text(digest, encoding="ascii")
        entry_tmp.replace(self.index / diff_id.removeprefix("sha256:"))
        path = self.path(digest)
        return Blob(digest, path.stat().st_size, LAYER_GZIP, path)


class ChunkReader(io.RawIOBase):
    """A read-only file over an iterator of byte chunks (docker-py's ``save()`` stream)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        while not self._buffer:
            try:
                self._buffer = next(self._chunks)
            except StopIteration:
                return 0
        n = min(len(target), len(self._buffer))
        target[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n


@dataclass
class SavedImage:
    """An image exported with ``docker save`` into a directory.

    ``layers`` are the uncompressed layer tars in order, ``diff_ids`` their sha256.
    """

    config: bytes
    layers: list[Path]
    diff_ids: list[str]
    workdir: Path

    @property
    def image_id(self) -> str:
        return "sha256:" + hashlib.sha256(self.config).hexdigest()


def save_image(
    client: docker.DockerClient,
    image: str,
    workdir: Path,
    *,
    keep: Callable[[str], bool] | None = None,
) -> SavedImage:
    """``docker save`` ``image`` into ``workdir``: its config bytes and its layer tars.

    Reads the legacy and the OCI layout of ``docker save`` alike (the manifest names
    the config and layer files, OCI layouts by symlink). ``keep(diff_id)`` false
    deletes a layer file as soon as it is hashed (its path is then absent).
    """
    from aibuild.engine import engine_errors

    workdir.mkdir(parents=True, exist_ok=True)
    files: dict[str, tuple[Path, str]] = {}
    links: dict[str, str] = {}
    manifest: list[dict[str, Any]] = []
    with engine_errors(f"exporting {image}"):
        stream = client.images.get(image).save(named=False)
        reader = io.BufferedReader(ChunkReader(stream), buffer_size=CHUNK)
        with tarfile.open(fileobj=reader, mode="r|") as tar:
            for n, member in enumerate(tar):
                if member.issym():
                    target = os.path.normpath(
                        os.path.join(os.path.dirname(member.name), member.linkname)
                    )
                    links[member.name] = target
                    continue
                if not member.isfile():
                    continue
                source = tar.extractfile(member)
                assert source is not None
                if member.name == "manifest.json":
                    manifest = json.loads(source.read())
                    continue
                path = workdir / f"entry-{n}"
                digest = hashlib.sha256()
                with path.open("wb") as out:
                    while chunk := source.read(CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
                diff_id = "sha256:" + digest.hexdigest()
                if keep is not None and member.size > 1024 and not keep(diff_id):
                    path.unlink()
                files[member.name] = (path, diff_id)
    if not manifest:
        raise PublishError(f"docker save of {image} gave no manifest.json")

    def resolve(name: str) -> tuple[Path, str]:
        for _ in range(8):
            if name in files:
                return files[name]
            name = links.get(name, name)
        raise PublishError(f"docker save of {image}: {name} is missing from the archive")

    entry = manifest[0]
    config_path, _ = resolve(entry["Config"])
    layers = [resolve(name) for name in entry["Layers"]]
    return SavedImage(
        config=config_path.read_bytes(),
        layers=[p for p, _ in layers],
        diff_ids=[d for _, d in layers],
        workdir=workdir,
    )


def image_blobs(
    client: docker.DockerClient,
    image: str,
    cache: BlobCache | None = None,
    log: Progress = _quiet,
) -> tuple[Blob, list[Blob]]:
    """The config blob and deterministic gzip layer blobs of a local image.

    Exports the image only when the cache lacks one of them; compresses the
    missing layers in parallel (zlib releases the GIL).
    """
    from aibuild.engine import engine_errors

    cache = cache or BlobCache()
    with engine_errors(f"inspecting {image}"):
        attrs = client.images.get(image).attrs
    image_id: str = attrs["Id"]
    diff_ids: list[str] = list(attrs["RootFS"]["Layers"])
    config = cache.config(image_id)
    layers = [cache.layer(d) for d in diff_ids]
    if config is not None and all(layers):
        return config, [b for b in layers if b is not None]
    missing = {d for d, b in zip(diff_ids, layers, strict=True) if b is None}
    log(f"exporting {image} ({len(missing)} layer(s) to compress)")
    from aibuild.reproducible import disk_errors

    with (
        disk_errors(f"exporting {image} for the push"),
        tempfile.TemporaryDirectory(prefix="aibuild-save-", dir=_tmp_root(cache)) as tmp,
    ):
        wanted = {*missing, image_id}
        saved = save_image(client, image_id, Path(tmp), keep=lambda d: d in wanted)
        if saved.image_id != image_id:
            raise PublishError(f"docker save of {image} gave config {saved.image_id}")
        config = cache.add_config(saved.config)
        todo = {d: p for d, p in zip(saved.diff_ids, saved.layers, strict=True) if d in missing}
        started = time.monotonic()
        cache.add_layers(todo)
        log(f"compressed {len(todo)} layer(s) in {time.monotonic() - started:.1f}s")
    blobs = [cache.layer(d) for d in diff_ids]
    assert all(blobs)
    return config, [b for b in blobs if b is not None]


def _tmp_root(cache: BlobCache) -> str:
    cache.root.mkdir(parents=True, exist_ok=True)
    return str(cache.root)


def manifest_bytes(config: Blob, layers: Iterable[Blob]) -> bytes:
    """The Docker image manifest v2 (schema 2), in canonical JSON (fixed key order)."""
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_V2,
        "config": {"mediaType": config.media_type, "size": config.size, "digest": config.digest},
        "layers": [{"mediaType": b.media_type, "size": b.size, "digest": b.digest} for b in layers],
    }
    return json.dumps(manifest, separators=(",", ":")).encode("utf-8")


# ---------------------------------------------------------------------------
# Pushing
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PushResult:
    """A pushed image: ``reference`` carries the tag, ``digest`` the manifest digest."""

    reference: Reference
    digest: str
    method: str  # "direct" | "engine"
    layers_pushed: int = 0
    layers_existing: int = 0
    seconds: float = 0.0

    @property
    def pinned(self) -> str:
        """``name@sha256:...``: what to pull to get exactly this image."""
        return f"{self.reference.name}@{self.digest}"


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} GB"  # pragma: no cover


def direct_push(
    client: docker.DockerClient,
    image: str,
    target: str,
    *,
    credentials: Credentials | None = None,
    retry: RetryPolicy | None = None,
    insecure: bool | None = None,
    cache: BlobCache | None = None,
    log: Progress = _quiet,
) -> PushResult:
    """Push local ``image`` to ``target`` through the registry API; manifest last.

    Layers the registry already has (HEAD) are skipped. If anything fails before
    the manifest PUT, the tag is untouched: the registry holds only unreferenced blobs.
    """
    started = time.monotonic()
    ref = parse_reference(target)
    if not ref.tag:
        raise PublishError(f"push target {target} needs a tag, not only a digest")
    registry = RegistryClient(
        ref.registry, ref.repository, credentials, insecure=insecure, retry=retry, log=log
    )
    registry.authenticate()  # first: a wrong password or host fails before any export
    config, layers = image_blobs(client, image, cache, log)
    pushed = existing = 0
    for index, blob in enumerate([*layers, config], start=1):
        label = "config" if blob is config else f"layer {index}/{len(layers)}"
        short = blob.digest.removeprefix("sha256:")[:12]
        if registry.has_blob(blob.digest):
            existing += 1
            log(f"{short}: {label} already exists ({_size(blob.size)})")
            continue
        sent = [0, time.monotonic()]

        def on_bytes(n: int, sent: list[Any] = sent, blob: Blob = blob, short: str = short) -> None:
            sent[0] += n
            now = time.monotonic()
            if now - sent[1] > 2.0:
                sent[1] = now
                log(f"{short}: pushing {_size(sent[0])}/{_size(blob.size)}")

        log(f"{short}: pushing {label} ({_size(blob.size)})")
        registry.upload_blob(blob.digest, blob.path, on_bytes)
        pushed += 1
        log(f"{short}: pushed")
    manifest = manifest_bytes(config, layers)
    digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    reported = registry.put_manifest(ref.tag, manifest, MANIFEST_V2)
    if reported and reported != digest:
        raise PublishError(
            f"registry {ref.registry} stored the manifest as {reported}, not {digest}"
        )
    return PushResult(ref, digest, "direct", pushed, existing, round(time.monotonic() - started, 3))


_AUTH_WORDS = (
    "unauthorized",
    "authentication required",
    "no basic auth credentials",
    "denied",
    "forbidden",
)
_DNS_WORDS = ("no such host", "server misbehaving", "name or service not known")


def engine_push(
    client: docker.DockerClient,
    image: str,
    target: str,
    *,
    credentials: Credentials | None = None,
    retry: RetryPolicy | None = None,
    log: Progress = _quiet,
    sleep: Callable[[float], None] = time.sleep,
) -> PushResult:
    """Push through the Docker engine (``docker push``), retrying transient failures."""
    from aibuild.engine import engine_errors

    started = time.monotonic()
    ref = parse_reference(target)
    if not ref.tag:
        raise PublishError(f"push target {target} needs a tag, not only a digest")
    with engine_errors(f"tagging {image} as {ref}"):
        client.images.get(image).tag(ref.name, ref.tag)
    auth = (
        {"username": credentials.username, "password": credentials.password}
        if credentials
        else None
    )
    policy = retry or RetryPolicy()
    delays = policy.delays()
    attempt = 1
    while True:
        digest, error, counts = _engine_push_once(client, ref, auth, log, engine_errors)
        if digest:
            return PushResult(
                ref, digest, "engine", counts[0], counts[1], round(time.monotonic() - started, 3)
            )
        lowered = error.lower()
        if any(word in lowered for word in _DNS_WORDS):
            raise PublishError(f"unknown registry {ref.registry}: {error}")
        if any(word in lowered for word in _AUTH_WORDS):
            who = f"user {credentials.username!r}" if credentials else "anonymous access"
            raise PublishError(
                f"registry {ref.registry} refused {who} for {ref.repository}: {error}"
            )
        delay = next(delays, None)
        if delay is None:
            raise PublishError(f"pushing {ref} failed after {attempt} attempts: {error}")
        log(f"push failed ({error}); retrying in {delay:.1f}s ({attempt}/{policy.attempts})")
        sleep(delay)
        attempt += 1


def _engine_push_once(
    client: docker.DockerClient,
    ref: Reference,
    auth: dict[str, str] | None,
    log: Progress,
    engine_errors: Any,
) -> tuple[str, str, tuple[int, int]]:
    """One ``docker push``: (digest or "", error or "", (pushed, existing))."""
    seen: dict[str, str] = {}
    digest = ""
    with engine_errors(f"pushing {ref}"):
        stream = client.api.push(ref.name, tag=ref.tag, auth_config=auth, stream=True, decode=True)
        for chunk in stream:
            if "error" in chunk or "errorDetail" in chunk:
                detail = chunk.get("errorDetail") or {}
                return "", str(chunk.get("error") or detail.get("message")), _counts(seen)
            aux = chunk.get("aux")
            if isinstance(aux, dict) and aux.get("Digest"):
                digest = str(aux["Digest"])
            layer, status = chunk.get("id"), chunk.get("status")
            if layer and status and status != seen.get(layer) and status not in _NOISE:
                seen[layer] = status
                log(f"{layer}: {status}")
    if not digest:
        return "", "the engine finished the push without reporting a digest", _counts(seen)
    return digest, "", _counts(seen)


_NOISE = ("Preparing", "Waiting", "Pushing")


def _counts(seen: Mapping[str, str]) -> tuple[int, int]:
    statuses = list(seen.values())
    return statuses.count("Pushed"), statuses.count("Layer already exists")


def is_reproducible(client: docker.DockerClient, image: str) -> bool:
    """Whether ``image`` was normalised by aibuild (its label says so)."""
    from aibuild.engine import engine_errors
    from aibuild.reproducible import REPRODUCIBLE_LABEL

    with engine_errors(f"inspecting {image}"):
        labels = client.images.get(image).attrs.get("Config", {}).get("Labels") or {}
    return REPRODUCIBLE_LABEL in labels


def push(
    client: docker.DockerClient,
    image: str,
    target: str | None = None,
    *,
    method: str = "auto",
    credentials: Credentials | None = None,
    retry: RetryPolicy | None = None,
    cache: BlobCache | None = None,
    log: Progress = _quiet,
) -> PushResult:
    """Push ``image`` (a local name or ID) as ``target`` (default: ``image`` itself).

    ``method``: "direct" (aibuild's own deterministic push), "engine" (docker push),
    or "auto": direct for images aibuild normalised (label
    ``ai.aibuild.reproducible``), where owning the digest is the point, else engine.
    """
    target = target or image
    if method not in ("auto", "direct", "engine"):
        raise PublishError(f"unknown push method {method!r} (auto, direct or engine)")
    if method == "auto":
        method = "direct" if is_reproducible(client, image) else "engine"
    if method == "direct":
        return direct_push(
            client, image, target, credentials=credentials, retry=retry, cache=cache, log=log
        )
    return engine_push(client, image, target, credentials=credentials, retry=retry, log=log)


def record_push(record_path: Path, result: PushResult) -> None:
    """Add a pushed digest to a build record (``pushes``: ref, digest, method)."""
    data = json.loads(record_path.read_text(encoding="utf-8"))
    entry = {"ref": str(result.reference), "digest": result.digest, "pinned": result.pinned}
    pushes = [p for p in data.get("pushes", []) if p.get("ref") != entry["ref"]]
    data["pushes"] = [*pushes, {**entry, "method": result.method}]
    text = json.dumps(data, indent=2) + "\n"
    record_path.write_text(text, encoding="utf-8")
    latest = record_path.with_name("latest.json")
    if latest.is_file() and json.loads(latest.read_text(encoding="utf-8")).get(
        "image_id"
    ) == data.get("image_id"):
        latest.write_text(text, encoding="utf-8")


def find_records(image_id: str, record_dir: Path) -> list[Path]:
    """Build records (newest first) whose image is ``image_id``."""
    if not record_dir.is_dir():
        return []
    found = []
    for path in sorted(record_dir.glob("*.json"), reverse=True):
        if path.name == "latest.json" or path.name.endswith(".cdx.json"):
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if image_id in (data.get("image_id"), data.get("reproducible", {}).get("image_id")):
            found.append(path)
    return found


__all__ = [
    "Blob",
    "BlobCache",
    "ChunkReader",
    "Credentials",
    "HashingWriter",
    "PushResult",
    "Reference",
    "RegistryClient",
    "RetryPolicy",
    "direct_push",
    "engine_push",
    "find_records",
    "image_blobs",
    "manifest_bytes",
    "parse_reference",
    "push",
    "record_push",
    "resolve_credentials",
    "save_image",
]
