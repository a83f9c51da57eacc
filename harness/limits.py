"""The bounds every user-given value is checked against before any model loads, and the parsers that enforce them.

A value outside these bounds used to pass validation and fail minutes later with a traceback (a seed torch cannot
take, a NaN tolerance that breaks the strict-JSON results, ``--threads 100000`` segfaulting inside OpenMP, a YAML
file nested deeper than Python's recursion limit, a preview of 16383² pixels). Each check raises the one-line
:class:`~harness.errors.HarnessError` naming the file and the field.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from .errors import HarnessError

# torch.manual_seed (what ai-toolkit seeds with, §3) accepts [-2**63, 2**64 - 1]; negatives wrap to 2**64 + seed.
SEED_MIN, SEED_MAX = -(2 ** 63), 2 ** 64 - 1
MAX_DEPTH = 64  # nesting of a job, case, stack or request file: real ones stay under 10
MAX_STACK_THREADS = 4096  # a recorded thread count; torch segfaults setting ~100000
MAX_FRAME_PIXELS = 4096 * 4096  # a preview or control image frame (Wan previews are about 1280x720)
MAX_CLIP_PIXELS = 2 ** 30  # all frames of one preview (81 frames of 1280x720 are 75M)


def check_seed(value: int, file, field: str) -> int:
    """A seed torch can be seeded with (-1 means random and is handled by the caller)."""
    if not SEED_MIN <= value <= SEED_MAX:
        raise HarnessError(file, field, f"seed {value} is outside what torch.manual_seed accepts "
                                        f"[-2**63, 2**64-1], so ai-toolkit could not have rendered it")
    return value


def finite_number(value, file, field: str) -> float:
    """A finite float from a number or its text (bools, NaN and infinities refused)."""
    if isinstance(value, bool):
        raise HarnessError(file, field, f"must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise HarnessError(file, field, f"must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise HarnessError(file, field, f"must be a finite number, got {value!r}")
    return number


def cpu_count() -> int:
    return os.cpu_count() or 1


def check_threads(value, file, field: str, limit: int | None = None) -> int:
    """A CPU thread count in 1 .. this machine's CPUs (``limit``: a recorded count may name another machine's)."""
    limit = limit or cpu_count()
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
        where = "this machine has" if limit == cpu_count() else "at most"
        raise HarnessError(file, field, f"must be a whole number from 1 to {limit} ({where} {limit} CPUs), "
                                        f"got {value!r}")
    return value


def check_depth(data, file, limit: int = MAX_DEPTH) -> None:
    """Refuse structures nested deeper than ``limit`` (walked without recursion: the point is to avoid it)."""
    pending = [(data, 1)]
    while pending:
        node, depth = pending.pop()
        if isinstance(node, (dict, list)):
            if depth > limit:
                raise _too_deep(file, limit)
            children = node.values() if isinstance(node, dict) else node
            pending.extend((child, depth + 1) for child in children)


def _too_deep(file, limit: int = MAX_DEPTH) -> HarnessError:
    return HarnessError(file, None, f"nested more than {limit} levels deep; not a file this harness reads")


def parse_yaml(text: str, file):
    """``yaml.safe_load`` with the nesting bound; a syntax error names the line (HarnessError)."""
    import yaml

    try:
        data = yaml.safe_load(text)
    except RecursionError:
        raise _too_deep(file) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "unknown line"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise HarnessError(file, where, f"YAML does not parse: {problem}; fix the syntax") from None
    check_depth(data, file)
    return data


def read_yaml_mapping(path: Path, hint: str, not_mapping: str) -> dict:
    """A YAML file's top-level mapping: unreadable, non-text, unparsable or non-mapping files are one line naming it
    (``hint`` says what to give instead, ``not_mapping`` what a non-mapping top level means)."""
    try:
        data = parse_yaml(path.read_text(encoding="utf-8"), path)
    except UnicodeDecodeError:
        raise HarnessError(path, None, f"not a text file; give {hint}") from None
    except OSError as exc:
        raise HarnessError(path, None, f"cannot be read ({exc.strerror}); check its permissions") from None
    if not isinstance(data, dict):
        raise HarnessError(path, None, not_mapping)
    return data


def parse_json(text: str, file):
    """``json.loads`` refusing NaN/Infinity tokens (strict JSON) and deep nesting (HarnessError naming ``file``)."""
    def no_constant(token: str):
        raise ValueError(f"{token} is not a JSON number (write a finite number)")

    try:
        data = json.loads(text, parse_constant=no_constant)
    except RecursionError:
        raise _too_deep(file) from None
    except json.JSONDecodeError as exc:
        raise HarnessError(file, f"line {exc.lineno} column {exc.colno}", f"JSON does not parse: {exc.msg}") from None
    except ValueError as exc:  # a NaN/Infinity token
        raise HarnessError(file, None, f"not strict JSON: {exc}") from None
    check_depth(data, file)
    return data


def check_frame_size(width: int, height: int, file, field: str = "size", frames: int = 1) -> None:
    """An image small enough to decode: a 16383² frame is 800 MB before anything is compared."""
    if width * height > MAX_FRAME_PIXELS:
        raise HarnessError(file, field, f"is {width}x{height} pixels, more than any Wan preview or control image "
                                        f"(limit {MAX_FRAME_PIXELS:,} pixels a frame); not decoded")
    if width * height * frames > MAX_CLIP_PIXELS:
        raise HarnessError(file, "frames", f"{frames} frames of {width}x{height} are more pixels than any Wan preview "
                                           f"(limit {MAX_CLIP_PIXELS:,}); not decoded")
