"""The environment recorded with every results document: the numerics-deciding stack (``harness.stack``) plus
the facts a reader needs to reproduce or explain a run (harness, Python, codec, driver, TF32 switches)."""

from __future__ import annotations

import os
import platform

from . import __version__


def fingerprint(device: str) -> dict:
    import numpy
    import torch

    from .media import codec_info
    from .stack import fingerprint as stack_fingerprint, pinned_env

    env = {
        "harness": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "numpy": numpy.__version__,
        **codec_info(),
        **stack_fingerprint(device),
        "device": device,
        "cpu_count": os.cpu_count(),
        "pinned": pinned_env() or None,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        env.update({
            "driver": _driver_version(),
            "allow_tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
            "allow_tf32_cudnn": torch.backends.cudnn.allow_tf32,
        })
    return env


def _driver_version() -> str | None:
    try:
        import subprocess

        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None
