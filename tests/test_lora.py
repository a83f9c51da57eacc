"""Unit tests for harness.render.lora: ai-toolkit LoRA files and how they are applied in sampling (§8, docs/parity)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from harness.errors import HarnessError
from harness.render import lora
from harness.render.lora import LoraLayer, applied, check_targets, diffusers_module_name, read_lora_file

BF16 = torch.bfloat16
INNER, FFN, RANK = 16, 32, 4


def _tiny_transformer(seed: int):
    """A real diffusers WanTransformer3DModel, 2 blocks, inner dim 16, bf16 (so module names are the real ones)."""
    from diffusers import WanTransformer3DModel

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=36, out_channels=16,
            text_dim=32, freq_dim=16, ffn_dim=FFN, num_layers=2,
        )
        for linear in model.modules():  # non-zero biases, so the base output is not just W x
            if isinstance(linear, torch.nn.Linear) and linear.bias is not None:
                torch.nn.init.uniform_(linear.bias, -0.5, 0.5)
    return model.to(BF16).eval().requires_grad_(False)


@pytest.fixture()
def high():
    return _tiny_transformer(1)


@pytest.fixture()
def low():
    return _tiny_transformer(2)


def _layer(seed: int, out_features=INNER, in_features=INNER, rank=RANK, scale=0.5) -> LoraLayer:
    gen = torch.Generator().manual_seed(seed)
    return LoraLayer(down=torch.randn(rank, in_features, generator=gen) * scale,
                     up=torch.randn(out_features, rank, generator=gen) * scale)


def _x(seed: int, rows=64, features=INNER) -> torch.Tensor:
    return torch.randn(rows, features, generator=torch.Generator().manual_seed(seed)).to(BF16)


# --- key mapping (§8.4 loading direction) ----------------------------------------------------------------------------

FILE_TO_DIFFUSERS = {
    "self_attn.q": "attn1.to_q", "self_attn.k": "attn1.to_k", "self_attn.v": "attn1.to_v", "self_attn.o": "attn1.to_out.0",
    "cross_attn.q": "attn2.to_q", "cross_attn.k": "attn2.to_k", "cross_attn.v": "attn2.to_v",
    "cross_attn.o": "attn2.to_out.0", "ffn.0": "ffn.net.0.proj", "ffn.2": "ffn.net.2",
}


@pytest.mark.parametrize("file_module, diffusers_module", sorted(FILE_TO_DIFFUSERS.items()))
@pytest.mark.parametrize("block", [0, 7, 39])
@pytest.mark.parametrize("ab", ["A", "B"])
def test_diffusers_module_name(file_module, diffusers_module, block, ab):
    key = f"diffusion_model.blocks.{block}.{file_module}.lora_{ab}.weight"
    assert diffusers_module_name(key) == (f"blocks.{block}.{diffusers_module}", ab)


@pytest.mark.parametrize("key", [
    "diffusion_model.blocks.0.self_attn.norm_q.lora_A.weight",
    "diffusion_model.blocks.0.cross_attn.k_img.lora_A.weight",
    "diffusion_model.blocks.0.self_attn.q.lora_down.weight",
    "diffusion_model.transformer_1.blocks.0.self_attn.q.lora_A.weight",
    "transformer.blocks.0.attn1.to_q.lora_A.weight",
    "diffusion_model.blocks.0.self_attn.q.alpha",
    "diffusion_model.blocks.x.self_attn.q.lora_A.weight",
    "diffusion_model.blocks.0.ffn.1.lora_A.weight",
])
def test_diffusers_module_name_rejects_other_keys(key):
    assert diffusers_module_name(key) is None


def test_every_mapped_name_is_a_linear_of_the_real_wan_transformer(high):
    modules = dict(high.named_modules())
    for file_module in FILE_TO_DIFFUSERS:
        name, _ = diffusers_module_name(f"diffusion_model.blocks.1.{file_module}.lora_A.weight")
        assert isinstance(modules.get(name), torch.nn.Linear), name


# --- reading files ---------------------------------------------------------------------------------------------------

def _write(path, tensors):
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


def _file_tensors(layers: dict[str, LoraLayer], dtype=torch.float32) -> dict[str, torch.Tensor]:
    out = {}
    for file_module, layer in layers.items():
        out[f"diffusion_model.blocks.0.{file_module}.lora_A.weight"] = layer.down.to(dtype)
        out[f"diffusion_model.blocks.0.{file_module}.lora_B.weight"] = layer.up.to(dtype)
    return out


def test_read_lora_file_maps_all_forms_and_keeps_fp32(tmp_path):
    layers = {m: _layer(i, FFN if m == "ffn.0" else INNER, FFN if m == "ffn.2" else INNER)
              for i, m in enumerate(FILE_TO_DIFFUSERS)}
    path = _write(tmp_path / "l_high_noise.safetensors", _file_tensors(layers))
    parsed = read_lora_file(path)
    assert set(parsed) == {f"blocks.0.{d}" for d in FILE_TO_DIFFUSERS.values()}
    for file_module, layer in layers.items():
        got = parsed[f"blocks.0.{FILE_TO_DIFFUSERS[file_module]}"]
        assert got.down.dtype == torch.float32 and got.up.dtype == torch.float32
        assert torch.equal(got.down, layer.down) and torch.equal(got.up, layer.up)  # A = down, B = up


def test_read_lora_file_upcasts_half_files(tmp_path):
    layer = _layer(3)
    path = _write(tmp_path / "h.safetensors", _file_tensors({"self_attn.q": layer}, torch.bfloat16))
    got = read_lora_file(path)["blocks.0.attn1.to_q"]
    assert got.down.dtype == torch.float32 and torch.equal(got.down, layer.down.to(BF16).float())


def test_unmatched_keys_are_an_error_listing_them(tmp_path):
    tensors = _file_tensors({"self_attn.q": _layer(0)})
    tensors["diffusion_model.blocks.0.self_attn.norm_q.lora_A.weight"] = torch.zeros(2, 2)
    tensors["lora_unet_blocks_0_attn.lora_down.weight"] = torch.zeros(2, 2)
    path = _write(tmp_path / "extra.safetensors", tensors)
    with pytest.raises(HarnessError) as err:
        read_lora_file(path)
    text = str(err.value)
    assert "diffusion_model.blocks.0.self_attn.norm_q.lora_A.weight" in text
    assert "lora_unet_blocks_0_attn.lora_down.weight" in text
    assert "2 key" in text


def test_half_a_pair_is_an_error(tmp_path):
    tensors = _file_tensors({"self_attn.q": _layer(0)})
    del tensors["diffusion_model.blocks.0.self_attn.q.lora_B.weight"]
    with pytest.raises(HarnessError, match="blocks.0.attn1.to_q"):
        read_lora_file(_write(tmp_path / "half.safetensors", tensors))


def test_combined_multistage_file_is_refused_with_how_to_split(tmp_path):
    layer = _layer(0)
    tensors = {}
    for stage in ("transformer_1", "transformer_2"):
        tensors[f"diffusion_model.{stage}.blocks.0.self_attn.q.lora_A.weight"] = layer.down.clone()
        tensors[f"diffusion_model.{stage}.blocks.0.self_attn.q.lora_B.weight"] = layer.up.clone()
    with pytest.raises(HarnessError) as err:
        read_lora_file(_write(tmp_path / "combined.safetensors", tensors))
    text = str(err.value)
    assert "split" in text and "transformer_1" in text and "transformer_2" in text
    assert "high_noise" in text and "low_noise" in text


@pytest.mark.parametrize("extra", [
    {"diffusion_model.blocks.0.self_attn.q.lokr_w1": torch.zeros(2, 2),
     "diffusion_model.blocks.0.self_attn.q.lokr_w2": torch.zeros(2, 2)},
    {"diffusion_model.blocks.0.self_attn.q.dora_scale": torch.zeros(1, INNER)},
    {"diffusion_model.blocks.0.self_attn.q.hada_w1_a": torch.zeros(2, 2)},
])
def test_lokr_dora_loha_are_refused(tmp_path, extra):
    tensors = {**_file_tensors({"self_attn.q": _layer(0)}), **extra}
    with pytest.raises(HarnessError, match="not supported"):
        read_lora_file(_write(tmp_path / "special.safetensors", tensors))


@pytest.mark.parametrize("weight", ["lokr_w1", "dora_scale"])
def test_special_weight_refusal_names_the_weight(tmp_path, weight):
    tensors = {**_file_tensors({"self_attn.q": _layer(0)}),
               f"diffusion_model.blocks.0.self_attn.q.{weight}": torch.zeros(2, 2)}
    with pytest.raises(HarnessError) as err:
        read_lora_file(_write(tmp_path / "special.safetensors", tensors))
    assert weight in str(err.value)


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".ckpt", ".bin", ".PT"])
def test_pickle_checkpoints_are_refused(tmp_path, suffix):
    path = tmp_path / f"lora{suffix}"
    path.write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(HarnessError, match="pickle"):
        read_lora_file(path)


@pytest.mark.parametrize("keep", [4, 40, -16])
def test_truncated_safetensors_is_a_harness_error(tmp_path, keep):
    path = _write(tmp_path / "full.safetensors", _file_tensors({"self_attn.q": _layer(0)}))
    data = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[:keep])
    with pytest.raises(HarnessError, match="truncated"):
        read_lora_file(cut)


def test_missing_file_is_a_harness_error(tmp_path):
    with pytest.raises(HarnessError, match="not found"):
        read_lora_file(tmp_path / "nope.safetensors")


# --- targets ---------------------------------------------------------------------------------------------------------

def test_shape_mismatch_names_module_and_both_shapes(high):
    bad = LoraLayer(down=torch.zeros(RANK, 24), up=torch.zeros(INNER, RANK))
    with pytest.raises(HarnessError) as err:
        check_targets("x.safetensors", {"blocks.0.attn1.to_q": bad}, high)
    text = str(err.value)
    assert "blocks.0.attn1.to_q" in text
    assert f"({INNER}, {INNER})" in text  # base weight
    assert f"({RANK}, 24)" in text and f"({INNER}, {RANK})" in text  # the LoRA's A and B


def test_rank_mismatch_between_a_and_b_is_refused(high):
    bad = LoraLayer(down=torch.zeros(RANK, INNER), up=torch.zeros(INNER, RANK + 1))
    with pytest.raises(HarnessError, match="shape mismatch"):
        check_targets("x.safetensors", {"blocks.0.attn1.to_q": bad}, high)


def test_layers_without_a_linear_are_listed(high):
    layers = {"blocks.9.attn1.to_q": _layer(0), "blocks.0.norm2": _layer(1)}
    with pytest.raises(HarnessError) as err:
        check_targets("x.safetensors", layers, high)
    assert "blocks.9.attn1.to_q" in str(err.value) and "blocks.0.norm2" in str(err.value)


# --- unmerged arithmetic (§8.2) --------------------------------------------------------------------------------------

def _ai_toolkit_unmerged(linear, layer, x, m):
    base = F.linear(x, linear.weight, linear.bias)  # bf16 base forward
    delta = F.linear(F.linear(x.float(), layer.down), layer.up) * m  # fp32 matmuls, fp32 multiplier
    return base + delta.to(BF16)


def test_unmerged_output_equals_ai_toolkit_formula_and_not_peft(high):
    name, m = "blocks.0.attn1.to_q", 0.75
    layer = _layer(5)
    linear = dict(high.named_modules())[name]
    x = _x(6)
    base = linear(x)
    expected = _ai_toolkit_unmerged(linear, layer, x, m)
    with applied({"high": "f"}, {"high": {name: layer}}, {"high": high}, m, merged=False):
        out = linear(x)
        assert linear.weight.dtype == BF16
    assert out.dtype == BF16
    assert torch.equal(out, expected)
    assert torch.equal(base, F.linear(x, linear.weight, linear.bias))
    delta32 = F.linear(F.linear(x.float(), layer.down), layer.up) * m
    peft_fp32 = (base.float() + delta32).to(BF16)  # PEFT with fp32 adapters: one rounding of base + delta
    assert (out != peft_fp32).any()
    delta_bf16 = F.linear(F.linear(x, layer.down.to(BF16)), layer.up.to(BF16)) * m  # PEFT with bf16 adapters
    assert (out != base + delta_bf16).any()


WIDTH = 5120  # A14B's inner dim: the lean path is proven at the real width, not only the tiny one


def _qkv(seed: int, width: int):
    """Three bf16 linears reading one input, as attn1's to_q/to_k/to_v do, with rank-32 fp32 LoRA layers."""
    gen = torch.Generator().manual_seed(seed)
    linears = {}
    for name in ("to_q", "to_k", "to_v"):
        linear = torch.nn.Linear(width, width, bias=True).to(BF16)
        with torch.no_grad():
            linear.weight.copy_(torch.randn(width, width, generator=gen) * width ** -0.5)
            linear.bias.copy_(torch.rand(width, generator=gen) - 0.5)
        linears[name] = linear
    layers = {name: LoraLayer(down=torch.randn(32, width, generator=gen) * 0.02,
                              up=torch.randn(width, 32, generator=gen) * 0.02) for name in linears}
    return torch.nn.ModuleDict(linears), layers


