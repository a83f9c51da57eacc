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
the process-wide ``MODEL_CACHE`` (the fp32-kept variants load a second bundle once), LoRA layers are parsed once by
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
previews do not count), 1 when some preview stays unexplained, 2 when some preview could not be diagnosed (bad input).

Statuses: ``exact`` the baseline is bit-exact already; ``explained`` a single-knob variant is bit-exact; ``likely`` a
variant passes the preview's thresholds where the baseline does not (or beats a passing baseline); ``numeric`` the
baseline is the closest render and within thresholds, so what remains is numeric drift rather than a setting;
``unexplained`` no single knob gets the render within thresholds.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import HarnessError
from .fsutil import write_json_atomic
from .runner import Engine, PreviewTarget, RunOptions, choose_profile, profile_settings

SCHEMA = "wan-parity/diagnosis@1"
FAMILIES = ("profile", "shift", "boundary", "lora", "multiplier", "merge", "posterior", "dtype", "seed", "negative",
            "resize", "quantization")
SHIFTS = (3.0, 5.0)
BOUNDARIES = (0.875, 0.9)
MULTIPLIER_GRID = (0.0, 0.5, 1.0)
# Wan 2.x's default negative prompt (official generate.py / diffusers examples), and its usual English rendering.
WAN_NEGATIVE = ("色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，"
                "丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，"
                "静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走")
WAN_NEGATIVE_EN = ("Bright tones, overexposed, static, blurred details, subtitles, style, works, paintings, images, static, "
                   "overall gray, worst quality, low quality, JPEG compression residue, ugly, incomplete, extra fingers, "
                   "poorly drawn hands, poorly drawn faces, deformed, disfigured, misshapen limbs, fused fingers, still "
                   "picture, messy background, three legs, many people in the background, walking backwards")
FOUND_STATUSES = ("exact", "explained", "likely", "numeric")


# ----------------------------------------------------------------------------------------------------- the knobs


@dataclass(frozen=True)
class Knobs:
    """Everything a variant may change; the baseline is what ``Engine.render`` would use for the target."""

    profile: object  # harness.render.profiles.SamplerProfile
    sample: object  # harness.spec.SampleSpec (seed, negative_prompt live here)
    multiplier: object  # float or {"high": m, "low": m}
    lora: bool  # whether the preview's LoRA is applied at all
    merged: bool
    resize: str = "stretch"
    quantization: object = "job"  # "job" (the job's plan), a quant.QuantPlan, or None (bf16)


@dataclass(frozen=True)
class Variant:
    """One single-knob change: ``apply`` maps the baseline knobs to the variant's."""

    name: str
    family: str
    description: str
    apply: Callable[[Knobs], Knobs]
    meaning: str = ""  # the clause the explanation uses when this variant matches best


BASELINE = Variant("baseline", "baseline", "the settings `wan-parity run` uses", lambda k: k)


def _fmt_num(value) -> str:
    return f"{float(value):g}"


def _fmt_mult(m) -> str:
    if isinstance(m, dict):
        return f"high {_fmt_num(m.get('high', 0))} / low {_fmt_num(m.get('low', 0))}"
    return _fmt_num(m)


def _profile_variant(name: str, base) -> Variant:
    from .render.profiles import PROFILES

    p = PROFILES[name]
    if p.exact:
        meaning = (f"it was rendered by another ai-toolkit version's sampler; check the LoRA metadata's software.version "
                   f"or pass --profile {name}")
    else:
        meaning = "it was not rendered with ai-toolkit's sampler"
    return Variant(name, "profile", _profile_summary(p), lambda k, p=p: replace(k, profile=p), meaning)


def _profile_summary(p) -> str:
    parts = [f"{'UniPC' if p.scheduler == 'unipc' else 'Euler'} shift {_fmt_num(p.shift)}", f"boundary {_fmt_num(p.boundary)}"]
    if p.scheduler == "unipc":
        parts.append(f"{p.unipc_sigmas} sigma grid")
    if p.posterior != "sample":
        parts.append(f"posterior {p.posterior}")
    if not p.cast_whole_bf16:
        parts.append("fp32-kept modules")
    return ", ".join(parts)


