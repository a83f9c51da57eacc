"""``diagnosis.json``: one entry per preview, the summary, the exit code, and writing the file and its page."""

from __future__ import annotations

import time
from pathlib import Path

from ..errors import HarnessError
from ..fsutil import write_json_atomic
from .knobs import check_families
from .results import Diagnosis
from .sweep import diagnose_target

SCHEMA = "wan-parity/diagnosis@1"
STATUSES = ("exact", "explained", "likely", "numeric", "unexplained", "error", "unreproducible")


def run_diagnosis(engine_class, targets: list, options, out_dir, families=None, progress=None,
                  force: bool = False, exhaustive: bool = False) -> tuple[dict, int]:
    """``diagnose_main``'s body; ``engine_class`` is passed in so ``harness.diagnose.Engine`` stays the seam.

    A job's previews go earliest first; a variant that explains one bit-exactly is tried first, alone, on the
    job's later previews (one confirming render each) before they are swept.
    """
    wanted = check_families(families)
    started = time.perf_counter()
    engine = engine_class(options)
    ordered = sorted(targets, key=lambda t: (t.preview.case, t.preview.step, t.preview.index, t.model_name))
    entries, found = [], {}
    for target in ordered:
        entry = _entry(engine, target, wanted, force, progress, exhaustive, found.get(target.preview.case))
        if entry["status"] == "explained" and entry.get("best"):
            found[target.preview.case] = entry["best"]
        entries.append(entry)
    document = {"schema": SCHEMA, "environment": engine.environment(), "families": list(wanted),
                "summary": summarize(entries, time.perf_counter() - started), "diagnoses": entries}
    _write(document, out_dir)
    return document, exit_code(entries)


def _entry(engine, target, families, force: bool, progress, exhaustive: bool = False, hint: str | None = None) -> dict:
    """One preview's entry; unreproducible and bad-input previews get one without renders."""
    if target.preview.broken:
        return _entry_without_render(target, "error", target.preview.broken)
    if target.preview.unreproducible:
        return _entry_without_render(target, "unreproducible", target.preview.unreproducible)
    hook = None if progress is None else (lambda name, done, total: progress(target.key, name, done, total))
    try:
        return diagnose_target(engine, target, families, force=force, on_variant=hook, exhaustive=exhaustive,
                               hint=hint).to_json()
    except HarnessError as exc:
        return _entry_without_render(target, "error", exc.line())


def _entry_without_render(target, status: str, message: str) -> dict:
    diagnosis = Diagnosis(key=target.key, status=status, found=False, explanation=message, message=message, target=target)
    return diagnosis.to_json()


def _write(document: dict, out_dir) -> None:
    """The JSON first, then the page (a view of it) and the JSON again with the page's path or why it failed."""
    write_json_atomic(Path(out_dir) / "diagnosis.json", document)
    try:  # never lose the diagnosis or its exit code to the page
        from ..report import write_diagnosis_report

        document["report"] = str(write_diagnosis_report(document, out_dir))
    except Exception as exc:
        document["report"] = None
        document["report_error"] = f"diagnosis.html could not be written ({type(exc).__name__}: {exc})"
    write_json_atomic(Path(out_dir) / "diagnosis.json", document)


def summarize(entries: list[dict], seconds: float) -> dict:
    counts = {s: 0 for s in STATUSES}
    for e in entries:
        counts[e["status"]] = counts.get(e["status"], 0) + 1
    return {"total": len(entries), **counts, "found": sum(1 for e in entries if e["found"]), "seconds": round(seconds, 3)}


def exit_code(entries: list[dict]) -> int:
    """0 every diagnosed preview exact or explained (likely, numeric), 1 some preview stays unexplained, 2 some
    preview could not be diagnosed, 3 nothing was diagnosed (every preview unreproducible, or none)."""
    statuses = {e["status"] for e in entries}
    if "error" in statuses:
        return 2
    if "unexplained" in statuses:
        return 1
    return 0 if statuses - {"unreproducible"} else 3
