"""The measured envelope of cross-stack drift: how far real stack alternatives on this machine move a preview.

When the golden came from another stack (``stack_diff``), bit-exactness is not expected and a fixed 30 dB says little
about what drift *that* stack change should cause. The envelope measures it: render the preview under stack
alternatives this machine really has, and take the spread of their distances to each other (encoded view, the one
the verdict uses):

* CPU: every ISA ceiling this CPU can pin (ATen, oneDNN and MKL capped together, one rung of a ladder each; a pin
  must happen before torch starts, so each rung renders in its own subprocess) and other thread counts;
* CUDA: each SDPA backend, and TF32 matmuls on / cuDNN TF32 off (ai-toolkit's defaults are the opposite).

A golden is *consistent* when its distance to our render lies inside that spread: encoded PSNR min at least the
envelope's floor (its lowest pairwise PSNR) minus ``margin_db``. The 3 dB default comes from data (docs/PARITY-NOTES.md,
"Cross-stack envelope"): on three CPU-oracle previews, an alternative left out (with every alternative that rendered
the same bits) fell at most 0.57 dB below the others' floor, while a wrong checkpoint, profile or multiplier fell
6.4 to 11.5 dB below it.

``wan-parity calibrate --perturb stack`` measures it and writes it beside the case (:func:`envelope_path`); ``run``
and pytest read it (:func:`envelope_for`) and judge with :func:`thresholds_from` wherever exactness is not expected.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import HarnessError
from .fsutil import write_json_atomic
from .numbers import from_json, to_json

SCHEMA = "wan-parity/envelope@1"
DEFAULT_MARGIN_DB = 3.0
DEFAULT_SSIM_MARGIN = 0.02
# one rung per level, all three libraries capped together (ATen without oneDNN crashes, harness/stack.py)
ISA_LADDER = (("sse4.1", "default", "SSE41", "SSE4_2"), ("avx", "default", "AVX", "AVX"),
              ("avx2", "avx2", "AVX2", "AVX2"), ("avx512", "avx512", "AVX512_CORE", "AVX512"),
              ("avx512-vnni", "avx512", "AVX512_CORE_VNNI", "AVX512"), ("avx512-bf16", "avx512", "AVX512_CORE_BF16", "AVX512"),
              ("avx512-amx", "avx512", "AVX512_CORE_AMX", "AVX512"))


@dataclass(frozen=True)
class Alternative:
    """One real stack alternative: CPU ISA caps (a subprocess), a thread count, or a CUDA kernel choice."""

    name: str
    detail: str
    env: dict = field(default_factory=dict)  # ISA caps: rendered in a fresh process
    threads: int | None = None
    cuda: str | None = None  # "math" | "flash" | "efficient" | "cudnn" | "tf32"


# ---------------------------------------------------------------------------- which alternatives this machine has


def cpu_alternatives(threads: int) -> list[Alternative]:
    """The ISA rungs this CPU can pin (never above it) and other thread counts, at the current pin and threads."""
    from .stack import ATEN_LEVELS, MKL_LEVELS, ONEDNN_LEVELS, PIN_ENV, native_cpu, pinned_env

    native, here = native_cpu(), pinned_env()
    out = []
    for name, aten, onednn, mkl in ISA_LADDER:
        levels = {"aten_cpu_capability": (ATEN_LEVELS, aten), "onednn_max_isa": (ONEDNN_LEVELS, onednn),
                  "mkl_max_isa": (MKL_LEVELS, mkl)}
        if any(ladder.index(want) > ladder.index(native[key]) for key, (ladder, want) in levels.items()):
            continue
        env = {PIN_ENV[key]: want for key, (_, want) in levels.items()}
        if env != {k: here.get(k) for k in env}:
            out.append(Alternative(f"isa {name}", f"ATen {aten}, oneDNN {onednn}, MKL {mkl}", env=env))
    for count in sorted({1, 2, 4} - {threads}):
        if count <= (os.cpu_count() or 1):
            out.append(Alternative(f"threads {count}", f"{count} CPU threads instead of {threads}", threads=count))
    return out


def cuda_alternatives() -> list[Alternative]:
    detail = "scaled_dot_product_attention restricted to SDPBackend.{}"
    return [Alternative(f"sdpa {name}", detail.format(backend), cuda=name) for name, backend in
            (("math", "MATH"), ("efficient", "EFFICIENT_ATTENTION"), ("flash", "FLASH_ATTENTION"),
             ("cudnn", "CUDNN_ATTENTION"))] + [
        Alternative("tf32", "TF32 matmuls on, cuDNN TF32 off (ai-toolkit: the opposite)", cuda="tf32")]


# ---------------------------------------------------------------------------- rendering one alternative


class _CudaChoice:
    """Context: one CUDA kernel choice for the render (an SDPA backend, or the TF32 flags flipped)."""

    def __init__(self, choice: str):
        self.choice = choice

    def __enter__(self):
        import torch

        if self.choice == "tf32":
            self._saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = True, False
            return self
        from torch.nn.attention import SDPBackend, sdpa_kernel

        backend = {"math": SDPBackend.MATH, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                   "flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}[self.choice]
        self._ctx = sdpa_kernel([backend])
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        import torch

        if self.choice == "tf32":
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = self._saved
            return False
        return self._ctx.__exit__(*exc)


def render_alternative(target, options, alt: Alternative, models=None) -> np.ndarray:
    """The preview's frames under one alternative (a subprocess for ISA caps; here otherwise)."""
    from dataclasses import replace

    import torch

    from .engine import Engine

    if alt.env:
        return _render_in_subprocess(target, options, alt.env)
    previous = torch.get_num_threads()
    try:
        engine = Engine(replace(options, threads=alt.threads) if alt.threads else options, models=models)
        if alt.cuda:
            with _CudaChoice(alt.cuda):
                return engine.render(target).frames
        return engine.render(target).frames
    finally:
        torch.set_num_threads(previous)


