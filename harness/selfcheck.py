"""``wan-parity selfcheck``: is this stack deterministic at all?

Bit-exact parity is only meaningful where rendering the same preview twice gives the same bytes. This renders one
reproducible preview twice (fresh prompt cache each time, same loaded models, LoRA applied and removed in between)
and compares the frames. It also prints the settings that are known to break run-to-run or machine-to-machine
exactness, so a nondeterministic result comes with the likely reason next to it.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

from .errors import HarnessError


def environment_flags(engine=None) -> dict[str, object]:
    """The torch settings that change kernels (TF32, cuDNN autotuning) and whether any expert is torch.compile'd."""
    import torch

    flags: dict[str, object] = {
        "torch": torch.__version__,
        "device": getattr(engine, "device", None),
        "cpu_threads": torch.get_num_threads(),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cuda.matmul.allow_bf16_reduced_precision_reduction":
            torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction,
        "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
        "cudnn.benchmark": torch.backends.cudnn.benchmark,
        "cudnn.deterministic": torch.backends.cudnn.deterministic,
    }
    compiled = []
    for bundle in getattr(getattr(engine, "models", None), "_bundles", {}).values():
        for name in ("transformer", "transformer_2", "vae", "text_encoder"):
            module = getattr(bundle, name, None)
            if module is not None and (hasattr(module, "_orig_mod") or type(module).__name__ == "OptimizedModule"):
                compiled.append(name)
    flags["torch.compile"] = ", ".join(sorted(set(compiled))) or "not used"
    return flags


def _warnings(flags: dict[str, object]) -> list[str]:
    out = []
    if str(flags.get("device") or "cpu").startswith("cuda"):
        if flags["cuda.matmul.allow_tf32"] or flags["float32_matmul_precision"] != "highest":
            out.append("TF32 matmuls are on: fp32 matmuls lose precision (ai-toolkit leaves them off)")
        if flags["cudnn.benchmark"]:
            out.append("cudnn.benchmark is on: cuDNN may pick different kernels from run to run")
    if flags["torch.compile"] != "not used":
        out.append(f"torch.compile is active on {flags['torch.compile']}: compiled kernels differ from eager ones")
    return out


def compare_renders(a: np.ndarray, b: np.ndarray, fps: int = 16, ext: str = "webp") -> tuple[int, int, int]:
    """(differing frames, differing pixels, max abs difference) of two lossless renders, via the one comparison."""
    from .compare import Golden, compare_to_golden

    if a.shape != b.shape:
        raise HarnessError("selfcheck", "frames", f"the two renders have different shapes {a.shape} and {b.shape}")
    lossless = compare_to_golden(b, Golden.from_render(a, fps, ext)).raw_golden
    frames = sum(1 for value in lossless.psnr if not math.isinf(value))
    return frames, lossless.differing_pixels, lossless.max_abs_diff


def _pick(targets, preview_index: int):
    reproducible = [t for t in targets if not (t.preview.unreproducible or t.preview.broken)]
    if not reproducible:
        reasons = sorted({t.preview.unreproducible for t in targets if t.preview.unreproducible})
        raise HarnessError(targets[0].config_file if targets else None, None,
                           "no reproducible preview to self-check" + (f" ({reasons[0]})" if reasons else ""))
    if not 0 <= preview_index < len(reproducible):
        raise HarnessError(None, "--preview", f"{preview_index} is out of range: {len(reproducible)} reproducible "
                                              f"preview(s), 0 .. {len(reproducible) - 1}")
    return reproducible[preview_index]


def selfcheck_main(target_path, options=None, preview_index: int = 0, out=None) -> int:
    """Render one preview twice and compare; 0 when identical, 1 when not. Bad input raises HarnessError."""
    out = out or sys.stdout
    from .paths import PathMap
    from .render.text import PromptCache
    from .engine import Engine
    from .options import RunOptions
    from .targets import collect

    options = options or RunOptions()
    path_map = getattr(options, "path_map", None) or PathMap()
    target = _pick(collect(Path(target_path), path_map, lora_overrides=getattr(options, "lora_overrides", None)),
                   preview_index)
    engine = Engine(options)
    print(f"selfcheck: rendering {target.key} twice on {engine.device_for(target)}", file=out)
    renders = []
    for _ in range(2):
        engine.prompts = PromptCache()  # the text encoder runs again too
        outcome = engine.render(target)
        renders.append(outcome)
    profile = outcome.profile
    flags = environment_flags(engine)
    for key, value in flags.items():
        print(f"  {key}: {value}", file=out)
    for warning in _warnings(flags):
        print(f"  warning: {warning}", file=out)
    frames, pixels, max_delta = compare_renders(renders[0].frames, renders[1].frames, target.preview.sample.fps,
                                               target.preview.golden_ext)
    same_trace = renders[0].trace == renders[1].trace
    if frames or not same_trace:
        total = renders[0].frames.shape[0]
        trace_note = "" if same_trace else "; the expert/timestep trace differs too"
        print(f"NONDETERMINISTIC: {frames} frames / {pixels} pixels differ (max Δ {max_delta}) of {total} frames "
              f"in {target.key} (profile {profile.name}){trace_note}", file=out)
        return 1
    print(f"OK: {target.key} rendered twice bit-identically ({renders[0].frames.shape[0]} frames, "
          f"profile {profile.name})", file=out)
    return 0
