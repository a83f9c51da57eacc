"""Measure, on a CUDA machine, what the RNG layout emulation of issue 18 claims (the numbers in docs/PARITY-NOTES.md).

* how far the CPU emulation (exact Philox bits, fp64 sin/cos) is from the GPU's curand normals: fp32 values equal,
  largest difference, bf16 values that differ (the posterior is drawn in bf16);
* how much of a posterior two GPU layouts share (elements below the smaller grid are equal);
* the gather's cost next to a plain draw (timing only, no assertion).

    python3 benchmarks/rng_layout_measure.py --json OUT.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from harness.gpus import GPUS, find_gpu, launch_threads, rng_grid  # noqa: E402
from harness.render.rng import cuda_randn, device_grid  # noqa: E402

SIZES = {"tiny oracle 64x64x9": 3_072, "832x480x41": 1_098_240, "1024x1024x41": 2_883_584}


def cpu_vs_gpu(numel: int, grid: int, seed: int) -> dict:
    gpu = cuda_randn((numel,), seed, "cuda", grid).cpu()
    cpu = cuda_randn((numel,), seed, "cpu", grid)
    ulps = (gpu.view(torch.int32).long() - cpu.view(torch.int32).long()).abs()
    return {"numel": numel, "grid": grid, "seed": seed, "fp32_equal": int((gpu == cpu).sum()),
            "fp32_max_abs_diff": float((gpu - cpu).abs().max()), "fp32_max_ulps": int(ulps.max()),
            "bf16_differ": int((gpu.bfloat16() != cpu.bfloat16()).sum())}


def shared(numel: int, a: int, b: int, seed: int = 42) -> dict:
    x, y = cuda_randn((numel,), seed, "cuda", a), cuda_randn((numel,), seed, "cuda", b)
    return {"numel": numel, "grids": [a, b], "equal_elements": int((x == y).sum())}


def timing(numel: int, grid: int, repeats: int = 20) -> dict:
    out = {}
    for name, g in (("plain", None), ("gathered", grid)):
        cuda_randn((numel,), 1, "cuda", g)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for i in range(repeats):
            cuda_randn((numel,), i, "cuda", g)
        torch.cuda.synchronize()
        out[f"{name}_ms"] = round((time.perf_counter() - start) / repeats * 1e3, 3)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True)
    args = parser.parse_args()
    props = torch.cuda.get_device_properties(0)
    own = device_grid("cuda")
    a100 = find_gpu("A100").grid
    doc = {"torch": torch.__version__, "gpu": props.name, "sm_count": props.multi_processor_count,
           "max_threads_per_sm": props.max_threads_per_multi_processor, "own_grid": own,
           "cpu_vs_gpu": [cpu_vs_gpu(n, g, s) for n in SIZES.values() for g in (own, a100) for s in (42, 7)],
           "shared_with_a100": [shared(n, own, a100) for n in SIZES.values()],
           "layouts_per_size": {k: sorted({launch_threads(n, gpu.grid) for gpu in GPUS}) for k, n in SIZES.items()},
           "timing_1024x1024x41_a100_layout": timing(SIZES["1024x1024x41"], a100),
           "table_check": {"name": props.name, "table": getattr(find_gpu(props.name), "describe", lambda: None)(),
                           "grid_from_props": rng_grid(props.multi_processor_count,
                                                       props.max_threads_per_multi_processor)}}
    Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
