"""The run's options: what the user chose for every preview of one run (the command line, pytest, a case file)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .paths import PathMap


@dataclass
class RunOptions:
    base_model: str | None = None
    vae: str | None = None
    path_map: PathMap = field(default_factory=PathMap)
    device: str = "auto"
    out: Path | None = None
    save_frames: bool = False
    threads: int | None = None
    profile: str | None = None  # overrides the case's profile
    resume: bool = False
    offload: str = "none"  # none | experts | sequential (identical numerics)
    ara: str | None = None  # local copy of the accuracy recovery adapter a 'uint4|<ara>' job names (--ara PATH)
