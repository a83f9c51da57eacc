"""``wan-parity report``: results files in, merged document and page out, and the nightly job's exit code.

Kept apart from :mod:`.html` so that rendering never depends on how inputs are found, merged or compared.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import HarnessError
from ..fsutil import write_json_atomic
from . import baseline as baseline_mod
from .batch import gc_paused
from .documents import load_baseline, load_shards, merge_shards
from .html import write_report
from .pictures import DEFAULT_LIMIT


@dataclass
class ReportOutcome:
    """What ``build_report`` did: the page, the merged document, and how the nightly job should exit."""

    path: Path
    document: dict
    regression_count: int = 0
    missing_count: int = 0
    merged_path: Path | None = None
    regressions_only: bool = False  # `--regressions-only`: standing failures do not fail the command

    @property
    def failing_count(self) -> int:
        return sum(1 for r in self.document.get("results") or [] if r.get("status") in ("fail", "error"))

    @property
    def exit_code(self) -> int:
        """1 regressions against the baseline, or failing/error results (not with ``regressions_only``); 3 no
        result was compared (every one unreproducible, or none); else 0. Bad input raises (exit 2)."""
        if self.regression_count or (self.failing_count and not self.regressions_only):
            return 1
        compared = any(r.get("status") in ("pass", "fail") for r in self.document.get("results") or [])
        return 0 if compared else 3


def _with_baseline(merged: dict, baseline, psnr_drop_db: float) -> dict:
    """``merged`` with its comparison against the previous night attached."""
    previous = load_baseline(baseline)
    try:
        comparison = baseline_mod.compare_to_baseline(merged, previous, psnr_drop_db)
    except ValueError as exc:
        raise HarnessError(None, "--psnr-drop", str(exc)) from None
    return baseline_mod.attach_baseline(merged, comparison, source=str(baseline))


def build_report(paths, out_dir, baseline=None, psnr_drop_db: float = 1.0, *, self_contained: bool = False,
                 inline: bool = False, diagnosis=None, max_pictures: int | None = DEFAULT_LIMIT,
                 progress=None) -> ReportOutcome:
    """``wan-parity report RESULTS.json... --out DIR [--baseline PREVIOUS.json]``.

    Loads and merges the inputs, compares them with ``baseline`` when given (see
    :func:`harness.report.baseline.compare_to_baseline`), writes ``DIR/report.html`` and, with several inputs
    or a baseline, ``DIR/results.merged.json`` (the merged document with the comparison attached: keep it as
    the next night's baseline). ``diagnosis`` (a diagnosis.json path or document) adds the drift-diagnosis blocks.
    ``self_contained``, ``max_pictures`` and ``progress(done, total)`` are :func:`~harness.report.html.write_report`'s.
    Problems with the inputs raise :class:`~harness.errors.HarnessError` (a file that is not a readable results
    document names itself).
    """
    if not paths:
        raise HarnessError(None, "report", "give at least one results JSON file or output folder")
    with gc_paused():
        return _build(paths, Path(out_dir), baseline, psnr_drop_db, self_contained or inline, diagnosis, max_pictures,
                      progress)


def _build(paths, out_dir: Path, baseline, psnr_drop_db, self_contained, diagnosis, max_pictures, progress):
    shards, dirs = load_shards(paths)
    merged = merge_shards(shards)
    if baseline is not None:
        merged = _with_baseline(merged, baseline, psnr_drop_db)
    merged_path = None
    if len(shards) > 1 or baseline is not None:
        merged_path = write_json_atomic(out_dir / "results.merged.json", merged)
    page = write_report(merged, out_dir, self_contained=self_contained, search_dirs=list(dict.fromkeys(dirs)),
                        diagnosis=diagnosis, max_pictures=max_pictures, progress=progress)
    info = merged.get("baseline") or {}
    return ReportOutcome(path=page, document=merged, regression_count=baseline_mod.regression_count(merged),
                         missing_count=len(info.get("missing") or []), merged_path=merged_path)


def report_main(paths, out_dir, baseline=None, psnr_drop_db: float = 1.0) -> Path:
    """``wan-parity report``: :func:`build_report` returning only the page's path (kept for callers of the
    path-returning API; the CLI should use ``build_report(...).exit_code``)."""
    return build_report(paths, out_dir, baseline=baseline, psnr_drop_db=psnr_drop_db).path
