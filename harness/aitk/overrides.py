"""fp32 LoRA weights used in place of a step's checkpoint: ``--lora-override STEP=PATH`` and a case's
``lora_overrides`` (§8.5, docs/parity).

ai-toolkit samples with the fp32 LoRA in memory but saves it in ``save.dtype`` (bf16 in the UI), so a preview can only
be reproduced exactly from the fp32 weights (a dump, or a re-save with ``save.dtype: float32``). An override replaces
one expert's file of one step label, for the preview of that step and for the merge history of later ones.
"""

from __future__ import annotations

from pathlib import Path

from harness.spec import LoraPair

SIDE_SUFFIXES = {"high": "_high_noise.safetensors", "low": "_low_noise.safetensors"}

Overrides = dict  # step label -> {"high"|"low": Path}


def side_of(path: Path) -> str:
    """The expert a LoRA file is for, from ai-toolkit's file name suffix; ValueError(message) otherwise."""
    for side, suffix in SIDE_SUFFIXES.items():
        if path.name.endswith(suffix):
            return side
    raise ValueError(f"{path}: name the file ..._high_noise.safetensors or ..._low_noise.safetensors so the expert "
                     "it belongs to is known (ai-toolkit's split save)")


def checked_file(path: Path) -> Path:
    """An override file that can be read (checked when given, not when the render needs it)."""
    if path.suffix.lower() != ".safetensors":
        raise ValueError(f"{path}: only .safetensors LoRA files are read")
    if not path.is_file():
        raise ValueError(f"{path}: file not found")
    return path


def parse_entry(text: str) -> tuple[int, str, Path]:
    """``STEP=PATH`` as (step, side, path); ValueError(message) for anything else."""
    step, sep, path = text.partition("=")
    if not sep or not step.strip().isdigit() or not path.strip():
        raise ValueError(f"{text!r} is not STEP=PATH (e.g. 250=/dumps/my_lora_000000250_high_noise.safetensors)")
    file = checked_file(Path(path.strip()).expanduser())
    return int(step), side_of(file), file


def checked_entry(text: str) -> str:
    """``STEP=PATH`` checked (the option table keeps the text; :func:`from_entries` reads it)."""
    parse_entry(text)
    return text


def from_entries(entries) -> Overrides:
    """``STEP=PATH`` entries as {step: {side: path}} (a later entry for the same step and side wins)."""
    out: Overrides = {}
    for step, side, path in map(parse_entry, entries):
        out.setdefault(step, {})[side] = path
    return out


def combined(case: Overrides | None, given: Overrides | None) -> Overrides:
    """A case's overrides with the command line's on top, per step and side."""
    out = {step: dict(sides) for step, sides in (case or {}).items()}
    for step, sides in (given or {}).items():
        out.setdefault(step, {}).update(sides)
    return out


def pair_for(overrides: Overrides | None, step: int, lora: LoraPair | None, reason: str | None,
             sides: tuple[str, ...]) -> tuple[LoraPair | None, str | None, LoraPair | None]:
    """(LoRA to use, why none, the job's own checkpoint when an override replaced it) for one step label."""
    chosen = (overrides or {}).get(step)
    if not chosen:
        return lora, reason, None
    files = {side: chosen.get(side, getattr(lora, side) if lora is not None else None) for side in sides}
    missing = [side for side, path in files.items() if path is None]
    if missing:
        why = f" ({reason})" if reason else ""
        return None, (f"--lora-override gives step {step} only for the {', '.join(sorted(chosen))} expert and the "
                      f"checkpoint of the {', '.join(missing)} expert is missing{why}"), None
    return LoraPair(high=files.get("high"), low=files.get("low")), None, lora
