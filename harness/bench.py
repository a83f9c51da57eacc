"""``wan-parity bench``: time the exact render path on synthetic models with the real Wan 2.2 I2V A14B architecture.

The real weights cannot be downloaded here, but the architecture is public, so the models are built from the real
configs with random bf16 weights (``--synthetic a14b``) or from the tiny demo configs (``--synthetic tiny``), directly
on the device: construction runs under ``torch.device(device)`` with bf16 as the default dtype, so every parameter is
allocated and randomly initialised on the GPU (no host round trip, no fp32 copy).

What is timed goes through the harness's own code: ``render_sample`` (text encode, VAE encode, ``denoise``, ``decode``)
with timers hooked onto the text encoder, the VAE's ``encode``/``decode`` and ``denoise``'s per-step progress callback,
and ``lora.applied`` for LoRA switches. So the exact-mode numbers measure what ``wan-parity run`` does. At the real
size a 30-step preview takes minutes, so an A14B preview is *extrapolated* from a short render of a few steps (all its
one-time costs included) plus the measured per-expert step time; every extrapolated or derived number says so.

``--modes fast`` compiles each transformer block (``torch.compile``, ``fullgraph=False``, default mode) and picks the
best attention backend that works on the device; it is declared non-exact and reported in separate rows.
``--offload experts|sequential`` switches the same bundle in place with ``ModelBundle.set_offload`` (what
``load_bundle(..., offload=...)`` and the model cache call), renders one step per expert, compares the bytes with the
resident render of the same steps; both modes share the pinned host homes of the weights (``render/offload.py``).
``--quantize`` ends with ai-toolkit's default quantized sampling model (qfloat8 experts and text encoder).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import hashlib
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from .demo_model import TRANSFORMER_CONFIG as TINY_TRANSFORMER_CONFIG

BF16 = torch.bfloat16
GIB = 1024**3
SCHEMA = "wan-parity-bench/1"
TEXT_LEN = 512  # UMT5 sequence length the pipeline always pads to

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

DEFAULT_SIZES = {"a14b": "832x480x41,1024x1024x41", "tiny": "64x64x9,96x48x9"}
NOMINAL_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0, "H800": 989.0, "A100": 312.0}
PROMPT = "a cat walks slowly across a sunny kitchen floor and looks at the camera"
NEGATIVE = "Bright colors, overexposed, static, blurred details, subtitles, worst quality, low quality"
GUIDANCE = 4.0


def synthetic_configs(kind: str) -> dict:
    from . import demo_model

    if kind == "a14b":
        return {"transformer": A14B_TRANSFORMER_CONFIG, "vae": A14B_VAE_CONFIG, "text_encoder": UMT5_XXL_CONFIG}
    if kind == "tiny":
        return {"transformer": demo_model.TRANSFORMER_CONFIG, "vae": demo_model.VAE_CONFIG,
                "text_encoder": demo_model.TEXT_ENCODER_CONFIG}
    raise ValueError(f"unknown synthetic model {kind!r}")


# ---------------------------------------------------------------------------------------------------------------------
# FLOP bound (../shared/DIFFUSERS-FACTS.md, section 6, outside the repo)
# ---------------------------------------------------------------------------------------------------------------------

def parse_size(text: str) -> tuple[int, int, int]:
    """``WxHxF`` -> (width, height, frames); width/height multiples of 16, frames 4k+1."""
    try:
        w, h, f = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"size {text!r} is not WxHxF (e.g. 832x480x41)") from None
    if w % 16 or h % 16 or (f - 1) % 4 or f < 1:
        raise ValueError(f"size {text!r}: width and height must be multiples of 16 and frames 4k+1")
    return w, h, f


def tokens(width: int, height: int, frames: int) -> int:
    """Transformer sequence length L = F_lat * (H/16) * (W/16) (VAE x8 spatial, x4 temporal; patch (1,2,2))."""
    return ((frames - 1) // 4 + 1) * (height // 16) * (width // 16)


def transformer_dims(config: dict) -> tuple[int, int, int]:
    return config["num_attention_heads"] * config["attention_head_dim"], config["ffn_dim"], config["num_layers"]


def flops_per_forward(L: int, d: int, f: int, layers: int, text_len: int = TEXT_LEN) -> float:
    """``layers * [(12d^2 + 4df)L + 4dL^2 + 4dL*Lt + 4d^2*Lt]``: linears, self-attention core, cross-attention core,
    cross-attention K/V on the text; embedders and the head (< 0.1 %) are ignored. Multiply-add = 2 FLOPs."""
    return float(layers) * ((12 * d * d + 4 * d * f) * L + 4 * d * L * L + 4 * d * L * text_len + 4 * d * d * text_len)


def nominal_tflops(device_name: str) -> float | None:
    for key, value in NOMINAL_BF16_TFLOPS.items():
        if all(part in device_name for part in key.split()):
            return value
    return None


# ---------------------------------------------------------------------------------------------------------------------
# Timing and memory
# ---------------------------------------------------------------------------------------------------------------------

class Clock:
    """Wall time with a device synchronise before every reading, and per-phase peak memory on CUDA."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def now(self) -> float:
        self.sync()
        return time.perf_counter()

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak(self) -> dict:
        if not self.cuda:
            return {}
        return {"peak_allocated_gib": round(torch.cuda.max_memory_allocated(self.device) / GIB, 3),
                "peak_reserved_gib": round(torch.cuda.max_memory_reserved(self.device) / GIB, 3)}


def measure_matmul_peak(device: torch.device, clock: Clock) -> dict:
    """bf16 GEMM throughput of this device, used as the peak for the FLOP bound (8192^3 on CUDA)."""
    n, iters = (8192, 30) if device.type == "cuda" else (512, 5)
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=BF16, generator=gen)
    b = torch.randn(n, n, device=device, dtype=BF16, generator=gen)
    for _ in range(3):
        a @ b
    t0 = clock.now()
    for _ in range(iters):
        a @ b
    seconds = clock.now() - t0
    del a, b
    tflops = 2 * n**3 * iters / seconds / 1e12
    return {"tflops": round(tflops, 1) if tflops > 10 else float(f"{tflops:.3g}"), "gemm": f"{n}x{n}x{n} bf16", "iterations": iters}


def measure_attention(device: torch.device, clock: Clock, L: int, heads: int, head_dim: int) -> dict:
    """Throughput of the exact path's self-attention (``F.scaled_dot_product_attention``, the kernel diffusers'
    "native" backend reaches) at the render's shape: the part of a step the GEMM peak cannot account for."""
    gen = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(1, heads, L, head_dim, device=device, dtype=BF16, generator=gen) for _ in range(3))
    iters = 5 if device.type == "cuda" else 1
    torch.nn.functional.scaled_dot_product_attention(q, k, v)
    t0 = clock.now()
    for _ in range(iters):
        torch.nn.functional.scaled_dot_product_attention(q, k, v)
    seconds = (clock.now() - t0) / iters
    del q, k, v
    flops = 4.0 * L * L * heads * head_dim  # QK^T and PV
    return {"seconds": seconds, "tflops": round(flops / seconds / 1e12, 1)}


