"""The registry client against a registry that misbehaves on purpose (no Docker): where
credentials go, how long a push may take, how much of an answer is read; and the
checks on what the user gives (image references, SOURCE_DATE_EPOCH, the time bound).

The fake registry (tests/data/hostile_registry.py) runs in a thread on this machine
and records every request, with its Authorization header."""

from __future__ import annotations

import hashlib
import re
import runpy
import string
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aibuild.errors import PublishError
from aibuild.oci import registry as registry_module
from aibuild.oci.credentials import Credentials
from aibuild.oci.media import EPOCH_MAX, rfc3339
from aibuild.oci.reference import DOCKER_HUB, NAME_MAX, ReferenceError, parse_reference
from aibuild.oci.registry import (
    RESPONSE_LIMIT,
    Deadline,
    RegistryClient,
    RetryPolicy,
    TimeBound,
    may_carry_secret,
    push_time_bound,
)
from aibuild.publish.lock import choose_epoch, explicit_epoch, read_lock
from aibuild.publish.normalise import normalised_epoch, normalised_tag
from tests.unit.conftest import run_cli

# The fake registry (tests are not a package: loaded by path).
hostile = SimpleNamespace(
    **runpy.run_path(str(Path(__file__).parents[1] / "data" / "hostile_registry.py"))
)

REPO = "team/img"
USER, PASSWORD = "hostile-user", "s3cret-Passw0rd-never-shown"


@pytest.fixture
def fake() -> Iterator[Any]:
    with hostile.HostileRegistry() as server:
        yield server


@pytest.fixture
def storage(fake: Any) -> Iterator[Any]:
    """Blob storage on another host (127.0.0.2: loopback, but another origin)."""
    with hostile.StorageServer(fake, "127.0.0.2") as server:
        yield server


def client_for(
    host: str,
    *,
    creds: bool = True,
    bound: float = 30.0,
    attempts: int = 3,
    insecure: bool | None = None,
    sleep: Any = None,
) -> RegistryClient:
    return RegistryClient(
        host,
        REPO,
        Credentials(USER, PASSWORD, "test") if creds else None,
        insecure=insecure,
        retry=RetryPolicy(attempts=attempts, initial=0.05, max_delay=0.2),
        deadline=Deadline(TimeBound(bound, "--timeout")),
        sleep=sleep or time.sleep,
    )


