"""Bit-identical fused elementwise kernels (Triton, CUDA) beside the eager chains they replace.

Each kernel does the same IEEE operations in the same order as its eager twin, in one pass over memory instead of
one pass per operation. Triton is built with FP contraction off (``enable_fp_fusion=False``), so ``a * b + c`` stays
a rounded multiply and a rounded add and never becomes an FMA; conversions round to nearest even, as ATen's do, and
a float64 result reaches bf16 through float32, the double rounding ATen's cast makes. Reductions (layer norm, RMS
norm), GEMMs and attention are not here: they stay on the kernels ai-toolkit uses.

The eager twins are the reference (and the path everywhere Triton does not run); tests compare the two bit for bit.
"""

from __future__ import annotations

import functools

import torch

BLOCK = 1024
FLOATS = (torch.float32, torch.bfloat16, torch.float16)


def unavailable(device) -> str | None:
    """Why the fused kernels cannot run on ``device`` (None when they can)."""
    if torch.device(device).type != "cuda":
        return "the fused kernels run on CUDA only"
    try:
        import triton  # noqa: F401
    except ImportError:
        return "Triton is not installed"
    return None


# --- eager twins: the chains as diffusers and ai-toolkit write them -------------------------------------------------


def modulate_eager(normed: torch.Tensor, one_plus_scale: torch.Tensor, shift: torch.Tensor, dtype) -> torch.Tensor:
    """``(norm(x) * (1 + scale) + shift).to(dtype)``: the Wan block's adaptive norm after the layer norm."""
    return (normed * one_plus_scale + shift).to(dtype)


