"""The job store: one folder per job under the results folder, its record written atomically on every change.

``<results>/jobs/<id>/job.json`` is the record (state, times, outputs, error), ``request.json`` the request as
received, and the outputs sit beside them. A restarted server reads every record back: finished jobs are served as
before; a job that was queued or running when the process stopped is marked failed, saying so, never left hanging.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from pathlib import Path

from ..fsutil import write_json_atomic

QUEUED, RUNNING, SUCCEEDED, FAILED = "queued", "running", "succeeded", "failed"
FINISHED = (SUCCEEDED, FAILED)
ID_RE = re.compile(r"^[0-9a-f]{32}$")
INTERRUPTED = "the server stopped before this job finished; submit the request again"


class JobStore:
    """Job records in memory and on disk; every method is safe to call from the API and the worker at once."""

    def __init__(self, folder: Path):
        self.folder = Path(folder) / "jobs"
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._jobs: dict[str, dict] = {}
        self._recover()

    def _recover(self) -> None:
        """Read every record back; unfinished ones are marked failed (their render died with the old process)."""
        for path in sorted(self.folder.glob("*/job.json")):
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue  # a record is written atomically: an unreadable one is not ours to guess at
            if not isinstance(record, dict) or record.get("id") != path.parent.name:
                continue
            self._jobs[record["id"]] = record
            if record.get("status") not in FINISHED:
                self.update(record["id"], status=FAILED, finished_at=time.time(),
                            error={"field": None, "message": INTERRUPTED})

    def create(self, request: object, prompts: int) -> dict:
        """A new queued job with its request kept beside it."""
        job_id = uuid.uuid4().hex
        write_json_atomic(self.job_folder(job_id) / "request.json", request)
        record = {"id": job_id, "status": QUEUED, "created_at": time.time(), "started_at": None, "finished_at": None,
                  "prompts": prompts, "outputs": [], "error": None}
        with self._lock:
            self._jobs[job_id] = record
            self._write(record)
        return dict(record)

    def update(self, job_id: str, **fields) -> dict:
        with self._lock:
            record = self._jobs[job_id]
            record.update(fields)
            self._write(record)
            return dict(record)

    def get(self, job_id: str) -> dict | None:
        if not ID_RE.match(job_id):
            return None
        with self._lock:
            record = self._jobs.get(job_id)
            return None if record is None else json.loads(json.dumps(record))

    def discard(self, job_id: str) -> None:
        """Forget a job that was never queued (the queue was full): no record of a refused request stays."""
        import shutil

        with self._lock:
            self._jobs.pop(job_id, None)
        shutil.rmtree(self.job_folder(job_id), ignore_errors=True)

    def job_folder(self, job_id: str) -> Path:
        return self.folder / job_id

    def counts(self) -> dict:
        with self._lock:
            states = [r["status"] for r in self._jobs.values()]
        return {state: states.count(state) for state in (QUEUED, RUNNING, SUCCEEDED, FAILED)}

    def _write(self, record: dict) -> None:
        write_json_atomic(self.job_folder(record["id"]) / "job.json", record)
