"""The knob families: which single-knob variants a baseline gets, and how each one changes the knobs.

Families are built in a fixed order (``_BUILDERS``): the order decides which of two variants with the same render
owns it (``same_as``) and breaks ranking ties, so it is part of the result.
"""

from __future__ import annotations

from dataclasses import replace

from ..engine import RenderSettings
from .knobs import Variant, check_families, mult_key

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


def fmt_num(value) -> str:
    return f"{float(value):g}"


def fmt_mult(m) -> str:
    if isinstance(m, dict):
        return f"high {fmt_num(m.get('high', 0))} / low {fmt_num(m.get('low', 0))}"
    return fmt_num(m)


def variants_for(target, base: RenderSettings, families=None, aitk_version: str | None = None) -> list[Variant]:
    """The single-knob variants of one preview's baseline, in family order; no-op values are left out.

    ``aitk_version`` (from the LoRA metadata, read once by the engine) decides the quantization variant's plan.
    """
    wanted = check_families(families)
    return [variant for family, build in _BUILDERS if family in wanted for variant in build(target, base, aitk_version)]


def _override(family: str, name: str, description: str, meaning: str, **fields) -> Variant:
    """A variant that overrides profile fields, carried as data on the knobs (see ``RenderSettings.overrides``)."""
    return Variant(name, family, description, lambda k: k.with_profile_fields(**fields), meaning)


def _has_lora(target, base: RenderSettings) -> bool:
    return target.preview.lora is not None and base.use_lora


# ----------------------------------------------------------------------------------------- one builder per family


def _profiles(target, base: RenderSettings, aitk_version: str | None = None) -> list[Variant]:
    from ..render.profiles import PROFILES

    others = [p for name, p in PROFILES.items() if name != base.profile.name]
    likely = _likely_profiles(base, aitk_version)
    return [_profile_variant(p, base) for p in sorted(others, key=lambda p: p.name not in likely)]


def _likely_profiles(base: RenderSettings, aitk_version: str | None) -> set[str]:
    """The profiles this job's version points at, tried first so a sweep that stops at an exact match stops early:
    the version's own sampler when the run forced another, its other candidates when ``auto`` chose."""
    from ..render.profiles import alternative_profiles, profile_for_aitk_version

    names = {p.name for p in alternative_profiles(aitk_version)}
    if base.profile_forced:
        names.add(profile_for_aitk_version(aitk_version)[0].name)
    return names


def _profile_variant(p, base: RenderSettings) -> Variant:
    if base.profile_forced:
        meaning = (f"the run forced profile {base.profile.name} (--profile or the case's `profile:`), and ai-toolkit "
                   f"sampled this preview like {p.name}; drop the override (profile auto) or pass --profile {p.name}")
    elif p.exact:
        meaning = (f"it was rendered by another ai-toolkit version's sampler; check the LoRA metadata's software.version "
                   f"or pass --profile {p.name}")
    else:
        meaning = "it was not rendered with ai-toolkit's sampler"
    return Variant(p.name, "profile", _profile_summary(p), lambda k: replace(k, profile=p), meaning)


def _profile_summary(p) -> str:
    parts = [f"{'UniPC' if p.scheduler == 'unipc' else 'Euler'} shift {fmt_num(p.shift)}", f"boundary {fmt_num(p.boundary)}"]
    if p.scheduler == "unipc":
        parts.append(f"{p.unipc_sigmas} sigma grid")
    if p.posterior != "sample":
        parts.append(f"posterior {p.posterior}")
    if not p.cast_whole_bf16:
        parts.append("fp32-kept modules")
    return ", ".join(parts)


def _shifts(target, base: RenderSettings, aitk_version: str | None = None) -> list[Variant]:
    p = base.sampler
    return [_override("shift", f"shift {fmt_num(v)}", f"flow shift {fmt_num(v)} instead of {fmt_num(p.shift)}",
                      f"the preview was sampled with flow shift {fmt_num(v)}, not {fmt_num(p.shift)}", shift=v)
            for v in SHIFTS if v != p.shift]


def _boundaries(target, base: RenderSettings, aitk_version: str | None = None) -> list[Variant]:
    p = base.sampler
    return [_override("boundary", f"boundary {fmt_num(v)}", f"expert switch at t >= {v * 1000:g} instead of "
                      f"{p.boundary * 1000:g}", f"the experts switched at t >= {v * 1000:g}, not {p.boundary * 1000:g} "
                      "(the 0.9 of the stock model_index.json vs ai-toolkit's 0.875)", boundary=v)
            for v in BOUNDARIES if v != p.boundary]


