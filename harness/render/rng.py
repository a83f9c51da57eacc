"""Random draws in ai-toolkit's exact order (§3, docs/parity), and the CUDA posterior noise of another GPU (§3.8).

Initial noise always comes from a CPU generator seeded with the preview's seed, drawn in fp32 and rounded to bf16.
The first-frame posterior is *sampled*, and where its noise comes from depends on where ai-toolkit's VAE ran:
on CPU it continues the same CPU stream; on CUDA it is the first draw of the CUDA generator reseeded with the seed.

On CUDA, PyTorch's ``randn`` caps its grid by the GPU (``harness.gpus.rng_grid``) and writes thread t's k-th
``curand_normal4`` to elements ``t + threads·(4k + i)``: above the cap, the layout is the GPU's. Another GPU's layout
is gathered from a larger draw of the same Philox streams on any GPU whose grid is at least as large (thread t of
every grid runs subsequence t from offset 0); on CPU it is emulated by :mod:`harness.render.philox` (exact bits,
approximate normals).
"""

from __future__ import annotations

import math

import torch

from ..gpus import DEFAULT_GPU, GPUS, find_gpu, grid_for_stack, launch_threads, rng_grid


def latent_shape(num_frames: int, height: int, width: int) -> tuple[int, int, int, int, int]:
    return (1, 16, (num_frames - 1) // 4 + 1, height // 8, width // 8)


def device_grid(device) -> int:
    """This CUDA device's randn grid cap, in threads (ATen reads the same two properties)."""
    props = torch.cuda.get_device_properties(torch.device(device))
    return rng_grid(props.multi_processor_count, props.max_threads_per_multi_processor)


def default_grid(device) -> int:
    """The layout a CUDA golden of unknown GPU is drawn in: this GPU's own, or on CPU the usual training GPU's."""
    device = torch.device(device)
    return device_grid(device) if device.type == "cuda" else find_gpu(DEFAULT_GPU).grid


def emulated(numel: int, grid: int | None, device) -> bool:
    """Whether the draw must come from the CPU emulation: on CPU, or for a grid larger than this GPU launches."""
    device = torch.device(device)
    if device.type != "cuda":
        return True
    return grid is not None and launch_threads(numel, grid) > launch_threads(numel, device_grid(device))


def cuda_randn(shape, seed: int, device, grid: int | None = None) -> torch.Tensor:
    """fp32 normals of a fresh CUDA generator seeded with ``seed``, laid out as on a GPU whose grid cap is ``grid``.

    ``grid=None`` means :func:`default_grid` (on CUDA plain ``torch.randn``). A layout this GPU can gather is exact;
    one it cannot (:func:`emulated`) comes from :mod:`harness.render.philox` and is approximate.
    """
    device = torch.device(device)
    numel = math.prod(shape)
    if emulated(numel, grid, device):
        from .philox import cuda_randn as emulate

        threads = launch_threads(numel, grid or default_grid(device))
        return torch.from_numpy(emulate(numel, seed, threads)).view(shape).to(device)
    own = device_grid(device)
    want, have = launch_threads(numel, grid or own), launch_threads(numel, own)
    if want == have:
        generator = torch.Generator(device=device).manual_seed(seed)
        return torch.randn(shape, generator=generator, device=device, dtype=torch.float32)
    return _gather(seed, device, numel, want, own).view(shape)


def _gather(seed: int, device, numel: int, want: int, own: int, extra_calls: int = 0) -> torch.Tensor:
    """``numel`` normals as a kernel of ``want`` threads writes them, from one draw that launches our ``own``.

    A draw of ``own·4·calls`` values launches exactly ``own`` threads for ``calls`` iterations, so its element j is
    thread ``j % own``'s call ``(j // own) // 4``, component ``(j // own) % 4``: viewed as [call, component, thread],
    the first ``want`` threads in that order are the other GPU's layout.
    """
    calls = -(-numel // (4 * want)) + extra_calls
    generator = torch.Generator(device=device).manual_seed(seed)
    draw = torch.randn(own * 4 * calls, generator=generator, device=device, dtype=torch.float32)
    return draw.view(calls, 4, own)[:, :, :want].reshape(-1)[:numel]


def posterior_numel(sample) -> int:
    """How many normals the first-frame posterior draws for a ``SampleSpec``."""
    return math.prod(latent_shape(sample.num_frames, sample.height, sample.width))


def layout_notes(settings, golden_stack: dict | None, device) -> list[str]:
    """What the posterior's layout rests on, whenever GPUs could disagree about it (a draw above some GPU's cap).

    ``settings`` is an ``engine.RenderSettings``; its ``rng_grid`` is None for a CPU-layout golden.
    """
    numel, grid = posterior_numel(settings.sample), settings.rng_grid
    if grid is None or settings.sampler.posterior != "sample" or numel <= min(gpu.grid for gpu in GPUS):
        return []
    device = torch.device(device)
    threads = launch_threads(numel, grid)
    if grid_for_stack(golden_stack)[0] is None:
        here = "this GPU's" if device.type == "cuda" else f"the {DEFAULT_GPU}'s (assumed)"
        return [f"the golden stack names no GPU: its {numel} posterior noise values, more than some GPUs' randn grid, "
                f"are laid out as on {here} ({threads} CUDA threads); `wan-parity diagnose --families gpu-layout` "
                "tries the other GPUs' layouts"]
    if device.type == "cuda" and not emulated(numel, grid, device) and threads != launch_threads(numel, device_grid(device)):
        return [f"posterior noise laid out as on the golden's GPU ({threads} CUDA threads), gathered from a draw of "
                "this GPU's"]
    return []


EMULATION_NOTE = ("ai-toolkit drew the first-frame posterior noise from the CUDA generator; {where} it is emulated "
                  "(curand's Philox bits exactly, its Box-Muller sin/cos only to a few fp32 ulps, so a few bf16 "
                  "values in 10,000 differ by one step)")


def emulation_notes(settings, device) -> list[str]:
    """The approximation note of an emulated posterior draw ([] when the draw is exact or not sampled)."""
    if settings.rng_grid is None or settings.sampler.posterior != "sample":
        return []
    if not emulated(posterior_numel(settings.sample), settings.rng_grid, device):
        return []
    where = "on CPU" if torch.device(device).type != "cuda" else "for a GPU with a larger randn grid than this one"
    return [EMULATION_NOTE.format(where=where)]


class PreviewRng:
    """Owns the random streams of one preview so no other draw can slip in between.

    ``layout`` is the device type ai-toolkit rendered on ("cpu" or "cuda"); ``vae_device`` is where we render;
    ``grid`` the golden GPU's randn grid cap in threads (None: :func:`default_grid`).
    """

    def __init__(self, seed: int, vae_device, layout: str | None = None, grid: int | None = None):
        self.seed = seed
        self.vae_device = torch.device(vae_device)
        self.layout = layout or self.vae_device.type
        self.grid = grid
        self.cpu = torch.Generator(device="cpu").manual_seed(seed)

    def initial_noise(self, shape) -> torch.Tensor:
        """fp32 CPU normals rounded to bf16 and held as fp32 (ai-toolkit casts, the pipeline casts back)."""
        noise = torch.randn(shape, generator=self.cpu, dtype=torch.float32)
        return noise.to(torch.bfloat16).to(torch.float32)

    def posterior_noise(self, shape) -> torch.Tensor:
        """The VAE posterior's eps in bf16 on the VAE device.

        On CPU it is drawn in bf16, the call ai-toolkit makes (§3 step 5): torch 2.14.1 gives an fp32 draw cast to
        bf16 there, but torch 2.11 does not, so only the literal call holds on every torch. The CUDA layouts are
        emulated from fp32 draws, which equal bf16 draws bit for bit on CUDA (§3, measured on the H200).
        """
        if self.layout == "cpu":
            eps = torch.randn(shape, generator=self.cpu, dtype=torch.bfloat16)
        else:
            eps = cuda_randn(shape, self.seed, self.vae_device, self.grid)
        return eps.to(device=self.vae_device, dtype=torch.bfloat16)