def _override(family: str, name: str, description: str, meaning: str, **changes) -> Variant:
    from .render.profiles import with_overrides

    return Variant(name, family, description, lambda k: replace(k, profile=with_overrides(k.profile, **changes)), meaning)


def variants_for(target: PreviewTarget, base: Knobs, families=None) -> list[Variant]:
    """The single-knob variants of one preview's baseline, in family order; no-op values are left out."""
    from .render.profiles import PROFILES

    wanted = _check_families(families)
    p, s = base.profile, base.sample
    out: list[Variant] = []
    if "profile" in wanted:
        out += [_profile_variant(name, p) for name in PROFILES if name != p.name]
    if "shift" in wanted:
        out += [_override("shift", f"shift {_fmt_num(v)}", f"flow shift {_fmt_num(v)} instead of {_fmt_num(p.shift)}",
                          f"the preview was sampled with flow shift {_fmt_num(v)}, not {_fmt_num(p.shift)}", shift=v)
                for v in SHIFTS if v != p.shift]
    if "boundary" in wanted:
        out += [_override("boundary", f"boundary {_fmt_num(v)}",
                          f"expert switch at t >= {v * 1000:g} instead of {p.boundary * 1000:g}",
                          f"the experts switched at t >= {v * 1000:g}, not {p.boundary * 1000:g} (the 0.9 of the stock "
                          "model_index.json vs ai-toolkit's 0.875)", boundary=v)
                for v in BOUNDARIES if v != p.boundary]
    has_lora = target.preview.lora is not None and base.lora
    if "lora" in wanted and has_lora:
        out.append(Variant("LoRA off", "lora", "render without the LoRA (same as multiplier 0)",
                           lambda k: replace(k, lora=False),
                           "the preview was rendered without this LoRA (a wrong checkpoint pairing, the untrained "
                           "baseline, or multiplier 0)"))
    if "multiplier" in wanted and has_lora:
        out += _multiplier_variants(base)
    if "merge" in wanted and has_lora:
        path = "unmerged" if base.merged else "merged"
        out.append(Variant(f"{path} LoRA", "merge", f"apply the LoRA {path} instead of {'merged' if base.merged else 'unmerged'}",
                           lambda k: replace(k, merged=not k.merged),
                           f"ai-toolkit applied the LoRA {path} in this sampling round, not as the harness's merge "
                           "decision assumed (one multiplier for the round, no quantization => merged)"))
    if "posterior" in wanted:
        other = "mode" if p.posterior == "sample" else "sample"
        out.append(_override("posterior", f"posterior {other}", f"first-frame VAE posterior {other} instead of {p.posterior}",
                             f"the first-frame latent was the VAE posterior {other}" +
                             (" (stock diffusers)" if other == "mode" else " (ai-toolkit's seeded sample)"), posterior=other))
    if "dtype" in wanted:
        if p.cast_whole_bf16:
            out.append(_override("dtype", "fp32-kept modules", "transformer loaded with diffusers' fp32-kept modules "
                                 "(no whole-model bf16 cast)", "the transformer kept diffusers' fp32 modules (norms, "
                                 "time embedder) instead of ai-toolkit's whole-model bf16 cast", cast_whole_bf16=False))
        else:
            out.append(_override("dtype", "whole bf16 cast", "whole-transformer bf16 cast (ai-toolkit) instead of "
                                 "fp32-kept modules", "the transformer was cast to bf16 as a whole, as ai-toolkit does",
                                 cast_whole_bf16=True))
    if "seed" in wanted:
        out += _seed_variants(s)
    if "negative" in wanted and s.guidance_scale > 1.0:
        for neg, name, what in (("", "negative prompt empty", "an empty negative prompt"),
                                (WAN_NEGATIVE, "negative prompt Wan default", "Wan's default (Chinese) negative prompt"),
                                (WAN_NEGATIVE_EN, "negative prompt Wan default (English)",
                                 "the English translation of Wan's default negative prompt")):
            if neg != s.negative_prompt:
                out.append(Variant(name, "negative", f"{what} instead of {s.negative_prompt!r:.40}",
                                   lambda k, neg=neg: replace(k, sample=replace(k.sample, negative_prompt=neg)),
                                   f"the preview used {what} (check the sample block's `neg` and `--n` flags)"))
    if "quantization" in wanted:
        out += _quantization_variants(target)
    if "resize" in wanted:
        if base.resize == "stretch":
            out.append(Variant("centre crop", "resize", "control image centre-cropped to the aspect, then LANCZOS",
                               lambda k: replace(k, resize="center-crop"),
                               "the control image was centre-cropped to the render's aspect ratio, not stretched "
                               "(ai-toolkit stretches)"))
        else:
            out.append(Variant("LANCZOS stretch", "resize", "control image stretched with LANCZOS (ai-toolkit)",
                               lambda k: replace(k, resize="stretch"), "the control image was stretched, as ai-toolkit does"))
    return out


