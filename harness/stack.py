"""The numerics-deciding stack: what this machine is, what the golden's was, what can be pinned, and when the two
must give the same bits.

Bit-exactness with a golden is a property of a *pair* of stacks, not of the code alone: torch release, CPU
instruction sets (ATen, oneDNN and MKL each dispatch on their own), CPU vendor (MKL picks fp32 GEMM kernels by
vendor), thread count, GPU chip and CUDA libraries all change bits (docs/PARITY-NOTES.md, "What decides the bits").
This module

* reads this machine's stack without importing torch where it can (``native_cpu``), so a pin can be planned
  before torch starts;
* plans and applies the pin (``plan_pin``/``apply_pin``): the CPU ISA ceilings, never above this CPU, set as
  environment variables before torch initialises;
* compares a golden stack with this one through one table of rules (``RULES``), so "exactness expected here" is
  data, not scattered ``if`` s.

Keys are stable: they are written into results, case files and ``wan-parity fingerprint`` files.
"""

from __future__ import annotations

import json
import os
import platform
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml

from .errors import HarnessError
from .limits import MAX_STACK_THREADS

# ---------------------------------------------------------------- vocabularies

ATEN_LEVELS = ("default", "avx2", "avx512")  # ATEN_CPU_CAPABILITY, lowest first (x86)
ONEDNN_LEVELS = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI",
                 "AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16")
# ONEDNN_MAX_CPU_ISA accepts these names; oneDNN's ISAs form a partial order, this is the linear order it is used in.
MKL_LEVELS = ("SSE4_2", "AVX", "AVX2", "AVX512")  # MKL_ENABLE_INSTRUCTIONS (coarser than oneDNN's)

CPU_KEYS = ("threads", "aten_cpu_capability", "onednn_max_isa", "mkl_max_isa", "cpu_vendor", "cpu_model")
CUDA_KEYS = ("gpu_name", "gpu_capability", "gpu_sm_count", "gpu_max_threads_per_sm", "cuda", "cublas", "cudnn")
STACK_KEYS = ("device", "torch", "diffusers", "transformers") + CPU_KEYS + CUDA_KEYS
PIN_ENV = {"aten_cpu_capability": "ATEN_CPU_CAPABILITY", "onednn_max_isa": "ONEDNN_MAX_CPU_ISA",
           "mkl_max_isa": "MKL_ENABLE_INSTRUCTIONS"}


# ---------------------------------------------------------------- this CPU, without torch


def _cpuinfo() -> dict[str, str]:
    """The first processor block of /proc/cpuinfo (empty off Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    block = text.split("\n\n", 1)[0]
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in block.splitlines()) if k.strip()}


def cpu_flags() -> set[str]:
    return set(_cpuinfo().get("flags", "").split())


def _aten_max(flags: set[str]) -> str:
    """ATen's own rule: AVX-512 needs F/BW/VL/DQ, AVX2 needs AVX2 and FMA."""
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
        return "avx512"
    return "avx2" if {"avx2", "fma"} <= flags else "default"


