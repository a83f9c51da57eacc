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

PSNR values follow the results JSON: numbers, or the string ``"inf"`` for identical frames (``float('inf')``
is accepted too). ∞ → finite is a loss of bit-exactness, finite → ∞ a gain.
"""

from __future__ import annotations

import math

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


def as_psnr(value) -> float | None:
    """A PSNR from the results JSON as a float: ``"inf"``/``"Infinity"`` → inf, junk / NaN / bool → None."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("inf", "+inf", "infinity", "+infinity", "∞"):
            return math.inf
        if text in ("-inf", "-infinity"):
            return -math.inf
        try:
            value = float(text)
        except ValueError:
            return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _json_number(value: float | None):
    if value is None:
        return None
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return round(value, 4)


def _bit_exact(result: dict, psnr: float | None) -> bool | None:
    flag = result.get("bit_exact")
    if isinstance(flag, bool):
        return flag
    if psnr is not None:
        return math.isinf(psnr) and psnr > 0
    return None


def _fmt_db(value: float | None) -> str:
    if value is None:
        return "n/a"
    if math.isinf(value):
        return "∞" if value > 0 else "-∞"
    return f"{value:.2f} dB"


def _status(result: dict) -> str:
    status = result.get("status")
    return status if isinstance(status, str) and status else "unknown"


def classify(current: dict, previous: dict | None, psnr_drop_db: float = 1.0) -> dict:
    """One preview's category against its previous result (None: not in the baseline)."""
    now_status = _status(current)
    now_psnr = as_psnr(current.get("psnr_min"))
    now_exact = _bit_exact(current, now_psnr)
    entry = {"category": NEW, "reasons": [], "status": now_status, "bit_exact": now_exact,
             "psnr_min": _json_number(now_psnr), "baseline_status": None, "baseline_bit_exact": None,
             "baseline_psnr_min": None, "psnr_delta": None}
    if previous is None:
        entry["reasons"].append(f"not in the baseline (now {now_status})")
        return entry
    old_status = _status(previous)
    old_psnr = as_psnr(previous.get("psnr_min"))
    old_exact = _bit_exact(previous, old_psnr)
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


def _by_key(document: dict) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for r in (document or {}).get("results") or []:
        if isinstance(r, dict) and isinstance(r.get("key"), str):
            out[r["key"]] = r
    return out


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
    """Categorize every result of ``document`` against ``baseline_document`` (both results documents).

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
    previous = _by_key(baseline_document)
    results: dict[str, dict] = {}
    anonymous = 0
    for r in (document or {}).get("results") or []:
        if not isinstance(r, dict):
            continue
        key = r.get("key")
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


def regression_count(document: dict) -> int:
    """How many previews regressed, from an attached comparison (0 without one)."""
    baseline = document.get("baseline") if isinstance(document, dict) else None
    if not isinstance(baseline, dict):
        return 0
    return int((baseline.get("counts") or {}).get(REGRESSION, 0))
