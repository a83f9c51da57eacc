"""``python -m harness.bench``: the same as ``wan-parity bench`` (benchmarks/run_bench.sh runs it this way)."""

import sys

from .cli import bench_main

sys.exit(bench_main())
