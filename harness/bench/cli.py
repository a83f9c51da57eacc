"""``wan-parity bench``: time the exact render path on synthetic models with the real Wan 2.2 I2V A14B architecture.

Argument parsing, defaults and validation; ``harness.bench`` (the package) says what is measured and how.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from .driver import Bench
from .flops import parse_size

DEFAULT_SIZES = {"a14b": "832x480x41,1024x1024x41", "tiny": "64x64x9,96x48x9"}
MODES = {"exact", "fused", "fast"}
OFFLOADS = {"none", "experts", "sequential"}


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
    p.add_argument("--modes", default="exact,fast", help="exact, fused (exact with --fused-blocks; its bytes must equal "
                   "exact's), fast (torch.compile + best attention; non-exact)")
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


def fill_defaults(args) -> None:
    """The defaults that depend on the machine or on ``--synthetic``."""
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.sizes is None:
        args.sizes = DEFAULT_SIZES[args.synthetic]
    if args.lora_rank is None:
        args.lora_rank = 32 if args.synthetic == "a14b" else 4


def unknown_modes(args) -> set[str]:
    """Names in ``--modes``/``--offload`` the bench does not know (checked before anything is built)."""
    return (set(args.modes.split(",")) - MODES - {""}) | (set(args.offload.split(",")) - OFFLOADS - {""})


def bench_main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    fill_defaults(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    for text in args.sizes.split(",") + (args.fast_sizes.split(",") if args.fast_sizes else []):
        parse_size(text)
    unknown = unknown_modes(args)
    if unknown:
        print(f"error: unknown mode/offload {sorted(unknown)}", file=sys.stderr)
        return 2
    from ..render.models import _quiet

    _quiet()
    return Bench(args).run()
