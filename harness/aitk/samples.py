"""Expand an ai-toolkit ``sample`` block into the effective per-preview settings (§1.2-§1.7, §5.1-§5.2, docs/parity).

Every rule here mirrors what ai-toolkit does, including its quirks (a ``--`` in prose truncates the
prompt, an item seed leaks into later items without ``walk_seed``), because the goal is to
reproduce the preview it rendered, not what the user meant.
"""

from __future__ import annotations

import math
from typing import Any

from harness.aitk.job import P0, AitkJob
from harness.errors import HarnessError
from harness.limits import check_seed
from harness.spec import SampleSpec

# SampleConfig class defaults (not the UI's): a YAML job that omits a key got these.
CLASS_DEFAULTS = {
    "width": 512,
    "height": 512,
    "neg": False,
    "seed": 0,
    "walk_seed": False,
    "guidance_scale": 7,
    "sample_steps": 20,
    "network_multiplier": 1,
    "num_frames": 1,
    "fps": 16,
}
ITEM_KEYS = ("width", "height", "neg", "guidance_scale", "sample_steps", "fps", "num_frames", "network_multiplier")

# Inline flag -> (setting, parser). Flags not listed are accepted by ai-toolkit but do not matter for Wan.
FLAGS = {
    "n": ("negative_prompt", str),
    "w": ("width", int),
    "h": ("height", int),
    "d": ("seed", int),
    "seed": ("seed", int),
    "l": ("guidance_scale", float),
    "cfg": ("guidance_scale", float),
    "s": ("sample_steps", int),
    "steps": ("sample_steps", int),
    "m": ("network_multiplier", float),
    "network_multiplier": ("network_multiplier", float),
    "frames": ("num_frames", int),
    "num_frames": ("num_frames", int),
    "fps": ("fps", int),
    "ctrl_img": ("ctrl_img", str),
}
UNREPRODUCIBLE = "this preview cannot be reproduced because "


def expand_samples(job: AitkJob, which: str = "sample") -> list[SampleSpec]:
    """Effective settings of every preview in one sampling round, in list order (= file index)."""
    block = _block(job, which)
    items = _items(job, block, which)
    seed0 = _whole(job, block.get("seed", CLASS_DEFAULTS["seed"]), f"{P0}.{which}.seed", allow_negative=True)
    walk = bool(block.get("walk_seed", CLASS_DEFAULTS["walk_seed"]))
    specs, current_seed = [], seed0
    for i, (item, where) in enumerate(items):
        if walk:
            current_seed = seed0 + i
        if item.get("seed") is not None:  # persists to later items when not walking (§1.7)
            current_seed = _whole(job, item["seed"], f"{where}.seed", allow_negative=True)
        specs.append(_expand_item(job, block, item, where, i, current_seed))
    return specs


def ctrl_image_users(job: AitkJob) -> dict[str, list[int]]:
    """Each control image path the job's sampling rounds name, with the sample indices that use it."""
    users: dict[str, list[int]] = {}
    for which in ["sample"] + (["first_sample"] if job.first_sample is not None else []):
        for spec in expand_samples(job, which):
            if spec.ctrl_img and spec.index not in users.setdefault(spec.ctrl_img, []):
                users[spec.ctrl_img].append(spec.index)
    return users


def merge_decision(job: AitkJob, specs: list[SampleSpec]) -> tuple[bool, str]:
    """Whether ai-toolkit merged the LoRA into the weights for this round (§8.2), and why."""
    mults = sorted({float(s.network_multiplier) for s in specs})
    blockers = [k for k in ("quantize", "layer_offloading") if job.model.get(k)]
    if blockers:
        return False, f"unmerged: model.{blockers[0]} is on, so ai-toolkit cannot merge the LoRA"
    if len(mults) != 1:
        return False, f"unmerged: the round uses {len(mults)} different multipliers {mults}"
    return True, f"merged: one multiplier ({mults[0]:g}) for the whole round, no quantization or layer offloading"


def _block(job: AitkJob, which: str) -> dict:
    """``sample`` or ``first_sample``; both share one schema."""
    if which == "sample":
        return job.sample
    if which == "first_sample":
        if job.first_sample is None:
            raise HarnessError(job.path, f"{P0}.first_sample", "the job has no `first_sample` block")
        return job.first_sample
    raise ValueError(f"which must be 'sample' or 'first_sample', not {which!r}")


