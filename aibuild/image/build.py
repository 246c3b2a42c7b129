"""Build: a rendered build context -> an image, through the engine's classic builder.

``build_context`` sends the context (``image.context``'s deterministic tar) through
docker-py's low-level build API and turns the JSON chunk stream into events
(``image.progress``); a chunk carrying ``error``/``errorDetail`` always becomes a
``BuildError`` with the failing step and its log tail (docker-py does not raise on
them). Build args: ``--build-arg`` values and the proxy variables of the environment,
passed as Docker's predefined proxy args so they never stay in the image.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from aibuild import kv
from aibuild.engine import (
    engine_errors,
    is_connection_error,
    unreachable,
)
from aibuild.errors import BuildError
from aibuild.image.context import context_tar
from aibuild.image.progress import BuildProgress, BuildStep, QuietReporter, Reporter
from aibuild.image.record import RECORD_DIR
from aibuild.oci.reference import parse_reference

if TYPE_CHECKING:  # pragma: no cover - typing only
    import docker


# Docker's predefined proxy build args: usable by RUN steps, never kept in the image
# (not in `docker history`, not in ENV) unless a Dockerfile declares them.
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "FTP_PROXY", "NO_PROXY", "ALL_PROXY")


# ---------------------------------------------------------------------------
# Build arguments
# ---------------------------------------------------------------------------


def proxy_build_args(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Proxy settings from the environment as Docker's predefined proxy build args.

    Both spellings are read; each value is passed under both spellings (curl reads
    only lower case, most tools either), the upper-case variable winning a conflict.
    """
    env = os.environ if environ is None else environ
    args: dict[str, str] = {}
    for upper in PROXY_VARIABLES:
        value = env.get(upper) or env.get(upper.lower())
        if value:
            args[upper] = value
            args[upper.lower()] = value
    return args


def parse_build_args(values: Iterable[str]) -> dict[str, str]:
    """``K=V`` strings -> a dict; ValueError names the bad one (KEY must be a variable name)."""
    return kv.split_items(values, option="--build-arg", key=kv.VARIABLE)


# ---------------------------------------------------------------------------
# Deterministic build context
# ---------------------------------------------------------------------------


# ---------------------------------------------------------------------------
# Progress: the classic builder's JSON stream -> events
# ---------------------------------------------------------------------------


# ---------------------------------------------------------------------------
# Reporters
# ---------------------------------------------------------------------------


# ---------------------------------------------------------------------------
# Building a context
# ---------------------------------------------------------------------------


@dataclass
class BuildOutcome:
    """What the engine produced for one context."""

    image_id: str
    tags: list[str]
    steps: list[BuildStep]
    duration: float

    @property
    def cache_hits(self) -> int:
        return sum(1 for step in self.steps if step.cached)


def _is_remote(client: docker.DockerClient) -> bool:
    base_url = str(getattr(client.api, "base_url", ""))
    return not (base_url.startswith("http+unix") or base_url.startswith("http+docker"))


def build_context(
    client: docker.DockerClient,
    context_dir: Path,
    *,
    tags: Sequence[str] = (),
    nocache: bool = False,
    pull: bool = False,
    buildargs: Mapping[str, str] | None = None,
    network_mode: str | None = None,
    reporter: Reporter | None = None,
    target: str | None = None,
) -> BuildOutcome:
    """Build ``context_dir`` (with its Dockerfile) and tag the image with every tag;
    ``target``: the stage to stop at (default: the last).

    Raises BuildError for a failing step (with its instruction and output tail) and
    EngineError when the engine cannot be reached or refuses the request.
    """
    report = reporter or QuietReporter()
    progress = BuildProgress()
    started = time.monotonic()
    args = {**proxy_build_args(), **(buildargs or {})}
    gzip = _is_remote(client)
    with context_tar(Path(context_dir), gzip=gzip) as tar, engine_errors("the build"):
        stream = client.api.build(
            fileobj=tar,
            custom_context=True,
            encoding="gzip" if gzip else None,
            tag=tags[0] if tags else None,
            nocache=nocache,
            pull=pull,
            rm=True,
            forcerm=True,
            decode=True,
            buildargs=args,
            network_mode=network_mode,
            target=target,
        )
        try:
            for chunk in stream:
                for event in progress.feed(chunk):
                    report.event(event)
        except BuildError:
            report.close()
            raise
        except Exception as exc:
            report.close()
            if is_connection_error(exc):
                raise unreachable(None, exc) from None
            raise
        for event in progress.finish():
            report.event(event)
        image_id = progress.image_id
        assert image_id is not None  # finish() raised otherwise
        if not image_id.startswith("sha256:"):
            image_id = client.images.get(image_id).id
        for tag in tags[1:]:
            ref = parse_reference(tag)
            client.api.tag(image_id, ref.name, ref.tag, force=True)
    report.close()
    return BuildOutcome(
        image_id=image_id,
        tags=list(tags),
        steps=progress.steps,
        duration=round(time.monotonic() - started, 3),
    )


@dataclass(frozen=True)
class BuildSettings:
    """How to build, apart from the profile and the render options."""

    tags: tuple[str, ...] = ()
    nocache: bool = False
    pull: bool = False
    build_args: tuple[tuple[str, str], ...] = ()
    network_mode: str | None = None
    context_dir: str | None = None  # keep the rendered context here (default: a temp dir)
    record_dir: str = str(RECORD_DIR)