def _render_in_subprocess(target, options, env: dict) -> np.ndarray:
    """Render in a fresh Python whose ISA caps are ``env`` (set before its torch starts): re-collects the target."""
    import torch

    if target.source is None:
        raise HarnessError(None, "--perturb", f"{target.key}: no source to re-collect it from in a subprocess")
    request = {"source": str(target.source), "key": target.key, "golden_stack": target.golden_stack,
               "threads": options.threads or torch.get_num_threads(), "device": "cpu",
               "options": {"base_model": options.base_model, "vae": options.vae, "profile": options.profile,
                           "ara": options.ara, "path_map": [f"{a}={b}" for a, b in options.path_map.pairs]}}
    package_root = str(Path(__file__).resolve().parents[1])
    child_env = {**os.environ, **env, "PYTHONPATH": os.pathsep.join(
        p for p in (package_root, os.environ.get("PYTHONPATH")) if p)}
    with tempfile.TemporaryDirectory(prefix="wan-parity-envelope-") as tmp:
        out = Path(tmp) / "frames.npy"
        done = subprocess.run([sys.executable, "-m", "harness.envelope", json.dumps(request), str(out)],
                              env=child_env, capture_output=True, text=True)
        if done.returncode != 0 or not out.is_file():
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise HarnessError(None, "--perturb", f"{target.key}: rendering under {env} failed ({last})")
        return np.load(out)


def _worker(request: dict, out: str) -> int:
    """The subprocess side: collect the target again, render it once under this process's caps, save the frames."""
    from .engine import Engine
    from .options import RunOptions
    from .paths import PathMap
    from .targets import collect, with_golden_stack

    o = request["options"]
    options = RunOptions(base_model=o["base_model"], vae=o["vae"], path_map=PathMap(o["path_map"]),
                         device=request["device"], threads=request["threads"], profile=o["profile"], ara=o["ara"])
    targets = with_golden_stack(collect(request["source"], options.path_map), request["golden_stack"])
    target = next((t for t in targets if t.key == request["key"]), None)
    if target is None:
        print(f"{request['key']} not found in {request['source']}", file=sys.stderr)
        return 2
    np.save(out, Engine(options).render(target).frames)
    return 0


# ---------------------------------------------------------------------------- measuring the spread


def distance(reference: np.ndarray, other: np.ndarray, fps: int, ext: str) -> dict:
    """Two renders compared as a render is compared with its golden (encoded view): worst-frame PSNR and SSIM."""
    from .compare import Golden, compare_to_golden

    encoded = compare_to_golden(other, Golden.from_render(reference, fps, ext)).encoded
    return {"psnr_min": encoded.psnr_min, "ssim_min": encoded.ssim_min, "bit_exact": bool(encoded.bit_exact)}


def spread_of(renders: dict[str, np.ndarray], fps: int, ext: str) -> dict:
    """Every pair's distance and the spread (lowest and highest pairwise PSNR, lowest SSIM)."""
    names = list(renders)
    pairs = [{"a": a, "b": b, **distance(renders[a], renders[b], fps, ext)}
             for i, a in enumerate(names) for b in names[i + 1:]]
    psnrs = [p["psnr_min"] for p in pairs]
    return {"pairs": pairs, "psnr_floor": min(psnrs) if psnrs else None, "psnr_ceiling": max(psnrs) if psnrs else None,
            "ssim_floor": min(p["ssim_min"] for p in pairs) if pairs else None}


def measure_preview(target, options, baseline: np.ndarray, alternatives: list[Alternative], models=None) -> dict:
    """The baseline render (this process's stack) and each alternative's, their pairwise spread (JSON-ready)."""
    preview = target.preview
    renders, skipped = {"baseline": baseline}, {}
    for alt in alternatives:
        try:
            renders[alt.name] = render_alternative(target, options, alt, models)
        except (HarnessError, RuntimeError) as exc:  # e.g. an SDPA backend this GPU lacks
            skipped[alt.name] = str(exc).splitlines()[0][:200]
    return to_json({"alternatives": {a.name: a.detail for a in alternatives if a.name in renders}, "skipped": skipped,
                    **spread_of(renders, preview.sample.fps, preview.golden_ext)})


