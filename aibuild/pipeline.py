"""The pipeline: one pass from a profile to a published image.

    profile ──load──▶ Profile ──resolve──▶ BuildPlan ──render──▶ context ──build──▶ image
        (profile/)                (profile/)           (image/)          (image/)    │
                                                                  record (image/) ◀──┤
                       [--reproducible]  SBOM ──▶ normalise (publish/) ◀─────────────┤
                       [--push]                          push (publish/, oci/) ◀─────┘

``make_image`` is ``aibuild image``: each stage is called once, in that order, and
the data only flows forward. Profile errors are reported before the engine is
contacted. ``lock_profile`` (``aibuild lock``) and ``push_image`` (``aibuild push``)
are the two other entry points; they reuse the same stages. The CLI only parses
options into an ``ImageRequest`` (or the other functions' arguments), calls one
function here and prints its result.
"""

from __future__ import annotations

import contextlib
import functools
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aibuild import labels
from aibuild.engine import client_session, engine_errors
from aibuild.errors import PublishError
from aibuild.image.build import BuildSettings, build_context
from aibuild.image.helpers import (
    BaseFacts,
    detect_base,
    ensure_image,
    image_identity,
    inspect_image,
)
from aibuild.image.progress import QuietReporter, Reporter
from aibuild.image.record import (
    RECORD_DIR,
    BuildResult,
    find_records,
    record_push,
    recorded_builds,
    sbom_path,
    unreadable_records,
    update_record,
    write_record,
)
from aibuild.image.render import DEV_STAGE, check_context_dir, train_target, write_context
from aibuild.image.wheelhouse import serve_wheelhouse
from aibuild.logs import Log, silent
from aibuild.oci.archive import BlobCache
from aibuild.oci.credentials import resolve_credentials
from aibuild.oci.reference import DOCKER_HUB, Reference
from aibuild.oci.registry import RetryPolicy, push_time_bound
from aibuild.profile.load import Profile, is_profile_ref, load_profile
from aibuild.profile.plan import BuildPlan, RenderOptions
from aibuild.profile.resolve import plan_for, resolve
from aibuild.publish import lock as lockfile
from aibuild.publish.normalise import (
    NormaliseResult,
    normalise_image,
    normalised_epoch,
    normalised_tag,
)
from aibuild.publish.push import PushResult, push, push_target
from aibuild.publish.sbom import SBOM_PATH, attach_sbom, cyclonedx, sbom_bytes

if TYPE_CHECKING:  # pragma: no cover - typing only
    import docker


@dataclass(frozen=True)
class PublishSettings:
    """What ``aibuild image`` is asked to do beyond building, and the registry login."""

    reproducible: bool = False
    locked: bool = False
    push: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    retries: int = 8
    timeout: float | None = None  # seconds per push; None: $AIBUILD_PUSH_TIMEOUT or 1800
    compression: str | None = None  # gzip | zstd; None: the profile's image.compression, gzip


@dataclass(frozen=True)
class ImageRequest:
    """Everything ``aibuild image`` was asked for."""

    profile: str
    overrides: tuple[str, ...] = ()
    options: RenderOptions = field(default_factory=RenderOptions)
    build: BuildSettings = field(default_factory=BuildSettings)
    publish: PublishSettings = field(default_factory=PublishSettings)


@dataclass
class ImageResult:
    """What the pipeline produced: the build, and what the publishing stages made of it."""

    build: BuildResult
    image_id: str  # the final image: the normalised one with --reproducible
    normalised: NormaliseResult | None = None
    pushes: list[PushResult] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.build.to_dict(),
            "final_image_id": self.image_id,
            "pushed": [p.pinned for p in self.pushes],
        }


# ---------------------------------------------------------------------------
# Stage 1: profile -> plan (the engine is contacted only for a custom base image)
# ---------------------------------------------------------------------------


def _explicit_base(profile: Profile, options: RenderOptions) -> str | None:
    """The base image the user chose (``--base-image``, else ``software.base_image``)."""
    software = profile.data.get("software")
    stated = software.get("base_image") if isinstance(software, dict) else None
    base = options.base_image or stated
    return base if isinstance(base, str) and base else None


def plan_build(
    client: docker.DockerClient | None,
    ref: str,
    overrides: Sequence[str],
    options: RenderOptions,
    *,
    pull: bool = False,
) -> tuple[BuildPlan, RenderOptions, BaseFacts | None]:
    """The plan to build. The profile is resolved first, without the engine, so that its
    errors come first; a custom base image is then inspected (its distro and python3)
    and the plan resolved again with those facts. ``client`` None: no base detection."""
    profile = load_profile(ref, overrides)
    plan = resolve(profile, options)
    base = _explicit_base(profile, options)
    if client is None or base is None:
        return plan, options, None
    facts = detect_base(client, base, pull=pull)
    options = replace(options, base_image=base, base_os=facts.os, base_python=facts.python)
    return resolve(profile, options), options, facts


