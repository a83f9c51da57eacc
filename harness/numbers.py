"""The one convention for non-finite numbers in results, and how numbers are shown to people.

PSNR of identical frames is ``math.inf`` in Python and the string ``"inf"`` in JSON: strict JSON has no infinity,
a string survives every parser and reads unambiguously, whereas ``null`` would be confused with "not computed".
NaN is written as ``null``. Every reader and writer of results goes through :func:`to_json` / :func:`from_json`.
"""

from __future__ import annotations

import math

import numpy as np

INF = "inf"


def to_json(value):
    """A value ready for strict JSON: numpy scalars as Python ones, ±inf as ``"inf"``/``"-inf"``, NaN as None."""
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if math.isnan(value):
            return None
        if math.isinf(value):
            return INF if value > 0 else "-" + INF
        return value
    return value


def from_json(value) -> float | None:
    """A number written by :func:`to_json` (or None) back as a float; anything else is a corrupt results file."""
    if value is None:
        return None
    if value == INF:
        return math.inf
    if value == "-" + INF:
        return -math.inf
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{value!r} is not a number (results write infinity as {INF!r})")
    return float(value)


def from_json_list(values) -> list[float] | None:
    return None if values is None else [from_json(v) for v in values]


def fmt_db(value, digits: int = 2, missing: str = "n/a") -> str:
    """A PSNR (or SSIM) for people: rounded, ``inf`` for identical frames, ``missing`` when not computed."""
    if value is None:
        return missing
    value = from_json(value) if isinstance(value, str) else float(value)
    return INF if math.isinf(value) and value > 0 else f"{value:.{digits}f}"
