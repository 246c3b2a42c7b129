"""``aibuild push`` as a user runs it (the real CLI in a subprocess, under a 1.5 GiB
address-space limit) against a registry that misbehaves on purpose, and the real engine.

Every test checks the exit code, that an error is one line (progress lines aside) with
no traceback, the wall time, that the password shows nowhere (output or build record),
and that no local tag moved or was left behind. The fake registry
(tests/data/hostile_registry.py) runs in a thread here and records every request."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import runpy
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import docker
import docker.errors
import pytest

from aibuild.labels import REPRODUCIBLE
from aibuild.oci.archive import BlobCache, image_blobs
from aibuild.publish.normalise import normalise_image

# The fake registry (tests are not a package: loaded by path).
hostile = SimpleNamespace(
    **runpy.run_path(str(Path(__file__).parents[1] / "data" / "hostile_registry.py"))
)

MEMORY_LIMIT = 1536 << 20  # RLIMIT_AS of the CLI process
HUGE = 2 << 30  # an answer larger than the CLI's whole address space
BOUND = 3  # --timeout of the silence tests, in seconds
SLACK = 6.0  # start-up of the CLI on a busy 2-core machine, and the last attempt's end
E1, E2 = 1_700_000_000, 1_710_000_000
USER, PASSWORD = "hostile-user", "s3cret-Passw0rd-never-shown"
CREDENTIALS = {"AIBUILD_REGISTRY_USER": USER, "AIBUILD_REGISTRY_PASSWORD": PASSWORD}
_LIMITED = (
    "import resource, runpy, sys; "
    f"resource.setrlimit(resource.RLIMIT_AS, ({MEMORY_LIMIT}, {MEMORY_LIMIT})); "
    "sys.argv = ['aibuild', *sys.argv[1:]]; runpy.run_module('aibuild', run_name='__main__')"
)


@dataclass
class Run:
    rc: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def errors(self) -> list[str]:
        """stderr without progress lines."""
        return [ln for ln in self.stderr.splitlines() if not _progress(ln)]

    def one_line_error(self, *words: str) -> str:
        assert self.rc == 1, self
        assert "Traceback" not in self.stderr, self.stderr
        assert self.stdout == "", self.stdout
        assert len(self.errors) == 1, self.errors
        line = self.errors[0]
        for word in words:
            assert word in line, line
        return line

    def pinned(self) -> str:
        assert self.rc == 0, self.stderr[-3000:]
        assert "Traceback" not in self.stderr, self.stderr
        lines = self.stdout.splitlines()
        assert len(lines) == 1 and "@sha256:" in lines[0], lines
        return lines[0]


def _progress(line: str) -> bool:
    words = ("retrying in", ": pushing", ": pushed", "already exists", "exporting", "compressed")
    starts = ("normalis", "layer ", "digest recorded in", "gzip layers:", "zstd layers:")
    starts += ("export: ", "compress (", "upload: ")  # a meter's closing line
    return (
        any(w in line for w in words)
        or line.startswith(starts)
        or re.match(r"SOURCE_DATE_EPOCH=[0-9]+ \(", line) is not None
    )


@pytest.fixture(scope="module")
def token() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture(scope="module")
def image(
    docker_client: docker.DockerClient,
    base_image: str,
    tmp_path_factory: pytest.TempPathFactory,
    token: str,
) -> Iterator[docker.models.images.Image]:
    """A tiny image FROM the test base with two tags of its own; at the end every image
    tagged with this module's token is removed, and no container of it may remain."""
    context = tmp_path_factory.mktemp("hostile-context")
    (context / "Dockerfile").write_text(
        f"FROM {base_image}\nRUN echo hostile > /opt/hostile && chmod 0644 /opt/hostile\n"
        f'LABEL ai.aibuild.test="{token}"\n'
    )
    built, _ = docker_client.images.build(path=str(context), rm=True, forcerm=True)
    built.tag(f"aibuild-hostile/{token}", "src")
    built.tag(f"aibuild-hostile/{token}-other", "x")
    built.reload()
    yield built
    containers = docker_client.containers.list(all=True, filters={"ancestor": built.id})
    for found in docker_client.images.list():
        for tag in found.tags:
            if token in tag:
                with contextlib.suppress(docker.errors.APIError):
                    docker_client.api.remove_image(tag, force=True)
    with contextlib.suppress(docker.errors.APIError):
        docker_client.api.remove_image(built.id, force=True)
    assert containers == [], "a push left a container behind"


