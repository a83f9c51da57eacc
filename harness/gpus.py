"""Common NVIDIA GPUs by name: SM count and resident threads per SM, the two numbers that decide the CUDA RNG layout.

PyTorch's CUDA ``randn`` caps its grid at ``SMs × (max threads per SM // 256)`` blocks of 256 threads
(``calc_execution_policy`` in ATen's cuda/DistributionTemplates.h, §3.8), so above that cap which normal lands where
depends on these two numbers only. A golden stack may say ``gpu_name: RTX 4090`` instead of stating them.

Sources, per entry (SM count = CUDA cores / 128 per SM on Ampere GA10x, Ada, Hopper and Blackwell; 64 on A100/A30/V100
and Turing):

* threads per SM by compute capability: CUDA C++ Programming Guide, "Technical Specifications per Compute
  Capability" (Maximum number of resident threads per SM): 2048 for 7.0, 8.0, 9.0, 10.0; 1024 for 7.5; 1536 for 8.6,
  8.9, 12.0.
* V100: "NVIDIA Tesla V100 GPU Architecture" whitepaper (80 SMs). T4: "NVIDIA Turing GPU Architecture" whitepaper
  (Tesla T4, 40 SMs, 2,560 CUDA cores); RTX 2080 Ti: same whitepaper (68 SMs, 4,352 CUDA cores).
* A100 (SXM4 and PCIe, 40 and 80 GB): "NVIDIA A100 Tensor Core GPU Architecture" whitepaper (108 SMs). A30: NVIDIA
  A30 datasheet (3,584 FP32 CUDA cores = 56 SMs).
* A10 (9,216 CUDA cores = 72 SMs), A40 and RTX A6000 (10,752 = 84), RTX A5000 (8,192 = 64): the NVIDIA datasheets;
  RTX 3090 (10,496 = 82), RTX 3090 Ti (10,752 = 84), RTX 3080 10 GB (8,704 = 68): NVIDIA's GeForce RTX 30 series
  specifications and the "NVIDIA Ampere GA102 GPU Architecture" whitepaper.
* RTX 4090 (16,384 = 128 SMs), RTX 4080 (9,728 = 76), RTX 6000 Ada (18,176 = 142), L40 and L40S (18,176 = 142), L4
  (7,424 = 58): "NVIDIA Ada GPU Architecture" whitepaper v2.01 and the NVIDIA L40/L40S/L4 datasheets.
* H100 SXM5 (132 SMs, 16,896 CUDA cores), H100 PCIe (114 SMs, 14,592): "NVIDIA H100 Tensor Core GPU Architecture"
  whitepaper and docs.nvidia.com's H100 MIG page (114 SMs for the PCIe card); H100 NVL and H200 (SXM and NVL) and
  GH200: GH100 with 132 SMs (the H200 and GH200 datasheets; the H200 here reports 132 × 2048, measured).
* B200: "NVIDIA Blackwell Architecture" technical brief (148 SMs). RTX 5090 (21,760 = 170 SMs), RTX PRO 6000
  Blackwell (24,064 = 188): NVIDIA's GeForce RTX 50 series and RTX PRO 6000 specifications.

A GPU not listed can still be stated with ``gpu_sm_count`` and ``gpu_max_threads_per_sm`` (``wan-parity fingerprint
--device cuda`` writes both).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

BLOCK = 256  # threads per block of ATen's distribution kernels (block_size_bound)


@dataclass(frozen=True)
class Gpu:
    name: str
    sm_count: int
    threads_per_sm: int
    aliases: tuple[str, ...] = ()

    @property
    def grid(self) -> int:
        return rng_grid(self.sm_count, self.threads_per_sm)

    def describe(self) -> str:
        return f"{self.name} ({self.sm_count} SMs × {self.threads_per_sm} threads)"


GPUS = (
    Gpu("V100", 80, 2048, ("Tesla V100", "V100-SXM2", "V100-PCIE")),
    Gpu("T4", 40, 1024, ("Tesla T4",)),
    Gpu("RTX 2080 Ti", 68, 1024),
    Gpu("A100", 108, 2048, ("A100-SXM4", "A100-PCIE", "A100 SXM", "A100 PCIe")),
    Gpu("A30", 56, 2048),
    Gpu("A10", 72, 1536),
    Gpu("A40", 84, 1536),
    Gpu("RTX A6000", 84, 1536),
    Gpu("RTX A5000", 64, 1536),
    Gpu("RTX 3080", 68, 1536),
    Gpu("RTX 3090", 82, 1536),
    Gpu("RTX 3090 Ti", 84, 1536),
    Gpu("RTX 4080", 76, 1536),
    Gpu("RTX 4090", 128, 1536),
    Gpu("RTX 6000 Ada", 142, 1536, ("RTX 6000 Ada Generation",)),
    Gpu("L4", 58, 1536),
    Gpu("L40", 142, 1536),
    Gpu("L40S", 142, 1536),
    Gpu("H100 SXM", 132, 2048, ("H100 80GB HBM3", "H100 SXM5", "H100-SXM5")),
    Gpu("H100 PCIe", 114, 2048, ("H100 PCIE", "H100-PCIE")),
    Gpu("H100 NVL", 132, 2048),
    Gpu("H200", 132, 2048, ("H200 SXM", "H200 NVL")),
    Gpu("GH200", 132, 2048, ("GH200 480GB",)),
    Gpu("B200", 148, 2048),
    Gpu("RTX 5090", 170, 1536),
    Gpu("RTX PRO 6000 Blackwell", 188, 1536, ("RTX PRO 6000", "RTX PRO 6000 Blackwell Server Edition",
                                              "RTX PRO 6000 Blackwell Workstation Edition")),
)
DEFAULT_GPU = "H100 SXM"  # the usual A14B training GPU; the grid assumed where a CUDA golden names none


AMBIGUOUS = {"h100": "H100 SXM (132 SMs) or H100 PCIe (114 SMs)"}


def rng_grid(sm_count: int, threads_per_sm: int) -> int:
    """The grid cap of PyTorch's CUDA randn, in threads: SMs × blocks of 256 per SM × 256."""
    return int(sm_count) * (int(threads_per_sm) // BLOCK) * BLOCK


def launch_threads(numel: int, grid: int) -> int:
    """The threads a draw of ``numel`` values launches under a grid cap: whole blocks, never more than needed."""
    return BLOCK * min(int(grid) // BLOCK, -(-int(numel) // BLOCK))


def _key(name: str, drop_memory: bool = False) -> str:
    """A name compared without vendor words, case, spaces or dashes: 'NVIDIA GeForce RTX 4090' -> 'rtx4090'."""
    text = re.sub(r"\b(nvidia|geforce|tesla|quadro|generation)\b", " ", str(name).lower())
    if drop_memory:  # CUDA's names may carry the memory size: 'NVIDIA A100-SXM4-80GB', 'NVIDIA A100 80GB PCIe'
        text = re.sub(r"\b\d+gb\b", " ", text)
    return re.sub(r"[\s_\-]+", "", text)


_BY_KEY = {_key(alias): gpu for gpu in GPUS for alias in (gpu.name, *gpu.aliases)}


def find_gpu(name: str | None) -> Gpu | None:
    """The table entry for a name as a user writes it or as CUDA reports it; None when not listed."""
    if not name:
        return None
    return _BY_KEY.get(_key(name)) or _BY_KEY.get(_key(name, drop_memory=True))


def grid_for_stack(stack: dict | None) -> tuple[int | None, str]:
    """(grid in threads, where it came from) for a golden stack: its SM numbers, else its ``gpu_name`` in the table.

    ``(None, why)`` when the stack does not say which GPU rendered it.
    """
    stack = stack or {}
    sms, threads = stack.get("gpu_sm_count"), stack.get("gpu_max_threads_per_sm")
    if sms and threads:
        return rng_grid(sms, threads), f"golden stack: {sms} SMs × {threads} threads per SM"
    gpu = find_gpu(stack.get("gpu_name"))
    if gpu is not None:
        return gpu.grid, f"golden stack gpu_name {stack['gpu_name']!r} = {gpu.describe()}"
    if stack.get("gpu_name"):
        which = AMBIGUOUS.get(_key(stack["gpu_name"]))
        what = f"is ambiguous ({which})" if which else "is not in harness/gpus.py"
        return None, f"golden stack gpu_name {stack['gpu_name']!r} {what}; state gpu_sm_count and gpu_max_threads_per_sm"
    return None, "the golden stack names no GPU"


def gpus_by_layout(numel: int) -> dict[int, list[Gpu]]:
    """The table grouped by the grid a draw of ``numel`` values actually launches (equal grids lay values out alike)."""
    out: dict[int, list[Gpu]] = {}
    for gpu in GPUS:
        out.setdefault(launch_threads(numel, gpu.grid), []).append(gpu)
    return out
