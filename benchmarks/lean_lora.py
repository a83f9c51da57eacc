"""The unmerged LoRA path's cost on one attention's q, k and v at A14B width, plain vs ``--lean-lora``.

    python benchmarks/lean_lora.py [--device cuda] [--tokens 17160] [--repeats 20]

Prints the median seconds of the three hooked linears for each path, their ratio to the three bare bf16 linears,
and whether the outputs are the same bits (they must be). 17,160 tokens is 832x480x41's sequence.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _timed(fn, device, repeats: int) -> float:
    import torch

    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv=None) -> int:
    import torch

    from harness.render.lora import LoraLayer, applied

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--width", type=int, default=5120)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    gen = torch.Generator(device).manual_seed(0)
    names = ("to_q", "to_k", "to_v")
    with torch.no_grad():
        module = torch.nn.ModuleDict({n: torch.nn.Linear(args.width, args.width, device=device, dtype=torch.bfloat16)
                                      for n in names})
        layers = {n: LoraLayer(down=torch.randn(args.rank, args.width, device=device, generator=gen) * 0.02,
                               up=torch.randn(args.width, args.rank, device=device, generator=gen) * 0.02) for n in names}
        x = torch.randn(args.tokens, args.width, device=device, generator=gen).to(torch.bfloat16)
        qkv = lambda: [module[n](x) for n in names]  # noqa: E731
        bare = _timed(qkv, device, args.repeats)
        seconds, outputs = {}, {}
        for lean in (False, True):
            with applied({"high": "f"}, {"high": layers}, {"high": module}, 1.0, merged=False, lean=lean):
                qkv()  # warm-up
                seconds[lean] = _timed(qkv, device, args.repeats)
                outputs[lean] = qkv()
    identical = all(torch.equal(a.view(torch.int16), b.view(torch.int16)) for a, b in zip(outputs[False], outputs[True]))
    print(f"device {device}, {args.tokens} tokens x {args.width}, rank {args.rank}, median of {args.repeats}")
    print(f"bare bf16 q/k/v      {bare * 1e3:9.2f} ms")
    for lean, label in ((False, "ai-toolkit's path"), (True, "--lean-lora      ")):
        print(f"{label}    {seconds[lean] * 1e3:9.2f} ms  = {seconds[lean] / bare:.3f}x bare")
    print(f"lean / plain: {seconds[True] / seconds[False]:.3f}; outputs identical: {identical}")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
