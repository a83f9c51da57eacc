"""The knobs a diagnosis may turn, one variant per single-knob change, and what a variant changes."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

from ..errors import HarnessError

FAMILIES = ("profile", "shift", "boundary", "lora", "multiplier", "merge", "posterior", "dtype", "seed", "negative",
            "resize", "quantization")
# the profile fields a variant may override one at a time, in the order `changes` lists them
PROFILE_FIELDS = ("scheduler", "shift", "boundary", "unipc_sigmas", "posterior", "cast_whole_bf16")


@dataclass(frozen=True)
class Knobs:
    """Everything a variant may change; the baseline is what ``Engine.render`` would use for the target.

    ``profile`` stays a named profile and ``overrides`` holds the fields a variant changes on top of it, so
    what changed is read from data, never parsed back out of a profile name.
    """

    profile: object  # harness.render.profiles.SamplerProfile, a named one
    sample: object  # harness.spec.SampleSpec (seed, negative_prompt live here)
    multiplier: object  # float or {"high": m, "low": m}
    lora: bool  # whether the preview's LoRA is applied at all
    merged: bool
    resize: str = "stretch"
    quantization: object = "job"  # "job" (the job's plan), a quant.QuantPlan, or None (bf16)
    overrides: tuple = ()  # ((field, value), ...) of ``profile`` changed by a variant

    @property
    def sampler(self):
        """The profile the render follows: ``profile`` with ``overrides`` (named ``base+k=v``, as results record)."""
        from ..render.profiles import with_overrides

        return with_overrides(self.profile, **dict(self.overrides))

    def with_profile_fields(self, **fields) -> "Knobs":
        """These knobs with some profile fields overridden (the shift, boundary, posterior, dtype variants)."""
        return replace(self, overrides=tuple({**dict(self.overrides), **fields}.items()))


@dataclass(frozen=True)
class Variant:
    """One single-knob change: ``apply`` maps the baseline knobs to the variant's."""

    name: str
    family: str
    description: str
    apply: Callable[[Knobs], Knobs]
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


def changes(base: Knobs, variant: Knobs) -> dict:
    """What a variant changes, knob by knob (profile fields are listed one by one)."""
    out = _profile_changes(base, variant)
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


def _profile_changes(base: Knobs, variant: Knobs) -> dict:
    """Another named profile is one knob (its name); overridden fields are one knob each."""
    if variant.profile != base.profile:
        return {"profile": variant.profile.name}
    ours, theirs = base.sampler, variant.sampler
    return {key: getattr(theirs, key) for key in PROFILE_FIELDS if getattr(theirs, key) != getattr(ours, key)}
