"""Loading the base model like ai-toolkit (§11.1, §11.4, §4, docs/parity) and keeping it loaded across previews."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import HarnessError
from .offload import HOST, OFFLOAD_MODES, BlockStreamer, Parking

BF16 = torch.bfloat16


def _bf16_rms_norm(self, x):
    """``WanRMS_norm.forward`` of ai-toolkit's own VAE copy (< 0.10.22): normalised in the input's dtype."""
    return torch.nn.functional.normalize(x, dim=1 if self.channel_first else -1) * self.scale * self.gamma + self.bias


@dataclass
class ModelBundle:
    """Both experts, the VAE, the UMT5 encoder and its tokenizer; ``device`` is where every kernel runs.

    With an offload mode (``set_offload``) weights wait on the host between uses; the numerics do not change.
    """

    base_dir: Path
    vae_dir: Path
    device: torch.device
    transformer: torch.nn.Module  # high-noise expert
    transformer_2: torch.nn.Module  # low-noise expert
    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    cast_whole_bf16: bool
    notes: list[str] = field(default_factory=list)
    offload: str = "none"
    _streamers: list = field(default_factory=list, repr=False)
    _parking: Parking | None = field(default=None, repr=False)

    def expert(self, which: str) -> torch.nn.Module:
        """The expert for a step, made resident first under ``--offload experts``."""
        model = self.transformer if which == "high" else self.transformer_2
        if self.offload == "experts":
            self._parking.park(self.transformer_2 if which == "high" else self.transformer)
            self._parking.upload(model)
        return model

    @contextmanager
    def encoding(self):
        """The text encoder visits the compute device only while encoding under ``--offload experts``."""
        if self.offload != "experts":
            yield
            return
        for expert in (self.transformer, self.transformer_2):
            self._parking.park(expert)
        self._parking.upload(self.text_encoder)
        try:
            yield
        finally:
            self._parking.park(self.text_encoder)

    @contextmanager
    def vae_norm(self, mode: str):
        """The VAE's RMS norm as the profile's ai-toolkit computed it (§11.4): ``bf16`` for ai-toolkit's own VAE copy
        (before 0.10.22: ``F.normalize`` on the bf16 activations), ``fp32`` for diffusers' (upcast first)."""
        if mode == "fp32":
            yield
            return
        if mode != "bf16":
            raise ValueError(f"unknown VAE norm {mode!r}")
        norms = [m for m in self.vae.modules() if type(m).__name__ == "WanRMS_norm"]
        for norm in norms:
            norm.forward = _bf16_rms_norm.__get__(norm)
        try:
            yield
        finally:
            for norm in norms:
                del norm.forward


    def set_offload(self, mode: str) -> None:
        """Switch memory mode in place (weights move, nothing reloads)."""
        if mode not in OFFLOAD_MODES:
            raise HarnessError(None, "--offload", f"unknown mode {mode!r}; choose one of {', '.join(OFFLOAD_MODES)}")
        if self.device.type == "cpu":
            mode = "none"  # nothing to save on the host itself
        if mode == self.offload:
            return
        for streamer in self._streamers:
            streamer.remove()
        self._streamers.clear()
        modules = (self.transformer, self.transformer_2, self.text_encoder)
        self._parking = self._parking or Parking(self.device)
        if mode == "none":
            for module in modules:
                self._parking.settle(module)
            self._parking = None  # the pinned homes go with it
        elif mode == "experts":
            for module in modules:
                self._parking.park(module)
        else:
            self._streamers = [BlockStreamer(module, self._parking) for module in modules]
        self.vae.to(self.device)
        self.offload = mode

    @property
    def experts(self) -> dict[str, torch.nn.Module]:
        return {"high": self.transformer, "low": self.transformer_2}


def load_tokenizer(path: Path):
    """A T5 tokenizer without the SentencePiece precompiled normalizer, like ai-toolkit's PatchedT5Tokenizer."""
    from transformers import T5Tokenizer

    tokenizer = T5Tokenizer.from_pretrained(str(path), _spm_precompiled_charsmap=None)
    tokenizer._tokenizer.normalizer = None
    return tokenizer


