"""The stack: fingerprint keys, the equality rules, pin planning, and that the pin really changes the bits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harness import stack as stack_mod
from harness.errors import HarnessError
from harness.stack import (CPU_KEYS, CUDA_KEYS, PIN_ENV, Pin, apply_pin, check_stack, compare_stacks, merge_pins,
                           native_cpu, plan_pin)

from .oracle_paths import PATH_MAP, STACKS, TINY_MODEL, needs_oracle, oracle_stack, output_dir

ROOT = Path(__file__).resolve().parents[1]
CPU_GOLDEN = {"device": "cpu", "torch": "2.14.1", "threads": 2, "aten_cpu_capability": "avx2",
              "onednn_max_isa": "AVX2", "cpu_vendor": "AuthenticAMD"}
H100 = {"device": "cuda", "torch": "2.11.0+cu130", "cuda": "13.0", "gpu_name": "NVIDIA H100 80GB HBM3",
        "gpu_capability": "9.0", "gpu_sm_count": 132, "gpu_max_threads_per_sm": 2048}


def test_fingerprint_has_the_stable_cpu_keys():
    found = stack_mod.fingerprint("cpu")
    assert set(found) == {"device", "torch", "diffusers", "transformers", *CPU_KEYS}
    assert found["device"] == "cpu" and isinstance(found["threads"], int)
    assert found["aten_cpu_capability"] in stack_mod.ATEN_LEVELS
    assert found["onednn_max_isa"] in stack_mod.ONEDNN_LEVELS
    assert not set(CUDA_KEYS) & set(found)


def test_fingerprint_reports_the_pinned_isa_not_the_cpu_maximum():
    """The session is pinned to the CPU oracle's stack (conftest.py): the fingerprint says what is in effect."""
    found = stack_mod.fingerprint("cpu")
    assert found["onednn_max_isa"] == stack_mod._lower(stack_mod.ONEDNN_LEVELS, "AVX2", native_cpu()["onednn_max_isa"])
    assert found["aten_cpu_capability"] == stack_mod._lower(stack_mod.ATEN_LEVELS, "avx2",
                                                            native_cpu()["aten_cpu_capability"])


def test_identical_stacks_expect_exactness_and_a_torch_build_tag_does_not_matter():
    here = {**CPU_GOLDEN, "torch": "2.14.1+cu130", "diffusers": "0.42.1"}
    match = compare_stacks(CPU_GOLDEN, here)
    assert match.exact_expected and match.reason() is None


@pytest.mark.parametrize("key,value", [("threads", 1), ("torch", "2.11.0"), ("aten_cpu_capability", "avx512"),
                                       ("onednn_max_isa", "AVX512_CORE_BF16"), ("cpu_vendor", "GenuineIntel")])
def test_each_numerics_deciding_cpu_field_breaks_exactness(key, value):
    match = compare_stacks(CPU_GOLDEN, {**CPU_GOLDEN, key: value})
    assert not match.exact_expected
    assert match.diff == {key: [CPU_GOLDEN[key], value]}
    assert key in match.reason()


def test_an_unknown_golden_stack_is_said_to_be_unknown():
    match = compare_stacks(None, CPU_GOLDEN)
    assert not match.exact_expected and "unknown" in match.reason()
    partial = compare_stacks({"device": "cpu", "torch": "2.14.1"}, CPU_GOLDEN)
    assert set(partial.unknown) == {"threads", "aten_cpu_capability", "onednn_max_isa", "cpu_vendor"}


def test_optional_fields_count_only_when_both_sides_state_them():
    assert compare_stacks({**CPU_GOLDEN, "transformers": "5.5.3"}, CPU_GOLDEN).exact_expected
    assert not compare_stacks({**CPU_GOLDEN, "transformers": "5.5.3"},
                              {**CPU_GOLDEN, "transformers": "5.24.0"}).exact_expected


def test_h100_sxm_and_h200_are_the_measured_equivalent_gpus():
    h200 = {**H100, "gpu_name": "NVIDIA H200", "cudnn": "91900"}
    assert compare_stacks(H100, h200).exact_expected
    assert compare_stacks(oracle_stack("cuda"), {**h200, "diffusers": "0.42.1", "transformers": "5.5.3"}).exact_expected