def push_one_blob(client: RegistryClient, data: bytes = b"layer bytes") -> str:
    """The direct push's protocol for one blob and a manifest; returns the blob digest."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    client.authenticate()
    assert not client.has_blob(digest)
    client.upload_blob(digest, data)
    assert client.has_blob(digest)
    client.put_manifest("v1", b'{"schemaVersion":2}', "application/json")
    return digest


# ------------------------------------------------------------- credentials


@pytest.mark.parametrize("auth", ["basic", "bearer"])
@pytest.mark.parametrize("how", ["location", "redirect"])
def test_upload_on_another_host_gets_no_credentials(
    fake: Any, storage: Any, auth: str, how: str
) -> None:
    fake.mode.auth = auth
    if how == "location":
        fake.mode.upload_to = storage.url  # the upload session lives on blob storage
    else:
        fake.mode.redirect_put_to = storage.url  # the registry redirects the upload PUT
    digest = push_one_blob(client_for(fake.host))
    assert digest in storage.blobs
    to_storage = fake.requests_to("storage")
    assert [s.method for s in to_storage] == ["PUT"]
    assert fake.authorized("storage") == []
    # The registry itself did get them (so the test can tell the difference).
    scheme = "Basic" if auth == "basic" else "Bearer"
    api = [s for s in fake.requests_to("registry") if s.path.startswith(f"/v2/{REPO}")]
    assert api and all((s.authorization or "").startswith(scheme) for s in api)


def test_upload_on_another_port_of_the_same_host_gets_no_credentials(fake: Any) -> None:
    other = hostile.StorageServer(fake, "127.0.0.1")
    try:
        fake.mode.auth = "basic"
        fake.mode.upload_to = other.url
        push_one_blob(client_for(fake.host))
        assert fake.requests_to("storage") and fake.authorized("storage") == []
    finally:
        other.stop()


def test_a_bearer_token_goes_only_to_the_registry_and_the_password_only_to_the_realm(
    fake: Any, storage: Any
) -> None:
    fake.mode.auth = "bearer"
    fake.mode.upload_to = storage.url
    push_one_blob(client_for(fake.host))
    for seen in fake.authorized():
        if seen.path.startswith("/token"):
            assert seen.authorization.startswith("Basic ")
        else:
            assert seen.authorization == f"Bearer {fake.mode.token}"
            assert seen.server == "registry"


def test_no_password_over_plain_http_to_another_machine() -> None:
    address = hostile.non_loopback_address()
    server = hostile.HostileRegistry(address)
    try:
        server.mode.auth = "basic"
        client = client_for(server.host, insecure=True)
        with pytest.raises(PublishError, match="only over HTTPS"):
            client.authenticate()
        assert server.seen and server.authorized() == []
    finally:
        server.stop()


def test_no_password_to_a_plain_http_token_service_on_another_machine(fake: Any) -> None:
    realm = hostile.HostileRegistry(hostile.non_loopback_address())
    try:
        fake.mode.auth = "bearer"
        fake.mode.realm = f"{realm.url}/token"
        with pytest.raises(PublishError, match="only over HTTPS"):
            client_for(fake.host).authenticate()
        assert realm.seen == [] and fake.authorized() == []
    finally:
        realm.stop()


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://registry.example.com/v2/", True),
        ("http://127.0.0.1:5000/v2/", True),
        ("http://localhost/v2/", True),
        ("http://[::1]:5000/v2/", True),
        ("http://registry.example.com/v2/", False),
        ("http://10.0.0.1:5000/v2/", False),
        ("ftp://127.0.0.1/x", False),
    ],
)
def test_may_carry_secret(url: str, ok: bool) -> None:
    assert may_carry_secret(url) is ok


# ------------------------------------------------------------------- time


SILENT_AT = {
    "ping": "/v2/",
    "blob check": f"/v2/{REPO}/blobs/sha256",
    "upload session": f"/v2/{REPO}/blobs/uploads/",
    "upload": "/upload/",
    "manifest": f"/v2/{REPO}/manifests/",
}


@pytest.mark.parametrize("kind", ["silent", "trickle"])
@pytest.mark.parametrize("where", list(SILENT_AT))
def test_an_unresponsive_registry_is_given_up_at_the_time_bound(
    fake: Any, kind: str, where: str
) -> None:
    """Silence (accepted, never answered) or a trickle (a byte every 0.2 s, which no read
    timeout catches) at any step of a push ends at the push's time bound, and the error
    says what the bound was."""
    path = SILENT_AT[where]
    if kind == "silent":
        fake.mode.silent = (path,)
    else:
        fake.mode.trickle, fake.mode.trickle_every = (path,), 0.2
    started = time.monotonic()
    with pytest.raises(PublishError) as caught:
        push_one_blob(client_for(fake.host, creds=False, bound=1.0, attempts=8))
    took = time.monotonic() - started
    assert 1.0 <= took < 1.0 + 1.5, took
    message = str(caught.value)
    assert "within 1 s, the time bound of a push (from --timeout)" in message
    assert "\n" not in message


def test_a_stalled_request_is_retried_after_the_read_timeout(
    fake: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry_module, "READ_TIMEOUT", 0.3)
    fake.mode.silent = ("/v2/",)
    lines: list[str] = []
    client = client_for(fake.host, creds=False, attempts=2)
    client.log = lines.append
    started = time.monotonic()
    with pytest.raises(PublishError, match=r"failed after 2 attempts.*no answer within 0.3 s"):
        client.authenticate()
    assert time.monotonic() - started < 2.0
    assert len(lines) == 1 and "retrying in" in lines[0]


def test_a_trickling_request_is_cut_at_the_request_limit(
    fake: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry_module, "REQUEST_LIMIT", 0.5)
    fake.mode.trickle, fake.mode.trickle_every = ("/v2/",), 0.1
    started = time.monotonic()
    with pytest.raises(PublishError, match=r"failed after 2 attempts.*no whole answer within 0.5"):
        client_for(fake.host, creds=False, attempts=2).authenticate()
    assert time.monotonic() - started < 2.5


def test_backoff_never_sleeps_past_the_time_bound(fake: Any) -> None:
    fake.mode.fail = {"/v2/": 10**6}
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    client = RegistryClient(
        fake.host,
        REPO,
        retry=RetryPolicy(attempts=100, initial=1, max_delay=4),
        deadline=Deadline(TimeBound(20.0, "--timeout"), clock=lambda: now[0]),
        sleep=sleep,
    )
    with pytest.raises(PublishError, match=r"within 20 s, the time bound.*HTTP 503"):
        client.authenticate()
    assert sum(slept) <= 20 and slept == [1, 2, 4, 4, 4, 4]


def test_5xx_then_ok_is_ridden_out(fake: Any) -> None:
    fake.mode.fail = {"/v2/": 2, f"/v2/{REPO}/blobs/uploads/": 1, "/upload/": 1}
    push_one_blob(client_for(fake.host, creds=False, attempts=4))
    assert fake.manifests == {"v1": b'{"schemaVersion":2}'}


@pytest.mark.parametrize(
    ("value", "ok"),
    [("", None), ("120", 120.0), (" 2.5 ", 2.5), ("604800", 604800.0)],
)
def test_push_time_bound_from_the_environment(value: str, ok: float | None) -> None:
    bound = push_time_bound(environ={"AIBUILD_PUSH_TIMEOUT": value})
    assert bound.seconds == (ok or registry_module.PUSH_TIMEOUT)
    assert bound.source == ("$AIBUILD_PUSH_TIMEOUT" if ok else "the default")


@pytest.mark.parametrize("value", ["banana", "0", "-5", "nan", "inf", "1e9", "9" * 400])
def test_a_bad_push_time_bound_is_an_error_naming_its_source(value: str) -> None:
    with pytest.raises(PublishError, match=r"^AIBUILD_PUSH_TIMEOUT=.* is not a push time bound"):
        push_time_bound(environ={"AIBUILD_PUSH_TIMEOUT": value})
    with pytest.raises(PublishError, match=r"^--timeout=.* is not a push time bound"):
        push_time_bound(-1.0)


# ----------------------------------------------------------------- memory

HUGE = 1 << 30  # 1 GiB announced and streamed: read whole, it would show in the peak


def _peak(action: Any) -> tuple[int, BaseException | None]:
    tracemalloc.start()
    error: BaseException | None = None
    try:
        action()
    except PublishError as exc:
        error = exc
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak, error


@pytest.mark.parametrize(
    ("path", "status", "auth", "expect"),
    [
        ("/v2/", 500, None, "cut at 4 MiB"),
        (f"/v2/{REPO}/blobs/uploads/", 400, None, "cut at 4 MiB"),
        ("/upload/", 400, None, "cut at 4 MiB"),
        (f"/v2/{REPO}/manifests/", 400, None, "cut at 4 MiB"),
        ("/token", 200, "bearer", "answered with more than 4 MiB"),
        ("/token", 401, "bearer", "cut at 4 MiB"),
    ],
)
def test_a_huge_answer_is_not_read_whole(
    fake: Any, path: str, status: int, auth: str | None, expect: str
) -> None:
    fake.mode.auth = auth
    fake.mode.huge = {path: (status, HUGE)}
    client = client_for(fake.host, attempts=2)
    peak, error = _peak(lambda: push_one_blob(client))
    assert error is not None and expect in str(error), error
    assert "\n" not in str(error)
    assert peak < 6 * RESPONSE_LIMIT, peak


def test_a_huge_answer_to_a_successful_upload_is_not_read_whole(fake: Any) -> None:
    fake.mode.huge = {f"/v2/{REPO}/manifests/": (201, HUGE)}
    client = client_for(fake.host)
    peak, error = _peak(lambda: push_one_blob(client))
    assert error is None and peak < 6 * RESPONSE_LIMIT


def test_a_registry_message_cannot_add_lines(fake: Any) -> None:
    fake.mode.fail = {}
    fake.mode.huge = {}
    body = b'{"errors":[{"code":"DENIED","message":"no\\nerror: fake second line"}]}'

    class Once(hostile.HostileRegistry):  # type: ignore[misc]
        def answer(self, handler: Any) -> None:
            handler.send(400, body=body)

    server = Once()
    try:
        with pytest.raises(PublishError) as caught:
            client_for(server.host, creds=False).authenticate()
        assert "\n" not in str(caught.value) and "fake second line" in str(caught.value)
    finally:
        server.stop()


# ------------------------------------------------------------- references

_COMPONENT = st.from_regex(r"[a-z0-9]{1,6}(?:(?:\.|_|__|-{1,3})[a-z0-9]{1,6}){0,2}", fullmatch=True)
_HOST = st.one_of(
    st.from_regex(r"[a-z0-9]{1,8}(?:\.[a-z0-9]{1,8}){1,2}", fullmatch=True),
    st.just("localhost"),
    st.from_regex(r"127\.0\.0\.[0-9]{1,3}", fullmatch=True),
)
_PORT = st.integers(1, 65535).map(lambda p: f":{p}")
_TAG = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,40}", fullmatch=True)
_DIGEST = st.from_regex(r"sha256:[0-9a-f]{64}", fullmatch=True)


@st.composite
def references(draw: Any) -> str:
    """A canonical reference (one that prints back as written): a registry, a path that
    is not Docker Hub's, an optional tag and digest."""
    host = draw(_HOST) + draw(st.one_of(st.just(""), _PORT))
    path = "/".join(draw(st.lists(_COMPONENT, min_size=1, max_size=3)))
    text = f"{host}/{path}"
    if draw(st.booleans()):
        text += ":" + draw(_TAG)
    if draw(st.booleans()):
        text += "@" + draw(_DIGEST)
    return text


