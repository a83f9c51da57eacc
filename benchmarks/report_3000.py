"""How long ``wan-parity report`` takes over a nightly-sized results document (3,000 previews by default).

    python benchmarks/report_3000.py [--results 3000] [--media 1.0] [--size small|large] [--max-pictures N|all]
                                     [--self-contained] [--profile]

Builds a synthetic results document in a temporary folder (30 jobs × 25 checkpoints × 4 samples, the settings
varying by job as in a real night: ~6 % failures, 1 % errors, 1 % unreproducible, the rest passing, a third of those
bit-exact), where a ``--media`` share of the checked previews point at a golden and a render on disk. The files
are a few pairs reused: ``small`` 160×96, 17 frames; ``large`` 832×480, 41 frames (ai-toolkit's default preview).
Their comparisons are real (harness.metrics), so the per-frame curves are too. Then it times
``build_report([results.json], out)`` end to end (reading, merging, pictures, page) and prints one JSON line: wall
seconds, and the CPU seconds of the process and its picture workers (the fairer number on a shared machine; the load
average is printed too).

It measures whichever ``harness`` Python imports (installed, or ``PYTHONPATH=TREE``; the JSON names it), so the
same script times an older tree too: options that tree lacks are left out.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SIZES = {"small": (17, 96, 160), "large": (41, 480, 832)}
TRACE = [["high", t] for t in (1000.0, 1000.0, 966.2, 966.2, 927.5, 927.5, 883.2, 883.2)] + \
        [["low", t] for t in (832.4, 832.4, 771.4, 771.4, 561.6, 561.6, 24.4, 24.4)]


def _frames(seed: int, frames: int, height: int, width: int) -> np.ndarray:
    """Smooth moving gradients (what lossy WebP keeps well), different per seed."""
    y, x = np.mgrid[0:height, 0:width]
    out = [np.stack([(x * 3 + i * 9 + seed * 40) % 256, (y * 4 + i * 5) % 256, ((x + y) * 2 + seed * 70) % 256], -1)
           for i in range(frames)]
    return np.asarray(out, dtype=np.uint8)


def media_pairs(folder: Path, size: str, count: int = 4) -> list:
    """``count`` (golden, render, comparison) triples on disk: one bit-exact, the others drifting a little more each."""
    from harness.media import read_frames, write_like_aitk
    from harness.metrics import compare_clips

    f, h, w = SIZES[size]
    pairs = []
    for k in range(count):
        golden = _frames(k, f, h, w)
        noise = np.random.default_rng(k).integers(-3 * k, 3 * k + 1, golden.shape)
        render = np.clip(golden.astype(np.int16) + noise, 0, 255).astype(np.uint8)
        g = write_like_aitk(folder / f"golden{k}.webp", golden, 16)
        r = write_like_aitk(folder / f"render{k}.webp", golden if k == 0 else render, 16)
        pairs.append((g, r, compare_clips(read_frames(g).frames, read_frames(r).frames)))
    return pairs


def results(n: int, media_share: float, pairs: list) -> list:
    """``n`` results as a nightly writes them; every ``1/media_share``-th checked one has files on disk."""
    from harness.metrics import Thresholds
    from harness.result import PreviewResult

    out = []
    with_media = 0
    for i in range(n):
        job, step, sample = i // 100, (i % 100) // 4 * 250, i % 4
        status = "error" if i % 97 == 13 else "unreproducible" if i % 101 == 7 else "fail" if i % 17 == 5 else "pass"
        checked = status in ("pass", "fail")
        gold, render, comparison = pairs[0 if status == "pass" and i % 3 == 0 else 1 + i % (len(pairs) - 1)]
        has_media = checked and with_media < media_share * (i + 1)
        with_media += has_media
        out.append(PreviewResult(
            key=f"job{job:02d}::{step}::{sample}", case=f"job{job:02d}", step=step, index=sample, status=status,
            message="drifted" if status == "fail" else None, golden=str(gold) if has_media else f"/gone/{i}.webp",
            render_path=str(render) if has_media else None, source=f"/outputs/job{job:02d}",
            seed=42 + sample, prompt=f"a {['red', 'blue', 'green'][job % 3]} cat, job {job}", negative_prompt="",
            width=832, height=480, num_frames=41, fps=16, guidance_scale=[3.5, 4.0, 5.0][job % 3],
            sample_steps=[25, 30][job % 2], network_multiplier=1.0,
            lora={"high": f"/loras/job{job:02d}_high_noise.safetensors", "low": f"/loras/job{job:02d}_low_noise.safetensors"},
            lora_path="unmerged" if job % 2 else "merged",
            encoded=comparison if checked else None, raw=comparison if checked else None,
            thresholds=Thresholds() if checked else None, profile=["aitk-euler", "aitk-unipc"][job % 2] if checked else None,
            trace=TRACE if checked else [], notes=[f"ai-toolkit {['0.10.2', '0.8.1'][job % 2]} from the LoRA metadata"],
            seconds=80.0 + i % 7))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=int, default=3000)
    parser.add_argument("--media", type=float, default=1.0, help="share of checked previews with golden/render files")
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--max-pictures", default=None, help="previews with pictures (a number or 'all'); default: the harness's")
    parser.add_argument("--self-contained", action="store_true")
    parser.add_argument("--profile", action="store_true", help="print the 25 most expensive calls (cProfile)")
    args = parser.parse_args(argv)

    from harness.report import build_report
    from harness.result import results_document

    accepted = inspect.signature(build_report).parameters
    with tempfile.TemporaryDirectory(prefix="report-bench-") as tmp:
        tmp = Path(tmp)
        pairs = media_pairs(tmp, args.size)
        document = results_document({"harness": "bench", "device": "cuda:0"}, results(args.results, args.media, pairs))
        (tmp / "results.json").write_text(json.dumps(document), encoding="utf-8")
        calls = []
        kwargs = {}
        if "progress" in accepted:
            kwargs["progress"] = lambda done, total: calls.append(done)
        if args.max_pictures is not None and "max_pictures" in accepted:
            kwargs["max_pictures"] = None if args.max_pictures == "all" else int(args.max_pictures)
        if args.self_contained and "self_contained" in accepted:
            kwargs["self_contained"] = True
        load_before = os.getloadavg()[0]
        start, cpu_start = time.perf_counter(), _cpu()
        if args.profile:
            import cProfile
            import pstats

            profiler = cProfile.Profile()
            outcome = profiler.runcall(build_report, [tmp / "results.json"], tmp / "out", **kwargs)
            pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative").print_stats(25)
        else:
            outcome = build_report([tmp / "results.json"], tmp / "out", **kwargs)
        seconds, cpu_seconds = time.perf_counter() - start, [a - b for a, b in zip(_cpu(), cpu_start)]
        page = outcome.path.stat().st_size
        assets = sum(p.stat().st_size for p in (tmp / "out").rglob("*") if p.is_file()) - page
        players = outcome.path.read_text(encoding="utf-8").count('<div class="player"')
    print(json.dumps({
        "results": args.results, "media_share": args.media, "size": args.size, "options": sorted(kwargs),
        "max_pictures": kwargs.get("max_pictures", "default"), "seconds": round(seconds, 2),
        "cpu_seconds": round(sum(cpu_seconds), 2), "cpu_seconds_workers": round(cpu_seconds[1], 2),
        "load_average_before": round(load_before, 2),
        "per_result_ms": round(1000 * seconds / max(args.results, 1), 2), "players": players,
        "progress_calls": len(calls), "page_mb": round(page / 1e6, 1), "assets_mb": round(assets / 1e6, 1),
        "cpus": os.cpu_count(), "cpu": _cpu_model(), "python": platform.python_version(),
        "harness": str(Path(sys.modules["harness"].__file__).parent),
    }))
    return 0


def _cpu() -> tuple[float, float]:
    """CPU seconds used so far by this process and by its finished children (the picture workers)."""
    t = os.times()
    return t.user + t.system, t.children_user + t.children_system


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


if __name__ == "__main__":
    raise SystemExit(main())
