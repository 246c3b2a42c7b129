"""The registry client without Docker: references, credentials, auth challenges, and
retry/backoff against a tiny stdlib HTTP server on 127.0.0.1."""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import os
import socket
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from aibuild.errors import PublishError
from aibuild.oci.archive import Blob, manifest_bytes
from aibuild.oci.credentials import Credentials, resolve_credentials
from aibuild.oci.reference import parse_reference
from aibuild.oci.registry import RegistryClient, RetryPolicy, parse_challenge

# ------------------------------------------------------------------- references


@pytest.mark.parametrize(
    ("ref", "registry", "repository", "tag"),
    [
        ("ubuntu", "docker.io", "library/ubuntu", "latest"),
        ("team/train:v1", "docker.io", "team/train", "v1"),
        ("127.0.0.1:5000/a/b", "127.0.0.1:5000", "a/b", "latest"),
        ("localhost/x:y", "localhost", "x", "y"),
        (
            "registry.example.com/team/train:gpu-a100",
            "registry.example.com",
            "team/train",
            "gpu-a100",
        ),
        ("index.docker.io/library/debian:12", "docker.io", "library/debian", "12"),
    ],
)
def test_parse_reference(ref: str, registry: str, repository: str, tag: str) -> None:
    parsed = parse_reference(ref)
    assert (parsed.registry, parsed.repository, parsed.tag) == (registry, repository, tag)


def test_parse_reference_with_digest_and_name() -> None:
    digest = "sha256:" + "a" * 64
    parsed = parse_reference(f"127.0.0.1:5000/a@{digest}")
    assert parsed.digest == digest and parsed.tag is None
    assert parse_reference("ubuntu:22.04").name == "ubuntu"
    assert str(parse_reference("127.0.0.1:5000/a:b")) == "127.0.0.1:5000/a:b"


@pytest.mark.parametrize("bad", ["", "a b", "Upper/Case:x"])
def test_parse_reference_rejects(bad: str) -> None:
    with pytest.raises(PublishError, match="not an image reference"):
        parse_reference(bad)


def test_parse_challenge() -> None:
    scheme, params = parse_challenge(
        'Bearer realm="https://auth.example.com/token",service="registry",scope="repository:a:pull"'
    )
    assert scheme == "bearer"
    assert params == {
        "realm": "https://auth.example.com/token",
        "service": "registry",
        "scope": "repository:a:pull",
    }
    assert parse_challenge('Basic realm="x"') == ("basic", {"realm": "x"})


def test_manifest_is_canonical() -> None:
    config = Blob(
        "sha256:" + "c" * 64, 10, "application/vnd.docker.container.image.v1+json", Path("c")
    )
    layer = Blob(
        "sha256:" + "1" * 64, 20, "application/vnd.docker.image.rootfs.diff.tar.gzip", Path("l")
    )
    data = manifest_bytes(config, [layer])
    assert data == manifest_bytes(config, [layer])
    assert b" " not in data
    assert list(json.loads(data)) == ["schemaVersion", "mediaType", "config", "layers"]


# ------------------------------------------------------------------ credentials


def test_credentials_order_explicit_env_config(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    auth = base64.b64encode(b"cfg-user:cfg-pass").decode()
    config.write_text(json.dumps({"auths": {"reg.example.com": {"auth": auth}}}))
    env = {"AIBUILD_REGISTRY_USER": "env-user", "AIBUILD_REGISTRY_PASSWORD": "env-pass"}
    explicit = resolve_credentials(
        "reg.example.com", username="me", password="pw", environ=env, config_path=config
    )
    assert explicit == Credentials("me", "pw", "--username/--password-stdin")
    from_env = resolve_credentials("reg.example.com", environ=env, config_path=config)
    assert from_env is not None and from_env.username == "env-user"
    from_config = resolve_credentials("reg.example.com", environ={}, config_path=config)
    assert from_config is not None
    assert (from_config.username, from_config.password) == ("cfg-user", "cfg-pass")
    assert resolve_credentials("other.example.com", environ={}, config_path=config) is None
    assert "cfg-pass" not in repr(from_config)


def test_credentials_docker_hub_key(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    auth = base64.b64encode(b"hub:secret").decode()
    config.write_text(json.dumps({"auths": {"https://index.docker.io/v1/": {"auth": auth}}}))
    found = resolve_credentials("docker.io", environ={}, config_path=config)
    assert found is not None and found.username == "hub"


def _helper(tmp_path: Path, name: str, body: str) -> None:
    script = tmp_path / "bin" / f"docker-credential-{name}"
    script.parent.mkdir(exist_ok=True)
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)


def test_credential_helpers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A real helper program, speaking the docker-credential protocol on stdin/stdout.
    _helper(
        tmp_path,
        "fake",
        'read server; [ "$1" = get ] || exit 3\n'
        'printf \'{"ServerURL":"%s","Username":"helper-user","Secret":"s3cret"}\' "$server"',
    )
    _helper(tmp_path, "empty", "echo 'credentials not found in native keychain'; exit 1")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps({"credHelpers": {"reg.example.com": "fake"}, "credsStore": "empty"})
    )
    found = resolve_credentials("reg.example.com", environ={}, config_path=config)
    assert found == Credentials("helper-user", "s3cret", "credential helper fake")
    assert resolve_credentials("other.example.com", environ={}, config_path=config) is None
    config.write_text(json.dumps({"credsStore": "missing"}))
    with pytest.raises(PublishError, match="docker-credential-missing is not on PATH"):
        resolve_credentials("reg.example.com", environ={}, config_path=config)


def test_username_without_password_is_an_error() -> None:
    with pytest.raises(PublishError, match="--password-stdin"):
        resolve_credentials("r.example.com", username="me", environ={})


