"""Upload an image's blobs to a registry concurrently, with progress.

Each worker thread has a registry client of its own (its own connection, token and
retries), all under the push's one deadline: the bounded retries and timeouts of
``RegistryClient`` apply to each blob as they do for a sequential push. Blobs the
registry already has (HEAD) are skipped. The manifest is not uploaded here: the caller
puts it last, after every blob is in, so a failed push never moves a tag.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass

from aibuild.logs import Log, silent
from aibuild.oci.archive import Blob
from aibuild.oci.meter import Meter, size_text
from aibuild.oci.registry import RegistryClient

# Blobs uploaded at once: enough to fill a link with a few large layers, few enough that
# a registry's per-client limits and this machine's disk reads keep up.
UPLOAD_WORKERS = 4


@dataclass(frozen=True)
class UploadCounts:
    pushed: int
    existing: int
    bytes_sent: int


def upload_blobs(
    new_client: Callable[[], RegistryClient],
    blobs: Sequence[Blob],
    *,
    workers: int = UPLOAD_WORKERS,
    log: Log = silent,
) -> UploadCounts:
    """Upload ``blobs`` (the layers in order, then the config) that the registry lacks,
    ``workers`` at
    a time; ``new_client()`` makes an authenticated client for one worker. The first
    failure ends the upload (a PublishError from the client), after the uploads already
    running finish or fail within the deadline."""
    if not blobs:
        return UploadCounts(0, 0, 0)
    count = max(1, min(workers, len(blobs)))
    clients = [new_client() for _ in range(count)]
    free = list(clients)
    lock = threading.Lock()
    total = sum(b.size for b in blobs)
    meter = Meter("upload", total, log)
    state = {"pushed": 0, "existing": 0, "sent": 0}

    labels = {b.digest: f"layer {i}/{len(blobs) - 1}" for i, b in enumerate(blobs[:-1], 1)}
    labels[blobs[-1].digest] = "config"

    def one(blob: Blob) -> None:
        with lock:
            client = free.pop()
        try:
            short = blob.digest.removeprefix("sha256:")[:12]
            if client.has_blob(blob.digest):
                meter.add(blob.size)
                with lock:
                    state["existing"] += 1
                log(f"{short}: already exists ({size_text(blob.size)})")
                return
            sent = [0]

            def on_bytes(n: int) -> None:
                sent[0] += n
                meter.add(n)

            log(f"{short}: pushing {labels.get(blob.digest, 'blob')} ({size_text(blob.size)})")
            try:
                client.upload_blob(blob.digest, blob.path, on_bytes)
            finally:
                if sent[0] != blob.size:  # a retried attempt counts once
                    meter.add(blob.size - sent[0])
            with lock:
                state["pushed"] += 1
                state["sent"] += blob.size
            log(f"{short}: pushed ({size_text(blob.size)})")
        finally:
            with lock:
                free.append(client)

    with ThreadPoolExecutor(max_workers=count, thread_name_prefix="aibuild-upload") as pool:
        futures = [pool.submit(one, b) for b in sorted(blobs, key=lambda b: -b.size)]
        wait(futures, return_when=FIRST_EXCEPTION)
        for future in futures:  # the first failure ends the upload: cancel what has not begun
            if future.done() and future.exception() is not None:
                for other in futures:
                    other.cancel()
                future.result()
        for future in futures:
            future.result()
    meter.finish()
    return UploadCounts(state["pushed"], state["existing"], state["sent"])
