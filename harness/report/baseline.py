"""Night-over-night comparison: which previews regressed against a previous results document.

``compare_to_baseline`` puts every preview of tonight's (merged) document into one category:

* ``regression`` — lost bit-exactness; or its encoded ``psnr_min`` fell by more than ``psnr_drop_db``; or it
  passed last time and now fails / errors / can no longer be checked (``unreproducible``). A failing preview
  that got markedly worse is a regression too, so a standing failure can never hide a new drift.
* ``improvement`` — gained bit-exactness, went from fail/error to pass, or PSNR rose by more than the threshold.
* ``standing_failure`` — failing (fail/error) now and last time, and not worse by the rules above.
* ``new`` — no result with that key last time (or last time it was unreproducible and now it is checked).
* ``unchanged`` — anything else.

Keys the baseline had and tonight lacks are listed as ``missing`` (a crashed shard shows up here); they are
not counted as regressions, because pytest's own exit code already reports a broken shard.

Both nights are read as :class:`~harness.result.PreviewResult` records (any readable schema), so PSNR is a float
here (``math.inf`` for identical frames) and the entries are written back through :mod:`harness.numbers`
(``"inf"``). ∞ → finite is a loss of bit-exactness, finite → ∞ a gain.
"""

from __future__ import annotations

import math

from ..numbers import to_json
from ..result import PreviewResult, results_of
from .format import fmt_metric

REGRESSION = "regression"
IMPROVEMENT = "improvement"
STANDING = "standing_failure"
NEW = "new"
UNCHANGED = "unchanged"
CATEGORIES = (REGRESSION, NEW, STANDING, IMPROVEMENT, UNCHANGED)
LABELS = {REGRESSION: "regression", IMPROVEMENT: "improvement", STANDING: "standing failure", NEW: "new",
          UNCHANGED: "unchanged", "missing": "missing"}
BAD = ("fail", "error")

# environment keys that change every night and say nothing about the stack
_VOLATILE_ENV = {"hostname", "date", "time", "timestamp", "pid"}


def _json_number(value: float | None):
    """A PSNR (or its change) for the entry: rounded, with ∞ as :mod:`harness.numbers` writes it."""
    return to_json(None if value is None else round(value, 4))


def _fmt_db(value: float | None) -> str:
    """A PSNR in a reason: "41.00 dB", "∞" or "n/a"."""
    text = fmt_metric(value)
    return f"{text} dB" if value is not None and math.isfinite(value) else text


def _status(result: PreviewResult) -> str:
    status = result.status
    return status if isinstance(status, str) and status else "unknown"


def classify(current: PreviewResult, previous: PreviewResult | None, psnr_drop_db: float = 1.0) -> dict:
    """One preview's category against its previous result (None: not in the baseline)."""
    now_status = _status(current)
    now_psnr = current.psnr_min
    now_exact = current.bit_exact
    entry = {"category": NEW, "reasons": [], "status": now_status, "bit_exact": now_exact,
             "psnr_min": _json_number(now_psnr), "baseline_status": None, "baseline_bit_exact": None,
             "baseline_psnr_min": None, "psnr_delta": None}
    if previous is None:
        entry["reasons"].append(f"not in the baseline (now {now_status})")
        return entry
    old_status = _status(previous)
    old_psnr = previous.psnr_min
    old_exact = previous.bit_exact
    entry.update(baseline_status=old_status, baseline_bit_exact=old_exact, baseline_psnr_min=_json_number(old_psnr))
    delta = None
    if now_psnr is not None and old_psnr is not None and not (math.isinf(now_psnr) and now_psnr == old_psnr):
        delta = now_psnr - old_psnr
    entry["psnr_delta"] = _json_number(delta)

    worse: list[str] = []
    better: list[str] = []
    if old_exact is True and now_exact is False:
        worse.append(f"lost bit-exactness (encoded PSNR min now {_fmt_db(now_psnr)})")
    elif old_exact is False and now_exact is True:
        better.append("became bit-exact")
    if delta is not None and not (old_exact is True and now_exact is False):
        if delta < -psnr_drop_db:
            worse.append(f"encoded PSNR min fell {_fmt_db(old_psnr)} → {_fmt_db(now_psnr)} "
                         f"(more than {psnr_drop_db:g} dB)")
        elif delta > psnr_drop_db and not (old_exact is False and now_exact is True):
            better.append(f"encoded PSNR min rose {_fmt_db(old_psnr)} → {_fmt_db(now_psnr)}")
    if old_status == "pass" and now_status != "pass":
        if now_status == "unreproducible":
            worse.append("passed in the baseline, now unreproducible (no longer checked)")
        else:
            worse.append(f"pass → {now_status}")
    elif old_status in BAD and now_status == "pass":
        better.append(f"{old_status} → pass")

    if worse:
        entry["category"], entry["reasons"] = REGRESSION, worse
    elif now_status in BAD and old_status == "unreproducible":
        entry["category"] = NEW
        entry["reasons"] = [f"unreproducible in the baseline, now checked: {now_status}"]
    elif now_status in BAD and old_status in BAD:
        entry["category"] = STANDING
        entry["reasons"] = [f"{old_status} → {now_status}" if old_status != now_status else f"still {now_status}"] + better
    elif better:
        entry["category"], entry["reasons"] = IMPROVEMENT, better
    else:
        entry["category"] = UNCHANGED
        if old_status != now_status:
            entry["reasons"] = [f"{old_status} → {now_status}"]
    return entry


