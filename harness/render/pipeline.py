"""The exact Wan 2.2 I2V MoE sampling loop, read top to bottom like ai-toolkit's ``Wan22Pipeline`` (§6, docs/parity)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from diffusers.video_processor import VideoProcessor

from ..errors import NonFiniteError
from ..spec import SampleSpec
from .conditioning import encode_condition, image_to_tensor, latent_stats
from .models import BF16, ModelBundle
from .profiles import SamplerProfile
from .rng import PreviewRng, latent_shape
from .schedule import expert_for, make_scheduler, set_timesteps
from .text import PromptCache


@dataclass
class Render:
    frames: np.ndarray  # (F, H, W, 3) uint8, exactly what ai-toolkit passed to its WebP encoder
    trace: list[tuple[str, float]] = field(default_factory=list)  # (expert, t) per transformer forward


def _check_finite(tensor: torch.Tensor, step: int, expert: str, t: float) -> None:
    if not torch.isfinite(tensor).all():
        raise NonFiniteError("render", f"step {step}", f"NaN/Inf first appeared in the {expert}-noise expert's output "
                             f"at t={t:.4f}; check the LoRA weights and multiplier", expert=expert)


@torch.no_grad()
def denoise(bundle: ModelBundle, latents: torch.Tensor, condition: torch.Tensor, cond_embeds, uncond_embeds,
            guidance: float, steps: int, profile: SamplerProfile, progress=None) -> tuple[torch.Tensor, list]:
    """Euler/UniPC loop: bf16 model input, cond then uncond batch-1 forwards, bf16 CFG, step via diffusers.

    Passing a bf16 model output and fp32 latents to diffusers' ``step`` reproduces ai-toolkit's bf16 rounding of
    ``dt * v`` (§7.3); a hand-written fp32 update would not.
    """
    scheduler = make_scheduler(profile)
    timesteps = set_timesteps(scheduler, profile, steps, latents.device)
    do_cfg = guidance > 1.0
    trace = []
    for i, t in enumerate(timesteps):
        expert = expert_for(t, profile)
        model = bundle.expert(expert)
        x = latents.to(BF16)
        x_in = torch.cat([x, condition], dim=1)
        timestep = t.expand(x.shape[0])
        v = model(hidden_states=x_in, timestep=timestep, encoder_hidden_states=cond_embeds, return_dict=False)[0]
        trace.append((expert, float(t)))
        if do_cfg:
            u = model(hidden_states=x_in, timestep=timestep, encoder_hidden_states=uncond_embeds, return_dict=False)[0]
            trace.append((expert, float(t)))
            v = u + guidance * (v - u)
        _check_finite(v, i, expert, float(t))
        latents = scheduler.step(v, t, latents, return_dict=False)[0].to(torch.float32)
        if progress is not None:
            progress()
    return latents, trace


@torch.no_grad()
def decode(bundle: ModelBundle, latents: torch.Tensor) -> np.ndarray:
    """bf16 de-normalisation (division by the bf16 reciprocal), untiled bf16 decode, bf16 postprocess, numpy round."""
    mean, inv_std = latent_stats(bundle.vae, latents.device)
    z = latents.to(BF16) / inv_std + mean
    video = bundle.vae.decode(z, return_dict=False)[0]
    frames = VideoProcessor(vae_scale_factor=8).postprocess_video(video, output_type="np")[0]
    return (frames * 255).round().astype(np.uint8)


@torch.no_grad()
def render_sample(bundle: ModelBundle, sample: SampleSpec, control_image, profile: SamplerProfile,
                  prompts: PromptCache | None = None, progress=None, rng_layout: str | None = None,
                  rng_grid: int | None = None) -> Render:
    """Render one preview with whatever LoRA is currently applied to the bundle's experts.

    ``rng_layout`` is the device type ai-toolkit rendered on (default: the device we render on); ``rng_grid`` the
    CUDA randn grid of the golden's GPU (default: this GPU's own).
    """
    prompts = prompts or PromptCache()
    device = bundle.device
    with bundle.encoding():
        cond_embeds = prompts.get(bundle.tokenizer, bundle.text_encoder, sample.prompt, device)
        uncond_embeds = None
        if sample.guidance_scale > 1.0:
            uncond_embeds = prompts.get(bundle.tokenizer, bundle.text_encoder, sample.negative_prompt, device)

    rng = PreviewRng(sample.seed, vae_device=device, layout=rng_layout, grid=rng_grid)
    shape = latent_shape(sample.num_frames, sample.height, sample.width)
    latents = rng.initial_noise(shape).to(device)
    first_frame = image_to_tensor(control_image, device)
    with bundle.vae_norm(profile.vae_norm):
        condition = encode_condition(bundle.vae, first_frame, shape[2], rng, posterior=profile.posterior)
        latents, trace = denoise(bundle, latents, condition, cond_embeds, uncond_embeds, sample.guidance_scale,
                                 sample.sample_steps, profile, progress)
        frames = decode(bundle, latents)
    return Render(frames=frames, trace=trace)
