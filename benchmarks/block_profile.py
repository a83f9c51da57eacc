"""Where one A14B transformer block's GPU time goes: GEMMs, attention, and the elementwise passes between them.

    python benchmarks/block_profile.py [--size 832x480x41] [--fused]

Builds one Wan 2.2 A14B block (dim 5120, FFN 13824, 40 heads, random bf16 weights, the whole-bf16 cast ai-toolkit
makes) on the GPU, runs it on a random sequence of the size's token count, and prints the median wall time of a
forward, the CUDA kernel time by kind (from torch.profiler), and the block's GEMM+attention FLOP bound at the measured
bf16 GEMM peak. ``--fused`` runs the block under ``harness.render.fused`` and checks the output bytes against eager.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

KINDS = (("gemm", ("gemm", "cutlass", "sm90", "nvjet", "cublas")),  # cuDNN/flash attention kernels land here too
         ("attention", ("flash", "fmha", "attention", "sdpa")), ("layer/rms norm", ("layer_norm", "norm")))


def _kind(name: str) -> str:
    lower = name.lower()
    return next((kind for kind, keys in KINDS if any(key in lower for key in keys)), "elementwise / copy")


def build(size, device):
    import torch
    from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed, WanTransformerBlock

    from harness.bench.flops import tokens

    width, height, frames = size
    torch.manual_seed(0)
    block = WanTransformerBlock(5120, 13824, 40, "rms_norm_across_heads", True, 1e-6, None).to(device, torch.bfloat16)
    latent = torch.zeros(1, 16, (frames - 1) // 4 + 1, height // 8, width // 8, device=device)
    rope = WanRotaryPosEmbed(128, (1, 2, 2), 1024).to(device)(latent)
    L = tokens(*size)
    hidden = torch.randn(1, L, 5120, device=device).to(torch.bfloat16)
    text = torch.randn(1, 512, 5120, device=device).to(torch.bfloat16)
    temb = torch.randn(1, 6, 5120, device=device).to(torch.bfloat16)
    return block, (hidden, text, temb, rope), L


def main(argv=None) -> int:
    import torch

    from harness.bench.flops import TEXT_LEN

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="832x480x41")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--fused", action="store_true")
    args = parser.parse_args(argv)
    size = tuple(int(v) for v in args.size.split("x"))
    device = torch.device("cuda")
    block, inputs, L = build(size, device)

    def forward():
        with torch.no_grad():
            return block(*inputs)

    if args.fused:
        from harness.render.fused import fused_blocks

        eager = forward()
        with fused_blocks(_as_experts(block)):
            fused_out = forward()
            seconds = _median(forward, args.repeats)
            table = _profile(forward)
        same = torch.equal(eager.view(torch.int16), fused_out.view(torch.int16))
        print(f"fused output bytes equal eager: {same}")
    else:
        seconds = _median(forward, args.repeats)
        table = _profile(forward)
    graph_seconds, graph_same = _graph_replay(block, inputs, args)
    print(f"CUDA graph replay of the same forward: {graph_seconds * 1e3:.2f} ms (output bytes equal: {graph_same}); "
          f"the difference to the eager call is launch and host overhead")
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    peak = 2 * 8192 ** 3 / _median(lambda: a @ a, 10)
    d, f = 5120, 13824
    flop = (12 * d * d + 4 * d * f) * L + 4 * d * L * L + 4 * d * L * TEXT_LEN + 4 * d * d * TEXT_LEN
    print(f"size {args.size}: L={L}; block forward {seconds * 1e3:.2f} ms; FLOP bound at {peak / 1e12:.0f} TFLOP/s "
          f"{flop / peak * 1e3:.2f} ms ({seconds / (flop / peak):.2f}x)")
    total = sum(table.values())
    for kind, us in sorted(table.items(), key=lambda kv: -kv[1]):
        print(f"  {kind:20s} {us / 1e3:8.2f} ms  {100 * us / total:5.1f} %")
    return 0


def _as_experts(block) -> dict:
    """One block as the ``{expert: model with .blocks}`` mapping ``fused_blocks`` takes."""
    import torch

    return {"high": torch.nn.ModuleDict({"blocks": torch.nn.ModuleList([block])})}


def _graph_replay(block, inputs, args) -> tuple[float, bool]:
    """The forward captured once in a CUDA graph and replayed: the GPU's own time for it, without launches."""
    import contextlib

    import torch

    def call():
        with torch.no_grad():
            return block(*inputs)

    context = contextlib.nullcontext()
    if args.fused:
        from harness.render.fused import fused_blocks

        context = fused_blocks(_as_experts(block))
    with context:
        reference = call()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            call()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = call()
    graph.replay()
    torch.cuda.synchronize()
    same = torch.equal(captured.view(torch.int16), reference.view(torch.int16))
    return _median(graph.replay, args.repeats), same


def _median(fn, repeats: int) -> float:
    import torch

    fn()
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        started = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _profile(fn) -> dict:
    """CUDA kernel microseconds of one call, summed by kind; the ten costliest elementwise kernels are printed."""
    import torch

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    by_kind: dict = {}
    rest = []
    launches = 0
    for event in prof.key_averages():
        us = event.device_time_total
        if us <= 0 or event.device_type != torch.autograd.DeviceType.CUDA:
            continue
        launches += event.count
        kind = _kind(event.key)
        by_kind[kind] = by_kind.get(kind, 0.0) + us
        if kind == "elementwise / copy":
            rest.append((us, event.count, event.key[:110]))
    for us, count, key in sorted(rest, reverse=True)[:12]:
        print(f"    {us / 1e3:7.2f} ms x{count:<3d} {key}")
    print(f"  {launches} kernels per block forward")
    return by_kind


if __name__ == "__main__":
    sys.exit(main())
