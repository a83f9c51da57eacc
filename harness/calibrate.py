"""``wan-parity calibrate``: measure the noise floor of *your* stack and suggest pass/fail thresholds.

Why this measures the floor
---------------------------
A render differs from its golden preview for two kinds of reasons:

1. **semantic** differences — wrong checkpoint, seed, scheduler, boundary, LoRA multiplier, resize. These are
   what the harness exists to catch; they cost many dB (another checkpoint: 20–25 dB on the encoded view).
2. **numeric drift of the stack** — the golden came from ai-toolkit's machine (its GPU, torch, cuBLAS/cuDNN,
   attention kernel). Any other kernel sums in another order, the last bits differ, and 40 denoising steps plus
   the lossy WebP re-encode turn that into a few dB below ∞. That is not a parity bug.

Against the golden the two are mixed, so the golden cannot tell you where (2) ends. Your own stack can: keep every
semantic input fixed and change only *how* the arithmetic is done, then compare the render with itself.

* **render twice** (fresh prompt cache each time): determinism. If two identical runs differ, bit-exactness is
  impossible on this stack and the thresholds must absorb run-to-run noise (exit code 1 says so).
* **perturb** one kernel choice that leaves the maths unchanged: ``attention`` restricts SDPA to the MATH backend
  (the default picks flash / memory-efficient kernels on CUDA and a fused kernel on CPU), ``threads`` changes the
  CPU thread count (another reduction split). The PSNR of the perturbed render against the baseline render is the
  size of legitimate drift — the same order as moving to another GPU or torch build.

* **stack**: every real stack alternative this machine has (CPU: each ISA ceiling it can pin, each in a fresh
  process, and other thread counts; CUDA: each SDPA backend, TF32 flipped): their pairwise spread is the *envelope*
  (:mod:`harness.envelope`), written beside the case and used by ``run`` and pytest to judge goldens from other
  stacks instead of the fixed thresholds.

Suggested thresholds sit ``margin_db`` below the lowest observed encoded PSNR (and ``ssim_margin`` below the lowest
SSIM), clamped to [25, 45] dB and [0.80, 0.99]: never so strict that a lossy codec's re-quantisation of harmless
drift fails (45 dB), never so loose that a wrong checkpoint passes (25 dB). Without a perturbation only repeat
renders are measured; on a deterministic stack that floor is ∞ and the suggestion is the 45 dB cap, which says
little — use ``perturb``. ``require_bit_exact`` is suggested only when the stack is deterministic and every
calibrated render is already bit-exact with its golden (your stack *is* the golden's).

Output: a table on stdout and ``<out>/calibration.json`` (written atomically). Exit codes: 0 calibrated,
1 repeat renders differ (nondeterministic stack; thresholds still suggested), 2 bad input (a preview could not be
rendered; the others are still measured and written).
"""

from __future__ import annotations

import datetime as _dt
import math
from dataclasses import replace
from pathlib import Path

from .compare import Golden, compare_to_golden, read_golden
from .errors import HarnessError
from .fsutil import write_json_atomic
from .numbers import fmt_db, from_json, to_json

PERTURBATIONS = (None, "attention", "threads", "stack")
PSNR_BOUNDS = (25.0, 45.0)
SSIM_BOUNDS = (0.80, 0.99)
CALIBRATION_NAME = "calibration.json"
SCHEMA = "wan-parity/calibration@1"


# --------------------------------------------------------------------------- pure helpers


def _json_number(value: float | None):
    """A floor for calibration.json: rounded, infinity as :mod:`harness.numbers` writes it."""
    return to_json(None if value is None else round(float(value), 4))


def suggest_thresholds(psnr_floor: float | None, ssim_floor: float | None, margin_db: float = 3.0,
                       ssim_margin: float = 0.02) -> dict:
    """Thresholds from the lowest observed encoded PSNR / SSIM (inf / 1.0 when nothing drifted).

    psnr_min = floor(psnr_floor − margin_db) in [25, 45]; ssim_min = floor to 0.01 of (ssim_floor − ssim_margin)
    in [0.80, 0.99]. A missing floor (nothing measured) gives the upper bound.
    """
    lo, hi = PSNR_BOUNDS
    if psnr_floor is None or math.isinf(psnr_floor) and psnr_floor > 0:
        psnr = hi
    else:
        psnr = float(min(hi, max(lo, math.floor(psnr_floor - margin_db))))
    slo, shi = SSIM_BOUNDS
    if ssim_floor is None:
        ssim = shi
    else:
        ssim = min(shi, max(slo, math.floor(round((ssim_floor - ssim_margin) * 100, 6)) / 100))
    return {"psnr_min": psnr, "ssim_min": round(ssim, 2)}


