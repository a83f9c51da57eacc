"""Fast mode (declared non-exact): every transformer block compiled, attention routed to the best backend that works.

Reported in rows of its own (``mode`` "fast", ``exact`` false); nothing here is used by the exact path.
"""

from __future__ import annotations

import contextlib

import torch

from .units import BF16

ATTENTION_CANDIDATES = ("_flash_3", "flash", "_native_cudnn", "native")


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__


def pick_attention_backend(device: torch.device) -> tuple[str, list[str]]:
    """The first backend of ATTENTION_CANDIDATES whose requirements are met and that runs a small bf16 attention on
    this device close to SDPA's result. Returns (name, reasons the others were passed over)."""
    from diffusers.models.attention_dispatch import (AttentionBackendName, _check_attention_backend_requirements,
                                                     dispatch_attention_fn)

    gen = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(1, 256, 4, 128, device=device, dtype=BF16, generator=gen) for _ in range(3))
    reference = dispatch_attention_fn(q, k, v, backend=AttentionBackendName("native"))
    skipped = []
    for name in ATTENTION_CANDIDATES:
        try:
            backend = AttentionBackendName(name)
            _check_attention_backend_requirements(backend)
            out = dispatch_attention_fn(q, k, v, backend=backend)
            if not torch.allclose(out.float(), reference.float(), atol=3e-2, rtol=3e-2):
                raise RuntimeError("result differs from SDPA")
            return name, skipped
        except Exception as exc:  # noqa: BLE001 - any failure means: not usable here
            skipped.append(f"{name}: {_first_line(exc)}")
    return "native", skipped


@contextlib.contextmanager
def fast_mode(bundle, attention_backend: str, compile_backend: str = "inductor"):
    """Compile every transformer block in place (``fullgraph=False``, default mode) and route attention to
    ``attention_backend`` through each processor (not the process-global registry); all undone on exit."""
    from diffusers.models.attention_dispatch import AttentionBackendName

    backend = AttentionBackendName(attention_backend)
    processors, blocks = [], []
    for model in bundle.experts.values():
        for module in model.modules():
            processor = getattr(module, "processor", None)
            if processor is not None and hasattr(processor, "_attention_backend"):
                processors.append((processor, processor._attention_backend))
                processor._attention_backend = backend
        for block in model.blocks:
            block.compile(backend=compile_backend)
            blocks.append(block)
    try:
        yield
    finally:
        for processor, previous in processors:
            processor._attention_backend = previous
        for block in blocks:
            block._compiled_call_impl = None
        torch._dynamo.reset()
