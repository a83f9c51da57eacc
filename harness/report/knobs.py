"""The config diff: a render's effective inference settings next to what common stacks use (§13, docs/parity).

Each row is one drift knob. ``this render`` is derived from the result (and its sampler profile); the
``ai-toolkit`` column is what ai-toolkit did for previews of that era; the other columns are the defaults
of stacks people load these LoRAs into. A cell is marked as drift when its value differs from ai-toolkit's,
so a reader sees at a glance which settings must be matched to reproduce a training preview elsewhere.

The ``ai-toolkit`` column is the golden's job: its era comes from the job's ai-toolkit version when the result
records it (:func:`~harness.report.sampling.job_profile`), not from the profile the render was forced to, so a
``--profile`` other than the job's marks the sampler rows as differing (:attr:`KnobRow.mark`, "≠" on the page).

Values marked ``UNVERIFIED`` are carried over unverified from PARITY.md/ANCHORS.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Union

from ..result import PreviewResult
from .format import fmt_num
from .sampling import job_profile, profile_info, summarize_trace

STACKS = (
    ("diffusers", "diffusers WanImageToVideoPipeline"),
    ("official", "Wan2.2 generate.py (I2V-A14B)"),
    ("runcomfy", "runcomfy ai-toolkit-inference"),
    ("comfyui", "ComfyUI Wan 2.2 I2V template"),
)

# What ai-toolkit's own sampler did per profile era (§7.1, docs/parity); non-aitk profiles map to None.
_AITK_ERA = {
    "aitk-euler": ("euler", 5.0, None),
    "aitk-unipc": ("unipc", 3.0, "new"),
    "aitk-unipc-old": ("unipc", 3.0, "old"),
}


MARKS = ("differs", "same", "unknown")  # KnobRow.mark, also the rows' CSS classes


@dataclass
class Cell:
    text: str
    drift: bool | None = None  # True: differs from ai-toolkit; False: same; None: unknown / not comparable


@dataclass
class KnobRow:
    knob: str
    section: str  # PARITY section
    render: Cell
    aitk: Cell
    stacks: dict[str, Cell] = field(default_factory=dict)
    effect: str = ""

    @property
    def render_differs(self) -> bool:
        return bool(self.render.drift)

    @property
    def mark(self) -> str:
        """One of :data:`MARKS`: whether the render's value differs from the golden's job (the ai-toolkit column)."""
        return "unknown" if self.render.drift is None else ("differs" if self.render.drift else "same")

    @property
    def drift_count(self) -> int:
        return sum(1 for c in self.stacks.values() if c.drift)

    def key(self) -> tuple:
        """Everything the table shows of this row: equal keys draw equal rows (the page renders a table once)."""
        return (self.knob, self.section, self.render.text, self.render.drift, self.aitk.text, self.effect,
                tuple((k, c.text, c.drift) for k, c in self.stacks.items()))


def _shift(value) -> str:
    return "unknown" if value is None else f"{float(value):.1f}"


def _high_steps_at(steps: list[tuple[str, float]], boundary: float) -> int:
    return sum(1 for _, t in steps if t >= boundary * 1000.0)


# --------------------------------------------------------------------------- rows


def _same(a, b) -> bool | None:
    """Drift between two settings: unknown when either is unknown."""
    if a is None or b is None:
        return None
    return a != b


def _passes(check) -> bool | None:
    """``check()`` as a bool; None when the values it needs are missing or not numbers."""
    try:
        return bool(check())
    except (KeyError, TypeError, ValueError):
        return None


def _checked(text: str, ok: bool | None, good: str, bad: str) -> Cell:
    """A render cell that says whether its value satisfies a rule; drift when it does not."""
    return Cell(text + ("" if ok is None else (good if ok else bad)), None if ok is None else not ok)


class _Job:
    """One result as the knob table reads it: the render's profile and trace, and the job's own values."""

    def __init__(self, result: PreviewResult, environment: dict | None):
        self.result = result
        self.env = environment or {}
        self.profile = profile_info(result)
        self.era = _AITK_ERA.get(job_profile(result) or "")
        self.aitk_scheduler, self.aitk_shift, self.aitk_sigmas = self.era if self.era else (None, None, None)
        self.trace = summarize_trace(result.trace)
        self.steps = result.sample_steps
        self.guidance = result.guidance_scale
        self.frames = result.num_frames
        self.lora_path = result.lora_path or "none"
        approximate = " ".join(result.approximate or [])
        self.quantized = "quantiz" in approximate or "layer_offloading" in approximate
        self.single = bool(_passes(lambda: int(self.frames) == 1))

    @property
    def size(self) -> str:
        r = self.result
        size = f"{r.width}×{r.height}"
        req = (r.width_requested, r.height_requested)
        if all(req) and req != (r.width, r.height):
            size += f" (requested {req[0]}×{req[1]})"
        return size

    def high_steps_text(self, boundary: float) -> str:
        """How many steps this schedule spends on the high-noise expert at ``boundary`` ("" without a trace)."""
        return f" ({_high_steps_at(self.trace.steps, boundary)} high steps on this schedule)" if self.trace.steps else ""


Text = Union[str, Callable[[_Job], str]]


@dataclass(frozen=True)
class Vs:
    """A stack's default compared with the knob's ai-toolkit value (drift when they differ, unknown if either is)."""

    value: object


Drift = Union[bool, None, Vs, Callable[[_Job], Optional[bool]]]


@dataclass(frozen=True)
class Knob:
    """One row of the config diff: how to read this render's setting, ai-toolkit's, and each stack's default."""

    name: str
    section: str  # PARITY section
    render: Callable[[_Job], Cell]  # this render's setting; drift = it departs from ai-toolkit
    aitk: Text  # what ai-toolkit did for this job
    stacks: dict[str, tuple[Text, Drift]]  # stack key (see STACKS) -> (its default, drift from ai-toolkit)
    effect: str  # what changes in the video when the knob differs
    reference: Callable[[_Job], object] = lambda job: None  # the ai-toolkit value that ``Vs`` defaults are compared with

    def row(self, job: _Job) -> KnobRow:
        stacks = {key: Cell(_text(text, job), self._drift(drift, job)) for key, (text, drift) in self.stacks.items()}
        return KnobRow(self.name, self.section, self.render(job), Cell(_text(self.aitk, job)), stacks, self.effect)

    def _drift(self, drift: Drift, job: _Job) -> bool | None:
        if isinstance(drift, Vs):
            return _same(drift.value, self.reference(job))
        return drift(job) if callable(drift) else drift


