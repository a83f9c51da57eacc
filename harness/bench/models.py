"""Synthetic models: the real public Wan 2.2 I2V A14B configs (or the tiny demo ones) with seeded random bf16 weights.

Construction runs under ``torch.device(device)`` with bf16 as the default dtype, so every parameter is allocated and
randomly initialised on the device: no host round trip, no fp32 copy.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import torch

from ..demo_model import TRANSFORMER_CONFIG as TINY_TRANSFORMER_CONFIG
from .units import BF16, GIB, nbytes

# ---------------------------------------------------------------------------------------------------------------------
# Real public configs (Wan-AI/Wan2.2-I2V-A14B-Diffusers; ../shared/DIFFUSERS-FACTS.md, section 6, outside the repo)
# ---------------------------------------------------------------------------------------------------------------------

# The tiny demo transformer shares the architecture; only the sizes differ.
A14B_TRANSFORMER_CONFIG = {
    **TINY_TRANSFORMER_CONFIG,
    "num_attention_heads": 40,
    "attention_head_dim": 128,  # dim 5120
    "text_dim": 4096,
    "freq_dim": 256,
    "ffn_dim": 13824,
    "num_layers": 40,
    "rope_max_seq_len": 1024,
}

UMT5_XXL_CONFIG = dict(  # google/umt5-xxl encoder, as shipped in the Wan 2.2 text_encoder/ folder
    vocab_size=256384,
    d_model=4096,
    d_kv=64,
    d_ff=10240,
    num_layers=24,
    num_heads=64,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    dropout_rate=0.0,
    feed_forward_proj="gated-gelu",
    pad_token_id=0,
    eos_token_id=1,
    decoder_start_token_id=0,
    tie_word_embeddings=False,
)

A14B_VAE_CONFIG: dict = {}  # AutoencoderKLWan() defaults are the Wan 2.1 VAE: base_dim 96, z 16, [1,2,4,4], 2 res blocks


def synthetic_configs(kind: str) -> dict:
    """The component configs of ``--synthetic kind``."""
    from .. import demo_model

    if kind == "a14b":
        return {"transformer": A14B_TRANSFORMER_CONFIG, "vae": A14B_VAE_CONFIG, "text_encoder": UMT5_XXL_CONFIG}
    if kind == "tiny":
        return {"transformer": demo_model.TRANSFORMER_CONFIG, "vae": demo_model.VAE_CONFIG,
                "text_encoder": demo_model.TEXT_ENCODER_CONFIG}
    raise ValueError(f"unknown synthetic model {kind!r}")


@contextlib.contextmanager
def building_on(device, dtype=BF16):
    """Allocate and initialise parameters directly on ``device`` in ``dtype`` (default init runs on the device)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def param_stats(model: torch.nn.Module) -> dict:
    """Parameter count and bf16 size of a model, for the JSON's ``models``."""
    params = sum(p.numel() for p in model.parameters())
    return {"params": params, "gib": round(nbytes(model.parameters()) / GIB, 3)}


class SyntheticModels:
    """Builds each component from its config with seeded random bf16 weights on ``device``.

    The same seed gives the same weights on the same device. ``to`` is where the finished module is handed over.
    """

    def __init__(self, kind: str, device, seed: int = 0):
        self.kind = kind
        self.device = torch.device(device)
        self.seed = seed
        self.configs = synthetic_configs(kind)
        self._tokenizer = None

    def _build(self, offset: int, make, to) -> torch.nn.Module:
        """Seed per component (so each gets the same weights whatever else is built), construct on the device, then
        cast whole like ai-toolkit's ``.to(bf16)``: the rope buffers and fp32-kept modules become bf16 too."""
        torch.manual_seed(self.seed * 1000 + offset)
        with building_on(self.device):
            model = make()
        return model.to(device=to or self.device, dtype=BF16).eval().requires_grad_(False)

    def transformer(self, expert: str, to=None, num_layers: int | None = None) -> torch.nn.Module:
        """``num_layers`` cuts the block stack (full width), for the disk-load probe."""
        from diffusers import WanTransformer3DModel

        config = self.configs["transformer"] | ({"num_layers": num_layers} if num_layers else {})
        return self._build(1 if expert == "high" else 2, lambda: WanTransformer3DModel(**config), to)

    def vae(self, to=None) -> torch.nn.Module:
        from diffusers import AutoencoderKLWan

        return self._build(3, lambda: AutoencoderKLWan(**self.configs["vae"]), to)

    def text_encoder(self, to=None) -> torch.nn.Module:
        from transformers import UMT5Config, UMT5EncoderModel

        return self._build(4, lambda: UMT5EncoderModel(UMT5Config(**self.configs["text_encoder"])), to)

    def tokenizer(self):
        if self._tokenizer is None:
            from ..demo_model import build_tokenizer

            self._tokenizer = build_tokenizer()  # token ids don't matter for cost: every prompt is padded to 512
        return self._tokenizer

    def bundle(self):
        """A ModelBundle built directly on the device (offload none)."""
        from ..render.models import ModelBundle

        with torch.no_grad():
            transformer, transformer_2 = self.transformer("high"), self.transformer("low")
            vae, text_encoder = self.vae(), self.text_encoder()
        synthetic = Path(f"<synthetic {self.kind}>")
        return ModelBundle(base_dir=synthetic, vae_dir=synthetic, device=self.device, transformer=transformer,
                           transformer_2=transformer_2, vae=vae, text_encoder=text_encoder, tokenizer=self.tokenizer(),
                           cast_whole_bf16=True, notes=[f"synthetic {self.kind} model, random bf16 weights"])


def model_stats(kind: str, seed: int) -> dict:
    """Parameter counts from a meta-device build: the real sizes without allocating any memory."""
    meta = SyntheticModels(kind, "meta", seed=seed)
    with torch.no_grad():
        stats = {"transformer": param_stats(meta.transformer("high")),
                 "transformer_2": param_stats(meta.transformer("low")),
                 "text_encoder": param_stats(meta.text_encoder()), "vae": param_stats(meta.vae())}
    block = meta.transformer("high").blocks[0]
    stats["transformer"]["per_block_params"] = sum(p.numel() for p in block.parameters())
    stats["total_gib"] = round(sum(v["gib"] for v in stats.values() if isinstance(v, dict)), 2)
    return stats


def write_synthetic_lora(path: Path, model: torch.nn.Module, rank: int, seed: int, name: str) -> Path:
    """An ai-toolkit-layout LoRA for ``model``: every block's 10 linears, float16 (ai-toolkit's default save dtype)."""
    from safetensors.torch import save_file

    from ..demo_model import aitk_metadata, lora_module_names

    modules = dict(model.named_modules())
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    tensors = {}
    for aitk, diffusers_name in lora_module_names(len(model.blocks)):
        linear = modules[diffusers_name]
        down = torch.randn(rank, linear.in_features, device=device, generator=gen) / math.sqrt(linear.in_features)
        up = torch.randn(linear.out_features, rank, device=device, generator=gen) * 0.01
        tensors[f"{aitk}.lora_A.weight"] = down.to("cpu", torch.float16)
        tensors[f"{aitk}.lora_B.weight"] = up.to("cpu", torch.float16)
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in aitk_metadata(name).items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=meta)
    return path
