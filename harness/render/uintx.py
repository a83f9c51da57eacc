"""torchao 0.10's ``UIntXWeightOnlyConfig`` arithmetic in plain torch (asymmetric, group 64 along ``in_features``).

ai-toolkit quantized with torchao 0.10 until ``b677cdb0`` (2026-07-27), then with its own re-implementation that
claims the same bits; :mod:`harness.render.quant` explains where it is used. The op sequence below is torchao's, in
the weight dtype; checked against torchao 0.10.0 (CPU, uint2/3/4), against ai-toolkit 0.12.26 renders (oracle
case_h, uint4), and between devices: codes, scales and zero points are bit-identical on CPU and CUDA (H200, torch
2.11; tests/test_quant.py), so where ai-toolkit quantized (``low_vram`` puts it on the CPU) changes nothing.
"""

from __future__ import annotations

import torch

UINTX_GROUP = 64
QTYPE_ATTR = "_aitk_qtype"  # set on linears quantized by the plain-torch uintX path
_F32_EPS = torch.finfo(torch.float32).eps


def uintx_qparams(weight: torch.Tensor, bits: int, group: int = UINTX_GROUP):
    """Per-group (scale, zero_point) of torchao 0.10's asymmetric ``choose_qparams_affine`` in the weight dtype."""
    out_f, in_f = weight.shape
    qmin, qmax = 0, (1 << bits) - 1
    grouped = weight.reshape(out_f, in_f // group, group)
    min_val = torch.amin(grouped, dim=-1)
    max_val = torch.amax(grouped, dim=-1)
    min_neg = torch.min(min_val, torch.zeros_like(min_val))
    max_pos = torch.max(max_val, torch.zeros_like(max_val))
    scale = (max_pos - min_neg) / float(qmax - qmin)
    scale = torch.clamp(scale, min=_F32_EPS)
    zero_point = qmin - torch.round(min_neg / scale)
    zero_point = torch.clamp(zero_point, qmin, qmax).to(torch.int32)
    return scale, zero_point


def uintx_codes(weight: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, bits: int,
                group: int = UINTX_GROUP) -> torch.Tensor:
    """torchao 0.10 ``quantize_affine`` (INT zero-point domain): ``clamp(round(W * (1/scale)) + zp)`` as uint8 codes."""
    out_f, in_f = weight.shape
    grouped = weight.reshape(out_f, in_f // group, group)
    q = torch.round(grouped * (1.0 / scale.unsqueeze(-1))) + zero_point.unsqueeze(-1)
    return torch.clamp(q, 0, (1 << bits) - 1).to(torch.uint8).reshape(out_f, in_f)


def uintx_dequantize(codes: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, dtype,
                     group: int = UINTX_GROUP) -> torch.Tensor:
    """torchao 0.10 ``dequantize_affine``: ``(q.int32 - zp.int32).to(dtype) * scale``."""
    out_f, in_f = codes.shape
    q = codes.reshape(out_f, in_f // group, group).to(torch.int32) - zero_point.to(torch.int32).unsqueeze(-1)
    return (q.to(dtype) * scale.unsqueeze(-1)).reshape(out_f, in_f)


def uintx_quantize_(linear: torch.nn.Linear, bits: int, group: int = UINTX_GROUP) -> bool:
    """Replace the weight by its uintX round trip; False (left as is) when ``in_features`` is not a multiple of
    ``group``, where torchao raised and ai-toolkit caught the error."""
    weight = linear.weight.data
    if bits >= 8 or weight.ndim != 2 or weight.shape[1] % group != 0:  # torchao 0.10 packs 1..7 bits only
        return False
    scale, zero_point = uintx_qparams(weight, bits, group)
    codes = uintx_codes(weight, scale, zero_point, bits, group)
    linear.weight.data = uintx_dequantize(codes, scale, zero_point, weight.dtype, group)
    setattr(linear, QTYPE_ATTR, f"uint{bits}")
    return True
