"""SBOM: the image's Python and OS packages as a CycloneDX 1.5 JSON document.

Written with the standard library (the format is a small JSON schema). The
document is deterministic: components sorted, the timestamp is the build's
SOURCE_DATE_EPOCH, the serial number a UUID derived from the content. It is
stored beside the build record (``<record>.cdx.json``) and inside the image at
``SBOM_PATH``, named by the label ``ai.aibuild.sbom`` (with its sha256 in
``ai.aibuild.sbom.sha256``), added as one extra layer on top of the built image.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aibuild import __version__, labels
from aibuild.errors import PublishError
from aibuild.image.build import build_context
from aibuild.oci.media import rfc3339

if TYPE_CHECKING:  # pragma: no cover - typing only
    import docker

SBOM_PATH = "/usr/share/aibuild/sbom.cdx.json"


def _pypi_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def split_pins(lines: Iterable[str], sep: str) -> list[tuple[str, str]]:
    """``name==version`` (or ``name=version`` for dpkg) lines -> sorted (name, version) pairs.

    Lines without the separator (``name @ file://...``) are skipped: they have no version.
    """
    pairs = set()
    for line in lines:
        name, found, version = line.strip().partition(sep)
        if found and name and version:
            pairs.add((name.strip(), version.strip()))
    return sorted(pairs, key=lambda p: (p[0].lower(), p[1]))


def _deb_namespace(os_name: str) -> tuple[str, str]:
    """ "debian12" -> ("debian", "debian-12"); "ubuntu22.04" -> ("ubuntu", "ubuntu-22.04")."""
    match = re.fullmatch(r"([a-z]+)([\d.]+)", os_name or "")
    if not match:
        return "debian", ""
    return match[1], f"{match[1]}-{match[2]}"


def cyclonedx(
    python: Sequence[str],
    os_packages: Sequence[str],
    *,
    image_name: str,
    image_version: str,
    os_name: str,
    source_date_epoch: int,
    hashes: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Any]:
    """The CycloneDX 1.5 document for ``python`` (``pip freeze`` lines) and
    ``os_packages`` (``dpkg-query`` ``name=version`` lines).

    ``hashes`` maps a normalised Python project name to sha256 hex digests of its
    wheels (from a wheelhouse); they become the component's ``hashes``.
    """

    namespace, distro = _deb_namespace(os_name)
    components: list[dict[str, Any]] = []
    for name, version in split_pins(python, "=="):
        purl = f"pkg:pypi/{_pypi_name(name)}@{version}"
        component: dict[str, Any] = {
            "bom-ref": purl,
            "type": "library",
            "name": name,
            "version": version,
            "purl": purl,
        }
        digests = (hashes or {}).get(_pypi_name(name))
        if digests:
            component["hashes"] = [{"alg": "SHA-256", "content": d} for d in sorted(digests)]
        components.append(component)
    for name, version in split_pins(os_packages, "="):
        qualifier = f"?distro={distro}" if distro else ""
        purl = f"pkg:deb/{namespace}/{name}@{version}{qualifier}"
        components.append(
            {
                "bom-ref": purl,
                "type": "library",
                "name": name,
                "version": version,
                "purl": purl,
            }
        )
    body = json.dumps(components, sort_keys=True).encode()
    serial = uuid.uuid5(uuid.NAMESPACE_URL, "aibuild-sbom:" + hashlib.sha256(body).hexdigest())
    return {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": f"urn:uuid:{serial}",
        "version": 1,
        "metadata": {
            "timestamp": rfc3339(source_date_epoch),
            "tools": {
                "components": [{"type": "application", "name": "aibuild", "version": __version__}]
            },
            "component": {
                "bom-ref": f"{image_name}:{image_version}",
                "type": "container",
                "name": image_name,
                "version": image_version,
            },
        },
        "components": components,
    }


def sbom_bytes(document: Mapping[str, Any]) -> bytes:
    """The document as stable, readable JSON bytes."""
    return (json.dumps(document, indent=2, sort_keys=True) + "\n").encode("utf-8")


def attach_sbom(client: docker.DockerClient, image: str, data: bytes, tags: Sequence[str]) -> str:
    """Add the SBOM as one layer on top of ``image`` (a tiny classic build: COPY and
    LABEL), tagged with ``tags``; returns the new image ID."""

    digest = hashlib.sha256(data).hexdigest()
    with tempfile.TemporaryDirectory(prefix="aibuild-sbom-") as tmp:
        context = Path(tmp)
        (context / "sbom.cdx.json").write_bytes(data)
        (context / "Dockerfile").write_text(
            f"FROM {image}\n"
            f"COPY sbom.cdx.json {SBOM_PATH}\n"
            f'LABEL {labels.SBOM}="{SBOM_PATH}" {labels.SBOM_DIGEST}="{digest}"\n',
            encoding="utf-8",
        )
        outcome = build_context(client, context, tags=list(tags))
    if not outcome.image_id:
        raise PublishError(f"adding the SBOM to {image} produced no image")
    return outcome.image_id
