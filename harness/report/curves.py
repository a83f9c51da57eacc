"""Per-frame PSNR and SSIM curves as a small SVG image: one line per comparison view, thresholds, the worst frame.

SVG written as text costs about a millisecond where a matplotlib figure cost a fifth of a second per preview, and
stays sharp at any zoom. It is shown through ``<img>``, where SVG runs no script and loads nothing. Every text in it
is a fixed label or a number, escaped all the same.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING
from xml.sax.saxutils import escape

if TYPE_CHECKING:  # annotation only
    from ..metrics import Thresholds

WIDTH, HEIGHT = 800, 250
PANEL_W = WIDTH // 2
MARGIN = {"left": 58, "right": 12, "top": 10, "bottom": 36}
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c")
DASHES = ("", "6 3", "2 3")
THRESHOLD = "#c0392b"
WORST = "#e6b000"
GRID = 'stroke="#d5d8dc" stroke-width="0.6"'
MARKERS_UP_TO = 120  # frames; longer clips get lines only


def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi] (steps of 1, 2 or 5 × 10^k)."""
    span = hi - lo
    if not span > 0 or not math.isfinite(span):
        return [lo]
    raw = span / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + i * step, 10) for i in range(int((hi - first) / step + 1e-9) + 1)]


def _fmt(value: float) -> str:
    return f"{value:.10g}" if abs(value) >= 1 or value == 0 else f"{value:.3g}"


