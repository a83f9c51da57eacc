"""CUDA RNG layout across GPUs (§3.8), proven on the GPU against an independent reference kernel.

The reference is built here with the CUDA toolchain: curand's device API (``curand_init(seed, t, offset)`` then
``curand_normal4``) written out in ATen's grid-stride order for a grid of our choosing, i.e. what any GPU with that
grid cap would write. The emulation (``harness.render.rng.cuda_randn``) must equal it bit for bit for several GPU
layouts, and this GPU's own layout must equal plain ``torch.randn``. The CPU Philox (``harness.render.philox``) must
equal curand's bits. Self-contained: needs torch with CUDA, and nvcc for the reference kernel (skipped without it).
Run: ``bash benchmarks/rng_layout_proof.sh``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.gpus import find_gpu, launch_threads, rng_grid
from harness.render.philox import curand4_bits
from harness.render.rng import cuda_randn, device_grid

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible")]

# (SMs, threads per SM): A100, RTX 4090, H100 PCIe, L40S, T4, and the H100 SXM / H200 layout
LAYOUTS = [(108, 2048), (128, 1536), (114, 2048), (142, 1536), (40, 1024), (132, 2048)]
# tiny oracle, just above the H200 cap, 832x480x41 and 1024²x41 posteriors, an odd size
SIZES = [3_072, 270_336 + 256, 1_098_240, 2_883_584, 1_000_003]
SEEDS = [42, 0, 2**40 + 7]

CUDA_SOURCE = r"""
#include <cstdint>
#include <curand_kernel.h>

__global__ void ref_normal_kernel(float* out, long long n, unsigned long long seed, unsigned long long offset) {
  long long threads = (long long)blockDim.x * gridDim.x;
  long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  curandStatePhilox4_32_10_t state;
  curand_init(seed, t, offset, &state);
  for (long long base = t; base - t < n; base += 4 * threads) {
    float4 r = curand_normal4(&state);
    float v[4] = {r.x, r.y, r.z, r.w};
    for (int i = 0; i < 4; ++i) {
      long long li = base + threads * i;
      if (li < n) out[li] = v[i];
    }
  }
}

__global__ void ref_bits_kernel(int* out, const int64_t* subs, long long count, int calls,
                                unsigned long long seed, unsigned long long offset) {
  long long j = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= count) return;
  curandStatePhilox4_32_10_t state;
  curand_init(seed, (unsigned long long)subs[j], offset, &state);
  for (int k = 0; k < calls; ++k) {
    uint4 b = curand4(&state);
    int* o = out + (j * calls + k) * 4;
    o[0] = (int)b.x; o[1] = (int)b.y; o[2] = (int)b.z; o[3] = (int)b.w;
  }
}

void launch_ref_normal(float* out, int64_t n, int64_t blocks, uint64_t seed, uint64_t offset) {
  ref_normal_kernel<<<blocks, 256>>>(out, n, seed, offset);
}

void launch_ref_bits(int* out, const int64_t* subs, int64_t count, int64_t calls, uint64_t seed, uint64_t offset) {
  ref_bits_kernel<<<(count + 255) / 256, 256>>>(out, subs, count, (int)calls, seed, offset);
}
"""
# the torch side stays in C++ (g++), so nvcc compiles curand code only
CPP_SOURCE = r"""
void launch_ref_normal(float* out, int64_t n, int64_t blocks, uint64_t seed, uint64_t offset);
void launch_ref_bits(int* out, const int64_t* subs, int64_t count, int64_t calls, uint64_t seed, uint64_t offset);

torch::Tensor ref_normal(int64_t n, int64_t blocks, int64_t seed, int64_t offset) {
  auto out = torch::empty({n}, torch::dtype(torch::kFloat32).device(torch::kCUDA));
  launch_ref_normal(out.data_ptr<float>(), n, blocks, (uint64_t)seed, (uint64_t)offset);
  return out;
}

