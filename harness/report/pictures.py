"""One preview's pictures (frame strips, the worst frame large, per-frame curves, the player and the shareable clip),
and which previews get pictures at all.

Decoding a golden and a render and encoding their pictures is what costs time in a report (about 1.3 s of CPU for
an 832×480×41 preview), so a report over thousands of results draws them for a limited number of previews,
those most in need first: baseline regressions, then failures, lowest PSNR first. Every other section still has its
numbers and settings. A missing or unreadable file is noted in the section; a report never stops here.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..errors import HarnessError
from ..result import PreviewResult
from . import curves as curves_mod
from . import motion, plots
from .assets import Assets, Picture

DIFF_LABEL = f"|Δ| ×{plots.DIFF_GAIN}"
CLIP_DIFF_LABEL = f"|diff| x{plots.DIFF_GAIN}"  # Pillow's built-in font may lack Δ
DEFAULT_LIMIT = 24  # previews with pictures per report (None: every one); 24 real-size previews fit 20 s on 2 cores


@dataclass
class Player:
    """The golden/render/difference player: one sheet per panel, cells laid out as ``layout`` says, at ``fps``."""

    panels: list[tuple[motion.Panel, Picture]]
    layout: motion.Layout
    fps: float


@dataclass
class PreviewPictures:
    """The pictures of one preview section, filled in place: a failure part-way keeps what was drawn."""

    render_label: str | None = None
    strips: list[tuple[str, Picture]] = field(default_factory=list)
    worst: list[tuple[str, Picture]] = field(default_factory=list)
    worst_index: int | None = None
    curves: Picture | None = None
    player: Player | None = None
    clip: Picture | None = None  # golden | render | difference as an animated WebP, to download and share
    skipped: str = ""  # why this preview has no pictures although it could have (the limit)


# --------------------------------------------------------------------------- which previews


def has_media(result: PreviewResult) -> bool:
    """Whether drawing this result could show anything (a checked preview with a golden or render recorded)."""
    return result.status not in ("error", "unreproducible") and bool(
        result.golden or result.render_path or result.frames_path)


def drawing_order(results: list[PreviewResult], urgent=frozenset(), limit: int | None = DEFAULT_LIMIT) -> set[int]:
    """Indices of the results that get pictures: at most ``limit`` (None: all) of those :func:`has_media` accepts.

    Most in need first: ``urgent`` ones (baseline regressions: the night's news), then failures, then passes that
    are not bit-exact, then bit-exact ones; lowest encoded PSNR first within each, then document order.
    """
    def need(i: int) -> tuple:
        r = results[i]
        group = 0 if i in urgent else 1 if r.status == "fail" else 3 if r.bit_exact else 2
        psnr = r.psnr_min
        return group, float("-inf") if psnr is None else psnr, i

    candidates = sorted((i for i, r in enumerate(results) if has_media(r)), key=need)
    return set(candidates if limit is None else candidates[:max(0, int(limit))])


def skipped_note(limit: int) -> str:
    return (f"pictures not drawn: this report draws them for {limit} previews, regressions and failures first "
            "(raise the report's picture limit to see this one)")


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


@dataclass
class _Clips:
    """Golden and render frames of one preview (either may be missing) and the frame to highlight."""

    golden: np.ndarray | None
    render: np.ndarray | None
    worst: int | None = None
    identical: bool = False  # bit-identical frames: the render's pictures are the golden's (drawn once)

    @property
    def comparable(self) -> bool:
        """Both clips present with one shape: only then is there a difference image."""
        return self.golden is not None and self.render is not None and self.golden.shape == self.render.shape

    @property
    def present(self) -> list[np.ndarray]:
        return [c for c in (self.golden, self.render) if c is not None]


# --------------------------------------------------------------------------- one preview's pictures


def draw_preview(pics: PreviewPictures, result: PreviewResult, index: int, key: str, assets: Assets, search_dirs,
                 problems: list[str]) -> None:
    """Strips, the worst frame large, the per-frame curves, the player and the clip of one result, into ``pics``."""
    clips = _load_clips(pics, result, search_dirs, problems)
    lay = motion.layout(clips.golden, clips.render, CLIP_DIFF_LABEL)
    if lay is None:
        return
    thumbs = {"golden": motion.thumbnails(clips.golden, lay, "golden")} if clips.golden is not None else {}
    if clips.render is not None:
        thumbs["render"] = thumbs["golden"] if clips.identical else motion.thumbnails(clips.render, lay, "render")
    prefix = f"p{index:04d}"
    _draw_strips(pics, clips, thumbs, lay.height, assets, prefix, key)
    _draw_worst(pics, clips, assets, prefix, key)
    svg = curves_mod.metric_curves(_metric_series(result), result.thresholds, pics.worst_index)
    if svg is not None:
        pics.curves = assets.add(f"{prefix}-curves.svg", data=svg.encode("utf-8"), size=(curves_mod.WIDTH, curves_mod.HEIGHT),
                                 alt=f"per-frame PSNR and SSIM of {key}")
    _draw_motion(pics, clips, thumbs, lay, result.fps, assets, prefix, key, problems)


def _load_clips(pics: PreviewPictures, result: PreviewResult, search_dirs, problems: list[str]) -> _Clips:
    golden = read_clip(result.golden, "golden", search_dirs, problems) if result.golden else None
    if not result.golden:
        problems.append("golden: no golden path recorded")
    render, pics.render_label = load_render(result, search_dirs, problems)
    clips = _Clips(golden, render)
    clips.identical = clips.comparable and all(np.array_equal(g, r) for g, r in zip(golden, render))
    if golden is not None and render is not None and not clips.comparable:
        problems.append(f"golden frames {tuple(golden.shape)} and render frames {tuple(render.shape)} differ in shape: "
                        "no difference image")
    worst = result.worst_frame
    clips.worst = worst if isinstance(worst, int) else None
    if clips.worst is None and clips.comparable:
        clips.worst = plots.worst_by_mean_error(golden, render)
    return clips


def _draw_strips(pics: PreviewPictures, clips: _Clips, thumbs: dict, panel_height: int, assets: Assets, prefix: str,
                 key: str) -> None:
    ref = clips.present[0]
    height = plots.thumb_height(ref.shape[1], ref.shape[2], ref.shape[0])

    def frames(kind: str, clip: np.ndarray):
        """From the player's thumbnails when they are at least as tall (cheap), else from the full frames."""
        source = thumbs[kind] if height <= panel_height else clip
        return (plots.resize(f, height) for f in source)

    rows = []
    if clips.golden is not None:
        rows.append(("golden", "golden", frames("golden", clips.golden), "golden frames"))
    if clips.render is not None:
        rows.append((pics.render_label or "render", "render", frames("render", clips.render), "render frames"))
    if clips.comparable:  # a generator: a long clip's difference images never exist all at once
        rows.append((DIFF_LABEL, "diff", plots.diff_frames(clips.golden, clips.render, height), "difference heatmap"))
    for label, kind, frames, what in rows:
        if kind == "render" and clips.identical:
            picture = replace(pics.strips[0][1], alt=f"{what} of {key} (identical to the golden's)")
        else:
            picture = assets.add(f"{prefix}-strip-{kind}.png", plots.strip(frames, height, clips.worst),
                                 alt=f"{what} of {key}")
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
        alt = f"{label} frame {worst} of {key}"
        if kind == "render" and clips.identical:
            pics.worst.append((label, replace(pics.worst[0][1], alt=alt + " (identical to the golden's)")))
        elif frame is not None:
            pics.worst.append((label, assets.add(f"{prefix}-worst-{kind}.png", plots.resize(frame, height), alt=alt)))


def _draw_motion(pics: PreviewPictures, clips: _Clips, thumbs: dict, lay: motion.Layout, fps, assets: Assets,
                 prefix: str, key: str, problems: list[str]) -> None:
    """The player's sheets and the shareable clip, from one pass over the composite frames."""
    if not motion.fits(lay):
        problems.append(f"player: {lay.frames} frames of {lay.width}×{lay.height} px do not fit one sheet; no player")
        return
    frames = list(motion.cells(thumbs, clips.golden, clips.render, lay))
    fps = float(fps) if isinstance(fps, (int, float)) and fps > 0 else float(motion.DEFAULT_FPS)
    label = {"golden": "golden", "render": pics.render_label or "render", "diff": DIFF_LABEL}
    sheets = []
    for p in lay.panels:
        alt = f"{label[p.kind]} frames of {key}, one at a time"
        if p.kind == "render" and clips.identical:
            sheets.append((p, replace(sheets[0][1], alt=alt + " (identical to the golden's)")))
        else:
            sheets.append((p, assets.add(f"{prefix}-motion-{p.kind}.jpg", data=motion.sheet_jpeg(frames, lay, p),
                                         size=lay.sheet_size(p), alt=alt)))
    pics.player = Player(sheets, lay, fps)
    pics.clip = assets.add(f"{prefix}-clip.webp", data=motion.clip_webp(frames, lay, fps),
                           size=(lay.width, lay.height + motion.LABEL_H), alt=f"side-by-side clip of {key}")


def _metric_series(result: PreviewResult) -> dict[str, tuple[list, list]]:
    """Per-frame PSNR/SSIM by view: the encoded view's, and the lossless one's when it was compared."""
    views = (("encoded", result.encoded), ("lossless", result.raw_golden))
    return {label: (c.psnr or [], c.ssim or []) for label, c in views if c is not None and (c.psnr or c.ssim)}
