"""``calibrate``: threshold suggestion rules, determinism detection, and one real run on the tiny demo model."""

from __future__ import annotations

import io
import json
import math
import time
from pathlib import Path
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest

from harness import calibrate as cal
from harness.errors import HarnessError
from harness.options import RunOptions


# --------------------------------------------------------------------------- rules


@pytest.mark.parametrize("floor,ssim,expected", [
    (36.4, 0.97, (33.0, 0.95)),
    (math.inf, 1.0, (45.0, 0.98)),  # nothing drifted: the cap
    (None, None, (45.0, 0.99)),  # nothing measured
    (80.0, 0.9999, (45.0, 0.97)),  # floored to 0.01
    (22.0, 0.60, (25.0, 0.80)),  # a wrong-checkpoint-sized floor never lowers the bar below 25 dB
    (28.0, 0.905, (25.0, 0.88)),
])
def test_suggest_thresholds_margin_and_bounds(floor, ssim, expected):
    got = cal.suggest_thresholds(floor, ssim, margin_db=3.0, ssim_margin=0.02)
    assert (got["psnr_min"], got["ssim_min"]) == expected
    assert cal.PSNR_BOUNDS[0] <= got["psnr_min"] <= cal.PSNR_BOUNDS[1]
    assert cal.SSIM_BOUNDS[0] <= got["ssim_min"] <= cal.SSIM_BOUNDS[1]


def test_floor_reads_inf_strings_and_skips_mismatches():
    comps = [{"psnr_min": "inf", "ssim_min": 1.0}, {"psnr_min": 38.2, "ssim_min": 0.97},
             {"psnr_min": None, "ssim_min": None, "mismatch": "golden has 9 frames, render 5"}]
    assert cal.floor_of(comps) == {"psnr_min": 38.2, "ssim_min": 0.97}
    assert cal.floor_of([{"psnr_min": "inf", "ssim_min": 1.0}])["psnr_min"] == math.inf
    assert cal.other_thread_count(2) == 1 and cal.other_thread_count(1) == 2 and cal.other_thread_count(16) == 8


# --------------------------------------------------------------------------- orchestration with fake renders


def _frames(seed: int = 0) -> np.ndarray:
    y, x = np.mgrid[0:32, 0:48]
    return np.stack([np.stack([(x * 5 + i * 9 + seed) % 256, (y * 7) % 256, (x + y) % 256], -1) for i in range(5)]
                    ).astype(np.uint8)


def _fake_targets(tmp_path: Path, n: int = 2, unreproducible: int = 0):
    from harness.media import write_like_aitk

    from harness.spec import PreviewJob, PreviewTarget, SampleSpec

    targets = []
    for i in range(n + unreproducible):
        golden = write_like_aitk(tmp_path / f"g{i}.webp", _frames(), 16)
        sample = SampleSpec(index=i, prompt="p", negative_prompt="", seed=i, width=16, height=16, num_frames=1,
                            guidance_scale=1.0, sample_steps=1, network_multiplier=1.0, fps=16, ctrl_img=None)
        preview = PreviewJob(case="fake", golden=golden, step=0, index=i, sample=sample, lora=None, merged=False,
                             unreproducible="seed -1" if i < unreproducible else None)
        targets.append(PreviewTarget(preview=preview, model_name="fake", config_file=tmp_path / "config.yaml"))
    return targets


class FakeRenders:
    """Stands in for Engine renders: the n-th call's frames come from ``make(n, threads)``."""

    def __init__(self, make):
        self.make, self.calls = make, []

    def __call__(self, options, target, models):
        import torch

        n = len(self.calls)
        self.calls.append((target.key, options.threads, torch.get_num_threads()))
        engine = SimpleNamespace(device_for=lambda t: "cpu")
        return engine, self.make(n, options.threads), SimpleNamespace(name="aitk-euler"), 0.01


