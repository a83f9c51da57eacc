"""``--fused-blocks`` and the fused LoRA tail (harness.render.fused, harness.render.kernels).

On CPU: the restated block forward equals diffusers' own bit for bit (with the eager twins), the install comes off
cleanly, and the Triton kernels' index arithmetic and operation order match the twins in Triton's interpreter (float32
outputs: the interpreter truncates to bf16 where the GPU rounds to nearest even, so bf16 bits are the GPU tests' job,
tests/test_gpu.py).
"""

from __future__ import annotations

import pytest
import torch

from harness.render import fused, kernels
from harness.render.fused import EAGER, fused_blocks

BF16 = torch.bfloat16


def _transformer(seed: int = 0, cross_attn_norm: bool = True):
    from diffusers import WanTransformer3DModel

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8,
                                      in_channels=36, out_channels=16, text_dim=32, freq_dim=16, ffn_dim=32,
                                      num_layers=2, cross_attn_norm=cross_attn_norm)
        for p in model.parameters():  # no zero-initialised tables: every chain must matter
            p.data.add_(torch.randn_like(p) * 0.05)
    return model.to(BF16).eval().requires_grad_(False)


def _inputs(seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    return dict(hidden_states=torch.randn(1, 36, 3, 8, 12, generator=gen).to(BF16),
                timestep=torch.tensor([700]),
                encoder_hidden_states=torch.randn(1, 20, 32, generator=gen).to(BF16), return_dict=False)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int16) if t.dtype == BF16 else t


@pytest.mark.parametrize("cross_attn_norm", [True, False])
def test_the_restated_block_equals_diffusers_bit_for_bit(cross_attn_norm):
    model, inputs = _transformer(cross_attn_norm=cross_attn_norm), _inputs()
    with torch.no_grad():
        plain = model(**inputs)[0]
        with fused_blocks({"high": model}, ops=EAGER):
            restated = model(**inputs)[0]
    assert torch.equal(_bits(plain), _bits(restated))