# ---------------------------------------------------------------------------
# Stage 2: plan -> context -> image -> record
# ---------------------------------------------------------------------------


def _can_serve(client: docker.DockerClient, settings: BuildSettings) -> bool:
    """Whether the build's RUN steps can reach a wheelhouse served on this machine's
    loopback: the engine runs here, and the build uses the host's network (the default
    when a wheelhouse is given; another --network gets the wheelhouse copied in)."""
    if settings.network_mode not in (None, "host"):
        return False
    url = str(getattr(client.api, "base_url", ""))
    return url.startswith(("http+unix", "http+docker")) or any(
        host in url for host in ("//127.0.0.1", "//localhost", "//[::1]")
    )


def build_plan(
    client: docker.DockerClient,
    plan: BuildPlan,
    options: RenderOptions,
    settings: BuildSettings,
    *,
    facts: BaseFacts | None = None,
    reporter: Reporter | None = None,
) -> BuildResult:
    """Render ``plan``'s context, build it, tag it, inspect it and write its record.

    Tags: the plan's ``image_ref`` plus ``settings.tags``. The record goes to
    ``settings.record_dir`` (``.aibuild/builds/`` under the current directory).
    """
    report = reporter or QuietReporter()
    if facts is not None:
        report.message(
            f"base image {facts.image}: {facts.os or 'unknown distro'}, "
            f"python3 {facts.python or 'absent'}"
        )
    tags = [plan.image_ref, *[t for t in settings.tags if t != plan.image_ref]]
    with (
        tempfile.TemporaryDirectory(prefix="aibuild-context-") as tmp,
        contextlib.ExitStack() as serving,
    ):
        if options.wheelhouse and _can_serve(client, settings):
            try:
                url = serving.enter_context(serve_wheelhouse(Path(options.wheelhouse)))
            except OSError as exc:
                report.message(
                    f"wheelhouse: its port is taken ({exc.strerror}): copying it into the "
                    "build context instead"
                )
            else:
                options = replace(options, wheelhouse_url=url)
                settings = replace(settings, network_mode="host")
        # the bases first, as --base-image does: where no registry answers, the advice to
        # build offline, not the engine's raw DNS error at step 1
        for base in dict.fromkeys((plan.base_image, plan.runtime_image)):
            ensure_image(client, base, pull=settings.pull)
        context = Path(settings.context_dir or Path(tmp) / "context")
        write_context(plan, context, options)  # refuses a directory holding others' files
        build = functools.partial(
            build_context,
            client,
            context,
            nocache=settings.nocache,
            buildargs=dict(settings.build_args),
            network_mode=settings.network_mode,
            reporter=report,
        )
        outcome = build(tags=tags, pull=settings.pull, target=train_target(plan))
        dev = None
        if plan.dev_jupyter:  # the same context, on to the dev stage: its own image and tag
            report.message(f"dev image {plan.dev_image_ref}: the image plus JupyterLab")
            dev = build(tags=[plan.dev_image_ref], target=DEV_STAGE)
    python_packages, os_packages = inspect_image(client, outcome.image_id)
    result = BuildResult(
        image_id=outcome.image_id,
        tags=outcome.tags,
        plan=plan,
        record_path=Path(),
        steps=outcome.steps,
        duration=outcome.duration,
        base=facts,
        python_packages=python_packages,
        os_packages=os_packages,
        dev_image=None if dev is None else {"image_id": dev.image_id, "tag": plan.dev_image_ref},
    )
    extra = {
        **({"dev_image": result.dev_image} if dev else {}),
        "base_image": image_identity(client, plan.base_image),
        "runtime_image": image_identity(client, plan.runtime_image),
        "render_options": {k: v for k, v in asdict(options).items() if k != "constraints" or v},
        "build_args": sorted(dict(settings.build_args)),  # names only: values may be secrets
    }
    write_record(result, extra, Path(settings.record_dir))
    return result


