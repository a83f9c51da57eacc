"""Media layer: decode every preview kind, and re-encode exactly as ai-toolkit does."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness.errors import HarnessError
from harness.media import (
    codec_info,
    encode_like_aitk,
    read_frames,
    reencode_roundtrip,
    save_npy_atomic,
    write_like_aitk,
)
from harness.metrics import compare_clips

ORACLE = Path(__file__).resolve().parents[1].parent / "shared" / "oracle"
CASE_A = ORACLE / "cases" / "case_a"
needs_oracle = pytest.mark.skipif(not (CASE_A / "manifest.json").exists(),
                                  reason=f"ai-toolkit oracle outputs not found at {CASE_A}")


def _oracle_samples():
    """(manifest entry, webp path, raw npy path) for every case_a preview."""
    if not (CASE_A / "manifest.json").exists():
        return []
    manifest = json.loads((CASE_A / "manifest.json").read_text())
    out = CASE_A / manifest["output_folder"]
    return [pytest.param(s, out / s["file"], out / s["raw_frames"], id=Path(s["file"]).stem) for s in manifest["samples"]]


ORACLE_SAMPLES = _oracle_samples()


def _frames(f=3, h=64, w=64, seed=0) -> np.ndarray:
    """Smooth gradients plus a little noise: compressible like real frames, not a flat colour."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (h + w)], axis=-1)
    clip = [base + 20 * t + rng.normal(0, 3, base.shape) for t in range(f)]
    return np.clip(clip, 0, 255).astype(np.uint8)


# ------------------------------------------------------------------ oracle: the parity claims


