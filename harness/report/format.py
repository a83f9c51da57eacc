"""Value formatting for the report pages: every cell is a plain string, so templates only escape and print.

The helpers are tolerant on purpose: results and diagnosis documents may be hand-edited, and one odd value
must print as its text rather than break the page.
"""

from __future__ import annotations

import json
import math

NO_VALUE = "—"


def fixed(value, digits: int, missing: str = "n/a") -> str:
    """``value`` with ``digits`` decimals; ``missing`` for None; anything that is not a number as its text."""
    if value is None:
        return missing
    try:
        return f"{float(value):.{digits}f}"
    except (TypeError, ValueError):
        return str(value)


def fmt_psnr(value) -> str:
    """PSNR in dB as the results JSON holds it: a number, or ``"inf"`` for identical frames (shown as ∞)."""
    if value in ("inf", "Infinity") or (isinstance(value, float) and math.isinf(value)):
        return "∞"
    return fixed(value, 2)


def fmt_ssim(value) -> str:
    return fixed(value, 4)


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


def quality_cells(metrics: dict) -> dict[str, str]:
    """The PSNR/SSIM min/mean quartet that every metrics table shows, formatted."""
    return {"psnr_min": fmt_psnr(metrics.get("psnr_min")), "psnr_mean": fmt_psnr(metrics.get("psnr_mean")),
            "ssim_min": fmt_ssim(metrics.get("ssim_min")), "ssim_mean": fmt_ssim(metrics.get("ssim_mean"))}


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
