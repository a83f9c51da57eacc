"""The pictures beside a report: frame strips, worst-frame stills, difference heat-maps and metric curves.

They are PNG files under ``<out>/report_assets/<run-id>/`` (or inline ``data:`` URIs with ``inline=True``), all
written here, so the page loads nothing from the network. Each report run writes a fresh folder and removes the
older ones only after its page is in place: a reader never sees a page whose pictures are gone.
"""

from __future__ import annotations

import base64
import datetime as _dt
import re
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import HarnessError
from ..fsutil import write_atomic
from ..result import PreviewResult
from . import plots

ASSETS_DIR = "report_assets"
_RUN_DIR = re.compile(r"^r\d{8}T\d{6}-[0-9a-f]{8}$")
DIFF_LABEL = f"|Δ| ×{plots.DIFF_GAIN}"


@dataclass
class Picture:
    src: str
    width: int
    height: int
    alt: str


class Assets:
    """Writes PNGs for one report run into a fresh folder (or returns data: URIs when inline)."""

    def __init__(self, out_dir: Path, inline: bool):
        self.out_dir = out_dir
        self.inline = inline
        self.run_id = _dt.datetime.now().strftime("r%Y%m%dT%H%M%S") + "-" + secrets.token_hex(4)
        self.folder = out_dir / ASSETS_DIR / self.run_id
        self.count = 0

    def add(self, name: str, image: np.ndarray | None = None, data: bytes | None = None, alt: str = "") -> Picture:
        if data is None:
            data = plots.png_bytes(image)
        if image is not None:
            height, width = image.shape[:2]
        else:
            width, height = _png_size(data)
        self.count += 1
        if self.inline:
            src = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        else:
            write_atomic(self.folder / name, lambda handle: handle.write(data))
            src = f"{ASSETS_DIR}/{self.run_id}/{name}"
        return Picture(src, int(width), int(height), alt)

    def discard(self) -> None:
        if self.folder.is_dir():
            shutil.rmtree(self.folder, ignore_errors=True)

    def prune_older(self) -> None:
        """After the new page is in place: remove asset folders of earlier runs (only ours, by name)."""
        root = self.out_dir / ASSETS_DIR
        if not root.is_dir():
            return
        for child in root.iterdir():
            if child.is_dir() and _RUN_DIR.match(child.name) and child.name != self.run_id:
                shutil.rmtree(child, ignore_errors=True)
        if not any(root.iterdir()):
            root.rmdir()


def _png_size(data: bytes) -> tuple[int, int]:
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return im.size


# --------------------------------------------------------------------------- frames


def resolve_path(path, search_dirs) -> Path | None:
    """A recorded path as a readable file: absolute as is, relative tried against cwd then ``search_dirs``."""
    if not path:
        return None
    p = Path(path)
    if p.is_absolute() or p.exists():
        return p
    for base in search_dirs:
        candidate = Path(base) / p
        if candidate.exists():
            return candidate
    return p


def read_clip(path, label: str, search_dirs, problems: list[str]) -> np.ndarray | None:
    """The frames of a recorded file, or None with the reason added to ``problems`` (a report never stops here)."""
    from ..media import read_frames

    resolved = resolve_path(path, search_dirs)
    if resolved is None:
        return None
    try:
        return read_frames(resolved).frames
    except HarnessError as exc:
        problems.append(f"{label}: {exc.line()}")
    except Exception as exc:  # a report must keep going whatever one file holds
        problems.append(f"{label}: {resolved}: cannot read ({type(exc).__name__}: {exc})")
    return None


def load_render(result: PreviewResult, search_dirs, problems: list[str]) -> tuple[np.ndarray | None, str | None]:
    """Render frames: the re-encoded preview (``render_path``, the encoded view) or else the lossless ``.npy``."""
    for path, what in ((result.render_path, "render (re-encoded like ai-toolkit)"),
                       (result.frames_path, "render (lossless .npy)")):
        if path:
            frames = read_clip(path, what, search_dirs, problems)
            if frames is not None:
                return frames, what
    if not result.render_path and not result.frames_path:
        problems.append("render: no render file was recorded for this preview (run with --out to keep renders)")
    return None, None


# --------------------------------------------------------------------------- one preview's pictures


@dataclass
class PreviewPictures:
    """The pictures of one preview section, filled in place: a failure part-way keeps what was drawn."""

    render_label: str | None = None
    strips: list[tuple[str, Picture]] = field(default_factory=list)
    worst: list[tuple[str, Picture]] = field(default_factory=list)
    worst_index: int | None = None
    curves: Picture | None = None


