"""Requests per hour through ``wan-parity serve``: warm LoRA, cold LoRA switch, per-expert scale change.

The real service (``harness.serve.server.build_service``: request validation, the job store, the one-at-a-time queue,
``render_one``) behind a real uvicorn server on 127.0.0.1, driven over HTTP by the stdlib client. The model is the
bench's synthetic one (``harness.bench.models``: the real Wan 2.2 I2V A14B configs, or the tiny demo ones, with
seeded random bf16 weights built on the device) handed to the engine in place of a loaded folder, and the LoRAs are
synthetic ai-toolkit-layout checkpoints of ``--lora-rank``. Each request has its own prompt and seed.

* warm: the same LoRA pair as the request before (parsed once, in the engine's LoRA cache), one multiplier, so
  ai-toolkit's rule merges it: every request still merges and restores the weights.
* cold switch: a LoRA pair the server has never read (new files each request): read + parse + merge.
* scale change: the warm pair with per-expert multipliers that differ (high 1.0, low 0.5): the unmerged path.

    python benchmarks/serve_bench.py --synthetic a14b --device cuda --size 832x480x41 --steps 10 --requests 2 \\
        --json OUT/serve-a14b.json --markdown OUT/serve-a14b.md
    python benchmarks/serve_bench.py --synthetic tiny --device cpu --size 64x64x9 --steps 6 --requests 3

Timings, not assertions: requests/hour = 3600 / median seconds from POST to ``succeeded``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--synthetic", choices=("tiny", "a14b"), default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", default="64x64x9", help="WxHxF of every request (default 64x64x9)")
    parser.add_argument("--steps", type=int, default=6, help="sample_steps of every request (default 6)")
    parser.add_argument("--requests", type=int, default=3, help="timed requests per mode (default 3)")
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (CPU only; default 2)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    return parser.parse_args(argv)


class FixedModels:
    """A ModelCache that always hands out the one synthetic bundle (what a warm server holds)."""

    def __init__(self, bundle):
        self.bundle = bundle

    def get(self, *args, **kwargs):
        return self.bundle


def stub_model_folder(folder: Path) -> Path:
    """A folder shaped like a diffusers model (path resolution checks the subfolders; nothing is loaded from it)."""
    for sub in ("transformer", "transformer_2", "vae", "text_encoder", "tokenizer"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    (folder / "vae" / "config.json").write_text("{}")
    return folder


def lora_pairs(bundle, folder: Path, count: int, rank: int) -> list[dict]:
    """``count`` distinct ai-toolkit-layout LoRA pairs (high + low files)."""
    from harness.bench.models import write_synthetic_lora

    return [{side: write_synthetic_lora(folder / f"svc{i}_{side}_noise.safetensors", bundle.expert(side), rank,
                                        seed=100 * i + k, name=f"svc{i}")
             for k, side in enumerate(("high", "low"))} for i in range(count)]


def request(pair: dict, size, steps: int, n: int, high: float = 1.0, low: float = 1.0) -> dict:
    width, height, frames = size
    return {"model": "wan22_14b_i2v", "trigger_word": "sks",
            "prompts": [{"prompt": f"[trigger] request {n}: a cat walks across a sunny kitchen floor",
                         "ctrl_img": "ctrl.png", "width": width, "height": height, "num_frames": frames,
                         "sample_steps": steps, "seed": 1000 + n}],
            "loras": [{"path": str(pair["high"]), "transformer": "high", "network_multiplier": high},
                      {"path": str(pair["low"]), "transformer": "low", "network_multiplier": low}]}


def timed(url: str, body: dict) -> dict:
    """One request from POST to its finished record: wall seconds, the render's own seconds, the LoRA path."""
    from harness.serve.client import call, wait_for

    started = time.perf_counter()
    code, job = call("POST", f"{url}/v1/inference", body)
    if code != 202:
        raise SystemExit(f"request refused: {code} {job}")
    record = wait_for(url, job["id"], timeout=3600)
    wall = time.perf_counter() - started
    if record["status"] != "succeeded":
        raise SystemExit(f"job failed: {record['error']}")
    output = record["outputs"][0]
    return {"wall_s": round(wall, 3), "render_s": output["seconds"], "lora_path": output["lora_path"]}


def summary(name: str, runs: list[dict], note: str) -> dict:
    median = statistics.median(r["wall_s"] for r in runs)
    return {"mode": name, "requests": len(runs), "median_s": round(median, 3),
            "requests_per_hour": round(3600 / median, 1), "lora_path": runs[0]["lora_path"], "runs": runs, "note": note}


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    from PIL import Image

    from harness.bench.models import SyntheticModels
    from harness.engine import Engine
    from harness.generate import stand_in
    from harness.options import RunOptions
    from harness.serve.client import serving
    from harness.serve.server import build_service

    size = tuple(int(v) for v in args.size.split("x"))
    work = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    built = time.perf_counter()
    bundle = SyntheticModels(args.synthetic, args.device).bundle()
    build_s = time.perf_counter() - built
    pairs = lora_pairs(bundle, work / "loras", 1 + args.requests, args.lora_rank)
    Image.new("RGB", size[:2], (90, 140, 200)).save(work / "ctrl.png")
    options = RunOptions(base_model=str(stub_model_folder(work / "model")), device=args.device,
                         threads=args.threads if args.device == "cpu" else None, out=work / "results")
    engine = Engine(options, models=FixedModels(bundle))
    service = build_service(options, stand_in(), work / "results", [work], capacity=2, engine=engine)
    rows, n = [], 0
    with serving(service.app) as url:
        first = timed(url, request(pairs[0], size, args.steps, n))  # kernels, first LoRA read
        modes = (("warm", lambda i: request(pairs[0], size, args.steps, i),
                  "same LoRA pair as the request before (cached); one multiplier, so merged and restored per request"),
                 ("cold switch", lambda i: request(pairs[i], size, args.steps, i),
                  "a LoRA pair never read before: read + parse + merge"),
                 ("scale change", lambda i: request(pairs[0], size, args.steps, i, high=1.0, low=0.5),
                  "the cached pair at per-expert multipliers 1.0/0.5: unmerged hooks"))
        for name, make, note in modes:
            runs = []
            for i in range(1, args.requests + 1):
                n += 1
                runs.append(timed(url, make(i)))
            rows.append(summary(name, runs, note))
    doc = {"synthetic": args.synthetic, "device": str(engine.device), "gpu": torch.cuda.get_device_name()
           if torch.cuda.is_available() and args.device.startswith("cuda") else None,
           "torch": torch.__version__, "size": args.size, "steps": args.steps, "lora_rank": args.lora_rank,
           "model_build_s": round(build_s, 2), "first_request": first, "modes": rows,
           "cold_switch_overhead_s": round(rows[1]["median_s"] - rows[0]["median_s"], 3)}
    table = markdown(doc)
    print(table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(table + "\n")
    return 0


def markdown(doc: dict) -> str:
    head = (f"serve, synthetic {doc['synthetic']} on {doc['gpu'] or doc['device']}, {doc['size']}, {doc['steps']} "
            f"steps, LoRA rank {doc['lora_rank']} (first request {doc['first_request']['wall_s']} s)")
    lines = [head, "", "| mode | LoRA path | s/request (median) | requests/hour | note |", "|---|---|---|---|---|"]
    for r in doc["modes"]:
        lines.append(f"| {r['mode']} | {r['lora_path']} | {r['median_s']} | {r['requests_per_hour']} | {r['note']} |")
    lines.append(f"\ncold switch overhead: {doc['cold_switch_overhead_s']} s per request")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