def gated_residual_eager(hidden: torch.Tensor, update: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """``(hidden.float() + update.float() * gate).type_as(hidden)``: the gated residual after attention and FFN."""
    return (hidden.float() + update.float() * gate).type_as(hidden)


def rope_eager(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Wan's rotary embedding on interleaved pairs: (x1 cos - x2 sin, x1 sin + x2 cos), cos from the even and sin
    from the odd positions of the tables, computed in the tables' dtype and written back in ``x``'s."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    c, s = cos[..., 0::2], sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * c - x2 * s
    out[..., 1::2] = x1 * s + x2 * c
    return out


def lora_epilogue_eager(output: torch.Tensor, delta: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """ai-toolkit's unmerged LoRA tail (§8.2): ``output + (delta * m).to(output.dtype)``, ``m`` a float32 [1]."""
    return output + (delta * m).to(output.dtype)


# --- Triton kernels ---------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _triton_kernels() -> dict:
    """Compile-on-first-use kernels; imported lazily so the harness runs where Triton is absent."""
    import triton
    import triton.language as tl

    @triton.jit
    def modulate(normed, one_plus_scale, shift, out, n, row_len, width, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        col = (offs // row_len) * width + offs % width  # (batch, channel) of the [B, 1, D] modulation vectors
        y = tl.load(normed + offs, mask=mask) * tl.load(one_plus_scale + col, mask=mask)
        y = y + tl.load(shift + col, mask=mask)
        tl.store(out + offs, y.to(out.dtype.element_ty), mask=mask)

    @triton.jit
    def gated_residual(hidden, update, gate, out, n, row_len, width, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        col = (offs // row_len) * width + offs % width
        scaled = tl.load(update + offs, mask=mask).to(tl.float32) * tl.load(gate + col, mask=mask)
        y = tl.load(hidden + offs, mask=mask).to(tl.float32) + scaled
        tl.store(out + offs, y.to(out.dtype.element_ty), mask=mask)

    @triton.jit
    def rope(x, cos, sin, out, pairs, token_len, tokens, head_dim, BLOCK: tl.constexpr):
        p = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = p < pairs
        even = 2 * p
        table = ((even // token_len) % tokens) * head_dim + even % head_dim  # the token's row, the pair's column
        c = tl.load(cos + table, mask=mask)
        s = tl.load(sin + table + 1, mask=mask)
        pair = even[:, None] + tl.arange(0, 2)[None, :]  # [BLOCK, 2]: each pair read and written contiguously
        x1, x2 = tl.split(tl.load(x + pair, mask=mask[:, None]).to(c.dtype))
        first = x1 * c - x2 * s
        second = x1 * s + x2 * c
        rotated = tl.join(first.to(tl.float32), second.to(tl.float32))
        tl.store(out + pair, rotated.to(out.dtype.element_ty), mask=mask[:, None])

    @triton.jit
    def lora_epilogue(output, delta, out, n, m, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        scaled = (tl.load(delta + offs, mask=mask) * m).to(out.dtype.element_ty)
        y = tl.load(output + offs, mask=mask).to(tl.float32) + scaled.to(tl.float32)
        tl.store(out + offs, y.to(out.dtype.element_ty), mask=mask)

    return {"modulate": modulate, "gated_residual": gated_residual, "rope": rope, "lora_epilogue": lora_epilogue}


def _launch(name: str, n: int, *args) -> None:
    kernel = _triton_kernels()[name]
    kernel[(max(1, -(-n // BLOCK)),)](*args, BLOCK=BLOCK, enable_fp_fusion=False)


def _vector(v: torch.Tensor, batch: int, width: int) -> torch.Tensor:
    """A [B, 1, D] (or broadcastable) modulation vector as a contiguous [B, D] table."""
    return v.expand(batch, 1, width).reshape(batch, width).contiguous()


def _rowwise(x: torch.Tensor, *vectors: torch.Tensor) -> bool:
    """Whether ``x`` is a contiguous [B, L, D] float tensor and each vector is a float32 [B or 1, 1, D]."""
    if x.dim() != 3 or not x.is_contiguous() or x.dtype not in FLOATS:
        return False
    return all(v.dtype == torch.float32 and v.dim() == 3 and v.shape[1] == 1 and v.shape[2] == x.shape[2]
               and v.shape[0] in (1, x.shape[0]) and v.device == x.device for v in vectors)


def modulate(normed: torch.Tensor, one_plus_scale: torch.Tensor, shift: torch.Tensor, dtype) -> torch.Tensor:
    """:func:`modulate_eager` in one pass (falls back to it for shapes the kernel does not take)."""
    if normed.dtype != torch.float32 or not _rowwise(normed, one_plus_scale, shift) or dtype not in FLOATS:
        return modulate_eager(normed, one_plus_scale, shift, dtype)
    batch, tokens, width = normed.shape
    out = torch.empty(normed.shape, dtype=dtype, device=normed.device)
    _launch("modulate", normed.numel(), normed, _vector(one_plus_scale, batch, width), _vector(shift, batch, width),
            out, normed.numel(), tokens * width, width)
    return out


def gated_residual(hidden: torch.Tensor, update: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """:func:`gated_residual_eager` in one pass (falls back to it for shapes the kernel does not take)."""
    if not _rowwise(hidden, gate) or update.shape != hidden.shape or not update.is_contiguous() \
            or update.dtype not in FLOATS:
        return gated_residual_eager(hidden, update, gate)
    batch, tokens, width = hidden.shape
    out = torch.empty_like(hidden)
    _launch("gated_residual", hidden.numel(), hidden, update, _vector(gate, batch, width), out, hidden.numel(),
            tokens * width, width)
    return out


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """:func:`rope_eager` in one pass; ``x`` is [B, L, H, Dh], the tables [1, L, 1, Dh] (float64 or float32)."""
    batch, tokens, heads, head_dim = x.shape
    tables_ok = (cos.shape == sin.shape == (1, tokens, 1, head_dim) and cos.dtype == sin.dtype
                 and cos.dtype in (torch.float64, torch.float32) and cos.is_contiguous() and sin.is_contiguous())
    if not (tables_ok and x.is_contiguous() and x.dtype in FLOATS and head_dim % 2 == 0):
        return rope_eager(x, cos, sin)
    out = torch.empty_like(x)
    pairs = x.numel() // 2
    _launch("rope", pairs, x, cos, sin, out, pairs, heads * head_dim, tokens, head_dim)
    return out


def lora_epilogue(output: torch.Tensor, delta: torch.Tensor, multiplier: float) -> torch.Tensor:
    """:func:`lora_epilogue_eager` in one pass; ``multiplier`` must be a float32 value (it is passed as one)."""
    if not (output.shape == delta.shape and output.is_contiguous() and delta.is_contiguous()
            and delta.dtype == torch.float32 and output.dtype in FLOATS):
        return lora_epilogue_eager(output, delta, torch.tensor([multiplier], dtype=torch.float32, device=delta.device))
    out = torch.empty_like(output)
    _launch("lora_epilogue", output.numel(), output, delta, out, output.numel(), multiplier)
    return out