@dataclass
class _Clips:
    """Golden and render frames of one preview (either may be missing) and the frame to highlight."""

    golden: np.ndarray | None
    render: np.ndarray | None
    worst: int | None = None

    @property
    def comparable(self) -> bool:
        """Both clips present with one shape: only then is there a difference image."""
        return self.golden is not None and self.render is not None and self.golden.shape == self.render.shape

    @property
    def present(self) -> list[np.ndarray]:
        return [c for c in (self.golden, self.render) if c is not None]


def draw_preview(pics: PreviewPictures, result: PreviewResult, index: int, key: str, assets: Assets, search_dirs,
                 problems: list[str]) -> None:
    """Strips of every frame, the worst frame large, and the per-frame curves of one result, into ``pics``."""
    clips = _load_clips(pics, result, search_dirs, problems)
    if not clips.present:
        return
    prefix = f"p{index:04d}"
    _draw_strips(pics, clips, assets, prefix, key)
    _draw_worst(pics, clips, assets, prefix, key)
    curves = plots.metric_curves(_metric_series(result), result.thresholds, pics.worst_index)
    if curves is not None:
        pics.curves = assets.add(f"{prefix}-curves.png", data=curves, alt=f"per-frame PSNR and SSIM of {key}")


def _load_clips(pics: PreviewPictures, result: PreviewResult, search_dirs, problems: list[str]) -> _Clips:
    golden = read_clip(result.golden, "golden", search_dirs, problems) if result.golden else None
    if not result.golden:
        problems.append("golden: no golden path recorded")
    render, pics.render_label = load_render(result, search_dirs, problems)
    clips = _Clips(golden, render)
    if golden is not None and render is not None and not clips.comparable:
        problems.append(f"golden frames {tuple(golden.shape)} and render frames {tuple(render.shape)} differ in shape: "
                        "no difference image")
    worst = result.worst_frame
    clips.worst = worst if isinstance(worst, int) else None
    if clips.worst is None and clips.comparable:
        clips.worst = plots.worst_by_mean_error(golden, render)
    return clips


def _draw_strips(pics: PreviewPictures, clips: _Clips, assets: Assets, prefix: str, key: str) -> None:
    ref = clips.present[0]
    height = plots.thumb_height(ref.shape[1], ref.shape[2], ref.shape[0])
    rows = []
    if clips.golden is not None:
        rows.append(("golden", "golden", clips.golden, "golden frames"))
    if clips.render is not None:
        rows.append((pics.render_label or "render", "render", clips.render, "render frames"))
    if clips.comparable:  # a generator: a long clip's difference images never exist all at once
        rows.append((DIFF_LABEL, "diff", plots.diff_frames(clips.golden, clips.render, height), "difference heatmap"))
    for label, kind, frames, what in rows:
        picture = assets.add(f"{prefix}-strip-{kind}.png", plots.strip(frames, height, clips.worst), alt=f"{what} of {key}")
        pics.strips.append((label, picture))


def _draw_worst(pics: PreviewPictures, clips: _Clips, assets: Assets, prefix: str, key: str) -> None:
    worst = clips.worst
    if worst is None or not 0 <= worst < min(len(c) for c in clips.present):
        return
    pics.worst_index = worst
    ref = clips.present[0]
    height = plots.large_height(ref.shape[1], ref.shape[2])
    panels = [("golden", "golden", clips.golden[worst] if clips.golden is not None else None),
              ("render", "render", clips.render[worst] if clips.render is not None else None)]
    if clips.comparable:
        panels.append((DIFF_LABEL, "diff", plots.diff_heatmap(clips.golden[worst], clips.render[worst])))
    for label, kind, frame in panels:
        if frame is not None:
            pics.worst.append((label, assets.add(f"{prefix}-worst-{kind}.png", plots.resize(frame, height),
                                                 alt=f"{label} frame {worst} of {key}")))


def _metric_series(result: PreviewResult) -> dict[str, tuple[list, list]]:
    """Per-frame PSNR/SSIM by view: the encoded view's, and the lossless one's when it was compared."""
    views = (("encoded", result.encoded), ("lossless", result.raw_golden))
    return {label: (c.psnr or [], c.ssim or []) for label, c in views if c is not None and (c.psnr or c.ssim)}
