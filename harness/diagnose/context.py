"""What every variant of one preview shares, what decides its pixels, and rendering one set of knobs."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..errors import HarnessError
from ..runner import Engine, choose_profile
from ..spec import PreviewTarget
from .knobs import Knobs, mult_key


@dataclass
class Context:
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


def load_context(engine: Engine, target: PreviewTarget) -> Context:
    """Resolve and read once what the sweep needs; bad input raises HarnessError before anything renders."""
    from ..media import check_preview_golden, read_frames

    preview, sample = target.preview, target.preview.sample
    profile, why = choose_profile(target, engine.options.profile)
    ctrl, size = _control_image(target)
    paths, layers = _lora_layers(engine, preview)
    base = Knobs(profile=profile, sample=sample, multiplier=preview.extra.get("multipliers", sample.network_multiplier),
                 lora=preview.lora is not None, merged=preview.merged)
    if preview.golden is None:
        raise HarnessError(target.config_file, f"prompts[{preview.index}].golden", "no golden file to diagnose against")
    clip = read_frames(preview.golden)
    check_preview_golden(clip, preview, target.config_file)  # the same up-front checks as `run`
    raw_golden = read_frames(preview.golden_raw).frames if preview.golden_raw else None
    ext = Path(preview.golden).suffix.lstrip(".").lower() or "webp"
    return Context(target, base, why, ctrl, size, paths, layers, clip.frames, raw_golden, ext)


def _control_image(target: PreviewTarget) -> tuple[Path, tuple[int, int]]:
    """The control image's path and size (the size decides whether a centre crop changes anything)."""
    from PIL import Image

    from ..paths import resolve_ctrl_img

    sample = target.preview.sample
    ctrl, _ = resolve_ctrl_img(sample.ctrl_img, target.path_map, target.search_dirs, file=target.config_file,
                               field=f"sample.samples[{sample.index}].ctrl_img")
    try:
        with Image.open(ctrl) as img:
            size = img.size
    except (OSError, ValueError) as exc:
        raise HarnessError(ctrl, f"sample.samples[{sample.index}].ctrl_img", f"not a readable image ({exc})") from None
    return Path(ctrl), size


def _lora_layers(engine: Engine, preview) -> tuple[dict, dict]:
    """Per expert side: the LoRA file and its layers, parsed once by the engine for every variant."""
    paths, layers = {}, {}
    if preview.lora is not None:
        for side in ("high", "low"):
            path = getattr(preview.lora, side)
            if path is not None:
                paths[side], layers[side] = Path(path), engine._lora_layers(Path(path))
    return paths, layers


def effective_key(ctx: Context, knobs: Knobs) -> tuple:
    """What decides the pixels, reduced so that variants that cannot differ share a key (and a render)."""
    from ..render.conditioning import center_crop_box

    p, s = knobs.sampler, knobs.sample
    resize = knobs.resize
    if resize == "center-crop" and center_crop_box(ctx.ctrl_size, s.width, s.height) == (0, 0, *ctx.ctrl_size):
        resize = "stretch"
    negative = s.negative_prompt if s.guidance_scale > 1.0 else None
    return (_schedule_key(p, s.sample_steps), p.posterior, p.cast_whole_bf16, s.seed, negative, _lora_key(ctx, knobs),
            resize, knobs.quantization)


def _schedule_key(p, steps: int) -> tuple:
    """The timesteps' expert assignment rather than the raw boundary: a boundary no timestep crosses is a no-op."""
    from ..render.schedule import expert_for, make_scheduler, set_timesteps

    timesteps = set_timesteps(make_scheduler(p), p, steps, "cpu")
    return (p.scheduler, p.shift, p.unipc_sigmas if p.scheduler == "unipc" else None,
            tuple(expert_for(t, p) for t in timesteps))


def _lora_key(ctx: Context, knobs: Knobs) -> tuple | None:
    """The LoRA as applied: sides with a non-zero multiplier and the merge path; None when nothing is applied."""
    if not (knobs.lora and ctx.paths):
        return None
    m = {side: mult_key(knobs.multiplier)[0 if side == "high" else 1] for side in ctx.paths}
    live = {side: v for side, v in m.items() if v != 0}
    return (tuple(sorted(live.items())), knobs.merged) if live else None


def render_identity(engine: Engine, ctx: Context) -> tuple:
    """Everything outside the knobs that decides a render (for the opt-in cross-golden cache)."""
    t = ctx.target
    sample = replace(t.preview.sample, seed=0, negative_prompt="", network_multiplier=0.0)
    return (t.model_name, engine.options.base_model, engine.options.vae or t.vae, engine.device_for(t), t.rng_layout,
            t.threads if engine.options.threads is None else engine.options.threads, str(ctx.ctrl),
            tuple(sorted((side, str(path)) for side, path in ctx.paths.items())), sample)


def render_knobs(engine: Engine, target: PreviewTarget, knobs: Knobs, ctx: Context | None = None) -> np.ndarray:
    """Render the preview under ``knobs`` through ``Engine.render`` itself; returns the uint8 frames."""
    render, _, _ = engine.render(target, profile=knobs.sampler, sample=knobs.sample, multiplier=knobs.multiplier,
                                 merged=knobs.merged, use_lora=knobs.lora, resize=knobs.resize,
                                 quantization=knobs.quantization)
    return render.frames
