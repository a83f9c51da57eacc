#!/usr/bin/env bash
# The GPU benchmark of the issue "measure the real A14B architecture on an H100": ONE command, < 10 minutes on one H100.
#
#   bash benchmarks/run_bench.sh [OUTDIR]     (OUTDIR defaults to $OUT when set, else benchmarks/out)
#
# 1. `--synthetic tiny` (seconds): the tiny demo architecture end to end, including a *measured*
#    N-previews-in-one-process vs load-per-preview comparison through load_bundle.
# 2. `--synthetic a14b`: the real Wan 2.2 I2V A14B architecture (2 x 14.3B experts, UMT5-XXL, Wan 2.1 VAE) built on
#    the GPU with random bf16 weights, then in this order: exact renders at both sizes (a few steps; previews are
#    extrapolated and say so), the same with --fused-blocks (bytes compared), the unmerged LoRA switch and LoRA
#    step, fast mode (torch.compile per block + best attention; non-exact), --offload experts then sequential (bytes compared with the resident renders), the merged
#    LoRA switch, a disk-load probe for the N-previews target, and qfloat8 quantization last.
#    A time budget skips whatever would end past it (recorded as skipped), so the script ends in time.
# Writes bench-tiny.{json,md,log} and bench-a14b.{json,log} + RESULTS-a14b.md to OUTDIR.
set -euo pipefail
cd "$(dirname "$0")/.."
OUTDIR="${1:-${OUT:-benchmarks/out}}"
mkdir -p "$OUTDIR"
TOTAL_BUDGET_S="${BENCH_BUDGET_S:-560}"   # whole script, seconds

# The GPU image lacks diffusers and ftfy: install the carried wheels (carry .whl), as for the GPU tests.
if ! python3 -c "import diffusers, ftfy, optimum.quanto" 2>/dev/null; then
    if [ -d .whl ]; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
        export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
    else
        echo "run_bench: diffusers/ftfy/optimum-quanto missing and no .whl folder to install them from" >&2
        exit 2
    fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTORCH_CUDA_ALLOC_CONF="${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}"  # allocator only, no numerics
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; \
print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name())"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

timeout 90 python3 -m harness.bench --synthetic tiny --device cuda --modes exact --preview-steps 30 --previews 4 \
    --offload none,experts,sequential --quantize \
    --json "$OUTDIR/bench-tiny.json" --markdown "$OUTDIR/bench-tiny.md" 2>&1 | tee "$OUTDIR/bench-tiny.log" || true

LEFT=$(( TOTAL_BUDGET_S - SECONDS ))
echo "run_bench: ${SECONDS}s used, A14B budget ${LEFT}s"
set +e
timeout $(( LEFT + 20 )) python3 -m harness.bench --synthetic a14b --device cuda \
    --sizes 832x480x41,1024x1024x41 --steps-timed 1 --preview-steps 30 --previews 4 \
    --modes exact,fused,fast --offload none,experts,sequential --lora-rank 32 --lora-step --quantize \
    --budget-s "$(( LEFT - 10 ))" --reserve-s 90 --compile-estimate-s 30 \
    --json "$OUTDIR/bench-a14b.json" --markdown "$OUTDIR/RESULTS-a14b.md" 2>&1 | tee "$OUTDIR/bench-a14b.log"
rc=${PIPESTATUS[0]}
echo "run_bench: done in ${SECONDS}s (a14b exit $rc); results in $OUTDIR"
exit "$rc"
