"""``wan-parity demo``: the whole flow on a fresh CPU machine with no downloads.

It builds the tiny random-weight Wan 2.2 I2V model and an ai-toolkit-format LoRA pair offline, lays them out as an
ai-toolkit output folder next to the bundled goldens (``harness/demo_case``), and runs the normal ``run`` path on it:
discovery, pairing, exact rendering, comparison, JSON and HTML report.

The bundled goldens were rendered by this harness (see ``demo_case/PROVENANCE.md``), not by ai-toolkit: the demo shows
the workflow and catches regressions of the harness itself. Parity with ai-toolkit is tested against
``../shared/oracle`` (real ai-toolkit renders).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from .stack import STACK_FILE

DEMO_CASE = Path(__file__).parent / "demo_case"
DEMO_ROOT = "/workspace/demo"
CHECKPOINT_STEPS = (250, None)  # a numbered checkpoint and the final, un-numbered one
FAKE_TIMES = {0: 1790000000000, 250: 1790000100000, 500: 1790000200000}


def control_images(folder: Path) -> None:
    """Two procedurally drawn control images (committed; regenerated only with --regenerate)."""
    folder.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:80, 0:96].astype(np.float32)
    hills = np.stack([40 + 60 * (y / 80), 120 + 100 * (np.sin(x / 9) * 0.5 + 0.5) * (y > 35 + 10 * np.sin(x / 13)),
                      200 - 120 * (y / 80)], axis=-1)
    lake = np.stack([30 + 0 * x, 60 + 80 * (y > 40), 140 + 100 * np.abs(np.sin((x + y) / 7))], axis=-1)
    Image.fromarray(np.clip(hills, 0, 255).astype(np.uint8)).save(folder / "hills.png")
    Image.fromarray(np.clip(lake, 0, 255).astype(np.uint8)).save(folder / "lake.png")


def prepare(workdir: Path) -> Path:
    """Build model + LoRAs under ``workdir`` and assemble the ai-toolkit output folder; returns that folder."""
    from .demo_model import build_tiny_model, make_demo_lora_pair

    workdir.mkdir(parents=True, exist_ok=True)
    model = build_tiny_model(workdir / "tiny_model")
    shutil.copytree(DEMO_CASE / "ctrl", workdir / "ctrl", dirs_exist_ok=True)
    output = workdir / "output" / "demo"
    output.mkdir(parents=True, exist_ok=True)
    shutil.copy2(DEMO_CASE / "config.yaml", output / "config.yaml")
    shutil.copy2(DEMO_CASE / STACK_FILE, output / STACK_FILE)
    for seed, step in enumerate(CHECKPOINT_STEPS, start=1):
        make_demo_lora_pair(model, output, "demo", seed=seed * 10, step=step)
    samples = output / "samples"
    if samples.exists():
        shutil.rmtree(samples)
    shutil.copytree(DEMO_CASE / "samples", samples)
    return output


def regenerate_goldens(workdir: Path) -> None:
    """Re-render the bundled goldens with this harness (maintainers only; says so in PROVENANCE.md)."""
    from .aitk.job import load_job
    from .aitk.samples import expand_samples
    from .media import write_like_aitk
    from .paths import PathMap
    from .engine import Engine
    from .options import RunOptions
    from .targets import from_output_dir

    control_images(DEMO_CASE / "ctrl")
    samples = DEMO_CASE / "samples"
    shutil.rmtree(samples, ignore_errors=True)
    samples.mkdir()
    specs = expand_samples(load_job(DEMO_CASE / "config.yaml"))
    for step, stamp in FAKE_TIMES.items():  # placeholders so discovery finds every (step, index)
        for spec in specs:
            (samples / f"{stamp}__{step:09d}_{spec.index}.webp").write_bytes(b"")
    output = prepare(workdir)
    engine = Engine(RunOptions(path_map=PathMap([f"{DEMO_ROOT}={workdir}"]), device="cpu", threads=2))
    for target in from_output_dir(output, PathMap([f"{DEMO_ROOT}={workdir}"])):
        frames = engine.render(target).frames
        write_like_aitk(samples / Path(target.preview.golden).name, frames, target.preview.sample.fps)


def run_demo(out: Path) -> int:
    """``run``'s path on the built folder (runner, report and console directly): results.json, report, exit code."""
    from .console import preview_progress, print_errors, print_results
    from .fsutil import write_json_atomic
    from .options import RunOptions
    from .paths import PathMap
    from .report import write_report
    from .result import exit_code, results_document
    from .runner import run_targets
    from .stack import apply_pin, plan_pin, stack_beside
    from .targets import from_output_dir

    out = Path(out)
    workdir = out / "workspace"
    apply_pin(plan_pin(stack_beside(DEMO_CASE)))  # before building the model starts torch
    output = prepare(workdir)
    print(f"demo: tiny model and LoRAs built offline in {workdir}")
    options = RunOptions(path_map=PathMap([f"{DEMO_ROOT}={workdir}"]), device="cpu", threads=2, out=out)
    targets = from_output_dir(output, options.path_map)
    with preview_progress(len(targets)) as (on_result, on_step):
        environment, results = run_targets(targets, options, on_result=on_result, progress=on_step)
    document = results_document(environment, results)
    write_json_atomic(out / "results.json", document)
    print(f"report: {write_report(document, out)}", file=sys.stderr)
    print_results(results)
    print_errors(results)
    return exit_code(results)


def main() -> None:
    parser = argparse.ArgumentParser(description="maintainer tool for the bundled demo case")
    parser.add_argument("--regenerate", type=Path, metavar="WORKDIR", help="re-render the bundled goldens")
    args = parser.parse_args()
    if args.regenerate:
        regenerate_goldens(args.regenerate)


if __name__ == "__main__":
    main()