def floor_of(comparisons: list[dict]) -> dict:
    """Lowest psnr_min / ssim_min over comparison JSONs (``Comparison.to_json``); mismatches are skipped."""
    psnrs = [from_json(c.get("psnr_min")) for c in comparisons if c and not c.get("mismatch")]
    ssims = [from_json(c.get("ssim_min")) for c in comparisons if c and not c.get("mismatch")]
    psnrs = [p for p in psnrs if p is not None]
    ssims = [s for s in ssims if s is not None]
    return {"psnr_min": min(psnrs) if psnrs else None, "ssim_min": min(ssims) if ssims else None}


def other_thread_count(current: int) -> int:
    """A different CPU thread count: half of the current one, or 2 when running single-threaded."""
    return current // 2 if current > 1 else 2


# --------------------------------------------------------------------------- rendering


class _AttentionMath:
    """Context: SDPA restricted to the MATH backend (a different kernel than the default, same maths)."""

    detail = "scaled_dot_product_attention restricted to SDPBackend.MATH"

    def __enter__(self):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        self._ctx = sdpa_kernel([SDPBackend.MATH])
        return self._ctx.__enter__()

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


def _render(options, target, models):
    """One render with a fresh Engine (fresh prompt cache) sharing the loaded ``models``."""
    from .engine import Engine

    engine = Engine(options, models=models)
    outcome = engine.render(target)
    return engine, outcome.frames, outcome.profile, outcome.seconds


def _views(reference, other, fps, ext) -> dict:
    """Two renders of one preview compared as a render is compared with its golden: lossless and re-encoded."""
    judged = compare_to_golden(other, Golden.from_render(reference, fps, ext))
    return {"bit_exact": bool(judged.raw_golden.bit_exact), "raw": judged.raw_golden.to_json(),
            "encoded": judged.encoded.to_json()}


def _against_golden(target, frames) -> dict:
    """The baseline render against the golden (what ``run`` would report), for context next to the floor."""
    try:
        encoded = compare_to_golden(frames, read_golden(target)).encoded.to_json()
    except HarnessError as exc:
        return {"error": exc.line()}
    return {"bit_exact": bool(encoded.get("bit_exact")), "psnr_min": encoded.get("psnr_min"),
            "ssim_min": encoded.get("ssim_min"), "mismatch": encoded.get("mismatch")}


def calibrate_preview(target, options, perturb: str | None, alt_threads: int | None = None, models=None) -> dict:
    """Baseline render, repeat render, optional perturbed render of one preview; comparisons as JSON."""
    import torch

    from .render.models import ModelCache

    models = models if models is not None else ModelCache()
    preview = target.preview
    ext, fps = preview.golden_ext, preview.sample.fps
    entry = {"key": target.key, "golden": str(preview.golden) if preview.golden else None, "error": None, "seconds": {}}
    try:
        engine, base, profile, entry["seconds"]["baseline"] = _render(options, target, models)
        threads = torch.get_num_threads()
        entry.update(device=str(engine.device_for(target)), threads=threads, profile=profile.name)
        _, again, _, entry["seconds"]["repeat"] = _render(options, target, models)
        entry["repeat"] = _views(base, again, fps, ext)
        entry["perturbed"] = None
        if perturb == "attention":
            with _AttentionMath():
                _, other, _, entry["seconds"]["perturbed"] = _render(options, target, models)
            entry["perturbed"] = {"kind": "attention", "detail": _AttentionMath.detail, **_views(base, other, fps, ext)}
        elif perturb == "stack":
            from .envelope import alternatives_here, measure_preview

            entry["envelope"] = measure_preview(target, options, base, alternatives_here(entry["device"], threads), models)
        elif perturb == "threads":
            alt = alt_threads or other_thread_count(threads)
            try:
                _, other, _, entry["seconds"]["perturbed"] = _render(replace(options, threads=alt), target, models)
            finally:
                torch.set_num_threads(threads)
            entry["perturbed"] = {"kind": "threads", "detail": f"{alt} CPU threads instead of {threads}",
                                  "threads": alt, **_views(base, other, fps, ext)}
        entry["golden_view"] = _against_golden(target, base)
    except HarnessError as exc:
        entry["error"] = exc.line()
    except MemoryError:
        entry["error"] = f"out of CPU memory rendering {target.key}; calibrate on CUDA or a larger machine"
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        entry["error"] = (f"CUDA out of memory rendering {target.key} with --offload "
                          f"{getattr(options, 'offload', 'none')}; try --offload experts")
    return entry