def _quantization_variants(target: PreviewTarget) -> list[Variant]:
    """bf16 vs the job's quantization: "previews were quantized, inference isn't" is a top real drift cause."""
    from .render.quant import quantization_plan
    from .runner import aitk_version, quantization_for

    try:
        job_plan = quantization_for(target)
    except HarnessError:
        return []
    if job_plan is not None:
        return [Variant("bf16 (no quantization)", "quantization", "unquantized bf16 transformer and text encoder",
                        lambda k: replace(k, quantization=None),
                        "the preview was rendered on an unquantized bf16 model, not the job's "
                        f"{job_plan.describe().get('transformer', 'quantized')} one")]
    qfloat8 = quantization_plan({"quantize": True, "quantize_te": True, "qtype": "qfloat8"}, aitk_version(target))
    return [Variant("qfloat8 (UI default)", "quantization", "transformer and text encoder quantized to qfloat8",
                    lambda k: replace(k, quantization=qfloat8),
                    "the preview was rendered on a qfloat8-quantized model (ai-toolkit's UI default `quantize: true`)")]


def _multiplier_variants(base: Knobs) -> list[Variant]:
    m, recorded = base.multiplier, base.sample.network_multiplier
    candidates: list[tuple[object, str]] = []
    for v in MULTIPLIER_GRID:
        candidates.append((float(v), f"multiplier {_fmt_num(v)} for both experts"))
    if isinstance(m, dict):
        candidates.append((float(recorded), f"the sample's recorded network_multiplier {_fmt_num(recorded)} for both experts"))
        candidates.append(({"high": m.get("low", 0.0), "low": m.get("high", 0.0)}, "per-expert multipliers swapped"))
        for side in ("high", "low"):
            candidates.append((float(m.get(side, 0.0)), f"the {side} expert's multiplier for both experts"))
    else:
        candidates.append(({"high": float(m), "low": 0.0}, f"multiplier {_fmt_num(m)} on the high-noise expert only"))
        candidates.append(({"high": 0.0, "low": float(m)}, f"multiplier {_fmt_num(m)} on the low-noise expert only"))
    out, seen = [], {_mult_key(m)}
    for value, what in candidates:
        key = _mult_key(value)
        if key in seen:
            continue
        seen.add(key)
        out.append(Variant(f"multiplier {_fmt_mult(value)}", "multiplier", what,
                           lambda k, value=value: replace(k, multiplier=value),
                           "the preview used a different LoRA multiplier" +
                           (" per expert" if isinstance(value, dict) else "")))
    return out


def _mult_key(m) -> tuple[float, float]:
    if isinstance(m, dict):
        return float(m.get("high", 0.0)), float(m.get("low", 0.0))
    return float(m), float(m)


