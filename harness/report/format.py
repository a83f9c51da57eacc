"""Value formatting for the report pages: every cell is a plain string, so templates only escape and print.

The helpers are tolerant on purpose: results and diagnosis documents may be hand-edited, and one odd value
must print as its text rather than break the page.
"""

from __future__ import annotations

import json

from ..numbers import INF, fmt_db

NO_VALUE = "—"
INFINITY = "∞"
QUALITY = ("psnr_min", "psnr_mean", "ssim_min", "ssim_mean")


def fixed(value, digits: int, missing: str = "n/a") -> str:
    """``value`` with ``digits`` decimals; ``missing`` for None; anything that is not a number as its text."""
    if value is None:
        return missing
    try:
        return f"{float(value):.{digits}f}"
    except (TypeError, ValueError):
        return str(value)


def fmt_metric(value, digits: int = 2, missing: str = "n/a") -> str:
    """A PSNR or SSIM for the page: :func:`harness.numbers.fmt_db`'s text with infinity shown as ∞.

    ``value`` is a float or a value as results JSON holds it; a hand-edited non-number prints as its own text.
    """
    try:
        text = fmt_db(value, digits, missing)
    except (TypeError, ValueError):
        return str(value)
    return text.replace(INF, INFINITY)  # "inf" → "∞", "-inf" → "-∞"


def fmt_seconds(value) -> str:
    return fixed(value, 2, missing=NO_VALUE)


def fmt_value(value) -> str:
    """Any JSON value as one line: None as a dash, booleans as yes/no, lists joined, objects as sorted JSON."""
    if value is None:
        return NO_VALUE
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return " | ".join(fmt_value(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def fmt_optional(value) -> str:
    """:func:`fmt_value` for a value that is shown only when set (empty string for None, "" and the like)."""
    return fmt_value(value) if value else ""


def fmt_list(values) -> str:
    """A recorded list (e.g. swept families) as one comma-separated line; a dash when absent or empty."""
    return ", ".join(str(v) for v in values) if isinstance(values, list) and values else NO_VALUE


def quality_cells(record) -> dict[str, str]:
    """The PSNR/SSIM min/mean quartet that every metrics table shows, formatted.

    ``record``: a :class:`~harness.metrics.Comparison` or :class:`~harness.result.PreviewResult` (attributes), or a
    row of a diagnosis document (a JSON dict).
    """
    value = record.get if isinstance(record, dict) else (lambda name: getattr(record, name))
    return {name: fmt_metric(value(name), 2 if name.startswith("psnr") else 4) for name in QUALITY}


def plural(count: int, word: str) -> str:
    return f"{count} {word}{'s' if count != 1 else ''}"


def css_class(value, allowed) -> str:
    """A CSS class chosen from a fixed list, never taken from the document ("unknown" otherwise)."""
    return value if value in allowed else "unknown"


def environment_rows(environment: dict, differs=()) -> list[tuple[str, str, bool]]:
    """(key, value, differs between shards) for the environment-fingerprint table."""
    return [(str(k), fmt_value(v), k in differs) for k, v in environment.items()]


def fmt_num(value) -> str:
    """A setting as short text: floats to 4 significant digits (one decimal from 10 up), None as n/a."""
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)
