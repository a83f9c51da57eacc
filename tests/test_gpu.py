"""CUDA path (`pytest -m gpu` on a GPU machine): RNG layout, bit-exactness against ai-toolkit's H100 renders.

Skipped without CUDA. Bit-exactness against ../shared/oracle-cuda only holds where this stack matches the one it was
rendered on (tests/stacks/cuda-oracle.yaml: an H100 SXM, torch 2.11 + CUDA 13.0; an H200 is the same chip, measured):
the stack rules of harness.stack decide, and the tests skip elsewhere with the stack difference.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from harness.paths import PathMap
from harness.engine import Engine
from harness.options import RunOptions
from harness.targets import from_output_dir

from .oracle_paths import ORACLE_CUDA, PATH_MAP, TINY_MODEL, skip_unless_exact_expected

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible")]


def test_fresh_cuda_generator_equals_reseeded_global_stream():
    """ai-toolkit draws the posterior from the global CUDA generator right after torch.manual_seed(seed); we use a
    fresh generator seeded with the seed so nothing else can draw in between. They must agree."""
    shape = (1, 16, 3, 8, 12)
    torch.manual_seed(1234)
    global_draw = torch.randn(shape, device="cuda", dtype=torch.bfloat16)
    fresh = torch.randn(shape, generator=torch.Generator("cuda").manual_seed(1234), device="cuda", dtype=torch.float32)
    assert torch.equal(global_draw, fresh.to(torch.bfloat16))


def _cuda_targets(case: str):
    folder = ORACLE_CUDA / "cases" / case / "output"
    if not folder.is_dir():
        return []
    return from_output_dir(next(folder.iterdir()), PathMap([PATH_MAP]))


CUDA_TARGETS = _cuda_targets("cuda_a") + _cuda_targets("cuda_d")


@pytest.fixture(scope="module")
def cuda_engine():
    return Engine(RunOptions(base_model=str(TINY_MODEL), device="cuda"))


@pytest.mark.skipif(not CUDA_TARGETS, reason=f"CUDA oracle not found at {ORACLE_CUDA}")
@pytest.mark.parametrize("target", CUDA_TARGETS, ids=[t.key for t in CUDA_TARGETS])
def test_cuda_oracle_bit_exact(cuda_engine, target):
    skip_unless_exact_expected(cuda_engine, "cuda", "cuda")
    render = cuda_engine.render(target)
    raw = np.load(target.preview.golden_raw)
    differing = int((render.frames != raw).any(axis=-1).sum())
    assert differing == 0, f"{differing} pixels differ (max {np.abs(render.frames.astype(int) - raw).max()} levels)"


def test_cuda_render_is_deterministic(cuda_engine):
    if not CUDA_TARGETS:
        pytest.skip(f"CUDA oracle not found at {ORACLE_CUDA}")
    target = CUDA_TARGETS[-1]
    first = cuda_engine.render(target)
    second = cuda_engine.render(target)
    assert np.array_equal(first.frames, second.frames)


def _pick(case_suffix: str, step: int):
    return next(t for t in CUDA_TARGETS if t.preview.case.endswith(case_suffix) and t.preview.step == step)


@pytest.mark.skipif(not CUDA_TARGETS, reason=f"CUDA oracle not found at {ORACLE_CUDA}")
@pytest.mark.parametrize("mode", ["experts", "sequential"])
def test_offload_modes_give_identical_bytes(cuda_engine, mode):
    """Memory modes only change where weights wait: the unmerged and the merged LoRA path give the same bytes."""
    for target in (_pick("cuda_a", 2), _pick("cuda_d", 2)):
        cuda_engine.options.offload = "none"
        resident = cuda_engine.render(target)
        cuda_engine.options.offload = mode
        try:
            offloaded = cuda_engine.render(target)
        finally:
            cuda_engine.options.offload = "none"
        assert np.array_equal(resident.frames, offloaded.frames), f"{mode} changed {target.key}"


@pytest.mark.skipif(not CUDA_TARGETS, reason=f"CUDA oracle not found at {ORACLE_CUDA}")
def test_quantized_render_is_deterministic_and_identical_across_offload_modes(cuda_engine):
    """qfloat8 (quanto) on CUDA: the unmerged LoRA on quantized bases, same bytes in every memory mode."""
    from harness.render.quant import quantization_plan

    plan = quantization_plan({"quantize": True, "quantize_te": True, "qtype": "qfloat8"}, "0.12.26")
    target = _pick("cuda_a", 2)
    frames = {}
    try:
        for mode in ("none", "none", "experts", "sequential"):
            cuda_engine.options.offload = mode
            render = cuda_engine.render(target, replace(cuda_engine.baseline(target), quantization=plan))
            frames.setdefault(mode, []).append(render.frames)
    finally:
        cuda_engine.options.offload = "none"
    reference = frames["none"][0]
    assert np.array_equal(reference, frames["none"][1]), "quantized CUDA render is nondeterministic"
    for mode in ("experts", "sequential"):
        assert np.array_equal(reference, frames[mode][0]), f"{mode} changed the quantized render"
    bf16 = cuda_engine.render(target)
    assert not np.array_equal(reference, bf16.frames), "quantization made no difference"


@pytest.mark.skipif(not CUDA_TARGETS, reason=f"CUDA oracle not found at {ORACLE_CUDA}")
def test_the_lean_lora_path_gives_the_same_bytes_on_cuda(cuda_engine):
    """``--lean-lora`` (the default) on the CUDA oracle's unmerged previews: the bytes of ai-toolkit's arithmetic."""
    before = cuda_engine.options.lean_lora
    unmerged = [t for t in CUDA_TARGETS if t.preview.lora is not None and not t.preview.merged]
    try:
        cuda_engine.options.lean_lora = True
        lean = [cuda_engine.render(t).frames for t in unmerged]
        cuda_engine.options.lean_lora = False
        plain = [cuda_engine.render(t).frames for t in unmerged]
    finally:
        cuda_engine.options.lean_lora = before
    assert lean and all(np.array_equal(a, b) for a, b in zip(lean, plain))


@pytest.mark.parametrize("rows", [1560, 17160])  # 832x480x41's token count is 17,160; the smaller a tail-tile shape
def test_the_lean_lora_path_is_bit_identical_at_a14b_width_on_cuda(rows):
    """q, k and v of an A14B block (5120 wide, rank-32 fp32 LoRA) on CUDA: lean and ai-toolkit's path agree."""
    from harness.render.lora import LoraLayer, applied

    gen = torch.Generator("cuda").manual_seed(rows)
    width = 5120
    module = torch.nn.ModuleDict({n: torch.nn.Linear(width, width, device="cuda", dtype=torch.bfloat16)
                                  for n in ("to_q", "to_k", "to_v")})
    layers = {n: LoraLayer(down=torch.randn(32, width, device="cuda", generator=gen) * 0.02,
                           up=torch.randn(width, 32, device="cuda", generator=gen) * 0.02) for n in module}
    x = torch.randn(rows, width, device="cuda", generator=gen).to(torch.bfloat16)
    outs = {}
    for lean in (False, True):
        with torch.no_grad(), applied({"high": "f"}, {"high": layers}, {"high": module}, 0.75, merged=False, lean=lean):
            outs[lean] = [module[n](x) for n in module]
    assert all(torch.equal(a.view(torch.int16), b.view(torch.int16)) for a, b in zip(outs[False], outs[True]))


