"""Sampler profiles: which scheduler, shift, expert boundary and dtype rules a render follows.

Profiles are data, not subclasses: a result records the profile name, and the diagnosis swaps one field at a
time. Only the ``aitk-*`` profiles claim exactness; the others reproduce what other stacks do, for diagnosis.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from ..errors import HarnessError


@dataclass(frozen=True)
class SamplerProfile:
    name: str
    scheduler: str  # "euler" (FlowMatch Euler) or "unipc"
    shift: float
    boundary: float  # expert switch: t >= boundary * 1000 runs the high-noise `transformer`
    unipc_sigmas: str = "new"  # "old": diffusers sigma grid before 2026-01-22 (ai-toolkit < 0.7.25)
    posterior: str = "sample"  # "sample" (ai-toolkit, seeded) or "mode" (stock diffusers)
    cast_whole_bf16: bool = True  # ai-toolkit's `.to(bf16)` after from_pretrained (§11.1, docs/parity)
    vae_norm: str = "fp32"  # the VAE's RMS norm: "fp32" (diffusers upcasts) or "bf16" (ai-toolkit's own copy, §11.4)
    exact: bool = True  # whether this profile claims bit-exactness with ai-toolkit
    description: str = ""

    @property
    def boundary_timestep(self) -> float:
        return self.boundary * 1000.0


PROFILES: dict[str, SamplerProfile] = {
    p.name: p
    for p in (
        SamplerProfile(
            "aitk-euler", "euler", 5.0, 0.875,
            description="ai-toolkit >= 0.10.22 (2026-07-10): FlowMatch Euler shift 5.0, boundary 0.875, diffusers' VAE",
        ),
        SamplerProfile(
            "aitk-euler-vae-bf16", "euler", 5.0, 0.875, vae_norm="bf16",
            description="ai-toolkit 0.9.3-0.10.22 (2026-04-16 to 07-10): FlowMatch Euler shift 5.0, boundary 0.875, "
                        "ai-toolkit's own VAE copy (RMS norm in bf16)",
        ),
        SamplerProfile(
            "aitk-unipc", "unipc", 3.0, 0.875, unipc_sigmas="new", vae_norm="bf16",
            description="ai-toolkit 0.7.25-0.9.3: UniPC flow_shift 3.0, new diffusers sigma grid, boundary 0.875, "
                        "ai-toolkit's own VAE copy (RMS norm in bf16)",
        ),
        SamplerProfile(
            "aitk-unipc-old", "unipc", 3.0, 0.875, unipc_sigmas="old", vae_norm="bf16",
            description="ai-toolkit 0.4.1-0.7.24: UniPC flow_shift 3.0, old diffusers sigma grid, boundary 0.875, "
                        "ai-toolkit's own VAE copy (RMS norm in bf16)",
        ),
        SamplerProfile(
            "runcomfy", "unipc", 3.0, 0.9, cast_whole_bf16=False, exact=False,
            description="runcomfy ai-toolkit-inference: UniPC 3.0, boundary 0.9, fp32-kept modules (diagnosis only)",
        ),
        SamplerProfile(
            "diffusers-stock", "unipc", 5.0, 0.9, posterior="mode", cast_whole_bf16=False, exact=False,
            description="stock WanImageToVideoPipeline semantics: posterior mode, fp32-kept modules (diagnosis only)",
        ),
    )
}

DEFAULT_PROFILE = "aitk-euler"
AUTO = "auto"  # not a profile: pick one from the ai-toolkit version in the LoRA metadata


def profile_choices() -> tuple[str, ...]:
    """Every name a user may give (case files, --profile, --parity-profile): the registry plus auto.

    Read at call time, so a profile added to ``PROFILES`` is valid everywhere with no other edit.
    """
    return (AUTO, *PROFILES)


def get_profile(name: str, source: str = "--profile") -> SamplerProfile:
    """Look up a profile by name; unknown names list the valid ones."""
    if name not in PROFILES:
        raise HarnessError(source, None, f"unknown sampler profile {name!r}; choose one of {', '.join(PROFILES)} or auto")
    return PROFILES[name]


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.strip().lstrip("v").split("."):
        leading = re.match(r"\d*", piece).group(0)  # "2rc1" -> 2: a pre-release belongs to its own release
        parts.append(int(leading) if leading else 0)
    return tuple(parts)


# (first version, profile): ai-toolkit's sampler and VAE by version.py, read from its git history (§7.1, §11.4).
ERAS = (((0, 10, 22), "aitk-euler"), ((0, 9, 3), "aitk-euler-vae-bf16"), ((0, 7, 25), "aitk-unipc"),
        ((0, 4, 1), "aitk-unipc-old"))

# Versions whose version.py covered a change that decides pixels, read from ai-toolkit's git history:
# (older profile, newer profile, the change's commit and time in ms since the epoch, UTC).
# * 0.9.3 was bumped at 0c18b393 (2026-04-16 13:09, still UniPC); ab1ee4df (20:53 UTC the same day) switched to
#   FlowMatch Euler before 0.9.4 (be540947).
# * 0.10.22 (a4bbe167 07-09 to 0b62e516 07-13): 883d60eb (2026-07-10 14:02 UTC) replaced ai-toolkit's own VAE copy
#   with diffusers' AutoencoderKLWan, whose RMS norm upcasts to fp32.
AMBIGUOUS_VERSIONS = {
    (0, 9, 3): ("aitk-unipc", "aitk-euler-vae-bf16", "ab1ee4df", 1776372830000),
    (0, 10, 22): ("aitk-euler-vae-bf16", "aitk-euler", "883d60eb", 1783692152000),
}


def profile_for_aitk_version(version: str | None, rendered_ms: int | None = None) -> tuple[SamplerProfile, str]:
    """Pick the profile ai-toolkit of this version sampled with (§7.1, docs/parity); returns (profile, why).

    ``rendered_ms``, the preview's ``[time]`` (ms since the epoch, from its file name), settles a version that spans a
    change when the preview was saved before the change existed."""
    if not version:
        return PROFILES[DEFAULT_PROFILE], "no ai-toolkit version in the LoRA metadata; assuming the current sampler"
    v = _version_tuple(version)
    name = next((name for first, name in ERAS if v >= first), None)
    if name is None:
        return PROFILES[DEFAULT_PROFILE], f"ai-toolkit {version} predates Wan 2.2 I2V support; assuming the current sampler"
    older, _newer, commit, switch_ms = AMBIGUOUS_VERSIONS.get(v[:3], (None, None, None, None))
    if older is not None and rendered_ms is not None and rendered_ms < switch_ms:
        return PROFILES[older], (f"ai-toolkit {version} from the LoRA metadata, and the preview was saved before "
                                 f"{commit} changed that version's rendering: {older}")
    return PROFILES[name], f"ai-toolkit {version} from the LoRA metadata"


def alternative_profiles(version: str | None, rendered_ms: int | None = None) -> list[SamplerProfile]:
    """Other profiles ai-toolkit of this version may have sampled with (empty when the version, or the preview's
    time, settles it)."""
    if not version:
        return []
    older, _newer, _commit, switch_ms = AMBIGUOUS_VERSIONS.get(_version_tuple(version)[:3], (None, None, None, None))
    if older is None or (rendered_ms is not None and rendered_ms < switch_ms):
        return []
    return [PROFILES[older]]  # the first choice is the newer one (ERAS)


def with_overrides(profile: SamplerProfile, **changes) -> SamplerProfile:
    """A variant of a profile (used by the diagnosis); it no longer claims exactness unless unchanged."""
    if not changes:
        return profile
    return replace(profile, name=profile.name + "+" + ",".join(f"{k}={v}" for k, v in changes.items()), exact=False, **changes)