@pytest.mark.parametrize("other", [{"gpu_name": "NVIDIA H100 PCIe", "gpu_sm_count": 114},
                                   {"gpu_name": "NVIDIA A100-SXM4-80GB", "gpu_capability": "8.0", "gpu_sm_count": 108},
                                   {"gpu_name": "NVIDIA GeForce RTX 4090", "gpu_capability": "8.9",
                                    "gpu_sm_count": 128, "gpu_max_threads_per_sm": 1536},
                                   {"cuda": "12.8"}])
def test_other_gpus_or_cuda_are_not_equivalent(other):
    match = compare_stacks(H100, {**H100, **other})
    assert not match.exact_expected and set(match.diff) <= set(other)


def test_cpu_fields_do_not_matter_for_a_cuda_golden():
    assert compare_stacks(H100, {**H100, "threads": 16, "aten_cpu_capability": "avx512"}).exact_expected


def test_plan_pin_caps_every_library_and_copies_threads(monkeypatch):
    monkeypatch.setattr(stack_mod, "native_cpu", lambda: {"aten_cpu_capability": "avx512", "mkl_max_isa": "AVX512",
                                                          "onednn_max_isa": "AVX512_CORE_AMX"})
    pin = plan_pin(CPU_GOLDEN)
    assert pin.env == {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
    assert pin.threads == 2


def test_plan_pin_never_asks_for_more_than_this_cpu_has(monkeypatch):
    monkeypatch.setattr(stack_mod, "native_cpu", lambda: {"aten_cpu_capability": "avx2", "mkl_max_isa": "AVX2",
                                                          "onednn_max_isa": "AVX2"})
    pin = plan_pin({**CPU_GOLDEN, "aten_cpu_capability": "avx512", "onednn_max_isa": "AVX512_CORE_BF16"})
    assert pin.env == {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def test_no_isa_in_the_golden_means_nothing_to_pin():
    assert plan_pin(H100).env == {} and plan_pin(None).env == {}


def test_effective_cpu_follows_the_caps_in_an_environment():
    capped = stack_mod.effective_cpu({"ONEDNN_MAX_CPU_ISA": "avx2", "ATEN_CPU_CAPABILITY": "AVX2"})
    native = native_cpu()
    assert capped["onednn_max_isa"] == stack_mod._lower(stack_mod.ONEDNN_LEVELS, "AVX2", native["onednn_max_isa"])
    assert stack_mod.effective_cpu({}) == native


def test_torch_already_running_under_other_caps_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    with pytest.raises(HarnessError, match="torch is already running.*ONEDNN_MAX_CPU_ISA=AVX2 \\(wanted AVX512_CORE\\)"):
        apply_pin(Pin(env={"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}))
    assert apply_pin(Pin(env={"ONEDNN_MAX_CPU_ISA": "AVX2"})) == {"ONEDNN_MAX_CPU_ISA": "AVX2"}


def test_goldens_needing_different_pins_cannot_share_a_process():
    with pytest.raises(HarnessError, match="different CPU pins"):
        merge_pins([Pin(env={"ATEN_CPU_CAPABILITY": "avx2"}), Pin(env={"ATEN_CPU_CAPABILITY": "avx512"})])
    assert merge_pins([Pin(env={"A": "1"}), Pin(), Pin(env={"A": "1"})]).env == {"A": "1"}


@pytest.mark.parametrize("data,field", [({"cpu_flavour": "x"}, "golden_stack.cpu_flavour"),
                                        ({"onednn_max_isa": "AVX3"}, "golden_stack.onednn_max_isa"),
                                        ({"threads": 0}, "golden_stack.threads"),
                                        ({"device": "tpu"}, "golden_stack.device")])
def test_bad_stack_fields_name_the_file_and_field(data, field):
    with pytest.raises(HarnessError) as info:
        check_stack(data, Path("case.yaml"))
    assert info.value.field == field and "case.yaml" in info.value.line()


def test_a_case_takes_its_golden_stack_inline_or_from_a_file(tmp_path):
    from harness.case import load_case

    golden = output_dir("case_a")
    base = f"schema: wan-parity/case@1\nname: c\ngolden_dir: {golden}\n"
    (tmp_path / "inline.yaml").write_text(base + "golden_stack: {device: cpu, threads: 2, onednn_max_isa: avx2}\n")
    (tmp_path / "file.yaml").write_text(base + f"golden_stack: {STACKS / 'cpu-oracle.yaml'}\n")
    (tmp_path / "bad.yaml").write_text(base + "golden_stack: missing.yaml\n")
    assert load_case(tmp_path / "inline.yaml").golden_stack == {"device": "cpu", "threads": 2, "onednn_max_isa": "AVX2"}
    assert load_case(tmp_path / "file.yaml").golden_stack == oracle_stack("cpu")
    with pytest.raises(HarnessError, match="golden stack file not found") as info:
        load_case(tmp_path / "bad.yaml")
    assert info.value.field == "golden_stack"


def _clean_env() -> dict:
    """This test session is pinned; a child process must start from the user's plain environment."""
    env = {k: v for k, v in os.environ.items() if k not in (*PIN_ENV.values(), "DNNL_MAX_CPU_ISA")}
    return {**env, "PYTHONPATH": str(ROOT)}


def _run_cli(tmp_path: Path, name: str, *extra: str) -> tuple[dict, np.ndarray]:
    out = tmp_path / name
    cmd = [sys.executable, "-m", "harness", "run", str(output_dir("case_a")), "--path-map", PATH_MAP,
           "--base-model", str(TINY_MODEL), "--device", "cpu", "--steps", "0", "--samples", "0", "--out", str(out),
           "--save-frames", "--no-report", *extra]
    done = subprocess.run(cmd, cwd=ROOT, env=_clean_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode in (0, 1), done.stderr[-2000:]
    document = json.loads((out / "results.json").read_text())
    result = document["results"][0]
    return document, np.load(result["frames_path"])


@needs_oracle
def test_the_pin_takes_effect_end_to_end(tmp_path):
    """The CLI pins before torch starts: the pinned render differs from the native one on a CPU above AVX2."""
    native = native_cpu()
    if native["onednn_max_isa"] in ("SSE41", "AVX", "AVX2"):
        pytest.skip(f"this CPU tops out at {native['onednn_max_isa']}: pinned and native renders are the same ISA")
    pinned_doc, pinned = _run_cli(tmp_path, "pinned", "--golden-stack", str(STACKS / "cpu-oracle.yaml"))
    native_doc, unpinned = _run_cli(tmp_path, "native")
    assert pinned_doc["environment"]["onednn_max_isa"] == "AVX2"
    assert pinned_doc["results"][0]["pinned"]["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    assert native_doc["environment"]["onednn_max_isa"] == native["onednn_max_isa"]
    assert native_doc["results"][0]["pinned"] is None
    assert not np.array_equal(pinned, unpinned), "the ISA pin changed no bit: it did not take effect"
    assert native_doc["results"][0]["exact_expected"] is False
    assert "unknown" in native_doc["results"][0]["stack_reason"]


def _pytest(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=ROOT,
                          env=_clean_env(), capture_output=True, text=True, timeout=600)


@needs_oracle
def test_parity_cases_collects_only_that_file():
    done = _pytest("--collect-only", "-q", "--parity-cases", "tests/oracle_cases/oracle_case_a.yaml")
    items = [line for line in done.stdout.splitlines() if "::" in line]
    assert done.returncode == 0, done.stdout[-2000:]
    assert items and all(line.startswith("tests/oracle_cases/oracle_case_a.yaml::") for line in items), items[:5]


@needs_oracle
def test_parity_device_cpu_does_not_force_a_cuda_golden_onto_the_cpu(tmp_path):
    if not (ROOT.parent / "shared" / "oracle-cuda").is_dir():
        pytest.skip("CUDA oracle not found")
    done = _pytest("-m", "gpu", "-rs", "--parity-device", "cpu", "--parity-out", str(tmp_path),
                   "--parity-cases", "tests/oracle_cases/oracle_cuda_d.yaml")
    assert done.returncode in (0, 5), done.stdout[-2000:]
    assert "skipped" in done.stdout and "the golden was rendered on CUDA" in done.stdout
    assert " passed" not in done.stdout and " failed" not in done.stdout
