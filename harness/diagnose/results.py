"""A variant's row (its comparison with the golden) and one preview's diagnosis, with their JSON forms."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..numbers import to_json
from .knobs import BASELINE

if TYPE_CHECKING:
    from ..spec import PreviewTarget

FOUND_STATUSES = ("exact", "explained", "likely", "numeric")


@dataclass
class Row:
    variant: str
    family: str
    description: str
    changes: dict
    bit_exact: bool
    psnr_min: float | None
    psnr_mean: float | None
    ssim_min: float | None
    ssim_mean: float | None
    max_abs_diff: int | None
    mismatch: str | None
    seconds: float
    bit_exact_raw: bool | None = None
    same_as: str | None = None
    rank: int = 0
    meaning: str = ""
    digest: str = ""

    def sort_key(self, position: int) -> tuple:
        """Bit-exact first, then encoded PSNR min, mean, SSIM min; ``position`` breaks ties (variant order)."""
        psnr_min = -math.inf if self.psnr_min is None else self.psnr_min
        psnr_mean = -math.inf if self.psnr_mean is None else self.psnr_mean
        ssim_min = -math.inf if self.ssim_min is None else self.ssim_min
        return (not self.bit_exact, -psnr_min, -psnr_mean, -ssim_min, position)

    def to_json(self) -> dict:
        return {"rank": self.rank, "variant": self.variant, "family": self.family, "description": self.description,
                "changes": to_json(self.changes), "bit_exact": self.bit_exact, "psnr_min": to_json(self.psnr_min),
                "psnr_mean": to_json(self.psnr_mean), "ssim_min": to_json(self.ssim_min),
                "ssim_mean": to_json(self.ssim_mean), "max_abs_diff": self.max_abs_diff, "mismatch": self.mismatch,
                "bit_exact_raw": self.bit_exact_raw, "same_as": self.same_as, "seconds": round(self.seconds, 3)}


@dataclass
class Diagnosis:
    key: str
    status: str
    found: bool
    explanation: str
    ranked: list[Row] = field(default_factory=list)
    best: str | None = None
    profile: str | None = None
    profile_settings: dict | None = None
    profile_why: str | None = None
    swept: bool = False
    seconds: float = 0.0
    message: str | None = None
    target: PreviewTarget | None = None

    @property
    def baseline(self) -> Row | None:
        return next((r for r in self.ranked if r.variant == BASELINE.name), None)

    def to_json(self) -> dict:
        p = self.target.preview if self.target is not None else None
        return {
            "key": self.key, "case": p.case if p else None, "golden": str(p.golden) if p else None,
            "step": p.step if p else None, "index": p.index if p else None,
            "status": self.status, "found": self.found, "explanation": self.explanation, "best": self.best,
            "profile": self.profile, "profile_settings": self.profile_settings, "profile_why": self.profile_why,
            "swept": self.swept, "seconds": round(self.seconds, 3), "message": self.message,
            "ranked": [r.to_json() for r in self.ranked],
        }