def _noisy(frames: np.ndarray, amount: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(frames.astype(np.int16) + rng.integers(-amount, amount + 1, frames.shape), 0, 255).astype(np.uint8)


def test_deterministic_stack_with_threads_drift(tmp_path, monkeypatch):
    # baseline and repeat identical; the perturbed (other thread count) render drifts by ±2 LSB
    fake = FakeRenders(lambda n, threads: _noisy(_frames(), 2, n) if threads == 1 else _frames())
    monkeypatch.setattr(cal, "_render", fake)
    out = io.StringIO()
    rc = cal.calibrate_main(_fake_targets(tmp_path, 2, unreproducible=1), RunOptions(device="cpu", threads=2),
                            tmp_path / "cal", perturb="threads", file=out)
    doc = json.loads((tmp_path / "cal" / "calibration.json").read_text())
    assert rc == 0 and doc["exit_code"] == 0 and doc["deterministic"] is True
    assert [p["key"] for p in doc["previews"]] == ["fake::0::1", "fake::0::2"]  # the unreproducible one is skipped
    assert [c[1] for c in fake.calls] == [2, 2, 1, 2, 2, 1]  # baseline, repeat, perturbed per preview
    floor = doc["floor"]["encoded_psnr_min"]
    assert isinstance(floor, float) and floor < 45
    assert doc["suggested"]["psnr_min"] == max(25.0, min(45.0, math.floor(floor - 3.0)))
    assert doc["suggested"]["require_bit_exact"] is True  # baseline renders equal the goldens
    assert "tolerances: {psnr_min:" in doc["case_tolerances"]
    assert "fake::0::1" in out.getvalue() and "suggested" in out.getvalue()


def test_nondeterministic_stack_exits_1(tmp_path, monkeypatch):
    fake = FakeRenders(lambda n, threads: _frames() if n % 3 == 0 else _noisy(_frames(), 1, n))
    monkeypatch.setattr(cal, "_render", fake)
    rc = cal.calibrate_main(_fake_targets(tmp_path, 1), RunOptions(device="cpu"), tmp_path / "cal", perturb=None,
                            file=io.StringIO())
    doc = json.loads((tmp_path / "cal" / "calibration.json").read_text())
    assert rc == 1 and doc["deterministic"] is False and doc["previews"][0]["repeat"]["bit_exact"] is False
    assert doc["suggested"]["require_bit_exact"] is False and doc["previews"][0]["perturbed"] is None
    assert any("nondeterministic" in n for n in doc["notes"]) and any("no perturbation" in n for n in doc["notes"])


def test_a_preview_that_cannot_render_exits_2_and_the_rest_is_kept(tmp_path, monkeypatch):
    def make(n, threads):
        if n == 0:
            raise HarnessError("cases/x.yaml", "ctrl_img", "file not found")
        return _frames()

    monkeypatch.setattr(cal, "_render", FakeRenders(make))
    rc = cal.calibrate_main(_fake_targets(tmp_path, 2), RunOptions(device="cpu"), tmp_path / "cal", file=io.StringIO())
    doc = json.loads((tmp_path / "cal" / "calibration.json").read_text())
    assert rc == 2 and "file not found" in doc["previews"][0]["error"] and doc["previews"][1]["error"] is None


def test_attention_perturbation_restricts_sdpa_to_math_only_for_the_perturbed_render(tmp_path, monkeypatch):
    import torch

    flags = []

    def make(n, threads):
        flags.append((torch.backends.cuda.flash_sdp_enabled(), torch.backends.cuda.math_sdp_enabled()))
        return _frames()

    monkeypatch.setattr(cal, "_render", FakeRenders(make))
    targets = _fake_targets(tmp_path, 1)
    targets[0].preview = replace(targets[0].preview, golden=None)  # a render-only request: no golden to compare with, still calibrated
    rc = cal.calibrate_main(targets, RunOptions(device="cpu"), tmp_path / "cal", perturb="attention", file=io.StringIO())
    doc = json.loads((tmp_path / "cal" / "calibration.json").read_text())
    assert flags == [(True, True), (True, True), (False, True)]
    assert torch.backends.cuda.flash_sdp_enabled()  # restored afterwards
    (p,) = doc["previews"]
    assert rc == 0 and p["perturbed"]["kind"] == "attention" and "MATH" in p["perturbed"]["detail"]
    assert p["golden"] is None and "no golden" in p["golden_view"]["error"]
    assert any("changed no pixel" in n for n in doc["notes"])  # identical frames: the cap, and it says why
    assert doc["suggested"]["psnr_min"] == 45.0 and doc["suggested"]["require_bit_exact"] is False


def test_bad_arguments(tmp_path):
    with pytest.raises(HarnessError, match="--perturb"):
        cal.calibrate([], RunOptions(device="cpu"), perturb="gpu-clock")
    with pytest.raises(HarnessError, match="no reproducible preview"):
        cal.calibrate(_fake_targets(tmp_path, 0, unreproducible=2), RunOptions(device="cpu"))


# --------------------------------------------------------------------------- the real thing, tiny model


def test_calibrate_tiny_model_threads(tmp_path):
    """One preview of the demo job on the tiny model, rendered three times for real (<90 s on 2 cores)."""
    from harness.demo import DEMO_ROOT, prepare
    from harness.paths import PathMap
    from harness.targets import collect

    started = time.perf_counter()
    output = prepare(tmp_path / "work")
    path_map = PathMap([f"{DEMO_ROOT}={tmp_path / 'work'}"])
    targets = collect(output, path_map)
    assert len(targets) >= 2
    out = io.StringIO()
    rc = cal.calibrate_main(targets, RunOptions(path_map=path_map, device="cpu", threads=2), tmp_path / "cal",
                            perturb="threads", max_previews=1, file=out)
    doc = json.loads((tmp_path / "cal" / "calibration.json").read_text())
    assert rc == 0 and doc["schema"] == cal.SCHEMA and doc["perturb"] == "threads"
    assert doc["deterministic"] is True  # the harness renders bit-identically twice on one CPU stack
    (p,) = doc["previews"]
    assert p["key"] == targets[0].key and p["error"] is None and p["threads"] == 2
    assert p["perturbed"]["kind"] == "threads" and p["perturbed"]["threads"] == 1
    for view in ("raw", "encoded"):
        for part in ("repeat", "perturbed"):
            c = p[part][view]
            assert c["mismatch"] is None and len(c["psnr"]) == 9 and c["psnr_min"] is not None
    assert set(p["seconds"]) == {"baseline", "repeat", "perturbed"}
    s = doc["suggested"]
    assert 25.0 <= s["psnr_min"] <= 45.0 and 0.80 <= s["ssim_min"] <= 0.99
    assert isinstance(s["require_bit_exact"], bool)
    assert doc["floor"]["measured_by"] == "repeat+threads" and doc["environment"]["device"] == "cpu"
    assert "suggested" in out.getvalue()
    print(f"calibrate on the tiny model: {time.perf_counter() - started:.1f} s")
