"""``wan-parity bench``: time the exact render path on synthetic models with the real Wan 2.2 I2V A14B architecture.

The real weights cannot be downloaded here, but the architecture is public, so the models are built from the real
configs with random bf16 weights (``--synthetic a14b``) or from the tiny demo configs (``--synthetic tiny``), directly
on the device: construction runs under ``torch.device(device)`` with bf16 as the default dtype, so every parameter is
allocated and randomly initialised on the GPU (no host round trip, no fp32 copy).

What is timed goes through the harness's own code: ``render_sample`` (text encode, VAE encode, ``denoise``, ``decode``)
with timers hooked onto the text encoder, the VAE's ``encode``/``decode`` and ``denoise``'s per-step progress callback,
and ``lora.applied`` for LoRA switches. So the exact-mode numbers measure what ``wan-parity run`` does. At the real
size a 30-step preview takes minutes, so an A14B preview is *extrapolated* from a short render of a few steps (all its
one-time costs included) plus the measured per-expert step time; every extrapolated or derived number says so.

``--modes fast`` compiles each transformer block (``torch.compile``, ``fullgraph=False``, default mode) and picks the
best attention backend that works on the device; it is declared non-exact and reported in separate rows.
``--offload experts|sequential`` switches the same bundle in place with ``ModelBundle.set_offload`` (what
``load_bundle(..., offload=...)`` and the model cache call), renders one step per expert, compares the bytes with the
resident render of the same steps; both modes share the pinned host homes of the weights (``render/offload.py``).
``--quantize`` ends with ai-toolkit's default quantized sampling model (qfloat8 experts and text encoder).

Modules, by concern: ``flops`` (sizes and the FLOP bound), ``models`` (synthetic configs, models, LoRA files),
``timing`` (clock, micro-benchmarks, the instrumented render), ``samples`` (what is rendered), ``fast`` (compile and
attention backend), ``report`` (rows, JSON, tables, Markdown), ``state`` (what the phases share), ``phases``,
``modes``, ``loras`` and ``previews`` (the measured phases), ``driver`` (their order) and ``cli`` (``bench_main``).
"""

from .cli import DEFAULT_SIZES, bench_main, build_parser
from .driver import Bench
from .fast import ATTENTION_CANDIDATES, fast_mode, pick_attention_backend
from .flops import (NOMINAL_BF16_TFLOPS, TEXT_LEN, flops_per_forward, nominal_tflops, parse_size, parse_sizes,
                    size_label, step_bound, tokens, transformer_dims)
from .models import (A14B_TRANSFORMER_CONFIG, A14B_VAE_CONFIG, UMT5_XXL_CONFIG, SyntheticModels, model_stats,
                     synthetic_configs, write_synthetic_lora)
from .report import HEADERS, SCHEMA, Recorder, markdown_report, print_table, table_rows
from .samples import GUIDANCE, NEGATIVE, PROMPT, experts_for_steps, extrapolate_preview, short_render_steps
from .timing import Clock, measure_attention, measure_matmul_peak, step_times_by_expert, timed_render
from .units import BF16, GIB

__all__ = [
    "A14B_TRANSFORMER_CONFIG", "A14B_VAE_CONFIG", "ATTENTION_CANDIDATES", "BF16", "Bench", "Clock", "DEFAULT_SIZES",
    "GIB", "GUIDANCE", "HEADERS", "NEGATIVE", "NOMINAL_BF16_TFLOPS", "PROMPT", "Recorder", "SCHEMA", "SyntheticModels",
    "TEXT_LEN", "UMT5_XXL_CONFIG", "bench_main", "build_parser", "experts_for_steps", "extrapolate_preview",
    "fast_mode", "flops_per_forward", "markdown_report", "measure_attention", "measure_matmul_peak", "model_stats",
    "nominal_tflops", "parse_size", "parse_sizes", "pick_attention_backend", "print_table", "short_render_steps",
    "size_label", "step_bound", "step_times_by_expert", "synthetic_configs", "table_rows", "timed_render", "tokens",
    "transformer_dims", "write_synthetic_lora",
]