def _evict_from_page_cache(files) -> bool:
    """Ask the kernel to drop the files' cached pages, so the next read comes from the disk (no root needed)."""
    if not hasattr(os, "posix_fadvise"):
        return False
    try:
        for path in files:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
    except OSError:
        return False
    return True


def _interpreter_start_s(device: torch.device) -> float:
    """Wall time of a fresh Python that imports the render stack and opens the device: a per-preview script's toll."""
    code = ("import torch, diffusers, transformers, harness.render.pipeline; "
            f"torch.zeros(1, device={str(device)!r}).sum().item()")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=300)
    return time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------------------------------
# Synthetic models
# ---------------------------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _building_on(device, dtype=BF16):
    """Allocate and initialise parameters directly on ``device`` in ``dtype`` (default init runs on the device)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def _param_stats(model: torch.nn.Module) -> dict:
    params = sum(p.numel() for p in model.parameters())
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    return {"params": params, "gib": round(nbytes / GIB, 3)}


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

    def _seeded(self, offset: int):
        torch.manual_seed(self.seed * 1000 + offset)

    def transformer(self, expert: str, to=None, num_layers: int | None = None) -> torch.nn.Module:
        """``num_layers`` cuts the block stack (full width), for the disk-load probe."""
        from diffusers import WanTransformer3DModel

        config = self.configs["transformer"] | ({"num_layers": num_layers} if num_layers else {})
        self._seeded(1 if expert == "high" else 2)
        with _building_on(self.device):
            model = WanTransformer3DModel(**config)
        # like ai-toolkit's `.to(bf16)`: the rope buffers and fp32-kept modules become bf16 too
        return model.to(device=to or self.device, dtype=BF16).eval().requires_grad_(False)

    def vae(self, to=None) -> torch.nn.Module:
        from diffusers import AutoencoderKLWan

        self._seeded(3)
        with _building_on(self.device):
            model = AutoencoderKLWan(**self.configs["vae"])
        return model.to(device=to or self.device, dtype=BF16).eval().requires_grad_(False)

    def text_encoder(self, to=None) -> torch.nn.Module:
        from transformers import UMT5Config, UMT5EncoderModel

        self._seeded(4)
        with _building_on(self.device):
            model = UMT5EncoderModel(UMT5Config(**self.configs["text_encoder"]))
        return model.to(device=to or self.device, dtype=BF16).eval().requires_grad_(False)

    def tokenizer(self):
        if self._tokenizer is None:
            from .demo_model import build_tokenizer

            self._tokenizer = build_tokenizer()  # token ids don't matter for cost: every prompt is padded to 512
        return self._tokenizer

    def bundle(self):
        """A ModelBundle built directly on the device (offload none)."""
        from .render.models import ModelBundle

        with torch.no_grad():
            transformer, transformer_2 = self.transformer("high"), self.transformer("low")
            vae, text_encoder = self.vae(), self.text_encoder()
        synthetic = Path(f"<synthetic {self.kind}>")
        return ModelBundle(base_dir=synthetic, vae_dir=synthetic, device=self.device, transformer=transformer,
                           transformer_2=transformer_2, vae=vae, text_encoder=text_encoder, tokenizer=self.tokenizer(),
                           cast_whole_bf16=True, notes=[f"synthetic {self.kind} model, random bf16 weights"])


# ---------------------------------------------------------------------------------------------------------------------
# Instrumented render (the harness's exact path)
# ---------------------------------------------------------------------------------------------------------------------

def _control_image(width: int, height: int, seed: int):
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _sample(width: int, height: int, frames: int, steps: int, seed: int = 42):
    from .spec import SampleSpec

    return SampleSpec(index=0, prompt=PROMPT, negative_prompt=NEGATIVE, seed=seed, width=width, height=height,
                      num_frames=frames, guidance_scale=GUIDANCE, sample_steps=steps, network_multiplier=1.0, fps=16,
                      ctrl_img=None)


def experts_for_steps(profile, steps: int) -> list[str]:
    from .render.schedule import expert_for, make_scheduler, set_timesteps

    scheduler = make_scheduler(profile)
    return [expert_for(t, profile) for t in set_timesteps(scheduler, profile, steps, "cpu")]


def short_render_steps(profile, timed_per_expert: int) -> int:
    """Fewest steps whose schedule gives each expert its first (warm-up) step plus ``timed_per_expert`` more."""
    for steps in range(2, 200):
        experts = experts_for_steps(profile, steps)
        if min(experts.count("high"), experts.count("low")) >= timed_per_expert + 1:
            return steps
    raise ValueError("no schedule splits the steps between the experts")


@contextlib.contextmanager
def _wrapped_method(obj, name: str, wrapper):
    had_own = name in obj.__dict__
    own = obj.__dict__.get(name)
    original = getattr(obj, name)
    setattr(obj, name, wrapper(original))
    try:
        yield
    finally:
        if had_own:
            setattr(obj, name, own)
        else:
            delattr(obj, name)


def timed_render(bundle, sample, image, profile, prompts, clock: Clock, rng_layout=None) -> dict:
    """``render_sample`` with timers: text encoder forwards, VAE encode/decode, each denoising step; peaks per phase."""
    from .render.pipeline import render_sample

    spans: dict[str, list] = {"text_encode": [], "vae_encode": [], "vae_decode": []}
    peaks: dict[str, list] = {"text_encode": [], "vae_encode": [], "vae_decode": [], "steps": []}
    step_marks: list[float] = []

    def timing(kind):
        def wrap(method):
            def timed(*args, **kwargs):
                clock.reset_peak()
                t0 = clock.now()
                out = method(*args, **kwargs)
                t1 = clock.now()
                spans[kind].append(t1 - t0)
                peaks[kind].append(clock.peak())
                if kind == "vae_encode":
                    step_marks.append(t1)  # the denoising loop starts right after the condition is encoded
                    clock.reset_peak()
                return out
            return timed
        return wrap

    text_start = []

    def pre(module, args):
        clock.reset_peak()
        text_start.append(clock.now())

    def post(module, args, output):
        spans["text_encode"].append(clock.now() - text_start[-1])
        peaks["text_encode"].append(clock.peak())

    def progress():
        step_marks.append(clock.now())
        peaks["steps"].append(clock.peak())
        clock.reset_peak()

    handles = [bundle.text_encoder.register_forward_pre_hook(pre), bundle.text_encoder.register_forward_hook(post)]
    try:
        with _wrapped_method(bundle.vae, "encode", timing("vae_encode")), \
                _wrapped_method(bundle.vae, "decode", timing("vae_decode")):
            t0 = clock.now()
            render = render_sample(bundle, sample, image, profile, prompts, progress=progress, rng_layout=rng_layout)
            total = clock.now() - t0
    finally:
        for handle in handles:
            handle.remove()
    per_step = 2 if sample.guidance_scale > 1.0 else 1
    experts = [render.trace[i * per_step][0] for i in range(len(render.trace) // per_step)]
    steps = [b - a for a, b in zip(step_marks, step_marks[1:])]
    return {"total_s": total, "text_encode_s": sum(spans["text_encode"]), "text_forwards": len(spans["text_encode"]),
            "vae_encode_s": sum(spans["vae_encode"]), "vae_decode_s": sum(spans["vae_decode"]),
            "steps_s": steps, "experts": experts, "peaks": peaks, "frames": render.frames,
            "sha256": hashlib.sha256(render.frames.tobytes()).hexdigest()}


def step_times_by_expert(result: dict) -> dict:
    """Per expert: its first step (warm-up, expert swap) and the median of the rest."""
    out = {}
    for expert in ("high", "low"):
        times = [t for t, e in zip(result["steps_s"], result["experts"]) if e == expert]
        if times:
            rest = times[1:] or times
            out[expert] = {"first_s": times[0], "median_s": statistics.median(rest), "timed": len(times[1:])}
    return out


def extrapolate_preview(result: dict, by_expert: dict, profile, preview_steps: int) -> float:
    """The measured short render plus the steps it lacks, each at its expert's median step time."""
    target = experts_for_steps(profile, preview_steps)
    extra = 0.0
    for expert in ("high", "low"):
        missing = target.count(expert) - result["experts"].count(expert)
        extra += missing * by_expert[expert]["median_s"]
    return result["total_s"] + extra


