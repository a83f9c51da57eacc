"""curand's Philox4x32-10 on the CPU, and PyTorch's CUDA ``randn`` laid out as on a given GPU (§3.8).

The *bits* are exact: Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11) is checked
against Random123's published known-answer vectors on any machine, and against curand's ``curand4`` on a GPU
(tests/test_gpu_rng.py). The *normals* are not: curand's Box–Muller takes ``sin``/``cos`` from the GPU's hardware
approximation (``__sincosf``), which no CPU reproduces, so the CPU normals differ from the GPU's in the last fp32
bits and, after the bf16 cast of the posterior, a small fraction of values differ by one bf16 step (measured,
docs/PARITY-NOTES.md). Renders that use them are reported as approximate.
"""

from __future__ import annotations

import numpy as np

M0, M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
W0, W1 = np.uint32(0x9E3779B9), np.uint32(0xBB67AE85)
MASK32 = np.uint64(0xFFFFFFFF)
TWO_POW_32_INV = np.float32(2.3283064e-10)  # curand's CURAND_2POW32_INV (2**-32)
TWO_POW_32_INV_2PI = TWO_POW_32_INV * np.float32(6.2831855)  # CURAND_2POW32_INV_2PI, an fp32 product as in C


def philox4x32_10(ctr: np.ndarray, key: np.ndarray) -> np.ndarray:
    """Ten Philox rounds on counters ``(N, 4)`` uint32 with keys ``(2,)`` or ``(N, 2)`` uint32; returns ``(N, 4)``."""
    c = [np.asarray(ctr[..., i], dtype=np.uint32) for i in range(4)]
    key = np.asarray(key, dtype=np.uint32)
    k0, k1 = key[..., 0].copy(), key[..., 1].copy()
    with np.errstate(over="ignore"):
        for round_ in range(10):
            if round_:
                k0, k1 = k0 + W0, k1 + W1
            p0 = c[0].astype(np.uint64) * M0
            p1 = c[2].astype(np.uint64) * M1
            hi0, lo0 = (p0 >> np.uint64(32)).astype(np.uint32), (p0 & MASK32).astype(np.uint32)
            hi1, lo1 = (p1 >> np.uint64(32)).astype(np.uint32), (p1 & MASK32).astype(np.uint32)
            c = [hi1 ^ c[1] ^ k0, lo1, hi0 ^ c[3] ^ k1, lo0]
    return np.stack(c, axis=-1)


def curand4_bits(seed: int, subsequences: np.ndarray, calls: int, offset: int = 0) -> np.ndarray:
    """What ``curand_init(seed, t, offset)`` then ``calls`` × ``curand4`` return, for each subsequence ``t``.

    Shape ``(len(subsequences), calls, 4)`` uint32. The 128-bit counter of call k is ``t·2**64 + offset/4 + k``;
    ``offset`` must be a multiple of 4 (PyTorch only ever advances the CUDA generator in multiples of 4).
    """
    if offset % 4:
        raise ValueError("only offsets that are multiples of 4 are emulated (PyTorch's CUDA generator uses no other)")
    sub = np.asarray(subsequences, dtype=np.uint64)[:, None]
    low = np.uint64(offset // 4) + np.arange(calls, dtype=np.uint64)[None, :]
    ctr = np.stack(np.broadcast_arrays((low & MASK32).astype(np.uint32), (low >> np.uint64(32)).astype(np.uint32),
                                       (sub & MASK32).astype(np.uint32), (sub >> np.uint64(32)).astype(np.uint32)),
                   axis=-1)
    key = np.array([seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF], dtype=np.uint32)
    return philox4x32_10(ctr.reshape(-1, 4), key).reshape(len(sub), calls, 4)


def box_muller(bits: np.ndarray) -> np.ndarray:
    """curand_normal4 on uint32 quadruples ``(..., 4)``: pairs (x, y) → (sin v · s, cos v · s), s = sqrt(-2 ln u).

    ``u`` and ``v`` are formed exactly as curand forms them (fp32, the ``v`` product fused as the GPU compiler does);
    ``ln``, ``sin`` and ``cos`` are computed in fp64 and rounded, so values match the GPU's to a few fp32 ulps only.
    """
    x, y = bits[..., 0::2].astype(np.float32), bits[..., 1::2].astype(np.float32)
    u = x * TWO_POW_32_INV + np.float32(TWO_POW_32_INV / 2)  # the product is exact: no fusing question
    v = (y.astype(np.float64) * np.float64(TWO_POW_32_INV_2PI) + np.float64(TWO_POW_32_INV_2PI / 2)).astype(np.float32)
    s = np.sqrt(np.float32(-2.0) * np.log(u.astype(np.float64)).astype(np.float32))
    sin, cos = np.sin(v.astype(np.float64)).astype(np.float32), np.cos(v.astype(np.float64)).astype(np.float32)
    out = np.empty(bits.shape, dtype=np.float32)
    out[..., 0::2], out[..., 1::2] = sin * s, cos * s
    return out


def cuda_randn(numel: int, seed: int, threads: int, offset: int = 0) -> np.ndarray:
    """fp32 normals in the order PyTorch's CUDA ``randn`` writes them when its kernel launches ``threads`` threads.

    ATen's grid-stride loop gives thread t its k-th ``curand_normal4`` and writes component i to element
    ``t + threads·(4k + i)`` (``distribution_elementwise_grid_stride_kernel``).
    """
    calls = -(-numel // (4 * threads))
    normals = box_muller(curand4_bits(seed, np.arange(threads), calls, offset))  # (threads, calls, 4)
    return normals.transpose(1, 2, 0).reshape(-1)[:numel]