def build_image(
    ref: str,
    overrides: Sequence[str] = (),
    options: RenderOptions | None = None,
    settings: BuildSettings | None = None,
    reporter: Reporter | None = None,
    client: docker.DockerClient | None = None,
) -> BuildResult:
    """Stages 1 and 2 only: profile -> plan -> context -> image -> record."""
    options = options or RenderOptions()
    settings = settings or BuildSettings()
    plan_build(None, ref, overrides, options)  # profile errors before the engine
    if settings.context_dir:
        check_context_dir(Path(settings.context_dir))
    with client_session(client) as engine:
        plan, options, facts = plan_build(engine, ref, overrides, options, pull=settings.pull)
        return build_plan(engine, plan, options, settings, facts=facts, reporter=reporter)


# ---------------------------------------------------------------------------
# Stage 3 (--reproducible): SBOM -> normalise
# ---------------------------------------------------------------------------


def make_reproducible(
    client: docker.DockerClient,
    result: BuildResult,
    *,
    source_date_epoch: int,
    extra_labels: dict[str, str] | None = None,
    wheelhouse: Path | None = None,
    cache: BlobCache | None = None,
    log: Log = silent,
) -> NormaliseResult:
    """After a build rendered with ``reproducible=True``: write the SBOM beside the build
    record, add it to the image as a layer, normalise the image (base: the plan's runtime
    image) and note both in the record. The build's tags move to the normalised image."""
    plan = result.plan
    hashes: dict[str, list[str]] = {}
    for (name, _), digests in lockfile.wheel_hashes(wheelhouse).items():
        hashes.setdefault(name, []).extend(digests)
    document = cyclonedx(
        result.python_packages,
        result.os_packages,
        image_name=plan.image_name,
        image_version=plan.image_tag,
        os_name=plan.os,
        source_date_epoch=source_date_epoch,
        hashes=hashes,
    )
    data = sbom_bytes(document)
    beside = sbom_path(result.record_path)
    beside.write_bytes(data)
    with_sbom = attach_sbom(client, result.image_id, data, result.tags)
    log(f"SBOM: {beside} and {with_sbom[:19]}:{SBOM_PATH}")
    normalised = normalise_image(
        client,
        with_sbom,
        source_date_epoch=source_date_epoch,
        base=plan.runtime_image,
        tags=result.tags,
        extra_labels=extra_labels,
        cache=cache,
        log=log,
    )
    problem = update_record(result.record_path, reproducible=normalised.to_dict(), sbom=str(beside))
    if problem:
        log(f"warning: {problem}")
    return normalised


# ---------------------------------------------------------------------------
# Stage 4 (--push)
# ---------------------------------------------------------------------------


def push_to(
    client: docker.DockerClient,
    image: str,
    targets: Sequence[str],
    *,
    method: str,
    settings: PublishSettings,
    log: Log = silent,
    record_dir: Path = RECORD_DIR,
) -> list[PushResult]:
    """Push local ``image`` to every target (default: its own name) and note each digest
    in the image's build record. Every target is checked before the first push; a record
    that cannot be updated is a warning, never a failure of a push that succeeded."""
    bound = push_time_bound(settings.timeout)
    refs = [_registry_target(target) for target in list(targets) or [image]]
    with engine_errors(f"looking up {image}"):
        found = client.images.get(image)
    results = []
    for ref in refs:
        credentials = resolve_credentials(
            ref.registry, username=settings.username, password=settings.password
        )
        result = push(
            client,
            found.id,
            str(ref),
            method=method,
            credentials=credentials,
            retry=RetryPolicy(attempts=settings.retries),
            bound=bound,
            log=log,
            compression=settings.compression or "gzip",
        )
        records = find_records(found.id, record_dir)
        for record in records[:1]:
            problem = record_push(
                record,
                ref=str(result.reference),
                digest=result.digest,
                pinned=result.pinned,
                method=result.method,
            )
            log(f"warning: {problem}" if problem else f"digest recorded in {record}")
        for record in [] if records else unreadable_records(found.id, record_dir)[:1]:
            log(f"warning: build record {record} is unreadable; the digest was not recorded")
        results.append(result)
    return results


def _registry_target(target: str) -> Reference:
    """A push target, checked: a reference with a tag, on a registry."""
    ref = push_target(target)
    if ref.registry == DOCKER_HUB and "/" not in target.split(":")[0]:
        raise PublishError(
            f"{target} has no registry part: tag it for a registry "
            "(REGISTRY/NAME:TAG, e.g. with --to) before pushing"
        )
    return ref


# ---------------------------------------------------------------------------
# aibuild image: every stage, once, in order
# ---------------------------------------------------------------------------


