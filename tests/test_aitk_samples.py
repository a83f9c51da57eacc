"""expand_samples / merge_decision: the effective settings ai-toolkit rendered each preview with."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from harness.aitk.job import load_job
from harness.aitk.samples import expand_samples, merge_decision
from harness.errors import HarnessError

ORACLE = Path("/work/shared/oracle")
CTRL = "/c.png"


def make_job(tmp_path, sample, trigger="sks", model=None):
    """Load a minimal job around the given sample block."""
    proc = {"type": "sd_trainer", "train": {"steps": 4, "dtype": "bf16"}, "sample": sample,
            "model": {"name_or_path": "/m", "arch": "wan22_14b_i2v", **(model or {})}}
    if trigger is not None:
        proc["trigger_word"] = trigger
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({"job": "extension", "config": {"name": "j", "process": [proc]}}))
    return load_job(path)


def one(tmp_path, item=None, trigger="sks", **block):
    """Expand a one-item sample block and return that spec."""
    sample = {"neg": "", **block, "samples": [{"prompt": "p", "ctrl_img": CTRL, **(item or {})}]}
    return expand_samples(make_job(tmp_path, sample, trigger))[0]


def test_class_defaults_not_ui_defaults(tmp_path):
    s = one(tmp_path)
    assert (s.width, s.height, s.seed, s.guidance_scale, s.sample_steps) == (512, 512, 0, 7.0, 20)
    assert (s.network_multiplier, s.num_frames, s.fps, s.negative_prompt) == (1.0, 1, 16, "")
    assert s.unreproducible is None


def test_neg_missing_is_unreproducible(tmp_path):
    job = make_job(tmp_path, {"samples": [{"prompt": "p", "ctrl_img": CTRL}]})
    s = expand_samples(job)[0]
    assert s.unreproducible.startswith("this preview cannot be reproduced because") and "neg" in s.unreproducible


def test_neg_flag_rescues_missing_neg(tmp_path):
    job = make_job(tmp_path, {"samples": [{"prompt": "p --n ugly", "ctrl_img": CTRL}]})
    s = expand_samples(job)[0]
    assert s.negative_prompt == "ugly" and s.unreproducible is None


def test_no_ctrl_img_and_seed_minus_one_are_unreproducible(tmp_path):
    job = make_job(tmp_path, {"neg": "", "seed": -1, "samples": [{"prompt": "p"}]})
    s = expand_samples(job)[0]
    assert "ctrl_img" in s.unreproducible and "-1" in s.unreproducible


def test_legacy_prompts_and_block_values(tmp_path):
    job = make_job(tmp_path, {"neg": "bad", "width": 256, "prompts": ["one", "two"], "seed": 5})
    specs = expand_samples(job)
    assert [s.prompt for s in specs] == ["one", "two"] and [s.seed for s in specs] == [5, 5]
    assert all(s.width == 256 and s.negative_prompt == "bad" for s in specs)
    assert all("ctrl_img" in s.unreproducible for s in specs)  # legacy prompts cannot carry a control image


def test_item_overrides_block(tmp_path):
    s = one(tmp_path, {"width": 320, "guidance_scale": 3.5, "sample_steps": 8, "fps": 24, "neg": "x"}, width=256)
    assert (s.width, s.guidance_scale, s.sample_steps, s.fps, s.negative_prompt) == (320, 3.5, 8, 24, "x")


def test_inline_flags(tmp_path):
    p = "a dog --n blurry, dark --w 200 --h 120 --seed 7 --cfg 2.5 --steps 9 --m 0.25 --frames 17 --fps 8 --ctrl_img /x.png --zzz 1"
    s = one(tmp_path, {"prompt": p})
    assert (s.prompt, s.negative_prompt, s.seed) == ("a dog", "blurry, dark", 7)
    assert (s.width_requested, s.height_requested, s.width, s.height) == (200, 120, 192, 112)
    assert (s.guidance_scale, s.sample_steps, s.network_multiplier, s.num_frames, s.fps) == (2.5, 9, 0.25, 17, 8)
    assert s.ctrl_img == "/x.png" and s.prompt_config == p


def test_short_flag_aliases(tmp_path):
    s = one(tmp_path, {"prompt": "x --d 3 --l 1.5 --s 4 --num_frames 5 --network_multiplier 2"})
    assert (s.seed, s.guidance_scale, s.sample_steps, s.num_frames, s.network_multiplier) == (3, 1.5, 4, 5, 2.0)


def test_double_dash_in_prose_truncates(tmp_path):
    s = one(tmp_path, {"prompt": "  a cat -- then a dog runs  "})
    assert s.prompt == "a cat"


def test_bad_flag_value_names_sample_and_flag(tmp_path):
    sample = {"neg": "", "samples": [{"prompt": "ok", "ctrl_img": CTRL}, {"prompt": "x --w wide", "ctrl_img": CTRL}]}
    with pytest.raises(HarnessError) as e:
        expand_samples(make_job(tmp_path, sample))
    assert e.value.field == "config.process[0].sample.samples[1].prompt" and "--w" in e.value.message


def test_trigger_set_replaces_trigger_and_name(tmp_path):
    s = one(tmp_path, {"prompt": "[trigger] and [name] cat"}, trigger="zx")
    assert s.prompt == "zx and zx cat" and s.prompt_config == "[trigger] and [name] cat"


def test_trigger_unset_keeps_literal_and_never_prepends(tmp_path):
    assert one(tmp_path, {"prompt": "[trigger] cat"}, trigger=None).prompt == "[trigger] cat"
    assert one(tmp_path, {"prompt": "a cat"}, trigger="zx").prompt == "a cat"


def test_trigger_replaced_before_flag_parsing(tmp_path):
    s = one(tmp_path, {"prompt": "cat [trigger]"}, trigger="a --w 128")
    assert s.prompt == "cat a" and s.width == 128


def _seeds(tmp_path, walk, items):
    sample = {"neg": "", "seed": 10, "walk_seed": walk,
              "samples": [{"prompt": "p", "ctrl_img": CTRL, **it} for it in items]}
    return [s.seed for s in expand_samples(make_job(tmp_path, sample))]


def test_seed_carry_over_without_walk(tmp_path):
    assert _seeds(tmp_path, False, [{}, {"seed": 99}, {}, {"prompt": "p --seed 5"}, {}]) == [10, 99, 99, 5, 99]


def test_seed_walk(tmp_path):
    assert _seeds(tmp_path, True, [{}, {"seed": 99}, {}, {}]) == [10, 99, 12, 13]


def test_size_and_frame_snapping(tmp_path):
    s = one(tmp_path, {"width": 100, "height": 76, "num_frames": 10})
    assert (s.width, s.height, s.num_frames) == (96, 64, 9)
    s = one(tmp_path, {"width": 30, "height": 72, "num_frames": 41})
    assert (s.width, s.height, s.num_frames) == (64, 64, 41)  # /8 floor of 64 first, then /16
    assert one(tmp_path, {"num_frames": 40}).num_frames == 37


def test_multiplier_string_and_invalid(tmp_path):
    assert one(tmp_path, {"network_multiplier": "0.5"}).network_multiplier == 0.5
    assert one(tmp_path, {"network_multiplier": "strong"}).network_multiplier == 1.0


@pytest.mark.parametrize("key,value", [("width", 0), ("height", "big"), ("num_frames", -3), ("sample_steps", 0)])
def test_bad_numbers_name_sample_and_field(tmp_path, key, value):
    sample = {"neg": "", "samples": [{"prompt": "p", "ctrl_img": CTRL}, {"prompt": "q", "ctrl_img": CTRL, key: value}]}
    with pytest.raises(HarnessError) as e:
        expand_samples(make_job(tmp_path, sample))
    assert e.value.field == f"config.process[0].sample.samples[1].{key}"


def test_bad_block_value_names_block_field(tmp_path):
    with pytest.raises(HarnessError) as e:
        expand_samples(make_job(tmp_path, {"neg": "", "width": 0, "samples": [{"prompt": "p", "ctrl_img": CTRL}]}))
    assert e.value.field == "config.process[0].sample.width"


def test_no_samples_and_no_prompts(tmp_path):
    with pytest.raises(HarnessError) as e:
        expand_samples(make_job(tmp_path, {"neg": ""}))
    assert "no previews were configured" in e.value.message


def test_merge_decision(tmp_path):
    block = {"neg": "", "samples": [{"prompt": "p", "ctrl_img": CTRL}, {"prompt": "q", "ctrl_img": CTRL}]}
    job = make_job(tmp_path, block)
    assert merge_decision(job, expand_samples(job))[0] is True
    job = make_job(tmp_path, block, model={"quantize": True})
    merged, why = merge_decision(job, expand_samples(job))
    assert merged is False and "quantize" in why
    job = make_job(tmp_path, block, model={"layer_offloading": True})
    assert merge_decision(job, expand_samples(job))[0] is False
    block["samples"][1]["prompt"] = "q --m 0.5"
    job = make_job(tmp_path, block)
    assert merge_decision(job, expand_samples(job))[0] is False


MANIFEST_KEYS = {"prompt": "prompt", "negative_prompt": "negative_prompt", "seed": "seed", "width": "width_effective",
                 "height": "height_effective", "num_frames": "num_frames_effective", "guidance_scale": "guidance_scale",
                 "sample_steps": "sample_steps", "network_multiplier": "network_multiplier", "ctrl_img": "ctrl_img",
                 "fps": "fps", "prompt_config": "prompt_config", "width_requested": "width_requested",
                 "height_requested": "height_requested", "num_frames_requested": "num_frames_requested"}


@pytest.mark.skipif(not ORACLE.is_dir(), reason="oracle folder /work/shared/oracle is absent")
@pytest.mark.parametrize("case", ["case_a", "case_d"])
def test_expansion_equals_oracle_manifest(case):
    specs = expand_samples(load_job(ORACLE / "cases" / case / "config.yaml"))
    manifest = json.loads((ORACLE / "cases" / case / "manifest.json").read_text())
    assert manifest["samples"]
    for rec in manifest["samples"]:
        spec = specs[rec["prompt_index"]]
        got = {k: getattr(spec, k) for k in MANIFEST_KEYS}
        want = {k: rec[v] for k, v in MANIFEST_KEYS.items()}
        assert got == want, rec["file"]
        assert spec.unreproducible is None


@pytest.mark.skipif(not ORACLE.is_dir(), reason="oracle folder /work/shared/oracle is absent")
def test_oracle_merge_decisions_match_manifest():
    for case, expect in (("case_a", False), ("case_d", True)):
        job = load_job(ORACLE / "cases" / case / "config.yaml")
        manifest = json.loads((ORACLE / "cases" / case / "manifest.json").read_text())
        assert merge_decision(job, expand_samples(job))[0] is expect
        trained = [r for r in manifest["samples"] if r["step"] > 0]
        assert all(r["network_state_during_sampling"]["merged_in"] is expect for r in trained)
