"""``wan-parity render`` on the shared CPU oracle: ``--like`` reproduces a preview bit for bit, and a served engine
switches LoRAs and per-expert scales between requests without reloading the base (and restores it exactly)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.cli import main
from harness.engine import Engine
from harness.generate import stand_in
from harness.media import read_frames
from harness.options import RunOptions
from harness.serve.client import call, serving, wait_for
from harness.serve.server import build_service

from .oracle_paths import ORACLE, PATH_MAP, TINY_MODEL, needs_oracle, output_dir, skip_unless_exact_expected

pytestmark = [needs_oracle, pytest.mark.oracle]
CASE_A = "cases/case_a/output/oracle_case_a"


def test_like_renders_a_new_prompt_as_the_preview_would_have_looked(tmp_path):
    """The preview's own prompt through --like gives ai-toolkit's golden WebP byte for byte (step 2: LoRA unmerged)."""
    skip_unless_exact_expected(Engine(RunOptions(device="cpu", threads=2)), "cpu", "cpu")
    golden = output_dir("case_a") / "samples" / "1795789072535__000000002_0.webp"
    argv = ["render", "--like", str(output_dir("case_a")), "--lora-step", "2", "--path-map", PATH_MAP, "--device",
            "cpu", "--threads", "2", "--out", str(tmp_path), "--mp4",
            "--prompt", "[trigger] a red cat walks slowly in the misty forest"]
    assert main(argv) == 0
    [result] = json.loads((tmp_path / "results.json").read_text())["results"]
    assert result["status"] == "rendered" and result["lora_path"] == "unmerged" and result["seed"] == 42
    assert Path(result["render_path"]).read_bytes() == golden.read_bytes()
    assert read_frames(result["mp4_path"]).frames.shape == (9, 64, 64, 3)


def lora_request(ckpt: str, high: float, low: float) -> dict:
    name = f"{CASE_A}/oracle_case_a{ckpt}"
    return {"model": "wan22_14b_i2v", "trigger_word": "sks",
            "prompts": [{"prompt": "[trigger] a red cat", "ctrl_img": "assets/ctrl/ctrl_0.png", "width": 64,
                         "height": 64, "num_frames": 1, "sample_steps": 2, "seed": 5}],
            "loras": [{"path": f"{name}_high_noise.safetensors", "transformer": "high", "network_multiplier": high},
                      {"path": f"{name}_low_noise.safetensors", "transformer": "low", "network_multiplier": low}]}


def test_lora_and_scale_switches_keep_the_base_loaded_and_exact(tmp_path, monkeypatch):
    from harness.render import models

    loads = []
    real = models.load_bundle
    monkeypatch.setattr(models, "load_bundle", lambda *a, **k: loads.append(a) or real(*a, **k))
    options = RunOptions(base_model=str(TINY_MODEL), device="cpu", threads=2, out=tmp_path)
    svc = build_service(options, stand_in(), tmp_path, [ORACLE])
    requests = [lora_request("", 1.0, 1.0), lora_request("", 1.0, 0.5), lora_request("_000000002", 1.0, 1.0),
                lora_request("", 1.0, 1.0)]
    records = []
    with serving(svc.app) as url:
        for payload in requests:  # one at a time: each render must see the base as the previous one left it
            records.append(wait_for(url, call("POST", f"{url}/v1/inference", payload)[1]["id"]))
    outputs = [r["outputs"][0] for r in records]
    assert [r["status"] for r in records] == ["succeeded"] * 4, [r["error"] for r in records]
    assert [o["lora_path"] for o in outputs] == ["merged", "unmerged", "merged", "merged"]
    assert len(loads) == 1  # one base model load for every LoRA and scale
    digests = [o["frames_sha256"] for o in outputs]
    assert len(set(digests[:3])) == 3  # the scale and the checkpoint change the pixels
    assert digests[3] == digests[0]  # after merging, hooking and merging another, the base is bit-identical
