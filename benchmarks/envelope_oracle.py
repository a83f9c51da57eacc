"""Measure the cross-stack envelope on the CPU oracle (issue 18, docs/PARITY-NOTES.md "Cross-stack envelope").

For each chosen preview: the render under the oracle's pin (AVX2, 2 threads) and under every other ISA rung and
thread count this CPU has; their pairwise encoded PSNR (the envelope); each alternative left out in turn (its
distance to the golden against the others' floor); and three wrong settings (checkpoint, profile, multiplier).

    python benchmarks/envelope_oracle.py --json OUT.json [--keys oracle_case_a::2::1,...]
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.stack import apply_pin, load_stack, plan_pin  # noqa: E402

apply_pin(plan_pin(load_stack(ROOT / "tests" / "stacks" / "cpu-oracle.yaml")), "envelope_oracle")

from harness import envelope as env  # noqa: E402
from harness.compare import compare_to_golden, read_golden  # noqa: E402
from harness.engine import Engine  # noqa: E402
from harness.numbers import to_json  # noqa: E402
from harness.options import RunOptions  # noqa: E402
from harness.paths import PathMap  # noqa: E402
from harness.targets import from_output_dir  # noqa: E402
from tests.oracle_paths import PATH_MAP, TINY_MODEL, output_dir  # noqa: E402

KEYS = "oracle_case_a::2::1,oracle_case_a::2::2,oracle_case_a::4::0"


def wrong_settings(engine, target, targets) -> dict:
    """Three semantic mistakes, rendered like the runner renders and compared with the golden."""
    from harness.render.profiles import get_profile

    base = engine.baseline(target)
    other_step = next(t for t in targets if t.preview.index == target.preview.index and t.preview.step != target.preview.step
                      and t.preview.lora is not None and t.preview.lora != target.preview.lora)
    m = float(base.multiplier) if not isinstance(base.multiplier, dict) else 1.0
    cases = {"wrong checkpoint": engine.render(replace(target, preview=replace(target.preview, lora=other_step.preview.lora))),
             "wrong profile": engine.render(target, replace(base, profile=get_profile("aitk-unipc"))),
             "wrong multiplier": engine.render(target, replace(base, multiplier=0.5 if m == 1.0 else 1.0))}
    golden = read_golden(target)
    return {name: compare_to_golden(o.frames, golden).encoded.psnr_min for name, o in cases.items()}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", required=True)
    parser.add_argument("--keys", default=KEYS)
    args = parser.parse_args()
    options = RunOptions(base_model=str(TINY_MODEL), device="cpu", threads=2, path_map=PathMap([PATH_MAP]))
    engine = Engine(options)
    targets = [t for case in ("case_a", "case_d") for t in from_output_dir(output_dir(case), PathMap([PATH_MAP]))]
    out = {}
    for key in args.keys.split(","):
        target = next(t for t in targets if t.key == key)
        golden = read_golden(target)
        base = engine.render(target).frames
        alts = env.alternatives_here("cpu", 2)
        renders = {"baseline": base} | {a.name: env.render_alternative(target, options, a) for a in alts}
        spread = env.spread_of(renders, target.preview.sample.fps, target.preview.golden_ext)
        to_golden = {n: compare_to_golden(f, golden).encoded.psnr_min for n, f in renders.items()}
        leave_one_out = {}
        for name in renders:
            if name == "baseline":
                continue
            rest = env.spread_of({n: f for n, f in renders.items() if n != name}, target.preview.sample.fps,
                                 target.preview.golden_ext)
            leave_one_out[name] = {"floor_without": rest["psnr_floor"], "to_golden": to_golden[name]}
        out[key] = {"spread": {k: spread[k] for k in ("psnr_floor", "psnr_ceiling", "ssim_floor")},
                    "pairs": [(p["a"], p["b"], p["psnr_min"]) for p in spread["pairs"]], "to_golden": to_golden,
                    "leave_one_out": leave_one_out, "wrong": wrong_settings(engine, target, targets)}
        print(key, json.dumps(out[key]["spread"]), json.dumps(out[key]["wrong"]), flush=True)
    Path(args.json).write_text(json.dumps(to_json(out), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
