"""runcomfy request JSON as a case source: service semantics, control images, LoRAs, validation."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from harness.errors import HarnessError
from harness.targets import collect
from harness.sources.runcomfy import STEP_UNKNOWN, decode_image_data, is_runcomfy_request, load_request


def png_bytes(colour=(255, 0, 0)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def setup(tmp_path):
    """A request folder with a control image, a LoRA pair and a service output."""
    (tmp_path / "ctrl.png").write_bytes(png_bytes())
    job = tmp_path / "job"
    job.mkdir()
    for side in ("high", "low"):
        (job / f"job_000000500_{side}_noise.safetensors").write_bytes(b"lora")
    (tmp_path / "out_0.webp").write_bytes(b"webp")
    return tmp_path


def loras(h=None, low=None, name="job/job_000000500"):
    out = [{"path": f"{name}_high_noise.safetensors", "transformer": "high"},
           {"path": f"{name}_low_noise.safetensors", "transformer": "low"}]
    if h is not None:
        out[0]["network_multiplier"] = h
    if low is not None:
        out[1]["network_multiplier"] = low
    return out


def write(root: Path, prompts, **top) -> Path:
    data = {"model": "wan22_14b_i2v", "prompts": prompts, "loras": loras()}
    data.update(top)
    path = root / "req.json"
    path.write_text(json.dumps(data))
    return path


def load(path, tmp_path, **kw):
    return load_request(path, cache_dir=tmp_path / "cache", **kw)


def fails(path, tmp_path, **kw) -> HarnessError:
    with pytest.raises(HarnessError) as e:
        load(path, tmp_path, **kw)
    assert e.value.file == str(path)
    return e.value


def test_defaults_and_paths(setup):
    req = write(setup, [{"prompt": "a cat", "ctrl_img": "ctrl.png", "golden": "out_0.webp"},
                        {"prompt": "a dog", "ctrl_img": str(setup / "ctrl.png")}])
    jobs = load(req, setup)
    s = jobs[0].sample
    assert (s.width, s.height, s.num_frames, s.fps, s.sample_steps, s.guidance_scale, s.negative_prompt) == (
        1024, 1024, 41, 16, 25, 4.0, "")
    assert [j.sample.seed for j in jobs] == [42, 43]  # base_seed + index
    assert jobs[0].golden == setup / "out_0.webp" and jobs[1].golden is None
    assert jobs[0].sample.ctrl_img == str(setup / "ctrl.png") == jobs[1].sample.ctrl_img
    j = jobs[0]
    assert j.lora.high == setup / "job/job_000000500_high_noise.safetensors" and j.step == 500
    assert j.merged is False and j.extra["profile"] == "runcomfy" and j.extra["multipliers"] == {"high": 1.0, "low": 1.0}
    assert j.case == "req" and j.index == 0 and j.unreproducible is None and j.extra["notes"] == []


def test_item_values_snapping_and_per_expert_multipliers(setup):
    req = write(setup, [{"prompt": "x", "ctrl_img": "ctrl.png", "width": 100, "height": 76, "num_frames": 10,
                         "fps": 24, "seed": 7, "sample_steps": 30, "guidance_scale": 3.5, "neg": "blurry"}],
                loras=loras(0.8, 1.2))
    j = load(req, setup)[0]
    s = j.sample
    # /16 floor without ai-toolkit's /8 step; 4k+1 frames
    assert (s.width, s.height, s.num_frames, s.width_requested, s.num_frames_requested) == (96, 64, 9, 100, 10)
    assert (s.fps, s.seed, s.sample_steps, s.guidance_scale, s.negative_prompt) == (24, 7, 30, 3.5, "blurry")
    assert j.extra["multipliers"] == {"high": 0.8, "low": 1.2} and s.network_multiplier == 0.8


def test_trigger_only_and_no_flag_parsing(setup):
    req = write(setup, [{"prompt": "[trigger] by [name] --n ugly --w 64", "ctrl_img": "ctrl.png"},
                        {"prompt": "[trigger] x", "ctrl_img": "ctrl.png", "trigger_word": "own"}],
                trigger_word="sks")
    a, b = load(req, setup)
    assert a.sample.prompt == "sks by [name] --n ugly --w 64" and a.sample.width == 1024
    assert a.sample.negative_prompt == "" and a.sample.prompt_config == "[trigger] by [name] --n ugly --w 64"
    assert b.sample.prompt == "own x"
    no_trigger = write(setup, [{"prompt": "[trigger] x", "ctrl_img": "ctrl.png"}])
    assert load(no_trigger, setup)[0].sample.prompt == "[trigger] x"


def test_request_level_defaults_are_flagged(setup):
    req = write(setup, [{"prompt": "x", "ctrl_img": "ctrl.png"}, {"prompt": "y", "ctrl_img": "ctrl.png", "seed": 5}],
                seed=100, sample_steps=6, guidance_scale=5.0)
    a, b = load(req, setup)
    assert (a.sample.seed, b.sample.seed, a.sample.sample_steps, a.sample.guidance_scale) == (100, 5, 6, 5.0)
    assert "harness extension" in a.extra["notes"][0] and "seed" in a.extra["notes"][0]
    assert "seed" not in b.extra["notes"][0]


def test_random_seed_is_unreproducible(setup):
    req = write(setup, [{"prompt": "x", "ctrl_img": "ctrl.png", "seed": -1}, {"prompt": "y", "ctrl_img": "ctrl.png"}],
                seed=-1)
    a, b = load(req, setup)
    assert a.sample.seed == -1 and "random seed" in a.unreproducible
    assert b.sample.seed == -1 and b.unreproducible  # a negative base seed gives -1, not base + index


@pytest.mark.parametrize("wrap", ["plain", "data_url", "urlsafe_unpadded", "wrapped_lines"])
def test_base64_control_image(setup, wrap):
    raw = png_bytes((0, 255, 0))
    text = base64.b64encode(raw).decode()
    if wrap == "data_url":
        text = "data:image/png;base64," + text
    elif wrap == "urlsafe_unpadded":
        text = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    elif wrap == "wrapped_lines":
        text = "\n".join(text[i:i + 20] for i in range(0, len(text), 20))
    j = load(write(setup, [{"prompt": "x", "ctrl_img": text}]), setup)[0]
    path = Path(j.sample.ctrl_img)
    assert path.parent == setup / "cache" and path.suffix == ".png" and path.read_bytes() == raw
    assert Image.open(path).getpixel((0, 0)) == (0, 255, 0)
    again = load(write(setup, [{"prompt": "x", "ctrl_img": text}]), setup)[0]
    assert again.sample.ctrl_img == j.sample.ctrl_img  # content-addressed: decoded once


def test_decode_image_data_direct(tmp_path):
    jpeg = io.BytesIO()
    Image.new("RGB", (4, 4)).save(jpeg, format="JPEG")
    p = decode_image_data(base64.b64encode(jpeg.getvalue()).decode(), tmp_path)
    assert p.suffix == ".jpg"
    with pytest.raises(HarnessError) as e:
        decode_image_data(base64.b64encode(b"just some text, not an image").decode(), tmp_path, file="f", field="x")
    assert "not to a PNG" in e.value.message and e.value.field == "x"


@pytest.mark.parametrize("ctrl, words", [
    ("A" * 63 + "!", "not found"),  # not base64 and not a file
    ("QUJD" * 20 + "A", "valid base64"),  # base64 alphabet, broken length
    (base64.b64encode(b"hello world, definitely not an image file").decode(), "not to a PNG"),
    ("data:image/png,abc", "not base64"),
    ("data:text/plain;base64," + base64.b64encode(b"x").decode(), "not an image"),
    ("https://example.com/c.png", "URL"),
    ("missing.png", "not found"),
    ("", "missing"),
    (5, "missing"),
])
def test_bad_control_images(setup, ctrl, words):
    err = fails(write(setup, [{"prompt": "x", "ctrl_img": "ctrl.png"}, {"prompt": "y", "ctrl_img": ctrl}]), setup)
    assert err.field == "prompts[1].ctrl_img" and words in err.message


def test_path_map_for_ctrl_and_loras(setup):
    req = write(setup, [{"prompt": "x", "ctrl_img": "/box/ctrl.png"}], loras=loras(name="/box/job/job_000000500"))
    with pytest.raises(HarnessError):
        load(req, setup)
    j = load(req, setup, path_map=[f"/box={setup}"])[0]
    assert j.sample.ctrl_img == str(setup / "ctrl.png") and j.lora.low == setup / "job/job_000000500_low_noise.safetensors"


def test_lora_shapes(setup):
    (setup / "final_high_noise.safetensors").write_bytes(b"x")
    one = write(setup, [{"prompt": "x", "ctrl_img": "ctrl.png"}],
                loras=[{"path": "final_high_noise.safetensors", "transformer": "high", "network_multiplier": 0.5}])
    j = load(one, setup)[0]
    assert j.lora.low is None and j.extra["multipliers"] == {"high": 0.5, "low": 0.0} and j.step == STEP_UNKNOWN
    none = write(setup, [{"prompt": "x", "ctrl_img": "ctrl.png"}], loras=[])
    j = load(none, setup)[0]
    assert j.lora is None and j.step == 0 and j.extra["multipliers"] == {"high": 0.0, "low": 0.0}


@pytest.mark.parametrize("change, field, words", [
    ({"model": "wan22_5b"}, "model", "only 'wan22_14b_i2v'"),
    ({"prompts": []}, "prompts", "non-empty list"),
    ({"loras": None}, "loras", "missing"),
    ({"loras": {"path": "x"}}, "loras", "list"),
    ({"loras": ["x"]}, "loras[0]", "object"),
    ({"loras": [{"path": "job/job_000000500_high_noise.safetensors"}]}, "loras[0].transformer", "'high' or 'low'"),
    ({"loras": [{"path": "nope.safetensors", "transformer": "low"}]}, "loras[0].path", "not found"),
    ({"loras": [{"path": "https://h/x.safetensors", "transformer": "low"}]}, "loras[0].path", "URL"),
    ({"loras": loras(h=2.5)}, "loras[0].network_multiplier", "outside the range"),
    ({"loras": loras() + loras()[:1]}, "loras[2].transformer", "a second 'high'"),
    ({"loras": [{"path": "x", "transformer": "low", "scale": 1}]}, "loras[0].scale", "unknown key"),
    ({"steps": 25}, "steps", "unknown key"),
    ({"seed": "42"}, "seed", "whole number"),
    ({"trigger_word": 3}, "trigger_word", "string"),
])
def test_request_validation(setup, change, field, words):
    data = {"prompts": [{"prompt": "x", "ctrl_img": "ctrl.png"}]}
    data.update(change)
    err = fails(write(setup, **data), setup)
    assert err.field == field and words in err.message


@pytest.mark.parametrize("item, field, words", [
    ({"width": 32}, "prompts[0].width", "outside the range"),
    ({"height": 5000}, "prompts[0].height", "outside the range"),
    ({"num_frames": 1.5}, "prompts[0].num_frames", "whole number"),
    ({"fps": True}, "prompts[0].fps", "whole number"),
    ({"sample_steps": 0}, "prompts[0].sample_steps", "outside the range"),
    ({"guidance_scale": "4"}, "prompts[0].guidance_scale", "number"),
    ({"guidance_scale": 25}, "prompts[0].guidance_scale", "outside the range"),
    ({"seed": -2}, "prompts[0].seed", "outside the range"),
    ({"neg": 0}, "prompts[0].neg", "string"),
    ({"prompt": None}, "prompts[0].prompt", "missing"),
    ({"golden": "nope.webp"}, "prompts[0].golden", "not found"),
    ({"ctrl_img_1": "ctrl.png"}, "prompts[0].ctrl_img_1", "unknown key"),
])
def test_prompt_validation(setup, item, field, words):
    base = {"prompt": "x", "ctrl_img": "ctrl.png"}
    base.update(item)
    err = fails(write(setup, [base]), setup)
    assert err.field == field and words in err.message


def test_unreadable_request(tmp_path):
    p = tmp_path / "r.json"
    p.write_text('{"model": ')
    err = fails(p, tmp_path)
    assert err.field.startswith("line 1") and "does not parse" in err.message
    p.write_text("[1]")
    assert "top level" in fails(p, tmp_path).message


def test_detection_and_dispatch(setup):
    req = write(setup, [{"prompt": "x", "ctrl_img": "ctrl.png"}])
    assert is_runcomfy_request(req) and not is_runcomfy_request(setup / "ctrl.png")
    (setup / "other.json").write_text('{"a": 1}')
    assert not is_runcomfy_request(setup / "other.json")
    targets = collect(req, cache_dir=setup / "cache")
    assert len(targets) == 1 and targets[0].profile == "runcomfy"
    with pytest.raises(HarnessError):
        collect(setup / "other.json")