@pytest.mark.parametrize("width,m", [(INNER, 1.0), (WIDTH, 0.75), (WIDTH, -1.25)])
def test_the_lean_unmerged_path_gives_the_same_bits(width, m):
    """One fp32 input copy shared by q, k and v, and no x1.0 scale: bit for bit ai-toolkit's arithmetic."""
    module, layers = _qkv(width, width)
    x = torch.randn(48, width, generator=torch.Generator().manual_seed(1)).to(BF16)
    outs = {}
    for lean in (False, True):
        with applied({"high": "f"}, {"high": layers}, {"high": module}, m, merged=False, lean=lean):
            outs[lean] = [module[name](x) for name in ("to_q", "to_k", "to_v")]
    for plain, lean_out, name in zip(outs[False], outs[True], ("to_q", "to_k", "to_v")):
        assert torch.equal(plain.view(torch.int16), lean_out.view(torch.int16)), name
        assert torch.equal(plain, _ai_toolkit_unmerged(module[name], layers[name], x, m)), name


def test_the_shared_cast_is_made_once_and_again_after_an_in_place_change():
    cast = lora.SharedCast()
    x = torch.randn(4, 8).to(BF16)
    first = cast(x)
    assert cast(x) is first and first.dtype == torch.float32
    x.mul_(2)  # modified in place: the copy would be stale
    again = cast(x)
    assert again is not first and torch.equal(again, x.float())
    assert cast(x.clone()) is not again  # another tensor with the same values is cast by itself
    cast.clear()
    assert cast._last[0] is None


