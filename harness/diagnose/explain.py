"""From the ranking to a status and one sentence: the diagnosis' verdict on one preview.

Variants that render exactly like the baseline cannot explain anything, so they never count as the best one.
The "within thresholds" test is :func:`harness.metrics.passes`, the rule ``run``'s verdict uses.
"""

from __future__ import annotations

from ..numbers import fmt_db
from .knobs import BASELINE
from .results import FOUND_STATUSES, Diagnosis, Row


def explain(diagnosis: Diagnosis, baseline: Row, thresholds) -> None:
    """Set ``status``, ``found``, ``best`` and ``explanation`` from the ranked rows (or the baseline when unswept)."""
    if not diagnosis.swept:
        status, sentence = _shape(baseline) if baseline.mismatch else _exact(diagnosis.profile)
    elif baseline.bit_exact:
        status, sentence = _exact(diagnosis.profile)
    else:
        candidates = [r for r in diagnosis.ranked if r.variant != BASELINE.name and r.digest != baseline.digest]
        best = candidates[0] if candidates else None
        diagnosis.best = best.variant if best else None
        if best is not None and best.bit_exact:
            status, sentence = _matched(best, [r.variant for r in candidates[1:] if r.digest == best.digest])
        else:
            status, sentence = _closest(best, baseline, thresholds)
    diagnosis.status, diagnosis.found, diagnosis.explanation = status, status in FOUND_STATUSES, sentence


def _db(value) -> str:
    return fmt_db(value, 1)


def _shape(baseline: Row) -> tuple[str, str]:
    return "unexplained", (f"The golden and the render differ in shape ({baseline.mismatch}); no sampler knob changes "
                           "the frame count or size, so check width/height/num_frames snapping first.")


def _exact(profile: str | None) -> tuple[str, str]:
    return "exact", (f"The baseline render (profile {profile}) is already bit-exact with the golden; there is no "
                     "drift to explain.")


def _matched(best: Row, twins: list[str]) -> tuple[str, str]:
    """A single-knob variant is bit-exact: the explanation names it (and the variants rendering the same frames)."""
    also = f" (equivalently: {', '.join(twins)})" if twins else ""
    kind = "profile" if best.family == "profile" else "variant"
    return "explained", (f"The golden matches the `{best.variant}` {kind} ({best.description}){also} bit-exactly: "
                         f"{best.meaning}.")


def _closest(best: Row | None, baseline: Row, thresholds) -> tuple[str, str]:
    """Nothing is exact: a better variant within thresholds is likely, a passing baseline leaves numeric drift."""
    from ..metrics import passes  # lazily, like every metrics use here: importing the package stays light

    base_db = _db(baseline.psnr_min)
    better = best is not None and best.sort_key(1) < baseline.sort_key(0)
    if better and passes(best, thresholds):
        return "likely", (f"Closest: {best.variant} ({_db(best.psnr_min)} dB vs {base_db} dB baseline, encoded PSNR "
                          f"min) — {best.meaning}.")
    if passes(baseline, thresholds):
        return "numeric", (f"The baseline is the closest render ({base_db} dB, within thresholds) and no single knob "
                           "does better: the remaining drift is numeric (kernels, torch, GPU), not a setting.")
    if best is None:
        return "unexplained", ("No single knob explains the drift: no variant changed the render "
                               f"(baseline {base_db} dB).")
    verdict = "improves on" if better else "does not beat"
    return "unexplained", (f"No single knob explains the drift: the best variant, {best.variant}, reaches "
                           f"{_db(best.psnr_min)} dB and {verdict} the {base_db} dB baseline; suspect several knobs "
                           "at once, quantization, or another checkpoint.")