def _seed_variants(s) -> list[Variant]:
    offsets = [(-1, "seed - 1"), (1, "seed + 1")]
    if s.index > 1:
        offsets += [(-s.index, f"seed - sample index {s.index} (walk_seed applied the other way)"),
                    (s.index, f"seed + sample index {s.index} (walk_seed applied the other way)")]
    out, seen = [], {s.seed}
    for delta, what in offsets:
        seed = s.seed + delta
        if seed < 0 or seed in seen:
            continue
        seen.add(seed)
        out.append(Variant(f"seed {seed}", "seed", f"{what}: {seed} instead of {s.seed}",
                           lambda k, seed=seed: replace(k, sample=replace(k.sample, seed=seed)),
                           f"the preview used seed {seed} ({what.split(' (')[0]}): a walk_seed or per-item seed mistake "
                           "in the seed bookkeeping"))
    return out


def _check_families(families) -> tuple[str, ...]:
    if families is None:
        return FAMILIES
    families = tuple(families)
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise HarnessError(None, "--families", f"unknown knob famil{'ies' if len(unknown) > 1 else 'y'} "
                           f"{', '.join(unknown)}; choose from {', '.join(FAMILIES)}")
    return families


def changes(base: Knobs, variant: Knobs) -> dict:
    """What a variant changes, knob by knob (profile fields are listed one by one)."""
    out = {}
    if variant.profile != base.profile:
        if "+" not in variant.profile.name:  # a named profile: the whole profile is the knob
            out["profile"] = variant.profile.name
        else:
            for key in ("scheduler", "shift", "boundary", "unipc_sigmas", "posterior", "cast_whole_bf16"):
                if getattr(variant.profile, key) != getattr(base.profile, key):
                    out[key] = getattr(variant.profile, key)
    for key in ("seed", "negative_prompt"):
        if getattr(variant.sample, key) != getattr(base.sample, key):
            out[key] = getattr(variant.sample, key)
    if variant.multiplier != base.multiplier:
        out["multiplier"] = variant.multiplier
    if variant.lora != base.lora:
        out["lora"] = "on" if variant.lora else "off"
    if variant.merged != base.merged:
        out["lora_path"] = "merged" if variant.merged else "unmerged"
    if variant.resize != base.resize:
        out["resize"] = variant.resize
    if variant.quantization != base.quantization:
        plan = variant.quantization
        out["quantization"] = "bf16" if plan is None else plan.describe().get("transformer")
    return out


# ------------------------------------------------------------------------------------------------- rendering


@dataclass
class _Context:
    """Per-preview things every variant shares: resolved paths, parsed LoRA layers, the golden frames."""

    target: PreviewTarget
    base: Knobs
    profile_why: str
    ctrl: Path
    ctrl_size: tuple[int, int]
    paths: dict
    layers: dict
    golden: np.ndarray
    raw_golden: np.ndarray | None
    ext: str


def _context(engine: Engine, target: PreviewTarget) -> _Context:
    from PIL import Image

    from .media import check_preview_golden, read_frames
    from .paths import resolve_ctrl_img

    preview, sample = target.preview, target.preview.sample
    profile, why = choose_profile(target, engine.options.profile)
    ctrl, _ = resolve_ctrl_img(sample.ctrl_img, target.path_map, target.search_dirs, file=target.config_file,
                               field=f"sample.samples[{sample.index}].ctrl_img")
    try:
        with Image.open(ctrl) as img:
            size = img.size
    except (OSError, ValueError) as exc:
        raise HarnessError(ctrl, f"sample.samples[{sample.index}].ctrl_img", f"not a readable image ({exc})") from None
    paths, layers = {}, {}
    if preview.lora is not None:
        for side in ("high", "low"):
            path = getattr(preview.lora, side)
            if path is not None:
                paths[side], layers[side] = Path(path), engine._lora_layers(Path(path))
    base = Knobs(profile=profile, sample=sample, multiplier=preview.extra.get("multipliers", sample.network_multiplier),
                 lora=preview.lora is not None, merged=preview.merged)
    if preview.golden is None:
        raise HarnessError(target.config_file, f"prompts[{preview.index}].golden", "no golden file to diagnose against")
    clip = read_frames(preview.golden)
    check_preview_golden(clip, preview, target.config_file)  # the same up-front checks as `run`
    golden = clip.frames
    raw_golden = read_frames(preview.golden_raw).frames if preview.golden_raw else None
    ext = Path(preview.golden).suffix.lstrip(".").lower() or "webp"
    return _Context(target, base, why, Path(ctrl), size, paths, layers, golden, raw_golden, ext)


