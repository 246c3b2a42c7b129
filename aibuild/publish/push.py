"""Publish: an image -> a registry digest.

Two ways to push, one result (``name@sha256:DIGEST``):

- ``engine_push``: the Docker engine pushes (``docker push``). Fast, uses the
  engine's layer cache, but the engine compresses the layers itself and may reuse
  compressed digests from its history, so the registry digest depends on the
  engine and its past.
- ``direct_push``: aibuild pushes through the registry HTTP API v2 itself. The
  image is exported (``docker save``), each layer is compressed deterministically
  (gzip or zstd from pinned wheels: ``aibuild.oci.compress``) into a blob cache keyed
  by the layer's diff ID and the codec, and the blobs are uploaded concurrently
  (``aibuild.publish.upload``), then the manifest last. The three overlap: a layer is
  compressed as soon as the export has written it, and uploaded as soon as it is
  compressed. The same image ID gives the
  same manifest digest on any machine: this is how reproducible images are published.

Credentials come from, in order: ``--username`` + ``--password-stdin``; the
environment (``AIBUILD_REGISTRY_USER``/``AIBUILD_REGISTRY_PASSWORD``); the
Docker config file (``credHelpers``, ``credsStore``, then ``auths``). They are
never logged, written to a record, or baked into an image.

Transient failures (connection refused/reset, timeouts, HTTP 5xx and 429) are
retried with exponential backoff; an authentication failure, an unknown host or
another 4xx fails at once with a message saying what to do. A push (to one target)
has a time bound (``TimeBound``: ``--timeout``, ``$AIBUILD_PUSH_TIMEOUT``, 1800 s by
default); the error that ends it says what the bound was.

Local tags: ``docker push`` pushes a tag, so ``engine_push`` tags the image as the
target first. It never moves an existing tag: a tag that named another image is put
back when the push ends, and a tag made for the push is removed again when it fails.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aibuild import labels
from aibuild.engine import api_message, engine_errors, push_digest
from aibuild.errors import PublishError, one_line
from aibuild.logs import Log, silent
from aibuild.oci import compress
from aibuild.oci.archive import BlobCache, image_blobs, manifest_bytes, manifest_media_type
from aibuild.oci.credentials import Credentials
from aibuild.oci.reference import Reference, parse_reference
from aibuild.oci.registry import (
    COMMIT_TIMEOUT,
    Deadline,
    RegistryClient,
    RetryPolicy,
    TimeBound,
    retry_with_backoff,
    seconds_text,
)
from aibuild.publish.upload import Uploader

if TYPE_CHECKING:  # pragma: no cover - typing only
    import docker

# Seconds the engine may stay silent during ``docker push`` (it reports progress while
# it uploads; silence is a registry that does not answer, or storing a large blob).
ENGINE_STALL = COMMIT_TIMEOUT


@dataclass(frozen=True)
class PushResult:
    """A pushed image: ``reference`` carries the tag, ``digest`` the manifest digest."""

    reference: Reference
    digest: str
    method: str  # "direct" | "engine"
    layers_pushed: int = 0
    layers_existing: int = 0
    seconds: float = 0.0
    image_id: str = ""  # the local image that was pushed

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


def push_target(target: str) -> Reference:
    """``target`` as a reference a push can write: a tag, no digest (ReferenceError when it
    is not a reference at all)."""
    ref = parse_reference(target)
    if ref.digest:
        raise PublishError(
            one_line(f"push target {target} names a digest: push to REGISTRY/NAME:TAG")
        )
    if not ref.tag:  # pragma: no cover - parse_reference gives a tag when there is no digest
        raise PublishError(one_line(f"push target {target} needs a tag"))
    return ref


def direct_push(
    client: docker.DockerClient,
    image: str,
    target: str,
    *,
    credentials: Credentials | None = None,
    retry: RetryPolicy | None = None,
    insecure: bool | None = None,
    cache: BlobCache | None = None,
    bound: TimeBound | None = None,
    log: Log = silent,
    compression: str = compress.GZIP,
) -> PushResult:
    """Push local ``image`` to ``target`` through the registry API; manifest last.

    Layers are compressed with ``compression`` (the cache's, when a cache is given).
    Blobs go up concurrently; those the registry already has (HEAD) are skipped. If
    anything fails before the manifest PUT, the tag is untouched: the registry holds
    only unreferenced blobs. The whole push, export included, ends within ``bound``.
    """
    started = time.monotonic()
    deadline = Deadline(bound)
    ref = push_target(target)
    assert ref.tag is not None
    cache = cache or BlobCache(compression=compression)

    def new_client() -> RegistryClient:
        registry = RegistryClient(
            ref.registry,
            ref.repository,
            credentials,
            insecure=insecure,
            retry=retry,
            deadline=deadline,
            log=log,
        )
        registry.authenticate()
        return registry

    registry = new_client()  # first: a wrong password or host fails before any export
    with engine_errors(f"inspecting {image}"):
        image_id = str(client.images.get(image).id)
    log(compress.engines_that_pull(cache.compression))
    uploader = Uploader(new_client, log=log)  # blobs go up while the export goes on
    try:
        config, layers = image_blobs(client, image_id, cache, log, on_blob=uploader.submit)
        uploader.submit(config, "config")
        counts = uploader.finish()
    except BaseException:
        uploader.abort()
        raise
    pushed, existing = counts.pushed, counts.existing
    manifest = manifest_bytes(config, layers)
    digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    reported = registry.put_manifest(ref.tag, manifest, manifest_media_type(layers))
    if reported and reported != digest:
        raise PublishError(
            one_line(
                f"registry {ref.registry} stored the manifest as {reported[:80]}, not {digest}"
            )
        )
    seconds = round(time.monotonic() - started, 3)
    return PushResult(ref, digest, "direct", pushed, existing, seconds, image_id)


_AUTH_WORDS = (
    "unauthorized",
    "authentication required",
    "no basic auth credentials",
    "denied",
    "forbidden",
)
_DNS_WORDS = ("no such host", "server misbehaving", "name or service not known")


class _EngineRetry(Exception):
    """A failed ``docker push`` worth another attempt."""


def engine_push(
    client: docker.DockerClient,
    image: str,
    target: str,
    *,
    credentials: Credentials | None = None,
    retry: RetryPolicy | None = None,
    bound: TimeBound | None = None,
    log: Log = silent,
    sleep: Callable[[float], None] = time.sleep,
) -> PushResult:
    """Push through the Docker engine (``docker push``), retrying transient failures,
    within ``bound``. The tag the engine needs is handled by ``tagged_for_push``."""

    started = time.monotonic()
    deadline = Deadline(bound)
    ref = push_target(target)
    auth = (
        {"username": credentials.username, "password": credentials.password}
        if credentials
        else None
    )

    def attempt() -> tuple[str, tuple[int, int]]:
        digest, error, counts = _engine_push_once(client, ref, auth, log, deadline)
        if digest:
            return digest, counts
        error = one_line(error)[:500]
        lowered = error.lower()
        if any(word in lowered for word in _DNS_WORDS):
            raise PublishError(f"unknown registry {ref.registry}: {error}")
        if any(word in lowered for word in _AUTH_WORDS):
            who = f"user {credentials.username!r}" if credentials else "anonymous access"
            raise PublishError(
                f"registry {ref.registry} refused {who} for {ref.repository}: {error}"
            )
        raise _EngineRetry(error)

    with engine_errors(f"inspecting {image}"):
        image_id = str(client.images.get(image).id)
    with tagged_for_push(client, image_id, ref, log):
        digest, counts = retry_with_backoff(
            f"pushing {ref}",
            attempt,
            retry=retry or RetryPolicy(),
            deadline=deadline,
            log=log,
            sleep=sleep,
            transient=_EngineRetry,
        )
    seconds = round(time.monotonic() - started, 3)
    return PushResult(ref, digest, "engine", counts[0], counts[1], seconds, image_id)


def _tagged_image(client: docker.DockerClient, name: str) -> str | None:
    """The ID of the local image tagged ``name``, or None."""
    import docker as docker_module

    with engine_errors(f"looking up {name}"):
        try:
            return str(client.images.get(name).id)
        except docker_module.errors.ImageNotFound:
            return None


@contextmanager
def tagged_for_push(
    client: docker.DockerClient, image_id: str, ref: Reference, log: Log = silent
) -> Iterator[None]:
    """Tag ``image_id`` as ``ref`` for the duration of a ``docker push``.

    Afterwards no existing tag has moved: a tag that named another image names it
    again, and a tag made for the push is kept only when the push succeeded. (A tag
    that is the image's only name stays, with a warning: the engine cannot untag an
    image's last name without deleting the image.)
    """
    assert ref.tag is not None
    name = str(ref)
    before = _tagged_image(client, name)
    with engine_errors(f"tagging {image_id[:19]} as {name}"):
        client.api.tag(image_id, ref.name, ref.tag)
    succeeded = False
    try:
        yield
        succeeded = True
    finally:
        if before is not None and before != image_id:
            _restore_tag(client, before, ref, log)
        elif before is None and not succeeded:
            _remove_tag(client, image_id, name, log)


def _restore_tag(client: docker.DockerClient, image_id: str, ref: Reference, log: Log) -> None:
    import docker as docker_module

    try:
        client.api.tag(image_id, ref.name, ref.tag)
    except docker_module.errors.DockerException as exc:
        log(one_line(f"warning: could not put the tag {ref} back on {image_id[:19]}: {exc}"))


def _remove_tag(client: docker.DockerClient, image_id: str, name: str, log: Log) -> None:
    import docker as docker_module

    try:
        tags = client.images.get(image_id).tags
        if [t for t in tags if t != name]:
            client.api.remove_image(name, noprune=True)
        else:
            log(f"warning: left the tag {name} on {image_id[:19]}: it is the image's only name")
    except docker_module.errors.DockerException as exc:
        log(one_line(f"warning: could not remove the tag {name}: {api_message(exc)}"))


def _engine_push_once(
    client: docker.DockerClient,
    ref: Reference,
    auth: dict[str, str] | None,
    log: Log,
    deadline: Deadline,
) -> tuple[str, str, tuple[int, int]]:
    """One ``docker push``: (digest or "", error or "", (pushed, existing)).

    The engine may stay silent at most ``ENGINE_STALL`` seconds (cut to what is left of
    the deadline); the deadline is checked at each of its messages."""
    import requests
    import urllib3

    seen: dict[str, str] = {}
    digest = ""
    left = deadline.left()
    if left <= 0:
        return "", "no time was left for another attempt", _counts(seen)
    stall = max(min(ENGINE_STALL, left), 0.001)
    saved_timeout = client.api.timeout
    client.api.timeout = stall  # docker-py reads it per request: the stream's read timeout
    try:
        with engine_errors(f"pushing {ref}"):
            try:
                stream = client.api.push(
                    ref.name, tag=ref.tag, auth_config=auth, stream=True, decode=True
                )
            except requests.exceptions.Timeout:
                return "", f"the engine did not answer for {seconds_text(stall)}", _counts(seen)
        try:
            for chunk in stream:
                if "error" in chunk or "errorDetail" in chunk:
                    detail = chunk.get("errorDetail") or {}
                    return "", str(chunk.get("error") or detail.get("message")), _counts(seen)
                digest = push_digest(chunk) or digest
                layer, status = chunk.get("id"), chunk.get("status")
                if layer and status and status != seen.get(layer) and status not in _NOISE:
                    seen[layer] = status
                    log(one_line(f"{layer}: {status}"))
                if deadline.left() <= 0:
                    return "", "the time bound ran out during the push", _counts(seen)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            if isinstance(exc, urllib3.exceptions.ReadTimeoutError | TimeoutError):
                return "", f"the engine reported nothing for {seconds_text(stall)}", _counts(seen)
            return "", f"the engine's answer broke off: {exc}", _counts(seen)
        finally:
            stream.close()
    finally:
        client.api.timeout = saved_timeout
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
    bound: TimeBound | None = None,
    log: Log = silent,
    compression: str = compress.GZIP,
) -> PushResult:
    """Push ``image`` (a local name or ID) as ``target`` (default: ``image`` itself).

    ``method``: "direct" (aibuild's own deterministic push), "engine" (docker push),
    or "auto": direct for images aibuild normalised (label
    ``ai.aibuild.reproducible``), where owning the digest is the point, or when
    ``compression`` is zstd (the engine pushes gzip only), else engine.
    """
    target = target or image
    if method not in ("auto", "direct", "engine"):
        raise PublishError(f"unknown push method {method!r} (auto, direct or engine)")
    compress.codec(compression)  # an unknown name or a missing library: a clear error
    if method == "engine" and compression != compress.GZIP:
        raise PublishError(
            f"--compression {compression} needs --method direct (or auto): the engine's "
            "docker push writes gzip layers only"
        )
    if method == "auto":
        direct = compression != compress.GZIP or is_reproducible(client, image)
        method = "direct" if direct else "engine"
    if method == "direct":
        return direct_push(
            client,
            image,
            target,
            credentials=credentials,
            retry=retry,
            cache=cache,
            bound=bound,
            log=log,
            compression=compression,
        )
    return engine_push(
        client, image, target, credentials=credentials, retry=retry, bound=bound, log=log
    )
