"""How many renders `diagnose` needs when one wrong setting explains a whole job (issue: "a diagnosis that stops").

Run from the repository root, with ../shared beside the checkout:

    python benchmarks/diagnose_renders.py [--profile aitk-unipc] [--exhaustive]

It diagnoses every preview of the shared CPU oracle's case_a (ai-toolkit 0.12.26, the Euler sampler) with a forced
wrong ``--profile``, counts the engine's renders, and prints one line per preview plus the total. The pin to the
oracle's AVX2 stack happens before torch starts, as the CLI does it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
ORACLE = ROOT.parent / "shared" / "oracle"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="aitk-unipc", help="the wrong profile to force (default aitk-unipc)")
    parser.add_argument("--exhaustive", action="store_true", help="render every variant (the old behaviour)")
    args = parser.parse_args()

    from harness.cli import pin_for
    from harness.options import RunOptions
    from harness.paths import PathMap
    from harness.stack import load_stack
    from harness.targets import collect, with_golden_stack

    folder = next((ORACLE / "cases" / "case_a" / "output").iterdir())
    path_map = PathMap([f"/workspace/oracle={ORACLE}"])
    targets = with_golden_stack(collect(folder, path_map), load_stack(ROOT / "tests" / "stacks" / "cpu-oracle.yaml"))
    pin_for(targets)

    import harness.diagnose as dg
    from harness.engine import Engine

    class CountingEngine(Engine):
        renders = 0

        def render(self, target, settings=None):
            CountingEngine.renders += 1
            return super().render(target, settings)

    dg.Engine = CountingEngine
    options = RunOptions(device="cpu", threads=2, profile=args.profile, path_map=path_map)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        document, code = dg.diagnose_main(targets, options, Path(out), exhaustive=args.exhaustive)
    for entry in document["diagnoses"]:
        print(f"{entry['key']}: {entry['status']}, best {entry['best']}, {len(entry['ranked'])} rows")
    print(f"{len(targets)} previews, forced --profile {args.profile}, exhaustive={args.exhaustive}: "
          f"{CountingEngine.renders} renders in {time.perf_counter() - started:.1f} s (exit {code})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