def _canonical(host: str) -> bool:
    return host not in ("docker.io", "index.docker.io", "registry-1.docker.io")


@settings(max_examples=300, deadline=None)
@given(references())
def test_valid_references_round_trip(text: str) -> None:
    if not _canonical(text.split("/")[0]) or len(text.split(":")[0]) > NAME_MAX:
        return
    ref = parse_reference(text, default_tag=None)
    assert str(ref) == text
    assert parse_reference(str(ref), default_tag=None) == ref


@settings(max_examples=200, deadline=None)
@given(references(), st.sampled_from(["registry", "path", "tag", "digest"]), st.data())
def test_illegal_characters_in_any_part_are_refused(text: str, part: str, data: Any) -> None:
    ref = parse_reference(text, default_tag=None)
    legal = {
        "registry": string.ascii_letters + string.digits + ".-/",
        "path": string.ascii_lowercase + string.digits + "._-/",
        "tag": string.ascii_letters + string.digits + "_.-",
        "digest": string.hexdigits,
    }[part]
    bad = data.draw(st.characters(blacklist_categories=("Cs",), blacklist_characters=legal))
    registry, path = ref.registry, ref.repository
    tag, digest = ref.tag or "t", ref.digest or "sha256:" + "a" * 64
    if part == "registry":
        registry = registry.split(":")[0] + bad + "x"
        if _hub_path_component(registry):
            # Docker's rule: a first part without '.' or ':' that is not 'localhost' is no
            # registry but the first part of a Docker Hub path ('localhost_x/0'), which a
            # character legal in paths leaves valid.
            mangled = f"{registry}/{path}:{tag}@{digest}"
            assert parse_reference(mangled).registry == DOCKER_HUB
            return
    elif part == "path":
        path = path + bad + "x"
    elif part == "tag":
        tag = tag + bad
    else:
        digest = digest + bad
    mangled = f"{registry}/{path}:{tag}@{digest}"
    with pytest.raises(ReferenceError, match="not an image reference"):
        parse_reference(mangled)