def make_image(
    request: ImageRequest,
    *,
    reporter: Reporter | None = None,
    log: Log = silent,
    client: docker.DockerClient | None = None,
) -> ImageResult:
    """``aibuild image``: profile -> plan -> [lock] -> context -> image -> record ->
    [SBOM -> normalise] -> [push]."""
    publishing = request.publish
    options = request.options
    ref, overrides = request.profile, request.overrides
    plan_build(None, ref, overrides, options)  # profile errors before the engine
    if request.build.context_dir:
        check_context_dir(Path(request.build.context_dir))
    if publishing.push:
        push_time_bound(publishing.timeout)  # a bad $AIBUILD_PUSH_TIMEOUT before the build
    lock: dict[str, Any] | None = None
    lock_path: Path | None = None
    if publishing.locked:
        lock_path = lockfile.default_lock_path(ref)
        lock = lockfile.read_lock(lock_path)
    with client_session(client) as engine:
        plan, options, facts = plan_build(engine, ref, overrides, options, pull=request.build.pull)
        epoch: int | None = None
        if lock is not None and lock_path is not None:
            runtime = image_identity(engine, plan.runtime_image)
            lockfile.check_lock(lock, plan, lock_path, runtime["id"])
            options = lockfile.locked_options(lock, options)
            epoch = int(lock["source_date_epoch"])
        if publishing.reproducible:
            if epoch is None:
                epoch, _ = lockfile.choose_epoch(lockfile.profile_file(ref))
            options = replace(options, reproducible=True, source_date_epoch=epoch)
        built = build_plan(engine, plan, options, request.build, facts=facts, reporter=reporter)
        if publishing.compression is None:
            publishing = replace(publishing, compression=plan.image_compression)
        result = ImageResult(built, built.image_id)
        if lock is not None:
            drift = lockfile.check_os_packages(lock, built.os_packages)
            if drift:
                log(f"warning: {len(drift)} OS package(s) differ from {lock_path}:")
                for line in drift[:20]:
                    log(f"  {line}")
        if publishing.reproducible:
            assert epoch is not None
            wheelhouse = options.wheelhouse
            result.normalised = make_reproducible(
                engine,
                built,
                source_date_epoch=epoch,
                extra_labels=lockfile.source_labels(lockfile.profile_file(ref)),
                wheelhouse=Path(wheelhouse) if wheelhouse else None,
                # Pushing next: gzip the layers while they are at hand, not after a second export.
                cache=BlobCache(compression=publishing.compression or "gzip")
                if publishing.push
                else None,
                log=log,
            )
            result.image_id = result.normalised.image_id
        if publishing.push:
            result.pushes = push_to(
                engine,
                result.image_id,
                (plan.image_ref,),
                method="direct" if publishing.reproducible else "auto",
                settings=publishing,
                log=log,
                record_dir=built.record_path.parent,
            )
    return result


# ---------------------------------------------------------------------------
# aibuild push: an image (or a built profile's), optionally normalised first
# ---------------------------------------------------------------------------


def push_image(
    target: str,
    destinations: Sequence[str] = (),
    *,
    method: str = "auto",
    settings: PublishSettings | None = None,
    reproducible: bool = False,
    base_image: str | None = None,
    epoch: int | None = None,
    log: Log = silent,
    client: docker.DockerClient | None = None,
) -> list[PushResult]:
    """``aibuild push``: ``target`` is a profile (its plan's image, pushed under that name)
    or a local image (pushed under its own name unless ``destinations`` are given).

    Everything the user gave (targets, time bound, SOURCE_DATE_EPOCH) is checked before
    the engine is asked for anything. With ``reproducible``, a normalised copy is pushed:
    the source image and its tags stay as they are (``normalise_for_push``)."""
    settings = settings or PublishSettings()
    push_time_bound(settings.timeout)
    for destination in destinations:
        _registry_target(destination)
    chosen: tuple[int, str] | None = None
    explicit = False
    if reproducible:
        given = lockfile.explicit_epoch(epoch)
        explicit = given is not None
        chosen = given or lockfile.choose_epoch(None)
    image, own_name = target, target
    if is_profile_ref(target):
        plan = plan_for(target)
        image = own_name = plan.image_ref
        if settings.compression is None:
            settings = replace(settings, compression=plan.image_compression)
    if not destinations:
        _registry_target(own_name)
    with client_session(client) as engine:
        with engine_errors(f"looking up {image}"):
            import docker as docker_module

            try:
                engine.images.get(image)
            except docker_module.errors.ImageNotFound:
                hint = f": build it first (aibuild image {target})" if image != target else ""
                raise PublishError(f"no image {image} on this engine{hint}") from None
        if chosen is not None:
            image = normalise_for_push(
                engine, image, chosen, explicit=explicit, base_image=base_image, log=log
            )
            method = "direct" if method == "auto" else method
        return push_to(
            engine,
            image,
            tuple(destinations) or (own_name,),
            method=method,
            settings=settings,
            log=log,
        )


