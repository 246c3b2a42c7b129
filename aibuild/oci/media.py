"""What images and registries agree on: media types, the streaming chunk, the time format."""

from __future__ import annotations

from datetime import datetime, timezone

MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_V1 = "application/vnd.docker.container.image.v1+json"
LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
# OCI types: an image with zstd layers needs an OCI manifest (Docker's v2 has no zstd type).
MANIFEST_OCI = "application/vnd.oci.image.manifest.v1+json"
CONFIG_OCI = "application/vnd.oci.image.config.v1+json"
LAYER_OCI_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"

CHUNK = 1 << 20  # bytes read or written at a time when streaming layers and blobs

# The last second an image config's time format can hold (9999-12-31T23:59:59Z).
EPOCH_MAX = 253402300799


def rfc3339(epoch: int) -> str:
    """SOURCE_DATE_EPOCH as the timestamp format image configs use."""
    return datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