def _hub_path_component(first: str) -> bool:
    """Whether ``first`` (the part before the first '/') is a Docker Hub path component
    rather than a registry: no '.' or ':', not 'localhost', only path characters."""
    return (
        not any(c in first for c in ".:")
        and first != "localhost"
        and re.fullmatch(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*", first) is not None
    )


def test_a_first_part_that_is_no_registry_is_a_docker_hub_path() -> None:
    """Hypothesis's failing example for the property above ('localhost' with '_' inserted):
    ``localhost_x/0`` is the Docker Hub repository ``localhost_x/0``, not a registry."""
    ref = parse_reference("localhost_x/0:t@sha256:" + "a" * 64)
    assert (ref.registry, ref.repository, ref.tag) == (DOCKER_HUB, "localhost_x/0", "t")
    assert _hub_path_component("localhost_x") and not _hub_path_component("localhost")
    with pytest.raises(ReferenceError, match="not an image reference"):
        parse_reference("localhost+x/0:t")


@pytest.mark.parametrize(
    "text",
    [
        "127.0.0.1:5000/x/y:1?x=1#y",
        "127.0.0.1:5000/x/y:é",
        "127.0.0.1:5000/x/y:1\n",
        "127.0.0.1:5000/X/y:1",
        "127.0.0.1:99999/x:1",
        "127.0.0.1:0/x:1",
        "127.0.0.1:5000/x//y:1",
        "127.0.0.1:5000/x/y:" + "a" * 129,
        "127.0.0.1:5000/x/y@sha256:" + "A" * 64,
        "127.0.0.1:5000/" + "a" * 256,
    ],
)
def test_refused_references(text: str) -> None:
    with pytest.raises(ReferenceError, match="not an image reference"):
        parse_reference(text)


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 400))
def test_the_name_length_limit(extra: int) -> None:
    name = "127.0.0.1:5000/" + "a" * (NAME_MAX - len("127.0.0.1:5000/"))
    assert parse_reference(name).name == name
    with pytest.raises(ReferenceError, match=f"longer than {NAME_MAX}"):
        parse_reference(name + "a" * extra)


