"""Drift diagnoses (``diagnosis.json`` from ``wan-parity diagnose``) as data for the HTML templates.

Each diagnosis becomes a :class:`DiagnosisView`: its one-sentence explanation and the ranked variant table (best
first: bit-exact, then encoded PSNR min, then mean), with the best explanation's row marked. The views are plain
strings and numbers; the templates escape all of them (autoescape, no ``|safe``). CSS classes and element ids are
chosen here from fixed lists, never taken from the document.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import HarnessError
from .format import NO_VALUE, css_class, environment_rows, fmt_list, fmt_optional, fmt_seconds, fmt_value, plural, quality_cells

SCHEMA = "wan-parity/diagnosis@1"  # = harness.diagnose.SCHEMA (not imported: that module pulls in the renderer)
STATUSES = ("exact", "explained", "likely", "numeric", "unexplained", "error", "unreproducible")
STATUS_HELP = {
    "exact": "the baseline render is already bit-exact",
    "explained": "one single-knob variant is bit-exact",
    "likely": "one variant passes where the baseline does not",
    "numeric": "the baseline is closest and within thresholds: numeric drift",
    "unexplained": "no single knob gets within thresholds",
    "error": "could not be diagnosed (bad input)",
    "unreproducible": "not reproducible (e.g. a random seed)",
}


@dataclass
class VariantRow:
    rank: str
    variant: str
    family: str
    description: str
    changes: str
    bit_exact: str
    psnr_min: str
    psnr_mean: str
    ssim_min: str
    ssim_mean: str
    max_abs_diff: str
    mismatch: str
    same_as: str
    seconds: str
    is_best: bool = False
    is_baseline: bool = False


@dataclass
class DiagnosisView:
    id: str
    key: str
    status: str
    status_class: str
    status_help: str
    found: bool
    explanation: str
    best: str
    where: str  # case / step / index / golden, one line
    profile: str
    swept: bool
    seconds: str
    message: str
    rows: list[VariantRow] = field(default_factory=list)
    best_row: VariantRow | None = None
    baseline_row: VariantRow | None = None


def _changes(value) -> str:
    if isinstance(value, dict):
        if not value:
            return NO_VALUE
        return "; ".join(f"{k} = {fmt_value(v)}" for k, v in value.items())
    return fmt_value(value)


def _row(r: dict) -> VariantRow:
    return VariantRow(
        rank=fmt_value(r.get("rank")), variant=fmt_value(r.get("variant")), family=fmt_value(r.get("family")),
        description=str(r.get("description") or ""), changes=_changes(r.get("changes")),
        bit_exact=fmt_value(r.get("bit_exact")), **quality_cells(r),
        max_abs_diff=fmt_value(r.get("max_abs_diff")), mismatch=str(r.get("mismatch") or ""),
        same_as=str(r.get("same_as") or ""), seconds=fmt_seconds(r.get("seconds")),
        is_baseline=r.get("variant") == "baseline")


def build_view(entry: dict, view_id: str) -> DiagnosisView:
    """One diagnosis entry as template data; tolerant of hand-edited entries (missing or odd fields)."""
    status = entry.get("status")
    where = [f"{name} {fmt_value(entry.get(name))}" for name in ("case", "step", "index") if entry.get(name) is not None]
    if entry.get("golden"):
        where.append(f"golden {fmt_value(entry.get('golden'))}")
    profile = fmt_optional(entry.get("profile"))
    if profile and entry.get("profile_why"):
        profile += f" ({fmt_value(entry.get('profile_why'))})"
    rows = [_row(r) for r in entry.get("ranked") or [] if isinstance(r, dict)]
    best_name = entry.get("best")
    best = next((r for r in rows if best_name is not None and r.variant == str(best_name)), None)
    if best is None and rows and status not in ("error", "unreproducible"):
        best = rows[0]  # no named best (exact, numeric, nothing changed the render): the top-ranked render
    if best is not None:
        best.is_best = True
    message = fmt_optional(entry.get("message"))
    explanation = fmt_optional(entry.get("explanation"))
    if message == explanation:
        message = ""
    return DiagnosisView(
        id=view_id, key=fmt_value(entry.get("key")) if entry.get("key") is not None else "(no key)",
        status=fmt_value(status) if status is not None else "unknown", status_class=css_class(status, STATUSES),
        status_help=STATUS_HELP.get(status, "") if isinstance(status, str) else "", found=bool(entry.get("found")),
        explanation=explanation or "(no explanation recorded)", best=fmt_optional(best_name),
        where=" · ".join(where), profile=profile, swept=bool(entry.get("swept")), seconds=fmt_seconds(entry.get("seconds")),
        message=message, rows=rows, best_row=best, baseline_row=next((r for r in rows if r.is_baseline), None))


def check_document(document) -> dict:
    """The diagnosis document itself, checked enough to render (raises HarnessError otherwise)."""
    if isinstance(document, (str, Path)):
        path = Path(document)
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise HarnessError(path, "diagnosis", "file not found") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise HarnessError(path, "diagnosis", f"cannot read diagnosis JSON: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("diagnoses"), list):
        raise HarnessError(None, "diagnosis", "not a diagnosis document (no 'diagnoses' list)")
    schema = document.get("schema", SCHEMA)
    if schema != SCHEMA:
        raise HarnessError(None, "diagnosis", f"schema {schema!r}; this harness reads {SCHEMA}")
    return document


def entries(document: dict) -> list[dict]:
    return [e for e in document.get("diagnoses") or [] if isinstance(e, dict)]


def summary_counts(document: dict) -> list[tuple[str, str, str]]:
    """(label, css class, value) for the count boxes: the recorded summary, or one counted from the entries."""
    summary = document.get("summary") if isinstance(document.get("summary"), dict) else None
    items = entries(document)
    if summary is None:
        summary = {"total": len(items), **{s: sum(1 for e in items if e.get("status") == s) for s in STATUSES},
                   "found": sum(1 for e in items if e.get("found"))}
    out = [("total", "", fmt_value(summary.get("total", len(items))))]
    out += [(s, s, fmt_value(summary.get(s, 0))) for s in STATUSES]
    out.append(("explanation found", "", fmt_value(summary.get("found", 0))))
    if summary.get("seconds") is not None:
        out.append(("seconds", "", fmt_seconds(summary.get("seconds"))))
    return out


def overview_row(view: DiagnosisView) -> dict:
    base, best = view.baseline_row, view.best_row
    return {"id": view.id, "key": view.key, "status": view.status, "status_class": view.status_class,
            "best": view.best or (best.variant if best is not None and not best.is_baseline else NO_VALUE),
            "baseline_psnr": base.psnr_min if base else "n/a",
            "best_psnr": best.psnr_min if best else "n/a",
            "explanation": view.explanation}


def families_text(document: dict) -> str:
    """The families a diagnosis swept, as one line."""
    return fmt_list(document.get("families"))


def _verdict(views: list[DiagnosisView]) -> tuple[str, str]:
    """The page's overall status class and banner: bad input first, then unexplained drift, then all clear."""
    unexplained = sum(1 for v in views if v.status_class == "unexplained")
    errors = sum(1 for v in views if v.status_class == "error")
    if not views:
        return "unknown", "no previews were diagnosed"
    if errors:
        return "error", f"{plural(errors, 'preview')} could not be diagnosed (bad input)"
    if unexplained:
        return "fail", f"{plural(unexplained, 'preview')}: no single knob explains the drift"
    if {v.status_class for v in views} <= {"exact", "unreproducible"}:
        return "pass", "every reproducible preview is already bit-exact"
    return "pass", "every drifting preview has an explanation"


def page_view(document: dict) -> dict:
    """Template data of ``diagnosis.html`` (without the page's title line): verdict, counts, one block per entry."""
    views = [build_view(entry, f"d{n}") for n, entry in enumerate(entries(document))]
    overall, banner = _verdict(views)
    return {"previews": len(views), "schema": fmt_value(document.get("schema", SCHEMA)),
            "families": families_text(document), "overall": overall, "banner": banner,
            "counts": summary_counts(document), "environment": environment_rows(document.get("environment") or {}),
            "overview": [overview_row(v) for v in views], "views": views}
