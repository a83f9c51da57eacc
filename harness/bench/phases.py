"""The measured phases every run has: the machine header, model sizes, the device's peak, building the bundle, and
the timed renders with their rows (one per part of ``render_sample``, per expert's step, the render, the preview).

Each phase is a function of the run's ``BenchState``: it measures, adds rows and fills keys of the JSON.
"""

from __future__ import annotations

import datetime
import platform
from typing import TYPE_CHECKING

import torch

from .flops import TEXT_LEN, nominal_tflops, size_label, tokens
from .models import model_stats
from .report import SCHEMA, print_model_stats
from .samples import GUIDANCE, control_image, extrapolate_preview, make_sample
from .timing import max_peak, measure_attention, measure_matmul_peak, step_times_by_expert, timed_render
from .units import GIB

if TYPE_CHECKING:
    from .state import BenchState


# ---------------------------------------------------------------------------------------------------------------------
# Header, sizes, peak, build
# ---------------------------------------------------------------------------------------------------------------------

def machine_info(device: torch.device) -> dict:
    """Versions and hardware the numbers were measured with."""
    import diffusers
    import transformers

    machine = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
               "diffusers": diffusers.__version__, "transformers": transformers.__version__,
               "device": str(device), "cpu": platform.processor() or platform.machine(),
               "cpu_threads": torch.get_num_threads()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        machine.update({"gpu": props.name, "gpu_memory_gib": round(props.total_memory / GIB, 1),
                        "cudnn": torch.backends.cudnn.version()})
    return machine


def header(bench: BenchState) -> None:
    """The JSON's header: schema, machine, arguments, configs; written before anything is measured."""
    bench.doc.update({"schema": SCHEMA, "synthetic": bench.args.synthetic,
                      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                      "machine": machine_info(bench.device),
                      "args": {k: v for k, v in vars(bench.args).items() if k != "json"},
                      "profile": bench.profile.name, "preview_steps": bench.args.preview_steps,
                      "guidance_scale": GUIDANCE, "configs": bench.models.configs})


def model_shapes(bench: BenchState) -> None:
    """Parameter counts from a meta-device build (no memory), also what ``--device meta`` prints."""
    stats = model_stats(bench.args.synthetic, bench.args.seed)
    bench.doc["models"] = stats
    print_model_stats(stats)


def peak_matmul(bench: BenchState) -> None:
    """The device's bf16 GEMM peak (and, on CUDA, SDPA at each size): what the FLOP bound is measured against."""
    cuda = bench.device.type == "cuda"
    peak = measure_matmul_peak(bench.device, bench.clock)
    if cuda:
        peak["nominal_tflops"] = nominal_tflops(torch.cuda.get_device_name(bench.device))
        peak["nominal_note"] = "H100 SXM dense bf16 (no sparsity): 989 TFLOP/s"
    bench.doc["peak"] = peak
    bench.report.row("bf16 GEMM peak", None, note=f"{peak['tflops']} TFLOP/s measured ({peak['gemm']})",
                     tflops=peak["tflops"])
    if cuda:
        _attention_rows(bench)
    bench.doc["flop_bound"] = {size_label(s): bench.bound(s) for s in bench.sizes}


def _attention_rows(bench: BenchState) -> None:
    """One layer's self-attention at each size: the part of a step the GEMM peak cannot account for."""
    config = bench.models.configs["transformer"]
    bench.doc["attention"] = {
        size_label(s): measure_attention(bench.device, bench.clock, tokens(*s), config["num_attention_heads"],
                                         config["attention_head_dim"]) for s in bench.sizes}
    for label, a in bench.doc["attention"].items():
        bench.report.row("self-attention (SDPA)", a["seconds"], size=label, tflops=a["tflops"],
                         note=f"one layer's F.scaled_dot_product_attention, {a['tflops']} TFLOP/s: the exact path "
                              "must keep this kernel")


def build(bench: BenchState):
    """Instantiate the resident bundle on the device (seconds: no host round trip, no fp32 copy)."""
    bench.clock.reset_peak()
    t0 = bench.clock.now()
    bundle = bench.models.bundle()
    bench.report.row("instantiate", bench.clock.now() - t0, peak=bench.clock.peak(),
                     note="built on the device from the configs (random bf16 weights)")
    return bundle


# ---------------------------------------------------------------------------------------------------------------------
# Timed renders
# ---------------------------------------------------------------------------------------------------------------------

def ratio_to_bound(seconds: float, bound: dict) -> float:
    """A step's time over its FLOP bound at the measured peak (1.0 = the GEMM peak reached)."""
    return round(seconds / bound["step_bound_s"], 3)


def _round_s(seconds: float) -> float:
    """Seconds to 4 decimals, or 3 significant digits below that: the tiny model's bound is microseconds and must
    not read as 0."""
    return round(seconds, 4) or float(f"{seconds:.3g}")


def _render(bench: BenchState, bundle, size, mode: str, offload: str, prompts, steps: int) -> dict:
    """The timed render, marked ``in_progress`` in the JSON while it runs; its bytes kept for the comparisons."""
    label = size_label(size)
    bench.doc["in_progress"] = f"{mode} {offload} {label} {steps}-step render"
    bench.report.save()
    result = timed_render(bundle, make_sample(*size, steps=steps), control_image(size), bench.profile, prompts,
                          bench.clock)
    bench.doc.pop("in_progress", None)
    bench.hashes[(mode, offload, label, steps)] = result["sha256"]
    if mode == "exact" and offload == "none":
        bench.frames[(label, steps)] = result["frames"]
    return result