@pytest.mark.parametrize(
    "target",
    ["127.0.0.1:5000/x/y:1?x=1#y", "127.0.0.1:5000/x/y:1 2", "127.0.0.1:5000/Up:1", "x:1"],
)
def test_a_bad_push_target_is_one_line_before_the_engine(target: str) -> None:
    result = run_cli(["push", "img", "--to", target])
    assert result.exit_code == 1, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert "Traceback" not in result.output


# ---------------------------------------------------------- SOURCE_DATE_EPOCH


@pytest.mark.parametrize(
    "value", ["banana", "-1", "1e9", "1.5", " 12 34", "٣", str(EPOCH_MAX + 1), "9" * 5000]
)
def test_a_bad_source_date_epoch_variable_is_an_error_naming_it(value: str) -> None:
    with pytest.raises(PublishError, match=r"^SOURCE_DATE_EPOCH=.* is not a usable"):
        choose_epoch(None, environ={"SOURCE_DATE_EPOCH": value})


@pytest.mark.parametrize("value", [-1, EPOCH_MAX + 1, 10**30])
def test_an_absurd_source_date_epoch_option_is_an_error(value: int) -> None:
    with pytest.raises(PublishError, match=r"^--source-date-epoch .* is not a usable"):
        choose_epoch(None, value, environ={})


def test_source_date_epoch_edges() -> None:
    assert choose_epoch(None, environ={"SOURCE_DATE_EPOCH": str(EPOCH_MAX)})[0] == EPOCH_MAX
    assert choose_epoch(None, 0, environ={"SOURCE_DATE_EPOCH": "banana"}) == (
        0,
        "--source-date-epoch",
    )
    assert explicit_epoch(None, {"SOURCE_DATE_EPOCH": "  "}) is None  # empty: unset
    assert rfc3339(EPOCH_MAX) == "9999-12-31T23:59:59Z"


