"""Job shapes real ai-toolkit users have, pinned end to end through ``wan-parity run`` on self-made fixtures.

Still previews (``num_frames: 1`` in every ``format`` ai-toolkit allows, and the still ``.webp`` a one-frame item
becomes when the sample block animates), ``guidance_scale <= 1`` (no unconditional pass), fullwidth/CJK/accented
prompts with Wan's Chinese negative prompt, legacy ``prompts:`` strings with inline flags, and a qfloat8 base.

What rests on what: the goldens here are the harness's own renders of the tiny random-weight model
(harness/demo_model.py), saved with **ai-toolkit's own Pillow calls** (``GenerateImageConfig.save_image`` at
0.12.26: ``image.save(path)`` for one frame, the animated-WebP call otherwise), not with the harness's encoder. So a
pass proves the discovery, the codec choice and settings per extension, the one-frame path, the CFG rule and the
prompt path end to end; that such jobs' ai-toolkit renders are bit-exact was measured on kept-back ai-toolkit jobs
(issue 19), and the oracle (tests/test_oracle_parity.py) pins the sampler itself.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from harness.cli import main
from harness.demo import DEMO_CASE
from harness.demo_model import build_tiny_model
from harness.diagnose.variants import WAN_NEGATIVE
from harness.engine import Engine
from harness.options import RunOptions
from harness.targets import from_output_dir

NON_ASCII = "ｆｕｌｌｗｉｄｔｈ ｋｉｔｅ 「凧」が緑の丘の上を漂う — café naïve ﬁne &amp; “quoted”"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("variants")
    build_tiny_model(root / "model")
    shutil.copytree(DEMO_CASE / "ctrl", root / "ctrl")
    return root


@pytest.fixture(scope="module")
def engine():
    """One engine for every golden the module renders (models load once)."""
    return Engine(RunOptions(device="cpu", threads=2))


@pytest.fixture(autouse=True)
def empty_hf_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)


def write_job(folder: Path, tiny: Path, sample: dict, model: dict | None = None) -> Path:
    """An ai-toolkit output folder (config.yaml + samples/) for the tiny model; previews are added by ``goldens``."""
    folder.mkdir(parents=True)
    (folder / "samples").mkdir()
    config = {"job": "extension", "config": {"name": folder.name, "process": [{
        "type": "sd_trainer", "device": "cpu", "training_folder": str(folder.parent),
        "network": {"type": "lora", "linear": 4, "linear_alpha": 4}, "save": {"dtype": "float32", "save_every": 250},
        "train": {"steps": 500, "dtype": "bf16"},
        "model": {"name_or_path": str(tiny / "model"), "arch": "wan22_14b_i2v", "quantize": False, **(model or {})},
        "sample": {"width": 64, "height": 48, "fps": 16, "seed": 3, "guidance_scale": 3.0, "sample_steps": 2,
                   "neg": "", **sample}}]}, "meta": {"name": "[name]", "version": "1.0"}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return folder


def save_like_aitk_0_12_26(frames: np.ndarray, path: Path, fps: int) -> None:
    """``GenerateImageConfig.save_image``: a frame list as animated WebP q80, one image with ``image.save(path)``."""
    images = [Image.fromarray(f) for f in frames]
    if len(images) > 1:
        images[0].save(path, format="WEBP", append_images=images[1:], save_all=True, duration=1000 // fps, loop=0,
                       quality=80)
    else:
        images[0].save(path)


def goldens(engine, folder: Path, exts: list[str]) -> list:
    """Render every preview of the job once (step 0) and save it where and how ai-toolkit would."""
    for i, ext in enumerate(exts):
        (folder / "samples" / f"179000000000{i}__000000000_{i}.{ext}").write_bytes(b"")
    targets = from_output_dir(folder)
    for target in targets:
        render = engine.render(target)
        save_like_aitk_0_12_26(render.frames, Path(target.preview.golden), target.preview.sample.fps)
    return targets


def run_cli(capsys, folder: Path, out: Path):
    capsys.readouterr()
    rc = main(["run", str(folder), "--out", str(out), "--no-report", "--device", "cpu", "--threads", "2"])
    captured = capsys.readouterr()
    return rc, json.loads((out / "results.json").read_text()), captured.out


def ctrl(tiny: Path, name: str = "hills.png") -> str:
    return str(tiny / "ctrl" / name)


# ------------------------------------------------------------------------------------------------ still previews


@pytest.mark.parametrize("fmt", ["jpg", "png", "webp"])
def test_still_previews_in_every_format_are_bit_exact(tiny, engine, tmp_path, capsys, fmt):
    folder = write_job(tmp_path / f"still_{fmt}", tiny, {"num_frames": 1, "format": fmt, "samples": [
        {"prompt": "a red kite over the hills", "ctrl_img": ctrl(tiny)},
        {"prompt": "a boat on the lake", "ctrl_img": ctrl(tiny, "lake.png"), "num_frames": 5}]})  # animated: webp
    targets = goldens(engine, folder, [fmt, "webp"])
    assert [t.preview.sample.num_frames for t in targets] == [1, 5]
    with Image.open(targets[0].preview.golden) as still:
        assert getattr(still, "n_frames", 1) == 1 and still.format == {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}[fmt]
    rc, doc, _ = run_cli(capsys, folder, tmp_path / "out")
    assert rc == 0 and [r["bit_exact"] for r in doc["results"]] == [True, True], [r["message"] for r in doc["results"]]
    assert doc["results"][0]["num_frames"] == 1 and Path(doc["results"][0]["golden"]).suffix == f".{fmt}"


def test_one_frame_item_of_an_animated_job_is_a_still_webp(tiny, engine, tmp_path, capsys):
    """With a sample-level num_frames > 1 ai-toolkit forces the extension to webp, so a one-frame item is a still
    WebP with Pillow's defaults (not an animation of one frame, not the format's jpg)."""
    folder = write_job(tmp_path / "mixed", tiny, {"num_frames": 5, "format": "jpg", "samples": [
        {"prompt": "a red kite over the hills", "ctrl_img": ctrl(tiny), "num_frames": 1},
        {"prompt": "a boat on the lake", "ctrl_img": ctrl(tiny, "lake.png")}]})
    targets = goldens(engine, folder, ["webp", "webp"])
    assert [t.preview.sample.num_frames for t in targets] == [1, 5]
    rc, doc, _ = run_cli(capsys, folder, tmp_path / "out")
    assert rc == 0 and all(r["bit_exact"] for r in doc["results"]), [r["message"] for r in doc["results"]]


# ------------------------------------------------------------------------------------------------ CFG <= 1


@pytest.mark.parametrize("guidance", [1.0, 0.5])
def test_guidance_at_most_one_skips_the_unconditional_pass(tiny, engine, tmp_path, capsys, guidance):
    folder = write_job(tmp_path / "cfg", tiny, {"num_frames": 5, "guidance_scale": guidance, "neg": "blurry",
                                                "samples": [{"prompt": "a red kite", "ctrl_img": ctrl(tiny)}]})
    target = goldens(engine, folder, ["webp"])[0]
    plain = engine.render(target)
    assert len(plain.trace) == target.preview.sample.sample_steps  # one forward per step: no uncond
    settings = engine.baseline(target)
    other_neg = engine.render(target, replace(settings, sample=replace(settings.sample, negative_prompt=WAN_NEGATIVE)))
    assert np.array_equal(plain.frames, other_neg.frames)  # the negative prompt is never used
    rc, doc, _ = run_cli(capsys, folder, tmp_path / "out")
    assert rc == 0 and doc["results"][0]["bit_exact"] and doc["results"][0]["guidance_scale"] == guidance


# ------------------------------------------------------------------------------------------------ prompts


def test_non_ascii_prompts_clean_like_diffusers_and_render_bit_exact(tiny, engine, tmp_path, capsys):
    from diffusers.pipelines.wan.pipeline_wan import prompt_clean

    from harness.render.text import clean_prompt

    for text in (NON_ASCII, WAN_NEGATIVE, "  «ｔｅｓｔ»\u3000\u00a0x "):
        assert clean_prompt(text) == prompt_clean(text)  # the function ai-toolkit's encode path calls
    folder = write_job(tmp_path / "unicode", tiny, {"num_frames": 5, "neg": WAN_NEGATIVE, "samples": [
        {"prompt": NON_ASCII, "ctrl_img": ctrl(tiny)}]})
    goldens(engine, folder, ["webp"])
    rc, doc, _ = run_cli(capsys, folder, tmp_path / "out")
    result = doc["results"][0]
    assert rc == 0 and result["bit_exact"] and result["prompt"] == NON_ASCII
    assert result["negative_prompt"] == WAN_NEGATIVE


def test_legacy_prompt_strings_with_inline_flags(tiny, engine, tmp_path, capsys):
    hills = ctrl(tiny)
    folder = write_job(tmp_path / "legacy", tiny, {"num_frames": 5, "prompts": [
        f"a red kite --ctrl_img {hills} --w 88 --h 72 --seed 11 --cfg 1.0 --frames 9 --n ignored",
        f"a boat --ctrl_img {ctrl(tiny, 'lake.png')} --s 3 --m 0.5"]})
    targets = goldens(engine, folder, ["webp", "webp"])
    first, second = (t.preview.sample for t in targets)
    assert (first.prompt, first.width, first.height, first.seed, first.guidance_scale, first.num_frames,
            first.ctrl_img) == ("a red kite", 80, 64, 11, 1.0, 9, hills)  # 88x72 -> /8 -> /16
    assert (second.sample_steps, second.network_multiplier, second.seed) == (3, 0.5, 3)
    rc, doc, _ = run_cli(capsys, folder, tmp_path / "out")
    assert rc == 0 and all(r["bit_exact"] for r in doc["results"])


# ------------------------------------------------------------------------------------------------ qfloat8


def test_qfloat8_base_renders_bit_exact_and_records_the_plan(tiny, engine, tmp_path, capsys):
    folder = write_job(tmp_path / "qfloat8", tiny, {"num_frames": 5, "samples": [
        {"prompt": "a red kite", "ctrl_img": ctrl(tiny)}]}, model={"quantize": True, "qtype": "qfloat8"})
    goldens(engine, folder, ["webp"])
    rc, doc, _ = run_cli(capsys, folder, tmp_path / "out")
    result = doc["results"][0]
    assert rc == 0 and result["bit_exact"], result["message"]
    assert result["quantization"]["transformer"] == result["quantization"]["text_encoder"] == "qfloat8"
    assert result["approximate"] is None  # qfloat8's arithmetic is verified (tests/test_quant.py)
