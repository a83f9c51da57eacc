"""Tests for harness.demo_model: the offline tiny Wan 2.2 I2V model and ai-toolkit LoRA writer.

Why these checks: the tiny model stands in for the 14B checkpoint in every other test, so it must
(a) load through the same diffusers/transformers classes, (b) be byte-reproducible so goldens stay
valid, and (c) react clearly to prompt, control image, timestep, expert and LoRA, or parity tests
built on it could not catch mistakes. The LoRA files must match ai-toolkit's on-disk layout.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import hashlib
import json
import re
import string
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from harness import demo_model as dm


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return dm.build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def lora_pair(model_dir, tmp_path_factory):
    return dm.make_demo_lora_pair(model_dir, tmp_path_factory.mktemp("loras"), "demo", step=250)


# ---------------------------------------------------------------------------- model folder


def test_components_load(model_dir):
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel
    from transformers import AutoTokenizer, T5Tokenizer, UMT5EncoderModel

    for sub in ("transformer", "transformer_2"):
        tr = WanTransformer3DModel.from_pretrained(model_dir, subfolder=sub)
        assert tr.config.in_channels == 36 and tr.config.out_channels == 16
        assert tr.config.num_layers == 2 and tr.config.qk_norm == "rms_norm_across_heads"
    vae = AutoencoderKLWan.from_pretrained(model_dir, subfolder="vae")
    assert vae.config.z_dim == 16 and vae.config.base_dim == 8
    assert vae.config.latents_mean == dm.WAN21_LATENTS_MEAN
    assert vae.config.latents_std == dm.WAN21_LATENTS_STD
    te = UMT5EncoderModel.from_pretrained(model_dir / "text_encoder")
    assert te.config.d_model == 32 and te.config.vocab_size == dm.VOCAB_SIZE
    for cls in (AutoTokenizer, T5Tokenizer):
        tok = cls.from_pretrained(model_dir / "tokenizer")
        assert len(tok) == dm.VOCAB_SIZE
    sched = UniPCMultistepScheduler.from_pretrained(model_dir, subfolder="scheduler")
    assert sched.config.prediction_type == "flow_prediction" and sched.config.use_flow_sigmas

    index = json.loads((model_dir / "model_index.json").read_text())
    assert index["_class_name"] == "WanImageToVideoPipeline" and index["boundary_ratio"] == 0.9


def test_pipeline_loads(model_dir):
    from diffusers import WanImageToVideoPipeline

    pipe = WanImageToVideoPipeline.from_pretrained(model_dir, dtype=torch.float32)
    assert pipe.config.boundary_ratio == 0.9
    assert pipe.transformer_2 is not None and pipe.image_encoder is None


def test_experts_differ(model_dir):
    a = load_file(model_dir / "transformer" / "diffusion_pytorch_model.safetensors")
    b = load_file(model_dir / "transformer_2" / "diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys()
    assert all(not torch.equal(a[k], b[k]) for k in a if a[k].numel() > 1 and a[k].std() > 0)


def test_build_is_deterministic(model_dir, tmp_path):
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    again = dm.build_tiny_model(tmp_path / "again")
    assert torch.equal(torch.rand(3), expected_next), "build must not disturb the global RNG"
    assert _digests(again) == _digests(model_dir)

    other = _digests(dm.build_tiny_model(tmp_path / "seed1", seed=1))
    assert other["transformer/diffusion_pytorch_model.safetensors"] != _digests(model_dir)[
        "transformer/diffusion_pytorch_model.safetensors"
    ]


# ---------------------------------------------------------------------------- tokenizer


def test_tokenizer(model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir / "tokenizer")
    assert tok("").input_ids == [1]
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert tok.convert_tokens_to_ids("<extra_id_0>") == dm.VOCAB_SIZE - 1
    texts = [
        "a cat walks slowly across a sunny kitchen floor",
        "Hello, World! 123",
        "".join(c for c in string.printable if c not in string.whitespace),
        'Zebra quiz: "jump" over {the} [lazy] <dog> ~ 42% & $7.50 #1 @ home | a\\b ^_^ `x`',
    ]
    for text in texts:
        ids = tok(text).input_ids
        assert ids[-1] == 1 and tok.unk_token_id not in ids, text
        assert max(ids) < dm.VOCAB_SIZE
        assert tok.decode(ids, skip_special_tokens=True) == text
    padded = tok(["a cat"], padding="max_length", max_length=8, return_tensors="pt")
    assert padded.input_ids[0, -1] == 0 and padded.attention_mask[0, -1] == 0


# ---------------------------------------------------------------------------- sensitivity


def test_prompt_image_timestep_change_output(model_dir):
    """One transformer forward: each input must move the noise prediction by a clear margin."""
    from diffusers import WanTransformer3DModel
    from transformers import AutoTokenizer, UMT5EncoderModel

    tok = AutoTokenizer.from_pretrained(model_dir / "tokenizer")
    te = UMT5EncoderModel.from_pretrained(model_dir / "text_encoder").eval()
    tr = WanTransformer3DModel.from_pretrained(model_dir, subfolder="transformer").eval()

    def embed(prompt):
        t = tok([prompt], padding="max_length", max_length=32, return_tensors="pt")
        with torch.no_grad():
            h = te(t.input_ids, attention_mask=t.attention_mask).last_hidden_state
        return h * t.attention_mask[..., None]

    g = torch.Generator().manual_seed(0)
    noise = torch.randn(1, 16, 3, 8, 8, generator=g)
    cond_a, cond_b = torch.randn(2, 1, 20, 3, 8, 8, generator=g)

    def predict(prompt, cond, t):
        with torch.no_grad():
            return tr(
                torch.cat([noise, cond], 1),
                timestep=torch.tensor([t]),
                encoder_hidden_states=embed(prompt),
                return_dict=False,
            )[0]

    base = predict("a cat walks on the beach", cond_a, 500.0)

    def rel(other):
        return ((other - base).std() / base.std()).item()

    assert rel(predict("a robot in a neon city at night", cond_a, 500.0)) > 0.15
    assert rel(predict("a dog walks on the beach", cond_a, 500.0)) > 0.05
    assert rel(predict("a cat walks on the beach", cond_b, 500.0)) > 0.3
    assert rel(predict("a cat walks on the beach", cond_a, 450.0)) > 0.05


# ---------------------------------------------------------------------------- LoRA files

_AITK_KEY = re.compile(
    r"^diffusion_model\.blocks\.(\d+)\.(self_attn|cross_attn|ffn)\.([qkvo]|0|2)\.lora_([AB])\.weight$"
)
_ATTN = {"self_attn": "attn1", "cross_attn": "attn2"}
_PROJ = {"q": "to_q", "k": "to_k", "v": "to_v", "o": "to_out.0"}
_FFN = {"0": "ffn.net.0.proj", "2": "ffn.net.2"}


def _diffusers_module(key: str) -> tuple[str, str]:
    """Independent re-implementation of the file -> diffusers name mapping (§8.4, docs/parity)."""
    m = _AITK_KEY.match(key)
    assert m, key
    block, group, proj, ab = m.groups()
    name = _FFN[proj] if group == "ffn" else f"{_ATTN[group]}.{_PROJ[proj]}"
    return f"blocks.{block}.{name}", ab


def test_lora_file_names(lora_pair, model_dir, tmp_path):
    high, low = lora_pair
    assert (high.name, low.name) == ("demo_000000250_high_noise.safetensors", "demo_000000250_low_noise.safetensors")
    final = dm.make_demo_lora_pair(model_dir, tmp_path, "final")
    assert [p.name for p in final] == ["final_high_noise.safetensors", "final_low_noise.safetensors"]


@pytest.mark.parametrize("expert", [0, 1])
def test_lora_keys_shapes_metadata(lora_pair, model_dir, expert):
    from diffusers import WanTransformer3DModel

    path = lora_pair[expert]
    sub = ("transformer", "transformer_2")[expert]
    tr = WanTransformer3DModel.from_pretrained(model_dir, subfolder=sub)
    linears = {n: m for n, m in tr.named_modules() if isinstance(m, torch.nn.Linear) and n.startswith("blocks.")}

    state = load_file(path)
    covered = set()
    for key, tensor in state.items():
        module, ab = _diffusers_module(key)
        lin = linears[module]
        assert tensor.dtype == torch.float32
        rank = 4
        expected = (rank, lin.in_features) if ab == "A" else (lin.out_features, rank)
        assert tuple(tensor.shape) == expected, key
        if ab == "B":
            assert tensor.abs().max() > 0, "B must be non-zero so the LoRA does something"
        covered.add(module)
    assert covered == set(linears), "every block Linear gets a LoRA, nothing else"
    assert len(state) == 2 * 10 * tr.config.num_layers
    assert not any("alpha" in k for k in state)

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert all(isinstance(v, str) for v in meta.values())
    assert json.loads(meta["software"]) == {
        "name": "ai-toolkit",
        "repo": "https://github.com/ostris/ai-toolkit",
        "version": "0.12.26",
    }
    assert json.loads(meta["training_info"])["step"] == 250
    assert meta["ss_base_model_version"] == "wan_2.2_14b"
    assert meta["ss_output_name"] == "demo" and meta["format"] == "pt"


def test_lora_pair_differs_and_is_deterministic(lora_pair, model_dir, tmp_path):
    high, low = (load_file(p) for p in lora_pair)
    assert high.keys() == low.keys()
    assert any(not torch.equal(high[k], low[k]) for k in high)
    # Same tensors and metadata. Not compared as bytes: safetensors writes the metadata entries
    # of its JSON header in hash-map order, which varies between processes (model weights carry
    # only {"format": "pt"}, so the model folder is byte-stable).
    again = dm.make_demo_lora_pair(model_dir, tmp_path, "demo", step=250)
    for new, old in zip(again, lora_pair):
        a, b = load_file(new), load_file(old)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        with safe_open(str(new), framework="pt") as f, safe_open(str(old), framework="pt") as g:
            assert f.metadata() == g.metadata()


def test_lora_loads_in_diffusers_and_changes_output(lora_pair, model_dir):
    pytest.importorskip("peft")
    from diffusers import WanImageToVideoPipeline, WanTransformer3DModel

    converted = WanImageToVideoPipeline.lora_state_dict(str(lora_pair[0]))
    assert len(converted) == 40 and all(k.startswith("transformer.blocks.") for k in converted)

    tr = WanTransformer3DModel.from_pretrained(model_dir, subfolder="transformer").eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 36, 1, 8, 8, generator=g)
    ctx = torch.randn(1, 8, 32, generator=g)
    t = torch.tensor([900.0])
    with torch.no_grad():
        base = tr(x, timestep=t, encoder_hidden_states=ctx, return_dict=False)[0]
        tr.load_lora_adapter(converted, prefix="transformer", adapter_name="demo")
        with_lora = tr(x, timestep=t, encoder_hidden_states=ctx, return_dict=False)[0]
    assert ((with_lora - base).std() / base.std()).item() > 0.05


def test_write_aitk_lora_rules(tmp_path):
    good = {"diffusion_model.blocks.0.ffn.0.lora_A.weight": torch.ones(2, 3, dtype=torch.float16)}
    path = dm.write_aitk_lora(tmp_path / "x.safetensors", good, {"training_info": {"step": 3}, "format": "pt"})
    assert load_file(path)["diffusion_model.blocks.0.ffn.0.lora_A.weight"].dtype == torch.float32
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() == {"training_info": '{"step": 3}', "format": "pt"}
    for bad in ("blocks.0.attn1.to_q.lora_A.weight", "diffusion_model.blocks.0.ffn.0.alpha"):
        with pytest.raises(ValueError):
            dm.write_aitk_lora(tmp_path / "bad.safetensors", {bad: torch.ones(1)}, {})