def test_the_restated_block_keeps_lora_hooks_working():
    """Unmerged LoRA hooks sit on the linears the restated block calls: the render is the one without fusion."""
    from harness.render.lora import LoraLayer, applied

    model, inputs = _transformer(), _inputs()
    gen = torch.Generator().manual_seed(5)
    layers = {f"blocks.{b}.{name}": LoraLayer(down=torch.randn(4, 16, generator=gen) * 0.3,
                                              up=torch.randn(16, 4, generator=gen) * 0.3)
              for b in range(2) for name in ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0")}
    outs = []
    for fusion in (False, True):
        with torch.no_grad(), applied({"high": "f"}, {"high": layers}, {"high": model}, 0.8, merged=False, lean=True):
            if fusion:
                with fused_blocks({"high": model}, ops=EAGER):
                    outs.append(model(**inputs)[0])
            else:
                outs.append(model(**inputs)[0])
    with torch.no_grad():
        bare = model(**inputs)[0]
    assert torch.equal(_bits(outs[0]), _bits(outs[1]))
    assert not torch.equal(_bits(outs[0]), _bits(bare))  # the hooks did act


def test_fused_blocks_come_off_cleanly_even_after_an_error():
    model = _transformer()
    processors = [block.attn1.processor for block in model.blocks]
    with pytest.raises(RuntimeError, match="boom"):
        with fused_blocks({"high": model}, ops=EAGER):
            assert all(isinstance(b.attn1.processor, fused.RopeFusedProcessor) for b in model.blocks)
            assert all("forward" in b.__dict__ for b in model.blocks)
            raise RuntimeError("boom")
    assert [block.attn1.processor for block in model.blocks] == processors
    assert not any("forward" in block.__dict__ for block in model.blocks)


def test_an_engine_asked_for_fused_blocks_on_cpu_says_it_did_not_use_them():
    from types import SimpleNamespace

    from harness.engine import Engine
    from harness.options import RunOptions

    engine = Engine(RunOptions(fused_blocks=True))
    _, note = engine._fusion(SimpleNamespace(device=torch.device("cpu"), experts={}))
    assert note == "--fused-blocks not used: the fused kernels run on CUDA only"
    engine.options.fused_blocks = False
    assert engine._fusion(SimpleNamespace(device=torch.device("cpu"), experts={}))[1] == ""


# --- the Triton kernels, interpreted on CPU --------------------------------------------------------------------------


@pytest.fixture()
def interpreted(monkeypatch):
    """Triton's interpreter (numpy: no FMA, float32 exact), the kernels rebuilt for it and rebuilt again after."""
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    kernels._triton_kernels.cache_clear()
    yield
    kernels._triton_kernels.cache_clear()


def _gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("batch,vector_batch", [(1, 1), (2, 2), (2, 1)])
def test_the_modulate_kernel_matches_its_twin(interpreted, batch, vector_batch):
    g = _gen(batch + vector_batch)
    normed = torch.randn(batch, 37, 48, generator=g)
    one_plus_scale = 1 + torch.randn(vector_batch, 1, 48, generator=g)
    shift = torch.randn(vector_batch, 1, 48, generator=g)
    assert torch.equal(kernels.modulate(normed, one_plus_scale, shift, torch.float32),
                       kernels.modulate_eager(normed, one_plus_scale, shift, torch.float32))


@pytest.mark.parametrize("update_dtype", [BF16, torch.float32])
def test_the_gated_residual_kernel_matches_its_twin(interpreted, update_dtype):
    g = _gen(3)
    hidden = torch.randn(2, 29, 40, generator=g)
    update = torch.randn(2, 29, 40, generator=g).to(update_dtype)
    gate = torch.randn(2, 1, 40, generator=g)
    assert torch.equal(kernels.gated_residual(hidden, update, gate), kernels.gated_residual_eager(hidden, update, gate))


@pytest.mark.parametrize("table_dtype", [torch.float64, torch.float32])
def test_the_rope_kernel_matches_its_twin(interpreted, table_dtype):
    g = _gen(4)
    x = torch.randn(2, 31, 3, 16, generator=g)
    cos, sin = (torch.randn(1, 31, 1, 16, generator=g, dtype=table_dtype) for _ in range(2))
    assert torch.equal(kernels.rope(x, cos, sin), kernels.rope_eager(x, cos, sin))


def test_the_rope_kernel_matches_on_real_wan_tables(interpreted):
    """The tables WanRotaryPosEmbed builds (computed in float64, kept as float32; expanded, concatenated) at a
    real head width."""
    from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

    cos, sin = WanRotaryPosEmbed(128, (1, 2, 2), 1024)(torch.zeros(1, 16, 2, 6, 8))
    x = torch.randn(1, cos.shape[1], 2, 128, generator=_gen(6))
    assert cos.dtype == torch.float32
    assert torch.equal(kernels.rope(x, cos, sin), kernels.rope_eager(x, cos, sin))


def test_the_lora_tail_kernel_matches_its_twin(interpreted):
    g = _gen(7)
    output, delta = torch.randn(1, 33, 24, generator=g), torch.randn(1, 33, 24, generator=g) * 0.01
    m = float(torch.tensor(0.3, dtype=torch.float32))
    assert torch.equal(kernels.lora_epilogue(output, delta, m),
                       kernels.lora_epilogue_eager(output, delta, torch.tensor([m], dtype=torch.float32)))


def test_shapes_the_kernels_do_not_take_fall_back_to_the_twins(interpreted):
    g = _gen(8)
    normed = torch.randn(4, 8, generator=g)  # not [B, L, D]
    v = torch.randn(8, generator=g)
    assert torch.equal(kernels.modulate(normed, v, v, BF16), kernels.modulate_eager(normed, v, v, BF16))
    x = torch.randn(1, 5, 2, 8, generator=g).transpose(1, 2)  # not contiguous
    cos = torch.randn(1, 2, 1, 8, generator=g, dtype=torch.float64)
    assert torch.equal(kernels.rope(x, cos, cos), kernels.rope_eager(x, cos, cos))


def test_the_kernels_say_why_they_cannot_run_on_cpu():
    assert kernels.unavailable("cpu") == "the fused kernels run on CUDA only"