# --- --fused-blocks and the fused LoRA tail (harness.render.kernels / fused) ----------------------------------------

A14B_TOKENS = {"832x480x41": 17160, "1024x1024x41": 45056}


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(torch.int16), b.view(torch.int16))


@pytest.mark.parametrize("size", list(A14B_TOKENS))
def test_the_fused_kernels_are_bit_identical_to_their_twins_at_a14b_shapes(size):
    """Each kernel against the eager chain it replaces, on a whole A14B sequence (width 5120, 40 heads of 128)."""
    from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

    from harness.render import kernels

    width, height, frames = (int(v) for v in size.split("x"))
    tokens = A14B_TOKENS[size]
    gen = torch.Generator("cuda").manual_seed(tokens)
    normed = torch.randn(1, tokens, 5120, device="cuda", generator=gen)
    scale, shift, gate = (torch.randn(1, 1, 5120, device="cuda", generator=gen) * 0.3 for _ in range(3))
    assert _same_bits(kernels.modulate(normed, 1 + scale, shift, torch.bfloat16),
                      kernels.modulate_eager(normed, 1 + scale, shift, torch.bfloat16))
    hidden, update = (torch.randn(1, tokens, 5120, device="cuda", generator=gen).to(torch.bfloat16) for _ in range(2))
    assert _same_bits(kernels.gated_residual(hidden, update, gate), kernels.gated_residual_eager(hidden, update, gate))
    latent = torch.zeros(1, 16, (frames - 1) // 4 + 1, height // 8, width // 8, device="cuda")
    cos, sin = WanRotaryPosEmbed(128, (1, 2, 2), 1024).to("cuda")(latent)
    query = hidden.view(1, tokens, 40, 128)
    assert _same_bits(kernels.rope(query, cos, sin), kernels.rope_eager(query, cos, sin))
    delta = torch.randn(1, tokens, 5120, device="cuda", generator=gen) * 0.01
    m = float(torch.tensor(0.75, dtype=torch.float32))
    m_tensor = torch.tensor([m], dtype=torch.float32, device="cuda")
    assert _same_bits(kernels.lora_epilogue(hidden, delta, m), kernels.lora_epilogue_eager(hidden, delta, m_tensor))


@pytest.mark.parametrize("lora", [False, True])
def test_a_fused_a14b_block_gives_the_bytes_of_the_eager_block(lora):
    """One real-width A14B block (random weights; 4,096 tokens) with and without an unmerged rank-32 LoRA on
    every linear (the lean path with its fused tail): --fused-blocks changes no bit of the output."""
    from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed, WanTransformerBlock

    from harness.render.fused import fused_blocks
    from harness.render.lora import LoraLayer, applied

    torch.manual_seed(0)
    block = WanTransformerBlock(5120, 13824, 40, "rms_norm_across_heads", True, 1e-6, None).to("cuda", torch.bfloat16)
    model = torch.nn.Module()
    model.blocks = torch.nn.ModuleList([block])
    cos, sin = WanRotaryPosEmbed(128, (1, 2, 2), 1024).to("cuda")(torch.zeros(1, 16, 4, 32, 64, device="cuda"))
    inputs = (torch.randn(1, cos.shape[1], 5120, device="cuda").to(torch.bfloat16),
              torch.randn(1, 512, 5120, device="cuda").to(torch.bfloat16),
              torch.randn(1, 6, 5120, device="cuda").to(torch.bfloat16), (cos, sin))
    layers = {}
    if lora:
        for name, module in block.named_modules():
            if isinstance(module, torch.nn.Linear):
                layers[f"blocks.0.{name}"] = LoraLayer(down=torch.randn(32, module.in_features, device="cuda") * 0.02,
                                                       up=torch.randn(module.out_features, 32, device="cuda") * 0.02)
    outs = []
    for fusion in (False, True):
        with torch.no_grad(), applied({"high": "f"}, {"high": layers}, {"high": model}, 0.75, merged=False,
                                      lean=fusion):
            if fusion:
                with fused_blocks({"high": model}):
                    outs.append(block(*inputs))
            else:
                outs.append(block(*inputs))
    assert _same_bits(outs[0], outs[1])


@pytest.mark.skipif(not CUDA_TARGETS, reason=f"CUDA oracle not found at {ORACLE_CUDA}")
@pytest.mark.parametrize("fused,lean", [(True, True), (False, False)], ids=["defaults", "literal"])
def test_the_cuda_oracle_is_bit_exact_with_and_without_the_shortcuts(fused, lean):
    """The defaults (--fused-blocks, --lean-lora) and ai-toolkit's literal path (--no-fused-blocks --no-lean-lora)
    both give ai-toolkit's bytes."""
    engine = Engine(RunOptions(base_model=str(TINY_MODEL), device="cuda", fused_blocks=fused, lean_lora=lean))
    skip_unless_exact_expected(engine, "cuda", "cuda")
    for target in CUDA_TARGETS:
        render = engine.render(target)
        assert not any("--fused-blocks not used" in note for note in render.notes)
        raw = np.load(target.preview.golden_raw)
        assert np.array_equal(render.frames, raw), f"{target.key} changed (fused {fused}, lean {lean})"
