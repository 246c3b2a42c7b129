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

import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aibuild import labels
from aibuild.engine import engine_errors
from aibuild.errors import PublishError
from aibuild.logs import Log, silent
from aibuild.oci.archive import Blob, BlobCache, image_blobs, manifest_bytes
from aibuild.oci.credentials import Credentials
from aibuild.oci.media import MANIFEST_V2
from aibuild.oci.reference import Reference, parse_reference
from aibuild.oci.registry import RegistryClient, RetryPolicy

if TYPE_CHECKING:  # pragma: no cover - typing only
    import docker


# ---------------------------------------------------------------------------
# References
# ---------------------------------------------------------------------------


# ---------------------------------------------------------------------------
# Credentials
# ---------------------------------------------------------------------------


# ---------------------------------------------------------------------------
# HTTP with retries
# ---------------------------------------------------------------------------


# ---------------------------------------------------------------------------
# Exported images and the blob cache
# ---------------------------------------------------------------------------


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
    log: Log = silent,
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
    log: Log = silent,
    sleep: Callable[[float], None] = time.sleep,
) -> PushResult:
    """Push through the Docker engine (``docker push``), retrying transient failures."""

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
    log: Log,
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

    with engine_errors(f"inspecting {image}"):
        found = client.images.get(image).attrs.get("Config", {}).get("Labels") or {}
    return labels.REPRODUCIBLE in found


def push(
    client: docker.DockerClient,
    image: str,
    target: str | None = None,
    *,
    method: str = "auto",
    credentials: Credentials | None = None,
    retry: RetryPolicy | None = None,
    cache: BlobCache | None = None,
    log: Log = silent,
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
