"""Rendering the baseline and the variants of one preview, comparing each with the golden, ranking the rows.

A variant whose effective settings (:func:`effective_key`) were already rendered shares those frames (``same_as``)
instead of rendering again; the opt-in ``cache`` also shares frames across goldens of the same preview.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import replace

import numpy as np

from ..compare import compare_to_golden
from ..engine import Engine, RenderSettings, profile_settings
from ..runner import effective_thresholds
from ..spec import PreviewTarget
from .context import Context, effective_key, load_context, render_identity, render_knobs
from .explain import explain
from .knobs import BASELINE, Variant, changes
from .results import Diagnosis, Row
from .variants import variants_for


def diagnose_target(engine: Engine, target: PreviewTarget, families=None, force: bool = False,
                    on_variant=None, cache: dict | None = None, exhaustive: bool = False,
                    hint: str | None = None) -> Diagnosis:
    """Render the baseline and (unless it is already exact) every single-knob variant; rank and explain.

    ``on_variant(name, done, total)`` is called after each variant. HarnessError propagates (bad input).
    ``cache`` (opt-in, a dict the caller keeps) holds variant frames keyed by the preview's render inputs, so
    diagnosing the same preview against another golden re-renders nothing; it holds whole clips in memory.
    The sweep stops at the first variant that is bit-exact with the golden (nothing can explain it better) unless
    ``exhaustive``. ``hint``: a variant that explained another preview of the job; it is rendered first, alone, and
    when it is bit-exact here too the preview is explained by that one render.
    """
    started = time.perf_counter()
    ctx = load_context(engine, target)
    variants = variants_for(target, ctx.base, families, ctx.aitk_version)
    renders = _Renders(engine, ctx, cache)
    carried = _confirm(renders, variants, hint, target, on_variant)
    if carried is not None:
        carried.seconds = time.perf_counter() - started
        return carried
    baseline = renders.row(BASELINE, ctx.base)
    swept = not baseline.mismatch and (force or not baseline.bit_exact)
    total = len(variants) + 1 if swept else 1
    if on_variant is not None:
        on_variant(BASELINE.name, 1, total)
    stop_at_exact = not exhaustive and not baseline.bit_exact  # with --force on an exact baseline, sweep it all
    rows = [baseline] + (_sweep(renders, variants, on_variant, total, stop_at_exact) if swept else [])
    diagnosis = Diagnosis(key=target.key, status="unexplained", found=False, explanation="", target=target,
                          ranked=rank(rows), profile=ctx.base.profile.name,
                          profile_settings=profile_settings(ctx.base.profile), profile_why=ctx.profile_why, swept=swept)
    impossible = engine.exact_impossible(target, ctx.base)
    explain(diagnosis, baseline, effective_thresholds(target.thresholds, engine.stack_match(target), impossible=impossible))
    if impossible and not baseline.bit_exact:  # e.g. a bf16-saved LoRA: every variant carries its rounding
        diagnosis.explanation += f" Note: {impossible[0]}; small differences between variants are not conclusive."
    diagnosis.seconds = time.perf_counter() - started
    return diagnosis


def _sweep(renders: "_Renders", variants: list[Variant], on_variant, total: int, stop_at_exact: bool) -> list[Row]:
    """The variants' rows, in variant order, up to the first bit-exact one when ``stop_at_exact``.

    Variants needing the other model bundle (fp32-kept vs whole-bf16) render last, together: the second bundle is
    loaded once and the first is not needed again while it is in use.
    """
    base = renders.ctx.base
    knobs = [variant.apply(base) for variant in variants]
    order = sorted(range(len(variants)), key=lambda i: knobs[i].sampler.cast_whole_bf16 != base.sampler.cast_whole_bf16)
    done = {}
    for n, i in enumerate(order, start=2):
        done[i] = renders.row(variants[i], knobs[i])
        if on_variant is not None:
            on_variant(variants[i].name, n, total)
        if done[i].bit_exact and stop_at_exact:
            break
    return [done[i] for i in range(len(variants)) if i in done]


def _confirm(renders: "_Renders", variants: list[Variant], hint: str | None, target, on_variant) -> Diagnosis | None:
    """The hinted variant alone; a Diagnosis when it is bit-exact here too, else None (sweep as usual)."""
    variant = next((v for v in variants if v.name == hint), None) if hint else None
    if variant is None:
        return None
    row = renders.row(variant, variant.apply(renders.ctx.base))
    if on_variant is not None:
        on_variant(variant.name, 1, 1)
    if not row.bit_exact:
        return None
    base = renders.ctx.base
    row.rank = 1
    return Diagnosis(key=target.key, status="explained", found=True, best=variant.name, ranked=[row], swept=False,
                     explanation=(f"The golden matches the `{variant.name}` variant ({variant.description}) bit-exactly, "
                                  f"the setting found for an earlier preview of this job (one confirming render, no "
                                  f"sweep): {variant.meaning}."), target=target, profile=base.profile.name,
                     profile_settings=profile_settings(base.profile), profile_why=base.profile_why)


def rank(rows: list[Row]) -> list[Row]:
    """The rows best first (``Row.sort_key``; ties keep the given order), numbered from 1."""
    ranked = [row for _, row in sorted(enumerate(rows), key=lambda pair: pair[1].sort_key(pair[0]))]
    for n, row in enumerate(ranked, start=1):
        row.rank = n
    return ranked


class _Renders:
    """One preview's rows by effective key: a variant that cannot render differently reuses the owner's row."""

    def __init__(self, engine: Engine, ctx: Context, cache: dict | None):
        self.engine, self.ctx, self.cache = engine, ctx, cache
        self.rows: dict[tuple, tuple[str, Row]] = {}

    def row(self, variant: Variant, knobs: RenderSettings) -> Row:
        key = effective_key(self.ctx, knobs)
        knob_changes = changes(self.ctx.base, knobs)
        if key in self.rows:
            owner, row = self.rows[key]
            return replace(row, variant=variant.name, family=variant.family, description=variant.description,
                           changes=knob_changes, seconds=0.0, same_as=owner, meaning=variant.meaning)
        frames, render_seconds, t0 = self._frames(key, knobs)
        row = compare(self.ctx, frames, variant, knob_changes, 0.0)
        row.seconds = render_seconds + time.perf_counter() - t0
        self.rows[key] = (variant.name, row)
        return row

    def _frames(self, key: tuple, knobs: RenderSettings) -> tuple[np.ndarray, float, float]:
        """(frames, render seconds, when comparing starts); from the cross-golden cache when the caller keeps one."""
        t0 = time.perf_counter()
        cache_key = (render_identity(self.engine, self.ctx), key)
        hit = self.cache.get(cache_key) if self.cache is not None else None
        if hit is None:
            frames = render_knobs(self.engine, self.ctx.target, knobs)
            hit = (frames, time.perf_counter() - t0)
            if self.cache is not None:
                self.cache[cache_key] = hit
            t0 = time.perf_counter()
        return hit[0], hit[1], t0


def compare(ctx: Context, frames: np.ndarray, variant: Variant, knob_changes: dict, seconds: float) -> Row:
    """The variant's row: encoded view against the golden (as ``run`` compares), raw exactness, a frame digest."""
    judged = compare_to_golden(frames, ctx.golden)
    encoded = judged.encoded
    raw_exact = None if judged.raw_golden is None else bool(judged.raw_golden.bit_exact)
    digest = hashlib.sha1(np.ascontiguousarray(frames).tobytes() + str(frames.shape).encode()).hexdigest()
    return Row(variant.name, variant.family, variant.description, knob_changes, bool(encoded.bit_exact),
               encoded.psnr_min, encoded.psnr_mean, encoded.ssim_min, encoded.ssim_mean, encoded.max_abs_diff,
               encoded.mismatch, seconds, raw_exact, meaning=variant.meaning, digest=digest)