def _items(job: AitkJob, block: dict, which: str) -> list[tuple[dict, str]]:
    """The ``samples`` list, or one item per legacy ``prompts`` string when ``samples`` is absent."""
    base = f"{P0}.{which}"
    samples = block.get("samples")
    if samples is None and block.get("prompts") is not None:
        prompts = block["prompts"]
        if not isinstance(prompts, list):
            raise HarnessError(job.path, f"{base}.prompts", "must be a list of prompt strings")
        return [({"prompt": p}, f"{base}.prompts[{i}]") for i, p in enumerate(prompts)]
    if samples is None:
        samples = []
    if not isinstance(samples, list):
        raise HarnessError(job.path, f"{base}.samples", "must be a list of {prompt: ...} items")
    if not samples:
        raise HarnessError(job.path, f"{base}.samples",
                           "no previews were configured (no samples and no prompts); nothing to compare")
    out = []
    for i, item in enumerate(samples):
        if not isinstance(item, dict):
            raise HarnessError(job.path, f"{base}.samples[{i}]", "must be a mapping with at least `prompt`")
        out.append((item, f"{base}.samples[{i}]"))
    return out


def _expand_item(job: AitkJob, block: dict, item: dict, where: str, index: int, seed: int) -> SampleSpec:
    """One preview: item values over block values over class defaults, then trigger, flags, snapping."""
    v = {k: item.get(k, block.get(k, CLASS_DEFAULTS[k])) for k in ITEM_KEYS}
    prompt_config = item.get("prompt", block.get("prompt"))
    if not isinstance(prompt_config, str):
        raise HarnessError(job.path, f"{where}.prompt", f"must be a string, got {prompt_config!r}")
    prompt = _inject_trigger(prompt_config, job.trigger_word)
    s = {
        "negative_prompt": v["neg"],
        "width": v["width"],
        "height": v["height"],
        "seed": seed,
        "guidance_scale": v["guidance_scale"],
        "sample_steps": v["sample_steps"],
        "network_multiplier": _multiplier(v["network_multiplier"]),
        "num_frames": v["num_frames"],
        "fps": v["fps"],
        "ctrl_img": item.get("ctrl_img"),
    }
    prompt, flagged = _apply_flags(job, prompt, s, where)
    _validate(job, s, _sources(where, item, block, flagged))
    return _finish(prompt, prompt_config, s, index, where, _neg_source(where, item, block))


def _neg_source(where: str, item: dict, block: dict) -> str:
    """The config field the negative prompt came from (the item's, else the block's, where an unset neg belongs)."""
    if "neg" in item:
        return f"{where}.neg"
    return f"{where.rsplit('.', 1)[0]}.neg"


def _inject_trigger(prompt: str, trigger: str | None) -> str:
    """ai-toolkit replaces [trigger] and [name] only when a trigger is set, and never prepends it (§1.5)."""
    if not trigger:
        return prompt
    return prompt.replace("[trigger]", trigger).replace("[name]", trigger)