def _quiet():
    """diffusers warns on the deliberate whole-model bf16 cast, and both libraries draw their own loading bars;
    the harness reports the cast itself and draws one progress display."""
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    for module in (diffusers_logging, transformers_logging):
        module.set_verbosity_error()
        module.disable_progress_bar()


def load_transformer(base_dir: Path, subfolder: str, device, cast_whole_bf16: bool):
    """``from_pretrained(torch_dtype=bf16)`` then, like ai-toolkit, ``.to(bf16)`` so fp32-kept modules become bf16."""
    from diffusers import WanTransformer3DModel

    model = WanTransformer3DModel.from_pretrained(str(base_dir), subfolder=subfolder, torch_dtype=BF16, use_safetensors=True)
    if cast_whole_bf16:
        model = model.to(dtype=BF16)
    return model.to(device).eval().requires_grad_(False)


def load_bundle(base_dir: Path, vae_dir: Path, device, cast_whole_bf16: bool = True, quantization=None,
                offload: str = "none") -> ModelBundle:
    """``quantization``: a ``quant.QuantPlan`` (ai-toolkit's quantized sampling model, §9) or None for bf16.

    With an offload mode the large modules are loaded onto the host and never all sit on the GPU at once.
    """
    from diffusers import AutoencoderKLWan
    from transformers import UMT5EncoderModel

    _quiet()
    base_dir, vae_dir, device = Path(base_dir), Path(vae_dir), torch.device(device)
    weights_device = HOST if offload != "none" else device
    for sub in ("transformer", "transformer_2", "text_encoder", "tokenizer"):
        if not (base_dir / sub).is_dir():
            raise HarnessError(base_dir, sub, f"subfolder missing; a Wan 2.2 I2V A14B diffusers folder has {sub}/")
    with torch.no_grad():
        transformer = load_transformer(base_dir, "transformer", weights_device, cast_whole_bf16)
        transformer_2 = load_transformer(base_dir, "transformer_2", weights_device, cast_whole_bf16)
        vae = AutoencoderKLWan.from_pretrained(str(vae_dir), torch_dtype=BF16, use_safetensors=True).to(device, BF16).eval()
        text_encoder = UMT5EncoderModel.from_pretrained(str(base_dir / "text_encoder"), torch_dtype=BF16, use_safetensors=True)
        text_encoder = text_encoder.to(weights_device, BF16).eval()
    bundle = ModelBundle(base_dir, vae_dir, device, transformer, transformer_2, vae, text_encoder,
                         load_tokenizer(base_dir / "tokenizer"), cast_whole_bf16)
    if quantization is not None:
        from .quant import apply_plan

        apply_plan(bundle, quantization)
    bundle.set_offload(offload)
    return bundle


class ModelCache:
    """Loaded bundles keyed by (base, vae, device, dtype rule, quantization): a run loads each base model once.

    One per :class:`~harness.engine.Engine` unless the caller shares one (calibrate renders with fresh engines).
    """

    def __init__(self):
        self._bundles: dict[tuple, ModelBundle] = {}

    def get(self, base_dir: Path, vae_dir: Path, device, cast_whole_bf16: bool = True, quantization=None,
            offload: str = "none") -> ModelBundle:
        """The cached bundle in the requested memory mode (switching modes moves weights, never reloads)."""
        key = (str(Path(base_dir).resolve()), str(Path(vae_dir).resolve()), str(torch.device(device)), cast_whole_bf16,
               quantization)
        if key not in self._bundles:
            self._bundles[key] = load_bundle(base_dir, vae_dir, device, cast_whole_bf16, quantization=quantization,
                                             offload=offload)
        bundle = self._bundles[key]
        bundle.set_offload(offload)
        return bundle

    def clear(self) -> None:
        self._bundles.clear()

