"""Upload an image's blobs to a registry concurrently, with progress, as they become ready.

Each worker thread has a registry client of its own (its own connection, token and
retries), all under the push's one deadline: the bounded retries and timeouts of
``RegistryClient`` apply to each blob as they do for a sequential push. Blobs the
registry already has (HEAD) are skipped. The manifest is not uploaded here: the caller
puts it last, after every blob is in, so a failed push never moves a tag.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
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


class Uploader:
    """Uploads blobs as they are handed in (``submit``), ``workers`` at a time, while the
    caller goes on exporting and compressing; ``finish`` waits for them all.

    ``new_client()`` makes an authenticated client for one worker, when it first needs
    one. The first failure ends the upload: ``submit`` and ``finish`` raise it (a
    PublishError from the client), and the blobs not yet begun are dropped; those running
    finish or fail within the deadline."""

    def __init__(
        self,
        new_client: Callable[[], RegistryClient],
        *,
        workers: int = UPLOAD_WORKERS,
        log: Log = silent,
    ) -> None:
        self._new_client = new_client
        self._log = log
        self._pool = ThreadPoolExecutor(
            max_workers=max(1, workers), thread_name_prefix="aibuild-upload"
        )
        self._lock = threading.Lock()
        self._free: list[RegistryClient] = []
        self._futures: list[Future[None]] = []
        self._seen: set[str] = set()
        self._meter = Meter("upload", 0, log)
        self._counts = {"pushed": 0, "existing": 0, "sent": 0}

    def submit(self, blob: Blob, label: str = "blob") -> None:
        """Upload ``blob`` (once, however often it is handed in) when a worker is free."""
        self.check()
        with self._lock:
            if blob.digest in self._seen:
                return
            if not self._seen:  # the upload's clock starts with its first blob
                self._meter.started = self._meter.clock()
            self._seen.add(blob.digest)
            self._meter.expect(blob.size)
            self._futures.append(self._pool.submit(self._one, blob, label))

    def check(self) -> None:
        """Raise the first failure so far, if any."""
        with self._lock:
            futures = list(self._futures)
        for future in futures:
            if future.done() and not future.cancelled() and future.exception() is not None:
                self.abort()
                future.result()

    def finish(self) -> UploadCounts:
        """Wait for every blob handed in; the counts (the first failure raised)."""
        while True:
            with self._lock:
                pending = [f for f in self._futures if not f.done()]
            if not pending:
                break
            wait(pending, return_when=FIRST_EXCEPTION)
            self.check()
        self.check()
        self._pool.shutdown()
        self._meter.finish()
        c = self._counts
        return UploadCounts(c["pushed"], c["existing"], c["sent"])

    def abort(self) -> None:
        """Drop the blobs not yet begun; wait for those running."""
        with self._lock:
            futures = list(self._futures)
        for future in futures:
            future.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _client(self) -> RegistryClient:
        with self._lock:
            if self._free:
                return self._free.pop()
        return self._new_client()

    def _one(self, blob: Blob, label: str) -> None:
        client = self._client()
        try:
            self._upload(client, blob, label)
        finally:
            with self._lock:
                self._free.append(client)

    def _upload(self, client: RegistryClient, blob: Blob, label: str) -> None:
        short = blob.digest.removeprefix("sha256:")[:12]
        meter, log = self._meter, self._log
        if client.has_blob(blob.digest):
            meter.add(blob.size)
            with self._lock:
                self._counts["existing"] += 1
            log(f"{short}: already exists ({size_text(blob.size)})")
            return
        sent = [0]

        def on_bytes(n: int) -> None:
            sent[0] += n
            meter.add(n)

        log(f"{short}: pushing {label} ({size_text(blob.size)})")
        try:
            client.upload_blob(blob.digest, blob.path, on_bytes)
        finally:
            if sent[0] != blob.size:  # a retried attempt counts once
                meter.add(blob.size - sent[0])
        with self._lock:
            self._counts["pushed"] += 1
            self._counts["sent"] += blob.size
        log(f"{short}: pushed ({size_text(blob.size)})")