def effective_key(ctx: _Context, knobs: Knobs) -> tuple:
    """What decides the pixels, reduced so that variants that cannot differ share a key (and a render)."""
    from .render.conditioning import center_crop_box
    from .render.schedule import expert_for, make_scheduler, set_timesteps

    p, s = knobs.profile, knobs.sample
    timesteps = set_timesteps(make_scheduler(p), p, s.sample_steps, "cpu")
    schedule = (p.scheduler, p.shift, p.unipc_sigmas if p.scheduler == "unipc" else None,
                tuple(expert_for(t, p) for t in timesteps))
    lora = None
    if knobs.lora and ctx.paths:
        m = {side: _mult_key(knobs.multiplier)[0 if side == "high" else 1] for side in ctx.paths}
        live = {side: v for side, v in m.items() if v != 0}
        if live:
            lora = (tuple(sorted(live.items())), knobs.merged)
    resize = knobs.resize
    if resize == "center-crop" and center_crop_box(ctx.ctrl_size, s.width, s.height) == (0, 0, *ctx.ctrl_size):
        resize = "stretch"
    negative = s.negative_prompt if s.guidance_scale > 1.0 else None
    return schedule, p.posterior, p.cast_whole_bf16, s.seed, negative, lora, resize, knobs.quantization


def _render_identity(engine: Engine, ctx: _Context) -> tuple:
    """Everything outside the knobs that decides a render (for the opt-in cross-golden cache)."""
    t = ctx.target
    sample = replace(t.preview.sample, seed=0, negative_prompt="", network_multiplier=0.0)
    return (t.model_name, engine.options.base_model, engine.options.vae or t.vae, engine.device_for(t), t.rng_layout,
            t.threads if engine.options.threads is None else engine.options.threads, str(ctx.ctrl),
            tuple(sorted((side, str(path)) for side, path in ctx.paths.items())), sample)


def render_knobs(engine: Engine, target: PreviewTarget, knobs: Knobs, ctx: _Context | None = None) -> np.ndarray:
    """Render the preview under ``knobs`` through ``Engine.render`` itself; returns the uint8 frames."""
    render, _, _ = engine.render(target, profile=knobs.profile, sample=knobs.sample, multiplier=knobs.multiplier,
                                 merged=knobs.merged, use_lora=knobs.lora, resize=knobs.resize,
                                 quantization=knobs.quantization)
    return render.frames


# ------------------------------------------------------------------------------------------------- comparing


@dataclass
class Row:
    variant: str
    family: str
    description: str
    changes: dict
    bit_exact: bool
    psnr_min: float | None
    psnr_mean: float | None
    ssim_min: float | None
    ssim_mean: float | None
    max_abs_diff: int | None
    mismatch: str | None
    seconds: float
    bit_exact_raw: bool | None = None
    same_as: str | None = None
    rank: int = 0
    meaning: str = ""
    digest: str = ""

    def sort_key(self, position: int) -> tuple:
        psnr_min = -math.inf if self.psnr_min is None else self.psnr_min
        psnr_mean = -math.inf if self.psnr_mean is None else self.psnr_mean
        ssim_min = -math.inf if self.ssim_min is None else self.ssim_min
        return (not self.bit_exact, -psnr_min, -psnr_mean, -ssim_min, position)

    def to_json(self) -> dict:
        return {"rank": self.rank, "variant": self.variant, "family": self.family, "description": self.description,
                "changes": _json_safe(self.changes), "bit_exact": self.bit_exact, "psnr_min": _json_safe(self.psnr_min),
                "psnr_mean": _json_safe(self.psnr_mean), "ssim_min": _json_safe(self.ssim_min),
                "ssim_mean": _json_safe(self.ssim_mean), "max_abs_diff": self.max_abs_diff, "mismatch": self.mismatch,
                "bit_exact_raw": self.bit_exact_raw, "same_as": self.same_as, "seconds": round(self.seconds, 3)}


