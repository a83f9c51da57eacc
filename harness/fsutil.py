"""Atomic file writes: a crash, Ctrl-C or a full disk never leaves half a result, case or render behind."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Callable, IO

from .errors import HarnessError


def write_atomic(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Temp file in the target folder + ``os.replace``: readers see the old file or the new one, never a mix."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise HarnessError(path.parent, None, f"cannot write here ({exc.strerror}); choose another --out") from None
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are meant to be shared
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise HarnessError(path, None, f"write failed ({exc.strerror}); nothing was left half-written") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return write_atomic(path, lambda handle: handle.write(text.encode("utf-8")))


def write_json_atomic(path: str | os.PathLike, data) -> Path:
    """Strict JSON (no NaN/Infinity tokens): nightly consumers in other languages must parse it."""
    return write_text_atomic(path, json.dumps(data, indent=2, allow_nan=False, default=str) + "\n")