def test_unmerged_hooks_removed_on_exit_even_after_error(high):
    name = "blocks.1.ffn.net.2"
    layer = _layer(7, INNER, FFN)
    linear = dict(high.named_modules())[name]
    x = _x(8, features=FFN)
    before = linear(x)
    with pytest.raises(RuntimeError):
        with applied({"high": "f"}, {"high": {name: layer}}, {"high": high}, 1.0, merged=False):
            assert len(linear._forward_hooks) == 1
            assert not torch.equal(linear(x), before)
            raise RuntimeError("render failed")
    assert len(linear._forward_hooks) == 0
    assert torch.equal(linear(x), before)


# --- merged arithmetic (§8.2) ----------------------------------------------------------------------------------------

def test_merged_weight_formula_and_bit_exact_restore(high):
    name, m = "blocks.0.attn2.to_out.0", 1.3
    layer = _layer(9)
    linear = dict(high.named_modules())[name]
    original = linear.weight.detach().clone()
    state_before = {k: v.clone() for k, v in high.state_dict().items()}
    expected = (original.float() + m * (layer.up @ layer.down)).to(BF16)
    assert not torch.equal(expected, original)
    x = _x(10)
    with applied({"high": "f"}, {"high": {name: layer}}, {"high": high}, m, merged=True):
        assert linear.weight.dtype == BF16
        assert torch.equal(linear.weight, expected)
        assert len(linear._forward_hooks) == 0  # merged: no hook
        assert torch.equal(linear(x), F.linear(x, expected, linear.bias))
    after = high.state_dict()
    assert all(torch.equal(after[k], state_before[k]) for k in state_before)  # bit-identical, not merge_out residue
    # an arithmetic unmerge (what ai-toolkit's merge_out does) would not be bit-identical
    residue = (expected.float() - m * (layer.up @ layer.down)).to(BF16)
    assert not torch.equal(residue, original)