def _by_key(results: list[PreviewResult]) -> dict[str, PreviewResult]:
    return {r.key: r for r in results if isinstance(r.key, str)}


def environment_changes(current: dict, previous: dict) -> list[dict]:
    """Stack differences between the nights (torch, GPU, driver, codec...): the first suspects of a regression."""
    changes = []
    current, previous = current or {}, previous or {}
    for key in list(dict.fromkeys([*previous, *current])):
        if key in _VOLATILE_ENV:
            continue
        a, b = previous.get(key), current.get(key)
        if a != b:
            changes.append({"key": str(key), "baseline": a, "current": b})
    return changes


def compare_to_baseline(document: dict, baseline_document: dict, psnr_drop_db: float = 1.0) -> dict:
    """Categorize every result of ``document`` against ``baseline_document`` (both results documents, any
    readable schema; a corrupt result is a :class:`~harness.errors.HarnessError`).

    Returns ``{"psnr_drop_db", "counts": {category: n, "missing": n}, "regressions": [keys],
    "missing": [keys], "environment_changes": [{key, baseline, current}], "results": {key: entry}}`` where
    an entry is ``{"category", "reasons": [...], "status", "baseline_status", "bit_exact",
    "baseline_bit_exact", "psnr_min", "baseline_psnr_min", "psnr_delta"}`` (PSNR as numbers or "inf").
    Results without a key cannot be matched and count as ``new``. Neither document is modified.
    """
    try:
        psnr_drop_db = float(psnr_drop_db)
    except (TypeError, ValueError):
        raise ValueError(f"psnr_drop_db must be a number, got {psnr_drop_db!r}") from None
    if math.isnan(psnr_drop_db) or psnr_drop_db < 0:
        raise ValueError(f"psnr_drop_db must be ≥ 0, got {psnr_drop_db}")
    previous = _by_key(results_of(baseline_document or {}))
    results: dict[str, dict] = {}
    anonymous = 0
    for r in results_of(document or {}):
        key = r.key
        if not isinstance(key, str):
            anonymous += 1
            entry = classify(r, None, psnr_drop_db)
            entry["reasons"] = ["result has no key; cannot be matched with the baseline"]
            results[f"(result without key {anonymous})"] = entry
            continue
        results[key] = classify(r, previous.get(key), psnr_drop_db)
    missing = sorted(k for k in previous if k not in results)
    counts = {c: 0 for c in CATEGORIES}
    for entry in results.values():
        counts[entry["category"]] += 1
    counts["missing"] = len(missing)
    return {
        "psnr_drop_db": psnr_drop_db,
        "counts": counts,
        "regressions": [k for k, e in results.items() if e["category"] == REGRESSION],
        "missing": missing,
        "environment_changes": environment_changes((document or {}).get("environment"),
                                                   (baseline_document or {}).get("environment")),
        "results": results,
    }


def attach_baseline(document: dict, comparison: dict, source: str | None = None) -> dict:
    """A copy of ``document`` with ``document["baseline"]`` (the comparison without its per-key map) and a
    ``"regression"`` entry on every result that has a key."""
    per_key = comparison.get("results") or {}
    summary = {k: v for k, v in comparison.items() if k != "results"}
    if source is not None:
        summary["source"] = str(source)
    out = dict(document)
    out["baseline"] = summary
    out["results"] = [dict(r, regression=per_key[r["key"]]) if isinstance(r, dict) and r.get("key") in per_key else r
                      for r in document.get("results") or []]
    return out


def regression_entries(document: dict) -> list[dict | None]:
    """The entries :func:`attach_baseline` put on the results, in result order (None where a result has none).

    They annotate the results JSON and are not part of :class:`~harness.result.PreviewResult`, so the page reads
    them here, beside the results it reads through :func:`~harness.result.results_of`.
    """
    return [r.get("regression") if isinstance(r, dict) else None for r in document.get("results") or []]


def regression_count(document: dict) -> int:
    """How many previews regressed, from an attached comparison (0 without one)."""
    baseline = document.get("baseline") if isinstance(document, dict) else None
    if not isinstance(baseline, dict):
        return 0
    return int((baseline.get("counts") or {}).get(REGRESSION, 0))