def _json_safe(value):
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
    return value


def _compare(ctx: _Context, frames: np.ndarray, variant: Variant, knob_changes: dict, seconds: float) -> Row:
    from .media import reencode_roundtrip
    from .metrics import compare_clips

    encoded = compare_clips(ctx.golden, reencode_roundtrip(frames, fps=ctx.target.preview.sample.fps, ext=ctx.ext))
    raw_exact = None
    if ctx.raw_golden is not None:
        raw_exact = bool(compare_clips(ctx.raw_golden, frames).bit_exact)
    digest = hashlib.sha1(np.ascontiguousarray(frames).tobytes() + str(frames.shape).encode()).hexdigest()
    return Row(variant.name, variant.family, variant.description, knob_changes, bool(encoded.bit_exact),
               encoded.psnr_min, encoded.psnr_mean, encoded.ssim_min, encoded.ssim_mean, encoded.max_abs_diff,
               encoded.mismatch, seconds, raw_exact, meaning=variant.meaning, digest=digest)


# ------------------------------------------------------------------------------------------------- diagnosing


@dataclass
class Diagnosis:
    key: str
    status: str
    found: bool
    explanation: str
    ranked: list[Row] = field(default_factory=list)
    best: str | None = None
    profile: str | None = None
    profile_settings: dict | None = None
    profile_why: str | None = None
    swept: bool = False
    seconds: float = 0.0
    message: str | None = None
    target: PreviewTarget | None = None

    @property
    def baseline(self) -> Row | None:
        return next((r for r in self.ranked if r.variant == BASELINE.name), None)

    def to_json(self) -> dict:
        p = self.target.preview if self.target is not None else None
        return {
            "key": self.key, "case": p.case if p else None, "golden": str(p.golden) if p else None,
            "step": p.step if p else None, "index": p.index if p else None,
            "status": self.status, "found": self.found, "explanation": self.explanation, "best": self.best,
            "profile": self.profile, "profile_settings": self.profile_settings, "profile_why": self.profile_why,
            "swept": self.swept, "seconds": round(self.seconds, 3), "message": self.message,
            "ranked": [r.to_json() for r in self.ranked],
        }


