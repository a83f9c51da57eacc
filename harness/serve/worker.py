"""One render at a time on the server's GPU (or CPU), from a bounded queue.

The engine is not shareable between concurrent renders (LoRAs are hooked into or merged into the one loaded
model), so one worker thread renders jobs in arrival order; the API only enqueues. A full queue refuses the job
at once (HTTP 429) rather than letting latency grow without bound.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Callable

from ..errors import HarnessError
from .jobs import FAILED, RUNNING, SUCCEEDED, JobStore

log = logging.getLogger("wan_parity.serve")
STOPPED = "the server stopped before rendering this job; submit the request again"


class QueueFull(Exception):
    """No room for another job; the client should retry later."""


class RenderQueue:
    """``render(target, folder, stem) -> PreviewResult`` for every target of a job, one job at a time."""

    def __init__(self, store: JobStore, render: Callable, capacity: int):
        self.store = store
        self.render = render
        self.capacity = capacity
        self._queue: queue.Queue = queue.Queue(maxsize=capacity)
        self._thread: threading.Thread | None = None
        self.running: str | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._work, name="wan-parity-render", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Refuse what is still waiting (recorded as failed), let the running render finish, end the thread."""
        while True:
            try:
                job_id, _ = self._queue.get_nowait()
            except queue.Empty:
                break
            self.store.update(job_id, status=FAILED, finished_at=time.time(), error={"field": None, "message": STOPPED})
        if self._thread is not None:
            self._queue.put((None, None))
            self._thread.join()
            self._thread = None

    def submit(self, request: object, targets: list) -> dict:
        """Record and enqueue a job; QueueFull (and no record) when the queue is full."""
        record = self.store.create(request, len(targets))
        try:
            self._queue.put_nowait((record["id"], targets))
        except queue.Full:
            self.store.discard(record["id"])
            raise QueueFull(f"{self.capacity} job(s) already waiting") from None
        return record

    @property
    def waiting(self) -> int:
        return self._queue.qsize()

    def _work(self) -> None:
        while True:
            job_id, targets = self._queue.get()
            if job_id is None:
                return
            self.running = job_id
            try:
                self._run(job_id, targets)
            finally:
                self.running = None

    def _run(self, job_id: str, targets: list) -> None:
        """Render the job's prompts in order; a user-fixable problem fails the job with the field named."""
        self.store.update(job_id, status=RUNNING, started_at=time.time())
        folder, outputs = self.store.job_folder(job_id), []
        try:
            for target in targets:
                result = self.render(target, folder, str(target.preview.index))
                outputs.append(result.to_json())
                self.store.update(job_id, outputs=outputs)
        except HarnessError as exc:
            self.store.update(job_id, status=FAILED, finished_at=time.time(),
                              error={"field": exc.field, "message": exc.message, "line": exc.line()})
            return
        except Exception as exc:  # noqa: BLE001 - the server must outlive one bad render; the log has the traceback
            log.exception("job %s failed", job_id)
            self.store.update(job_id, status=FAILED, finished_at=time.time(),
                              error={"field": None, "message": f"render failed: {type(exc).__name__}: {exc}"})
            return
        self.store.update(job_id, status=SUCCEEDED, finished_at=time.time())