# --------------------------------------------------------------------------- summary


def summarize(previews: list[dict], perturb: str | None, margin_db: float, ssim_margin: float) -> dict:
    """Determinism, the observed floor (encoded and raw views) and the suggested thresholds."""
    done = [p for p in previews if not p.get("error")]
    deterministic = all(p["repeat"]["bit_exact"] for p in done) if done else None
    encoded = [p["repeat"]["encoded"] for p in done] + [p["perturbed"]["encoded"] for p in done if p.get("perturbed")]
    encoded += [pair for p in done for pair in (p.get("envelope") or {}).get("pairs", [])]
    raw = [p["repeat"]["raw"] for p in done] + [p["perturbed"]["raw"] for p in done if p.get("perturbed")]
    enc_floor, raw_floor = floor_of(encoded), floor_of(raw)
    suggested = suggest_thresholds(enc_floor["psnr_min"], enc_floor["ssim_min"], margin_db, ssim_margin)
    golden_exact = bool(done) and all((p.get("golden_view") or {}).get("bit_exact") for p in done)
    suggested["require_bit_exact"] = bool(deterministic) and golden_exact
    notes = []
    if deterministic is False:
        notes.append("repeat renders differ: this stack is nondeterministic, so no render can be bit-exact; the floor "
                     "includes run-to-run noise")
    if perturb is None:
        notes.append("no perturbation: only run-to-run noise was measured; rerun with perturb=attention (or threads "
                     "on CPU) to measure kernel drift")
    elif perturb != "stack" and done and all(p["perturbed"]["bit_exact"] for p in done):
        notes.append(f"the {perturb} perturbation changed no pixel (the default path may already be the same kernel); "
                     "the suggestion is the upper bound")
    if perturb == "threads" and any(p.get("device", "cpu").startswith("cuda") for p in done):
        notes.append("threads only changes CPU-side work; on CUDA use perturb=attention")
    for p in done:
        g = p.get("golden_view") or {}
        psnr = from_json(g.get("psnr_min"))
        if g.get("mismatch"):
            notes.append(f"{p['key']}: render and golden differ in shape: {g['mismatch']}")
        elif psnr is not None and psnr < suggested["psnr_min"] and not g.get("bit_exact"):
            notes.append(f"{p['key']}: against its golden this render reaches {psnr:.2f} dB, below the suggested "
                         f"{suggested['psnr_min']:g} dB: the difference from the golden is larger than this stack's "
                         "own drift (a semantic difference, or a far-away stack)")
    errors = [p for p in previews if p.get("error")]
    return {
        "deterministic": deterministic,
        "floor": {"encoded_psnr_min": _json_number(enc_floor["psnr_min"]),
                  "encoded_ssim_min": _json_number(enc_floor["ssim_min"]),
                  "raw_psnr_min": _json_number(raw_floor["psnr_min"]),
                  "raw_ssim_min": _json_number(raw_floor["ssim_min"]),
                  "measured_by": "repeat" + (f"+{perturb}" if perturb else "")},
        "suggested": suggested,
        "case_tolerances": "tolerances: {psnr_min: %g, ssim_min: %g, require_bit_exact: %s}" % (
            suggested["psnr_min"], suggested["ssim_min"], "true" if suggested["require_bit_exact"] else "false"),
        "notes": notes,
        "exit_code": 2 if errors else (1 if deterministic is False else 0),
    }


def _fmt(value) -> str:
    return fmt_db(value, 2, "-")


def print_table(document: dict, file=None) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"wan-parity calibration (perturb: {document['perturb'] or 'none'})")
    for col in ("preview", "repeat bit-exact", "perturbed: encoded PSNR/SSIM min", "raw PSNR min",
                "vs golden (encoded)", "seconds"):
        table.add_column(col)
    for p in document["previews"]:
        if p.get("error"):
            table.add_row(Text(p["key"]), "error", Text(p["error"][:100]), "", "", "")
            continue
        pert = p.get("perturbed")
        g = p.get("golden_view") or {}
        table.add_row(
            Text(p["key"]), "yes" if p["repeat"]["bit_exact"] else "NO",
            f"{_fmt(pert['encoded'].get('psnr_min'))} / {_fmt(pert['encoded'].get('ssim_min'))}" if pert else "-",
            _fmt(pert["raw"].get("psnr_min")) if pert else "-",
            Text("error: " + g["error"][:60]) if g.get("error") else f"{_fmt(g.get('psnr_min'))} dB",
            " / ".join(f"{v:.1f}" for v in p.get("seconds", {}).values()))
    console = Console(file=file)
    console.print(table)
    s = document["suggested"]
    console.print(f"floor (encoded, {document['floor']['measured_by']}): PSNR {_fmt(document['floor']['encoded_psnr_min'])} dB, "
                  f"SSIM {_fmt(document['floor']['encoded_ssim_min'])}", highlight=False, markup=False)
    console.print(f"suggested: psnr_min {s['psnr_min']:g}, ssim_min {s['ssim_min']:g}, require_bit_exact "
                  f"{str(s['require_bit_exact']).lower()}   (case file: {document['case_tolerances']})",
                  highlight=False, markup=False)
    for note in document["notes"]:
        console.print(f"note: {note}", highlight=False, markup=False)


