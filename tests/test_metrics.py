"""Per-frame PSNR/SSIM, mismatch reporting, JSON form and the pass/fail rule."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from harness.metrics import (
    ENCODED_VIEW,
    RAW_VIEW,
    Comparison,
    Thresholds,
    compare_clips,
    psnr,
    ssim_win_size,
    verdict,
)


def _clip(f=4, h=64, w=64, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (f, h, w, 3), dtype=np.uint8)


def test_identical_clips_are_bit_exact_with_infinite_psnr():
    a = _clip()
    c = compare_clips(a, a.copy())
    assert c.mismatch is None and c.bit_exact
    assert c.psnr == [math.inf] * 4 and c.psnr_mean == math.inf and c.psnr_min == math.inf
    assert c.ssim_min == pytest.approx(1.0) and c.ssim_mean == pytest.approx(1.0)
    assert c.max_abs_diff == 0 and c.differing_pixels == 0
    assert verdict(c) == "pass"


def test_one_level_change_in_one_frame_is_finite_and_located():
    a = _clip()
    b = a.copy()
    b[2, 10, 20, 1] = a[2, 10, 20, 1] + 1 if a[2, 10, 20, 1] < 255 else 254
    c = compare_clips(a, b)
    assert not c.bit_exact and c.max_abs_diff == 1 and c.differing_pixels == 1
    assert math.isfinite(c.psnr[2]) and c.psnr[2] == pytest.approx(10 * math.log10(255**2 / (1 / (64 * 64 * 3))))
    assert c.psnr[0] == math.inf and c.psnr_min == c.psnr[2] == c.psnr_mean  # identical frames leave the mean
    assert c.worst_frame == 2
    assert verdict(c) == "pass"


def test_uniform_one_level_shift_is_48_db():
    a = np.full((2, 64, 64, 3), 100, np.uint8)
    c = compare_clips(a, a + 1)
    assert c.psnr_min == pytest.approx(20 * math.log10(255), abs=1e-9)
    assert c.differing_pixels == 2 * 64 * 64


def test_ssim_works_on_64x64_and_smaller_frames():
    for h, w, win in [(64, 64, 7), (64, 96, 7), (6, 64, 5), (3, 3, 3)]:
        a = _clip(f=2, h=h, w=w)
        b = _clip(f=2, h=h, w=w, seed=1)
        assert ssim_win_size(h, w) == win
        c = compare_clips(a, b)
        assert -1 <= c.ssim_min < 0.5  # independent noise is dissimilar
    with pytest.raises(ValueError, match="too small"):
        ssim_win_size(2, 64)


def test_frame_count_mismatch_is_reported_not_raised():
    c = compare_clips(_clip(f=37, h=8, w=8), _clip(f=41, h=8, w=8))
    assert c.mismatch == "golden has 37 frames, render 41: num_frames snapping differs"
    assert c.psnr is None and c.psnr_min is None and c.bit_exact is None
    assert verdict(c) == "fail"


def test_size_mismatch_is_reported_as_width_x_height():
    c = compare_clips(_clip(f=2, h=64, w=64), _clip(f=2, h=64, w=96))
    assert c.mismatch == "golden is 64x64, render 96x64: size snapping differs"
    assert c.ssim_mean is None


def test_both_mismatches_are_reported():
    c = compare_clips(_clip(f=1, h=64, w=64), _clip(f=2, h=64, w=96))
    assert "num_frames snapping" in c.mismatch and "size snapping" in c.mismatch


def test_wrong_dtype_is_a_programming_error():
    with pytest.raises(ValueError, match="render: expected uint8"):
        compare_clips(_clip(f=1), _clip(f=1).astype(np.float32))


def test_to_json_writes_inf_as_string_and_round_trips():
    a = _clip(f=3)
    b = a.copy()
    b[1] ^= 1
    data = compare_clips(a, b).to_json()
    text = json.dumps(data, allow_nan=False)
    back = json.loads(text)
    assert back["psnr"][0] == "inf" and isinstance(back["psnr"][1], float)
    assert back["golden_shape"] == [3, 64, 64, 3] and back["bit_exact"] is False
    assert back["worst_frame"] == 1 and back["mismatch"] is None
    assert json.loads(json.dumps(compare_clips(a, a).to_json(), allow_nan=False))["psnr_min"] == "inf"
    mismatch = compare_clips(a, a[:2]).to_json()
    assert mismatch["psnr"] is None and json.dumps(mismatch, allow_nan=False)


def test_verdict_uses_worst_frame_and_both_metrics():
    base = dict(golden_shape=(2, 64, 64, 3), render_shape=(2, 64, 64, 3), bit_exact=False)
    good = Comparison(**base, psnr_min=35.0, ssim_min=0.95)
    assert verdict(good) == "pass"
    assert verdict(good, RAW_VIEW) == "fail"
    assert verdict(Comparison(**base, psnr_min=29.9, ssim_min=0.99)) == "fail"
    assert verdict(Comparison(**base, psnr_min=45.0, ssim_min=0.89)) == "fail"
    assert verdict(good, Thresholds(psnr_min=30, ssim_min=0.9)) == "pass"
    assert ENCODED_VIEW == Thresholds()


def test_psnr_helper_matches_definition():
    a = np.zeros((4, 4, 3), np.uint8)
    b = np.full((4, 4, 3), 255, np.uint8)
    assert psnr(a, b) == 0.0
    assert psnr(a, a) == math.inf