def _step_rows(bench: BenchState, result: dict, by_expert: dict, size, mode: str, offload: str) -> None:
    """Per expert: the median step time against the FLOP bound and the attainable time."""
    label = size_label(size)
    bound = bench.bound(size)
    for expert, times in by_expert.items():
        step_peaks = [p for p, e in zip(result["peaks"]["steps"], result["experts"]) if e == expert]
        bench.report.row(
            f"step {expert} (cond+uncond)", times["median_s"], mode, offload, label,
            peak=max_peak(step_peaks), first_step_s=round(times["first_s"], 4), timed_steps=times["timed"],
            flop_bound_s=_round_s(bound["step_bound_s"]),
            ratio_to_bound=ratio_to_bound(times["median_s"], bound),
            ratio_to_attainable=(round(times["median_s"] / bound["step_attainable_s"], 3)
                                 if "step_attainable_s" in bound else None),
            achieved_tflops=round(2 * bound["pflop_per_forward"] * 1e3 / times["median_s"], 1),
            note=(f"median of {times['timed']} step(s) after the expert's first ({times['first_s']:.3f}s)"
                  if times["timed"] else "the expert's only step" + (
                      " (includes moving its weights in)" if offload != "none" else "")))


def _preview_row(bench: BenchState, result: dict, extrapolate_with: dict, label: str, mode: str, offload: str,
                 steps: int) -> float:
    """The ``--preview-steps`` preview: measured when the render had that many steps, else extrapolated (and said)."""
    preview_steps = bench.args.preview_steps
    preview = extrapolate_preview(result, extrapolate_with, bench.profile, preview_steps)
    extrapolated = preview_steps != steps
    bench.report.row(f"preview ({preview_steps} steps)", preview, mode, offload, label, extrapolated=extrapolated,
                     note=(f"extrapolated: the {steps}-step render + {preview_steps - steps} more steps at the "
                           "per-expert median" if extrapolated else "measured"))
    return preview


def render_rows(bench: BenchState, bundle, size, mode: str, offload: str, prompts,
                steps: int | None = None) -> dict:
    """One timed render and its rows: text encode, VAE encode, each expert's step, VAE decode, the render, and the
    preview. Returns the render's measurements plus ``preview_s`` and ``steps``."""
    label = size_label(size)
    steps = steps or bench.short_steps()
    result = _render(bench, bundle, size, mode, offload, prompts, steps)
    peaks = result["peaks"]
    if result["text_forwards"]:
        bench.report.row("text encode (2 prompts)", result["text_encode_s"], mode, offload, label,
                         peak=max_peak(peaks["text_encode"]), note=f"UMT5, {TEXT_LEN} tokens each")
    bench.report.row("vae encode (condition)", result["vae_encode_s"], mode, offload, label,
                     peak=max_peak(peaks["vae_encode"]))
    by_expert = step_times_by_expert(result)
    if mode == "exact" and offload == "none" and all(t["timed"] for t in by_expert.values()):
        bench.resident_steps[label] = by_expert
    if offload == "experts" and label in bench.resident_steps:
        # after its swap-in an expert runs exactly as resident: extrapolate with the resident step times
        extrapolate_with = bench.resident_steps[label]
    else:
        extrapolate_with = by_expert
    _step_rows(bench, result, by_expert, size, mode, offload)
    bench.report.row("vae decode", result["vae_decode_s"], mode, offload, label, peak=max_peak(peaks["vae_decode"]))
    all_peaks = [p for group in peaks.values() for p in group]
    bench.report.row(f"render ({steps} steps)", result["total_s"], mode, offload, label, peak=max_peak(all_peaks),
                     sha256=result["sha256"], note="measured: render_sample end to end")
    result["preview_s"] = _preview_row(bench, result, extrapolate_with, label, mode, offload, steps)
    result["steps"] = steps
    return result


def guarded_render(bench: BenchState, bundle, size, mode: str, offload: str, prompts,
                   steps: int | None = None) -> dict | None:
    """``render_rows``, with out-of-memory recorded as a row instead of ending the benchmark."""
    try:
        result = render_rows(bench, bundle, size, mode, offload, prompts, steps)
    except torch.OutOfMemoryError as exc:
        bench.report.row("render", None, mode, offload, size_label(size), status="error",
                         note=f"out of memory: {str(exc).splitlines()[0][:160]}", peak=bench.clock.peak())
        bench.release()
        return None
    bench.render_s[(mode, offload, size_label(size), result["steps"])] = result["total_s"]
    exactness_summary(bench)
    return result


def measured_preview(bench: BenchState, bundle, size, prompts) -> None:
    """Tiny only: a real full-length preview, to check the extrapolation."""
    sample = make_sample(*size, steps=bench.args.preview_steps)
    result = timed_render(bundle, sample, control_image(size), bench.profile, prompts, bench.clock)
    bench.report.row(f"preview ({bench.args.preview_steps} steps)", result["total_s"], size=size_label(size),
                     note="measured end to end (checks the extrapolated row)")


def exactness_summary(bench: BenchState) -> None:
    """Offload modes and fused blocks must give the same bytes as the resident exact render of the same size and
    steps."""
    same, fused = {}, {}
    for (mode, offload, label, steps), digest in bench.hashes.items():
        reference = bench.hashes.get(("exact", "none", label, steps))
        if reference is None:
            continue
        if mode == "exact" and offload != "none":
            same[f"{offload} {label} {steps} steps"] = digest == reference
        elif mode == "fused":
            fused[f"{label} {steps} steps"] = digest == reference
    bench.doc["offload_identical"] = same
    if fused:
        bench.doc["fused_identical"] = fused
