"""LoRA phases: switching checkpoints without reloading the model (unmerged hooks, merged weights), and the cost of
a step with the unmerged hooks. The checkpoints are synthetic, shaped like ai-toolkit's."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .flops import size_label
from .models import write_synthetic_lora
from .phases import ratio_to_bound
from .samples import control_image, make_sample, short_render_steps
from .timing import step_times_by_expert, timed_render

if TYPE_CHECKING:
    from .state import BenchState


def read_loras(paths: dict) -> dict:
    """Both experts' LoRA files read into layers (what a switch pays for besides applying them)."""
    from ..render import lora as lora_mod

    return {e: lora_mod.read_lora_file(p) for e, p in paths.items()}


def write_loras(bench: BenchState, bundle, tmp: Path) -> dict:
    """Two rank-r checkpoints (a, b), each a high + low file, shaped like ai-toolkit's."""
    rank = bench.args.lora_rank
    paths = {ckpt: {expert: write_synthetic_lora(tmp / f"bench_{ckpt}_{expert}_noise.safetensors",
                                                 bundle.expert(expert), rank, seed=ord(ckpt) * 10 + i,
                                                 name=f"bench_{ckpt}")
                    for i, expert in enumerate(("high", "low"))}
             for ckpt in ("a", "b")}
    bench.lora_paths = paths
    return paths


def lora_switch(bench: BenchState, bundle, merged: bool) -> float | None:
    """Time switching from checkpoint a to checkpoint b (both experts) without reloading the model: read the
    files and apply them (unmerged: hooks; merged: restore a's originals, merge b)."""
    from ..render import lora as lora_mod

    kind = "merged" if merged else "unmerged"
    paths = bench.lora_paths
    clock = bench.clock
    size_mb = sum(p.stat().st_size for p in paths["a"].values()) / 1e6
    info = {"rank": bench.args.lora_rank, "checkpoint_mb": round(size_mb, 1)}
    layers_a = read_loras(paths["a"])
    try:
        with lora_mod.applied(paths["a"], layers_a, bundle.experts, 1.0, merged=merged):
            clock.sync()
        clock.reset_peak()
        t0 = clock.now()
        layers_b = read_loras(paths["b"])
        t_read = clock.now()
        with lora_mod.applied(paths["b"], layers_b, bundle.experts, 1.0, merged=merged):
            t_apply = clock.now()
        t_restore = clock.now()
    except torch.OutOfMemoryError as exc:
        bench.report.row(f"lora switch ({kind})", None, status="error", note=f"out of memory: {str(exc)[:100]}", **info)
        return None
    how = ("hooks only, the base weights are untouched" if not merged else
           "merging b into every targeted weight; a's originals wait in pinned host memory and are copied back")
    # a switch = read the new files + apply them + later restore the base (timed here on b's exit)
    bench.report.row(f"lora switch ({kind})", t_restore - t0, peak=clock.peak(),
                     note=f"read 2 files {t_read - t0:.3f}s + apply {t_apply - t_read:.3f}s + restore "
                          f"{t_restore - t_apply:.3f}s; rank {bench.args.lora_rank}, both experts, {size_mb:.0f} MB "
                          f"fp16 per checkpoint; {how}", **info)
    return t_restore - t0


def lora_step(bench: BenchState, bundle, size, prompts, paths, fused_blocks: bool = False) -> None:
    """The exact unmerged-LoRA path (fp32 hooks on 400 linears per expert) costs more per step than base weights;
    the lean path (``--lean-lora``; on CUDA with its fused tail) is timed beside it, and with ``fused_blocks`` the
    lean path under ``--fused-blocks`` too. Every variant's frames must be the plain path's bytes."""
    from contextlib import nullcontext

    from ..render import fused
    from ..render import lora as lora_mod

    layers = read_loras(paths)
    bound = bench.bound(size)
    variants = {"": (False, False), " (lean)": (True, False)}
    if fused_blocks:
        variants[" (lean, fused blocks)"] = (True, True)
    results = {}
    for suffix, (lean, fusion) in variants.items():
        with lora_mod.applied(paths, layers, bundle.experts, 1.0, merged=False, lean=lean), \
                (fused.fused_blocks(bundle.experts) if fusion else nullcontext()):
            results[suffix] = timed_render(bundle, make_sample(*size, steps=short_render_steps(bench.profile, 1)),
                                           control_image(size), bench.profile, prompts, bench.clock)
    plain_steps = bench.resident_steps.get(size_label(size), {})
    for suffix, result in results.items():
        identical = result["sha256"] == results[""]["sha256"]
        for expert, times in step_times_by_expert(result).items():
            plain = plain_steps.get(expert, {}).get("median_s")
            versus = f"; {times['median_s'] / plain:.2f}x the plain exact step" if plain else ""
            note = (f"rank {bench.args.lora_rank} LoRA hooks (fp32 A/B) on every block linear{versus}" if not suffix
                    else f"shared fp32 input copy, no x1.0 scale, fused tail where Triton runs{versus}; frames "
                         f"{'identical to' if identical else 'DIFFER from'} the plain LoRA path")
            bench.report.row(f"step {expert}, unmerged LoRA{suffix}", times["median_s"], size=size_label(size),
                             status="ok" if identical else "error",
                             ratio_to_bound=ratio_to_bound(times["median_s"], bound), note=note)
