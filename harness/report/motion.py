"""Golden | render | difference frame by frame, at one viewing size: the page's player sheet and the shareable clip.

Both come from the same composite frames, so the clip shows what the player shows. The player must reach any frame
at once and show the same index in every panel, so each panel's frames are cells of one JPEG sheet per panel that
the page's script shows one at a time (JPEG encodes ~15× faster than PNG or WebP; these are viewing copies, the
strips and the worst-frame stills stay lossless). The clip is an animated WebP with a label bar naming the panels and the frame,
which also keeps consecutive frames distinct (libwebp merges identical ones, which would change the frame count).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from . import plots

PANEL_MAX_W, PANEL_MAX_H = 320, 240  # px, one panel of the player and the clip
SHEET_MAX = 16383  # px, either side of the sheet (safe for every decoder)
LABEL_H = 16  # px, the clip's label bar
BLANK = 236  # grey of a panel past the end of the shorter clip
JPEG_QUALITY = 90
WEBP_QUALITY = 80
DEFAULT_FPS = 16


@dataclass(frozen=True)
class Panel:
    kind: str  # "golden", "render" or "diff"
    label: str
    x: int  # offset inside a cell
    width: int


@dataclass
class Layout:
    """Composite frames of ``width`` × ``height`` holding ``panels`` side by side; in a panel's sheet, frame ``i``
    is cell ``i`` of ``cols`` per row."""

    frames: int
    width: int
    height: int
    panels: list[Panel]
    cols: int = 1

    @property
    def rows(self) -> int:
        return -(-self.frames // self.cols)

    def cell(self, index: int, panel: Panel) -> tuple[int, int]:
        """Top-left corner of frame ``index`` in ``panel``'s sheet."""
        return (index % self.cols) * panel.width, (index // self.cols) * self.height

    def sheet_size(self, panel: Panel) -> tuple[int, int]:
        return self.cols * panel.width, self.rows * self.height


def panel_height(frame_h: int, frame_w: int) -> int:
    """Panels fit PANEL_MAX_W × PANEL_MAX_H; tiny frames are enlarged by an integer factor like the strips."""
    if frame_h < plots.SMALL_UPSCALE_H:
        return plots.thumb_height(frame_h, frame_w, 1)
    return max(1, round(frame_h * min(1.0, PANEL_MAX_W / max(frame_w, 1), PANEL_MAX_H / max(frame_h, 1))))


def layout(golden: np.ndarray | None, render: np.ndarray | None, diff_label: str) -> Layout | None:
    """The panels of the clips that are present (a difference panel when both have one shape); None without any."""
    clips = [(kind, clip) for kind, clip in (("golden", golden), ("render", render)) if clip is not None]
    if not clips:
        return None
    ref = clips[0][1]
    height = panel_height(ref.shape[1], ref.shape[2])
    panels, x = [], 0
    for kind, clip in clips:
        width = max(1, round(clip.shape[2] * height / clip.shape[1]))
        panels.append(Panel(kind, kind, x, width))
        x += width + plots.GAP
    if golden is not None and render is not None and golden.shape == render.shape:
        panels.append(Panel("diff", diff_label, x, panels[0].width))
        x += panels[0].width + plots.GAP
    frames = max(len(clip) for _, clip in clips)
    widest = max(p.width for p in panels)
    return Layout(frames, x - plots.GAP, height, panels, _columns(frames, widest, height))


def _columns(frames: int, width: int, height: int) -> int:
    """Cells per sheet row: a roughly square sheet, with more columns when a side would pass SHEET_MAX."""
    cols = max(1, min(frames, round(math.sqrt(frames * height / max(width, 1)))))
    while cols < frames and -(-frames // cols) * height > SHEET_MAX:
        cols += 1
    return cols


def fits(lay: Layout) -> bool:
    return all(max(lay.sheet_size(p)) <= SHEET_MAX for p in lay.panels)


def thumbnails(clip: np.ndarray, lay: Layout, kind: str) -> list[np.ndarray]:
    """``clip``'s frames at the size of its panel (the strips are drawn from these too: one resize per frame)."""
    panel = next(p for p in lay.panels if p.kind == kind)
    return [plots.resize(frame, lay.height, panel.width) for frame in clip]


def cells(thumbs: dict[str, list[np.ndarray]], golden: np.ndarray | None, render: np.ndarray | None,
          lay: Layout) -> Iterator[np.ndarray]:
    """The composite frames (one cell each), one at a time; a clip that ended shows a grey panel.

    ``thumbs``: each clip's :func:`thumbnails`; the difference panel comes from the full-size ``golden`` and
    ``render``, block-max shrunk first so a one-pixel difference stays visible.
    """
    diffs = None
    if any(p.kind == "diff" for p in lay.panels):
        diffs = plots.diff_frames(golden, render, lay.height)
    for i in range(lay.frames):
        cell = np.full((lay.height, lay.width, 3), 255, dtype=np.uint8)
        for p in lay.panels:
            if p.kind == "diff":
                pixels = plots.resize(next(diffs), lay.height, p.width)
            elif i < len(thumbs[p.kind]):
                pixels = thumbs[p.kind][i]
            else:
                pixels = BLANK
            cell[:, p.x:p.x + p.width] = pixels
        yield cell


def sheet_jpeg(frames: list[np.ndarray], lay: Layout, panel: Panel) -> bytes:
    """``panel``'s frames in one image, ``lay.cols`` per row (row-major), as JPEG (4:4:4: heat-map colours stay put)."""
    width, height = lay.sheet_size(panel)
    sheet = np.full((height, width, 3), 255, dtype=np.uint8)
    for i, cell in enumerate(frames):
        x, y = lay.cell(i, panel)
        sheet[y:y + lay.height, x:x + panel.width] = cell[:, panel.x:panel.x + panel.width]
    buf = io.BytesIO()
    Image.fromarray(sheet).save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
    return buf.getvalue()


def clip_webp(frames: list[np.ndarray], lay: Layout, fps: float | None) -> bytes:
    """The shareable clip: each cell under a label bar (panel names, ``frame i/N``), timed like ai-toolkit's previews."""
    fps = fps if fps and fps > 0 else DEFAULT_FPS
    font = ImageFont.load_default()
    bar = Image.new("RGB", (lay.width, LABEL_H), "white")
    draw = ImageDraw.Draw(bar)
    for p in lay.panels:
        draw.text((p.x + 2, 2), p.label, fill=(28, 40, 51), font=font)
    images = []
    for i, cell in enumerate(frames):
        image = Image.new("RGB", (lay.width, LABEL_H + lay.height), "white")
        image.paste(bar, (0, 0))
        image.paste(Image.fromarray(cell), (0, LABEL_H))
        draw = ImageDraw.Draw(image)
        counter = f"frame {i}/{lay.frames - 1}"
        draw.text((lay.width - 2 - draw.textlength(counter, font=font), 2), counter, fill=(86, 101, 115), font=font)
        images.append(image)
    buf = io.BytesIO()
    # method 0 and no key frames but the first: the cheapest encoding (a quarter less CPU), same size; every frame kept
    images[0].save(buf, format="WEBP", save_all=True, append_images=images[1:], duration=max(1, int(1000 // fps)),
                   loop=0, quality=WEBP_QUALITY, method=0, kmin=0, kmax=0)
    return buf.getvalue()