class _Panel:
    """One plot area: maps (frame, value) to pixels and collects its SVG elements."""

    def __init__(self, x0: int, frames: int, lo: float, hi: float, ylabel: str):
        self.x0, self.frames, self.lo, self.hi = x0, frames, lo, hi
        self.left, self.right = x0 + MARGIN["left"], x0 + PANEL_W - MARGIN["right"]
        self.top, self.bottom = MARGIN["top"], HEIGHT - MARGIN["bottom"]
        self.parts: list[str] = []
        self.ylabel = ylabel

    def x(self, frame: float) -> float:
        span = max(self.frames - 1, 1)
        pad = 0.5 if self.frames <= 1 else span * 0.03
        return self.left + (frame + pad) / (span + 2 * pad) * (self.right - self.left)

    def y(self, value: float) -> float:
        return self.bottom - (value - self.lo) / (self.hi - self.lo) * (self.bottom - self.top)

    def axes(self) -> None:
        for tick in _nice_ticks(self.lo, self.hi):
            y = self.y(tick)
            self.parts.append(f'<line x1="{self.left}" y1="{y:.1f}" x2="{self.right}" y2="{y:.1f}" {GRID}/>'
                              f'<text x="{self.left - 4}" y="{y + 4:.1f}" text-anchor="end">{escape(_fmt(tick))}</text>')
        for tick in _nice_ticks(0, max(self.frames - 1, 0), 8):
            if tick == int(tick):
                x = self.x(tick)
                self.parts.append(f'<line x1="{x:.1f}" y1="{self.top}" x2="{x:.1f}" y2="{self.bottom}" {GRID}/>'
                                  f'<text x="{x:.1f}" y="{self.bottom + 14}" text-anchor="middle">{int(tick)}</text>')
        self.parts.append(f'<rect x="{self.left}" y="{self.top}" width="{self.right - self.left}" '
                          f'height="{self.bottom - self.top}" fill="none" stroke="#566573"/>'
                          f'<text x="{(self.left + self.right) / 2:.1f}" y="{HEIGHT - 6}" text-anchor="middle">frame</text>'
                          f'<text transform="translate({self.x0 + 14},{(self.top + self.bottom) / 2:.1f}) rotate(-90)" '
                          f'text-anchor="middle">{escape(self.ylabel)}</text>')

    def hline(self, value: float, colour: str) -> None:
        y = self.y(value)
        self.parts.append(f'<line x1="{self.left}" y1="{y:.1f}" x2="{self.right}" y2="{y:.1f}" stroke="{colour}" '
                          'stroke-dasharray="2 2"/>')

    def vline(self, frame: int, colour: str) -> None:
        x = self.x(frame)
        self.parts.append(f'<line x1="{x:.1f}" y1="{self.top}" x2="{x:.1f}" y2="{self.bottom}" stroke="{colour}" '
                          'stroke-opacity="0.8"/>')

    def series(self, values: list, k: int, ceiling: float | None = None) -> None:
        """One view's values: a line broken where a value is missing; ∞ drawn at ``ceiling`` with ▲."""
        colour, dash = COLOURS[k % len(COLOURS)], DASHES[k % len(DASHES)]
        points, runs, infinite = [], [], []
        for i, v in enumerate(values):
            if v is None or (isinstance(v, float) and math.isnan(v)):
                runs.append(points)
                points = []
                continue
            if math.isinf(v):
                infinite.append(i)
                v = ceiling if ceiling is not None else self.hi
            points.append((self.x(i), self.y(min(max(v, self.lo), self.hi))))
        runs.append(points)
        style = f'stroke="{colour}"' + (f' stroke-dasharray="{dash}"' if dash else "")
        for run in (r for r in runs if r):
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in run)
            self.parts.append(f'<polyline points="{path}" fill="none" stroke-width="1.4" {style}/>')
            if len(values) <= MARKERS_UP_TO:
                self.parts.extend(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.2" fill="{colour}"/>' for x, y in run)
        for i in infinite:
            x, y = self.x(i), self.y(ceiling)
            self.parts.append(f'<path d="M{x:.1f},{y - 5:.1f} L{x + 4:.1f},{y + 2:.1f} L{x - 4:.1f},{y + 2:.1f} Z" '
                              f'fill="{colour}"/>')

    def legend(self, entries: list[tuple[str, str, str]]) -> None:
        y = self.bottom - 8 - 14 * (len(entries) - 1)
        for label, colour, dash in entries:
            style = f'stroke="{colour}"' + (f' stroke-dasharray="{dash}"' if dash else "")
            self.parts.append(f'<line x1="{self.left + 8}" y1="{y - 4}" x2="{self.left + 30}" y2="{y - 4}" {style}/>'
                              f'<text x="{self.left + 34}" y="{y}">{escape(label)}</text>')
            y += 14


def metric_curves(series: dict[str, tuple[list, list]], thresholds: Thresholds | None = None,
                  worst: int | None = None) -> str | None:
    """Per-frame PSNR (left) and SSIM (right), one line per view; ∞ PSNR (identical frame) at a ceiling with ▲.

    ``series``: label → (psnr per frame, ssim per frame) as a :class:`~harness.metrics.Comparison` holds them
    (floats, ``math.inf`` for identical frames, None where a value is missing). Returns the SVG text, or None
    when there is nothing to plot.
    """
    cleaned = {label: (list(p or []), list(s or [])) for label, (p, s) in series.items() if p or s}
    if not cleaned:
        return None
    frames = max(max(len(p), len(s)) for p, s in cleaned.values())
    finite = [v for p, _ in cleaned.values() for v in p if v is not None and math.isfinite(v)]
    ceiling = max([60.0] + [v + 5.0 for v in finite])
    ssim = [v for _, s in cleaned.values() for v in s if v is not None and math.isfinite(v)]
    low = min(ssim + [thresholds.ssim_min if thresholds is not None else 1.0]) if ssim else 0.0
    psnr = _Panel(0, frames, min([ceiling - 30.0] + [v - 2.0 for v in finite]), ceiling + 3.0, "PSNR dB (▲ = ∞)")
    sim = _Panel(PANEL_W, frames, max(-1.0, min(low - 0.02, 0.95)), 1.005, "SSIM")
    for panel in (psnr, sim):
        panel.axes()
    if thresholds is not None:
        psnr.hline(thresholds.psnr_min, THRESHOLD)
        sim.hline(thresholds.ssim_min, THRESHOLD)
    if worst is not None and 0 <= worst < frames:
        psnr.vline(worst, WORST)
        sim.vline(worst, WORST)
    entries = []
    for k, (label, (p, s)) in enumerate(cleaned.items()):
        psnr.series(p, k, ceiling)
        sim.series(s, k)
        entries.append((label, COLOURS[k % len(COLOURS)], DASHES[k % len(DASHES)]))
    if thresholds is not None:
        entries.append(("threshold", THRESHOLD, "2 2"))
    sim.legend(entries)
    body = "".join(psnr.parts + sim.parts)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
            f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="11">'
            f'<rect width="{WIDTH}" height="{HEIGHT}" fill="#fff"/>{body}</svg>')
