"""The ranked table of one diagnosis as plain text, for the CLI and logs."""

from __future__ import annotations

from ..numbers import fmt_db
from .results import Diagnosis


def format_table(diagnosis: Diagnosis | dict) -> str:
    """The ranked table as plain text (for the CLI and logs)."""
    data = diagnosis.to_json() if isinstance(diagnosis, Diagnosis) else diagnosis
    lines = [f"{data['key']}: {data['explanation']}",
             f"{'#':>3}  {'variant':<34} {'family':<10} {'exact':<5} {'PSNR min':>9} {'PSNR mean':>9} {'SSIM min':>8} {'s':>7}"]
    for r in data["ranked"]:
        lines.append(f"{r['rank']:>3}  {r['variant'][:34]:<34} {r['family']:<10} {'yes' if r['bit_exact'] else 'no':<5} "
                     f"{_cell(r['psnr_min']):>9} {_cell(r['psnr_mean']):>9} {_cell(r['ssim_min'], 4):>8} "
                     f"{r['seconds']:>7.2f}" + (f"  = {r['same_as']}" if r.get("same_as") else ""))
    return "\n".join(lines)


def _cell(value, digits: int = 2) -> str:
    """A JSON number as a table cell: "-" when not computed, "inf" for identical frames."""
    return fmt_db(value, digits, "-")
