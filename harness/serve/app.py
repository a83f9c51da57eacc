"""The HTTP routes (Starlette): submit, job status, outputs, health. Rendering happens in the worker, never here.

=====================================  =============================================================================
``POST /v1/inference``                 the seed's request JSON; 202 with the job (``id``, ``status_url``), 400 for a
                                       body that is not JSON, 422 naming the field, 413 too large, 429 queue full
``GET /v1/jobs/{id}``                  the job: ``queued | running | succeeded | failed``, outputs with their URLs
``GET /v1/jobs/{id}/outputs/{name}``   a WebP, MP4 or .npy of a job (only files its record lists)
``GET /health``                        ready, device, queue depth (no token needed)
=====================================  =============================================================================

With a token every route but ``/health`` needs ``Authorization: Bearer <token>`` (401 otherwise).
"""

from __future__ import annotations

import hmac
import json
from contextlib import asynccontextmanager
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import Route

from ..errors import HarnessError
from .jobs import FINISHED
from .worker import QueueFull

MAX_BODY = 64 * 1024 * 1024  # base64 control images make bodies large, but not this large
FILE_FIELDS = ("render_path", "mp4_path", "frames_path")
MEDIA_TYPES = {".webp": "image/webp", ".jpg": "image/jpeg", ".mp4": "video/mp4", ".npy": "application/octet-stream"}


def error(status: int, message: str, field: str | None = None, **extra) -> JSONResponse:
    return JSONResponse({"error": {"field": field, "message": message, **extra}}, status_code=status)


def create_app(reader, store, queue, token: str | None = None, info: dict | None = None) -> Starlette:
    """The API over a request reader, a job store and a render queue (the queue's worker runs for the app's life)."""

    @asynccontextmanager
    async def lifespan(app):
        queue.start()
        try:
            yield
        finally:
            await run_in_threadpool(queue.stop)

    async def inference(request: Request):
        data = await _json_body(request)
        if isinstance(data, JSONResponse):
            return data
        try:
            targets = await run_in_threadpool(reader.targets, data)
        except HarnessError as exc:
            return error(422, exc.message, exc.field, line=exc.line())
        try:
            record = queue.submit(data, targets)
        except QueueFull as exc:
            return JSONResponse({"error": {"field": None, "message": f"queue full ({exc}); retry later"}},
                                status_code=429, headers={"Retry-After": "30"})
        return JSONResponse(_view(record), status_code=202)

    async def job(request: Request):
        record = store.get(request.path_params["job_id"])
        return error(404, "no such job") if record is None else JSONResponse(_view(record))

    async def output(request: Request):
        record = store.get(request.path_params["job_id"])
        name = request.path_params["name"]
        if record is None:
            return error(404, "no such job")
        files = {Path(o[f]).name for o in record["outputs"] for f in FILE_FIELDS if o.get(f)}
        if name not in files:
            return error(404, f"job {record['id']} has no output {name!r}")
        path = store.job_folder(record["id"]) / name
        return FileResponse(path, media_type=MEDIA_TYPES.get(path.suffix, "application/octet-stream"))

    async def health(request: Request):
        return JSONResponse({"status": "ok", **(info or {}), "queue": {"waiting": queue.waiting, "capacity":
                             queue.capacity, "running": queue.running}, "jobs": store.counts()})

    routes = [Route("/v1/inference", inference, methods=["POST"]), Route("/v1/jobs/{job_id}", job),
              Route("/v1/jobs/{job_id}/outputs/{name}", output), Route("/health", health)]
    app = Starlette(routes=routes, lifespan=lifespan)
    if token:
        return _with_token(app, token)
    return app


async def _json_body(request: Request):
    """The body as JSON, or the error response (413 too large, 400 not JSON)."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY:
        return error(413, f"request body over {MAX_BODY} bytes")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            return error(413, f"request body over {MAX_BODY} bytes")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        return error(400, f"the body is not JSON ({exc})")


def _view(record: dict) -> dict:
    """A job as the API shows it: its record plus where to poll and where each output can be fetched."""
    base = f"/v1/jobs/{record['id']}"
    outputs = [{**o, "urls": {f.split("_")[0]: f"{base}/outputs/{Path(o[f]).name}" for f in FILE_FIELDS if o.get(f)}}
               for o in record.get("outputs") or []]
    return {**record, "outputs": outputs, "status_url": base, "finished": record["status"] in FINISHED}


def _with_token(app, token: str):
    """ASGI wrapper: Bearer auth on every HTTP route but /health (constant-time comparison)."""
    expected = f"Bearer {token}".encode()

    async def guarded(scope, receive, send):
        if scope["type"] == "http" and scope["path"] != "/health":
            given = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not hmac.compare_digest(given, expected):
                response = error(401, "missing or wrong token (Authorization: Bearer <token>)")
                return await response(scope, receive, send)
        return await app(scope, receive, send)

    return guarded