def diagnose_target(engine: Engine, target: PreviewTarget, families=None, force: bool = False,
                    on_variant=None, cache: dict | None = None) -> Diagnosis:
    """Render the baseline and (unless it is already exact) every single-knob variant; rank and explain.

    ``on_variant(name, done, total)`` is called after each variant. HarnessError propagates (bad input).
    ``cache`` (opt-in, a dict the caller keeps) holds variant frames keyed by the preview's render inputs, so
    diagnosing the same preview against another golden re-renders nothing; it holds whole clips in memory.
    """
    from .metrics import ENCODED_VIEW

    started = time.perf_counter()
    ctx = _context(engine, target)
    variants = variants_for(target, ctx.base, families)
    thresholds = target.thresholds or ENCODED_VIEW
    diagnosis = Diagnosis(key=target.key, status="unexplained", found=False, explanation="", target=target,
                          profile=ctx.base.profile.name, profile_settings=profile_settings(ctx.base.profile),
                          profile_why=ctx.profile_why)
    renders: dict[tuple, tuple[str, Row]] = {}

    def run(variant: Variant, knobs: Knobs) -> Row:
        key = effective_key(ctx, knobs)
        if key in renders:
            owner, row = renders[key]
            shared = replace(row, variant=variant.name, family=variant.family, description=variant.description,
                             changes=changes(ctx.base, knobs), seconds=0.0, same_as=owner, meaning=variant.meaning)
            return shared
        t0 = time.perf_counter()
        cache_key = (_render_identity(engine, ctx), key)
        hit = cache.get(cache_key) if cache is not None else None
        if hit is None:
            frames = render_knobs(engine, target, knobs, ctx)
            hit = (frames, time.perf_counter() - t0)
            if cache is not None:
                cache[cache_key] = hit
            t0 = time.perf_counter()
        frames, render_seconds = hit
        row = _compare(ctx, frames, variant, changes(ctx.base, knobs), 0.0)
        row.seconds = render_seconds + time.perf_counter() - t0
        renders[key] = (variant.name, row)
        return row

    baseline = run(BASELINE, ctx.base)
    rows = [baseline]
    sweep = not baseline.mismatch and (force or not baseline.bit_exact)
    total = len(variants) + 1 if sweep else 1
    if on_variant is not None:
        on_variant(BASELINE.name, 1, total)
    if baseline.mismatch:
        diagnosis.explanation = (f"The golden and the render differ in shape ({baseline.mismatch}); no sampler knob changes "
                                 "the frame count or size, so check width/height/num_frames snapping first.")
    elif baseline.bit_exact and not force:
        diagnosis.status, diagnosis.found = "exact", True
        diagnosis.explanation = (f"The baseline render (profile {ctx.base.profile.name}) is already bit-exact with the "
                                 "golden; there is no drift to explain.")
    else:
        diagnosis.swept = True
        knobs = [variant.apply(ctx.base) for variant in variants]
        # variants needing the other model bundle (fp32-kept vs whole-bf16) render last, together: the second bundle
        # is loaded once and the first is not needed again while it is in use
        order = sorted(range(len(variants)), key=lambda i: knobs[i].profile.cast_whole_bf16 != ctx.base.profile.cast_whole_bf16)
        done = {}
        for n, i in enumerate(order, start=2):
            done[i] = run(variants[i], knobs[i])
            if on_variant is not None:
                on_variant(variants[i].name, n, total)
        rows += [done[i] for i in range(len(variants))]
    ranked = [row for _, row in sorted(enumerate(rows), key=lambda pair: pair[1].sort_key(pair[0]))]
    for rank, row in enumerate(ranked, start=1):
        row.rank = rank
    diagnosis.ranked = ranked
    if diagnosis.swept:
        _explain(diagnosis, baseline, thresholds)
    diagnosis.seconds = time.perf_counter() - started
    return diagnosis


def _passes(row: Row, thresholds) -> bool:
    if row.mismatch:
        return False
    if row.bit_exact:
        return True
    if thresholds.require_bit_exact is True:
        return False
    return row.psnr_min >= thresholds.psnr_min and row.ssim_min >= thresholds.ssim_min


def _db(value) -> str:
    return "inf" if value is None or math.isinf(value) else f"{value:.1f}"


def _explain(diagnosis: Diagnosis, baseline: Row, thresholds) -> None:
    """One sentence from the ranking; variants that render exactly like the baseline cannot explain anything."""
    if baseline.bit_exact:
        diagnosis.status, diagnosis.found = "exact", True
        diagnosis.explanation = (f"The baseline render (profile {diagnosis.profile}) is already bit-exact with the "
                                 "golden; there is no drift to explain.")
        return
    candidates = [r for r in diagnosis.ranked if r.variant != BASELINE.name and r.digest != baseline.digest]
    best = candidates[0] if candidates else None
    diagnosis.best = best.variant if best else None
    base_db = _db(baseline.psnr_min)
    if best is not None and best.bit_exact:
        twins = [r.variant for r in candidates[1:] if r.digest == best.digest]
        also = f" (equivalently: {', '.join(twins)})" if twins else ""
        what = f"`{best.variant}` profile ({best.description})" if best.family == "profile" else \
            f"`{best.variant}` variant ({best.description})"
        diagnosis.status, diagnosis.found = "explained", True
        diagnosis.explanation = f"The golden matches the {what}{also} bit-exactly: {best.meaning}."
        return
    better = best is not None and best.sort_key(1) < baseline.sort_key(0)
    if better and _passes(best, thresholds):
        diagnosis.status, diagnosis.found = "likely", True
        diagnosis.explanation = (f"Closest: {best.variant} ({_db(best.psnr_min)} dB vs {base_db} dB baseline, encoded PSNR "
                                 f"min) — {best.meaning}.")
        return
    if _passes(baseline, thresholds):
        diagnosis.status, diagnosis.found = "numeric", True
        diagnosis.explanation = (f"The baseline is the closest render ({base_db} dB, within thresholds) and no single knob "
                                 "does better: the remaining drift is numeric (kernels, torch, GPU), not a setting.")
        return
    diagnosis.status, diagnosis.found = "unexplained", False
    if best is None:
        diagnosis.explanation = ("No single knob explains the drift: no variant changed the render "
                                 f"(baseline {base_db} dB).")
    else:
        verdict = "improves on" if better else "does not beat"
        diagnosis.explanation = (f"No single knob explains the drift: the best variant, {best.variant}, reaches "
                                 f"{_db(best.psnr_min)} dB and {verdict} the {base_db} dB baseline; suspect several knobs "
                                 "at once, quantization, or another checkpoint.")


