"""N previews in one process vs loading the model per preview: measured end to end on the tiny model, derived from
measured parts (a disk-load probe, the preview, the LoRA switch) on A14B, whose 64 GiB pipeline does not fit the
device machine's disk."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .flops import size_label
from .loras import read_loras
from .samples import control_image, make_sample
from .timing import step_times_by_expert
from .units import GIB

if TYPE_CHECKING:
    from .state import BenchState


# ---------------------------------------------------------------------------------------------------------------------
# Tiny: measured
# ---------------------------------------------------------------------------------------------------------------------

def n_previews_tiny(bench: BenchState, tmp: Path) -> None:
    """Real measurement on the tiny model: N previews of one LoRA, loading per preview vs one loaded bundle."""
    from ..demo_model import build_tiny_model, make_demo_lora_pair
    from ..render import lora as lora_mod
    from ..render.models import load_bundle
    from ..render.pipeline import render_sample
    from ..render.text import PromptCache

    n, size = bench.args.previews, bench.sizes[0]
    model_dir = build_tiny_model(tmp / "tiny-model")
    high, low = make_demo_lora_pair(model_dir, tmp / "tiny-lora", "bench", rank=4)
    paths = {"high": high, "low": low}
    image = control_image(size)

    def load():
        return load_bundle(model_dir, model_dir / "vae", bench.device)

    def render(bundle, prompts, layers, i):
        with lora_mod.applied(paths, layers, bundle.experts, 1.0, merged=False):
            return render_sample(bundle, make_sample(*size, steps=bench.args.preview_steps, seed=100 + i), image,
                                 bench.profile, prompts).frames

    t0 = bench.clock.now()
    naive = []
    for i in range(n):
        bundle = load()
        layers = read_loras(paths)
        naive.append(render(bundle, PromptCache(), layers, i))
        del bundle
    naive_s = bench.clock.now() - t0
    t0 = bench.clock.now()
    bundle = load()
    prompts = PromptCache()
    layers = read_loras(paths)
    cached = [render(bundle, prompts, layers, i) for i in range(n)]
    cached_s = bench.clock.now() - t0
    identical = all(np.array_equal(a, b) for a, b in zip(naive, cached))
    _record_tiny(bench, n, size_label(size), naive_s, cached_s, identical)


def _record_tiny(bench: BenchState, n: int, label: str, naive_s: float, cached_s: float, identical: bool) -> None:
    bench.doc["n_previews"] = {"n": n, "naive_s": round(naive_s, 3), "one_process_s": round(cached_s, 3),
                               "ratio": round(cached_s / naive_s, 3), "bit_identical": identical,
                               "measured": True, "size": label}
    bench.report.row(f"{n} previews, one process", cached_s, size=label, ratio_to_naive=round(cached_s / naive_s, 3),
                     bit_identical=identical, note=f"vs {naive_s:.2f}s loading the model per preview (measured, "
                                                   f"load_bundle from disk); target <= 0.8x")


# ---------------------------------------------------------------------------------------------------------------------
# A14B: the disk-load probe
# ---------------------------------------------------------------------------------------------------------------------

def evict_from_page_cache(files) -> bool:
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


def interpreter_start_s(device: torch.device) -> float:
    """Wall time of a fresh Python that imports the render stack and opens the device: a per-preview script's toll."""
    code = ("import torch, diffusers, transformers, harness.render.pipeline; "
            f"torch.zeros(1, device={str(device)!r}).sum().item()")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=300)
    return time.perf_counter() - t0


def _write_probe_model(bench: BenchState, folder: Path, layers: int) -> float:
    """Save the cut transformer as diffusers safetensors under ``folder``; returns the seconds the write took."""
    model = bench.models.transformer("high", to="cpu", num_layers=layers)
    t0 = bench.clock.now()
    model.save_pretrained(str(folder), safe_serialization=True)
    return bench.clock.now() - t0


def _time_loads(bench: BenchState, folder: Path) -> dict:
    """Load the probe back through the harness's loader, first cold (evicted beforehand), then warm."""
    from ..render.models import load_transformer

    times = {}
    for kind in ("cold", "warm"):
        t0 = bench.clock.now()
        loaded = load_transformer(folder, "transformer", bench.device, cast_whole_bf16=True)
        times[kind] = bench.clock.now() - t0
        del loaded
        bench.release()
    return times


