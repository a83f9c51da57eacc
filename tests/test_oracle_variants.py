"""ai-toolkit outputs beyond the plain split-LoRA job, checked bit for bit against real ai-toolkit renders (../shared/oracle).

* ``case_h_uint4_ara`` (ai-toolkit 0.12.26): uint4 transformer and text encoder with an accuracy recovery adapter. The
  ARA named in the job's qtype resolves through --path-map (no --ara), and the result claims no approximation.
* a combined LoRA (``split_multistage_loras: false``): ai-toolkit's one-file save holds the very tensors of the split
  pair (``diffusion_model.transformer_1.*`` / ``transformer_2.*``), so case_a's previews must come out bit-exact from a
  combined copy of its checkpoints (the numbered one and the un-numbered final one).

Where this stack cannot match the oracle's (tests/stacks/cpu-oracle.yaml) the tests skip with the difference.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from harness.demo_model import write_combined_aitk_lora
from harness.engine import Engine
from harness.options import RunOptions
from harness.paths import PathMap
from harness.runner import run_one
from harness.targets import from_output_dir

from .oracle_paths import ORACLE, PATH_MAP, TINY_MODEL, needs_oracle, oracle_stack, output_dir, skip_unless_exact_expected

pytestmark = [needs_oracle, pytest.mark.oracle]


@pytest.fixture(scope="module")
def engine():
    return Engine(RunOptions(base_model=str(TINY_MODEL), device="cpu", threads=2))


def _by_label(targets):
    return {(t.preview.step, t.preview.index): t for t in targets}


def _assert_bit_exact(engine, target):
    """The render equals ai-toolkit's pre-encode frames and re-encodes to the golden file's bytes; the run says so."""
    target.golden_stack = oracle_stack("cpu")
    result = run_one(engine, target)
    assert result.status == "pass" and result.bit_exact and result.bit_exact_raw, result.message
    assert result.exact_expected, result.stack_reason  # judged by the bit-exact rule, not thresholds
    return result


# ------------------------------------------------------------------------------------------------ uint4 + ARA


@pytest.mark.parametrize("label", [(0, 0), (2, 1), (4, 2)], ids=lambda label: f"{label[0]}-{label[1]}")
def test_uint4_ara_job_is_bit_exact_with_the_ara_from_the_path_map(engine, label):
    skip_unless_exact_expected(engine, "cpu", "cpu")
    target = _by_label(from_output_dir(output_dir("case_h_uint4_ara"), PathMap([PATH_MAP])))[label]
    assert engine.options.ara is None  # found through --path-map, as the job names it
    result = _assert_bit_exact(engine, target)
    plan = result.quantization
    assert plan["transformer"] == plan["text_encoder"] == "uint4"
    assert plan["ara"]["path"] == str((ORACLE / "tiny_ara" / "tiny_wan22_i2v_ara_uint4.safetensors").resolve())
    assert result.approximate is None  # verified here: nothing left to call approximate
    assert any("mapped to" in note for note in plan["notes"])


def test_uint4_ara_missing_everywhere_names_path_map_and_ara(engine, tmp_path):
    from harness.errors import HarnessError

    target = from_output_dir(output_dir("case_h_uint4_ara"), PathMap([f"/workspace/oracle={tmp_path}"]))[0]
    with pytest.raises(HarnessError, match=r"model\.qtype: the accuracy recovery adapter .* --path-map OLD=NEW or --ara"):
        engine.baseline(target)


# ------------------------------------------------------------------------------------------------ combined LoRA


@pytest.fixture(scope="module")
def combined_case_a(tmp_path_factory):
    """case_a's output folder with each split checkpoint pair replaced by ai-toolkit's combined file."""
    out = tmp_path_factory.mktemp("combined") / "oracle_case_a"
    shutil.copytree(output_dir("case_a"), out)
    for path in [out, *out.rglob("*")]:  # the oracle is read-only; its copy must not be
        path.chmod(0o755 if path.is_dir() else 0o644)
    config = yaml.safe_load((out / "config.yaml").read_text())
    config["config"]["process"][0]["network"]["split_multistage_loras"] = False
    (out / "config.yaml").write_text(yaml.safe_dump(config))
    for stem in ("oracle_case_a_000000002", "oracle_case_a"):
        high, low = out / f"{stem}_high_noise.safetensors", out / f"{stem}_low_noise.safetensors"
        write_combined_aitk_lora(out / f"{stem}.safetensors", high, low)
        high.unlink()
        low.unlink()
    return out


@pytest.mark.parametrize("label", [(2, 0), (4, 1)], ids=["numbered", "final"])
def test_combined_lora_file_is_paired_per_expert_and_bit_exact(engine, combined_case_a, label):
    skip_unless_exact_expected(engine, "cpu", "cpu")
    target = _by_label(from_output_dir(combined_case_a, PathMap([PATH_MAP])))[label]
    lora = target.preview.lora
    stem = "oracle_case_a_000000002" if label[0] == 2 else "oracle_case_a"
    assert lora.combined and lora.high == lora.low == combined_case_a / f"{stem}.safetensors"
    assert target.preview.unreproducible is None and not target.preview.merged  # case_a runs unmerged
    assert _assert_bit_exact(engine, target).lora_path == "unmerged"


def test_combined_file_halves_are_the_split_files(combined_case_a):
    """Each expert's half of the combined file parses to exactly the split file's layers."""
    from harness.render.lora import read_lora_file

    for side in ("high", "low"):
        split = read_lora_file(output_dir("case_a") / f"oracle_case_a_000000002_{side}_noise.safetensors")
        half = read_lora_file(combined_case_a / "oracle_case_a_000000002.safetensors", expert=side)
        assert split.keys() == half.keys()
        assert all(np.array_equal(split[k].up, half[k].up) and np.array_equal(split[k].down, half[k].down)
                   for k in split)


# ------------------------------------------------------------------------------------------------ a UniPC-era job


@pytest.mark.parametrize("label", [(0, 2), (2, 1)], ids=["baseline", "trained"])
def test_unipc_era_job_is_bit_exact_with_its_own_vae_and_sampler(engine, label):
    """case_l_old_unipc_shared was run with ai-toolkit 0.9.3's own code (0c18b393): UniPC, and its own VAE copy
    whose RMS norm runs in bf16 (§11.4). ``auto`` takes the version for the untrained baseline from the job's
    checkpoint, tries 0.9.3's two builds, and keeps the one that renders ai-toolkit's frames exactly."""
    skip_unless_exact_expected(engine, "cpu", "cpu")
    target = _by_label(from_output_dir(output_dir("case_l_old_unipc_shared"), PathMap([PATH_MAP])))[label]
    assert engine.aitk_version(target) == "0.9.3"
    result = _assert_bit_exact(engine, target)
    assert result.profile == "aitk-unipc" and result.profile_settings["vae_norm"] == "bf16"
    if label[0] == 0:
        assert any("from the job's checkpoint oracle_case_l_old_unipc_shared_000000002" in n for n in result.notes)


def test_unipc_era_job_is_not_exact_with_diffusers_vae_norm(engine):
    """The control: the same sampler with diffusers' fp32 VAE norm misses ai-toolkit 0.9.3's frames."""
    from dataclasses import replace

    from harness.render.profiles import PROFILES

    skip_unless_exact_expected(engine, "cpu", "cpu")
    target = _by_label(from_output_dir(output_dir("case_l_old_unipc_shared"), PathMap([PATH_MAP])))[(0, 0)]
    settings = replace(engine.baseline(target), profile=replace(PROFILES["aitk-unipc"], vae_norm="fp32"))
    frames = engine.render(target, settings).frames
    assert (frames != np.load(target.preview.golden_raw)).any()