@pytest.fixture(scope="module")
def blob_cache(
    image: docker.models.images.Image,
    docker_client: docker.DockerClient,
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    """A blob cache holding the image's layers: pushes here skip the export."""
    root = tmp_path_factory.mktemp("hostile-cache")
    image_blobs(docker_client, image.id, BlobCache(root))
    return root


@pytest.fixture
def fake() -> Iterator[Any]:
    with hostile.HostileRegistry() as server:
        yield server


@pytest.fixture
def storage(fake: Any) -> Iterator[Any]:
    with hostile.StorageServer(fake, "127.0.0.2") as server:  # another host (on this machine)
        yield server


@pytest.fixture
def aibuild(tmp_path: Path, blob_cache: Path, docker_host: str) -> Any:
    """aibuild(*args, env=..., stdin=..., timeout=...) -> Run: the CLI in a subprocess in
    this test's directory, with no credentials or settings from the machine."""
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AIBUILD_", "SOURCE_DATE_EPOCH", "DOCKER_"))
    }

    def run(
        *args: str,
        env: dict[str, str] | None = None,
        stdin: str | None = None,
        timeout: float = 120,
    ) -> Run:
        full = {
            **clean,
            "DOCKER_HOST": docker_host,
            "DOCKER_CONFIG": str(tmp_path / "docker-config"),
            "AIBUILD_CACHE_DIR": str(blob_cache),
            **(env or {}),
        }
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-c", _LIMITED, *args],
            cwd=tmp_path,
            env=full,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        result = Run(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started)
        assert PASSWORD not in proc.stdout + proc.stderr
        for written in tmp_path.rglob("*"):
            if written.is_file():
                assert PASSWORD.encode() not in written.read_bytes(), written
        return result

    return run


def tags_of(client: docker.DockerClient, image_id: str) -> list[str]:
    return sorted(client.images.get(image_id).tags)


def local_tags_with(client: docker.DockerClient, text: str) -> list[str]:
    return sorted(t for found in client.images.list() for t in found.tags if text in t)


def write_record(directory: Path, image_id: str, content: str | None = None) -> Path:
    """A build record of ``image_id`` (or ``content`` under its name) as ``aibuild image``
    names them, and latest.json."""
    records = directory / ".aibuild" / "builds"
    records.mkdir(parents=True, exist_ok=True)
    path = records / f"hostile-20260101T000000Z-{image_id[7:19]}.json"
    text = content if content is not None else json.dumps({"image_id": image_id, "tags": []})
    path.write_text(text)
    (records / "latest.json").write_text(text)
    return path


# ---------------------------------------------------------------- a good push