def _max_peak(peaks: list[dict]) -> dict:
    if not peaks or not peaks[0]:
        return {}
    return {k: max(p[k] for p in peaks) for k in peaks[0]}


# ---------------------------------------------------------------------------------------------------------------------
# Fast mode (declared non-exact)
# ---------------------------------------------------------------------------------------------------------------------

ATTENTION_CANDIDATES = ("_flash_3", "flash", "_native_cudnn", "native")


def pick_attention_backend(device: torch.device) -> tuple[str, list[str]]:
    """The first backend of ATTENTION_CANDIDATES whose requirements are met and that runs a small bf16 attention on
    this device close to SDPA's result. Returns (name, reasons the others were passed over)."""
    from diffusers.models.attention_dispatch import (AttentionBackendName, _check_attention_backend_requirements,
                                                     dispatch_attention_fn)

    gen = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(1, 256, 4, 128, device=device, dtype=BF16, generator=gen) for _ in range(3))
    reference = dispatch_attention_fn(q, k, v, backend=AttentionBackendName("native"))
    skipped = []
    for name in ATTENTION_CANDIDATES:
        try:
            backend = AttentionBackendName(name)
            _check_attention_backend_requirements(backend)
            out = dispatch_attention_fn(q, k, v, backend=backend)
            if not torch.allclose(out.float(), reference.float(), atol=3e-2, rtol=3e-2):
                raise RuntimeError("result differs from SDPA")
            return name, skipped
        except Exception as exc:  # noqa: BLE001 - any failure means: not usable here
            skipped.append(f"{name}: {str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__}")
    return "native", skipped


@contextlib.contextmanager
def fast_mode(bundle, attention_backend: str, compile_backend: str = "inductor"):
    """Compile every transformer block in place (``fullgraph=False``, default mode) and route attention to
    ``attention_backend`` through each processor (not the process-global registry); all undone on exit."""
    from diffusers.models.attention_dispatch import AttentionBackendName

    backend = AttentionBackendName(attention_backend)
    processors, blocks = [], []
    for model in bundle.experts.values():
        for module in model.modules():
            processor = getattr(module, "processor", None)
            if processor is not None and hasattr(processor, "_attention_backend"):
                processors.append((processor, processor._attention_backend))
                processor._attention_backend = backend
        for block in model.blocks:
            block.compile(backend=compile_backend)
            blocks.append(block)
    try:
        yield
    finally:
        for processor, previous in processors:
            processor._attention_backend = previous
        for block in blocks:
            block._compiled_call_impl = None
        torch._dynamo.reset()


# ---------------------------------------------------------------------------------------------------------------------
# LoRA files
# ---------------------------------------------------------------------------------------------------------------------

def write_synthetic_lora(path: Path, model: torch.nn.Module, rank: int, seed: int, name: str) -> Path:
    """An ai-toolkit-layout LoRA for ``model``: every block's 10 linears, float16 (ai-toolkit's default save dtype)."""
    from safetensors.torch import save_file

    from .demo_model import aitk_metadata, lora_module_names

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


# ---------------------------------------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------------------------------------

