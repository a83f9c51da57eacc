#!/usr/bin/env bash
# Issue 18's GPU proof of the CUDA RNG layout emulation: ONE command on a CUDA machine (an H200), about 2 minutes.
#
#   bash benchmarks/rng_layout_proof.sh [OUTDIR]     (OUTDIR defaults to $OUT when set, else benchmarks/out)
#
# 1. tests/test_gpu_rng.py: a reference kernel built here with nvcc (curand_init + curand_normal4 in ATen's
#    grid-stride order) equals the emulation bit for bit for 6 GPU layouts x 5 sizes x 3 seeds; this GPU's own layout
#    equals torch.randn; the CPU Philox equals curand's bits. Without nvcc those tests skip and say why.
# 2. tests/test_rng_layout.py: the CPU side (Random123 vectors, the installed ATen launch code is the one emulated).
# 3. benchmarks/rng_layout_measure.py: CPU-emulation vs GPU normals (fp32 / bf16 differences), layouts shared, timing.
# Needs only torch (no diffusers, no network). Writes rng_layout_pytest.log, rng_layout.json to OUTDIR.
set -uo pipefail
cd "$(dirname "$0")/.."
OUTDIR="${1:-${OUT:-benchmarks/out}}"
mkdir -p "$OUTDIR"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; \
p = torch.cuda.get_device_properties(0); \
print('torch', torch.__version__, 'CUDA', torch.version.cuda, p.name, p.multi_processor_count, 'SMs x', \
p.max_threads_per_multi_processor, 'threads')" || exit 2
if command -v nvcc >/dev/null; then nvcc --version | tail -1; else
    echo "rng_layout_proof: nvcc not on PATH (CUDA_HOME=${CUDA_HOME:-unset}); the reference-kernel tests look under CUDA_HOME/bin and skip if absent"; fi
python3 -m pytest -q -p no:cacheprovider -rs tests/test_gpu_rng.py tests/test_rng_layout.py 2>&1 | tee "$OUTDIR/rng_layout_pytest.log"
rc=${PIPESTATUS[0]}
timeout 300 python3 benchmarks/rng_layout_measure.py --json "$OUTDIR/rng_layout.json" || { [ "$rc" = 0 ] && rc=1; }
echo "rng_layout_proof: pytest exit $rc; results in $OUTDIR"
exit "$rc"
