"""What a result ran with, as the report reads it: its sampler profile and its per-step expert trace.

Results record the profile's name (possibly with ``+key=value`` overrides) and the trace of transformer calls;
the report expands both into the settings and the step schedule that the config diff compares with other stacks.
:func:`job_profile` tells the profile the golden's job implies apart from the one the render was forced to.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..result import PreviewResult
from .format import fmt_num, plural


@dataclass
class ProfileInfo:
    """The sampler settings a result ran with; from harness.render.profiles when the name is known."""

    name: str | None
    scheduler: str | None = None
    shift: float | None = None
    boundary: float | None = None
    unipc_sigmas: str | None = None
    posterior: str | None = None
    cast_whole_bf16: bool | None = None
    exact: bool | None = None
    description: str = ""


def profile_info(result: PreviewResult) -> ProfileInfo:
    """Profile fields for a result: recorded fields win, else the registry, else name-only."""
    name = result.profile
    info = ProfileInfo(name=name, exact=result.profile_exact)
    base = (name or "").split("+", 1)[0]
    try:  # lightweight module (no torch); the report still works if it moves or the name is unknown
        from harness.render.profiles import PROFILES
    except Exception:  # pragma: no cover - defensive
        PROFILES = {}
    prof = PROFILES.get(base)
    if prof is not None:
        info.scheduler, info.shift, info.boundary = prof.scheduler, prof.shift, prof.boundary
        info.unipc_sigmas, info.posterior, info.cast_whole_bf16 = prof.unipc_sigmas, prof.posterior, prof.cast_whole_bf16
        info.description = prof.description
        if info.exact is None:
            info.exact = prof.exact
    # A "+k=v,..." suffix (with_overrides) changes fields; a result may also record them (profile_settings).
    if name and "+" in name:
        for part in name.split("+", 1)[1].split(","):
            key, _, value = part.partition("=")
            _apply_override(info, key.strip(), value.strip())
    recorded = result.profile_settings
    if isinstance(recorded, dict):
        for key, value in recorded.items():
            if hasattr(info, key) and key != "name":
                setattr(info, key, value)
    return info


_VERSION_NOTES = (re.compile(r"^ai-toolkit (\S+) from the LoRA metadata$"), re.compile(r": the other sampler of (\S+)$"))
_FORCED_NOTE = re.compile(r"^profile \S+ chosen explicitly$")


def job_version(result: PreviewResult) -> str | None:
    """The job's ai-toolkit version as the result records it: in its quantization plan, or the auto choice's note."""
    plan = result.quantization if isinstance(result.quantization, dict) else {}
    if plan.get("aitk_version") and not plan.get("aitk_version_assumed"):
        return str(plan["aitk_version"])
    for note in result.notes or []:
        for pattern in _VERSION_NOTES:
            found = pattern.search(str(note))
            if found:
                return found.group(1)
    return None


def job_profile(result: PreviewResult) -> str | None:
    """The profile ai-toolkit's own sampler used for the golden, as far as the result tells; None when unknown.

    A profile forced with ``--profile`` (or a case's ``profile:``) says nothing about the job, so the job's
    ai-toolkit version decides when it is recorded; otherwise an automatically chosen profile is the job's own.
    """
    from harness.render.profiles import alternative_profiles, profile_for_aitk_version

    rendered = (result.profile or "").split("+", 1)[0]
    version = job_version(result)
    if version:
        candidates = [profile_for_aitk_version(version)[0].name] + [p.name for p in alternative_profiles(version)]
        if rendered in candidates:  # an ambiguous version: the render kept the sampler that matched
            return rendered
        return candidates[0] if len(candidates) == 1 else None
    if any(_FORCED_NOTE.match(str(note)) for note in result.notes or []):
        return None
    return rendered or None


def _apply_override(info: ProfileInfo, key: str, value: str) -> None:
    if not hasattr(info, key) or key == "name":
        return
    current = getattr(info, key)
    try:
        if isinstance(current, bool) or value in ("True", "False"):
            setattr(info, key, value == "True")
        elif isinstance(current, float):
            setattr(info, key, float(value))
        else:
            setattr(info, key, value)
    except ValueError:
        pass


# --------------------------------------------------------------------------- trace


@dataclass
class TraceSummary:
    steps: list[tuple[str, float]]  # one (expert, t) per denoising step
    forwards: int
    counts: dict[str, int]
    switch_index: int | None  # first step on the second expert
    switch_between: tuple[float, float] | None  # (last t on the first expert, first t on the next)

    def text(self) -> str:
        if not self.steps:
            return "no trace recorded"
        parts = [f"{plural(n, 'step')} on {e}" for e, n in self.counts.items()]
        out = ", ".join(parts) + f" ({self.forwards} transformer forwards)"
        if self.switch_between is not None:
            a, b = self.switch_between
            out += f"; switch before step {self.switch_index}, between t={fmt_num(a)} and t={fmt_num(b)}"
        else:
            out += "; no expert switch"
        return out


def summarize_trace(trace) -> TraceSummary:
    """Collapse per-forward entries (cond + uncond share a t) into per-step entries."""
    steps: list[tuple[str, float]] = []
    forwards = 0
    for entry in trace or []:
        try:
            expert, t = str(entry[0]), float(entry[1])
        except (TypeError, ValueError, IndexError):
            continue
        forwards += 1
        if not steps or steps[-1] != (expert, t):
            steps.append((expert, t))
    counts: dict[str, int] = {}
    for expert, _ in steps:
        counts[expert] = counts.get(expert, 0) + 1
    switch_index = switch_between = None
    for i in range(1, len(steps)):
        if steps[i][0] != steps[i - 1][0]:
            switch_index, switch_between = i, (steps[i - 1][1], steps[i][1])
            break
    return TraceSummary(steps, forwards, counts, switch_index, switch_between)
