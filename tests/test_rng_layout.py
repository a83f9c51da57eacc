"""The CUDA posterior noise's layout on CPU (§3.8): curand's Philox4x32-10, ATen's grid-stride layout, the GPU table.

The bits are checked against Random123's published vectors; the layout against the facts measured on an H200 and
against the launch code of the installed torch. The GPU side (a reference kernel built with nvcc) is
tests/test_gpu_rng.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from harness import gpus
from harness.gpus import launch_threads, rng_grid
from harness.render import philox

# ----------------------------------------------------------------------------- §3.8 Philox and the CUDA layout

# Random123's known-answer vectors for Philox4x32-10 (its tests/kat_vectors): counter, key, output
PHILOX_KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("ctr,key,out", PHILOX_KAT)
def test_philox_matches_random123_vectors(ctr, key, out):
    got = philox.philox4x32_10(np.array([ctr], dtype=np.uint32), np.array(key, dtype=np.uint32))
    assert tuple(int(v) for v in got[0]) == out


def test_curand4_counter_layout():
    """curand_init(seed, t, offset): the k-th curand4 is Philox of counter t·2**64 + offset/4 + k, key = the seed."""
    seed, t = 2**40 + 7, 2**33 + 5
    bits = philox.curand4_bits(seed, np.array([t], dtype=np.uint64), 2, offset=4 * (2**32 + 1))
    key = np.array([seed & 0xFFFFFFFF, seed >> 32], dtype=np.uint32)
    for k in range(2):
        ctr = np.array([[1 + k, 1, t & 0xFFFFFFFF, t >> 32]], dtype=np.uint32)
        assert np.array_equal(bits[0, k], philox.philox4x32_10(ctr, key)[0])
    with pytest.raises(ValueError, match="multiples of 4"):
        philox.curand4_bits(seed, np.array([0], dtype=np.uint64), 1, offset=2)


def test_emulation_reproduces_the_layout_facts_measured_on_the_h200():
    """The issue's H200 measurements, on the emulation with the H200's grid (270,336 threads)."""
    grid, seed = rng_grid(132, 2048), 9
    big = philox.cuda_randn(12 * grid, seed, launch_threads(12 * grid, grid))
    exact = philox.cuda_randn(grid, seed, launch_threads(grid, grid))
    double = philox.cuda_randn(2 * grid, seed, launch_threads(2 * grid, grid))
    assert np.array_equal(exact, big[:grid])  # a draw of the cap = the first values of a 12x larger draw
    assert np.array_equal(double[grid:], big[grid:2 * grid])  # the next cap-many values: those of a 2x draw
    assert launch_threads(grid + 256, grid) == grid  # a draw of cap + 256 is already capped
    small = philox.cuda_randn(1000, seed, launch_threads(1000, grid))
    assert np.array_equal(small, exact[:1000])  # below the cap every GPU agrees


def test_layouts_differ_above_the_smaller_cap_only():
    a100, h200, n = rng_grid(108, 2048), rng_grid(132, 2048), 1_098_240
    x = philox.cuda_randn(n, 5, launch_threads(n, a100))
    y = philox.cuda_randn(n, 5, launch_threads(n, h200))
    assert np.array_equal(x[:a100], y[:a100])  # thread t's first value, on both
    assert (x[a100:] != y[a100:]).mean() > 0.99


def test_box_muller_pairs_sin_then_cos_of_the_second_word():
    bits = np.array([[2**31, 0, 2**31, 2**30]], dtype=np.uint32)  # u = 0.5 (+2**-33): s = sqrt(2 ln 2)
    out = philox.box_muller(bits)[0]
    s = np.sqrt(-2 * np.log(0.5))
    assert out[0] == pytest.approx(0.0, abs=1e-6) and out[1] == pytest.approx(s, rel=1e-6)
    assert out[2] == pytest.approx(s, rel=1e-6) and out[3] == pytest.approx(0.0, abs=1e-5)  # v = pi/2


def test_installed_aten_launches_randn_as_emulated():
    """Read the launch code of this torch (§3.8): 256-thread blocks, a grid capped by SMs x threads per SM / 256,
    four normals per curand_normal4 call, written grid-stride. A torch that changed it fails here."""
    from torch.utils.cpp_extension import include_paths

    header = next((Path(p) / "ATen/native/cuda/DistributionTemplates.h" for p in include_paths()
                   if (Path(p) / "ATen/native/cuda/DistributionTemplates.h").is_file()), None)
    if header is None:
        pytest.skip("this torch ships no ATen CUDA headers")
    code = re.sub(r"\s+", " ", header.read_text())
    for needle in ("const uint32_t block_size_bound = 256;",
                   "maxThreadsPerMultiProcessor / block_size;",
                   "multiProcessorCount) * blocks_per_sm, grid.x);",
                   "curand_init(seed, idx, offset, &state);",
                   "int64_t li = linear_index + blockDim.x * gridDim.x * ii;",
                   "linear_index += blockDim.x * gridDim.x * unroll_factor",
                   "return curand_normal4(state);",
                   "sizeof(dist_func_return_t) / sizeof(accscalar_t);"):
        assert needle in code, f"{header}: {needle!r} not found; re-read the launch code and update §3.8"


# ----------------------------------------------------------------------------- the GPU table


@pytest.mark.parametrize("name,grid", [("NVIDIA H200", 270_336), ("NVIDIA H100 80GB HBM3", 270_336),
                                       ("NVIDIA A100-SXM4-80GB", 221_184), ("NVIDIA A100 80GB PCIe", 221_184),
                                       ("RTX 4090", 196_608), ("NVIDIA GeForce RTX 4090", 196_608),
                                       ("NVIDIA H100 PCIe", 233_472), ("L40S", 218_112), ("Tesla T4", 40_960)])
def test_gpu_names_as_written_and_as_cuda_reports_them(name, grid):
    assert gpus.find_gpu(name).grid == grid


def test_grid_for_stack_numbers_beat_the_name_and_unknown_names_say_so():
    assert gpus.grid_for_stack({"gpu_name": "RTX 4090", "gpu_sm_count": 108, "gpu_max_threads_per_sm": 2048})[0] == 221_184
    assert gpus.grid_for_stack({"gpu_name": "RTX 4090"})[0] == 196_608
    grid, why = gpus.grid_for_stack({"gpu_name": "H100"})
    assert grid is None and "ambiguous" in why
    grid, why = gpus.grid_for_stack({"gpu_name": "NVIDIA A10G"})
    assert grid is None and "gpu_sm_count" in why
    assert gpus.grid_for_stack(None) == (None, "the golden stack names no GPU")


def test_table_entries_are_consistent():
    names = [g.name for g in gpus.GPUS]
    assert len(set(names)) == len(names)
    assert all(g.threads_per_sm in (1024, 1536, 2048) and 20 <= g.sm_count <= 200 for g in gpus.GPUS)
    assert gpus.find_gpu(gpus.DEFAULT_GPU) is not None
