"""New prompts as golden-less targets (harness.generate, render's argument rules): no torch, no render."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.cli import main
from harness.errors import HarnessError
from harness.generate import like_job, prompt_targets, read_prompts_file, request_targets, stand_in

from .oracle_paths import ORACLE, needs_oracle, output_dir


@pytest.fixture
def ctrl(tmp_path) -> Path:
    from PIL import Image

    path = tmp_path / "ctrl.png"
    Image.new("RGB", (8, 8), (10, 200, 30)).save(path)
    return path


def lora_pair(folder: Path, name="job", step=500) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = tuple(folder / f"{name}_{step:09d}_{side}_noise.safetensors" for side in ("high", "low"))
    for f in files:
        f.write_bytes(b"lora")
    return files


def test_stand_in_uses_the_service_defaults_and_ai_toolkit_rules(ctrl):
    [target] = prompt_targets(stand_in(trigger_word="sks"), [{"prompt": "[trigger] a [name] cat --n blurry --w 520"}],
                              {"ctrl_img": str(ctrl)})
    s = target.preview.sample
    assert s.prompt == "sks a sks cat" and s.negative_prompt == "blurry"  # ai-toolkit: [name] too, inline flags
    assert (s.width, s.height, s.num_frames, s.fps, s.sample_steps, s.guidance_scale, s.seed) == (
        512, 1024, 41, 16, 25, 4.0, 42)  # 520 -> /8 -> /16
    assert target.preview.golden is None and target.preview.lora is None and target.profile == "auto"
    assert target.preview.extra["rng_layout_from_device"] is True


def test_flags_beat_the_file_and_every_prompt_shares_the_seed(tmp_path, ctrl):
    prompts = tmp_path / "p.yaml"
    prompts.write_text("width: 640\nsamples:\n  - a cat\n  - {prompt: a dog, ctrl_img: ctrl.png, height: 100}\n")
    block, items = read_prompts_file(prompts)
    targets = prompt_targets(stand_in(), items, {"ctrl_img": str(ctrl), "seed": 7, "num_frames": 10}, block)
    assert [t.preview.sample.seed for t in targets] == [7, 7]
    assert [(t.preview.sample.width, t.preview.sample.height, t.preview.sample.num_frames) for t in targets] == [
        (640, 1024, 9), (640, 96, 9)]
    assert items[1]["ctrl_img"] == str(tmp_path / "ctrl.png")  # relative to the prompts file


def test_text_prompts_file_and_unknown_keys(tmp_path):
    text = tmp_path / "p.txt"
    text.write_text("a cat\n\n  a dog  \n")
    assert read_prompts_file(text) == ({}, [{"prompt": "a cat"}, {"prompt": "a dog"}])
    bad = tmp_path / "bad.yaml"
    bad.write_text("samples:\n  - {prompt: x, widht: 3}\n")
    with pytest.raises(HarnessError, match="unknown key") as e:
        read_prompts_file(bad)
    assert e.value.field == "samples[0].widht"


@pytest.mark.parametrize("settings, field, words", [
    ({}, "prompts[0].ctrl_img", "no control image"),
    ({"seed": -1}, "prompts[0].seed", "random seed"),
    ({"width": 0}, "width", "greater than 0"),
])
def test_what_ai_toolkit_could_not_render_names_the_setting(ctrl, settings, field, words):
    settings = {"ctrl_img": str(ctrl), **settings} if field != "prompts[0].ctrl_img" else settings
    with pytest.raises(HarnessError, match=words) as e:
        prompt_targets(stand_in(), [{"prompt": "x"}], settings)
    assert e.value.field.endswith(field) and e.value.file == "command line"


def test_merge_rule_one_multiplier_merges_two_per_expert_ones_do_not(tmp_path, ctrl):
    high, low = lora_pair(tmp_path / "loras")
    basis = stand_in(str(high), str(low))
    [one] = prompt_targets(basis, [{"prompt": "x"}], {"ctrl_img": str(ctrl), "network_multiplier": 0.8})
    assert one.preview.merged and one.preview.multiplier == 0.8 and one.preview.step == 500
    [two] = prompt_targets(basis, [{"prompt": "x"}], {"ctrl_img": str(ctrl)}, multipliers={"high": 1.0, "low": 0.5})
    assert not two.preview.merged and two.preview.multiplier == {"high": 1.0, "low": 0.5}
    assert "differ" in two.preview.extra["merge_reason"]


def request(ctrl_img, loras=(), **prompt) -> dict:
    return {"model": "wan22_14b_i2v", "trigger_word": "sks",
            "prompts": [{"prompt": "[trigger] [name]", "ctrl_img": ctrl_img, **prompt}], "loras": list(loras)}


def test_request_keeps_its_schema_and_gets_ai_toolkits_sampler_and_merge_rule(tmp_path, ctrl):
    high, low = lora_pair(tmp_path / "loras")
    loras = [{"path": str(high), "transformer": "high", "network_multiplier": 0.7},
             {"path": str(low), "transformer": "low", "network_multiplier": 0.7}]
    [t] = request_targets(request("ctrl.png", loras), stand_in(), file="request", base_dir=tmp_path,
                          cache_dir=tmp_path / "cache")
    assert t.preview.sample.prompt == "sks [name]"  # the service replaces [trigger] only
    assert t.profile == "auto" and t.preview.golden is None and t.preview.merged and t.preview.step == 500
    loras[1]["network_multiplier"] = 1.0
    [u] = request_targets(request("ctrl.png", loras), stand_in(), file="request", base_dir=tmp_path,
                          cache_dir=tmp_path / "cache")
    assert not u.preview.merged and u.preview.multiplier == {"high": 0.7, "low": 1.0}


def test_request_paths_must_stay_inside_the_roots(tmp_path, ctrl):
    root = tmp_path / "root"
    root.mkdir()
    (root / "inside.png").write_bytes(ctrl.read_bytes())
    (root / "link.png").symlink_to(ctrl)  # points outside the root
    ok = request_targets(request("inside.png"), stand_in(), file="request", base_dir=root, roots=[root])
    assert ok[0].preview.sample.ctrl_img == str(root / "inside.png")
    for path in ("../ctrl.png", str(ctrl), "link.png"):
        with pytest.raises(HarnessError, match="outside the allowed") as e:
            request_targets(request(path), stand_in(), file="request", base_dir=root, roots=[root])
        assert e.value.field == "prompts[0].ctrl_img"


@needs_oracle
def test_like_inherits_the_preview_and_the_jobs_merge_decision():
    basis = like_job(output_dir("case_a"), sample=1, step=2)
    [t] = prompt_targets(basis, [{"prompt": "[trigger] a new prompt"}])
    s = t.preview.sample
    assert s.prompt == "sks a new prompt" and (s.width, s.height, s.num_frames, s.seed) == (96, 64, 9, 43)
    assert s.network_multiplier == 0.5 and not t.preview.merged  # the job's round has two multipliers
    assert t.preview.lora.high.name == "oracle_case_a_000000002_high_noise.safetensors"
    assert t.rng_layout == "cpu" and t.model_name == "/workspace/oracle/tiny_model"
    final = like_job(output_dir("case_a"))
    assert final.step == 4 and final.lora.high.name == "oracle_case_a_high_noise.safetensors"
    assert like_job(output_dir("case_a"), step=0).lora is None
    with pytest.raises(HarnessError, match="not a sample"):
        like_job(output_dir("case_a"), sample=3)


@pytest.mark.parametrize("argv, words", [
    (["render", "--ctrl-img", "x.png"], "--prompt: nothing to render"),
    (["render", "--prompt", "x", "--ctrl-img", "x.png"], "--base-model: required without --like"),
    (["render", "--prompt", "x", "--lora-step", "2"], "--lora-step: needs --like"),
    (["serve", "--host", "0.0.0.0", "--base-model", "."], "--host: 0.0.0.0 is reachable"),
])
def test_cli_refusals_are_one_line(capsys, argv, words):
    assert main(argv) == 2
    assert words in capsys.readouterr().err


def test_a_request_file_carries_its_own_settings(tmp_path, ctrl, capsys):
    path = tmp_path / "req.json"
    path.write_text(json.dumps(request(str(ctrl))))
    assert main(["render", str(path), "--seed", "3"]) == 2
    assert "--seed: a request carries its own" in capsys.readouterr().err
