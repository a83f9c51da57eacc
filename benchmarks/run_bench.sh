#!/usr/bin/env bash
# The GPU benchmark of the issue "measure the real A14B architecture on an H100": one command, < 9 minutes on one H100.
#
#   bash benchmarks/run_bench.sh [OUTDIR] [PART]   (OUTDIR defaults to $OUT when set, else benchmarks/out)
#
# PART main (default): tiny + A14B resident exact, LoRA switch, --offload experts, --fast.
# PART sequential:     A14B resident exact (the byte reference) + --offload sequential. Separate because streaming
#                      every block per forward moves ~250 GiB per short render: it does not fit beside `main` in 9 min.
#
# 1. `--synthetic tiny` (seconds): the tiny demo architecture, including a *measured* N-previews-in-one-process vs
#    load-per-preview comparison through load_bundle.
# 2. `--synthetic a14b`: the real Wan 2.2 I2V A14B architecture (2 x 14.3B experts, UMT5-XXL, Wan 2.1 VAE) built on
#    the GPU with random bf16 weights; a few denoising steps per size, previews extrapolated (rows say so); offload
#    modes when load_bundle has `offload`; fast mode last (torch.compile per block, best attention; non-exact).
#    A time budget skips the remaining phases (recorded as skipped) so the script ends in time.
# Writes bench-tiny.{json,md,log}, bench-<a14b|a14b-sequential>.{json,log} and RESULTS-<same>.md to OUTDIR.
set -euo pipefail
cd "$(dirname "$0")/.."
OUTDIR="${1:-${OUT:-benchmarks/out}}"
PART="${2:-main}"
mkdir -p "$OUTDIR"
TOTAL_BUDGET_S="${BENCH_BUDGET_S:-520}"   # whole script, seconds

# The GPU image lacks diffusers and ftfy: install the carried wheels (carry .whl), as for the GPU tests.
if ! python3 -c "import diffusers, ftfy" 2>/dev/null; then
    if [ -d .whl ]; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
        export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
    else
        echo "run_bench: diffusers/ftfy missing and no .whl folder to install them from" >&2
        exit 2
    fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTORCH_CUDA_ALLOC_CONF="${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}"  # allocator only, no numerics
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; \
print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name())"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

if [ "$PART" = main ]; then
    timeout 120 python3 -m harness.bench --synthetic tiny --device cuda --modes exact --preview-steps 30 --previews 4 \
        --json "$OUTDIR/bench-tiny.json" --markdown "$OUTDIR/bench-tiny.md" 2>&1 | tee "$OUTDIR/bench-tiny.log" || true
    A14B=(--modes exact,fast --offload none,experts --lora-rank 32 --lora-step)
    NAME=a14b
elif [ "$PART" = sequential ]; then
    A14B=(--modes exact --offload none,sequential --lora-rank 0)
    NAME=a14b-sequential
else
    echo "run_bench: PART is main or sequential, not $PART" >&2
    exit 2
fi

LEFT=$(( TOTAL_BUDGET_S - SECONDS ))
echo "run_bench: ${SECONDS}s used, A14B budget ${LEFT}s"
set +e
timeout $(( LEFT + 15 )) python3 -m harness.bench --synthetic a14b --device cuda \
    --sizes 832x480x41,1024x1024x41 --steps-timed 1 --preview-steps 30 --previews 4 "${A14B[@]}" \
    --budget-s "$(( LEFT - 10 ))" --reserve-s 90 --compile-estimate-s 60 \
    --json "$OUTDIR/bench-$NAME.json" --markdown "$OUTDIR/RESULTS-$NAME.md" 2>&1 | tee "$OUTDIR/bench-$NAME.log"
rc=${PIPESTATUS[0]}
echo "run_bench: done in ${SECONDS}s (a14b exit $rc); results in $OUTDIR"
exit "$rc"
