"""Atomic file writes: a crash, Ctrl-C or a full disk never leaves half a result, case or render behind.

A write never follows or replaces anything but a regular file: ``--json /dev/null`` as root must not turn
/dev/null into a regular file, and a symlink planted in ``--out`` must not redirect a write elsewhere.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Callable, IO

from .errors import HarnessError


def write_atomic(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Temp file in the target folder + ``os.replace``: readers see the old file or the new one, never a mix."""
    path = Path(path)
    refuse_non_regular(path)
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


_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def file_kind(path: str | os.PathLike, follow: bool = True) -> str | None:
    """None for a regular file, else what the path is instead (``missing``, ``a folder``, ``a symlink loop`` ...).

    Never opens the path (opening a FIFO blocks); ``follow=False`` calls a symlink itself ``a symlink``."""
    try:
        mode = os.stat(path).st_mode if follow else os.lstat(path).st_mode
    except FileNotFoundError:
        return "a broken symlink" if os.path.islink(path) else "missing"
    except OSError as exc:  # ELOOP, EACCES, ENAMETOOLONG ...
        return "a symlink loop" if exc.errno == errno.ELOOP else f"unreadable ({exc.strerror})"
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISLNK(mode):
        return "a symlink"
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def refuse_non_regular(path: Path) -> None:
    """Writes may create a file or replace a regular one, nothing else (a symlink, a device, a folder ...)."""
    kind = file_kind(path, follow=False)
    if kind not in (None, "missing"):
        raise HarnessError(path, None, f"is {kind}, not a regular file; refusing to write through or replace it "
                                       "(choose another path)")