@needs_oracle
@pytest.mark.parametrize("sample,webp,raw", ORACLE_SAMPLES)
def test_oracle_webp_decodes_with_manifest_frames_and_timing(sample, webp, raw):
    clip = read_frames(webp)
    assert clip.frames.dtype == np.uint8
    assert clip.frames.ndim == 4 and clip.frames.shape[-1] == 3
    assert clip.num_frames == sample["num_frames_effective"] == 9
    assert clip.frames.shape[1:3] == (sample["height_effective"], sample["width_effective"])
    assert clip.durations_ms == [1000 // sample["fps"]] * 9 == [62] * 9
    assert clip.fps == pytest.approx(1000 / 62)


@needs_oracle
@pytest.mark.parametrize("sample,webp,raw", ORACLE_SAMPLES)
def test_oracle_reencode_of_raw_frames_decodes_to_golden_exactly(sample, webp, raw):
    """The media layer's key claim: ai-toolkit's save call on its own frames gives the golden's pixels."""
    raw_frames = read_frames(raw).frames
    assert hashlib.sha256(raw_frames.tobytes()).hexdigest() == sample["raw_sha256"]  # the frames the manifest names
    golden = read_frames(webp).frames
    encoded = reencode_roundtrip(raw_frames, sample["fps"])
    np.testing.assert_array_equal(encoded, golden)
    assert compare_clips(golden, encoded).bit_exact


@needs_oracle
@pytest.mark.parametrize("sample,webp,raw", ORACLE_SAMPLES)
def test_oracle_reencode_gives_identical_file_bytes(sample, webp, raw):
    """Holds with the oracle's Pillow 12.3.0 / libwebp 1.6.0; other versions may differ byte-wise only."""
    if codec_info()["pillow"] != "12.3.0":
        pytest.skip(f"oracle was encoded with Pillow 12.3.0, this is {codec_info()}")
    data = encode_like_aitk(np.load(raw), sample["fps"])
    assert data == webp.read_bytes()
    assert hashlib.sha256(data).hexdigest() == sample["webp_sha256"]


@needs_oracle
def test_oracle_write_like_aitk_writes_golden_bytes(tmp_path):
    if not ORACLE_SAMPLES or codec_info()["pillow"] != "12.3.0":
        pytest.skip("needs the oracle and Pillow 12.3.0")
    sample, webp, raw = ORACLE_SAMPLES[0].values
    out = write_like_aitk(tmp_path / webp.name, np.load(raw), sample["fps"])
    assert out.read_bytes() == webp.read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == [webp.name]  # no temp file left behind


@needs_oracle
def test_truncated_oracle_webp_is_a_harness_error(tmp_path):
    webp = ORACLE_SAMPLES[0].values[1]
    data = webp.read_bytes()
    for keep in (10, 100, len(data) // 2, len(data) - 10):
        cut = tmp_path / f"cut_{keep}.webp"
        cut.write_bytes(data[:keep])
        with pytest.raises(HarnessError, match=r"cut_\d+\.webp.*truncated or corrupt"):
            read_frames(cut)


# ------------------------------------------------------------------ formats


def test_animated_webp_round_trip_is_lossy_but_close(tmp_path):
    frames = _frames(f=5)
    path = write_like_aitk(tmp_path / "clip.webp", frames, 16)
    clip = read_frames(path)
    assert clip.frames.shape == frames.shape
    assert clip.durations_ms == [62] * 5
    assert compare_clips(frames, clip.frames).psnr_min > 28
    np.testing.assert_array_equal(clip.frames, reencode_roundtrip(frames, 16))


def test_single_frame_is_jpeg_q75_like_pillow_default(tmp_path):
    frame = _frames(f=1)
    path = write_like_aitk(tmp_path / "still.jpg", frame, 16)
    with Image.open(path) as im:
        assert im.format == "JPEG"
    reference = tmp_path / "reference.jpg"
    Image.fromarray(frame[0]).save(reference)  # ai-toolkit: image.save(path), nothing else
    assert path.read_bytes() == reference.read_bytes()
    assert encode_like_aitk(frame, 16) == reference.read_bytes()
    clip = read_frames(path)
    assert clip.frames.shape == (1, 64, 64, 3) and clip.durations_ms == [] and clip.fps is None
    np.testing.assert_array_equal(clip.frames, reencode_roundtrip(frame, 16))


def test_single_frame_png_extension_is_lossless(tmp_path):
    frame = _frames(f=1)
    path = write_like_aitk(tmp_path / "still.png", frame, 16)
    np.testing.assert_array_equal(read_frames(path).frames, frame)


def test_frame_list_with_non_webp_extension_is_refused(tmp_path):
    with pytest.raises(HarnessError, match=r"clip\.jpg: extension: 3 frames"):
        write_like_aitk(tmp_path / "clip.jpg", _frames(f=3), 16)


def test_png_folder_in_natural_name_order(tmp_path):
    frames = _frames(f=12)
    for i, f in enumerate(frames):
        Image.fromarray(f).save(tmp_path / f"frame_{i}.png")  # unpadded: frame_10 after frame_9
    (tmp_path / "notes.txt").write_text("ignored")
    clip = read_frames(tmp_path)
    np.testing.assert_array_equal(clip.frames, frames)
    assert clip.source == str(tmp_path)


def test_png_folder_with_mixed_sizes_names_the_frame(tmp_path):
    Image.fromarray(_frames(f=1)[0]).save(tmp_path / "a.png")
    Image.fromarray(_frames(f=1, w=96)[0]).save(tmp_path / "b.png")
    with pytest.raises(HarnessError, match="frame 1: is 96x64"):
        read_frames(tmp_path)


def test_empty_folder_is_a_harness_error(tmp_path):
    with pytest.raises(HarnessError, match="no .png frames"):
        read_frames(tmp_path)


def test_npy_atomic_round_trip(tmp_path):
    frames = _frames(f=4)
    path = save_npy_atomic(tmp_path / "sub" / "raw.npy", frames)
    np.testing.assert_array_equal(read_frames(path).frames, frames)
    assert sorted(p.name for p in path.parent.iterdir()) == ["raw.npy"]


def test_npy_with_wrong_dtype_is_a_harness_error(tmp_path):
    np.save(tmp_path / "bad.npy", np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(HarnessError, match=r"bad\.npy: frames: expected uint8"):
        read_frames(tmp_path / "bad.npy")


def test_mp4_read_write_round_trip(tmp_path):
    iio = pytest.importorskip("imageio.v3")
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    try:
        imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError as exc:
        pytest.skip(f"no ffmpeg binary: {exc}")
    frames = _frames(f=9, h=64, w=96)
    path = tmp_path / "clip.mp4"
    iio.imwrite(path, frames, plugin="FFMPEG", fps=16, quality=10)
    clip = read_frames(path)
    assert clip.frames.shape == frames.shape and clip.frames.dtype == np.uint8
    assert clip.fps == pytest.approx(16)
    assert clip.durations_ms == [62] * 9
    assert compare_clips(frames, clip.frames).psnr_min > 30  # H.264 yuv420p is lossy


# ------------------------------------------------------------------ errors and environment


def test_missing_file_is_a_harness_error(tmp_path):
    with pytest.raises(HarnessError, match=r"nope\.webp: file not found"):
        read_frames(tmp_path / "nope.webp")


def test_unknown_extension_is_a_harness_error(tmp_path):
    (tmp_path / "clip.xyz").write_bytes(b"x")
    with pytest.raises(HarnessError, match=r"clip\.xyz: extension: unknown media type '\.xyz'"):
        read_frames(tmp_path / "clip.xyz")


def test_garbage_jpeg_is_a_harness_error(tmp_path):
    (tmp_path / "x.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(HarnessError, match="truncated or corrupt"):
        read_frames(tmp_path / "x.jpg")


def test_truncated_synthetic_webp_is_a_harness_error(tmp_path):
    data = encode_like_aitk(_frames(f=3), 16)
    (tmp_path / "cut.webp").write_bytes(data[: len(data) // 2])
    with pytest.raises(HarnessError, match=r"cut\.webp: cannot decode"):
        read_frames(tmp_path / "cut.webp")


def test_bad_frames_for_encoding_are_refused(tmp_path):
    with pytest.raises(HarnessError, match="expected uint8"):
        write_like_aitk(tmp_path / "x.webp", np.zeros((2, 8, 8, 3), np.float32), 16)
    with pytest.raises(HarnessError, match="expected uint8"):
        save_npy_atomic(tmp_path / "x.npy", np.zeros((8, 8, 3), np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_failed_write_leaves_no_temp_file(tmp_path, monkeypatch):
    import harness.media as media

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(media.os, "replace", boom)
    with pytest.raises(RuntimeError):
        write_like_aitk(tmp_path / "x.webp", _frames(f=2), 16)
    assert list(tmp_path.iterdir()) == []


def test_codec_info_reports_versions():
    info = codec_info()
    assert info["pillow"] and info["libwebp"]
    json.dumps(info)