def _onednn_max(flags: set[str]) -> str:
    """The highest oneDNN ISA these CPU flags allow (the same feature tests oneDNN makes, coarsely)."""
    avx512 = {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags
    ladder = (
        ("AVX512_CORE_AMX_FP16", avx512 and {"amx_tile", "amx_bf16", "amx_int8", "amx_fp16", "avx512_fp16"} <= flags),
        ("AVX512_CORE_AMX", avx512 and {"amx_tile", "amx_bf16", "amx_int8", "avx512_fp16"} <= flags),
        ("AVX512_CORE_FP16", avx512 and {"avx512_fp16", "avx512_bf16", "avx512_vnni"} <= flags),
        ("AVX512_CORE_BF16", avx512 and {"avx512_bf16", "avx512_vnni"} <= flags),
        ("AVX512_CORE_VNNI", avx512 and "avx512_vnni" in flags),
        ("AVX512_CORE", avx512),
        ("AVX2_VNNI_2", {"avx2", "avx_vnni", "avx_vnni_int8", "avx_ne_convert"} <= flags),
        ("AVX2_VNNI", {"avx2", "avx_vnni"} <= flags),
        ("AVX2", "avx2" in flags),
        ("AVX", "avx" in flags),
    )
    return next((name for name, ok in ladder if ok), "SSE41")


def _mkl_max(flags: set[str]) -> str:
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
        return "AVX512"
    return "AVX2" if "avx2" in flags else "AVX" if "avx" in flags else "SSE4_2"


def native_cpu() -> dict[str, str]:
    """This CPU's highest ISA per library, its vendor and model: what an unpinned process runs."""
    info, flags = _cpuinfo(), cpu_flags()
    return {"aten_cpu_capability": _aten_max(flags), "onednn_max_isa": _onednn_max(flags),
            "mkl_max_isa": _mkl_max(flags), "cpu_vendor": info.get("vendor_id") or platform.machine(),
            "cpu_model": info.get("model name") or platform.processor() or platform.machine()}


def _lower(levels: tuple[str, ...], a: str, b: str) -> str:
    return a if levels.index(a) <= levels.index(b) else b


def effective_cpu(environ=None) -> dict[str, str]:
    """The ISA each library uses in a process started with ``environ``: the cap when set, never above the CPU."""
    environ = os.environ if environ is None else environ
    native = native_cpu()
    out = dict(native)
    for key, levels in (("aten_cpu_capability", ATEN_LEVELS), ("onednn_max_isa", ONEDNN_LEVELS),
                        ("mkl_max_isa", MKL_LEVELS)):
        cap = _normal(key, environ.get(PIN_ENV[key]) or (environ.get("DNNL_MAX_CPU_ISA") if key == "onednn_max_isa" else None))
        if cap is not None:
            out[key] = _lower(levels, cap, native[key])
    return out


def _normal(key: str, value) -> str | None:
    """A cap in its library's spelling (``avx2``, ``AVX2``), or None when absent or unknown."""
    if value in (None, ""):
        return None
    text = str(value)
    if key == "aten_cpu_capability":
        text = text.lower()
        return text if text in ATEN_LEVELS else None
    text = text.upper()
    return text if text in (ONEDNN_LEVELS if key == "onednn_max_isa" else MKL_LEVELS) else None


# ---------------------------------------------------------------- the fingerprint


def _public(version: str | None) -> str | None:
    """``2.11.0+cu130`` -> ``2.11.0``: the CPU kernels of a release do not depend on its CUDA build tag."""
    return None if version is None else str(version).split("+", 1)[0]


def fingerprint(device: str = "cpu") -> dict:
    """This process's numerics-deciding stack, with the stable keys of ``STACK_KEYS`` (CUDA keys only on CUDA)."""
    import diffusers
    import torch
    import transformers

    stack = {"device": str(device).split(":")[0], "torch": str(torch.__version__), "diffusers": diffusers.__version__,
             "transformers": transformers.__version__, "threads": torch.get_num_threads(), **effective_cpu()}
    stack["aten_cpu_capability"] = torch.backends.cpu.get_cpu_capability().lower()  # what ATen actually chose
    if stack["device"] == "cuda" and torch.cuda.is_available():
        stack.update(_cuda_stack(torch.device(device).index or 0))
    return stack


def _cuda_stack(index: int) -> dict:
    import torch

    props = torch.cuda.get_device_properties(index)
    return {"gpu_name": props.name, "gpu_capability": f"{props.major}.{props.minor}",
            "gpu_sm_count": props.multi_processor_count,
            "gpu_max_threads_per_sm": getattr(props, "max_threads_per_multi_processor", None),
            "cuda": torch.version.cuda, "cublas": _cublas_version(), "cudnn": str(torch.backends.cudnn.version())}


def _cublas_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("nvidia-cublas", "nvidia-cublas-cu13", "nvidia-cublas-cu12"):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return None


# ---------------------------------------------------------------- reading a golden stack


def load_stack(path: str | Path) -> dict:
    """A stack file as ``wan-parity fingerprint`` writes it (YAML or JSON), or any subset of its keys."""
    path = Path(path)
    if not path.is_file():
        raise HarnessError(path, None, "golden stack file not found (write one with `wan-parity fingerprint > FILE` "
                                       "on the machine that rendered the goldens)")
    from .limits import parse_yaml

    try:
        data = parse_yaml(path.read_text(encoding="utf-8"), path)  # JSON is YAML
    except (UnicodeDecodeError, OSError) as exc:
        raise HarnessError(path, None, f"not a readable YAML/JSON stack file ({str(exc).splitlines()[0]})") from None
    return check_stack(data, path, "")


STACK_FILE = "golden_stack.yaml"  # beside an output folder's config.yaml: the stack that rendered its samples


def stack_beside(folder: str | Path) -> dict | None:
    """The ``golden_stack.yaml`` an output folder carries, or None (then the golden's stack is unknown)."""
    path = Path(folder) / STACK_FILE
    return load_stack(path) if path.is_file() else None


def check_stack(data, file, prefix: str = "golden_stack") -> dict:
    """Validate a stack mapping (a file or a case's ``golden_stack:``); every problem names the file and key."""
    where = (lambda key: f"{prefix}.{key}" if prefix else key)
    if not isinstance(data, dict) or not data:
        raise HarnessError(file, prefix or None, f"must be a mapping with some of: {', '.join(STACK_KEYS)}")
    out = {}
    for key, value in data.items():
        if key not in STACK_KEYS:
            raise HarnessError(file, where(key), f"unknown stack key; known: {', '.join(STACK_KEYS)}")
        if key in PIN_ENV and value is not None and _normal(key, value) is None:
            levels = {"aten_cpu_capability": ATEN_LEVELS, "onednn_max_isa": ONEDNN_LEVELS}.get(key, MKL_LEVELS)
            raise HarnessError(file, where(key), f"{value!r} is not one of {', '.join(levels)}")
        if key in ("threads", "gpu_sm_count", "gpu_max_threads_per_sm") and value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_STACK_THREADS):
            raise HarnessError(file, where(key), f"must be a whole number from 1 to {MAX_STACK_THREADS}, got {value!r}")
        if key == "device" and value not in ("cpu", "cuda"):
            raise HarnessError(file, where(key), f"must be cpu or cuda, got {value!r}")
        out[key] = _normal(key, value) if key in PIN_ENV and value is not None else value
    return out


