"""Units and byte counts every bench module shares."""

from __future__ import annotations

import torch

BF16 = torch.bfloat16
GIB = 1024**3


def nbytes(params) -> int:
    """Bytes the tensors take as stored: what a move between host and device copies."""
    return sum(p.numel() * p.element_size() for p in params)
