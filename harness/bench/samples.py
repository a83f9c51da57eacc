"""What the bench renders: one fixed prompt pair and a seeded noise control image, at a chosen size and step count;
and the schedule arithmetic that picks the shortest render that still times every expert."""

from __future__ import annotations

import numpy as np

PROMPT = "a cat walks slowly across a sunny kitchen floor and looks at the camera"
NEGATIVE = "Bright colors, overexposed, static, blurred details, subtitles, worst quality, low quality"
GUIDANCE = 4.0
CONTROL_SEED = 7  # every render uses the same control image, so renders of one size are byte-comparable


def control_image(size, seed: int = CONTROL_SEED):
    """Seeded random RGB noise of the size's width x height (its content does not change the cost)."""
    from PIL import Image

    width, height = size[0], size[1]
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def make_sample(width: int, height: int, frames: int, steps: int, seed: int = 42):
    """The SampleSpec of one bench render."""
    from ..spec import SampleSpec

    return SampleSpec(index=0, prompt=PROMPT, negative_prompt=NEGATIVE, seed=seed, width=width, height=height,
                      num_frames=frames, guidance_scale=GUIDANCE, sample_steps=steps, network_multiplier=1.0, fps=16,
                      ctrl_img=None)


def experts_for_steps(profile, steps: int) -> list[str]:
    """The expert ("high"/"low") of each step of a ``steps``-step schedule."""
    from ..render.schedule import expert_for, make_scheduler, set_timesteps

    scheduler = make_scheduler(profile)
    return [expert_for(t, profile) for t in set_timesteps(scheduler, profile, steps, "cpu")]


def short_render_steps(profile, timed_per_expert: int) -> int:
    """Fewest steps whose schedule gives each expert its first (warm-up) step plus ``timed_per_expert`` more."""
    for steps in range(2, 200):
        experts = experts_for_steps(profile, steps)
        if min(experts.count("high"), experts.count("low")) >= timed_per_expert + 1:
            return steps
    raise ValueError("no schedule splits the steps between the experts")


def extrapolate_preview(result: dict, by_expert: dict, profile, preview_steps: int) -> float:
    """The measured short render plus the steps it lacks, each at its expert's median step time."""
    target = experts_for_steps(profile, preview_steps)
    extra = 0.0
    for expert in ("high", "low"):
        missing = target.count(expert) - result["experts"].count(expert)
        extra += missing * by_expert[expert]["median_s"]
    return result["total_s"] + extra
