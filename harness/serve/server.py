"""``wan-parity serve``: arguments, the one engine, and the ASGI server (uvicorn, imported only when serving).

The engine is made once and kept: the base model stays loaded (its ``ModelCache``), LoRA files are parsed once
(its LRU ``LoraCache``) and applied per render, hooked or merged and then restored bit-exactly, so switching LoRAs or
per-expert scales between requests never reloads the base. Renders go through ``generate_cmd.render_one``, the same
function as ``wan-parity render``.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import HarnessError

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """serve's own flags (the shared ones come from the options table; ``--out`` is the results folder)."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; any other "
                                                            "needs --token)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--token", help="require 'Authorization: Bearer TOKEN' on every route but /health")
    parser.add_argument("--allow-root", action="append", default=[], type=Path, metavar="DIR",
                        help="folder requests may name LoRAs and control images in (repeatable; relative paths are "
                             "relative to the first; the --like job folder is always allowed)")
    parser.add_argument("--queue", type=int, default=8, metavar="N", help="jobs that may wait (default 8; then 429)")
    parser.add_argument("--like", type=Path, metavar="JOB_DIR",
                        help="an ai-toolkit output folder whose base model, quantization and stack the server uses")
    parser.add_argument("--mp4", action="store_true", help="also write an .mp4 beside each WebP")


def server_basis(args):
    """The model requests render on: the ``--like`` job's, or the stand-in (``--base-model``, bf16). YAML only."""
    from ..generate import like_job, stand_in
    from ..stack import load_stack

    basis = like_job(args.like, step=0) if args.like is not None else stand_in()  # requests name their LoRAs
    if basis.golden_stack is None and args.golden_stack:
        basis.golden_stack = load_stack(args.golden_stack)
    return basis


@dataclass
class Service:
    """Everything behind the routes; ``app`` is what an ASGI server runs."""

    app: object
    store: object
    queue: object
    reader: object
    engine: object


def build_service(options, basis, results: Path, roots: list[Path], capacity: int = 8, mp4: bool = False,
                  token: str | None = None, engine=None, render=None) -> Service:
    """The API over one engine. ``render(target, folder, stem)`` defaults to ``generate_cmd.render_one`` on it."""
    from ..engine import Engine, torch_device_type
    from ..generate_cmd import render_one
    from .app import create_app
    from .jobs import JobStore
    from .requests import RequestReader
    from .worker import RenderQueue

    if capacity < 1:
        raise HarnessError(None, "--queue", "must be at least 1")
    engine = engine or Engine(options)
    store = JobStore(results)
    if render is None:
        def render(target, folder, stem):
            return render_one(engine, target, folder, stem, mp4=mp4, save_frames=options.save_frames)
    if basis.source is not None:
        roots = [*roots, basis.source]
    reader = RequestReader(basis, roots, Path(results) / "ctrl-cache", options.path_map,
                           device_type=torch_device_type(engine.device))
    queue = RenderQueue(store, render, capacity)
    info = {"device": engine.device, "model": options.base_model or basis.model_name, "like": str(basis.source or "")}
    return Service(app=create_app(reader, store, queue, token=token, info=info), store=store, queue=queue,
                   reader=reader, engine=engine)


def check_host(host: str, token: str | None) -> None:
    """Only loopback without a token: anything else would hand the GPU and the allowed folders to the network."""
    if token or host in LOOPBACK:
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise HarnessError(None, "--host", f"{host} is reachable from other machines; give --token TOKEN (clients send "
                                       "'Authorization: Bearer TOKEN') or listen on 127.0.0.1")


def serve_main(args, basis) -> int:
    """Validate, build the service and run uvicorn until interrupted."""
    from ..options import resolve
    from ..generate_cmd import check_base_model

    check_host(args.host, args.token)
    options = resolve("serve", vars(args)).options
    check_base_model([basis], options)  # the basis names the model like a target does
    for root in args.allow_root:
        if not root.is_dir():
            raise HarnessError(root, "--allow-root", "not a folder")
    try:
        import uvicorn
    except ImportError:
        raise HarnessError(None, "serve", "needs uvicorn and starlette: pip install uvicorn starlette") from None
    service = build_service(options, basis, Path(options.out), [r.resolve() for r in args.allow_root],
                            capacity=args.queue, mp4=args.mp4, token=args.token)
    print(f"wan-parity serve: http://{args.host}:{args.port} (device {service.engine.device}, results in "
          f"{options.out})", file=sys.stderr)
    uvicorn.run(service.app, host=args.host, port=args.port, log_level="info")
    return 0
