"""Unit tests for harness.render.conditioning: first-frame I2V conditioning (§5, docs/parity)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from harness.render.conditioning import (
    encode_condition,
    first_frame_mask,
    image_to_tensor,
    latent_stats,
    load_control_image,
)
from harness.render.rng import PreviewRng

ORACLE = Path(__file__).resolve().parents[1].parent / "shared" / "oracle"
BF16 = torch.bfloat16

# public Wan 2.1 VAE latent statistics (also in the oracle's tiny VAE config)
WAN21_MEAN = [-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
              0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921]
WAN21_STD = [2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
             3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.916]


@pytest.fixture(scope="module")
def tiny_vae():
    from diffusers import AutoencoderKLWan

    with torch.random.fork_rng():
        torch.manual_seed(1234)
        vae = AutoencoderKLWan(
            base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1, temperal_downsample=[False, True, True],
            latents_mean=WAN21_MEAN, latents_std=WAN21_STD,
        )
    return vae.to(BF16).eval().requires_grad_(False)


def _stats_holder(mean=WAN21_MEAN, std=WAN21_STD):
    return SimpleNamespace(config=SimpleNamespace(latents_mean=list(mean), latents_std=list(std)))


# --- pixels -> tensor (§5.5) -----------------------------------------------------------------------------------------

def _all_levels_image() -> Image.Image:
    levels = np.arange(256, dtype=np.uint8)
    array = np.stack([levels, levels[::-1], (levels.astype(np.int64) * 7 % 256).astype(np.uint8)], axis=-1).reshape(1, 256, 3)
    return Image.fromarray(array, "RGB")


def test_image_to_tensor_rounds_unit_pixels_to_bf16_first():
    image = _all_levels_image()
    out = image_to_tensor(image, "cpu")
    assert out.shape == (1, 3, 1, 256) and out.dtype == BF16
    k = torch.from_numpy(np.asarray(image).astype(np.float32)).permute(2, 0, 1).unsqueeze(0)
    unit_bf16 = (k / 255.0).to(BF16)  # TF.to_tensor's fp32 k/255, then .to(bf16)
    two = unit_bf16 * 2.0
    assert two.dtype == BF16
    expected = two - 1.0  # both ops in bf16
    assert torch.equal(out, expected)
    fp32_then_cast = (k / 255.0 * 2.0 - 1.0).to(BF16)
    assert (out != fp32_then_cast).any()  # the order matters for some pixel values
    assert float(out.min()) == -1.0 and float(out.max()) == 1.0


# --- latent statistics (§5.6, §6.9) ----------------------------------------------------------------------------------

def test_latent_stats_inverse_std_rounds_std_first():
    mean, inv_std = latent_stats(_stats_holder(), "cpu")
    assert mean.shape == (1, 16, 1, 1, 1) and inv_std.shape == (1, 16, 1, 1, 1)
    assert mean.dtype == BF16 and inv_std.dtype == BF16
    std64 = torch.tensor(WAN21_STD, dtype=torch.float64)
    expected_inv = (1.0 / std64.to(BF16).double()).to(BF16)  # bf16(1 / bf16(std))
    fp32_reciprocal = (1.0 / std64).to(BF16)  # bf16(1 / std)
    assert torch.equal(inv_std.flatten(), expected_inv)
    assert int((expected_inv != fp32_reciprocal).sum()) == 6  # §5: 6 of the 16 Wan 2.1 channels differ
    assert torch.equal(mean.flatten(), torch.tensor(WAN21_MEAN, dtype=torch.float64).to(BF16))


@pytest.mark.skipif(not ORACLE.is_dir(), reason=f"oracle folder {ORACLE} absent")
def test_oracle_vae_uses_public_wan21_stats():
    config = json.loads((ORACLE / "tiny_model" / "vae" / "config.json").read_text())
    assert config["latents_mean"] == WAN21_MEAN and config["latents_std"] == WAN21_STD


# --- mask (§5.6) -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("frames", [1, 3, 5])
def test_first_frame_mask(frames):
    h, w = 2, 3
    mask = first_frame_mask(frames, h, w, "cpu")
    expected = torch.zeros(1, 4, frames, h, w, dtype=BF16)
    expected[:, :, 0] = 1
    assert mask.shape == (1, 4, frames, h, w) and mask.dtype == BF16
    assert torch.equal(mask, expected)


# --- encode_condition with a tiny bf16 Wan VAE (§5.6) ----------------------------------------------------------------

def _first_frame(h=16, w=16) -> torch.Tensor:
    gen = torch.Generator().manual_seed(9)
    pixels = torch.randint(0, 256, (1, 3, h, w), generator=gen).float()
    return (pixels / 255.0).to(BF16) * 2.0 - 1.0


def test_encode_condition_sample_matches_ai_toolkit_cpu_path(tiny_vae):
    seed, latent_frames, h, w = 42, 3, 16, 16
    first = _first_frame(h, w)
    noise_shape = (1, 16, latent_frames, h // 8, w // 8)

    rng = PreviewRng(seed, "cpu")
    noise = rng.initial_noise(noise_shape)
    cond20 = encode_condition(tiny_vae, first, latent_frames, rng, posterior="sample")

    # ai-toolkit on CPU (§3): reseed the global generator, draw the noise, then latent_dist.sample() with
    # generator=None continues the same global stream.
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        expected_noise = torch.randn(noise_shape, dtype=torch.float32).to(BF16)
        num_frames = (latent_frames - 1) * 4 + 1
        video = torch.cat([first.unsqueeze(2), torch.zeros(1, 3, num_frames - 1, h, w, dtype=BF16)], dim=2)
        x = tiny_vae.encode(video).latent_dist.sample()
    mean_bf16 = torch.tensor(WAN21_MEAN).to(BF16).view(1, -1, 1, 1, 1)
    inv_std_bf16 = 1.0 / torch.tensor(WAN21_STD).to(BF16).view(1, -1, 1, 1, 1)
    expected_cond = (x - mean_bf16) * inv_std_bf16
    expected_mask = torch.zeros(1, 4, latent_frames, h // 8, w // 8, dtype=BF16)
    expected_mask[:, :, 0] = 1

    assert torch.equal(noise, expected_noise.float())
    assert cond20.dtype == BF16 and cond20.shape == (1, 20, latent_frames, h // 8, w // 8)
    assert torch.equal(cond20[:, :4], expected_mask)
    assert torch.equal(cond20[:, 4:], expected_cond)
    # the model input the pipeline builds from it: [noise16, mask4, cond16], 36 channels
    model_in = torch.cat([noise.to(BF16), cond20], dim=1)
    assert model_in.shape[1] == 36
    assert torch.equal(torch.cat([expected_noise, expected_mask, expected_cond], dim=1), model_in)


def test_encode_condition_mode_differs_from_sample(tiny_vae):
    first = _first_frame()
    sampled = encode_condition(tiny_vae, first, 3, PreviewRng(42, "cpu"), posterior="sample")
    mode = encode_condition(tiny_vae, first, 3, PreviewRng(42, "cpu"), posterior="mode")
    video = torch.cat([first.unsqueeze(2), torch.zeros(1, 3, 8, 16, 16, dtype=BF16)], dim=2)
    mu = tiny_vae.encode(video).latent_dist.mean
    expected = (mu - torch.tensor(WAN21_MEAN).to(BF16).view(1, -1, 1, 1, 1)) * (
        1.0 / torch.tensor(WAN21_STD).to(BF16).view(1, -1, 1, 1, 1))
    assert torch.equal(mode[:, 4:], expected)
    assert torch.equal(mode[:, :4], sampled[:, :4])
    assert not torch.equal(mode[:, 4:], sampled[:, 4:])


# --- control image loading (§5.3) ------------------------------------------------------------------------------------

STRIPES = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]


def _stripes(width=64, height=16) -> np.ndarray:
    array = np.zeros((height, width, 3), dtype=np.uint8)
    for i, colour in enumerate(STRIPES):
        array[:, i * width // 4:(i + 1) * width // 4] = colour
    return array


def test_load_control_image_stretches_without_crop(tmp_path):
    path = tmp_path / "wide.png"
    Image.fromarray(_stripes(64, 16)).save(path)
    out = load_control_image(path, 16, 32)
    assert out.mode == "RGB" and out.size == (16, 32)
    array = np.asarray(out)
    # a stretch keeps all four stripes (4 px each); a centre crop would lose the outer two
    assert tuple(array[16, 0]) == STRIPES[0] and tuple(array[16, 15]) == STRIPES[3]
    expected = Image.fromarray(_stripes(64, 16)).resize((16, 32), Image.LANCZOS)
    assert np.array_equal(array, np.asarray(expected))


def test_load_control_image_ignores_exif_orientation(tmp_path):
    array = np.zeros((16, 16, 3), dtype=np.uint8)
    array[:8] = (255, 0, 0)  # top red, bottom blue
    array[8:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW" -- ai-toolkit does not apply it
    path = tmp_path / "exif.png"
    Image.fromarray(array).save(path, exif=exif)
    out = np.asarray(load_control_image(path, 16, 16))
    assert tuple(out[0, 8]) == (255, 0, 0) and tuple(out[15, 8]) == (0, 0, 255)


def _mode_images(tmp_path):
    rgb = _stripes(32, 8)
    grey = rgb.mean(axis=-1).astype(np.uint8)
    yield "RGBA", Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)]), "RGBA"), "png"
    yield "L", Image.fromarray(grey, "L"), "png"
    yield "CMYK", Image.fromarray(rgb).convert("CMYK"), "tiff"
    yield "I;16", Image.fromarray((grey.astype(np.uint16) * 257)), "png"
    yield "P", Image.fromarray(rgb).convert("P"), "png"


def test_load_control_image_converts_modes_to_rgb(tmp_path):
    for mode, image, ext in _mode_images(tmp_path):
        path = tmp_path / f"img_{mode.replace(';', '')}.{ext}"
        image.save(path)
        with Image.open(path) as check:
            assert check.mode.startswith(mode[0]), (mode, check.mode)  # the file really is in that mode
            expected = check.convert("RGB").resize((16, 16), Image.LANCZOS)
        out = load_control_image(path, 16, 16)
        assert out.mode == "RGB" and out.size == (16, 16), mode
        assert np.array_equal(np.asarray(out), np.asarray(expected)), mode
        tensor = image_to_tensor(out, "cpu")
        assert tensor.shape == (1, 3, 16, 16)


def test_vae_norm_bf16_is_ai_toolkits_copy_and_is_undone():
    """``vae_norm: bf16`` (ai-toolkit's own VAE copy before 0.10.22, §11.4) normalises the bf16 activations directly;
    diffusers upcasts to fp32 first. The swap lasts one render."""
    from types import SimpleNamespace

    from diffusers.models.autoencoders.autoencoder_kl_wan import WanRMS_norm

    from harness.render.models import ModelBundle

    torch.manual_seed(0)
    norm = WanRMS_norm(96, images=False).to(torch.bfloat16)
    vae = torch.nn.Sequential(norm)
    x = (torch.randn(1, 96, 2, 8, 8) * 3).to(torch.bfloat16)
    upcast = vae(x)
    with ModelBundle.vae_norm(SimpleNamespace(vae=vae), "bf16"):
        in_bf16 = vae(x)
    expected = torch.nn.functional.normalize(x, dim=1) * norm.scale * norm.gamma + norm.bias
    assert torch.equal(in_bf16, expected) and not torch.equal(in_bf16, upcast)
    assert "forward" not in vars(norm) and torch.equal(vae(x), upcast)