def _multiplier(value: Any) -> float:
    """SampleItem parses the multiplier with float(); anything invalid silently becomes 1.0 (§1.3)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return 1.0


def _apply_flags(job: AitkJob, prompt: str, s: dict, where: str) -> tuple[str, set]:
    """Split on every literal ``--`` like ai-toolkit (§1.4); returns the text before the first one and the keys set."""
    parts = prompt.strip().split("--")
    flagged = set()
    for part in parts[1:]:
        flag, _, value = part.partition(" ")
        value = value.strip()
        if flag not in FLAGS:
            continue
        key, parse = FLAGS[flag]
        try:
            s[key] = parse(value)
        except ValueError:
            kind = {int: "a whole number", float: "a number"}[parse]
            raise HarnessError(job.path, f"{where}.prompt",
                               f"inline flag --{flag} value {value!r} is not {kind}; ai-toolkit would crash on it") from None
        flagged.add(key)
    return parts[0].strip(), flagged


def _sources(where: str, item: dict, block: dict, flagged: set) -> dict:
    """Which config field each checked value came from, so an error points at the line to edit."""
    block_field = where.rsplit(".", 1)[0]
    out = {}
    keys = ("width", "height", "num_frames", "sample_steps", "fps", "guidance_scale", "seed", "network_multiplier")
    for key in keys:
        if key in flagged:
            out[key] = f"{where}.prompt"
        elif key in item or key not in block:
            out[key] = f"{where}.{key}"
        else:
            out[key] = f"{block_field}.{key}"
    return out


def _validate(job: AitkJob, s: dict, fields: dict) -> None:
    """Reject values ai-toolkit itself could not have rendered, naming where the value came from."""
    for key in ("width", "height", "num_frames", "sample_steps", "fps"):
        s[key] = _whole(job, s[key], fields[key], allow_negative=False)
    if s["seed"] != -1:
        check_seed(s["seed"], job.path, fields["seed"])
    g = s["guidance_scale"]
    if isinstance(g, bool) or not isinstance(g, (int, float)) or not math.isfinite(g):
        raise HarnessError(job.path, fields["guidance_scale"], f"must be a finite number, got {g!r}")
    s["guidance_scale"] = float(g)
    m = s["network_multiplier"]
    if not math.isfinite(m):  # ai-toolkit would render NaN frames with it
        raise HarnessError(job.path, fields["network_multiplier"], f"must be a finite number, got {m!r}")


def _whole(job: AitkJob, value: Any, field: str, allow_negative: bool) -> int:
    """An integer setting (bools and text are rejected: ai-toolkit would crash or misbehave on them)."""
    ok = not isinstance(value, bool) and (isinstance(value, int) or (isinstance(value, float) and value.is_integer()))
    if not ok:
        raise HarnessError(job.path, field, f"must be a whole number, got {value!r}")
    if not allow_negative and value <= 0:
        raise HarnessError(job.path, field, f"must be greater than 0, got {value!r}")
    return int(value)


def _snap_size(v: int) -> int:
    """/8 with a floor of 64 (GenerateImageConfig), then /16 (I2V with a control image, §5.2)."""
    return max(64, v - v % 8) // 16 * 16


def _snap_frames(n: int) -> int:
    """Frames become 4k+1 (§5.1)."""
    return max(1, ((n - 1) // 4) * 4 + 1)


def _unreproducible(s: dict, where: str = "sample", neg_field: str = "neg") -> str | None:
    """Previews whose inputs ai-toolkit could not have used deterministically (or at all), naming the fields."""
    reasons = []
    if not isinstance(s["negative_prompt"], str):
        reasons.append(f"the negative prompt is {s['negative_prompt']!r} ({neg_field} unset or not text): ai-toolkit's "
                       "Wan text encoder crashes on it; set `neg: \"\"`")
    if s["seed"] == -1:
        reasons.append(f"the seed of {where} is -1, so ai-toolkit drew a random seed that it did not record")
    if not s["ctrl_img"]:
        reasons.append(f"{where} has no ctrl_img and ai-toolkit cannot render I2V without one")
    return UNREPRODUCIBLE + "; ".join(reasons) if reasons else None


def _finish(prompt: str, prompt_config: str, s: dict, index: int, where: str = "sample",
            neg_field: str = "neg") -> SampleSpec:
    """Apply the snapping ai-toolkit applies after flag parsing and freeze the result."""
    neg = s["negative_prompt"]
    return SampleSpec(
        index=index,
        prompt=prompt,
        negative_prompt=neg if isinstance(neg, str) else "",
        seed=s["seed"],
        width=_snap_size(s["width"]),
        height=_snap_size(s["height"]),
        num_frames=_snap_frames(s["num_frames"]),
        guidance_scale=s["guidance_scale"],
        sample_steps=s["sample_steps"],
        network_multiplier=float(s["network_multiplier"]),
        fps=s["fps"],
        ctrl_img=str(s["ctrl_img"]) if s["ctrl_img"] else None,
        width_requested=s["width"],
        height_requested=s["height"],
        num_frames_requested=s["num_frames"],
        prompt_config=prompt_config,
        unreproducible=_unreproducible(s, where, neg_field),
    )
