"""What every variant of one preview shares, what decides its pixels, and rendering one set of knobs."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..compare import Golden, read_golden
from ..engine import Engine, RenderSettings
from ..errors import HarnessError
from ..spec import PreviewTarget
from .knobs import mult_key


@dataclass
class Context:
    """Per-preview things every variant shares: the baseline settings, resolved inputs, the golden."""

    target: PreviewTarget
    base: RenderSettings
    ctrl: Path
    ctrl_size: tuple[int, int]
    paths: dict  # per expert side: the LoRA file
    golden: Golden
    aitk_version: str | None

    @property
    def profile_why(self) -> str:
        return self.base.profile_why


def load_context(engine: Engine, target: PreviewTarget) -> Context:
    """Resolve and read once what the sweep needs; bad input raises HarnessError before anything renders."""
    from PIL import Image

    base = engine.baseline(target)
    golden = read_golden(target)  # the same up-front checks as `run`
    sample = target.preview.sample
    ctrl, _ = engine.control_image_path(target, sample)
    try:
        with Image.open(ctrl) as img:
            size = img.size
    except (OSError, ValueError) as exc:
        raise HarnessError(ctrl, f"sample.samples[{sample.index}].ctrl_img", f"not a readable image ({exc})") from None
    paths, _ = engine.lora_layers(target)  # parsed once here; every variant's render reuses the engine's cache
    return Context(target, base, Path(ctrl), size, paths, golden, engine.aitk_version(target))


def effective_key(ctx: Context, knobs: RenderSettings) -> tuple:
    """What decides the pixels, reduced so that variants that cannot differ share a key (and a render)."""
    from ..render.conditioning import center_crop_box

    p, s = knobs.sampler, knobs.sample
    resize = knobs.resize
    if resize == "center-crop" and center_crop_box(ctx.ctrl_size, s.width, s.height) == (0, 0, *ctx.ctrl_size):
        resize = "stretch"
    negative = s.negative_prompt if s.guidance_scale > 1.0 else None
    return (_schedule_key(p, s.sample_steps), p.posterior, p.cast_whole_bf16, s.seed, negative, _lora_key(ctx, knobs),
            resize, knobs.quantization, knobs.merge_history, _rng_key(knobs))


def _rng_key(knobs: RenderSettings) -> int | None:
    """The threads the posterior draw launches: grids that launch alike lay the noise out alike (§3.8)."""
    from ..gpus import launch_threads
    from ..render.rng import posterior_numel

    if knobs.rng_grid is None or knobs.sampler.posterior != "sample":
        return None
    return launch_threads(posterior_numel(knobs.sample), knobs.rng_grid)


def _schedule_key(p, steps: int) -> tuple:
    """The timesteps' expert assignment rather than the raw boundary: a boundary no timestep crosses is a no-op."""
    from ..render.schedule import expert_for, make_scheduler, set_timesteps

    timesteps = set_timesteps(make_scheduler(p), p, steps, "cpu")
    return (p.scheduler, p.shift, p.unipc_sigmas if p.scheduler == "unipc" else None,
            tuple(expert_for(t, p) for t in timesteps))


def _lora_key(ctx: Context, knobs: RenderSettings) -> tuple | None:
    """The LoRA as applied: sides with a non-zero multiplier and the merge path; None when nothing is applied."""
    if not (knobs.use_lora and ctx.paths):
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


def render_knobs(engine: Engine, target: PreviewTarget, knobs: RenderSettings) -> np.ndarray:
    """Render the preview under ``knobs`` through ``Engine.render`` itself; returns the uint8 frames."""
    return engine.render(target, knobs).frames