def dump_stack(stack: dict, as_json: bool = False) -> str:
    ordered = {k: stack[k] for k in STACK_KEYS if k in stack}
    if as_json:
        return json.dumps(ordered, indent=2) + "\n"
    return "# wan-parity stack fingerprint: keep it beside the job it rendered (golden_stack.yaml)\n" + yaml.safe_dump(
        ordered, sort_keys=False)


# ---------------------------------------------------------------- pinning


@dataclass(frozen=True)
class Pin:
    """Environment variables that cap the CPU ISAs to a golden's, and the thread count; empty when nothing to pin."""

    env: dict[str, str] = field(default_factory=dict)
    threads: int | None = None

    def describe(self) -> dict:
        return {**self.env, **({"threads": self.threads} if self.threads else {})}


def plan_pin(golden: dict | None) -> Pin:
    """Cap ATen, oneDNN and MKL to the golden's ISA (never above this CPU); copy its thread count.

    All three are capped together: oneDNN capped without ATen, or ATen without oneDNN, crashes or changes bits
    (measured, docs/PARITY-NOTES.md); MKL follows oneDNN's level because its fp32 GEMMs change bits too.
    """
    golden = golden or {}
    native = native_cpu()
    env = {}
    for key, levels in (("aten_cpu_capability", ATEN_LEVELS), ("onednn_max_isa", ONEDNN_LEVELS)):
        want = _normal(key, golden.get(key))
        if want is not None:
            env[PIN_ENV[key]] = _lower(levels, want, native[key])
    mkl = _normal("mkl_max_isa", golden.get("mkl_max_isa")) or _mkl_for(env.get("ONEDNN_MAX_CPU_ISA"))
    if mkl is not None:
        env[PIN_ENV["mkl_max_isa"]] = _lower(MKL_LEVELS, mkl, native["mkl_max_isa"])
    return Pin(env=env, threads=golden.get("threads"))


def _mkl_for(onednn: str | None) -> str | None:
    if onednn is None:
        return None
    return "AVX512" if onednn.startswith("AVX512") else "AVX2" if onednn.startswith("AVX2") else onednn if onednn in MKL_LEVELS else "SSE4_2"


def pinned_env() -> dict[str, str]:
    """The ISA caps in effect in this process's environment (set by ``apply_pin`` or by the user)."""
    names = tuple(PIN_ENV.values()) + ("DNNL_MAX_CPU_ISA",)
    return {name: os.environ[name] for name in names if os.environ.get(name)}


def torch_started() -> bool:
    return "torch" in sys.modules


def apply_pin(pin: Pin, source: str = "golden_stack") -> dict:
    """Set the caps before torch starts; returns what is pinned. Torch already running under other caps is an error.

    ATen and oneDNN read their caps once, when first used: a process that already ran torch cannot change them,
    and rendering under one ISA while reporting another would be a lie.
    """
    clash = {k: (os.environ.get(k), v) for k, v in pin.env.items() if os.environ.get(k) != v}
    if clash and torch_started():
        shown = ", ".join(f"{k}={old or 'unset'} (wanted {new})" for k, (old, new) in clash.items())
        raise HarnessError(None, source, f"torch is already running in this process with {shown}; start a fresh "
                                         "process (the harness pins before torch starts) or export the wanted values")
    os.environ.update(pin.env)
    return pin.describe()


def merge_pins(pins: list[Pin], source: str = "golden_stack") -> Pin:
    """One pin for one process: all targets must agree on the ISA caps (threads may differ: set per render)."""
    envs = {tuple(sorted(p.env.items())) for p in pins if p.env}
    if len(envs) > 1:
        shown = " vs ".join("/".join(f"{k}={v}" for k, v in env) for env in sorted(envs))
        raise HarnessError(None, source, f"these goldens need different CPU pins ({shown}); one process holds one "
                                         "pin: run them in separate commands")
    env = dict(next(iter(envs))) if envs else {}
    return Pin(env=env)


