"""What every phase shares: the arguments, the device clock, the results document, and what earlier renders
measured (byte hashes, times, frames), which later phases compare with or budget by."""

from __future__ import annotations

import numpy as np
import torch

from .flops import parse_sizes, size_label, step_bound, transformer_dims
from .models import SyntheticModels
from .report import Recorder
from .samples import short_render_steps
from .timing import Clock, release
from .units import GIB


class BenchState:
    """The shared state of one ``wan-parity bench`` run; the phases are functions of it."""

    def __init__(self, args):
        self.args = args
        self.device = torch.device(args.device)
        self.clock = Clock(self.device)
        self.report = Recorder(args.json, args.markdown)
        self.doc = self.report.doc
        self.rows = self.report.rows
        self.models = SyntheticModels(args.synthetic, self.device, seed=args.seed)
        from ..render.profiles import get_profile

        self.profile = get_profile(args.profile)
        self.sizes = parse_sizes(args.sizes)
        self.fast_sizes = parse_sizes(args.fast_sizes) if args.fast_sizes else self.sizes
        self.hashes: dict[tuple, str] = {}  # (mode, offload, size label, steps) -> sha256 of the frames
        self.render_s: dict[tuple, float] = {}  # same key -> render seconds, for the budget estimates
        self.resident_steps: dict[str, dict] = {}  # size label -> resident step times by expert
        self.frames: dict[tuple, np.ndarray] = {}  # (size label, steps) -> resident exact frames, for fast mode
        self.lora_paths: dict | None = None  # checkpoints a and b, once written
        self.dims = transformer_dims(self.models.configs["transformer"])

    # -- steps ----------------------------------------------------------------------------------------------------
    def short_steps(self) -> int:
        """Steps of a short render: each expert's warm-up step plus ``--steps-timed`` more."""
        return short_render_steps(self.profile, self.args.steps_timed)

    def offload_steps(self) -> int:
        """Steps of the offload renders (default one per expert: each expert's swap-in is what they measure)."""
        return short_render_steps(self.profile, 0) if self.args.offload_steps is None else self.args.offload_steps

    # -- bound and budget -----------------------------------------------------------------------------------------
    def bound(self, size) -> dict:
        """The FLOP bound of a step at ``size`` against the measured peak (and attention, where measured)."""
        attention = self.doc.get("attention", {}).get(size_label(size))
        return step_bound(size, self.dims, self.doc["peak"], attention)

    def over_budget(self, needed_s: float = 0.0) -> bool:
        return self.args.budget_s is not None and self.report.elapsed() + needed_s > self.args.budget_s

    def estimate(self, size, mode: str, offload: str, steps: int | None = None) -> float:
        """Seconds a render phase will take, for the budget check: the resident exact render of that size, plus for
        offload modes the weights it moves at the measured host<->device rate, plus compiling for fast mode;
        --reserve-s before anything is measured."""
        steps = steps or self.short_steps()
        base = self._resident_render_s(size_label(size), steps)
        if base is None:
            return self.args.reserve_s
        return base + self._moving_s(offload, steps) + (self.args.compile_estimate_s if mode == "fast" else 0.0)

    def _resident_render_s(self, label: str, steps: int) -> float | None:
        """The resident exact render of ``label`` at ``steps``, or scaled from one of another length; None if none."""
        base = self.render_s.get(("exact", "none", label, steps))
        if base is not None:
            return base
        measured = [(k[3], v) for k, v in self.render_s.items() if k[:3] == ("exact", "none", label)]
        if not measured:
            return None
        k, v = measured[0]
        return v * steps / k

    def _moving_s(self, offload: str, steps: int) -> float:
        """Seconds an offload render spends moving weights at the measured host<->device rate (2 GB/s until
        measured): experts mode swaps the experts and the text encoder a few times per render, sequential mode
        streams an expert per forward."""
        if offload == "none":
            return 0.0
        stats = self.doc.get("models", {})
        expert = stats.get("transformer", {}).get("gib", 0) * GIB
        text = stats.get("text_encoder", {}).get("gib", 0) * GIB
        rate = self.doc.get("host_device_gbps", 2.0) * 1e9
        forwards = 2 * steps  # CFG
        per_render = 2 * text + 2 * expert if offload == "experts" else 2 * (forwards * expert + 2 * text)
        return per_render / rate

    def fitting(self, sizes, mode: str, offload: str, steps: int | None = None, allowed=None):
        """The sizes whose render still fits the budget, checked as each comes up (time passes while they run); a
        skipped row for each of the others (and for those not in ``allowed``)."""
        for size in sizes:
            excluded = allowed is not None and size not in allowed
            if excluded or self.over_budget(self.estimate(size, mode, offload, steps)):
                self.report.skip("render", mode=mode, offload=offload, size=size_label(size))
                continue
            yield size

    def release(self) -> None:
        """Free the device memory of a bundle the caller has already dropped."""
        release(self.device)
