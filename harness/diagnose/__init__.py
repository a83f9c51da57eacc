"""Why does a preview drift? Re-render it under single-knob variants and rank them against the golden.

For a preview whose render is not bit-exact, the diagnosis renders it again with exactly one knob changed relative
to the *baseline* (the exact settings ``wan-parity run`` uses: profile, multiplier, merge path, seed, ...), compares
each variant with the golden on the encoded view (our frames re-encoded like ai-toolkit, as ``run`` compares), ranks
the variants (bit-exact first, then encoded PSNR min, then mean) and states the best explanation in one sentence.

Knob families (§13, docs/parity), each a list of :class:`Variant`s built from the baseline:

=============  ====================================================================================================
``profile``    every other sampler profile (aitk-euler, aitk-unipc, aitk-unipc-old, runcomfy, diffusers-stock)
``shift``      flow shift 3 <-> 5
``boundary``   expert boundary 0.875 <-> 0.9
``lora``       LoRA off (= multiplier 0: ai-toolkit skips a zero multiplier)
``multiplier`` 0, 0.5, 1.0, the recorded ``network_multiplier`` (when per-expert ones were used), one expert only,
               swapped per-expert values
``merge``      merged <-> unmerged LoRA path
``posterior``  first-frame VAE posterior sample <-> mode
``dtype``      whole-transformer bf16 cast <-> fp32-kept modules (loads a second model bundle, once)
``seed``       seed +-1 and +-sample index (walk_seed mistakes)
``negative``   negative prompt empty / Wan's default negative prompt (Chinese, and its English translation)
``resize``     LANCZOS stretch <-> centre crop of the control image
=============  ====================================================================================================

Variants that cannot change the render are not rendered twice: each variant's *effective* settings (expert
assignment per step instead of the raw boundary, the LoRA as actually applied, the crop box, ...) are reduced to a
key, and a variant whose key was already rendered reuses those frames and says so (``same_as``). Models come from
the engine's model cache (the fp32-kept variants load a second bundle once), LoRA layers are parsed once by
the engine, prompt embeddings are cached. Variants that need the other bundle render last, together. On A14B that
second bundle is a second copy of both experts: use an offload mode or enough memory for two.

Cost: a full sweep is ~20-23 renders (one per distinct variant). On the tiny demo model, CPU, 1 thread: 13.9 s for the
test preview (32x32, 5 frames, 4 UniPC steps, CFG; 23 renders) and 78 s for a demo preview (72x64, 9 frames, 6 Euler
steps; 19 renders). On a busy 2-core machine, 2 threads took 3.5x longer than 1.

``diagnosis.json`` (``diagnose_main``; written atomically, strict JSON, infinite PSNR as the string ``"inf"``)::

    {
      "schema": "wan-parity/diagnosis@1",
      "environment": {...},                  # harness.environment.fingerprint, as in results.json
      "families": ["profile", ...],          # the families swept
      "summary": {total, exact, explained, likely, numeric, unexplained, error, unreproducible, found, seconds},
      "diagnoses": [{
        key, case, golden, step, index,
        status,        # exact | explained | likely | numeric | unexplained | error | unreproducible
        found,         # true when the best explanation was found (exact, explained, likely, numeric)
        explanation,   # one sentence
        best,          # name of the best non-baseline variant that changes the render, or null
        profile, profile_settings, profile_why,   # the baseline's sampler profile
        swept,         # false when the sweep was skipped (baseline already exact, shape mismatch, error)
        seconds,       # whole diagnosis of this preview, renders and comparisons
        message,       # error / unreproducible reason, else null
        ranked: [{     # baseline included, best first
          rank, variant, family, description,
          changes: {knob: value},            # what differs from the baseline ({} for the baseline)
          bit_exact, psnr_min, psnr_mean, ssim_min, ssim_mean, max_abs_diff, mismatch,
          bit_exact_raw,                     # vs the lossless golden frames, when samples_raw/ exists, else null
          same_as,     # variant whose render this one shares (identical effective settings), or null
          seconds      # render + comparison time (0 when shared)
        }]
      }],
      report,          # path of diagnosis.html (the same table as HTML), or null
      report_error     # only when writing the page failed
    }

Exit code of ``diagnose_main``: 0 when every preview was already exact or its explanation was found (unreproducible
previews do not count), 1 when some preview stays unexplained, 2 when some preview could not be diagnosed (bad input),
3 when nothing was diagnosed (every preview unreproducible, or none).

Statuses: ``exact`` the baseline is bit-exact already; ``explained`` a single-knob variant is bit-exact; ``likely`` a
variant passes the preview's thresholds where the baseline does not (or beats a passing baseline); ``numeric`` the
baseline is the closest render and within thresholds, so what remains is numeric drift rather than a setting;
``unexplained`` no single knob gets the render within thresholds.

Modules, by concern: ``knobs`` (what a variant may change, :class:`Variant`, ``changes``), ``variants`` (the knob
families and how each variant is applied), ``context`` (what a preview's variants share, the effective key, rendering
one set of knobs), ``results`` (rows and diagnoses, their JSON), ``sweep`` (rendering and ranking), ``explain`` (status
and sentence), ``document`` (``diagnosis.json``, summary, exit code) and ``table`` (the plain-text table).
"""

from __future__ import annotations

from ..errors import HarnessError
from ..engine import Engine, RenderSettings
from ..spec import PreviewTarget
from ..options import RunOptions
from .context import Context, effective_key, load_context, render_identity, render_knobs
from .document import SCHEMA, STATUSES, exit_code, run_diagnosis, summarize
from .explain import explain
from .knobs import BASELINE, FAMILIES, PROFILE_FIELDS, Variant, changes, check_families, mult_key
from .results import FOUND_STATUSES, Diagnosis, Row
from .sweep import compare, diagnose_target, rank
from .table import format_table
from .variants import BOUNDARIES, MULTIPLIER_GRID, SHIFTS, WAN_NEGATIVE, WAN_NEGATIVE_EN, variants_for


def diagnose_main(targets: list[PreviewTarget], options: RunOptions, out_dir, families=None, progress=None,
                  force: bool = False, exhaustive: bool = False) -> tuple[dict, int]:
    """Diagnose every target; writes ``out_dir/diagnosis.json`` and returns (document, exit code).

    ``progress(key, variant, done, total)`` is called after each render of each preview. The engine class is read
    from this package when called, so replacing ``harness.diagnose.Engine`` replaces the engine.
    """
    return run_diagnosis(Engine, targets, options, out_dir, families=families, progress=progress, force=force,
                         exhaustive=exhaustive)


__all__ = [
    "BASELINE", "BOUNDARIES", "Context", "Diagnosis", "Engine", "FAMILIES", "FOUND_STATUSES", "HarnessError",
    "MULTIPLIER_GRID", "PROFILE_FIELDS", "PreviewTarget", "RenderSettings", "Row", "RunOptions", "SCHEMA", "SHIFTS", "STATUSES",
    "Variant", "WAN_NEGATIVE", "WAN_NEGATIVE_EN", "changes", "check_families", "compare", "diagnose_main",
    "diagnose_target", "effective_key", "exit_code", "explain", "format_table", "load_context",
    "mult_key", "rank", "render_identity", "render_knobs", "run_diagnosis", "summarize", "variants_for",
]