class Bench:
    def __init__(self, args):
        self.args = args
        self.device = torch.device(args.device)
        self.clock = Clock(self.device)
        self.start = time.perf_counter()
        self.rows: list[dict] = []
        self.doc: dict = {}
        self.models = SyntheticModels(args.synthetic, self.device, seed=args.seed)
        from .render.profiles import get_profile

        self.profile = get_profile(args.profile)
        self.sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
        self.fast_sizes = [parse_size(s) for s in args.fast_sizes.split(",") if s.strip()] if args.fast_sizes else self.sizes
        self.hashes: dict[tuple, str] = {}
        self.render_s: dict[tuple, float] = {}
        self.resident_steps: dict[str, dict] = {}
        self.frames: dict[tuple, np.ndarray] = {}
        self.lora_paths: dict | None = None  # checkpoints a and b, once written
        d, f, layers = transformer_dims(self.models.configs["transformer"])
        self.dims = (d, f, layers)

    # -- bookkeeping ---------------------------------------------------------------------------------------------
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def over_budget(self, needed_s: float = 0.0) -> bool:
        return self.args.budget_s is not None and self.elapsed() + needed_s > self.args.budget_s

    def row(self, phase: str, seconds: float | None, mode: str = "exact", offload: str = "none", size: str = "-",
            status: str = "ok", note: str = "", extrapolated: bool = False, peak: dict | None = None, **extra) -> dict:
        entry = {"phase": phase, "mode": mode, "exact": mode != "fast", "offload": offload, "size": size,
                 "seconds": None if seconds is None else round(seconds, 4), "status": status,
                 "extrapolated": extrapolated, "note": note}
        entry.update(peak or {})
        entry.update(extra)
        self.rows.append(entry)
        self.log(entry)
        self.save()
        return entry

    def log(self, entry: dict) -> None:
        secs = "-" if entry["seconds"] is None else f"{entry['seconds']:.3f}s"
        mem = f" peak {entry['peak_allocated_gib']:.1f} GiB" if entry.get("peak_allocated_gib") is not None else ""
        ratio = f" x{entry['ratio_to_bound']:.2f} bound" if entry.get("ratio_to_bound") is not None else ""
        print(f"[{self.elapsed():6.1f}s] {entry['phase']:<28} {entry['mode']:<5} {entry['offload']:<10} "
              f"{entry['size']:<15} {secs:>10}{ratio}{mem} {entry['status']} {entry['note']}", flush=True)

    def save(self) -> None:
        self.doc["rows"] = self.rows
        self.doc["elapsed_s"] = round(self.elapsed(), 1)
        if self.args.json:
            from .fsutil import write_json_atomic

            write_json_atomic(self.args.json, self.doc)
        if self.args.markdown and self.doc.get("peak"):
            from .fsutil import write_text_atomic

            write_text_atomic(self.args.markdown, markdown_report(self.doc))

    def size_label(self, size) -> str:
        return "x".join(str(v) for v in size)

    def bound(self, size) -> dict:
        L = tokens(*size)
        fwd = flops_per_forward(L, *self.dims)
        peak = self.doc["peak"]["tflops"] * 1e12
        out = {"tokens": L, "pflop_per_forward": round(fwd / 1e15, 6),
               "step_bound_s": 2 * fwd / peak}  # two forwards per step (CFG)
        nominal = self.doc["peak"].get("nominal_tflops")
        if nominal:
            out["step_bound_nominal_s"] = 2 * fwd / (nominal * 1e12)
        attention = self.doc.get("attention", {}).get(self.size_label(size))
        if attention:  # what the exact path can reach: GEMM work at the GEMM peak, self-attention at SDPA's rate
            d, _, layers = self.dims
            rest = fwd - layers * 4.0 * d * L * L
            out["step_attainable_s"] = 2 * (rest / peak + layers * attention["seconds"])
        return out

    # -- phases --------------------------------------------------------------------------------------------------
    def header(self) -> None:
        import diffusers
        import transformers

        machine = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
                   "diffusers": diffusers.__version__, "transformers": transformers.__version__,
                   "device": str(self.device), "cpu": platform.processor() or platform.machine(),
                   "cpu_threads": torch.get_num_threads()}
        if self.device.type == "cuda":
            props = torch.cuda.get_device_properties(self.device)
            machine.update({"gpu": props.name, "gpu_memory_gib": round(props.total_memory / GIB, 1),
                            "cudnn": torch.backends.cudnn.version()})
        self.doc.update({"schema": SCHEMA, "synthetic": self.args.synthetic,
                         "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                         "machine": machine, "args": {k: v for k, v in vars(self.args).items() if k != "json"},
                         "profile": self.profile.name, "preview_steps": self.args.preview_steps,
                         "guidance_scale": GUIDANCE, "configs": self.models.configs})

    def model_shapes(self) -> None:
        """Parameter counts from a meta-device build (no memory), also what ``--device meta`` prints."""
        meta = SyntheticModels(self.args.synthetic, "meta", seed=self.args.seed)
        with torch.no_grad():
            stats = {"transformer": _param_stats(meta.transformer("high")),
                     "transformer_2": _param_stats(meta.transformer("low")),
                     "text_encoder": _param_stats(meta.text_encoder()), "vae": _param_stats(meta.vae())}
        block = meta.transformer("high").blocks[0]
        stats["transformer"]["per_block_params"] = sum(p.numel() for p in block.parameters())
        stats["total_gib"] = round(sum(v["gib"] for v in stats.values() if isinstance(v, dict)), 2)
        self.doc["models"] = stats
        for name, s in stats.items():
            if isinstance(s, dict):
                print(f"{name:<14} {s['params']:>16,} params  {s['gib']:8.3f} GiB bf16"
                      + (f"  ({s['per_block_params']:,} per block)" if "per_block_params" in s else ""))
        print(f"{'total':<14} {'':>16}         {stats['total_gib']:8.2f} GiB")

    def peak_matmul(self) -> None:
        peak = measure_matmul_peak(self.device, self.clock)
        if self.device.type == "cuda":
            peak["nominal_tflops"] = nominal_tflops(torch.cuda.get_device_name(self.device))
            peak["nominal_note"] = "H100 SXM dense bf16 (no sparsity): 989 TFLOP/s"
        self.doc["peak"] = peak
        self.row("bf16 GEMM peak", None, note=f"{peak['tflops']} TFLOP/s measured ({peak['gemm']})", tflops=peak["tflops"])
        if self.device.type == "cuda":
            config = self.models.configs["transformer"]
            self.doc["attention"] = {
                self.size_label(s): measure_attention(self.device, self.clock, tokens(*s), config["num_attention_heads"],
                                                      config["attention_head_dim"]) for s in self.sizes}
            for label, a in self.doc["attention"].items():
                self.row("self-attention (SDPA)", a["seconds"], size=label, tflops=a["tflops"],
                         note=f"one layer's F.scaled_dot_product_attention, {a['tflops']} TFLOP/s: the exact path "
                              "must keep this kernel")
        self.doc["flop_bound"] = {self.size_label(s): self.bound(s) for s in self.sizes}

    def build(self):
        """Instantiate the resident bundle on the device (seconds: no host round trip, no fp32 copy)."""
        self.clock.reset_peak()
        t0 = self.clock.now()
        bundle = self.models.bundle()
        self.row("instantiate", self.clock.now() - t0, peak=self.clock.peak(),
                 note="built on the device from the configs (random bf16 weights)")
        return bundle

    def render_rows(self, bundle, size, mode: str, offload: str, prompts, steps: int | None = None) -> dict | None:
        label = self.size_label(size)
        steps = steps or short_render_steps(self.profile, self.args.steps_timed)
        sample = _sample(*size, steps=steps)
        image = _control_image(size[0], size[1], seed=7)
        self.doc["in_progress"] = f"{mode} {offload} {label} {steps}-step render"
        self.save()
        result = timed_render(bundle, sample, image, self.profile, prompts, self.clock)
        self.doc.pop("in_progress", None)
        self.hashes[(mode, offload, label, steps)] = result["sha256"]
        if mode == "exact" and offload == "none":
            self.frames[(label, steps)] = result["frames"]
        peaks = result["peaks"]
        if result["text_forwards"]:
            self.row("text encode (2 prompts)", result["text_encode_s"], mode, offload, label,
                     peak=_max_peak(peaks["text_encode"]), note=f"UMT5, {TEXT_LEN} tokens each")
        self.row("vae encode (condition)", result["vae_encode_s"], mode, offload, label, peak=_max_peak(peaks["vae_encode"]))
        by_expert = step_times_by_expert(result)
        if mode == "exact" and offload == "none" and all(t["timed"] for t in by_expert.values()):
            self.resident_steps[label] = by_expert
        if offload == "experts" and label in self.resident_steps:
            # after its swap-in an expert runs exactly as resident: extrapolate with the resident step times
            extrapolate_with = self.resident_steps[label]
        else:
            extrapolate_with = by_expert
        bound = self.bound(size)
        for expert, times in by_expert.items():
            step_peaks = [p for p, e in zip(peaks["steps"], result["experts"]) if e == expert]
            self.row(f"step {expert} (cond+uncond)", times["median_s"], mode, offload, label,
                     peak=_max_peak(step_peaks), first_step_s=round(times["first_s"], 4), timed_steps=times["timed"],
                     flop_bound_s=round(bound["step_bound_s"], 4),
                     ratio_to_bound=round(times["median_s"] / bound["step_bound_s"], 3),
                     ratio_to_attainable=(round(times["median_s"] / bound["step_attainable_s"], 3)
                                          if "step_attainable_s" in bound else None),
                     achieved_tflops=round(2 * bound["pflop_per_forward"] * 1e3 / times["median_s"], 1),
                     note=(f"median of {times['timed']} step(s) after the expert's first ({times['first_s']:.3f}s)"
                           if times["timed"] else "the expert's only step" + (
                               " (includes moving its weights in)" if offload != "none" else "")))
        self.row("vae decode", result["vae_decode_s"], mode, offload, label, peak=_max_peak(peaks["vae_decode"]))
        all_peaks = [p for group in peaks.values() for p in group]
        self.row(f"render ({steps} steps)", result["total_s"], mode, offload, label, peak=_max_peak(all_peaks),
                 sha256=result["sha256"], note="measured: render_sample end to end")
        preview = extrapolate_preview(result, extrapolate_with, self.profile, self.args.preview_steps)
        extrapolated = self.args.preview_steps != steps
        self.row(f"preview ({self.args.preview_steps} steps)", preview, mode, offload, label, extrapolated=extrapolated,
                 note=(f"extrapolated: the {steps}-step render + {self.args.preview_steps - steps} more steps at the "
                       "per-expert median" if extrapolated else "measured"))
        result["preview_s"] = preview
        result["steps"] = steps
        return result

    def guarded_render(self, bundle, size, mode: str, offload: str, prompts, steps: int | None = None) -> dict | None:
        """``render_rows``, with out-of-memory recorded as a row instead of ending the benchmark."""
        try:
            result = self.render_rows(bundle, size, mode, offload, prompts, steps)
        except torch.OutOfMemoryError as exc:
            self.row("render", None, mode, offload, self.size_label(size), status="error",
                     note=f"out of memory: {str(exc).splitlines()[0][:160]}", peak=self.clock.peak())
            gc.collect()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            return None
        self.render_s[(mode, offload, self.size_label(size), result["steps"])] = result["total_s"]
        self.exactness_summary()
        return result

    def estimate(self, size, mode: str, offload: str, steps: int | None = None) -> float:
        """Seconds a render phase will take, for the budget check: the resident exact render of that size, plus for
        offload modes the weights it moves at the measured host<->device rate, plus compiling for fast mode;
        --reserve-s before anything is measured."""
        steps = steps or short_render_steps(self.profile, self.args.steps_timed)
        label = self.size_label(size)
        base = self.render_s.get(("exact", "none", label, steps))
        if base is None:
            measured = [(k[3], v) for k, v in self.render_s.items() if k[:3] == ("exact", "none", label)]
            if not measured:
                return self.args.reserve_s
            k, v = measured[0]
            base = v * steps / k
        moved = 0.0
        if offload != "none":
            stats = self.doc.get("models", {})
            expert = stats.get("transformer", {}).get("gib", 0) * GIB
            text = stats.get("text_encoder", {}).get("gib", 0) * GIB
            rate = self.doc.get("host_device_gbps", 2.0) * 1e9
            forwards = 2 * steps  # CFG
            per_render = 2 * text + 2 * expert if offload == "experts" else 2 * (forwards * expert + 2 * text)
            moved = per_render / rate
        return base + moved + (self.args.compile_estimate_s if mode == "fast" else 0.0)

    def measured_preview(self, bundle, size, prompts) -> None:
        """Tiny only: a real full-length preview, to check the extrapolation."""
        label = self.size_label(size)
        sample = _sample(*size, steps=self.args.preview_steps)
        result = timed_render(bundle, sample, _control_image(size[0], size[1], seed=7), self.profile, prompts, self.clock)
        self.row(f"preview ({self.args.preview_steps} steps)", result["total_s"], size=label,
                 note="measured end to end (checks the extrapolated row)")

    def write_loras(self, bundle, tmp: Path) -> dict:
        """Two rank-r checkpoints (a, b), each a high + low file, shaped like ai-toolkit's."""
        rank = self.args.lora_rank
        paths = {ckpt: {expert: write_synthetic_lora(tmp / f"bench_{ckpt}_{expert}_noise.safetensors",
                                                     bundle.expert(expert), rank, seed=ord(ckpt) * 10 + i,
                                                     name=f"bench_{ckpt}")
                        for i, expert in enumerate(("high", "low"))}
                 for ckpt in ("a", "b")}
        self.lora_paths = paths
        return paths

    def lora_switch(self, bundle, merged: bool) -> float | None:
        """Time switching from checkpoint a to checkpoint b (both experts) without reloading the model: read the
        files and apply them (unmerged: hooks; merged: restore a's originals, merge b)."""
        from .render import lora as lora_mod

        kind = "merged" if merged else "unmerged"
        paths = self.lora_paths
        size_mb = sum(p.stat().st_size for p in paths["a"].values()) / 1e6
        info = {"rank": self.args.lora_rank, "checkpoint_mb": round(size_mb, 1)}
        layers_a = {e: lora_mod.read_lora_file(p) for e, p in paths["a"].items()}
        try:
            with lora_mod.applied(paths["a"], layers_a, bundle.experts, 1.0, merged=merged):
                self.clock.sync()
            self.clock.reset_peak()
            t0 = self.clock.now()
            layers_b = {e: lora_mod.read_lora_file(p) for e, p in paths["b"].items()}
            t_read = self.clock.now()
            with lora_mod.applied(paths["b"], layers_b, bundle.experts, 1.0, merged=merged):
                t_apply = self.clock.now()
            t_restore = self.clock.now()
        except torch.OutOfMemoryError as exc:
            self.row(f"lora switch ({kind})", None, status="error", note=f"out of memory: {str(exc)[:100]}", **info)
            return None
        how = ("hooks only, the base weights are untouched" if not merged else
               "merging b into every targeted weight; a's originals wait in pinned host memory and are copied back")
        # a switch = read the new files + apply them + later restore the base (timed here on b's exit)
        self.row(f"lora switch ({kind})", t_restore - t0, peak=self.clock.peak(),
                 note=f"read 2 files {t_read - t0:.3f}s + apply {t_apply - t_read:.3f}s + restore "
                      f"{t_restore - t_apply:.3f}s; rank {self.args.lora_rank}, both experts, {size_mb:.0f} MB fp16 "
                      f"per checkpoint; {how}", **info)
        return t_restore - t0

    def lora_step(self, bundle, size, prompts, paths) -> None:
        """The exact unmerged-LoRA path (fp32 hooks on 400 linears per expert) costs more per step than base weights."""
        from .render import lora as lora_mod

        layers = {e: lora_mod.read_lora_file(p) for e, p in paths.items()}
        with lora_mod.applied(paths, layers, bundle.experts, 1.0, merged=False):
            result = timed_render(bundle, _sample(*size, steps=short_render_steps(self.profile, 1)),
                                  _control_image(size[0], size[1], seed=7), self.profile, prompts, self.clock)
        bound = self.bound(size)
        for expert, times in step_times_by_expert(result).items():
            self.row(f"step {expert}, unmerged LoRA", times["median_s"], size=self.size_label(size),
                     ratio_to_bound=round(times["median_s"] / bound["step_bound_s"], 3),
                     note=f"rank {self.args.lora_rank} LoRA hooks (fp32 A/B) on every block linear")

    def n_previews_tiny(self, tmp: Path) -> None:
        """Real measurement on the tiny model: N previews of one LoRA, loading per preview vs one loaded bundle."""
        from .demo_model import build_tiny_model, make_demo_lora_pair
        from .render import lora as lora_mod
        from .render.models import load_bundle
        from .render.text import PromptCache

        n, size = self.args.previews, self.sizes[0]
        model_dir = build_tiny_model(tmp / "tiny-model")
        high, low = make_demo_lora_pair(model_dir, tmp / "tiny-lora", "bench", rank=4)
        paths = {"high": high, "low": low}
        image = _control_image(size[0], size[1], seed=7)

        def render(bundle, prompts, layers, i):
            with lora_mod.applied(paths, layers, bundle.experts, 1.0, merged=False):
                from .render.pipeline import render_sample

                return render_sample(bundle, _sample(*size, steps=self.args.preview_steps, seed=100 + i), image,
                                     self.profile, prompts).frames

        t0 = self.clock.now()
        naive = []
        for i in range(n):
            bundle = load_bundle(model_dir, model_dir / "vae", self.device)
            layers = {e: lora_mod.read_lora_file(p) for e, p in paths.items()}
            naive.append(render(bundle, PromptCache(), layers, i))
            del bundle
        naive_s = self.clock.now() - t0
        t0 = self.clock.now()
        bundle = load_bundle(model_dir, model_dir / "vae", self.device)
        prompts = PromptCache()
        layers = {e: lora_mod.read_lora_file(p) for e, p in paths.items()}
        cached = [render(bundle, prompts, layers, i) for i in range(n)]
        cached_s = self.clock.now() - t0
        identical = all(np.array_equal(a, b) for a, b in zip(naive, cached))
        self.doc["n_previews"] = {"n": n, "naive_s": round(naive_s, 3), "one_process_s": round(cached_s, 3),
                                  "ratio": round(cached_s / naive_s, 3), "bit_identical": identical,
                                  "measured": True, "size": self.size_label(size)}
        self.row(f"{n} previews, one process", cached_s, size=self.size_label(size), ratio_to_naive=round(cached_s / naive_s, 3),
                 bit_identical=identical, note=f"vs {naive_s:.2f}s loading the model per preview (measured, load_bundle "
                                               f"from disk); target <= 0.8x")

    def load_probe(self, tmp: Path) -> dict:
        """What a per-preview load costs here: a full-width A14B transformer cut to ``--load-probe-layers`` blocks is
        saved as diffusers safetensors and read back onto the device through the harness's own loader
        (``load_transformer``): once after evicting the files from the page cache (cold) and once warm. Its rates,
        applied to all weights of the pipeline, are the naive path's load time; a fresh interpreter's start (imports
        and CUDA context) is what a per-preview *script* pays on top."""
        from .render.models import load_transformer

        layers = self.args.load_probe_layers
        folder = tmp / "load-probe"
        with torch.no_grad():
            model = self.models.transformer("high", to="cpu", num_layers=layers)
            t0 = self.clock.now()
            model.save_pretrained(str(folder / "transformer"), safe_serialization=True)
            write_s = self.clock.now() - t0
            del model
            files = list((folder / "transformer").glob("*.safetensors"))
            nbytes = sum(f.stat().st_size for f in files)
            evicted = _evict_from_page_cache(files)
            times = {}
            for kind in ("cold", "warm"):
                t0 = self.clock.now()
                loaded = load_transformer(folder, "transformer", self.device, cast_whole_bf16=True)
                times[kind] = self.clock.now() - t0
                del loaded
                self.release()
        shutil.rmtree(folder, ignore_errors=True)
        total = self.doc["models"]["total_gib"] * GIB
        probe = {"layers": layers, "bytes": nbytes, "gib": round(nbytes / GIB, 2), "write_s": round(write_s, 2),
                 "evicted": evicted, "load_s": {k: round(v, 3) for k, v in times.items()},
                 "gb_per_s": {k: round(nbytes / v / 1e9, 2) for k, v in times.items()},
                 "pipeline_load_s": {k: round(total * v / nbytes, 1) for k, v in times.items()},
                 "startup_s": round(_interpreter_start_s(self.device), 2)}
        self.doc["load_probe"] = probe
        self.row("load from disk", times["warm"], note=f"{nbytes / GIB:.2f} GiB transformer ({layers} of {self.dims[2]} "
                 f"blocks) through load_transformer: warm {probe['gb_per_s']['warm']} GB/s, cold "
                 f"{probe['gb_per_s']['cold']} GB/s ({'evicted with posix_fadvise' if evicted else 'eviction unavailable'});"
                 f" the whole {total / GIB:.1f} GiB pipeline: {probe['pipeline_load_s']['warm']:.0f}s warm, "
                 f"{probe['pipeline_load_s']['cold']:.0f}s cold; a fresh interpreter starts in {probe['startup_s']}s")
        return probe

    def n_previews_derived(self, probe: dict, result: dict, lora_s: float | None) -> None:
        """A14B: N previews in one process vs loading the pipeline per preview, from measured parts (not run end to
        end: the 64 GiB pipeline does not fit the device machine's disk). One process loads once, encodes the prompts
        once and warms the kernels once; the naive path pays all three per preview."""
        n = self.args.previews
        preview, text = result["preview_s"], result["text_encode_s"]
        warmup = sum(max(0.0, t["first_s"] - t["median_s"]) for t in step_times_by_expert(result).values())
        lora = lora_s or 0.0
        variants = {}
        for name, per_load in (("service, warm cache", probe["pipeline_load_s"]["warm"]),
                               ("service, cold cache", probe["pipeline_load_s"]["cold"]),
                               ("script per preview, cold cache", probe["pipeline_load_s"]["cold"] + probe["startup_s"])):
            naive = n * (per_load + preview + lora)
            cached = per_load + n * (preview + lora) - (n - 1) * (text + warmup)
            variants[name] = {"per_preview_load_s": round(per_load, 1), "naive_s": round(naive, 1),
                              "one_process_s": round(cached, 1), "ratio": round(cached / naive, 3)}
        primary = variants["service, warm cache"]
        size = self.size_label(self.sizes[0])
        self.doc["n_previews"] = {"n": n, "size": size, "measured": False, **primary, "variants": variants,
                                  "note": "derived from measured parts: load (the probe's rate x the whole pipeline), "
                                          "preview, LoRA switch, prompt encoding and first-step warm-up as measured "
                                          "above; the warm-cache service is the naive path's best case"}
        others = "; ".join(f"{k}: {v['ratio']:.2f}x" for k, v in variants.items() if v is not primary)
        self.row(f"{n} previews, one process", primary["one_process_s"], size=size, extrapolated=True,
                 ratio_to_naive=primary["ratio"],
                 note=f"derived: vs {primary['naive_s']:.0f}s loading the pipeline per preview from a warm page cache "
                      f"({primary['per_preview_load_s']:.0f}s per load); {others}; target <= 0.8x")

    def run_quantized(self, bundle, prompts) -> None:
        """ai-toolkit's default sampling model (qfloat8 experts + text encoder, ai-toolkit >= 0.10.22 exclusions),
        quantized in place on the device: its cost and memory; the last phase, since the bf16 weights are gone."""
        from .render.quant import QuantPlan, apply_plan

        plan = QuantPlan(transformer_qtype="qfloat8", text_encoder_qtype="qfloat8",
                         exclude=("condition_embedder*", "proj_out*"), aitk_version="0.10.22")
        self.clock.reset_peak()
        t0 = self.clock.now()
        apply_plan(bundle, plan)
        self.release()
        cuda = self.device.type == "cuda"
        self.row("quantize (qfloat8)", self.clock.now() - t0, mode="qfloat8", peak=self.clock.peak(),
                 note=f"optimum-quanto on the device: {plan.summary()}"
                      + (f"; all weights now take {torch.cuda.memory_allocated(self.device) / GIB:.1f} GiB of the GPU"
                         if cuda else ""))
        for size in self.sizes:
            if self.over_budget(self.estimate(size, "qfloat8", "none")):
                self.row("render", None, mode="qfloat8", size=self.size_label(size), status="skipped", note="time budget")
                continue
            self.guarded_render(bundle, size, "qfloat8", "none", prompts)

    def release(self) -> None:
        """Free the device memory of a bundle the caller has already dropped."""
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # -- driver --------------------------------------------------------------------------------------------------
    def run(self) -> int:
        from .render.text import PromptCache

        self.header()
        self.model_shapes()
        if self.device.type == "meta":
            self.doc["note"] = "meta device: construction and parameter counts only"
            self.save()
            return 0
        self.peak_matmul()
        modes = [m for m in self.args.modes.split(",") if m]
        offloads = [o for o in self.args.offload.split(",") if o]
        tmp_root = tempfile.TemporaryDirectory(prefix="wan-bench-")
        tmp = Path(tmp_root.name)
        try:
            self.run_resident(modes, offloads, tmp, PromptCache)
            self.exactness_summary()
        finally:
            tmp_root.cleanup()
        self.doc["complete"] = True
        self.save()
        print_table(self.doc)
        return 0

    def run_resident(self, modes, offloads, tmp: Path, PromptCache) -> None:
        """One bundle built on the device; every phase uses those very weights. Order, cheapest insight first so a
        time budget cuts the tail: exact renders (the byte references), unmerged LoRA, fast, experts then sequential
        offload (they share the pinned host homes), merged LoRA (its parked originals reuse those pinned blocks),
        the disk-load probe, and quantization last (it replaces the bf16 weights)."""
        bundle = self.build()
        prompts = PromptCache()
        first = None
        other = [o for o in ("experts", "sequential") if o in offloads]
        if "exact" in modes:
            for size in self.sizes:
                if self.over_budget(self.estimate(size, "exact", "none")):
                    self.row("render", None, size=self.size_label(size), status="skipped", note="time budget")
                    continue
                result = self.guarded_render(bundle, size, "exact", "none", prompts)
                first = first or result
                if result and self.args.synthetic == "tiny" and self.args.preview_steps != result["steps"]:
                    self.measured_preview(bundle, size, prompts)
                offload_steps = self.offload_steps()
                if result and other and result["steps"] != offload_steps:  # the reference the offload renders match
                    self.guarded_render(bundle, size, "exact", "none", prompts, steps=offload_steps)
        lora_s = None
        if self.args.lora_rank and not self.over_budget(30.0):
            self.write_loras(bundle, tmp)
            lora_s = self.lora_switch(bundle, merged=False)
            if self.args.lora_step and "exact" in modes and not self.over_budget(self.estimate(self.sizes[0], "exact", "none")):
                self.lora_step(bundle, self.sizes[0], prompts, self.lora_paths["a"])
        if "fast" in modes:
            self.run_fast(bundle, prompts)
        for offload in other:
            self.run_offload_in_place(bundle, offload, prompts)
        if other:
            t0 = self.clock.now()
            bundle.set_offload("none")
            self.row("offload switch", self.clock.now() - t0, note=f"back from {other[-1]} to resident")
        if self.lora_paths and not self.over_budget(30.0):
            self.lora_switch(bundle, merged=True)
        if first is not None:
            if self.args.synthetic == "a14b" and self.args.load_probe_layers and not self.over_budget(40.0):
                self.n_previews_derived(self.load_probe(tmp), first, lora_s)
            elif self.args.synthetic == "tiny" and self.args.previews:
                self.n_previews_tiny(tmp)
        if self.args.quantize and not self.over_budget(30.0):
            self.run_quantized(bundle, prompts)
        del bundle, prompts
        self.release()

    def offload_steps(self) -> int:
        return short_render_steps(self.profile, 0) if self.args.offload_steps is None else self.args.offload_steps

    def run_offload_in_place(self, bundle, offload: str, prompts) -> None:
        """``bundle.set_offload(mode)``: weights move to their pinned host homes, nothing reloads; then render."""
        steps = self.offload_steps()
        sizes = [s for s in self.sizes if not self.over_budget(self.estimate(s, "exact", offload, steps) + 30)]
        if not sizes:
            self.row("offload switch", None, offload=offload, status="skipped", note="time budget")
            return
        self.clock.reset_peak()
        t0 = self.clock.now()
        bundle.set_offload(offload)
        seconds = self.clock.now() - t0
        moved = sum(p.numel() * p.element_size() for m in (bundle.transformer, bundle.transformer_2, bundle.text_encoder)
                    for p in m.parameters() if p.device.type == "cpu")
        self.row("offload switch", seconds, offload=offload, peak=self.clock.peak(),
                 note=f"bundle.set_offload({offload!r}) in place: {moved / GIB:.1f} GiB on the host"
                      + (f", {moved / seconds / 1e9:.2f} GB/s incl. pinning" if seconds > 0.5 and moved else
                         " (already parked)"))
        if offload == "experts" and self.device.type == "cuda":
            self.time_expert_upload(bundle)
        for size in self.sizes:
            if size not in sizes or self.over_budget(self.estimate(size, "exact", offload, steps)):
                self.row("render", None, offload=offload, size=self.size_label(size), status="skipped", note="time budget")
                continue
            self.guarded_render(bundle, size, "exact", offload, prompts, steps=steps)

    def time_expert_upload(self, bundle) -> None:
        """One expert swap of ``--offload experts``: upload the parked high expert (pinned, so at full link speed)."""
        nbytes = sum(p.numel() * p.element_size() for p in bundle.transformer.parameters())
        t0 = self.clock.now()
        bundle.expert("high")
        seconds = self.clock.now() - t0
        self.doc["host_device_gbps"] = round(nbytes / seconds / 1e9, 2)
        self.row("expert swap (upload)", seconds, offload="experts",
                 note=f"{nbytes / GIB:.1f} GiB from pinned host memory at {nbytes / seconds / 1e9:.1f} GB/s; parking the "
                      "other expert costs nothing (its pinned home is still valid)")

    def run_fast(self, bundle, prompts) -> None:
        if all(self.over_budget(self.estimate(size, "fast", "none")) for size in self.fast_sizes):
            self.row("render", None, mode="fast", status="skipped", note="time budget")
            return
        backend, skipped = pick_attention_backend(self.device)
        self.doc["fast"] = {"attention_backend": backend, "passed_over": skipped, "compile": "torch.compile per "
                            "WanTransformerBlock, fullgraph=False, default mode", "compile_backend": self.args.compile_backend}
        with fast_mode(bundle, backend, self.args.compile_backend):
            for size in self.fast_sizes:
                label = self.size_label(size)
                if self.over_budget(self.estimate(size, "fast", "none")):
                    self.row("render", None, mode="fast", size=label, status="skipped", note="time budget")
                    continue
                result = self.guarded_render(bundle, size, "fast", "none", prompts)
                exact = self.frames.get((label, result["steps"])) if result else None
                if result is not None and exact is not None:
                    diff = np.abs(result["frames"].astype(np.int16) - exact.astype(np.int16))
                    self.doc.setdefault("fast_vs_exact", {})[label] = {
                        "bit_identical": bool(not diff.any()), "max_abs_levels": int(diff.max()),
                        "mean_abs_levels": round(float(diff.mean()), 4)}
        self.rows.append({"phase": "note", "mode": "fast", "exact": False, "offload": "none", "size": "-",
                          "seconds": None, "status": "ok", "extrapolated": False,
                          "note": f"fast: attention backend {backend}; the first step of each expert includes compiling"})

    def exactness_summary(self) -> None:
        """Offload modes must give the same bytes as the resident exact render of the same size and steps."""
        same = {}
        for (mode, offload, label, steps), digest in self.hashes.items():
            reference = self.hashes.get(("exact", "none", label, steps))
            if mode == "exact" and offload != "none" and reference is not None:
                same[f"{offload} {label} {steps} steps"] = digest == reference
        self.doc["offload_identical"] = same


