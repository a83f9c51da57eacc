"""Random draws in ai-toolkit's exact order (§3, docs/parity).

Initial noise always comes from a CPU generator seeded with the preview's seed, drawn in fp32 and rounded to bf16.
The first-frame posterior is *sampled*, and where its noise comes from depends on where ai-toolkit's VAE ran:
on CPU it continues the same CPU stream; on CUDA it is the first draw of the CUDA generator reseeded with the seed.
"""

from __future__ import annotations

import torch


def latent_shape(num_frames: int, height: int, width: int) -> tuple[int, int, int, int, int]:
    return (1, 16, (num_frames - 1) // 4 + 1, height // 8, width // 8)


class PreviewRng:
    """Owns the random streams of one preview so no other draw can slip in between.

    ``layout`` is the device type ai-toolkit rendered on ("cpu" or "cuda"); ``vae_device`` is where we render.
    """

    def __init__(self, seed: int, vae_device, layout: str | None = None):
        self.seed = seed
        self.vae_device = torch.device(vae_device)
        self.layout = layout or self.vae_device.type
        self.cpu = torch.Generator(device="cpu").manual_seed(seed)

    def initial_noise(self, shape) -> torch.Tensor:
        """fp32 CPU normals rounded to bf16 and held as fp32 (ai-toolkit casts, the pipeline casts back)."""
        noise = torch.randn(shape, generator=self.cpu, dtype=torch.float32)
        return noise.to(torch.bfloat16).to(torch.float32)

    def posterior_noise(self, shape) -> torch.Tensor:
        """The VAE posterior's eps in bf16 on the VAE device.

        A bf16 draw equals an fp32 draw cast to bf16 and consumes the stream identically (§3.5), so one code
        path serves both layouts.
        """
        if self.layout == "cpu":
            eps = torch.randn(shape, generator=self.cpu, dtype=torch.float32)
        else:
            if self.vae_device.type != "cuda":
                raise ValueError("a CUDA-rendered preview's posterior noise can only be drawn on a CUDA device")
            generator = torch.Generator(device=self.vae_device).manual_seed(self.seed)
            eps = torch.randn(shape, generator=generator, device=self.vae_device, dtype=torch.float32)
        return eps.to(device=self.vae_device, dtype=torch.bfloat16)
