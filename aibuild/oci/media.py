"""OCI and Docker media types (the registry API and the image archive use them)."""

from __future__ import annotations

from datetime import datetime, timezone

MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"


OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


CONFIG_V1 = "application/vnd.docker.container.image.v1+json"


LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"


MANIFEST_ACCEPT = ", ".join(
    [
        MANIFEST_V2,
        OCI_MANIFEST,
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.index.v1+json",
    ]
)


CHUNK = 1 << 20  # bytes read or written at a time when streaming layers and blobs


def rfc3339(epoch: int) -> str:
    """SOURCE_DATE_EPOCH as the timestamp format image configs use."""
    return datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
