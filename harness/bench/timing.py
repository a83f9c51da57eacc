"""Timers, device synchronisation and peak memory; micro-benchmarks of the device; the instrumented render.

Every reading synchronises the device first, so an asynchronous GPU cannot make a phase look faster than it is.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import statistics
import time

import torch

from .units import BF16, GIB


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


def max_peak(peaks: list[dict]) -> dict:
    """The highest of several ``Clock.peak()`` readings, key by key ({} off CUDA)."""
    if not peaks or not peaks[0]:
        return {}
    return {k: max(p[k] for p in peaks) for k in peaks[0]}


def release(device: torch.device) -> None:
    """Free the device memory of objects the caller has already dropped, so the next phase starts clean."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------------------------------
# Micro-benchmarks: the peak the FLOP bound is measured against
# ---------------------------------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------------------------------
# Instrumented render (the harness's exact path)
# ---------------------------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def wrapped_method(obj, name: str, wrapper):
    """Replace ``obj.name`` by ``wrapper(original)`` on this instance only; what was there before comes back on exit."""
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


class RenderTimers:
    """The timers hooked onto one render: text encoder forwards, VAE encode/decode, and the step boundaries.

    The denoising loop starts right after the condition is encoded, so the end of the VAE encode is the first step
    mark; every progress callback after it closes a step.
    """

    def __init__(self, clock: Clock):
        self.clock = clock
        self.spans: dict[str, list] = {"text_encode": [], "vae_encode": [], "vae_decode": []}
        self.peaks: dict[str, list] = {"text_encode": [], "vae_encode": [], "vae_decode": [], "steps": []}
        self.step_marks: list[float] = []
        self._text_start: list[float] = []

    def timing(self, kind: str):
        """A method wrapper recording the call's time and peak under ``kind``."""
        clock = self.clock

        def wrap(method):
            def timed(*args, **kwargs):
                clock.reset_peak()
                t0 = clock.now()
                out = method(*args, **kwargs)
                t1 = clock.now()
                self.spans[kind].append(t1 - t0)
                self.peaks[kind].append(clock.peak())
                if kind == "vae_encode":
                    self.step_marks.append(t1)
                    clock.reset_peak()
                return out
            return timed
        return wrap

    def text_pre(self, module, args) -> None:
        self.clock.reset_peak()
        self._text_start.append(self.clock.now())

    def text_post(self, module, args, output) -> None:
        self.spans["text_encode"].append(self.clock.now() - self._text_start[-1])
        self.peaks["text_encode"].append(self.clock.peak())

    def progress(self) -> None:
        self.step_marks.append(self.clock.now())
        self.peaks["steps"].append(self.clock.peak())
        self.clock.reset_peak()

    def steps_s(self) -> list[float]:
        return [b - a for a, b in zip(self.step_marks, self.step_marks[1:])]


def timed_render(bundle, sample, image, profile, prompts, clock: Clock, rng_layout=None) -> dict:
    """``render_sample`` with timers: text encoder forwards, VAE encode/decode, each denoising step; peaks per phase."""
    from ..render.pipeline import render_sample

    timers = RenderTimers(clock)
    handles = [bundle.text_encoder.register_forward_pre_hook(timers.text_pre),
               bundle.text_encoder.register_forward_hook(timers.text_post)]
    try:
        with wrapped_method(bundle.vae, "encode", timers.timing("vae_encode")), \
                wrapped_method(bundle.vae, "decode", timers.timing("vae_decode")):
            t0 = clock.now()
            render = render_sample(bundle, sample, image, profile, prompts, progress=timers.progress,
                                   rng_layout=rng_layout)
            total = clock.now() - t0
    finally:
        for handle in handles:
            handle.remove()
    per_step = 2 if sample.guidance_scale > 1.0 else 1
    experts = [render.trace[i * per_step][0] for i in range(len(render.trace) // per_step)]
    spans = timers.spans
    return {"total_s": total, "text_encode_s": sum(spans["text_encode"]), "text_forwards": len(spans["text_encode"]),
            "vae_encode_s": sum(spans["vae_encode"]), "vae_decode_s": sum(spans["vae_decode"]),
            "steps_s": timers.steps_s(), "experts": experts, "peaks": timers.peaks, "frames": render.frames,
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