# --------------------------------------------------------------------------- entry point


def calibrate(targets, options, perturb: str | None = None, *, max_previews: int = 3, margin_db: float = 3.0,
              ssim_margin: float = 0.02, alt_threads: int | None = None) -> dict:
    """Measure and return the calibration document (nothing written)."""
    from .engine import Engine
    from .render.models import ModelCache

    if perturb not in PERTURBATIONS:
        raise HarnessError(None, "--perturb", f"unknown perturbation {perturb!r}; use attention, threads or stack")
    if max_previews < 1:
        raise HarnessError(None, "--previews", "must be at least 1")
    if perturb == "attention":
        try:
            import torch.nn.attention  # noqa: F401  (torch ≥ 2.3)
        except ImportError:
            raise HarnessError(None, "--perturb", "attention needs torch ≥ 2.3 (torch.nn.attention.sdpa_kernel)") from None
    chosen = [t for t in targets if not (t.preview.unreproducible or t.preview.broken)][:max_previews]
    if not chosen:
        raise HarnessError(None, "TARGET", "no reproducible preview to calibrate on (every selected preview is "
                                           "unreproducible or none was selected)")
    models = ModelCache()
    previews = [calibrate_preview(t, options, perturb, alt_threads, models) for t in chosen]
    environment = Engine(options, models=models).environment()
    document = {
        "schema": SCHEMA,
        "created": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "environment": environment,
        "perturb": perturb,
        "settings": {"max_previews": max_previews, "margin_db": margin_db, "ssim_margin": ssim_margin,
                     "psnr_bounds": list(PSNR_BOUNDS), "ssim_bounds": list(SSIM_BOUNDS)},
        "previews": previews,
    }
    document.update(summarize(previews, perturb, margin_db, ssim_margin))
    if perturb == "stack":
        document["envelopes"] = _envelopes(chosen, previews, environment, margin_db, ssim_margin)
    return document


def _envelopes(targets, previews: list[dict], environment: dict, margin_db: float, ssim_margin: float) -> dict:
    """One envelope document per case file (the previews measured from it), keyed by where it will be written."""
    from .envelope import document as envelope_document, envelope_path

    groups: dict[str, dict] = {}
    for target, entry in zip(targets, previews):
        path = envelope_path(target)
        if path is not None and entry.get("envelope"):
            groups.setdefault(str(path), {})[target.key] = entry["envelope"]
    return {path: envelope_document(measured, environment, margin_db, ssim_margin) for path, measured in groups.items()}


def calibrate_main(targets, options, out_dir, perturb: str | None = None, *, max_previews: int = 3,
                   margin_db: float = 3.0, ssim_margin: float = 0.02, alt_threads: int | None = None,
                   file=None) -> int:
    """``wan-parity calibrate TARGET... [--perturb attention|threads] --out DIR``: measure, print the table, write
    ``DIR/calibration.json`` atomically; returns the exit code (0 ok, 1 nondeterministic, 2 a preview failed)."""
    document = calibrate(targets, options, perturb, max_previews=max_previews, margin_db=margin_db,
                         ssim_margin=ssim_margin, alt_threads=alt_threads)
    path = write_json_atomic(Path(out_dir) / CALIBRATION_NAME, document)
    print_table(document, file=file)
    from rich.console import Console

    from .envelope import save

    console = Console(file=file)
    for where, envelope in document.get("envelopes", {}).items():
        save(Path(where), envelope)
        console.print(f"envelope: {where} (floor {_fmt(envelope['psnr_floor'])} dB, margin {margin_db:g} dB; run and "
                      "pytest judge goldens from other stacks by it)", highlight=False, markup=False)
    console.print(f"calibration: {path}", highlight=False, markup=False)
    return document["exit_code"]
