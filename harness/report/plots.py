"""Pictures for the report: frame strips, amplified difference heatmaps, per-frame metric curves.

Everything returns PNG bytes or uint8 arrays; nothing touches pyplot's global state (the figure is
built on an Agg canvas directly), so importing this module never changes a caller's matplotlib backend.
"""

from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:  # annotation only: drawing needs nothing from the comparison code
    from ..metrics import Thresholds

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
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


def thumb_height(frame_h: int, frame_w: int, count: int) -> int:
    """Thumbnail height for a strip of ``count`` frames: ≤160 px, smaller for long clips, enlarged for tiny ones."""
    if frame_h < SMALL_UPSCALE_H:
        return frame_h * max(1, -(-SMALL_UPSCALE_H // max(frame_h, 1)))
    aspect = frame_w / max(frame_h, 1)
    budget = int(STRIP_BUDGET_W / max(count * aspect, 1e-6))
    return max(min(THUMB_MAX_H, frame_h, budget), min(THUMB_MIN_H, frame_h))


def resize(frame: np.ndarray, height: int) -> np.ndarray:
    h, w = frame.shape[:2]
    if h == height:
        return frame
    width = max(1, round(w * height / h))
    upscale = height > h
    if upscale:
        image = Image.fromarray(frame).resize((width, height), Image.Resampling.NEAREST)
    else:
        image = Image.fromarray(frame).resize((width, height), Image.Resampling.LANCZOS, reducing_gap=2.0)
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
    """Shrink a |Δ| map by block maximum first, so a one-pixel difference survives in a thumbnail."""
    k = level.shape[0] // height
    if k >= 2:
        h, w = (level.shape[0] // k) * k, (level.shape[1] // k) * k
        level = level[:h, :w].reshape(h // k, k, w // k, k).max(axis=(1, 3))
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


def metric_curves(series: dict[str, tuple[list, list]], thresholds: Thresholds | None = None,
                  worst: int | None = None) -> bytes | None:
    """Per-frame PSNR and SSIM, one line per view; ∞ PSNR (identical frame) is drawn at a ceiling with ▲.

    ``series``: label → (psnr per frame, ssim per frame) as a :class:`~harness.metrics.Comparison` holds them
    (floats, ``math.inf`` for identical frames, None where a value is missing). Returns None when there is nothing
    to plot.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cleaned = {label: (list(p or []), list(s or [])) for label, (p, s) in series.items() if p or s}
    if not cleaned:
        return None
    finite = [v for p, _ in cleaned.values() for v in p if v is not None and math.isfinite(v)]
    ceiling = max([60.0] + [v + 5.0 for v in finite])
    fig = Figure(figsize=(8.0, 2.5), dpi=100)
    FigureCanvasAgg(fig)
    ax_p, ax_s = fig.subplots(1, 2)
    styles = ["-", "--", ":"]
    for k, (label, (p, s)) in enumerate(cleaned.items()):
        style = styles[k % len(styles)]
        if p:
            x = list(range(len(p)))
            y = [ceiling if (v is not None and math.isinf(v)) else (math.nan if v is None else v) for v in p]
            line, = ax_p.plot(x, y, style, marker="o", markersize=3, label=label)
            inf_x = [i for i, v in enumerate(p) if v is not None and math.isinf(v)]
            if inf_x:
                ax_p.plot(inf_x, [ceiling] * len(inf_x), "^", color=line.get_color(), markersize=6)
        if s:
            x = list(range(len(s)))
            ax_s.plot(x, [math.nan if v is None else v for v in s], style, marker="o", markersize=3, label=label)
    if thresholds is not None:
        ax_p.axhline(thresholds.psnr_min, color="#c0392b", linewidth=1, linestyle=":", label="threshold")
        ax_s.axhline(thresholds.ssim_min, color="#c0392b", linewidth=1, linestyle=":", label="threshold")
    for ax in (ax_p, ax_s):
        if worst is not None:
            ax.axvline(worst, color="#e6b000", linewidth=1, alpha=0.8)
        ax.set_xlabel("frame")
        ax.grid(True, alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    ax_p.set_ylabel("PSNR dB (▲ = ∞)")
    ax_p.set_ylim(min([ceiling - 30.0] + [v - 2.0 for v in finite]), ceiling + 3.0)
    ax_s.set_ylabel("SSIM")
    ssim_vals = [v for _, s in cleaned.values() for v in s if v is not None]
    low = min(ssim_vals + [thresholds.ssim_min if thresholds is not None else 1.0]) if ssim_vals else 0.0
    ax_s.set_ylim(max(-1.0, min(low - 0.02, 0.95)), 1.005)
    ax_s.legend(fontsize=7, loc="best", framealpha=0.8)
    fig.subplots_adjust(left=0.075, right=0.985, bottom=0.19, top=0.95, wspace=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