# ------------------------------------------------------------- retries and auth


class FakeRegistry(http.server.BaseHTTPRequestHandler):
    """Answers from a script: a list of (status, headers, body) per path prefix."""

    script: dict[str, list[tuple[int, dict[str, str], bytes]]]
    seen: list[tuple[str, str, str | None]]

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.seen.append((self.command, self.path, self.headers.get("Authorization")))
        for prefix, answers in self.script.items():
            if self.path.startswith(prefix):
                status, headers, body = answers.pop(0) if len(answers) > 1 else answers[0]
                if status == 0:  # drop the connection without an answer
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_HEAD = do_PUT = do_POST = _answer

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture
def fake() -> Iterator[Any]:
    class Handler(FakeRegistry):
        script: ClassVar[dict[str, list[tuple[int, dict[str, str], bytes]]]] = {}
        seen: ClassVar[list[tuple[str, str, str | None]]] = []

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Handler.host = f"127.0.0.1:{server.server_address[1]}"  # type: ignore[attr-defined]
    yield Handler
    server.shutdown()
    server.server_close()


def _client(host: str, creds: Credentials | None = None, attempts: int = 4) -> Any:
    sleeps: list[float] = []
    client = RegistryClient(
        host,
        "team/img",
        creds,
        retry=RetryPolicy(attempts=attempts, initial=0.5),
        sleep=sleeps.append,
    )
    return client, sleeps


def test_5xx_and_dropped_connections_are_retried_with_backoff(fake: Any) -> None:
    fake.script["/v2/"] = [(503, {}, b""), (0, {}, b""), (502, {}, b""), (200, {}, b"{}")]
    client, sleeps = _client(fake.host)
    client.authenticate()
    assert sleeps == [0.5, 1.0, 2.0]
    assert len(fake.seen) == 4


def test_retries_run_out_with_a_message(fake: Any) -> None:
    fake.script["/v2/"] = [(500, {}, b'{"errors":[{"code":"UNKNOWN","message":"disk full"}]}')]
    client, sleeps = _client(fake.host, attempts=3)
    with pytest.raises(PublishError, match=r"failed after 3 attempts.*disk full"):
        client.authenticate()
    assert sleeps == [0.5, 1.0]


def test_connection_refused_is_retried_then_fails() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    client, sleeps = _client(f"127.0.0.1:{port}", attempts=3)
    with pytest.raises(PublishError, match="ConnectionRefusedError"):
        client.authenticate()
    assert len(sleeps) == 2


def test_unknown_host_fails_without_retry() -> None:
    client, sleeps = _client("no-such-host.invalid")
    with pytest.raises(PublishError, match=r"unknown registry no-such-host\.invalid"):
        client.authenticate()
    assert sleeps == []


def test_basic_auth_wrong_password_fails_at_once(fake: Any) -> None:
    challenge = {"WWW-Authenticate": 'Basic realm="test"'}
    fake.script["/v2/"] = [(401, challenge, b'{"errors":[{"code":"UNAUTHORIZED"}]}')]
    client, sleeps = _client(fake.host, Credentials("me", "wrong", "test"))
    with pytest.raises(PublishError, match="rejected the credentials of user 'me'"):
        client.authenticate()
    assert sleeps == []
    assert fake.seen[-1][2] == "Basic " + base64.b64encode(b"me:wrong").decode()


def test_basic_auth_without_credentials_says_how_to_log_in(fake: Any) -> None:
    fake.script["/v2/"] = [(401, {"WWW-Authenticate": 'Basic realm="test"'}, b"")]
    client, _ = _client(fake.host)
    with pytest.raises(PublishError, match=r"requires authentication.*docker login"):
        client.authenticate()


def test_bearer_token_flow_and_push_protocol(fake: Any) -> None:
    realm = f"http://{fake.host}/token"
    fake.script["/v2/team/img/blobs/uploads/"] = [(202, {"Location": "/upload/1?state=x"}, b"")]
    fake.script["/upload/1"] = [(201, {}, b"")]
    fake.script["/v2/team/img/blobs/"] = [(404, {}, b"")]
    fake.script["/v2/team/img/manifests/v1"] = [(201, {"Docker-Content-Digest": "sha256:x"}, b"")]
    fake.script["/v2/"] = [
        (401, {"WWW-Authenticate": f'Bearer realm="{realm}",service="reg"'}, b"")
    ]
    fake.script["/token"] = [(200, {}, b'{"token": "T0K"}')]
    client, _ = _client(fake.host, Credentials("me", "pw", "test"))
    client.authenticate()
    token_call = next(s for s in fake.seen if s[1].startswith("/token"))
    assert "scope=repository%3Ateam%2Fimg%3Apull%2Cpush" in token_call[1]
    assert "service=reg" in token_call[1]
    assert not client.has_blob("sha256:" + "0" * 64)
    data = b"layer bytes"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    client.upload_blob(digest, data)
    put = next(s for s in fake.seen if s[0] == "PUT" and s[1].startswith("/upload/1"))
    assert "state=x" in put[1] and f"digest={digest.replace(':', '%3A')}" in put[1]
    assert put[2] == "Bearer T0K"
    assert client.put_manifest("v1", b"{}", "application/json") == "sha256:x"


def test_token_service_rejecting_credentials_is_an_auth_error(fake: Any) -> None:
    realm = f"http://{fake.host}/token"
    fake.script["/v2/"] = [(401, {"WWW-Authenticate": f'Bearer realm="{realm}"'}, b"")]
    fake.script["/token"] = [(401, {}, b"")]
    client, sleeps = _client(fake.host, Credentials("me", "bad", "test"))
    with pytest.raises(PublishError, match="rejected the credentials"):
        client.authenticate()
    assert sleeps == []