torch::Tensor ref_bits(torch::Tensor subs, int64_t calls, int64_t seed, int64_t offset) {
  auto out = torch::empty({subs.numel(), calls, 4}, torch::dtype(torch::kInt32).device(torch::kCUDA));
  launch_ref_bits(out.data_ptr<int>(), subs.data_ptr<int64_t>(), subs.numel(), calls, (uint64_t)seed, (uint64_t)offset);
  return out;
}
"""


def _cuda_home() -> Path | None:
    """A CUDA toolkit folder with nvcc and the runtime headers: CUDA_HOME, torch's guess, nvcc's on PATH, /usr/local/cuda."""
    from torch.utils.cpp_extension import CUDA_HOME

    nvcc = shutil.which("nvcc")
    candidates = [os.environ.get("CUDA_HOME"), CUDA_HOME, nvcc and Path(nvcc).resolve().parent.parent, "/usr/local/cuda"]
    for home in (Path(c) for c in candidates if c):
        if (home / "bin" / "nvcc").is_file() and (home / "include" / "cuda_runtime.h").is_file():
            return home
    return None


def _curand_include() -> list[str]:
    """Where curand_kernel.h is: the toolkit's include folder, else a pip ``nvidia-curand`` package's."""
    home = _cuda_home()
    roots = [home / "include", home / "targets" / "x86_64-linux" / "include"] if home else []
    try:
        import nvidia

        roots += [p for base in nvidia.__path__ for p in Path(base).glob("*/include")]
    except ImportError:
        pass
    return [str(r) for r in roots if (r / "curand_kernel.h").is_file()]


@pytest.fixture(scope="module")
def reference():
    """The reference kernels, built once for this GPU's architecture (skip with the reason when impossible)."""
    home = _cuda_home()
    if home is None:
        pytest.skip("no CUDA toolkit with nvcc found (CUDA_HOME, PATH, /usr/local/cuda): the reference kernel cannot "
                    "be built")
    includes = _curand_include()
    if not includes:
        pytest.skip("curand_kernel.h not found (CUDA toolkit include folder or nvidia-curand package)")
    from torch.utils import cpp_extension

    cpp_extension.CUDA_HOME = str(home)  # torch guessed it at import time, maybe from a bare nvcc on PATH

    major, minor = torch.cuda.get_device_capability()
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", f"{major}.{minor}")
    build = tempfile.mkdtemp(prefix="wan_parity_rng_ref_")
    return cpp_extension.load_inline("wan_parity_rng_ref", CPP_SOURCE, cuda_sources=CUDA_SOURCE, functions=["ref_normal", "ref_bits"],
                       extra_include_paths=includes, build_directory=build, verbose=False)


def _reference_draw(ref, numel: int, sm: int, tpsm: int, seed: int) -> torch.Tensor:
    blocks = launch_threads(numel, rng_grid(sm, tpsm)) // 256
    return ref.ref_normal(numel, blocks, seed, 0)


def _skip_if_larger(grid: int, numel: int):
    if launch_threads(numel, grid) > launch_threads(numel, device_grid("cuda")):
        pytest.skip(f"this GPU's grid ({device_grid('cuda')} threads) is smaller than the layout's ({grid})")


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


# ----------------------------------------------------------------------------- this GPU's own layout


@pytest.mark.parametrize("numel", SIZES)
@pytest.mark.parametrize("seed", SEEDS)
def test_own_layout_is_plain_randn_and_gathering_it_from_a_larger_draw_gives_the_same(numel, seed):
    """The gather path, asked for this GPU's own grid from a 3x longer draw, must give torch.randn's bits."""
    from harness.render.rng import _gather

    own = device_grid("cuda")
    plain = torch.randn(numel, generator=torch.Generator("cuda").manual_seed(seed), device="cuda")
    assert torch.equal(_bits(cuda_randn((numel,), seed, "cuda", own)), _bits(plain))
    gathered = _gather(seed, torch.device("cuda"), numel, launch_threads(numel, own), own, extra_calls=2)
    assert torch.equal(_bits(gathered), _bits(plain))


def test_this_gpu_is_in_the_table_with_its_own_numbers():
    props = torch.cuda.get_device_properties(0)
    gpu = find_gpu(props.name)
    if gpu is None:
        pytest.skip(f"{props.name} is not in harness/gpus.py")
    assert (gpu.sm_count, gpu.threads_per_sm) == (props.multi_processor_count, props.max_threads_per_multi_processor)


