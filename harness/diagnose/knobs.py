"""The knobs a diagnosis may turn, one variant per single-knob change, and what a variant changes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..engine import RenderSettings
from ..errors import HarnessError

FAMILIES = ("profile", "shift", "boundary", "lora", "multiplier", "merge", "posterior", "dtype", "seed", "negative",
            "resize", "quantization", "merge-history", "gpu-layout")
# the profile fields a variant may override one at a time, in the order `changes` lists them
PROFILE_FIELDS = ("scheduler", "shift", "boundary", "unipc_sigmas", "posterior", "cast_whole_bf16")


@dataclass(frozen=True)
class Variant:
    """One single-knob change: ``apply`` maps the baseline settings to the variant's (``dataclasses.replace``)."""

    name: str
    family: str
    description: str
    apply: Callable[[RenderSettings], RenderSettings]
    meaning: str = ""  # the clause the explanation uses when this variant matches best


BASELINE = Variant("baseline", "baseline", "the settings `wan-parity run` uses", lambda k: k)


def check_families(families) -> tuple[str, ...]:
    """The families asked for (all by default); an unknown name is bad input, said before anything renders."""
    if families is None:
        return FAMILIES
    families = tuple(families)
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise HarnessError(None, "--families", f"unknown knob famil{'ies' if len(unknown) > 1 else 'y'} "
                           f"{', '.join(unknown)}; choose from {', '.join(FAMILIES)}")
    return families


def mult_key(m) -> tuple[float, float]:
    """A multiplier as (high, low): a scalar and the per-expert pair it equals compare equal."""
    if isinstance(m, dict):
        return float(m.get("high", 0.0)), float(m.get("low", 0.0))
    return float(m), float(m)


def changes(base: RenderSettings, variant: RenderSettings) -> dict:
    """What a variant changes, knob by knob (profile fields are listed one by one)."""
    out = _profile_changes(base, variant)
    for key in ("seed", "negative_prompt"):
        if getattr(variant.sample, key) != getattr(base.sample, key):
            out[key] = getattr(variant.sample, key)
    if variant.multiplier != base.multiplier:
        out["multiplier"] = variant.multiplier
    if variant.use_lora != base.use_lora:
        out["lora"] = "on" if variant.use_lora else "off"
    if variant.merged != base.merged:
        out["lora_path"] = "merged" if variant.merged else "unmerged"
    if variant.resize != base.resize:
        out["resize"] = variant.resize
    if variant.merge_history != base.merge_history:
        out["merge_history"] = "replayed" if variant.merge_history else "pristine"
    if variant.rng_grid != base.rng_grid:
        out["rng_grid"] = variant.rng_grid
    if variant.quantization != base.quantization:
        plan = variant.quantization
        out["quantization"] = "bf16" if plan is None else plan.describe().get("transformer")
    return out


def _profile_changes(base: RenderSettings, variant: RenderSettings) -> dict:
    """Another named profile is one knob (its name); overridden fields are one knob each."""
    if variant.profile != base.profile:
        return {"profile": variant.profile.name}
    ours, theirs = base.sampler, variant.sampler
    return {key: getattr(theirs, key) for key in PROFILE_FIELDS if getattr(theirs, key) != getattr(ours, key)}
