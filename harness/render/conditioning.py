"""First-frame conditioning for I2V (§5, docs/parity): image -> bf16 tensor -> VAE posterior -> normalised latents.

Every cast happens where ai-toolkit casts: the [0,1] pixels are rounded to bf16 before ``*2-1``, the latent
normalisation runs in bf16 with the std rounded to bf16 *before* its reciprocal.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from .. import limits

BF16 = torch.bfloat16


RESIZE_MODES = ("stretch", "center-crop")


def load_control_image(path, width: int, height: int, resize: str = "stretch") -> Image.Image:
    """``open -> convert('RGB') -> LANCZOS stretch`` (no EXIF transpose, no aspect-preserving crop).

    ``resize="center-crop"`` is not ai-toolkit's rule: it is what many UIs do (crop the centre to the target aspect,
    then LANCZOS), for the diagnosis to test against.
    """
    if resize not in RESIZE_MODES:
        raise ValueError(f"unknown resize mode {resize!r}; choose one of {', '.join(RESIZE_MODES)}")
    try:
        with Image.open(path) as img:
            if img.width * img.height > limits.MAX_FRAME_PIXELS:
                raise ValueError(f"{img.width}x{img.height} pixels, more than any control image (limit "
                                 f"{limits.MAX_FRAME_PIXELS:,}); not decoded")
            rgb = img.convert("RGB")
    except (SyntaxError, EOFError, Image.DecompressionBombError) as exc:  # Pillow's non-OSError decode failures
        raise OSError(f"cannot decode image: {exc}") from None
    if resize == "center-crop":
        return rgb.resize((width, height), Image.LANCZOS, box=center_crop_box(rgb.size, width, height))
    return rgb.resize((width, height), Image.LANCZOS)


def center_crop_box(size: tuple[int, int], width: int, height: int) -> tuple[int, int, int, int]:
    """The largest centred box of ``size`` with the aspect ratio ``width:height`` (whole pixels)."""
    src_w, src_h = size
    if src_w * height > src_h * width:  # source is wider: crop the sides
        crop_w = max(1, round(src_h * width / height))
        left = (src_w - crop_w) // 2
        return left, 0, left + crop_w, src_h
    crop_h = max(1, round(src_w * height / width))
    top = (src_h - crop_h) // 2
    return 0, top, src_w, top + crop_h


def image_to_tensor(image: Image.Image, device) -> torch.Tensor:
    """(1, 3, H, W) in [-1, 1], computed as ``bf16(k/255) * 2 - 1`` in bf16."""
    array = np.array(image, dtype=np.uint8)  # a writable copy for torch.from_numpy
    unit = torch.from_numpy(array).permute(2, 0, 1).float().div(255.0).unsqueeze(0)
    return unit.to(device=device, dtype=BF16) * 2.0 - 1.0


def latent_stats(vae, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean_bf16, inv_std_bf16) shaped for broadcasting; ``inv_std = bf16(1 / bf16(std))``."""
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1).to(device=device, dtype=BF16)
    inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1).to(device=device, dtype=BF16)
    return mean, inv_std


def first_frame_mask(latent_frames: int, h: int, w: int, device) -> torch.Tensor:
    """4 channels per latent frame: 1 on latent frame 0 (the real image), 0 elsewhere."""
    num_frames = (latent_frames - 1) * 4 + 1
    mask = torch.ones(1, 1, num_frames, h, w, device=device)
    mask[:, :, 1:] = 0
    first = mask[:, :, :1].repeat_interleave(4, dim=2)
    mask = torch.cat([first, mask[:, :, 1:]], dim=2)
    return mask.view(1, -1, 4, h, w).transpose(1, 2).to(BF16)


@torch.no_grad()
def encode_condition(vae, first_frame: torch.Tensor, latent_frames: int, rng, posterior: str = "sample") -> torch.Tensor:
    """(1, 20, T, h, w) bf16: the 4-channel mask then the 16 normalised conditioning latents.

    The video is one real frame followed by mid-grey (zero) frames, encoded by the bf16 VAE; the posterior is
    sampled with the preview's RNG (``posterior='mode'`` reproduces stock diffusers instead).
    """
    device = first_frame.device
    _, _, height, width = first_frame.shape
    num_frames = (latent_frames - 1) * 4 + 1
    zeros = first_frame.new_zeros(1, 3, num_frames - 1, height, width)
    video = torch.cat([first_frame.unsqueeze(2), zeros], dim=2)
    dist = vae.encode(video).latent_dist
    if posterior == "sample":
        latents = dist.mean + dist.std * rng.posterior_noise(dist.mean.shape)
    else:
        latents = dist.mode()
    mean, inv_std = latent_stats(vae, device)
    cond = (latents - mean) * inv_std
    mask = first_frame_mask(latent_frames, height // 8, width // 8, device)
    return torch.cat([mask, cond], dim=1)