# ---------------------------------------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------------------------------------

def _fmt_s(value) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def table_rows(doc: dict) -> list[list[str]]:
    out = []
    for r in doc.get("rows", []):
        if r["phase"] == "note":
            continue
        mem = r.get("peak_allocated_gib")
        ratio = r.get("ratio_to_bound") or r.get("ratio_to_naive")
        out.append([r["phase"], r["mode"], r["offload"], r["size"],
                    _fmt_s(r["seconds"]) + (" (extrap.)" if r.get("extrapolated") else ""),
                    "-" if ratio is None else f"{ratio:.2f}",
                    "-" if mem is None else f"{mem:.1f}",
                    r["status"] if r["status"] != "ok" else "", r.get("note", "")])
    return out


HEADERS = ["phase", "mode", "offload", "size", "seconds", "ratio", "peak GiB", "status", "note"]


def print_table(doc: dict) -> None:
    rows = table_rows(doc)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(HEADERS[:-1])]
    line = "  ".join(h.ljust(w) for h, w in zip(HEADERS, widths)) + "  note"
    print(line)
    print("-" * min(len(line) + 40, 160))
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])


def markdown_report(doc: dict) -> str:
    m = doc.get("machine", {})
    peak = doc.get("peak", {})
    lines = [f"# wan-parity bench: synthetic {doc.get('synthetic')}", "",
             f"* date: {doc.get('date')}",
             f"* machine: {m.get('gpu', m.get('cpu'))} ({m.get('gpu_memory_gib', '-')} GiB), "
             f"torch {m.get('torch')}, CUDA {m.get('cuda')}, cuDNN {m.get('cudnn', '-')}, diffusers {m.get('diffusers')}, "
             f"transformers {m.get('transformers')}",
             f"* bf16 peak: {peak.get('tflops')} TFLOP/s measured ({peak.get('gemm')}); nominal "
             f"{peak.get('nominal_tflops') or '-'} TFLOP/s dense",
             f"* sampler profile {doc.get('profile')}, CFG {doc.get('guidance_scale')}, preview = "
             f"{doc.get('preview_steps')} steps; ratio = step time / FLOP-bound step time at the measured peak "
             "(for LoRA/N-preview rows: one process / per-preview load)", ""]
    models = doc.get("models", {})
    if models:
        lines += ["| model | params | GiB (bf16) |", "|---|---|---|"]
        lines += [f"| {k} | {v['params']:,} | {v['gib']} |" for k, v in models.items() if isinstance(v, dict)]
        lines.append("")
    bound = doc.get("flop_bound", {})
    if bound:
        lines += ["| size | tokens L | PFLOP / forward | bound per step (measured peak) | bound (nominal) |",
                  "|---|---|---|---|---|"]
        for size, b in bound.items():
            lines.append(f"| {size} | {b['tokens']:,} | {b['pflop_per_forward']:.3f} | {b['step_bound_s']:.3f} s | "
                         f"{b.get('step_bound_nominal_s', float('nan')):.3f} s |")
        lines.append("")
    lines += ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in r) + " |" for r in table_rows(doc)]
    lines.append("")
    for key in ("n_previews", "load_probe", "attention", "offload_identical", "fast_vs_exact", "fast"):
        if doc.get(key):
            lines.append(f"* {key}: `{json.dumps(doc[key])}`")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wan-parity bench", description=__doc__.splitlines()[0])
    p.add_argument("--synthetic", choices=("tiny", "a14b"), default="tiny", help="model architecture (random weights)")
    p.add_argument("--device", default="auto", help="cuda, cuda:N, cpu, meta (construction only) or auto")
    p.add_argument("--sizes", help="WxHxF list (default a14b: 832x480x41,1024x1024x41; tiny: 64x64x9,96x48x9)")
    p.add_argument("--fast-sizes", help="sizes for --modes fast (default: --sizes)")
    p.add_argument("--steps-timed", type=int, default=1, help="timed denoising steps per expert after its first")
    p.add_argument("--offload-steps", type=int, help="steps of the offload-mode renders (default: one per expert); "
                   "the resident mode renders the same for the byte comparison")
    p.add_argument("--preview-steps", type=int, default=30, help="steps of the (extrapolated) full preview")
    p.add_argument("--previews", type=int, default=4, help="N for the N-previews-in-one-process comparison")
    p.add_argument("--json", type=Path, help="write the results JSON here (rewritten after every row)")
    p.add_argument("--markdown", type=Path, help="write the table as Markdown here")
    p.add_argument("--modes", default="exact,fast", help="exact, fast (torch.compile + best attention; non-exact)")
    p.add_argument("--offload", default="none,experts,sequential", help="none, experts, sequential")
    p.add_argument("--profile", default="aitk-euler", help="sampler profile of the renders")
    p.add_argument("--lora-rank", type=int, help="rank of the LoRA-switch checkpoints (default a14b 32, tiny 4; 0 skips)")
    p.add_argument("--lora-step", action="store_true", help="also time a step with the unmerged LoRA hooks")
    p.add_argument("--quantize", action="store_true", help="last: quantize to qfloat8 in place (ai-toolkit's default "
                   "sampling model) and time its renders")
    p.add_argument("--load-probe-layers", type=int, default=6, help="a14b: blocks of the transformer written to disk "
                   "and loaded back to measure the per-preview load (0 skips)")
    p.add_argument("--budget-s", type=float, help="skip remaining phases that would end past this many seconds")
    p.add_argument("--reserve-s", type=float, default=0.0, help="time a render phase is assumed to need (budget check)")
    p.add_argument("--compile-estimate-s", type=float, default=0.0, help="extra time assumed for compiling (budget)")
    p.add_argument("--compile-backend", default="inductor", help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help="weight seed")
    p.add_argument("--threads", type=int, help="CPU threads")
    return p


def bench_main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.sizes is None:
        args.sizes = DEFAULT_SIZES[args.synthetic]
    if args.lora_rank is None:
        args.lora_rank = 32 if args.synthetic == "a14b" else 4
    if args.threads:
        torch.set_num_threads(args.threads)
    for text in args.sizes.split(",") + (args.fast_sizes.split(",") if args.fast_sizes else []):
        parse_size(text)
    unknown = set(args.modes.split(",")) - {"exact", "fast", ""} | set(args.offload.split(",")) - {"none", "experts", "sequential", ""}
    if unknown:
        print(f"error: unknown mode/offload {sorted(unknown)}", file=sys.stderr)
        return 2
    from .render.models import _quiet

    _quiet()
    return Bench(args).run()


if __name__ == "__main__":
    sys.exit(bench_main())