def test_merged_weights_restored_after_error(high):
    name = "blocks.0.attn1.to_k"
    linear = dict(high.named_modules())[name]
    original = linear.weight.detach().clone()
    with pytest.raises(RuntimeError):
        with applied({"high": "f"}, {"high": {name: _layer(11)}}, {"high": high}, 1.0, merged=True):
            assert not torch.equal(linear.weight, original)
            raise RuntimeError("render failed")
    assert torch.equal(linear.weight, original)


def test_merged_weight_helper():
    w = _x(12, rows=INNER)
    layer = _layer(13)
    assert torch.equal(lora.merged_weight(w, layer, -0.4), (w.float() + -0.4 * (layer.up @ layer.down)).to(BF16))


# --- skips -----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("merged", [False, True])
def test_zero_multiplier_skips(high, merged):
    name = "blocks.0.attn1.to_v"
    linear = dict(high.named_modules())[name]
    x = _x(14)
    before_out, before_w = linear(x), linear.weight.detach().clone()
    bad_shape = LoraLayer(down=torch.ones(RANK, 24), up=torch.ones(INNER, RANK))  # would fail if looked at
    with applied({"high": "f"}, {"high": {name: bad_shape}}, {"high": high}, 0.0, merged=merged):
        assert len(linear._forward_hooks) == 0
        assert torch.equal(linear.weight, before_w)
        assert torch.equal(linear(x), before_out)


