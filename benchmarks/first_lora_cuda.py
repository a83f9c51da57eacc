"""Where the first LoRA preview's extra seconds on CUDA go (the issue measured 16.7 s vs 0.13–0.4 s for the others).

Run on a GPU machine from the repository root, with ../shared beside the checkout:

    python benchmarks/first_lora_cuda.py

It renders the CUDA oracle's cuda_a previews in order (step 0 without a LoRA first, so model loading and the plain
path are warm), times every render, and times the first LoRA render's phases: reading the files, applying the hooks,
the denoising loop, and the first fp32 matmul on its own (cuBLAS initialises its fp32/TF32 paths lazily).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
ORACLE_CUDA = ROOT.parent / "shared" / "oracle-cuda"
ORACLE = ROOT.parent / "shared" / "oracle"


def _timed(label: str, fn, *args, **kwargs):
    import torch

    torch.cuda.synchronize()
    started = time.perf_counter()
    out = fn(*args, **kwargs)
    torch.cuda.synchronize()
    print(f"{label}: {time.perf_counter() - started:.3f} s", flush=True)
    return out


def main() -> int:
    import torch

    from harness.engine import Engine
    from harness.options import RunOptions
    from harness.paths import PathMap
    from harness.render import lora as lora_mod
    from harness.targets import from_output_dir

    _timed("CUDA context (first tensor on the device)", lambda: torch.zeros(1, device="cuda"))
    _timed("cuDNN/cuBLAS handles (a first conv and matmul)", lambda: (
        torch.nn.functional.conv3d(torch.ones(1, 4, 3, 8, 8, device="cuda"), torch.ones(4, 4, 3, 3, 3, device="cuda")),
        torch.ones(8, 8, device="cuda", dtype=torch.bfloat16) @ torch.ones(8, 8, device="cuda", dtype=torch.bfloat16)))
    folder = next((ORACLE_CUDA / "cases" / "cuda_a" / "output").iterdir())
    targets = from_output_dir(folder, PathMap([f"/workspace/oracle={ORACLE}"]))
    engine = Engine(RunOptions(base_model=str(ORACLE / "tiny_model"), device="cuda"))
    first = min(targets, key=lambda t: (t.preview.step, t.preview.index))
    _timed("load the model bundle (first render's share)", engine._bundle, first, engine.baseline(first), "cuda")
    first_lora = True
    for target in sorted(targets, key=lambda t: (t.preview.step, t.preview.index)):
        label = f"render {target.key} ({'LoRA' if target.preview.lora else 'no LoRA'})"
        if target.preview.lora is not None and first_lora:
            first_lora = False
            _timed("  first fp32 matmul on the device", lambda: torch.ones(64, 64, device="cuda") @ torch.ones(64, 64, device="cuda"))
            _timed("  read the LoRA files", engine.lora_layers, target)
            original = lora_mod.applied

            def timed_applied(*args, **kwargs):
                started = time.perf_counter()
                context = original(*args, **kwargs)
                print(f"  build the apply context: {time.perf_counter() - started:.3f} s", flush=True)
                return context

            lora_mod.applied = timed_applied
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                    torch.profiler.ProfilerActivity.CUDA]) as prof:
                _timed(label, engine.render, target)
            lora_mod.applied = original
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12), flush=True)
        else:
            _timed(label, engine.render, target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