def normalise_for_push(
    client: docker.DockerClient,
    image: str,
    epoch: tuple[int, str],
    *,
    explicit: bool,
    base_image: str | None = None,
    log: Log = silent,
) -> str:
    """The ID of a normalised copy of ``image`` to push (``aibuild push --reproducible``).

    The copy is loaded under a tag of its own (``normalised_tag``: NAME:TAG-reproducible-
    EPOCH); the source and all its tags stay exactly as they were. An image that is
    itself a normalised one is pushed as it is when ``epoch`` is its own or was not
    chosen ``explicit``-ly; another explicit epoch is an error (normalising it again would
    not give what its source gives)."""
    when, source = epoch
    with engine_errors(f"inspecting {image}"):
        found = client.images.get(image)
    already = normalised_epoch(found.attrs)
    if already is not None and (already == when or not explicit):
        log(
            f"warning: {image} is already normalised (SOURCE_DATE_EPOCH={already}): "
            "pushing it as it is"
        )
        return str(found.id)
    log(f"SOURCE_DATE_EPOCH={when} ({source})")
    tag = normalised_tag(image, found.tags, found.id, when)
    result = normalise_image(
        client, image, source_date_epoch=when, base=base_image, tags=[tag], log=log
    )
    log(f"normalised image: {tag}")
    return result.image_id


# ---------------------------------------------------------------------------
# aibuild lock
# ---------------------------------------------------------------------------


def lock_profile(
    ref: str,
    overrides: Sequence[str] = (),
    options: RenderOptions | None = None,
    *,
    image: str | None = None,
    output: Path | None = None,
    epoch: int | None = None,
    client: docker.DockerClient | None = None,
    reporter: Reporter | None = None,
    record_dir: Path | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Write the lock file for profile ``ref``; returns its path and content.

    The versions come from, in order: ``image``; the newest recorded build of the same
    profile hash whose image is still on the engine; else a fresh build.
    """
    import docker as docker_module

    options = options or RenderOptions()
    records = record_dir or RECORD_DIR
    plan_build(None, ref, overrides, options)  # profile errors before the engine
    lockfile.check_lock_target(output or lockfile.default_lock_path(ref), ref)  # before a build
    when, when_from = lockfile.choose_epoch(lockfile.profile_file(ref), epoch)
    with client_session(client) as engine:
        plan, options, facts = plan_build(engine, ref, overrides, options)
        if image is not None:
            try:
                found = engine.images.get(image)
            except docker_module.errors.ImageNotFound:
                raise PublishError(f"no image {image} on this engine to lock from") from None
            image_labels = found.attrs.get("Config", {}).get("Labels") or {}
            hash_label = image_labels.get(labels.PROFILE_HASH)
            if hash_label and hash_label != plan.profile_hash:
                raise PublishError(
                    f"image {image} was built from profile hash {hash_label[:12]}, not "
                    f"{plan.profile_hash[:12]} ({plan.profile_name} as it is now)"
                )
            python, os_packages = inspect_image(engine, found.id)
            image_id = found.id
        else:
            record = next(
                (
                    r
                    for r in recorded_builds(plan.profile_hash, records)
                    if image_identity(engine, r["image_id"])["id"]
                ),
                None,
            )
            if record is None:
                built = build_plan(
                    engine,
                    plan,
                    options,
                    BuildSettings(record_dir=str(records)),
                    facts=facts,
                    reporter=reporter,
                )
                python, os_packages, image_id = (
                    built.python_packages,
                    built.os_packages,
                    built.image_id,
                )
            else:
                python, os_packages = record["python_packages"], record["os_packages"]
                image_id = record["image_id"]
        lock = lockfile.make_lock(
            plan,
            profile=ref,
            python=python,
            os_packages=os_packages,
            base_image=image_identity(engine, plan.base_image),
            runtime_image=image_identity(engine, plan.runtime_image),
            epoch=when,
            epoch_from=when_from,
            image_id=image_id,
            wheelhouse=Path(options.wheelhouse) if options.wheelhouse else None,
        )
    path = output or lockfile.default_lock_path(ref)
    return lockfile.write_lock(lock, path, ref), lock


__all__ = [
    "ImageRequest",
    "ImageResult",
    "PublishSettings",
    "build_image",
    "build_plan",
    "lock_profile",
    "make_image",
    "make_reproducible",
    "normalise_for_push",
    "plan_build",
    "push_image",
    "push_to",
]