def test_all_zero_up_skips_the_merge(high):
    """A zero delta still flips -0.0 weights to +0.0 if merged; ai-toolkit skips, so the sign bits survive."""
    name = "blocks.0.attn1.to_q"
    linear = dict(high.named_modules())[name]
    linear.weight.data[0, :4] = -0.0
    original = linear.weight.detach().clone()
    layer = LoraLayer(down=_layer(15).down, up=torch.zeros(INNER, RANK))
    merged_anyway = lora.merged_weight(original, layer, 1.0)
    assert not torch.equal(torch.signbit(merged_anyway), torch.signbit(original))  # the test can tell
    with applied({"high": "f"}, {"high": {name: layer}}, {"high": high}, 1.0, merged=True):
        assert torch.equal(torch.signbit(linear.weight), torch.signbit(original))
        assert torch.equal(linear.weight, original)


# --- per-expert multipliers and experts ------------------------------------------------------------------------------

@pytest.mark.parametrize("merged", [False, True])
def test_per_expert_multiplier_dict(high, low, merged):
    name = "blocks.1.attn1.to_q"
    layers = {"high": {name: _layer(16)}, "low": {name: _layer(17)}}
    multipliers = {"high": 0.5, "low": 2.0}
    lin = {"high": dict(high.named_modules())[name], "low": dict(low.named_modules())[name]}
    x = _x(18)

    def expected_for(expert, m):
        layer, linear = layers[expert][name], lin[expert]
        if merged:
            return F.linear(x, (linear.weight.float() + m * (layer.up @ layer.down)).to(BF16), linear.bias)
        return _ai_toolkit_unmerged(linear, layer, x, m)

    expected = {expert: expected_for(expert, multipliers[expert]) for expert in ("high", "low")}
    with applied({"high": "h", "low": "l"}, layers, {"high": high, "low": low}, multipliers, merged=merged):
        got = {expert: lin[expert](x) for expert in ("high", "low")}
    for expert in ("high", "low"):
        assert torch.equal(got[expert], expected[expert]), expert
    # one shared multiplier would give something else
    assert not torch.equal(got["high"], expected_for("high", multipliers["low"]))
    assert not torch.equal(got["low"], expected_for("low", multipliers["high"]))


def test_high_lora_does_not_touch_low_expert(high, low):
    name = "blocks.0.ffn.net.0.proj"
    linear_low = dict(low.named_modules())[name]
    x = _x(19)
    before = linear_low(x)
    with applied({"high": "h"}, {"high": {name: _layer(20, FFN, INNER)}}, {"high": high, "low": low}, 1.0,
                 merged=False):
        assert torch.equal(linear_low(x), before)
        assert len(linear_low._forward_hooks) == 0