def _lora_off(target, base: RenderSettings, aitk_version: str | None = None) -> list[Variant]:
    if not _has_lora(target, base):
        return []
    return [Variant("LoRA off", "lora", "render without the LoRA (same as multiplier 0)",
                    lambda k: replace(k, use_lora=False),
                    "the preview was rendered without this LoRA (a wrong checkpoint pairing, the untrained "
                    "baseline, or multiplier 0)")]


def _multipliers(target, base: RenderSettings, aitk_version: str | None = None) -> list[Variant]:
    """Grid values, the recorded multiplier, one expert only or swapped experts; values equal to the baseline's go."""
    if not _has_lora(target, base):
        return []
    out, seen = [], {mult_key(base.multiplier)}
    for value, what in _multiplier_candidates(base):
        if mult_key(value) in seen:
            continue
        seen.add(mult_key(value))
        out.append(Variant(f"multiplier {fmt_mult(value)}", "multiplier", what,
                           lambda k, value=value: replace(k, multiplier=value),
                           "the preview used a different LoRA multiplier" +
                           (" per expert" if isinstance(value, dict) else "")))
    return out


def _multiplier_candidates(base: RenderSettings) -> list[tuple[object, str]]:
    m, recorded = base.multiplier, base.sample.network_multiplier
    candidates = [(float(v), f"multiplier {fmt_num(v)} for both experts") for v in MULTIPLIER_GRID]
    if isinstance(m, dict):
        candidates.append((float(recorded), f"the sample's recorded network_multiplier {fmt_num(recorded)} for both experts"))
        candidates.append(({"high": m.get("low", 0.0), "low": m.get("high", 0.0)}, "per-expert multipliers swapped"))
        for side in ("high", "low"):
            candidates.append((float(m.get(side, 0.0)), f"the {side} expert's multiplier for both experts"))
    else:
        candidates.append(({"high": float(m), "low": 0.0}, f"multiplier {fmt_num(m)} on the high-noise expert only"))
        candidates.append(({"high": 0.0, "low": float(m)}, f"multiplier {fmt_num(m)} on the low-noise expert only"))
    return candidates


def _merge(target, base: RenderSettings, aitk_version: str | None = None) -> list[Variant]:
    if not _has_lora(target, base):
        return []
    path, now = ("unmerged", "merged") if base.merged else ("merged", "unmerged")
    return [Variant(f"{path} LoRA", "merge", f"apply the LoRA {path} instead of {now}",
                    lambda k: replace(k, merged=not k.merged),
                    f"ai-toolkit applied the LoRA {path} in this sampling round, not as the harness's merge "
                    "decision assumed (one multiplier for the round, no quantization => merged)")]


def _posterior(target, base: RenderSettings, aitk_version: str | None = None) -> list[Variant]:
    p = base.sampler
    other = "mode" if p.posterior == "sample" else "sample"
    why = " (stock diffusers)" if other == "mode" else " (ai-toolkit's seeded sample)"
    return [_override("posterior", f"posterior {other}", f"first-frame VAE posterior {other} instead of {p.posterior}",
                      f"the first-frame latent was the VAE posterior {other}{why}", posterior=other)]


def _dtype(target, base: RenderSettings, aitk_version: str | None = None) -> list[Variant]:
    if base.sampler.cast_whole_bf16:
        return [_override("dtype", "fp32-kept modules", "transformer loaded with diffusers' fp32-kept modules "
                          "(no whole-model bf16 cast)", "the transformer kept diffusers' fp32 modules (norms, "
                          "time embedder) instead of ai-toolkit's whole-model bf16 cast", cast_whole_bf16=False)]
    return [_override("dtype", "whole bf16 cast", "whole-transformer bf16 cast (ai-toolkit) instead of "
                      "fp32-kept modules", "the transformer was cast to bf16 as a whole, as ai-toolkit does",
                      cast_whole_bf16=True)]


def _seeds(target, base: RenderSettings, aitk_version: str | None = None) -> list[Variant]:
    """Seed +-1 and +-sample index: the usual walk_seed and per-item seed mistakes."""
    s = base.sample
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


def _negatives(target, base: RenderSettings, aitk_version: str | None = None) -> list[Variant]:
    """Only with CFG: without it the negative prompt is never encoded."""
    s = base.sample
    if s.guidance_scale <= 1.0:
        return []
    return [Variant(name, "negative", f"{what} instead of {s.negative_prompt!r:.40}",
                    lambda k, neg=neg: replace(k, sample=replace(k.sample, negative_prompt=neg)),
                    f"the preview used {what} (check the sample block's `neg` and `--n` flags)")
            for neg, name, what in (("", "negative prompt empty", "an empty negative prompt"),
                                    (WAN_NEGATIVE, "negative prompt Wan default", "Wan's default (Chinese) negative prompt"),
                                    (WAN_NEGATIVE_EN, "negative prompt Wan default (English)",
                                     "the English translation of Wan's default negative prompt"))
            if neg != s.negative_prompt]