def _text(text: Text, job: _Job) -> str:
    return text(job) if callable(text) else text


def _sampler_text(scheduler, sigmas=None) -> str:
    if scheduler == "euler":
        return "FlowMatch Euler"
    if scheduler == "unipc":
        return "UniPC bh2, order 2" + (f", {sigmas} sigma grid" if sigmas else "")
    return "unknown"


def _sampler(job: _Job) -> Cell:
    """The scheduler and, for UniPC, its sigma grid (ai-toolkit's two UniPC eras differ only there)."""
    p = job.profile
    sigmas = p.unipc_sigmas if p.scheduler == "unipc" else None
    drift = None if p.scheduler is None or job.aitk_scheduler is None else (
        (p.scheduler, sigmas) != (job.aitk_scheduler, job.aitk_sigmas))
    return Cell(_sampler_text(p.scheduler, sigmas), drift)


def _multiplier(job: _Job) -> Cell:
    m = job.result.network_multiplier
    return Cell("no LoRA" if job.lora_path == "none" else f"{fmt_num(m)} on both experts", False)


def _boundary(job: _Job) -> Cell:
    boundary, steps = job.profile.boundary, job.trace.steps
    text = fmt_num(boundary)
    if boundary is not None and steps:
        text += (f" → t ≥ {boundary * 1000:g}: {_high_steps_at(steps, boundary)} of {len(steps)} steps "
                 "on the high-noise expert")
    return Cell(text, _same(boundary, 0.875))


def _cfg(job: _Job) -> Cell:
    g = job.guidance
    return Cell(f"{fmt_num(g)} for both experts" + ("" if g is None or g > 1 else " (≤ 1: CFG off)"), False)


_LORA_PATHS = {"none": "no LoRA", "merged": "merged: W' = bf16(W + m·up@down)",
               "unmerged": "unmerged: fp32 A/B, delta rounded to bf16 then added"}
_POSTERIORS = {"sample": "posterior sample(), RNG seeded with seed", "mode": "posterior mode"}
_CASTS = {True: "all bf16 (.to(bf16))", False: "fp32-kept modules stay fp32"}


def _snap(job: _Job) -> Cell:
    r = job.result
    snapped = _passes(lambda: int(r.width) % 16 == 0 and int(r.height) % 16 == 0)
    return _checked(job.size, snapped, " (multiple of 16)", " (NOT a multiple of 16)")


def _frames(job: _Job) -> Cell:
    return _checked(fmt_num(job.frames), _passes(lambda: (int(job.frames) - 1) % 4 == 0), " (4k+1)", " (NOT 4k+1)")


def _encoding(job: _Job) -> Cell:
    fps = job.result.fps
    if job.single:
        return Cell("JPEG q75 4:2:0 (Pillow defaults)", False)
    return Cell(f"animated WebP q80, duration 1000//fps = {1000 // int(fps)} ms" if fps else "animated WebP q80", False)


