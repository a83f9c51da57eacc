"""Pixels for the report: frame strips, amplified difference heatmaps, resizing (curves: :mod:`.curves`).

Everything returns PNG bytes or uint8 arrays. matplotlib is used only for its colour map (a lookup table), never
pyplot, so importing this module never changes a caller's matplotlib backend.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

THUMB_MAX_H = 160  # px, cap for one thumbnail in a strip
THUMB_MIN_H = 48  # px, floor when a long clip has to shrink to keep strips light
STRIP_BUDGET_W = 6000  # px, rough cap on a strip's width before thumbnails shrink below THUMB_MAX_H
SMALL_UPSCALE_H = 96  # px, tiny frames (e.g. 64 px test renders) are enlarged by an integer factor up to this
LARGE_MAX_W = 512  # px, cap for the worst-frame panels
LARGE_MIN_H = 192
DIFF_GAIN = 8
GAP = 2

GOLD = (230, 176, 0)  # worst-frame outline in strips


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def thumb_height(frame_h: int, frame_w: int, count: int) -> int:
    """Thumbnail height for a strip of ``count`` frames: ≤160 px, smaller for long clips, enlarged for tiny ones."""
    if frame_h < SMALL_UPSCALE_H:
        return frame_h * max(1, -(-SMALL_UPSCALE_H // max(frame_h, 1)))
    aspect = frame_w / max(frame_h, 1)
    budget = int(STRIP_BUDGET_W / max(count * aspect, 1e-6))
    return max(min(THUMB_MAX_H, frame_h, budget), min(THUMB_MIN_H, frame_h))


def resize(frame: np.ndarray, height: int, width: int | None = None) -> np.ndarray:
    """``frame`` at ``height`` px (aspect kept unless ``width`` is given): NEAREST up (crisp pixels), LANCZOS down."""
    h, w = frame.shape[:2]
    width = max(1, round(w * height / h)) if width is None else width
    if (h, w) == (height, width):
        return frame
    upscale = height > h
    if upscale:
        image = Image.fromarray(frame).resize((width, height), Image.Resampling.NEAREST)
    else:  # box-reduce by the integer part first: 2.4× faster than reducing_gap=2 at thumbnail sizes, as sharp
        image = Image.fromarray(frame).resize((width, height), Image.Resampling.LANCZOS, reducing_gap=1.0)
    return np.asarray(image)


def large_height(frame_h: int, frame_w: int) -> int:
    """Worst-frame panels: at most 512 px wide, tiny frames enlarged by an integer factor."""
    if frame_h < LARGE_MIN_H:
        return frame_h * max(1, LARGE_MIN_H // max(frame_h, 1))
    if frame_w > LARGE_MAX_W:
        return max(1, round(frame_h * LARGE_MAX_W / frame_w))
    return frame_h


def strip(frames, height: int, mark: int | None = None) -> np.ndarray:
    """All frames side by side with a small gap; frame ``mark`` gets a gold outline.

    ``frames`` may be any iterable of (H, W, 3) frames (e.g. a generator), so a long full-size clip's
    difference images never have to exist all at once.
    """
    thumbs = [resize(f, height) for f in frames]
    widths = [t.shape[1] for t in thumbs]
    total = sum(widths) + GAP * (len(thumbs) + 1)
    canvas = np.full((height + 2 * GAP, total, 3), 255, dtype=np.uint8)
    x = GAP
    for i, t in enumerate(thumbs):
        if mark is not None and i == mark:
            canvas[:, x - GAP:x + t.shape[1] + GAP] = GOLD
        canvas[GAP:GAP + height, x:x + t.shape[1]] = t
        x += t.shape[1] + GAP
    return canvas


def diff_level(golden: np.ndarray, render: np.ndarray) -> np.ndarray:
    """|Δ| per pixel, max over RGB, uint8 (computed without widening: max − min of the two values)."""
    d = np.maximum(golden, render) - np.minimum(golden, render)
    return np.maximum(np.maximum(d[..., 0], d[..., 1]), d[..., 2])


def max_pool(level: np.ndarray, height: int) -> np.ndarray:
    """Shrink a |Δ| map by block maximum first, so a one-pixel difference survives in a thumbnail.

    The maximum of the k² strided views: ten times faster than a reshaped ``max(axis=(1, 3))``, same values.
    """
    k = level.shape[0] // height
    if k >= 2:
        h, w = (level.shape[0] // k) * k, (level.shape[1] // k) * k
        level = np.maximum.reduce([level[i:h:k, j:w:k] for i in range(k) for j in range(k)])
    return level


def diff_frames(golden: np.ndarray, render: np.ndarray, height: int | None = None, gain: int = DIFF_GAIN):
    """Heatmaps of a clip pair, one frame at a time (block-max shrunk towards ``height`` first when given)."""
    table = gain_lut(gain)
    for g, r in zip(golden, render):
        level = diff_level(g, r)
        if height is not None:
            level = max_pool(level, height)
        yield table[level]


def worst_by_mean_error(golden: np.ndarray, render: np.ndarray) -> int:
    """Fallback worst frame (largest mean |Δ|) when the results do not name one."""
    errors = [float(np.abs(g.astype(np.int16) - r.astype(np.int16)).mean()) for g, r in zip(golden, render)]
    return int(np.argmax(errors))


def _colormap_lut(name: str = "inferno") -> np.ndarray:
    from matplotlib import colormaps

    lut = colormaps[name](np.linspace(0.0, 1.0, 256))[:, :3]
    return (lut * 255.0 + 0.5).astype(np.uint8)


_LUT: np.ndarray | None = None


def lut() -> np.ndarray:
    global _LUT
    if _LUT is None:
        _LUT = _colormap_lut()
    return _LUT


def gain_lut(gain: int = DIFF_GAIN) -> np.ndarray:
    """256 colours indexed by raw |Δ|: colour-mapped min(|Δ| × gain, 255)."""
    return lut()[np.minimum(np.arange(256) * gain, 255)]


def diff_heatmap(golden: np.ndarray, render: np.ndarray, gain: int = DIFF_GAIN) -> np.ndarray:
    """|Δ| × gain, max over RGB, clipped to 255 and colour-mapped: black = identical, bright = ≥ 255/gain."""
    return gain_lut(gain)[diff_level(golden, render)]


def colorbar(width: int = 256, height: int = 12) -> np.ndarray:
    ramp = np.linspace(0, 255, width).astype(np.uint8)
    return np.repeat(lut()[ramp][None], height, axis=0)
