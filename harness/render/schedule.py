"""Scheduler construction per profile, and which expert runs at each timestep (§7, docs/parity)."""

from __future__ import annotations

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

from .profiles import SamplerProfile

NUM_TRAIN_TIMESTEPS = 1000

# ai-toolkit's UniPC settings of the 2025-08 to 2026-04 era (§7.1, docs/parity); the shift comes from the profile.
UNIPC_FLOW_CONFIG = dict(
    num_train_timesteps=NUM_TRAIN_TIMESTEPS,
    prediction_type="flow_prediction",
    use_flow_sigmas=True,
    flow_shift=3.0,
    solver_order=2,
    solver_type="bh2",
    predict_x0=True,
    lower_order_final=True,
    final_sigmas_type="zero",
    timestep_spacing="linspace",
)


def make_scheduler(profile: SamplerProfile):
    """A fresh scheduler per render: UniPC keeps a multistep history, so it must never be shared."""
    if profile.scheduler == "euler":
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, shift=profile.shift)
    if profile.scheduler == "unipc":
        return UniPCMultistepScheduler(**{**UNIPC_FLOW_CONFIG, "flow_shift": profile.shift})
    raise ValueError(f"unknown scheduler {profile.scheduler!r}")


def old_unipc_unshifted_sigmas(num_steps: int) -> np.ndarray:
    """The pre-2026-01-22 diffusers flow-sigma grid before shifting: 1 - linspace(1, 1/T, N+1), flipped, last dropped.

    diffusers 0.42.1 shifts sigmas passed to ``set_timesteps(sigmas=...)`` exactly like the old code did, and its
    ``1 - 1e-6`` clamp never triggers because this grid starts at 0.999; so passing this grid reproduces the old
    schedule with the current scheduler code.
    """
    alphas = np.linspace(1, 1 / NUM_TRAIN_TIMESTEPS, num_steps + 1)
    return np.flip(1.0 - alphas)[:-1].copy()


def set_timesteps(scheduler, profile: SamplerProfile, num_steps: int, device) -> torch.Tensor:
    if profile.scheduler == "unipc" and profile.unipc_sigmas == "old":
        scheduler.set_timesteps(sigmas=old_unipc_unshifted_sigmas(num_steps), device=device)
    else:
        scheduler.set_timesteps(num_steps, device=device)
    return scheduler.timesteps


def expert_for(t: torch.Tensor | float, profile: SamplerProfile) -> str:
    """'high' (``transformer``) when t >= boundary*1000, else 'low' (``transformer_2``); ai-toolkit uses >=."""
    return "high" if float(t) >= profile.boundary_timestep else "low"
