"""What one preview needs to be rendered again: the output of the importers, the input of the renderer."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .paths import PathMap


@dataclass(frozen=True)
class SampleSpec:
    """Effective settings of one ai-toolkit sample, after defaults, trigger, flags, seeds and snapping.

    ``width``/``height``/``num_frames`` are the *effective* values the pipeline ran with
    (/8 then /16 floor, 4k+1 frames); the ``*_requested`` ones are what the config asked for.
    """

    index: int
    prompt: str
    negative_prompt: str
    seed: int
    width: int
    height: int
    num_frames: int
    guidance_scale: float
    sample_steps: int
    network_multiplier: float
    fps: int
    ctrl_img: str | None
    width_requested: int = 0
    height_requested: int = 0
    num_frames_requested: int = 0
    prompt_config: str = ""
    unreproducible: str | None = None  # reason, when ai-toolkit's inputs cannot be rebuilt


@dataclass(frozen=True)
class LoraPair:
    """The LoRA checkpoint files of one step; a side is None when that expert was not trained.

    ``combined``: both sides are the one file ai-toolkit saves with ``split_multistage_loras: false`` (keys
    ``diffusion_model.transformer_1.*`` for high noise, ``transformer_2.*`` for low noise)."""

    high: Path | None
    low: Path | None
    combined: bool = False


@dataclass(frozen=True)
class MergeRound:
    """An earlier sampling round on ai-toolkit's merged path: its merge-in/merge-out left bf16 residue in the base
    weights every later round of the process rendered on (§8.2)."""

    step: int
    multiplier: float
    lora: LoraPair


@dataclass(frozen=True)
class PreviewJob:
    """One golden preview paired with everything needed to re-render it."""

    case: str
    golden: Path
    step: int
    index: int
    sample: SampleSpec
    lora: LoraPair | None  # None at the untrained baseline (step 0) or when deleted
    merged: bool  # ai-toolkit merged the LoRA into the weights for this round (§8.2)
    label_note: str = ""  # e.g. "after-training render repeating the last step label"
    unreproducible: str | None = None
    golden_raw: Path | None = None  # lossless frames, when the output folder has them
    extra: dict = field(default_factory=dict)
    broken: str | None = None  # an input that exists but cannot be used (one error line): an error, not unreproducible
    merge_history: tuple = ()  # MergeRound, in order: the earlier merged rounds this preview's base carried
    lora_saved: LoraPair | None = None  # the job's own checkpoint, when a --lora-override replaced it in ``lora``

    @property
    def golden_ext(self) -> str:
        """The golden's codec by file extension (``webp`` when unknown): the render is re-encoded the same way."""
        return (Path(self.golden).suffix.lstrip(".").lower() if self.golden else "") or "webp"

    @property
    def multiplier(self):
        """The LoRA multiplier ai-toolkit applied: per expert when the job set them, else the sample's."""
        return self.extra.get("multipliers", self.sample.network_multiplier)


@dataclass
class PreviewTarget:
    """A preview plus what the renderer needs that the preview itself does not say."""

    preview: PreviewJob
    model_name: str  # the job's model.name_or_path
    config_file: Path
    search_dirs: list[Path] = field(default_factory=list)  # last-resort places to look for a ctrl_img by name
    profile: str = "auto"
    thresholds: object = None  # metrics.Thresholds; None = defaults
    path_map: PathMap = field(default_factory=PathMap)  # CLI map combined with the case's
    model_block: dict = field(default_factory=dict)
    threads: int | None = None
    vae: str | None = None  # the case's VAE override
    device: str = "auto"  # the case's device preference
    rng_layout: str = "cuda"  # the device type ai-toolkit rendered on (job config `device`): decides the RNG layout
    known_gaps: list[str] = field(default_factory=list)  # job-level reasons exactness is impossible
    golden_stack: dict | None = None  # the stack that rendered the golden (harness.stack); None = unknown
    source: Path | None = None  # what to point `wan-parity run`/`diagnose` at for this preview again

    @property
    def key(self) -> str:
        return f"{self.preview.case}::{self.preview.step}::{self.preview.index}" + (
            f"::{self.preview.extra.get('time')}" if self.preview.label_note else "")
