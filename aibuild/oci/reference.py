"""Image references, by the grammar of the distribution spec: one parser for every command.

    reference  := name [ ":" tag ] [ "@" digest ]
    name       := [ domain "/" ] path            (at most 255 characters)
    domain     := host [ ":" port ]              (host: DNS name, IPv4, or [IPv6])
    path       := component ( "/" component )*   component := [a-z0-9]+ ( separator [a-z0-9]+ )*
    separator  := "." | "_" | "__" | "-"+
    tag        := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
    digest     := algorithm ":" hex              (sha256: 64 lowercase hex digits)

(distribution/reference's ``reference.go`` and ``normalize.go``.) As Docker does, the
first component is a registry only when it has a ``.`` or a ``:`` or is ``localhost``;
otherwise the reference is on Docker Hub, and a one-part name is an official image
(``library/``). (Docker also takes a first component with upper-case letters for a
registry host; aibuild refuses such a name instead, as upper case in a repository
path: ``Team/train`` is a typo far more often than a registry called ``Team``.)

Anything outside this grammar (spaces, a ``?`` or ``#`` in a tag, upper case in the
path, an empty part) is refused with ``ReferenceError``: no command ever tags or pushes
a name that a registry would read differently.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass

from aibuild.errors import PublishError, shown

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
DOCKER_HUB_AUTH_KEY = "https://index.docker.io/v1/"
_HUB_ALIASES = ("index.docker.io", "registry-1.docker.io")
NAME_MAX = 255

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
PATH = rf"{_COMPONENT}(?:/{_COMPONENT})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9A-Fa-f:.]+\])"
DOMAIN = rf"{_HOST}(?::[0-9]+)?"
# A first component that Docker reads as a registry: with a '.', a port, or localhost.
REGISTRY = (
    rf"(?:localhost(?::[0-9]+)?|{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})+(?::[0-9]+)?"
    rf"|{_DOMAIN_COMPONENT}:[0-9]+|\[[0-9A-Fa-f:.]+\](?::[0-9]+)?)"
)
TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"  # the spec's \w is ASCII (Go), Python's is not
DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"

# Whole-string patterns (use fullmatch: ``$`` would let a trailing newline through), also
# used by the profile schema for image.name and base_image.
TAG_RE = re.compile(TAG)
NAME_RE = re.compile(rf"(?:{REGISTRY}/)?{PATH}")
REFERENCE_RE = re.compile(rf"(?:{REGISTRY}/)?{PATH}(?::{TAG})?(?:@{DIGEST})?")
_DOMAIN_RE = re.compile(DOMAIN)
_PATH_RE = re.compile(PATH)
_DIGEST_RE = re.compile(DIGEST)
_SHA256_RE = re.compile(r"sha256:[0-9a-f]{64}")
_PORT_RE = re.compile(r":([0-9]+)\Z")


class ReferenceError(PublishError):
    """Text that is not an image reference."""


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
        """``registry/repository`` as a user writes it (the repository Docker tags with)."""
        if self.registry == DOCKER_HUB:
            return self.repository.removeprefix("library/")
        return f"{self.registry}/{self.repository}"

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def _split_domain(name: str) -> tuple[str | None, str]:
    """(registry or None for Docker Hub, path), by Docker's rule (``splitDockerDomain``)."""
    first, sep, rest = name.partition("/")
    if sep and (any(c in first for c in ".:") or first == "localhost"):
        return first, rest
    return None, name


def parse_reference(text: str, *, default_tag: str | None = "latest") -> Reference:
    """``[registry/]path[:tag][@digest]`` -> ``Reference``; ``ReferenceError`` when ``text``
    is not one. Without tag or digest the tag is ``default_tag``."""

    def bad(why: str) -> ReferenceError:
        return ReferenceError(f"not an image reference: {shown(text, limit=200)} ({why})")

    if not text:
        raise bad("it is empty")
    if any(c.isspace() or not c.isprintable() for c in text):
        raise bad("it has spaces or control characters")
    name, at, digest = text.partition("@")
    if at and not _DIGEST_RE.fullmatch(digest):
        raise bad(f"{digest!r} is not a digest (ALGORITHM:HEX)")
    if at and digest.startswith("sha256:") and not _SHA256_RE.fullmatch(digest):
        raise bad("a sha256 digest is 64 lower-case hex digits")
    tag: str | None = None
    slash, colon = name.rfind("/"), name.rfind(":")
    if colon > slash:
        name, tag = name[:colon], name[colon + 1 :]
        if not TAG_RE.fullmatch(tag):
            raise bad(f"{tag!r} is not a tag: letters, digits, '_', '.', '-', at most 128")
    if len(name) > NAME_MAX:
        raise bad(f"the name is longer than {NAME_MAX} characters")
    registry, path = _split_domain(name)
    if registry is not None and not _DOMAIN_RE.fullmatch(registry):
        raise bad(f"{registry!r} is not a registry host[:port]")
    port = _PORT_RE.search(registry or "")
    if port and not 0 < int(port.group(1)[:6]) <= 65535:
        raise bad(f"port {port.group(1)[:12]} is not 1-65535")
    if path != path.lower():
        raise bad("repository names are lower case")
    if not _PATH_RE.fullmatch(path):
        raise bad(f"{path!r} is not a repository path: lower-case parts separated by '/'")
    if registry is None or registry in _HUB_ALIASES:
        registry = DOCKER_HUB
        if "/" not in path:
            path = f"library/{path}"
    if tag is None and not at:
        tag = default_tag
    return Reference(registry, path, tag, digest or None)


def api_host(registry: str) -> str:
    """The host[:port] that serves a registry's HTTP API (Docker Hub's differs from its name)."""
    return DOCKER_HUB_API if registry == DOCKER_HUB else registry


def is_loopback(host: str) -> bool:
    """Whether ``host[:port]`` is this machine (where Docker, too, allows plain HTTP)."""
    hostname = urllib.parse.urlsplit(f"//{host}").hostname or host
    return hostname == "localhost" or hostname.startswith("127.") or hostname == "::1"


__all__ = [
    "DOCKER_HUB",
    "NAME_RE",
    "REFERENCE_RE",
    "TAG_RE",
    "Reference",
    "ReferenceError",
    "api_host",
    "is_loopback",
    "parse_reference",
]
