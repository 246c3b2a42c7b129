"""Registry credentials: explicit, the environment, then the Docker config and its helpers."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from aibuild.errors import PublishError
from aibuild.oci.reference import DOCKER_HUB, DOCKER_HUB_API, DOCKER_HUB_AUTH_KEY

ENV_USER = "AIBUILD_REGISTRY_USER"
ENV_PASSWORD = "AIBUILD_REGISTRY_PASSWORD"


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
