"""Unit tests for harness.render.rng: the order in which a preview consumes random numbers (§3, docs/parity)."""

from __future__ import annotations

import pytest
import torch

from harness.gpus import rng_grid
from harness.render import philox
from harness.render.rng import PreviewRng, latent_shape

BF16 = torch.bfloat16


def test_latent_shape():
    assert latent_shape(9, 64, 48) == (1, 16, 3, 8, 6)
    assert latent_shape(1, 64, 64) == (1, 16, 1, 8, 8)
    assert latent_shape(41, 480, 832) == (1, 16, 11, 60, 104)


@pytest.mark.parametrize("seed", [0, 42, 2**40 + 7])
def test_initial_noise_is_bf16_rounded_cpu_fp32_draw(seed):
    shape = (1, 16, 3, 4, 6)
    rng = PreviewRng(seed, "cpu")
    noise = rng.initial_noise(shape)
    expected = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).bfloat16().float()
    assert noise.dtype == torch.float32
    assert torch.equal(noise, expected)
    # held in fp32 but with bf16 values: not the raw fp32 draw
    raw = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    assert not torch.equal(noise, raw)


def test_cpu_posterior_continues_the_same_stream():
    seed, noise_shape, post_shape = 42, (1, 16, 3, 4, 4), (1, 16, 3, 4, 4)
    rng = PreviewRng(seed, "cpu")
    noise = rng.initial_noise(noise_shape)
    eps = rng.posterior_noise(post_shape)

    gen = torch.Generator().manual_seed(seed)
    expected_noise = torch.randn(noise_shape, generator=gen)
    expected_eps = torch.randn(post_shape, generator=gen).bfloat16()  # the NEXT numel normals
    assert torch.equal(noise, expected_noise.bfloat16().float())
    assert eps.dtype == BF16 and eps.device.type == "cpu"
    assert torch.equal(eps, expected_eps)
    # a fresh generator for the posterior (the CUDA layout) would give something else on CPU
    fresh = torch.randn(post_shape, generator=torch.Generator().manual_seed(seed)).bfloat16()
    assert not torch.equal(eps, fresh)


def test_posterior_before_noise_is_a_different_order():
    """The noise must be drawn first; drawing the posterior first shifts both."""
    seed, shape = 7, (1, 16, 2, 2, 2)
    in_order = PreviewRng(seed, "cpu")
    noise = in_order.initial_noise(shape)
    swapped = PreviewRng(seed, "cpu")
    swapped.posterior_noise(shape)
    assert not torch.equal(swapped.initial_noise(shape), noise)


def test_cpu_posterior_noise_is_ais_own_bf16_draw_continuing_the_stream():
    """ai-toolkit draws the CPU posterior with ``randn(..., dtype=bf16)`` after the fp32 initial noise (§3): the
    literal call, so it holds on torch versions whose bf16 and fp32 CPU draws differ (2.11)."""
    shape, post_shape = (1, 16, 2, 2, 2), (1, 16, 2, 2, 2)
    rng = PreviewRng(9, "cpu")
    rng.initial_noise(shape)
    g = torch.Generator().manual_seed(9)
    torch.randn(shape, generator=g)
    assert torch.equal(rng.posterior_noise(post_shape), torch.randn(post_shape, generator=g, dtype=BF16))


@pytest.mark.skipif(not torch.__version__.startswith("2.14."), reason="a fact measured on torch 2.14.1 (2.11 differs)")
def test_bf16_draw_equals_fp32_draw_cast_and_consumes_the_same():
    """The §3 fact PARITY records for torch 2.14.1: CPU bf16 randn == fp32 randn cast, consuming the same."""
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a = torch.randn(64, generator=g1, dtype=BF16)
    b = torch.randn(64, generator=g2).bfloat16()
    assert torch.equal(a, b)
    assert torch.equal(torch.randn(8, generator=g1), torch.randn(8, generator=g2))


def test_two_previews_with_the_same_seed_are_identical():
    shape = (1, 16, 1, 2, 2)
    a, b = PreviewRng(11, "cpu"), PreviewRng(11, "cpu")
    assert torch.equal(a.initial_noise(shape), b.initial_noise(shape))
    assert torch.equal(a.posterior_noise(shape), b.posterior_noise(shape))


def test_cpu_layout_is_the_default_on_cpu_and_explicit_cpu_layout_is_the_same():
    shape = (1, 16, 1, 2, 2)
    default, explicit = PreviewRng(3, "cpu"), PreviewRng(3, "cpu", layout="cpu")
    assert torch.equal(default.initial_noise(shape), explicit.initial_noise(shape))
    assert torch.equal(default.posterior_noise(shape), explicit.posterior_noise(shape))


def test_cuda_layout_on_cpu_is_the_philox_emulation():
    """A CUDA-rendered preview's posterior on CPU: curand's Philox streams in the golden GPU's layout (§3.8)."""
    rng = PreviewRng(3, "cpu", layout="cuda", grid=rng_grid(108, 2048))
    rng.initial_noise((1, 16, 1, 2, 2))  # the initial noise is a CPU draw in both layouts
    eps = rng.posterior_noise((1, 16, 1, 2, 2))
    assert eps.dtype == BF16
    assert torch.equal(eps.flatten(), torch.from_numpy(philox.cuda_randn(64, 3, 256)).bfloat16())