# ------------------------------------------------------------------------------------------------- the command


def _entry_without_render(target: PreviewTarget, status: str, message: str) -> dict:
    diagnosis = Diagnosis(key=target.key, status=status, found=False, explanation=message, message=message, target=target)
    return diagnosis.to_json()


def summarize(entries: list[dict], seconds: float) -> dict:
    counts = {s: 0 for s in ("exact", "explained", "likely", "numeric", "unexplained", "error", "unreproducible")}
    for e in entries:
        counts[e["status"]] = counts.get(e["status"], 0) + 1
    return {"total": len(entries), **counts, "found": sum(1 for e in entries if e["found"]), "seconds": round(seconds, 3)}


def exit_code(entries: list[dict]) -> int:
    """0 every preview exact or explained, 1 some preview unexplained, 2 some preview could not be diagnosed."""
    statuses = {e["status"] for e in entries}
    if "error" in statuses:
        return 2
    return 1 if "unexplained" in statuses else 0


def diagnose_main(targets: list[PreviewTarget], options: RunOptions, out_dir, families=None, progress=None,
                  force: bool = False) -> tuple[dict, int]:
    """Diagnose every target; writes ``out_dir/diagnosis.json`` and returns (document, exit code).

    ``progress(key, variant, done, total)`` is called after each render of each preview.
    """
    wanted = _check_families(families)
    started = time.perf_counter()
    engine = Engine(options)
    ordered = sorted(targets, key=lambda t: (t.model_name, str(t.preview.lora), t.preview.case, t.preview.step,
                                             t.preview.index))
    entries = []
    for target in ordered:
        if target.preview.unreproducible:
            entries.append(_entry_without_render(target, "unreproducible", target.preview.unreproducible))
            continue
        hook = None if progress is None else (lambda name, done, total, key=target.key: progress(key, name, done, total))
        try:
            entries.append(diagnose_target(engine, target, wanted, force=force, on_variant=hook).to_json())
        except HarnessError as exc:
            entries.append(_entry_without_render(target, "error", exc.line()))
    document = {"schema": SCHEMA, "environment": engine.environment(), "families": list(wanted),
                "summary": summarize(entries, time.perf_counter() - started), "diagnoses": entries}
    write_json_atomic(Path(out_dir) / "diagnosis.json", document)
    try:  # the page is a view of diagnosis.json: never lose the diagnosis or its exit code to it
        from .report import write_diagnosis_report

        document["report"] = str(write_diagnosis_report(document, out_dir))
    except Exception as exc:
        document["report"] = None
        document["report_error"] = f"diagnosis.html could not be written ({type(exc).__name__}: {exc})"
    write_json_atomic(Path(out_dir) / "diagnosis.json", document)  # with the page's path: the file stays the document
    return document, exit_code(entries)


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
    if value is None:
        return "-"
    if value == "inf":
        return "inf"
    return f"{float(value):.{digits}f}"
