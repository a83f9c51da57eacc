"""A stdlib client for the API and a background server on a free loopback port: for tests, the benchmark, scripts.

Polling rather than sleeping: :func:`wait_for` returns as soon as the job has finished.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager


def call(method: str, url: str, body=None, token: str | None = None, raw: bytes | None = None):
    """(status, JSON or bytes) of one request; HTTP errors are answers too."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            status, payload, kind = response.status, response.read(), response.headers.get("content-type", "")
    except urllib.error.HTTPError as exc:
        status, payload, kind = exc.code, exc.read(), exc.headers.get("content-type", "")
    return status, (json.loads(payload) if kind.startswith("application/json") else payload)


def until(condition, what: str, timeout: float):
    """Poll ``condition`` until it returns something truthy; AssertionError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def wait_for(url: str, job_id: str, token: str | None = None, timeout: float = 600) -> dict:
    """The job's record once it has finished (succeeded or failed)."""
    def done():
        record = call("GET", f"{url}/v1/jobs/{job_id}", token=token)[1]
        return record if record["finished"] else None

    return until(done, f"job {job_id}", timeout)


@contextmanager
def serving(app):
    """Run ``app`` under uvicorn on 127.0.0.1 (a free port) in a thread until the block ends; yields the base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        until(lambda: server.started, "the server to start", timeout=30)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=600)
        sock.close()
