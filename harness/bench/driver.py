"""The run: which phases, in which order, on one bundle built on the device."""

from __future__ import annotations

import tempfile
from pathlib import Path

from . import loras, modes, phases, previews
from .report import print_table
from .state import BenchState

OFFLOAD_ORDER = ("experts", "sequential")  # they share the pinned host homes: experts first, then sequential


class Bench(BenchState):
    """One ``wan-parity bench`` run. Order, cheapest insight first so a time budget cuts the tail: exact renders
    (the byte references), fused exact renders, unmerged LoRA, fast, experts then sequential offload, merged LoRA
    (its parked originals reuse the pinned blocks), the disk-load probe, and quantization last (it replaces the bf16
    weights)."""

    # the two steps the load-probe test drives on their own
    def model_shapes(self) -> None:
        phases.model_shapes(self)

    def load_probe(self, tmp: Path) -> dict:
        return previews.load_probe(self, tmp)

    def run(self) -> int:
        phases.header(self)
        phases.model_shapes(self)
        if self.device.type == "meta":
            self.doc["note"] = "meta device: construction and parameter counts only"
            self.report.save()
            return 0
        phases.peak_matmul(self)
        run_modes = [m for m in self.args.modes.split(",") if m]
        offloads = [o for o in self.args.offload.split(",") if o]
        with tempfile.TemporaryDirectory(prefix="wan-bench-") as tmp:
            self.run_resident(run_modes, offloads, Path(tmp))
            phases.exactness_summary(self)
        self.doc["complete"] = True
        self.report.save()
        print_table(self.doc)
        return 0

    def run_resident(self, run_modes: list[str], offloads: list[str], tmp: Path) -> None:
        """One bundle built on the device; every phase uses those very weights."""
        from ..render.text import PromptCache

        bundle = phases.build(self)
        prompts = PromptCache()
        other = [o for o in OFFLOAD_ORDER if o in offloads]
        first = self._exact_renders(bundle, prompts, other) if "exact" in run_modes else None
        if "fused" in run_modes:
            modes.run_fused(self, bundle, prompts)
        lora_s = self._unmerged_lora(bundle, prompts, tmp, run_modes)
        if "fast" in run_modes:
            modes.run_fast(self, bundle, prompts)
        for offload in other:
            modes.run_offload_in_place(self, bundle, offload, prompts)
        if other:
            t0 = self.clock.now()
            bundle.set_offload("none")
            self.report.row("offload switch", self.clock.now() - t0, note=f"back from {other[-1]} to resident")
        if self.lora_paths and not self.over_budget(30.0):
            loras.lora_switch(self, bundle, merged=True)
        if first is not None:
            self._n_previews(tmp, first, lora_s)
        if self.args.quantize and not self.over_budget(30.0):
            modes.run_quantized(self, bundle, prompts)
        del bundle, prompts
        self.release()

    def _exact_renders(self, bundle, prompts, other: list[str]) -> dict | None:
        """The resident exact render of every size (plus, where the offload renders have another length, one of
        theirs, as the bytes they must match); returns the first that succeeded."""
        first = None
        for size in self.fitting(self.sizes, "exact", "none"):
            result = phases.guarded_render(self, bundle, size, "exact", "none", prompts)
            first = first or result
            if result and self.args.synthetic == "tiny" and self.args.preview_steps != result["steps"]:
                phases.measured_preview(self, bundle, size, prompts)
            offload_steps = self.offload_steps()
            if result and other and result["steps"] != offload_steps:
                phases.guarded_render(self, bundle, size, "exact", "none", prompts, steps=offload_steps)
        return first

    def _unmerged_lora(self, bundle, prompts, tmp: Path, run_modes: list[str]) -> float | None:
        """Write the checkpoints, time the unmerged switch (and, with ``--lora-step``, a step with the hooks)."""
        if not self.args.lora_rank or self.over_budget(30.0):
            return None
        loras.write_loras(self, bundle, tmp)
        lora_s = loras.lora_switch(self, bundle, merged=False)
        size = self.sizes[0]
        if self.args.lora_step and "exact" in run_modes and not self.over_budget(self.estimate(size, "exact", "none")):
            loras.lora_step(self, bundle, size, prompts, self.lora_paths["a"], fused_blocks=self.fused_runs())
        return lora_s

    def fused_runs(self) -> bool:
        """Whether ``--modes`` asks for fused renders and the kernels can run on this device."""
        from ..render.kernels import unavailable

        return "fused" in self.args.modes.split(",") and unavailable(self.device) is None

    def _n_previews(self, tmp: Path, first: dict, lora_s: float | None) -> None:
        """A14B: derived from the load probe; tiny: measured end to end."""
        if self.args.synthetic == "a14b" and self.args.load_probe_layers and not self.over_budget(40.0):
            previews.n_previews_derived(self, previews.load_probe(self, tmp), first, lora_s)
        elif self.args.synthetic == "tiny" and self.args.previews:
            previews.n_previews_tiny(self, tmp)