def load_probe(bench: BenchState, tmp: Path) -> dict:
    """What a per-preview load costs here: a full-width A14B transformer cut to ``--load-probe-layers`` blocks is
    saved as diffusers safetensors and read back onto the device through the harness's own loader
    (``load_transformer``): once after evicting the files from the page cache (cold) and once warm. Its rates,
    applied to all weights of the pipeline, are the naive path's load time; a fresh interpreter's start (imports
    and CUDA context) is what a per-preview *script* pays on top."""
    layers = bench.args.load_probe_layers
    folder = tmp / "load-probe"
    with torch.no_grad():
        write_s = _write_probe_model(bench, folder / "transformer", layers)
        files = list((folder / "transformer").glob("*.safetensors"))
        size = sum(f.stat().st_size for f in files)
        evicted = evict_from_page_cache(files)
        times = _time_loads(bench, folder)
    shutil.rmtree(folder, ignore_errors=True)
    total = bench.doc["models"]["total_gib"] * GIB
    probe = {"layers": layers, "bytes": size, "gib": round(size / GIB, 2), "write_s": round(write_s, 2),
             "evicted": evicted, "load_s": {k: round(v, 3) for k, v in times.items()},
             "gb_per_s": {k: round(size / v / 1e9, 2) for k, v in times.items()},
             "pipeline_load_s": {k: round(total * v / size, 1) for k, v in times.items()},
             "startup_s": round(interpreter_start_s(bench.device), 2)}
    bench.doc["load_probe"] = probe
    bench.report.row(
        "load from disk", times["warm"],
        note=f"{size / GIB:.2f} GiB transformer ({layers} of {bench.dims[2]} blocks) through load_transformer: warm "
             f"{probe['gb_per_s']['warm']} GB/s, cold {probe['gb_per_s']['cold']} GB/s "
             f"({'evicted with posix_fadvise' if evicted else 'eviction unavailable'}); the whole {total / GIB:.1f} GiB "
             f"pipeline: {probe['pipeline_load_s']['warm']:.0f}s warm, {probe['pipeline_load_s']['cold']:.0f}s cold; "
             f"a fresh interpreter starts in {probe['startup_s']}s")
    return probe


# ---------------------------------------------------------------------------------------------------------------------
# A14B: derived
# ---------------------------------------------------------------------------------------------------------------------

def preview_variants(n: int, probe: dict, preview: float, text: float, warmup: float, lora: float) -> dict:
    """N previews loading per preview vs in one process, for three per-load costs. One process loads once, encodes
    the prompts once and warms the kernels once; the naive path pays all three per preview."""
    variants = {}
    for name, per_load in (("service, warm cache", probe["pipeline_load_s"]["warm"]),
                           ("service, cold cache", probe["pipeline_load_s"]["cold"]),
                           ("script per preview, cold cache", probe["pipeline_load_s"]["cold"] + probe["startup_s"])):
        naive = n * (per_load + preview + lora)
        cached = per_load + n * (preview + lora) - (n - 1) * (text + warmup)
        variants[name] = {"per_preview_load_s": round(per_load, 1), "naive_s": round(naive, 1),
                          "one_process_s": round(cached, 1), "ratio": round(cached / naive, 3)}
    return variants


def n_previews_derived(bench: BenchState, probe: dict, result: dict, lora_s: float | None) -> None:
    """A14B: N previews in one process vs loading the pipeline per preview, from measured parts (not run end to
    end: the 64 GiB pipeline does not fit the device machine's disk)."""
    n = bench.args.previews
    warmup = sum(max(0.0, t["first_s"] - t["median_s"]) for t in step_times_by_expert(result).values())
    variants = preview_variants(n, probe, result["preview_s"], result["text_encode_s"], warmup, lora_s or 0.0)
    primary = variants["service, warm cache"]
    size = size_label(bench.sizes[0])
    bench.doc["n_previews"] = {"n": n, "size": size, "measured": False, **primary, "variants": variants,
                               "note": "derived from measured parts: load (the probe's rate x the whole pipeline), "
                                       "preview, LoRA switch, prompt encoding and first-step warm-up as measured "
                                       "above; the warm-cache service is the naive path's best case"}
    others = "; ".join(f"{k}: {v['ratio']:.2f}x" for k, v in variants.items() if v is not primary)
    bench.report.row(f"{n} previews, one process", primary["one_process_s"], size=size, extrapolated=True,
                     ratio_to_naive=primary["ratio"],
                     note=f"derived: vs {primary['naive_s']:.0f}s loading the pipeline per preview from a warm page "
                          f"cache ({primary['per_preview_load_s']:.0f}s per load); {others}; target <= 0.8x")