def _quantization(target, base: RenderSettings, aitk_version: str | None = None) -> list[Variant]:
    """bf16 vs the job's quantization: "previews were quantized, inference isn't" is a top real drift cause."""
    from ..render.quant import quantization_plan

    job_plan = base.quantization
    if job_plan is not None:
        return [Variant("bf16 (no quantization)", "quantization", "unquantized bf16 transformer and text encoder",
                        lambda k: replace(k, quantization=None),
                        "the preview was rendered on an unquantized bf16 model, not the job's "
                        f"{job_plan.describe().get('transformer', 'quantized')} one")]
    qfloat8 = quantization_plan({"quantize": True, "quantize_te": True, "qtype": "qfloat8"}, aitk_version)
    return [Variant("qfloat8 (UI default)", "quantization", "transformer and text encoder quantized to qfloat8",
                    lambda k: replace(k, quantization=qfloat8),
                    "the preview was rendered on a qfloat8-quantized model (ai-toolkit's UI default `quantize: true`)")]


def _resize(target, base: RenderSettings, aitk_version: str | None = None) -> list[Variant]:
    if base.resize == "stretch":
        return [Variant("centre crop", "resize", "control image centre-cropped to the aspect, then LANCZOS",
                        lambda k: replace(k, resize="center-crop"),
                        "the control image was centre-cropped to the render's aspect ratio, not stretched "
                        "(ai-toolkit stretches)")]
    return [Variant("LANCZOS stretch", "resize", "control image stretched with LANCZOS (ai-toolkit)",
                    lambda k: replace(k, resize="stretch"), "the control image was stretched, as ai-toolkit does")]


def _merge_history(target, base: RenderSettings, aitk_version: str | None = None) -> list[Variant]:
    """The pristine base instead of the one ai-toolkit's earlier merged rounds left (§8.2): names that drift."""
    if not base.merge_history:
        return []
    steps = ", ".join(str(r.step) for r in base.merge_history)
    return [Variant("pristine base", "merge-history", f"the pristine base weights instead of the base replayed "
                    f"through the merged rounds at step(s) {steps}", lambda k: replace(k, merge_history=None),
                    "the preview was rendered on the pristine base, without the residue of the earlier merged "
                    "rounds (the job was resumed or restarted before this round, which reloads the base, or those "
                    "rounds were not merged)")]
def _gpu_layouts(target, base: RenderSettings, aitk_version: str | None = None) -> list[Variant]:
    """The CUDA posterior noise as other GPUs lay it out (§3.8): only for a draw above some GPU's randn grid, and
    only when the golden's stack does not say which GPU rendered it (then the layout is known, nothing to infer).

    One variant per distinct layout of this draw (GPUs whose grids launch alike share it), the baseline's left out.
    """
    from ..gpus import grid_for_stack, gpus_by_layout, launch_threads
    from ..render.rng import posterior_numel

    if base.rng_grid is None or base.sampler.posterior != "sample" or grid_for_stack(target.golden_stack)[0]:
        return []
    numel = posterior_numel(base.sample)
    layouts = gpus_by_layout(numel)
    if len(layouts) < 2:
        return []
    mine = launch_threads(numel, base.rng_grid)
    return [Variant(f"GPU layout {gpus[0].name}", "gpu-layout", f"posterior noise laid out as on {_gpu_list(gpus)} "
                    f"({threads} CUDA threads instead of {mine})",
                    lambda k, grid=gpus[0].grid: replace(k, rng_grid=grid),
                    f"the golden was rendered on {_gpu_list(gpus)}: state `gpu_name: {gpus[0].name}` in its "
                    "golden_stack.yaml (or gpu_sm_count / gpu_max_threads_per_sm)")
            for threads, gpus in layouts.items() if threads != mine]


def _gpu_list(gpus) -> str:
    shown = ", ".join(g.describe() for g in gpus[:3])
    return shown + (f" and {len(gpus) - 3} more" if len(gpus) > 3 else "")


_BUILDERS = (("profile", _profiles), ("shift", _shifts), ("boundary", _boundaries), ("lora", _lora_off),
             ("multiplier", _multipliers), ("merge", _merge), ("posterior", _posterior), ("dtype", _dtype),
             ("seed", _seeds), ("negative", _negatives), ("quantization", _quantization), ("resize", _resize),
             ("merge-history", _merge_history), ("gpu-layout", _gpu_layouts))