def alternatives_here(device: str, threads: int) -> list[Alternative]:
    return cuda_alternatives() if str(device).startswith("cuda") else cpu_alternatives(threads)


# ---------------------------------------------------------------------------- the file beside the case


def envelope_path(target) -> Path | None:
    """``<case>.envelope.json`` beside a case file or request, ``wan-parity-envelope.json`` in an output folder."""
    source = getattr(target, "source", None)
    if source is None:
        return None
    source = Path(source)
    return source / "wan-parity-envelope.json" if source.is_dir() else source.with_name(source.stem + ".envelope.json")


def document(previews: dict, environment: dict, margin_db: float, ssim_margin: float) -> dict:
    """The envelope file: per preview its spread, and the case's lowest floor (for previews not measured)."""
    floors = [from_json(p["psnr_floor"]) for p in previews.values() if p.get("psnr_floor") is not None]
    ssims = [p["ssim_floor"] for p in previews.values() if p.get("ssim_floor") is not None]
    stack = {k: environment.get(k) for k in ("device", "torch", "threads", "aten_cpu_capability", "onednn_max_isa",
                                             "cpu_vendor", "cpu_model", "gpu_name")}
    return to_json({"schema": SCHEMA, "created": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
                    "environment": stack, "margin_db": margin_db, "ssim_margin": ssim_margin,
                    "psnr_floor": min(floors) if floors else None, "ssim_floor": min(ssims) if ssims else None,
                    "previews": previews})


def save(path: Path, doc: dict) -> Path:
    return write_json_atomic(path, doc)


@dataclass(frozen=True)
class Envelope:
    """The envelope that judges one preview: its own spread, else its case's lowest."""

    file: str
    psnr_floor: float
    ssim_floor: float
    margin_db: float
    ssim_margin: float
    own: bool  # measured on this preview (else the case's floor)
    alternatives: tuple = ()

    @property
    def psnr_threshold(self) -> float:
        return self.psnr_floor - self.margin_db

    def judge(self, psnr_min, ssim_min) -> dict:
        """Where a golden's distance falls: inside (consistent) or below the envelope, in dB from its floor."""
        inside = psnr_min is not None and psnr_min >= self.psnr_threshold and ssim_min >= self.ssim_floor - self.ssim_margin
        return {"file": self.file, "psnr_floor": to_json(self.psnr_floor), "margin_db": self.margin_db,
                "psnr_threshold": to_json(self.psnr_threshold), "ssim_floor": self.ssim_floor,
                "golden_psnr_min": to_json(psnr_min), "below_floor_db": None if psnr_min is None else to_json(
                    round(self.psnr_floor - psnr_min, 3)), "inside": bool(inside), "own_preview": self.own,
                "alternatives": list(self.alternatives)}


_CACHE: dict = {}


def envelope_for(target) -> Envelope | None:
    """The stored envelope that judges this preview, or None (no file, or an envelope that saw no drift)."""
    path = envelope_path(target)
    if path is None or not path.is_file():
        return None
    key = (str(path), path.stat().st_mtime_ns)
    if key not in _CACHE:
        _CACHE[key] = _read(path)
    doc = _CACHE[key]
    entry = doc["previews"].get(target.key)
    psnr = from_json(entry["psnr_floor"]) if entry and entry.get("psnr_floor") is not None else from_json(doc["psnr_floor"])
    ssim = entry["ssim_floor"] if entry and entry.get("ssim_floor") is not None else doc["ssim_floor"]
    if psnr is None or math.isinf(psnr):
        return None
    return Envelope(str(path), psnr, ssim, float(doc["margin_db"]), float(doc["ssim_margin"]), entry is not None,
                    tuple((entry or {}).get("alternatives", {})))


def _read(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise HarnessError(path, None, f"not a readable envelope file ({exc}); re-run `wan-parity calibrate --perturb "
                                       "stack`") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise HarnessError(path, "schema", f"expected {SCHEMA}; re-run `wan-parity calibrate --perturb stack`")
    return doc


def thresholds_from(thresholds, envelope: Envelope | None):
    """The verdict's thresholds judged by the envelope (only where exactness is not expected)."""
    from dataclasses import replace

    if envelope is None or thresholds.require_bit_exact is True:
        return thresholds
    return replace(thresholds, psnr_min=envelope.psnr_threshold, ssim_min=envelope.ssim_floor - envelope.ssim_margin)


if __name__ == "__main__":
    raise SystemExit(_worker(json.loads(sys.argv[1]), sys.argv[2]))
