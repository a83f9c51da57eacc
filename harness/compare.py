"""One comparison of a render with its golden, used by run, diagnose, calibrate and selfcheck.

Three views (:data:`VIEWS`): ``encoded`` (the render re-encoded like ai-toolkit vs the golden file: the view the verdict
judges, because the golden went through that codec), ``raw`` (the lossless render vs the golden file) and, when the
output folder kept the lossless frames, ``raw_golden`` (lossless vs lossless: true exactness).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import HarnessError
from .metrics import ENCODED_VIEW, Comparison, Thresholds, compare_clips, verdict

VIEWS = ("encoded", "raw", "raw_golden")


@dataclass(frozen=True)
class Golden:
    """What a render is compared with: the golden's decoded frames, its lossless frames if kept, and its codec."""

    frames: np.ndarray
    raw: np.ndarray | None
    fps: int
    ext: str

    @classmethod
    def from_render(cls, frames: np.ndarray, fps: int, ext: str) -> "Golden":
        """Another render as the reference (calibrate, selfcheck): encoded like ai-toolkit, with its lossless frames."""
        from .media import reencode_roundtrip

        return cls(reencode_roundtrip(frames, fps=fps, ext=ext), frames, fps, ext)


def read_golden(target) -> Golden:
    """The target's golden, checked against the sample before anything renders (HarnessError names the file)."""
    from .media import check_preview_golden, read_frames

    preview = target.preview
    if preview.golden is None:
        raise HarnessError(target.config_file, f"prompts[{preview.index}].golden", "no golden file to compare with; add "
                           "the service's output as `golden:` (render-only requests cannot be compared)")
    clip = read_frames(preview.golden)
    check_preview_golden(clip, preview, target.config_file)
    raw = read_frames(preview.golden_raw).frames if preview.golden_raw else None
    return Golden(clip.frames, raw, preview.sample.fps, preview.golden_ext)


@dataclass(frozen=True)
class Verdict:
    """Every view of one render against one golden, and the pass/fail decided on the encoded view."""

    encoded: Comparison
    raw: Comparison
    raw_golden: Comparison | None
    thresholds: Thresholds
    status: str  # "pass" | "fail"

    @property
    def bit_exact(self) -> bool:
        return bool(self.encoded.bit_exact)


def compare_to_golden(frames: np.ndarray, golden: Golden, thresholds: Thresholds | None = None) -> Verdict:
    """The render against its golden in every view; ``thresholds`` should have ``require_bit_exact`` resolved."""
    from .media import reencode_roundtrip

    thresholds = thresholds or ENCODED_VIEW
    encoded = compare_clips(golden.frames, reencode_roundtrip(frames, fps=golden.fps, ext=golden.ext))
    raw = compare_clips(golden.frames, frames)
    raw_golden = compare_clips(golden.raw, frames) if golden.raw is not None else None
    return Verdict(encoded, raw, raw_golden, thresholds, verdict(encoded, thresholds))