@pytest.mark.parametrize(
    ("args", "env", "name"),
    [
        (["push", "img", "--reproducible"], {"SOURCE_DATE_EPOCH": "banana"}, "SOURCE_DATE_EPOCH"),
        (["push", "img", "--reproducible", "--source-date-epoch", "-5"], {}, "--source-date-epoch"),
        (
            ["push", "img", "--reproducible", "--source-date-epoch", "999999999999"],
            {},
            "--source-date-epoch",
        ),
        (["lock", "cpu"], {"SOURCE_DATE_EPOCH": "-3"}, "SOURCE_DATE_EPOCH"),
        (["push", "img"], {"AIBUILD_PUSH_TIMEOUT": "soon"}, "AIBUILD_PUSH_TIMEOUT"),
        (["push", "img", "--timeout", "0"], {}, "--timeout"),
    ],
)
def test_bad_values_exit_1_with_one_line_naming_them(
    args: list[str], env: dict[str, str], name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/never-reached.sock")
    result = run_cli(args, env=env)
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(name), lines
    assert not list(tmp_path.iterdir())


def test_a_lock_file_with_an_absurd_epoch_is_refused(tmp_path: Path) -> None:
    lock = tmp_path / "p.lock.json"
    base = '"aibuild_lock": 1, "profile": {}, "python": [], "os": [], "base_image": {}'
    for epoch, why in (('"banana"', "not a whole number"), ("-4", "not a usable")):
        lock.write_text(f'{{{base}, "source_date_epoch": {epoch}}}')
        with pytest.raises(PublishError, match=why):
            read_lock(lock)


# ------------------------------------------------------- normalised images


def test_normalised_epoch_needs_the_label_and_the_creation_time() -> None:
    labelled = {"Config": {"Labels": {"ai.aibuild.reproducible": "1700000000"}}}
    assert normalised_epoch({**labelled, "Created": "2023-11-14T22:13:20Z"}) == 1700000000
    # Built FROM a normalised image: the label is inherited, the time is not.
    assert normalised_epoch({**labelled, "Created": "2026-01-01T10:00:00.123Z"}) is None
    assert normalised_epoch({"Config": {"Labels": None}, "Created": "x"}) is None
    absurd = {"Config": {"Labels": {"ai.aibuild.reproducible": "9" * 30}}, "Created": ""}
    assert normalised_epoch(absurd) is None


@pytest.mark.parametrize(
    ("image", "tags", "expect"),
    [
        ("reg.example.com/a/b:v1", ["reg.example.com/a/b:v1", "other:x"],
         "reg.example.com/a/b:v1-reproducible-7"),
        ("myimg", ["myimg:latest"], "myimg:latest-reproducible-7"),
        ("sha256:" + "ab" * 32, ["z/z:2", "a/a:1"], "a/a:1-reproducible-7"),
        ("sha256:" + "ab" * 32, [], "aibuild/reproducible:abababababab-7"),
        ("r.io/x:" + "t" * 128, ["r.io/x:" + "t" * 128], "r.io/x:" + "t" * 113 + "-reproducible-7"),
    ],
)  # fmt: skip
def test_normalised_tag_says_what_it_is(image: str, tags: list[str], expect: str) -> None:
    tag = normalised_tag(image, tags, "sha256:" + "ab" * 32, 7)
    assert tag == expect
    assert str(parse_reference(tag)) == tag
    assert re.fullmatch(r".*:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", tag)


# ------------------------------------------------------------- uploads as blobs get ready


def _blob(tmp_path: Path, data: bytes) -> Any:
    from aibuild.oci.archive import Blob

    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = tmp_path / digest.removeprefix("sha256:")
    path.write_bytes(data)
    return Blob(digest, len(data), "application/octet-stream", path)


def test_uploader_sends_each_blob_once_as_it_is_handed_in(fake: Any, tmp_path: Path) -> None:
    from aibuild.publish.upload import Uploader

    first, second = _blob(tmp_path, b"first layer"), _blob(tmp_path, b"second layer")
    lines: list[str] = []
    uploader = Uploader(lambda: client_for(fake.host), workers=2, log=lines.append)
    uploader.submit(first, "layer 1/2")
    uploader.submit(first, "layer 1/2")  # the same layer twice in an image: sent once
    uploader.submit(second, "layer 2/2")
    counts = uploader.finish()
    assert (counts.pushed, counts.existing, counts.bytes_sent) == (2, 0, 23)
    puts = [s for s in fake.seen if s.method == "PUT" and s.path.startswith("/upload/")]
    assert len(puts) == 2
    assert any("pushing layer 2/2" in line for line in lines)
    again = Uploader(lambda: client_for(fake.host), log=lines.append)
    again.submit(second)
    assert again.finish().existing == 1


def test_uploader_failure_ends_the_push_at_the_next_blob(fake: Any, tmp_path: Path) -> None:
    """A blob the registry refuses ends the upload: the next ``submit`` (what the export
    calls as each layer is compressed) raises it, so the export stops there."""
    from aibuild.publish.upload import Uploader

    fake.mode.fail = {f"/v2/{REPO}/blobs/uploads/": 10**6}
    uploader = Uploader(lambda: client_for(fake.host, attempts=1), workers=1)
    uploader.submit(_blob(tmp_path, b"refused"))
    deadline = time.monotonic() + 20
    with pytest.raises(PublishError, match="503"):
        while time.monotonic() < deadline:
            uploader.submit(_blob(tmp_path, f"later {time.monotonic()}".encode()))
            time.sleep(0.05)
    with pytest.raises(PublishError):
        uploader.finish()