def _attention(job: _Job) -> Cell:
    tf32 = job.env.get("allow_tf32_matmul")
    text = "native SDPA, eager" + ("" if tf32 is None else f", TF32 matmul {'on' if tf32 else 'off'}")
    return Cell(text, bool(tf32) if tf32 is not None else None)


def _negative(job: _Job) -> Cell:
    neg = job.result.negative_prompt
    return Cell("empty" if neg == "" else ("unknown" if neg is None else "set (see settings)"), False)


def _replaced_if_empty(job: _Job) -> bool | None:
    """Stacks that substitute Wan's long default negative for an empty one drift exactly then."""
    return True if job.result.negative_prompt == "" else None


def _constant(text: str, drift: bool | None = None) -> Callable[[_Job], Cell]:
    return lambda job: Cell(text, drift)


KNOBS = (
    Knob("sampler", "§7.1", _sampler,
         lambda j: _sampler_text(j.aitk_scheduler, j.aitk_sigmas) if j.era else "Euler (≥ 0.9.3) / UniPC (0.4.1–0.9.2)",
         {"diffusers": ("UniPC (UNVERIFIED)", Vs("unipc")), "official": ("UniPC (--sample_solver unipc)", Vs("unipc")),
          "runcomfy": ("UniPC bh2, order 2", Vs("unipc")), "comfyui": ("euler / simple", Vs("euler"))},
         "different detail and noise texture; same composition at best", reference=lambda j: j.aitk_scheduler),
    Knob("shift", "§7.1", lambda j: Cell(_shift(j.profile.shift), _same(j.profile.shift, j.aitk_shift)),
         lambda j: _shift(j.aitk_shift) if j.era else "5.0 (Euler) / 3.0 (UniPC)",
         {"diffusers": ("scheduler config of the model repo (UNVERIFIED)", None), "official": ("5.0", Vs(5.0)),
          "runcomfy": ("3.0", Vs(3.0)), "comfyui": ("5.0 (ModelSamplingSD3; 5–8 common, UNVERIFIED)", Vs(5.0))},
         "higher shift = more steps at high noise; changes motion and structure", reference=lambda j: j.aitk_shift),
    Knob("expert boundary", "§7.4", _boundary, "0.875 (every version)",
         {"diffusers": (lambda j: "0.9 (Wan2.2 I2V repo)" + j.high_steps_text(0.9), True),
          "official": (lambda j: "0.9" + j.high_steps_text(0.9), True),
          "runcomfy": (lambda j: "0.9" + j.high_steps_text(0.9), True),
          "comfyui": ("step split (10 of 20), not a sigma boundary", True)},
         "1–3 steps change expert; visible in coarse structure and motion"),
    Knob("CFG per expert", "§6", _cfg, lambda j: f"one guidance_scale for both ({fmt_num(j.guidance)})",
         {"diffusers": ("guidance_scale, optional guidance_scale_2", None), "official": ("(3.5, 3.5)", Vs(3.5)),
          "runcomfy": ("one for both (ai-toolkit pipeline)", False), "comfyui": ("per KSampler; template 3.5", Vs(3.5))},
         "contrast and saturation", reference=lambda j: j.guidance),
    Knob("steps", "§1.2", lambda j: Cell(fmt_num(j.steps), False),
         lambda j: f"{fmt_num(j.steps)} from the job (UI default 25, 30 from 2026-04-10)",
         {"diffusers": ("50", Vs(50)), "official": ("40", Vs(40)), "runcomfy": ("25", Vs(25)),
          "comfyui": ("20 (split at 10)", Vs(20))},
         "detail / sharpness", reference=lambda j: j.steps),
    Knob("LoRA multiplier", "§8.3",
         _multiplier,
         "one multiplier for both experts",
         {"diffusers": ("per adapter; LoRA on transformer only unless load_into_transformer_2", True),
          "official": ("n/a (no LoRA loader)", None), "runcomfy": ("per expert (loras[].network_multiplier)", True),
          "comfyui": ("per expert (one LoraLoaderModelOnly each)", True)},
         "LoRA strength per stage"),
    Knob("LoRA path / precision", "§8.2", lambda j: Cell(_LORA_PATHS.get(j.lora_path, j.lora_path), False),
         "unmerged if quantize/layer_offloading/several multipliers, else merged (base weights drift per round)",
         {"diffusers": ("PEFT adapters cast to bf16", True), "official": ("n/a", None),
          "runcomfy": ("PEFT bf16 adapters (or fuse_lora)", True), "comfyui": ("patched into the (fp8) weights", True)},
         "tiny per layer, cumulative"),
    Knob("posterior", "§3",
         lambda j: Cell(_POSTERIORS.get(j.profile.posterior or "", "unknown"), _same(j.profile.posterior, "sample")),
         "sample() with seeded CUDA RNG (bf16)",
         {"diffusers": ("mode", True), "official": ("UNVERIFIED", None),
          "runcomfy": ("sample(), CUDA RNG never seeded", True), "comfyui": ("UNVERIFIED", None)},
         "first-frame fidelity / colour; run-to-run nondeterminism in runcomfy"),
    Knob("dtype of fp32-kept modules", "§11.1",
         lambda j: Cell(_CASTS.get(j.profile.cast_whole_bf16, "unknown"), _same(j.profile.cast_whole_bf16, True)),
         "all bf16 (time embedder, scale_shift_table, norms)",
         {"diffusers": ("kept fp32 (_keep_in_fp32_modules)", True), "official": ("params bf16 (UNVERIFIED)", None),
          "runcomfy": ("kept fp32", True), "comfyui": ("UNVERIFIED", None)},
         "tiny per step, accumulates; not bit-exact"),
    Knob("transformer quantization", "§9", lambda j: Cell("none (bf16 reference)", True if j.quantized else None),
         lambda j: "as the job: qfloat8 (UI default) / uint4+ARA / none" + (" — this job quantized" if j.quantized else ""),
         {"diffusers": ("bf16", None), "official": ("bf16", None), "runcomfy": ("bf16", None),
          "comfyui": ("fp8_scaled", True)},
         "noticeable texture and detail differences"),
    Knob("initial noise", "§3", _constant("CPU generator, fp32 → bf16 → fp32", False),
         "CPU generator, fp32 → bf16 → fp32",
         {"diffusers": ("caller's generator, fp32 not rounded", True), "official": ("CUDA generator", True),
          "runcomfy": ("same as ai-toolkit", False), "comfyui": ("own CPU noise", True)},
         "everything, if the generator differs"),
    Knob("control image resize", "§5", lambda j: Cell(f"LANCZOS stretch to {j.size}", False),
         "LANCZOS stretch to the /16 size, no EXIF transpose",
         {"diffusers": ("caller's choice (examples: aspect-fit)", None), "official": ("aspect kept (max area)", True),
          "runcomfy": ("LANCZOS stretch", False), "comfyui": ("aspect-fit / crop nodes", None)},
         "geometry of the first frame"),
    Knob("resolution snap", "§5.2", _snap, "/8 (min 64) then /16 floor",
         {"diffusers": ("model-specific", None), "official": ("--size area, aspect kept", True),
          "runcomfy": ("/16 floor (I2V)", False), "comfyui": ("node-specific", None)},
         "size mismatch"),
    Knob("frames", "§5.1", _frames, "(n−1)//4·4+1; UI default 41",
         {"diffusers": ("81", Vs(81)), "official": ("81", Vs(81)), "runcomfy": ("41", Vs(41)),
          "comfyui": ("template length", None)},
         "length / motion", reference=lambda j: j.frames),
    Knob("output encoding", "§2.3", _encoding, "animated WebP q80 (video), JPEG q75 (single frame)",
         {"diffusers": ("export_to_video: mp4", True), "official": ("mp4", True),
          "runcomfy": ("WebP q80 (video), JPEG q95 (image)", lambda j: j.single),
          "comfyui": ("save node: mp4 / webp settings", True)},
         "compression artefacts in goldens"),
    Knob("VAE", "§11.4", _constant("bf16, untiled decode", False), "bf16, untiled (I2V)",
         {"diffusers": ("fp32 in examples", True), "official": ("UNVERIFIED", None),
          "runcomfy": ("bf16, untiled", False), "comfyui": ("tiled decode common", True)},
         "slight colour / texture; seams with tiling"),
    Knob("attention / TF32 / compile", "§11.3", _attention, "native SDPA, TF32 off, no torch.compile",
         {"diffusers": ("SDPA by default", False), "official": ("flash-attn when available (UNVERIFIED)", None),
          "runcomfy": ("xformers if installed, TF32 on, max-autotune compile", True),
          "comfyui": ("varies (sage / flash / sdpa)", None)},
         "tiny (not bit-exact)"),
    Knob("negative prompt", "§1.6", _negative, '"" unless the job sets neg',
         {"diffusers": ("caller's (None → empty)", None),
          "official": ("empty → Wan's default Chinese negative", _replaced_if_empty),
          "runcomfy": ('"" default', False), "comfyui": ("Wan's long default negative", _replaced_if_empty)},
         "contrast, artefacts, prompt adherence"),
)


def config_diff(result: PreviewResult, environment: dict | None = None) -> list[KnobRow]:
    """The knob table for one result (see module doc): one row per entry of :data:`KNOBS`, in that order."""
    job = _Job(result, environment)
    return [knob.row(job) for knob in KNOBS]