# ---------------------------------------------------------------- comparing stacks


def _same(a, b) -> bool:
    return str(a) == str(b)


def _same_release(a, b) -> bool:
    return _public(a) == _public(b)


def _same_device(a, b) -> bool:
    return str(a).split(":")[0] == str(b).split(":")[0]


# GPUs measured to give identical bits for the same torch/CUDA stack (same chip, SM count and threads per SM).
GPU_EQUIVALENT = (
    ("GH100, 132 SMs x 2048 threads (measured: the H100 SXM oracle is 15/15 bit-exact on an H200)",
     re.compile(r"H100 (80GB HBM3|SXM)|H200", re.I)),
)


def _same_gpu(a, b) -> bool:
    if _same(a, b):
        return True
    return any(pattern.search(str(a)) and pattern.search(str(b)) for _why, pattern in GPU_EQUIVALENT)


@dataclass(frozen=True)
class Rule:
    """One numerics-deciding field: on which devices it matters, whether a golden must state it, how to compare."""

    key: str
    devices: tuple[str, ...]
    required: bool
    same: Callable[[object, object], bool]
    why: str


RULES = (
    Rule("device", ("cpu", "cuda"), True, _same_device, "CPU and CUDA kernels differ"),
    Rule("torch", ("cpu", "cuda"), True, _same_release, "kernels change between torch releases"),
    Rule("threads", ("cpu",), True, _same, "the thread count splits CPU reductions"),
    Rule("aten_cpu_capability", ("cpu",), True, _same, "ATen's vector kernels depend on the ISA"),
    Rule("onednn_max_isa", ("cpu",), True, _same, "oneDNN's bf16 GEMMs/convolutions depend on the ISA"),
    Rule("mkl_max_isa", ("cpu",), False, _same, "MKL's fp32 GEMMs depend on the ISA"),
    Rule("cpu_vendor", ("cpu",), True, _same, "MKL and oneDNN pick GEMM kernels and blocking by CPU vendor (measured)"),
    Rule("diffusers", ("cpu", "cuda"), False, _same, "pipeline and model code"),
    Rule("transformers", ("cpu", "cuda"), False, _same, "UMT5 encoder numerics"),
    Rule("gpu_name", ("cuda",), True, _same_gpu, "GEMM/attention kernels and the CUDA RNG layout follow the chip"),
    Rule("gpu_capability", ("cuda",), False, _same, "kernels are compiled per compute capability"),
    Rule("gpu_sm_count", ("cuda",), False, _same, "the CUDA RNG layout and kernel tiling follow the SM count"),
    Rule("gpu_max_threads_per_sm", ("cuda",), False, _same, "the CUDA RNG grid cap"),
    Rule("cuda", ("cuda",), True, _same, "CUDA runtime and its libraries"),
    Rule("cublas", ("cuda",), False, _same, "cuBLAS kernel heuristics"),
    Rule("cudnn", ("cuda",), False, _same, "cuDNN kernels"),
)


@dataclass(frozen=True)
class StackMatch:
    """Whether exactness can be expected here, and the fields that say why not."""

    exact_expected: bool
    diff: dict[str, list] = field(default_factory=dict)  # key -> [golden, here]
    unknown: tuple[str, ...] = ()  # required keys the golden's stack does not state

    def reason(self) -> str | None:
        """One sentence for tables and failure lines; None when exactness is expected."""
        if self.exact_expected:
            return None
        if not self.diff and self.unknown == ("*",):
            return "exactness not expected: the golden's stack is unknown (give --golden-stack or a case golden_stack)"
        parts = [f"{k} {g} here {h}" for k, (g, h) in self.diff.items()]
        parts += [f"{k} unknown" for k in self.unknown]
        return "exactness not expected: stack differs (" + "; ".join(parts) + ")"


def compare_stacks(golden: dict | None, here: dict) -> StackMatch:
    """Apply ``RULES``: a required field must be stated and equal; an optional one must be equal when both state it."""
    if not golden:
        return StackMatch(False, {}, ("*",))
    device = str(golden.get("device") or here.get("device") or "cpu").split(":")[0]
    diff, unknown = {}, []
    for rule in RULES:
        if device not in rule.devices:
            continue
        g, h = golden.get(rule.key), here.get(rule.key)
        if g is None:
            if rule.required:
                unknown.append(rule.key)
            continue
        if h is None and not rule.required:
            continue
        if h is None or not rule.same(g, h):
            diff[rule.key] = [g, h]
    return StackMatch(not diff and not unknown, diff, tuple(unknown))
