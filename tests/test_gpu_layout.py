"""Inferring the training GPU from the CUDA posterior noise's layout (§3.8): the `gpu-layout` diagnosis family.

The golden is rendered by the runner with the GPU stated in its stack (so the baseline draws that GPU's layout);
diagnosing the same preview with the stack left out must name that GPU. CPU renders use the Philox emulation, which
is deterministic, so the matching variant is bit-exact.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness import diagnose as dg
from harness.demo_model import build_tiny_model
from harness.engine import Engine
from harness.gpus import find_gpu
from harness.media import write_like_aitk
from harness.options import RunOptions
from harness.paths import PathMap
from harness.spec import PreviewJob, PreviewTarget, SampleSpec

# 320x256, 9 frames: 16 x 3 x 32 x 40 = 61,440 posterior values, above the T4's randn grid (40,960) and below every
# other GPU's: two layouts (the smallest render that has two; three renders in all)
WIDTH, HEIGHT, FRAMES = 320, 256, 9


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu_layout")
    model = build_tiny_model(root / "tiny_model")
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    ctrl = np.stack([40 + 200 * (x / WIDTH), 120 + 100 * np.sin(y / 9), 200 - 150 * ((x + y) % 37 > 18)], axis=-1)
    Image.fromarray(np.clip(ctrl, 0, 255).astype(np.uint8)).save(root / "ctrl.png")
    sample = SampleSpec(index=0, prompt="a lighthouse at dusk", negative_prompt="", seed=11, width=WIDTH,
                        height=HEIGHT, num_frames=FRAMES, guidance_scale=1.0, sample_steps=2, network_multiplier=1.0,
                        fps=16, ctrl_img=str(root / "ctrl.png"))
    preview = PreviewJob(case="layout", golden=root / "unset.webp", step=0, index=0, sample=sample, lora=None,
                         merged=False)
    target = PreviewTarget(preview=preview, model_name=str(model), config_file=root / "config.yaml",
                           profile="aitk-euler", path_map=PathMap(), rng_layout="cuda", device="cpu")
    return {"root": root, "target": target, "engine": Engine(RunOptions(device="cpu", threads=1))}


def _variants(world, **target_changes):
    target = replace(world["target"], **target_changes)
    base = world["engine"].baseline(target)
    return base, dg.variants_for(target, base, ["gpu-layout"])


def test_one_variant_per_distinct_layout_of_this_draw(world):
    base, variants = _variants(world)
    assert base.rng_grid == find_gpu("H100 SXM").grid  # a CUDA golden of unknown GPU, rendered on CPU
    assert [v.name for v in variants] == ["GPU layout T4"]
    assert "40960 CUDA threads instead of 61440" in variants[0].description
    assert all(v.family == "gpu-layout" and v.apply(base).rng_grid != base.rng_grid for v in variants)
    assert dg.changes(base, variants[0].apply(base)) == {"rng_grid": find_gpu("T4").grid}


def test_no_variants_below_every_cap_for_cpu_goldens_or_a_stated_gpu(world):
    small = replace(world["target"].preview.sample, width=64, height=64, num_frames=9)
    assert _variants(world, preview=replace(world["target"].preview, sample=small))[1] == []
    assert _variants(world, rng_layout="cpu")[1] == []
    assert _variants(world, golden_stack={"gpu_name": "RTX 4090"})[1] == []


def test_diagnosis_names_the_gpu_that_rendered_the_golden(world):
    engine = world["engine"]
    stated = replace(world["target"], golden_stack={"device": "cuda", "gpu_name": "Tesla T4"})
    render = engine.render(stated)
    assert not any("names no GPU" in n for n in render.notes)
    assert any("emulated" in a for a in render.approximate)
    golden = write_like_aitk(Path(world["root"]) / "golden_t4.webp", render.frames, 16)
    target = replace(world["target"], preview=replace(world["target"].preview, golden=golden))
    diagnosis = dg.diagnose_target(engine, target, families=["gpu-layout"])
    best = diagnosis.ranked[0]
    assert best.variant == "GPU layout T4" and best.bit_exact
    assert not next(r for r in diagnosis.ranked if r.variant == "baseline").bit_exact
    assert "T4" in diagnosis.explanation


def test_unknown_gpu_is_said_in_the_notes(world):
    from harness.render.rng import layout_notes

    base = world["engine"].baseline(world["target"])
    assert "names no GPU" in layout_notes(base, None, "cpu")[0]
    assert layout_notes(base, {"gpu_name": "T4"}, "cpu") == []  # stated, and emulated: the approximation says so