def test_a_normal_push_fits_the_limits(
    aibuild: Any, fake: Any, image: Any, tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    fake.mode.auth = "basic"
    record = write_record(tmp_path, image.id)
    result = aibuild(
        "push", image.id, "--to", f"{fake.host}/hostile/ok:v1", "--method", "direct",
        env=CREDENTIALS,
    )  # fmt: skip
    pinned = result.pinned()
    digest = "sha256:" + hashlib.sha256(fake.manifests["v1"]).hexdigest()
    assert pinned == f"{fake.host}/hostile/ok@{digest}"
    assert json.loads(record.read_text())["pushes"][0]["digest"] == digest
    assert fake.authorized("registry")  # the credentials were used, where they belong
    assert tags_of(docker_client, image.id) == sorted(image.tags)
    assert result.seconds < 30


# ------------------------------------------------------------------ credentials


@pytest.mark.parametrize(("auth", "how"), [("basic", "location"), ("bearer", "redirect")])
def test_credentials_go_only_to_the_registry_that_asked(
    aibuild: Any, fake: Any, storage: Any, image: Any, auth: str, how: str
) -> None:
    fake.mode.auth = auth
    if how == "location":
        fake.mode.upload_to = storage.url
    else:
        fake.mode.redirect_put_to = storage.url
    result = aibuild(
        "push", image.id, "--to", f"{fake.host}/hostile/creds:v1", "--method", "direct",
        "--username", USER, "--password-stdin", stdin=f"{PASSWORD}\n",
    )  # fmt: skip
    result.pinned()
    assert [s.method for s in fake.requests_to("storage")] == ["PUT"] * len(storage.blobs)
    assert storage.blobs and fake.authorized("storage") == []
    assert fake.authorized("registry")


# ------------------------------------------------------------------------ time


@pytest.mark.parametrize(
    ("kind", "where", "method"),
    [
        ("silent", "/v2/", "direct"),
        ("silent", "/v2/hostile/slow/blobs/uploads/", "direct"),
        ("silent", "/upload/", "direct"),
        ("silent", "/v2/hostile/slow/manifests/", "direct"),
        ("trickle", "/v2/", "direct"),
        ("silent", "/v2/", "engine"),
    ],
)
def test_an_unresponsive_registry_ends_at_the_time_bound(
    aibuild: Any,
    fake: Any,
    image: Any,
    docker_client: docker.DockerClient,
    kind: str,
    where: str,
    method: str,
) -> None:
    if kind == "silent":
        fake.mode.silent = (where,)
    else:
        fake.mode.trickle, fake.mode.trickle_every = (where,), 0.2
    target = f"{fake.host}/hostile/slow:v1"
    result = aibuild("push", image.id, "--to", target, "--method", method, "--timeout", str(BOUND))
    result.one_line_error(f"within {BOUND} s, the time bound of a push (from --timeout)")
    assert BOUND <= result.seconds < BOUND + SLACK, result.seconds
    assert local_tags_with(docker_client, fake.host) == []


def test_the_time_bound_from_the_environment(aibuild: Any, fake: Any, image: Any) -> None:
    fake.mode.silent = ("/v2/",)
    result = aibuild(
        "push", image.id, "--to", f"{fake.host}/hostile/slow:v1", "--method", "direct",
        env={"AIBUILD_PUSH_TIMEOUT": "2"},
    )  # fmt: skip
    result.one_line_error("within 2 s", "(from $AIBUILD_PUSH_TIMEOUT)")
    assert 2 <= result.seconds < 2 + SLACK


def test_5xx_then_ok_is_ridden_out(aibuild: Any, fake: Any, image: Any) -> None:
    fake.mode.fail = {"/v2/": 2, "/v2/hostile/flaky/blobs/uploads/": 1, "/v2/hostile/flaky/m": 1}
    result = aibuild(
        "push", image.id, "--to", f"{fake.host}/hostile/flaky:v1", "--method", "direct"
    )
    result.pinned()
    assert sum("retrying in" in line for line in result.stderr.splitlines()) == 4
    assert result.seconds < 30


# ---------------------------------------------------------------------- memory


@pytest.mark.parametrize(
    ("path", "status", "auth", "words"),
    [
        ("/v2/", 500, None, ("failed after 2 attempts", "cut at 4 MiB")),
        ("/v2/hostile/big/blobs/uploads/", 400, None, ("HTTP 400", "cut at 4 MiB")),
        ("/upload/", 400, None, ("HTTP 400", "cut at 4 MiB")),
        ("/v2/hostile/big/manifests/", 400, None, ("HTTP 400", "cut at 4 MiB")),
        ("/token", 200, "bearer", ("answered with more than 4 MiB",)),
    ],
)
def test_a_huge_answer_is_cut(
    aibuild: Any,
    fake: Any,
    image: Any,
    path: str,
    status: int,
    auth: str | None,
    words: tuple[str, ...],
) -> None:
    fake.mode.auth = auth
    fake.mode.huge = {path: (status, HUGE)}
    result = aibuild(
        "push", image.id, "--to", f"{fake.host}/hostile/big:v1", "--method", "direct",
        "--retries", "2", env=CREDENTIALS,
    )  # fmt: skip
    result.one_line_error(*words)
    assert result.seconds < 30


# ------------------------------------------------------------ references and tags


@pytest.mark.parametrize("method", ["engine", "direct"])
@pytest.mark.parametrize(
    "suffix", ["x/y:1?x=1#y", "x/y:1#y", "x/Y:1", "x/y:é", "x/y:1 2", "x//y:1", "x/y@sha256:12"]
)
def test_a_bad_target_exits_1_and_tags_nothing(
    aibuild: Any, image: Any, docker_client: docker.DockerClient, method: str, suffix: str
) -> None:
    before = tags_of(docker_client, image.id)
    result = aibuild("push", image.id, "--to", f"127.0.0.1:5000/{suffix}", "--method", method)
    result.one_line_error("not an image reference")
    assert tags_of(docker_client, image.id) == before
    assert result.seconds < 20


@pytest.mark.parametrize("method", ["engine", "direct"])
def test_a_failed_push_leaves_no_new_tag_and_moves_none(
    aibuild: Any,
    fake: Any,
    image: Any,
    docker_client: docker.DockerClient,
    base_image: str,
    token: str,
    method: str,
) -> None:
    fake.mode.auth = "basic"  # and no credentials given: refused at once
    before = tags_of(docker_client, image.id)
    new = f"{fake.host}/hostile/{token}:new"
    taken = f"{fake.host}/hostile/{token}:taken"  # already names the base image
    docker_client.images.get(base_image).tag(taken)
    base_id = docker_client.images.get(base_image).id
    try:
        for target in (new, taken):
            result = aibuild("push", image.id, "--to", target, "--method", method)
            result.one_line_error()
            assert result.seconds < 30
        assert tags_of(docker_client, image.id) == before
        assert local_tags_with(docker_client, fake.host) == [taken]
        assert docker_client.images.get(taken).id == base_id
    finally:
        docker_client.api.remove_image(taken)


def test_an_engine_push_moves_no_existing_tag(
    aibuild: Any,
    registry: Any,
    image: Any,
    docker_client: docker.DockerClient,
    base_image: str,
    token: str,
) -> None:
    """A target tag that named another image names it again after the push; a new one
    stays on the pushed image (it names what was pushed)."""
    taken = registry.repo(f"hostile/{token}:taken")
    new = registry.repo(f"hostile/{token}:new")
    docker_client.images.get(base_image).tag(taken)
    base_id = docker_client.images.get(base_image).id
    try:
        for target in (taken, new):
            pinned = aibuild("push", image.id, "--to", target, "--method", "engine").pinned()
            digest = pinned.rpartition("@")[2]
            assert registry.manifest_digest(f"hostile/{token}", target.rpartition(":")[2]) == digest
        assert docker_client.images.get(taken).id == base_id
        assert docker_client.images.get(new).id == image.id
    finally:
        docker_client.api.remove_image(taken)


# --------------------------------------------------------- push --reproducible


def test_push_reproducible_leaves_the_source_and_its_tags_alone(
    aibuild: Any,
    registry: Any,
    image: Any,
    docker_client: docker.DockerClient,
    base_image: str,
    token: str,
) -> None:
    source_tags = tags_of(docker_client, image.id)
    src = f"aibuild-hostile/{token}:src"

    def push(name: str, tag: str, *extra: str) -> Run:
        return aibuild(
            "push", name, "--to", registry.repo(f"hostile/{token}:{tag}"), "--reproducible",
            "--base-image", base_image, "--json", *extra,
        )  # fmt: skip

    first = push(src, "e1", "--source-date-epoch", str(E1))
    assert first.rc == 0, first.stderr
    n1 = json.loads(first.stdout)[0]
    second = push(src, "e2", "--source-date-epoch", str(E2))
    assert second.rc == 0, second.stderr
    n2 = json.loads(second.stdout)[0]

    # The source and every one of its tags are exactly as they were.
    assert tags_of(docker_client, image.id) == source_tags
    for tag in source_tags:
        assert docker_client.images.get(tag).id == image.id
    # Each normalised copy has a tag of its own that says what it is.
    assert tags_of(docker_client, n1["image_id"]) == [f"{src}-reproducible-{E1}"]
    assert tags_of(docker_client, n2["image_id"]) == [f"{src}-reproducible-{E2}"]
    labels = docker_client.images.get(n2["image_id"]).attrs["Config"]["Labels"]
    assert labels[REPRODUCIBLE] == str(E2)
    # The second started from the source, not from the first's output.
    direct = normalise_image(docker_client, image.id, source_date_epoch=E2, base=base_image)
    assert direct.image_id == n2["image_id"]
    assert registry.manifest_digest(f"hostile/{token}", "e2") == n2["digest"]

    # A normalised image given as the source: pushed as it is, or refused with another epoch.
    again = push(f"{src}-reproducible-{E1}", "again")
    assert again.rc == 0, again.stderr
    assert json.loads(again.stdout)[0]["digest"] == n1["digest"]
    assert "already normalised" in again.stderr
    refused = push(f"{src}-reproducible-{E1}", "refused", "--source-date-epoch", str(E2))
    refused.one_line_error("already a normalised image", f"SOURCE_DATE_EPOCH={E1}")
    assert tags_of(docker_client, image.id) == source_tags


def test_push_reproducible_by_the_engine_under_the_source_name(
    aibuild: Any,
    registry: Any,
    image: Any,
    docker_client: docker.DockerClient,
    base_image: str,
    token: str,
) -> None:
    own = registry.repo(f"hostile/{token}:own")
    image.tag(own)
    try:
        result = aibuild(
            "push", own, "--reproducible", "--method", "engine", "--base-image", base_image,
            "--source-date-epoch", str(E1),
        )  # fmt: skip
        digest = result.pinned().rpartition("@")[2]
        assert registry.manifest_digest(f"hostile/{token}", "own") == digest
        assert docker_client.images.get(own).id == image.id  # the source keeps its tag
        normalised = docker_client.images.get(f"{own}-reproducible-{E1}")
        assert normalised.attrs["Config"]["Labels"][REPRODUCIBLE] == str(E1)
    finally:
        docker_client.api.remove_image(own)


@pytest.mark.parametrize("value", ["banana", "-1", "99999999999999"])
def test_a_bad_source_date_epoch_is_one_line(aibuild: Any, image: Any, value: str) -> None:
    result = aibuild(
        "push", image.id, "--to", "127.0.0.1:5000/hostile/epoch:v1", "--reproducible",
        env={"SOURCE_DATE_EPOCH": value},
    )  # fmt: skip
    result.one_line_error("SOURCE_DATE_EPOCH=", "is not a usable")
    assert result.seconds < 20


# -------------------------------------------------------------- build records


@contextlib.contextmanager
def immutable(path: Path) -> Iterator[None]:
    """``path`` unwritable even for root (chattr +i), as a read-only record directory."""
    subprocess.run(["chattr", "+i", str(path)], check=True)
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


@pytest.mark.parametrize("case", ["corrupt latest.json", "corrupt record", "unwritable"])
@pytest.mark.parametrize("quiet", [False, True])
def test_a_broken_build_record_is_one_warning_after_the_digest(
    aibuild: Any, fake: Any, image: Any, tmp_path: Path, case: str, quiet: bool
) -> None:
    record = write_record(tmp_path, image.id)
    latest = record.with_name("latest.json")
    if case == "corrupt latest.json":
        latest.write_text('{"image_id": "sha256:')
    elif case == "corrupt record":
        record.write_text("\x00garbage")
    args = ["push", image.id, "--to", f"{fake.host}/hostile/rec:v1", "--method", "direct"]
    with immutable(record.parent) if case == "unwritable" else contextlib.nullcontext():
        result = aibuild(*args, *(["-q"] if quiet else []))
    pinned = result.pinned()
    warnings = [ln for ln in result.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1, result.stderr
    assert {
        "corrupt latest.json": "latest.json is unreadable",
        "corrupt record": "is unreadable; the digest was not recorded",
        "unwritable": "could not be updated",
    }[case] in warnings[0]
    if case == "corrupt latest.json":
        assert json.loads(record.read_text())["pushes"][0]["pinned"] == pinned
        assert latest.read_text() == '{"image_id": "sha256:'
    if quiet:
        assert result.stderr.strip() == warnings[0]
