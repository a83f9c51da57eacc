"""Read previews and encode frames exactly as ai-toolkit does (§2.3, docs/parity).

ai-toolkit's preview is a *lossy* re-encoding of the frames its pipeline produced, so the
harness needs three things from this module: decode any preview into uint8 RGB frames,
encode our own frames byte-for-byte like ai-toolkit (same Pillow call, same defaults), and
record the codec versions, because the same call with another libwebp gives other bytes.

Every problem with a file on disk is a :class:`~harness.errors.HarnessError` naming the
file, so a nightly job prints one line instead of a Pillow traceback.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageSequence, UnidentifiedImageError, features

from harness.errors import HarnessError
from harness.fsutil import write_atomic
from harness.limits import check_frame_size

PILLOW_SUFFIXES = {".webp", ".png", ".jpg", ".jpeg", ".gif"}
VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".webm"}
# Errors Pillow raises for truncated or corrupt data (decoder, header parser, short reads).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, UnidentifiedImageError)


@dataclass
class Clip:
    """Decoded frames of one preview.

    ``durations_ms`` has one entry per frame when the container stores timing (WebP, GIF,
    video) and is empty otherwise (JPEG, PNG folders, ``.npy``); ``fps`` is derived from it.
    """

    frames: np.ndarray  # uint8 (F, H, W, 3) RGB
    durations_ms: list[int] = field(default_factory=list)
    fps: float | None = None
    source: str = ""

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])


# --------------------------------------------------------------------------- reading


def read_frames(path: str | os.PathLike) -> Clip:
    """Decode a preview (WebP/JPEG/PNG/GIF, MP4, folder of PNGs, or ``.npy``) to uint8 RGB frames."""
    p = Path(path)
    if not p.exists():
        raise HarnessError(p, None, "file not found")
    if p.is_dir():
        return _read_png_folder(p)
    suffix = p.suffix.lower()
    if suffix in PILLOW_SUFFIXES:
        with open(p, "rb") as fh:
            return _decode_pillow(fh, str(p))
    if suffix == ".npy":
        return _read_npy(p)
    if suffix in VIDEO_SUFFIXES:
        return _read_video(p)
    known = ", ".join(sorted(PILLOW_SUFFIXES | VIDEO_SUFFIXES | {".npy"}))
    raise HarnessError(p, "extension", f"unknown media type {suffix or '(none)'!r}; expected one of {known} or a folder of PNGs")


def _decode_pillow(fp, source: str) -> Clip:
    """Every frame via ImageSequence: animated WebP keeps per-frame timing only after load()."""
    try:
        with Image.open(fp) as im:
            check_frame_size(im.width, im.height, source, frames=getattr(im, "n_frames", 1))
            frames, durations = [], []
            for frame in ImageSequence.Iterator(im):
                frame.load()  # WebP fills info["duration"] while decoding the frame
                frames.append(np.asarray(frame.convert("RGB")))
                if "duration" in frame.info:
                    durations.append(int(frame.info["duration"]))
    except Image.DecompressionBombError as exc:
        raise HarnessError(source, "size", f"too large to decode ({exc})") from None
    except _DECODE_ERRORS as exc:
        raise HarnessError(source, None, f"cannot decode image (truncated or corrupt?): {exc}") from None
    _check_same_size(frames, source)
    durations = durations if len(durations) == len(frames) and len(frames) > 1 else []
    return Clip(np.stack(frames), durations, _fps_from_durations(durations), source)


def _fps_from_durations(durations: list[int]) -> float | None:
    """Playback rate the file encodes (62 ms → 16.13 fps, not ai-toolkit's nominal 16)."""
    if not durations or sum(durations) <= 0:
        return None
    return 1000.0 * len(durations) / sum(durations)


def _check_same_size(frames: list[np.ndarray], source: str) -> None:
    if not frames:
        raise HarnessError(source, None, "contains no frames")
    first = frames[0].shape
    for i, f in enumerate(frames):
        if f.shape != first:
            raise HarnessError(source, f"frame {i}", f"is {f.shape[1]}x{f.shape[0]}, frame 0 is {first[1]}x{first[0]}")


def _natural_key(name: str) -> list:
    """Sort frame_2 before frame_10, so unpadded exports keep their order."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _read_png_folder(folder: Path) -> Clip:
    files = sorted((f for f in folder.iterdir() if f.suffix.lower() == ".png"), key=lambda f: _natural_key(f.name))
    if not files:
        raise HarnessError(folder, None, "folder contains no .png frames")
    frames = []
    for f in files:
        clip = read_frames(f)
        frames.extend(clip.frames)
    _check_same_size(frames, str(folder))
    return Clip(np.stack(frames), [], None, str(folder))


def _read_npy(path: Path) -> Clip:
    try:
        header = np.load(path, mmap_mode="r", allow_pickle=False)  # the shape, before reading a byte of data
        if header.ndim in (3, 4):
            frames = header.shape[0] if header.ndim == 4 else 1
            check_frame_size(header.shape[-2], header.shape[-3], path, frames=frames)
        arr = np.array(header)
    except (OSError, ValueError, EOFError) as exc:
        raise HarnessError(path, None, f"cannot read .npy (truncated or corrupt?): {exc}") from None
    if arr.ndim == 3:
        arr = arr[None]
    _check_frames(arr, path)
    return Clip(arr, [], None, str(path))


def _read_video(path: Path) -> Clip:
    """MP4 and friends through imageio's ffmpeg plugin, imported lazily (heavy, optional)."""
    try:
        import imageio.v3 as iio
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise HarnessError(path, None, f"reading video needs imageio and imageio-ffmpeg: {exc}") from None
    try:
        frames = iio.imread(path, plugin="FFMPEG", index=None)
        meta = iio.immeta(path, plugin="FFMPEG", exclude_applied=False)
    except Exception as exc:  # imageio wraps ffmpeg failures in several types
        raise HarnessError(path, None, f"cannot decode video (truncated or corrupt?): {exc}") from None
    frames = np.ascontiguousarray(frames[..., :3]).astype(np.uint8, copy=False)
    fps = meta.get("fps")
    fps = float(fps) if fps else None
    durations = [int(round(1000.0 / fps))] * len(frames) if fps else []
    return Clip(frames, durations, fps, str(path))


# --------------------------------------------------------------------------- writing


def _check_frames(frames, where) -> np.ndarray:
    """Frames must be what ai-toolkit hands to Pillow: uint8 RGB, (F, H, W, 3)."""
    arr = np.asarray(frames)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3 or arr.shape[0] < 1:
        raise HarnessError(where, "frames", f"expected uint8 array (F, H, W, 3), got {arr.dtype} {arr.shape}")
    return arr


def _pillow_format(ext: str) -> str:
    fmt = Image.registered_extensions().get("." + ext.lower().lstrip("."))
    if fmt is None:
        raise HarnessError(None, "ext", f"Pillow cannot write {ext!r}")
    return fmt


def encode_like_aitk(frames, fps: int | float, ext: str = "jpg") -> bytes:
    """Bytes of ai-toolkit's ``save_image``: animated WebP q80 for F>1, else ``ext`` with Pillow defaults.

    ``ext`` only matters for one frame (ai-toolkit's ``sample.ext``, default ``jpg`` → JPEG q75 4:2:0);
    frame lists always become WebP, whatever the config says.
    """
    arr = _check_frames(frames, None)
    images = [Image.fromarray(f) for f in arr]
    buf = io.BytesIO()
    if len(images) > 1:
        images[0].save(buf, format="WEBP", append_images=images[1:], save_all=True,
                       duration=1000 // fps, loop=0, quality=80)
    else:
        images[0].save(buf, format=_pillow_format(ext))
    return buf.getvalue()


def write_like_aitk(path: str | os.PathLike, frames, fps: int | float) -> Path:
    """Write a preview as ai-toolkit would; the path's extension picks the single-frame format."""
    p = Path(path)
    arr = _check_frames(frames, p)
    if len(arr) > 1 and p.suffix.lower() != ".webp":
        raise HarnessError(p, "extension", f"{len(arr)} frames are always saved as .webp by ai-toolkit, not {p.suffix!r}")
    data = encode_like_aitk(arr, fps, ext=p.suffix or "jpg")
    write_atomic(p, lambda fh: fh.write(data))
    return p


def write_mp4(path: str | os.PathLike, frames, fps: int | float) -> Path:
    """An H.264 MP4 beside the preview (ai-toolkit writes none; players and web pages want one). Lossy and not part of
    any comparison; written to a temp file and renamed, like every output."""
    import tempfile

    import imageio_ffmpeg

    p = Path(path)
    arr = _check_frames(frames, p)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".mp4")
    os.close(fd)
    os.chmod(tmp, 0o644)  # as write_atomic: outputs are meant to be shared
    try:
        writer = imageio_ffmpeg.write_frames(tmp, (arr.shape[2], arr.shape[1]), fps=fps, codec="libx264",
                                             pix_fmt_out="yuv420p", macro_block_size=16, output_params=["-y"])
        writer.send(None)
        for frame in arr:
            writer.send(np.ascontiguousarray(frame))
        writer.close()
        os.replace(tmp, p)
    except (OSError, RuntimeError) as exc:
        raise HarnessError(p, None, f"MP4 encoding failed ({exc})") from None
    finally:
        Path(tmp).unlink(missing_ok=True)
    return p


def reencode_roundtrip(frames, fps: int | float = 16, ext: str = "jpg") -> np.ndarray:
    """Our frames as they would look after ai-toolkit's lossy save: the 'encoded' comparison view."""
    return _decode_pillow(io.BytesIO(encode_like_aitk(frames, fps, ext)), "<re-encoded frames>").frames


def save_npy_atomic(path: str | os.PathLike, frames) -> Path:
    """Lossless frames for later comparisons; atomic so an interrupted job never leaves half a file."""
    p = Path(path)
    arr = _check_frames(frames, p)
    write_atomic(p, lambda fh: np.save(fh, arr, allow_pickle=False))
    return p


# --------------------------------------------------------------------------- environment


def codec_info() -> dict[str, str | None]:
    """Versions that decide the encoded bytes; goldens are only byte-comparable when these match."""
    return {
        "pillow": Image.__version__,
        "libwebp": features.version("webp"),
        "libjpeg": features.version("jpg"),
    }


# --------------------------------------------------------------------------- golden sanity


def check_preview_golden(clip: Clip, preview, config_file=None) -> None:
    """An ai-toolkit preview has the sample's snapped frame count and size and plays at ``1000 // fps`` ms a frame.

    Anything else means the golden is not the preview this config rendered (a still image, another job's file, a
    re-encode), so it is reported before minutes of rendering rather than as drift afterwards. Only previews found
    in an ai-toolkit output folder are checked (``preview.extra['round']``); other sources have their own rules.
    """
    if not preview.extra.get("round"):
        return
    s = preview.sample
    where = f"sample {s.index} of {config_file}" if config_file else f"sample {s.index}"
    hint = "the config does not belong to this preview (wrong config.yaml, or the file was replaced)"
    frames, height, width = clip.frames.shape[0], clip.frames.shape[1], clip.frames.shape[2]
    if frames != s.num_frames:
        still = " (not animated)" if frames == 1 else ""
        raise HarnessError(clip.source or preview.golden, "frames",
                           f"has {frames} frame(s){still} but {where} renders {s.num_frames} (num_frames "
                           f"{s.num_frames_requested} snapped to 4k+1); {hint}")
    if (width, height) != (s.width, s.height):
        raise HarnessError(clip.source or preview.golden, "size",
                           f"is {width}x{height} but {where} renders {s.width}x{s.height} (requested "
                           f"{s.width_requested}x{s.height_requested}, snapped to /16); {hint}")
    if clip.durations_ms and s.fps:
        expected = 1000 // s.fps
        odd = sorted({d for d in clip.durations_ms if d != expected})
        if odd:
            raise HarnessError(clip.source or preview.golden, "fps",
                               f"frames last {', '.join(map(str, odd))} ms but ai-toolkit writes {expected} ms for "
                               f"fps {s.fps} ({where}); {hint}")