# ----------------------------------------------------------------------------- against the reference kernel


@pytest.mark.parametrize("numel", SIZES)
def test_reference_kernel_in_this_gpus_layout_equals_torch_randn(reference, numel):
    """The reference kernel is faithful to ATen: with this GPU's grid it writes exactly torch.randn's values."""
    props = torch.cuda.get_device_properties(0)
    for seed in SEEDS:
        ref = _reference_draw(reference, numel, props.multi_processor_count, props.max_threads_per_multi_processor, seed)
        plain = torch.randn(numel, generator=torch.Generator("cuda").manual_seed(seed), device="cuda")
        assert torch.equal(_bits(ref), _bits(plain)), f"seed {seed}"


@pytest.mark.parametrize("sm,tpsm", LAYOUTS, ids=[f"{s}x{t}" for s, t in LAYOUTS])
@pytest.mark.parametrize("numel", SIZES)
def test_emulated_layout_equals_reference_kernel(reference, sm, tpsm, numel):
    grid = rng_grid(sm, tpsm)
    _skip_if_larger(grid, numel)
    for seed in SEEDS:
        ours = cuda_randn((numel,), seed, "cuda", grid)
        assert torch.equal(_bits(ours), _bits(_reference_draw(reference, numel, sm, tpsm, seed))), f"seed {seed}"


def test_layouts_really_differ_above_the_cap_and_agree_below():
    """The proof would be empty if every layout gave the same tensor."""
    big = {(s, t): cuda_randn((1_098_240,), 42, "cuda", rng_grid(s, t)) for s, t in LAYOUTS[:4]}
    assert len({tuple(v[:: 9973].tolist()) for v in big.values()}) == 4
    small = {(s, t): cuda_randn((3_072,), 42, "cuda", rng_grid(s, t)) for s, t in LAYOUTS}
    assert all(torch.equal(v, small[LAYOUTS[0]]) for v in small.values())


def test_cpu_philox_equals_curand_bits(reference):
    """Philox4x32-10 on the CPU gives curand4's bits: subsequences past 2**32, nonzero offsets, 64-bit seeds."""
    subs = np.array([0, 1, 255, 256, 270_335, 2**33 + 5, 2**62 + 3], dtype=np.int64)
    for seed in (0, 42, 2**40 + 7, 2**63 - 25):
        for offset in (0, 8, 4 * 2**32):
            gpu = reference.ref_bits(torch.from_numpy(subs).cuda(), 3, seed, offset).cpu().numpy().view(np.uint32)
            assert np.array_equal(curand4_bits(seed, subs.astype(np.uint64), 3, offset), gpu), (seed, offset)


@pytest.mark.parametrize("sm,tpsm", [(108, 2048), (132, 2048)], ids=["A100", "H200"])
def test_cpu_emulation_is_close_to_the_gpu(sm, tpsm):
    """CPU normals (exact bits, fp64 sin/cos) vs the GPU's: a few fp32 ulps; after bf16, almost all equal."""
    numel, grid = 1_098_240, rng_grid(sm, tpsm)
    gpu = cuda_randn((numel,), 42, "cuda", grid).cpu()
    cpu = cuda_randn((numel,), 42, "cpu", grid)
    assert (gpu - cpu).abs().max().item() < 1e-4
    mismatch = (gpu.bfloat16() != cpu.bfloat16()).float().mean().item()
    assert mismatch < 1e-2, f"{mismatch:.2%} of bf16 values differ"


def test_a_larger_grid_than_this_gpus_falls_back_to_the_cpu_emulation():
    from harness.render.rng import emulated

    own, numel = device_grid("cuda"), device_grid("cuda") * 8
    assert emulated(numel, own + 256, "cuda") and not emulated(numel, own, "cuda")
    drawn = cuda_randn((numel,), 1, "cuda", own + 256)
    assert drawn.device.type == "cuda"
    assert torch.equal(drawn.cpu(), cuda_randn((numel,), 1, "cpu", own + 256))
