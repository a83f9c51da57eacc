"""ai-toolkit's quantized sampling models (§9, docs/parity): which modules, which qtype, and the exact arithmetic.

Built on the tiny offline model (``harness.demo_model``), CPU, 2 threads.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from harness.errors import HarnessError
from harness.render import quant
from harness.render.quant import (EXCLUDE_PATTERNS, linear_qtypes, quantization_plan,
                                  uintx_codes, uintx_dequantize, uintx_qparams, uintx_quantize_)

BF16 = torch.bfloat16
QF8 = "qfloat8_e4m3fn"  # quanto's name for qfloat8
EXTRAS = ("condition_embedder.time_embedder.linear_1", "condition_embedder.time_embedder.linear_2",
          "condition_embedder.time_proj", "condition_embedder.text_embedder.linear_1",
          "condition_embedder.text_embedder.linear_2", "proj_out")
DEFAULT_JOB = {"quantize": True, "qtype": "qfloat8", "quantize_te": True, "qtype_te": "qfloat8"}  # the UI default


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from harness.demo_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def _bundle(model_dir, plan):
    from harness.render.models import load_bundle

    return load_bundle(model_dir, model_dir / "vae", "cpu", quantization=plan)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int16) if t.dtype == BF16 else t


# --------------------------------------------------------------------------------------------- the plan


def test_plan_ui_default_current_version():
    plan = quantization_plan(DEFAULT_JOB, "0.12.26")
    assert plan.transformer_qtype == "qfloat8" and plan.text_encoder_qtype == "qfloat8"
    assert plan.exclude == EXCLUDE_PATTERNS and plan.approximate == () and not plan.version_assumed
    described = plan.describe()
    assert described["summary"] == "experts qfloat8 (bf16: condition_embedder*, proj_out*); text encoder qfloat8"
    assert described["lora_path"].startswith("unmerged")


@pytest.mark.parametrize("version, excluded", [("0.10.21", False), ("0.9.3", False), ("0.10.22", True),
                                               ("0.10.24", True), ("0.12.26", True), ("1.0", True)])
def test_plan_exclusions_by_version(version, excluded):
    plan = quantization_plan(DEFAULT_JOB, version)
    assert plan.exclude == (EXCLUDE_PATTERNS if excluded else ())
    ambiguous = any("0.10.22 spans" in a for a in plan.approximate)
    assert ambiguous == (version == "0.10.22")


@pytest.mark.parametrize("version", [None, "", "dev"])
def test_plan_unknown_version_assumes_current_and_says_so(version):
    plan = quantization_plan(DEFAULT_JOB, version)
    assert plan.exclude == EXCLUDE_PATTERNS and plan.version_assumed
    assert any("assumed current" in n for n in plan.notes)


def test_plan_text_encoder_follows_transformer_qtype_not_qtype_te():
    plan = quantization_plan({"quantize": True, "qtype": "qint8", "quantize_te": True, "qtype_te": "qfloat8"}, "0.12.26")
    assert plan.text_encoder_qtype == "qint8"
    assert plan.approximate  # only qfloat8 was verified
    only_te = quantization_plan({"quantize": False, "quantize_te": True, "qtype": "qfloat8"}, "0.12.26")
    assert only_te.transformer_qtype is None and only_te.text_encoder_qtype == "qfloat8" and only_te.exclude == ()
    no_te = quantization_plan({"quantize": True, "quantize_te": False}, "0.12.26")
    assert no_te.text_encoder_qtype is None and no_te.transformer_qtype == "qfloat8"
    assert quantization_plan({"quantize": False, "quantize_te": False}, "0.12.26") is None
    assert quantization_plan({}, None) is None
    # ai-toolkit's ModelConfig: quantize_te defaults to quantize
    assert quantization_plan({"quantize": True}, "0.12.26").text_encoder_qtype == "qfloat8"


def test_plan_refusals(tmp_path):
    with pytest.raises(HarnessError, match="layer_offloading.*not supported.*torchao float8"):
        quantization_plan({**DEFAULT_JOB, "layer_offloading": True}, "0.12.26")
    assert quantization_plan({"quantize": False, "quantize_te": False, "layer_offloading": True}, None) is None
    for qtype in ("float8", "int8", "convrot8", "orbit4"):
        with pytest.raises(HarnessError, match="not supported"):
            quantization_plan({**DEFAULT_JOB, "qtype": qtype}, "0.12.26")
    with pytest.raises(HarnessError, match="--ara PATH"):
        quantization_plan({**DEFAULT_JOB, "qtype": "uint4|ostris/accuracy_recovery_adapters/x.safetensors"}, "0.12.26")
    with pytest.raises(HarnessError, match="more than one"):
        quantization_plan({**DEFAULT_JOB, "qtype": "uint4|a|b"}, "0.12.26")


def test_plan_with_ara(tmp_path):
    ara = tmp_path / "ara.safetensors"
    ara.write_bytes(b"")
    plan = quantization_plan({**DEFAULT_JOB, "qtype": "uint4|ostris/accuracy_recovery_adapters/x.safetensors"},
                             "0.12.26", ara_path=ara)
    assert plan.transformer_qtype == "uint4" and plan.text_encoder_qtype == "uint4"  # the TE gets uint4 too
    assert plan.ara_path == str(ara.resolve()) and plan.ara_source.endswith("x.safetensors")
    # uint4 + ARA is verified against ai-toolkit (oracle case_h); only the published hub file itself is not
    assert len(plan.approximate) == 1 and "hub file 'ostris/accuracy_recovery_adapters/x.safetensors'" in plan.approximate[0]
    assert plan.describe()["ara"]["other_linears"].startswith("bf16")
    hash(plan)  # part of the model-cache key
    local = quantization_plan({**DEFAULT_JOB, "qtype": f"uint4|{ara}"}, "0.12.26", ara_path=ara)
    assert local.approximate == ()  # what case_h proves
    for qtype, why in (("uint3", f"uint3|{ara}"), ("uint4", "uint4")):
        plan = quantization_plan({**DEFAULT_JOB, "qtype": why}, "0.12.26", ara_path=ara)
        assert any(a.startswith(qtype) and "verified against ai-toolkit for uint4 with an ARA only" in a
                   for a in plan.approximate), plan.approximate


# ----------------------------------------------------------------------------------- qfloat8 arithmetic


@pytest.mark.parametrize("out_f, in_f, tokens", [(24, 24, 7), (64, 24, 33), (24, 64, 130), (96, 160, 64)])
def test_qlinear_matches_independent_qfloat8_arithmetic(out_f, in_f, tokens):
    """quanto 0.2.4 on CPU == §9 (docs/parity): row scale amax/448 (bf16), fp8 data, matmul then a separate bias add."""
    from optimum.quanto import QLinear

    gen = torch.Generator().manual_seed(out_f * 1000 + in_f)
    linear = torch.nn.Linear(in_f, out_f).to(BF16)
    with torch.no_grad():
        linear.weight.copy_((torch.randn(out_f, in_f, generator=gen) * torch.rand(out_f, 1, generator=gen)).to(BF16))
        linear.bias.copy_(torch.randn(out_f, generator=gen).to(BF16))
    x = torch.randn(1, tokens, in_f, generator=gen).to(BF16)
    weight, bias = linear.weight.detach().clone(), linear.bias.detach().clone()

    root = torch.nn.Sequential(linear)
    assert quant._quantize_one(root, "0", linear, "qfloat8")
    qlinear = root[0]
    assert isinstance(qlinear, QLinear) and isinstance(qlinear, torch.nn.Linear)

    scale = weight.abs().amax(dim=1, keepdim=True) / 448.0  # bf16 / python float -> bf16
    data = torch.clamp(weight / scale, -448.0, 448.0).to(torch.float8_e4m3fn)
    assert torch.equal(_bits(qlinear.weight._scale), _bits(scale))
    assert torch.equal(qlinear.weight._data.view(torch.uint8), data.view(torch.uint8))
    dequant = scale * data.to(BF16)
    expected = torch.matmul(x, dequant.t()) + bias
    with torch.no_grad():
        got = qlinear(x)
    assert got.dtype == BF16
    assert torch.equal(_bits(got), _bits(expected))
    if tokens >= 33:  # the order matters: a fused F.linear (one rounding) is not what quanto computes
        assert not torch.equal(_bits(got), _bits(torch.nn.functional.linear(x, dequant, bias)))


def test_forward_hooks_fire_on_qlinear_and_lora_hook_adds_on_top():
    from harness.render.lora import LoraLayer, _unmerged_hook

    gen = torch.Generator().manual_seed(5)
    linear = torch.nn.Linear(32, 16).to(BF16)
    root = torch.nn.Sequential(linear)
    quant._quantize_one(root, "0", linear, "qfloat8")
    qlinear = root[0]
    x = torch.randn(1, 9, 32, generator=gen).to(BF16)
    with torch.no_grad():
        base = qlinear(x)
        layer = LoraLayer(down=torch.randn(4, 32, generator=gen), up=torch.randn(16, 4, generator=gen))
        handle = qlinear.register_forward_hook(_unmerged_hook(layer, torch.tensor([0.5])))
        hooked = qlinear(x)
        handle.remove()
    delta = (torch.nn.functional.linear(torch.nn.functional.linear(x.float(), layer.down), layer.up) * 0.5).to(BF16)
    assert torch.equal(_bits(hooked), _bits(base + delta))


# ------------------------------------------------------------------------------- which modules, which qtype


def _non_linear_state(model):
    linear_names = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}

    def in_linear(key):
        parts = key.split(".")
        return any(".".join(parts[:i]) in linear_names for i in range(1, len(parts)))

    return {k: v for k, v in model.state_dict().items() if not in_linear(k)}


def test_modules_and_qtypes_current_version(tiny):
    bf16 = _bundle(tiny, None)
    bundle = _bundle(tiny, quantization_plan(DEFAULT_JOB, "0.12.26"))
    for model in (bundle.transformer, bundle.transformer_2):
        kinds = linear_qtypes(model)
        for name, qtype in kinds.items():
            expected = "bf16" if name in EXTRAS else QF8
            assert qtype == expected, name
        assert sum(name.startswith("blocks.") for name in kinds) == 20
    assert set(linear_qtypes(bundle.text_encoder).values()) == {QF8}
    # never quantized: patch_embedding (Conv3d), norms, scale_shift_table; bit-identical to the bf16 bundle
    for quantized, reference in ((bundle.transformer, bf16.transformer), (bundle.text_encoder, bf16.text_encoder)):
        got, want = _non_linear_state(quantized), _non_linear_state(reference)
        assert got.keys() == want.keys()
        assert all(torch.equal(got[k], want[k]) for k in want)
    t = bundle.transformer
    assert type(t.patch_embedding) is torch.nn.Conv3d and t.patch_embedding.weight.dtype == BF16
    assert t.scale_shift_table.dtype == BF16 and all(b.scale_shift_table.dtype == BF16 for b in t.blocks)
    assert all("Q" not in type(m).__name__ for n, m in t.named_modules() if "norm" in n.split(".")[-1])
    report = quant.applied(bundle)
    assert report["applied"]["transformer"]["linears"] == {QF8: 20, "bf16": 6}
    assert report["applied"]["text_encoder"]["linears"] == {QF8: 14}
    assert sorted(report["applied"]["transformer_2"]["unquantized"]) == sorted(EXTRAS)


def test_modules_and_qtypes_before_0_10_22_and_te_off(tiny):
    bundle = _bundle(tiny, quantization_plan({**DEFAULT_JOB, "quantize_te": False}, "0.10.21"))
    for model in (bundle.transformer, bundle.transformer_2):
        assert set(linear_qtypes(model).values()) == {QF8}  # extras quantized too
    assert set(linear_qtypes(bundle.text_encoder).values()) == {"bf16"}


def test_text_encoder_only_uses_the_transformer_qtype(tiny):
    plan = quantization_plan({"quantize": False, "quantize_te": True, "qtype": "qint8", "qtype_te": "qfloat8"}, None)
    bundle = _bundle(tiny, plan)
    assert set(linear_qtypes(bundle.text_encoder).values()) == {"qint8"}
    assert set(linear_qtypes(bundle.transformer).values()) == {"bf16"}


# --------------------------------------------------------------------------------------- uintX and the ARA


def test_uintx_round_trip_properties():
    gen = torch.Generator().manual_seed(3)
    weight = (torch.randn(8, 128, generator=gen) * 0.1).to(BF16)
    weight[0, :64] = weight[0, :64].abs()  # a group with no negative value: the range still includes 0
    scale, zp = uintx_qparams(weight, 4)
    codes = uintx_codes(weight, scale, zp, 4)
    assert scale.shape == zp.shape == (8, 2) and scale.dtype == BF16 and zp.dtype == torch.int32
    assert int(codes.max()) <= 15 and zp[0, 0] == 0
    dq = uintx_dequantize(codes, scale, zp, BF16)
    err = (dq.float() - weight.float()).abs().reshape(8, 2, 64).amax(-1)
    assert bool((err <= scale.float() * 0.75).all())  # half a step, plus bf16 rounding of 1/scale and W'
    linear = torch.nn.Linear(128, 8).to(BF16)
    linear.weight.data = weight.clone()
    assert uintx_quantize_(linear, 4) and quant.module_qtype(linear) == "uint4"
    assert torch.equal(_bits(linear.weight.data), _bits(dq))
    odd = torch.nn.Linear(96, 8).to(BF16)  # 96 is not a multiple of 64: torchao raised, ai-toolkit left it bf16
    assert not uintx_quantize_(odd, 4) and quant.module_qtype(odd) == "bf16"
    assert not uintx_quantize_(torch.nn.Linear(128, 8).to(BF16), 8)  # uint8 never quantized


def test_ara_uint4_targets_hooks_and_lora_on_top(tiny, tmp_path):
    from harness.render.lora import LoraLayer, applied as lora_applied

    gen = torch.Generator().manual_seed(11)
    state = {}
    # ffn.2 has in_features 64 (uint4-able); self_attn.q has 24 (left bf16, the ARA still applies)
    for expert in ("transformer_1", "transformer_2"):
        for block in (0, 1):
            for name, (out_f, in_f) in {"ffn.2": (24, 64), "self_attn.q": (24, 24)}.items():
                key = f"diffusion_model.{expert}.blocks.{block}.{name}"
                state[f"{key}.lora_A.weight"] = torch.randn(4, in_f, generator=gen).to(BF16) * 0.1
                state[f"{key}.lora_B.weight"] = torch.randn(out_f, 4, generator=gen).to(BF16) * 0.1
    ara = tmp_path / "ara.safetensors"
    save_file(state, str(ara))
    plan = quantization_plan({"quantize": True, "quantize_te": True, "qtype": "uint4|hub/repo/ara.safetensors"},
                             "0.12.26", ara_path=ara)
    bf16 = _bundle(tiny, None)
    bundle = _bundle(tiny, plan)
    kinds = linear_qtypes(bundle.transformer)
    assert kinds["blocks.0.ffn.net.2"] == kinds["blocks.1.ffn.net.2"] == "uint4"
    assert {q for n, q in kinds.items() if not n.endswith("ffn.net.2")} == {"bf16"}  # uint8 elsewhere: a no-op
    te = linear_qtypes(bundle.text_encoder)
    assert {n.rsplit(".", 1)[-1] for n, q in te.items() if q == "uint4"} == {"wo"}  # the only 64-wide input
    assert quant.applied(bundle)["ara_layers"] == {"high": 4, "low": 4}

    ffn, ref = bundle.transformer.get_submodule("blocks.0.ffn.net.2"), bf16.transformer.get_submodule("blocks.0.ffn.net.2")
    x = torch.randn(1, 5, 64, generator=gen).to(BF16)
    a = state["diffusion_model.transformer_1.blocks.0.ffn.2.lora_A.weight"]
    b = state["diffusion_model.transformer_1.blocks.0.ffn.2.lora_B.weight"]
    scale, zp = uintx_qparams(ref.weight.data, 4)
    w4 = uintx_dequantize(uintx_codes(ref.weight.data, scale, zp, 4), scale, zp, BF16)
    base = torch.nn.functional.linear(x, w4, ref.bias)
    with_ara = base + torch.nn.functional.linear(torch.nn.functional.linear(x, a), b)
    with torch.no_grad():
        assert torch.equal(_bits(ffn(x)), _bits(with_ara))
        layer = LoraLayer(down=torch.randn(2, 64, generator=gen), up=torch.randn(24, 2, generator=gen))
        with lora_applied({"high": ara}, {"high": {"blocks.0.ffn.net.2": layer}}, bundle.experts, 1.0, merged=False):
            stacked = ffn(x)
    training = torch.nn.functional.linear(torch.nn.functional.linear(x.float(), layer.down), layer.up).to(BF16)
    assert torch.equal(_bits(stacked), _bits(with_ara + training))


def test_ara_refuses_keys_without_expert_prefix(tmp_path):
    path = tmp_path / "ara.safetensors"
    save_file({"diffusion_model.blocks.0.ffn.2.lora_A.weight": torch.zeros(2, 64)}, str(path))
    with pytest.raises(HarnessError, match="transformer_1/transformer_2"):
        quant.read_ara(path)


# ------------------------------------------------------------------------------------------- full renders


def test_qfloat8_render_with_unmerged_lora_is_deterministic_and_differs_from_bf16(tiny, tmp_path):
    from harness.demo_model import make_demo_lora_pair
    from harness.render.lora import applied as lora_applied, read_lora_file
    from harness.render.pipeline import render_sample
    from harness.render.profiles import get_profile
    from harness.spec import SampleSpec

    high, low = make_demo_lora_pair(tiny, tmp_path / "lora", "q", rank=4, seed=1, step=2)
    layers = {"high": read_lora_file(high), "low": read_lora_file(low)}
    rows = np.arange(16)[:, None, None]
    image = Image.fromarray(np.broadcast_to((rows * 13 + np.arange(16)[None, :, None] * 7 + [0, 60, 120]) % 256,
                                            (16, 16, 3)).astype(np.uint8))
    sample = SampleSpec(index=0, prompt="a cat walks slowly", negative_prompt="blurry", seed=42, width=16, height=16,
                        num_frames=1, guidance_scale=1.0, sample_steps=2, network_multiplier=0.8, fps=16,
                        ctrl_img=None)
    plan = quantization_plan(DEFAULT_JOB, "0.12.26")

    def render(bundle):
        with lora_applied({"high": high, "low": low}, layers, bundle.experts, 0.8, merged=False):
            return render_sample(bundle, sample, image, get_profile("aitk-euler")).frames

    reference = render(_bundle(tiny, None))
    first = render(_bundle(tiny, plan))
    again = render(_bundle(tiny, plan))  # a fresh quantization and a fresh render
    assert np.array_equal(first, again)
    assert not np.array_equal(first, reference)
    mse = float(((first.astype(np.float64) - reference) ** 2).mean())
    assert 10 * np.log10(255**2 / mse) > 20  # quantization noise, not a broken model


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible")
@pytest.mark.parametrize("bits", [2, 3, 4])
def test_uintx_quantizes_to_the_same_bits_on_cpu_and_cuda(bits):
    """``low_vram`` makes ai-toolkit quantize the ARA's linears on the CPU instead of the GPU: only harmless if the
    codes, scales and zero points do not depend on the device (measured on an H200 with Wan/UMT5 shapes too)."""
    torch.manual_seed(bits)
    weight = torch.randn(640, 1280) * 0.02
    weight[::97, ::53] *= 40
    weight[7, :64] = 0
    weight = weight.to(torch.bfloat16)
    on = {}
    for device in ("cpu", "cuda"):
        w = weight.to(device)
        scale, zp = uintx_qparams(w, bits)
        codes = uintx_codes(w, scale, zp, bits)
        on[device] = [t.cpu() for t in (scale, zp, codes, uintx_dequantize(codes, scale, zp, torch.bfloat16))]
    for cpu, cuda in zip(on["cpu"], on["cuda"]):
        assert torch.equal(_bits(cpu), _bits(cuda))
