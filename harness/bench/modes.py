"""The other ways to run the same bundle: offload in place (experts, sequential), fast mode (compiled, non-exact),
and qfloat8 quantization (last: it replaces the bf16 weights)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from .fast import fast_mode, pick_attention_backend
from .flops import size_label
from .phases import guarded_render
from .report import make_row
from .units import GIB, nbytes

if TYPE_CHECKING:
    from .state import BenchState


# ---------------------------------------------------------------------------------------------------------------------
# Offload
# ---------------------------------------------------------------------------------------------------------------------

def _host_bytes(bundle) -> int:
    """Bytes of the experts and text encoder that now live on the host."""
    return nbytes(p for m in (bundle.transformer, bundle.transformer_2, bundle.text_encoder)
                  for p in m.parameters() if p.device.type == "cpu")


def run_offload_in_place(bench: BenchState, bundle, offload: str, prompts) -> None:
    """``bundle.set_offload(mode)``: weights move to their pinned host homes, nothing reloads; then render."""
    steps = bench.offload_steps()
    sizes = [s for s in bench.sizes if not bench.over_budget(bench.estimate(s, "exact", offload, steps) + 30)]
    if not sizes:
        bench.report.skip("offload switch", offload=offload)
        return
    bench.clock.reset_peak()
    t0 = bench.clock.now()
    bundle.set_offload(offload)
    seconds = bench.clock.now() - t0
    moved = _host_bytes(bundle)
    bench.report.row("offload switch", seconds, offload=offload, peak=bench.clock.peak(),
                     note=f"bundle.set_offload({offload!r}) in place: {moved / GIB:.1f} GiB on the host"
                          + (f", {moved / seconds / 1e9:.2f} GB/s incl. pinning" if seconds > 0.5 and moved else
                             " (already parked)"))
    if offload == "experts" and bench.device.type == "cuda":
        time_expert_upload(bench, bundle)
    for size in bench.fitting(bench.sizes, "exact", offload, steps, allowed=sizes):
        guarded_render(bench, bundle, size, "exact", offload, prompts, steps=steps)


def time_expert_upload(bench: BenchState, bundle) -> None:
    """One expert swap of ``--offload experts``: upload the parked high expert (pinned, so at full link speed)."""
    size = nbytes(bundle.transformer.parameters())
    t0 = bench.clock.now()
    bundle.expert("high")
    seconds = bench.clock.now() - t0
    bench.doc["host_device_gbps"] = round(size / seconds / 1e9, 2)
    bench.report.row("expert swap (upload)", seconds, offload="experts",
                     note=f"{size / GIB:.1f} GiB from pinned host memory at {size / seconds / 1e9:.1f} GB/s; parking "
                          "the other expert costs nothing (its pinned home is still valid)")


# ---------------------------------------------------------------------------------------------------------------------
# Fused exact mode
# ---------------------------------------------------------------------------------------------------------------------

def run_fused(bench: BenchState, bundle, prompts) -> None:
    """The exact renders again with ``--fused-blocks`` (same steps); ``exactness_summary`` compares their bytes."""
    from ..render import fused, kernels

    why = kernels.unavailable(bench.device)
    if why:
        bench.report.row("render", None, "fused", status="skipped", note=why)
        return
    with fused.fused_blocks(bundle.experts):
        for size in bench.fitting(bench.sizes, "fused", "none"):
            guarded_render(bench, bundle, size, "fused", "none", prompts)


# ---------------------------------------------------------------------------------------------------------------------
# Fast mode
# ---------------------------------------------------------------------------------------------------------------------

def _frame_diff(frames: np.ndarray, exact: np.ndarray) -> dict:
    """How far fast mode's frames are from the exact ones, in 8-bit levels."""
    diff = np.abs(frames.astype(np.int16) - exact.astype(np.int16))
    return {"bit_identical": bool(not diff.any()), "max_abs_levels": int(diff.max()),
            "mean_abs_levels": round(float(diff.mean()), 4)}


def run_fast(bench: BenchState, bundle, prompts) -> None:
    """Renders with every block compiled and the best attention backend; compared with the exact frames."""
    if all(bench.over_budget(bench.estimate(size, "fast", "none")) for size in bench.fast_sizes):
        bench.report.skip("render", mode="fast")
        return
    backend, skipped = pick_attention_backend(bench.device)
    bench.doc["fast"] = {"attention_backend": backend, "passed_over": skipped, "compile": "torch.compile per "
                         "WanTransformerBlock, fullgraph=False, default mode",
                         "compile_backend": bench.args.compile_backend}
    with fast_mode(bundle, backend, bench.args.compile_backend):
        for size in bench.fitting(bench.fast_sizes, "fast", "none"):
            label = size_label(size)
            result = guarded_render(bench, bundle, size, "fast", "none", prompts)
            exact = bench.frames.get((label, result["steps"])) if result else None
            if result is not None and exact is not None:
                bench.doc.setdefault("fast_vs_exact", {})[label] = _frame_diff(result["frames"], exact)
    # a note for the JSON only (not logged): it qualifies the fast rows above
    bench.rows.append(make_row("note", None, mode="fast",
                               note=f"fast: attention backend {backend}; the first step of each expert includes "
                                    "compiling"))


# ---------------------------------------------------------------------------------------------------------------------
# Quantization
# ---------------------------------------------------------------------------------------------------------------------

def run_quantized(bench: BenchState, bundle, prompts) -> None:
    """ai-toolkit's default sampling model (qfloat8 experts + text encoder, ai-toolkit >= 0.10.22 exclusions),
    quantized in place on the device: its cost and memory; the last phase, since the bf16 weights are gone."""
    from ..render.quant import QuantPlan, apply_plan

    plan = QuantPlan(transformer_qtype="qfloat8", text_encoder_qtype="qfloat8",
                     exclude=("condition_embedder*", "proj_out*"), aitk_version="0.10.22")
    bench.clock.reset_peak()
    t0 = bench.clock.now()
    apply_plan(bundle, plan)
    bench.release()
    cuda = bench.device.type == "cuda"
    bench.report.row("quantize (qfloat8)", bench.clock.now() - t0, mode="qfloat8", peak=bench.clock.peak(),
                     note=f"optimum-quanto on the device: {plan.summary()}"
                          + (f"; all weights now take {torch.cuda.memory_allocated(bench.device) / GIB:.1f} GiB "
                             "of the GPU" if cuda else ""))
    for size in bench.fitting(bench.sizes, "qfloat8", "none"):
        guarded_render(bench, bundle, size, "qfloat8", "none", prompts)
