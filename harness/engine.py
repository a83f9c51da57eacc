"""The render engine: one preview's settings in, frames and how they were made out.

``Engine.baseline(target)`` decides everything ai-toolkit decided for a preview (device, profile, quantization,
multiplier, merge path) once, as one frozen :class:`RenderSettings`; ``Engine.render(target, settings)`` renders it
and returns a :class:`RenderOutcome` that carries those decisions, so nothing downstream recomputes them. The drift
diagnosis renders variants as ``dataclasses.replace(settings, ...)``.

The engine keeps what a run reuses: loaded models (a :class:`~harness.render.models.ModelCache`, injected so two
engines may share one), parsed LoRAs (:class:`LoraCache`), prompt embeddings and the LoRA metadata it has read.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .errors import HarnessError
from .options import RunOptions
from .paths import resolve_ctrl_img, resolve_model, resolve_vae
from .spec import PreviewTarget


@dataclass(frozen=True)
class RenderSettings:
    """Everything that may change one render; :meth:`Engine.baseline` gives what ai-toolkit used.

    ``profile`` stays a named profile and ``overrides`` holds the profile fields a variant changes on top of it, so
    what changed is read from data, never parsed back out of a profile name.
    """

    profile: object  # harness.render.profiles.SamplerProfile, a named one
    sample: object  # harness.spec.SampleSpec (seed, negative prompt, size, steps)
    multiplier: object  # float or {"high": m, "low": m}
    use_lora: bool  # whether the preview's LoRA is applied at all
    merged: bool  # ai-toolkit's merged path (§8.2) or the unmerged one
    quantization: object = None  # harness.render.quant.QuantPlan, or None (bf16 experts)
    resize: str = "stretch"  # how the control image is fitted (ai-toolkit stretches)
    overrides: tuple = ()  # ((field, value), ...) of ``profile`` changed by a variant
    merge_history: tuple | None = None  # earlier merged rounds (spec.MergeRound) replayed into the base; None: pristine
    rng_grid: int | None = None  # CUDA randn grid cap (threads) of the golden's GPU (§3.8); None: this GPU's own
    profile_why: str = field(default="", compare=False)  # how the profile was chosen (a note, not a knob)
    profile_forced: bool = field(default=False, compare=False)  # --profile or the case chose it, not `auto`

    @property
    def sampler(self):
        """The profile the render follows: ``profile`` with ``overrides`` applied."""
        from .render.profiles import with_overrides

        return with_overrides(self.profile, **dict(self.overrides))

    def with_profile_fields(self, **fields) -> "RenderSettings":
        """These settings with some profile fields overridden (the shift, boundary, posterior, dtype variants)."""
        return replace(self, overrides=tuple({**dict(self.overrides), **fields}.items()))


@dataclass
class RenderOutcome:
    """One render and every decision behind it (what the result records)."""

    frames: np.ndarray  # uint8 (F, H, W, 3)
    trace: list  # per denoising step: (timestep, expert, ...)
    settings: RenderSettings
    device: str
    offload: str
    notes: list[str]  # how inputs were found: base model, VAE, control image, profile choice
    approximate: list[str]  # reasons this render cannot claim bit-exactness, said up front
    stack: object  # harness.stack.StackMatch: this stack against the golden's
    pinned: dict | None  # the CPU caps this process runs under
    seconds: float
    exact_impossible: list[str] = field(default_factory=list)  # why no stack can give the golden's bits (§8.5)
    lora_saved_dtype: str | None = None  # the dtype the job saved this step's LoRA in (sampling used fp32)

    @property
    def profile(self):
        return self.settings.sampler


def resolve_device(name: str) -> str:
    """A device name checked against what torch sees (HarnessError with the fix otherwise)."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name != "cpu" and name != "cuda" and not re.fullmatch(r"cuda:\d+", name):
        raise HarnessError(None, "--device", f"unknown device {name!r}; use cpu, cuda, cuda:N or auto")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise HarnessError(None, "--device", f"{name} requested but no CUDA device is visible (torch "
                           f"{torch.__version__}, CUDA build {torch.version.cuda or 'none'}); use --device cpu, or "
                           "check CUDA_VISIBLE_DEVICES and the driver")
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        raise HarnessError(None, "--device", f"{name} requested but only {torch.cuda.device_count()} CUDA device(s) "
                           "are visible; use cuda:0 .. cuda:N-1")
    return name


def set_threads(threads: int | None, device: str) -> int:
    """CPU results depend on the thread count (the oracle used 2), so CPU runs default to 2 and record it."""
    import torch

    if threads is None and device == "cpu":
        threads = 2
    if threads is not None:
        if threads < 1:
            raise HarnessError(None, "--threads", "must be at least 1")
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def choose_profile(target: PreviewTarget, override: str | None, aitk_version: str | None,
                   rendered_ms: int | None = None):
    """(profile, why): ``override`` (the run's --profile), else the case's; ``auto`` follows the ai-toolkit version
    in the LoRA metadata (§7.1) and, for a version spanning a change, the preview's save time."""
    from .render.profiles import get_profile, profile_for_aitk_version

    name = override or target.profile or "auto"
    if name != "auto":
        return get_profile(name), f"profile {name} chosen explicitly"
    return profile_for_aitk_version(aitk_version, rendered_ms)


def torch_device_type(device) -> str:
    return str(device).split(":")[0]


class LoraCache:
    """The parsed layers of the last few LoRA files, least recently used evicted first.

    Keyed by path and modification time, so a checkpoint rewritten during a run is read again. A preview uses two
    files (high and low noise) and runs are ordered by LoRA, so four entries keep a job's files read once each.
    """

    def __init__(self, size: int = 4, reader=None):
        self.size = size
        self.reader = reader
        self._entries: "OrderedDict[tuple[str, int], dict]" = OrderedDict()

    def get(self, path: Path, expert: str | None = None) -> dict:
        """The parsed file; ``expert`` picks one half of a combined file (``LoraPair.combined``)."""
        key = (str(path), path.stat().st_mtime_ns, expert)
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key]
        reader = self.reader
        if reader is None:
            from .render.lora import read_lora_file as reader
        self._entries[key] = reader(path) if expert is None else reader(path, expert=expert)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return self._entries[key]


class Engine:
    """Holds loaded models, parsed LoRAs, prompt embeddings and LoRA metadata for the whole run."""

    def __init__(self, options: RunOptions, progress=None, models=None):
        from .render.history import HistoryCache
        from .render.models import ModelCache
        from .render.text import PromptCache

        self.options = options
        self.device = resolve_device(options.device)
        self.threads = set_threads(options.threads, "cpu" if options.device in ("cpu", "auto") else self.device)
        self.models = models if models is not None else ModelCache()
        self.prompts = PromptCache()
        self.loras = LoraCache()
        self.histories = HistoryCache(self.loras.get)
        self.progress = progress
        self._stacks: dict[str, dict] = {}
        self._versions: dict[str, str | None] = {}
        self._dtypes: dict[tuple[str, int], str | None] = {}

    # ------------------------------------------------------------------ this machine

    def environment(self) -> dict:
        from .environment import fingerprint

        return fingerprint(self.device)

    def stack_here(self, device: str) -> dict:
        """This process's stack for ``device`` (threads as set now: the case's count applies per render)."""
        import torch

        from .stack import fingerprint

        if device not in self._stacks:
            self._stacks[device] = fingerprint(device)
        return {**self._stacks[device], "threads": torch.get_num_threads()}

    def stack_match(self, target: PreviewTarget):
        """Whether this stack can reproduce the golden's bits (``require_bit_exact: auto`` follows it)."""
        from .stack import compare_stacks

        return compare_stacks(target.golden_stack, self.stack_here(self.device_for(target)))

    def device_for(self, target: PreviewTarget) -> str:
        """An explicit --device wins; else the case's preference (CPU goldens need CPU renders); else auto."""
        if self.options.device != "auto" or target.device == "auto":
            return self.device
        try:
            return resolve_device(target.device)
        except HarnessError as exc:
            raise HarnessError(target.config_file, "device", exc.message) from None

    # ------------------------------------------------------------------ what ai-toolkit decided

    def aitk_version(self, target: PreviewTarget) -> str | None:
        """The ai-toolkit version in the preview's LoRA metadata (``software``), read once per file; for a preview
        without a LoRA of its own (step 0), the version the job's other checkpoints record."""
        from .aitk.outputs import lora_software_version

        lora = target.preview.lora
        for path in (lora.high, lora.low) if lora is not None else ():
            if path is not None and Path(path).is_file():
                if str(path) not in self._versions:
                    self._versions[str(path)] = lora_software_version(path)
                return self._versions[str(path)]
        return (target.preview.extra.get("job_aitk_version") or {}).get("version")

    def choose_profile(self, target: PreviewTarget):
        """(profile, why) for this target under this run's ``--profile``."""
        profile, why = choose_profile(target, self.options.profile, self.aitk_version(target),
                                      target.preview.extra.get("time"))
        evidence = target.preview.extra.get("job_aitk_version")
        if target.preview.lora is None and evidence and self.profile_is_auto(target):
            why = why.replace("from the LoRA metadata", f"from the job's checkpoint {evidence['file']}")
        return profile, why

    def profile_is_auto(self, target: PreviewTarget) -> bool:
        return (self.options.profile or target.profile or "auto") == "auto"

    def baseline(self, target: PreviewTarget) -> RenderSettings:
        """The settings ai-toolkit rendered this preview with; HarnessError for what cannot be reproduced."""
        from .render.quant import quantization_plan

        profile, why = self.choose_profile(target)
        preview = target.preview
        plan = quantization_plan(target.model_block, self.aitk_version(target), *self.ara_file(target))
        return RenderSettings(profile=profile, sample=preview.sample, multiplier=preview.multiplier, use_lora=True,
                              merged=preview.merged, quantization=plan, profile_why=why,
                              profile_forced=not self.profile_is_auto(target),
                              merge_history=tuple(preview.merge_history) or None,
                              rng_grid=self.rng_grid(target))

    def lora_dtype(self, pair) -> str | None:
        """The saved dtype of a checkpoint's files (``+``-joined when the sides differ), read once per file."""
        from .aitk.outputs import lora_saved_dtype

        found = set()
        for path in (pair.high, pair.low) if pair is not None else ():
            if path is not None:
                key = (str(path), Path(path).stat().st_mtime_ns)
                if key not in self._dtypes:
                    self._dtypes[key] = lora_saved_dtype(path)
                found.update((self._dtypes[key] or "").split("+"))
        return "+".join(sorted(found - {""})) or None

    def exact_impossible(self, target: PreviewTarget, settings: RenderSettings) -> list[str]:
        """Why no stack can reproduce the golden's bits: LoRA files rounded by a bf16/fp16 save, where ai-toolkit
        sampled (and merged) with the fp32 weights in memory (§8.5). Only for ai-toolkit jobs (a job config's model
        block): other sources, such as runcomfy, cast the file's LoRA to bf16 themselves."""
        preview, reasons = target.preview, []
        if not target.model_block:
            return reasons
        if settings.use_lora and preview.lora is not None:
            dtype, saved = self.lora_dtype(preview.lora), self.lora_dtype(preview.lora_saved or preview.lora)
            if dtype != "fp32":
                given = "the --lora-override weights are" if preview.lora_saved else "the LoRA was saved"
                reasons.append(f"{given} in {dtype} (lora_saved_dtype: {saved}) but ai-toolkit sampled with the fp32 "
                               f"weights in memory, so exactness is impossible; give those with --lora-override "
                               f"{preview.step}=PATH")
        rounded = [r.step for r in settings.merge_history or () if self.lora_dtype(r.lora) != "fp32"]
        if rounded:
            reasons.append(f"the merge history replays step(s) {', '.join(map(str, rounded))} from non-fp32 "
                           "checkpoints; exactness needs their fp32 weights (--lora-override STEP=PATH)")
        return reasons

    def ara_file(self, target: PreviewTarget) -> tuple[str | None, str | None]:
        """(path, how it was found) of the accuracy recovery adapter the job names: --ara, --path-map, HF cache."""
        from .paths import resolve_ara
        from .render.quant import ara_source

        source = ara_source(target.model_block)
        if source is None or not target.model_block.get("quantize"):
            return self.options.ara, None
        path, note = resolve_ara(source, target.path_map, self.options.ara, file=target.config_file)
        return str(path), note

    def rng_grid(self, target: PreviewTarget) -> int | None:
        """The CUDA randn grid of the golden's GPU (§3.8): its stack's, else the assumed default; None on CPU layout."""
        from .gpus import grid_for_stack
        from .render.rng import default_grid

        if target.rng_layout != "cuda":
            return None
        return grid_for_stack(target.golden_stack)[0] or default_grid(self.device_for(target))

    def approximations(self, target: PreviewTarget, settings: RenderSettings, device: str) -> list[str]:
        """Reasons this render cannot claim bit-exactness, said up front rather than discovered as drift."""
        notes = list(target.known_gaps) + self.exact_impossible(target, settings)
        if settings.quantization is not None:
            notes += list(settings.quantization.approximate)
        if (target.model_block or {}).get("layer_offloading"):  # with quantization on, the plan refused the job
            notes.append("the job used layer_offloading (ai-toolkit's MemoryManager streams layers); assumed to change "
                         "no pixels (UNVERIFIED)")
        if target.rng_layout == "cuda":
            from .render.rng import emulation_notes

            notes += emulation_notes(settings, device)
        elif target.rng_layout == "cpu" and torch_device_type(device) != "cpu":
            notes.append("the golden was rendered on CPU; CUDA kernels differ from CPU ones in the last bits")
        if not settings.sampler.exact:
            notes.append(f"profile {settings.sampler.name} is a diagnosis profile, not ai-toolkit's sampler")
        return notes

    # ------------------------------------------------------------------ rendering

    def lora_layers(self, target: PreviewTarget) -> tuple[dict, dict]:
        """Per expert side: the LoRA file and its parsed layers (from the cache)."""
        paths, layers = {}, {}
        lora = target.preview.lora
        for side in ("high", "low") if lora is not None else ():
            path = getattr(lora, side)
            if path is not None:
                paths[side] = Path(path)
                layers[side] = self.loras.get(paths[side], side if lora.combined else None)
        return paths, layers

    def control_image_path(self, target: PreviewTarget, sample) -> tuple[Path, str | None]:
        return resolve_ctrl_img(sample.ctrl_img, target.path_map, target.search_dirs, file=target.config_file,
                                field=f"sample.samples[{sample.index}].ctrl_img")

    def render(self, target: PreviewTarget, settings: RenderSettings | None = None) -> RenderOutcome:
        """Render one preview under ``settings`` (default: :meth:`baseline`)."""
        from .render import lora as lora_mod
        from .render.conditioning import load_control_image
        from .render.history import installed
        from .render.pipeline import render_sample
        from .render.rng import layout_notes
        from .stack import pinned_env

        started = time.perf_counter()
        settings = settings or self.baseline(target)
        if target.threads and self.options.threads is None:  # the case's thread count unless --threads says otherwise
            import torch

            torch.set_num_threads(target.threads)
        device = self.device_for(target)
        sample = settings.sample
        ctrl, ctrl_note = self.control_image_path(target, sample)
        try:  # before any model loads: a broken control image costs nothing
            image = load_control_image(ctrl, sample.width, sample.height, resize=settings.resize)
        except (OSError, ValueError) as exc:
            raise HarnessError(ctrl, f"sample.samples[{sample.index}].ctrl_img", f"not a readable image ({exc})") from None
        bundle, notes = self._bundle(target, settings, device)
        notes += [settings.profile_why] + ([ctrl_note] if ctrl_note else []) + layout_notes(settings, target.golden_stack,
                                                                                           device)
        paths, layers = self.lora_layers(target) if settings.use_lora else ({}, {})
        base, history_note = self._replayed_base(bundle, settings)
        fusion, fusion_note = self._fusion(bundle)
        with installed(bundle.experts, base), lora_mod.applied(paths, layers, bundle.experts, settings.multiplier,
                                                               merged=settings.merged, compute_device=bundle.device,
                                                               lean=self.options.lean_lora), fusion:
            render = render_sample(bundle, sample, image, settings.sampler, self.prompts, progress=self.progress,
                                   rng_layout=target.rng_layout, rng_grid=settings.rng_grid)
        return RenderOutcome(frames=render.frames, trace=[list(t) for t in render.trace], settings=settings,
                             device=device, offload=self.options.offload,
                             notes=[n for n in notes + [history_note, fusion_note] if n],
                             approximate=self.approximations(target, settings, device),
                             stack=self.stack_match(target), pinned=pinned_env() or None,
                             seconds=round(time.perf_counter() - started, 3),
                             exact_impossible=self.exact_impossible(target, settings),
                             lora_saved_dtype=self.lora_dtype(target.preview.lora_saved or target.preview.lora))

    def _fusion(self, bundle) -> tuple:
        """The ``--fused-blocks`` context for this render and a note when it was asked for but cannot run here."""
        from contextlib import nullcontext

        from .render import fused, kernels

        if not self.options.fused_blocks:
            return nullcontext(), ""
        why = kernels.unavailable(bundle.device)
        if why:
            return nullcontext(), f"--fused-blocks not used: {why}"
        return fused.fused_blocks(bundle.experts), ""

    def _replayed_base(self, bundle, settings: RenderSettings) -> tuple[dict, str]:
        """The base ai-toolkit's earlier merged rounds left (§8.2), and a note saying so; ai-toolkit never merges
        into a quantized model, so a quantized variant keeps the pristine base."""
        history = settings.merge_history
        if not history:
            return {}, ""
        steps = ", ".join(str(r.step) for r in history)
        if settings.quantization is not None:
            return {}, f"merge history (steps {steps}) not replayed: ai-toolkit never merges into a quantized model"
        return (self.histories.base_for(bundle, history),
                f"base weights replayed through the earlier merged sampling round(s) at step(s) {steps}: ai-toolkit's "
                "merge-out left their bf16 residue in the base (§8.2)")

    def _bundle(self, target: PreviewTarget, settings: RenderSettings, device: str):
        """The loaded models for a target under ``settings`` (dtype rule, quantization), and how they were found."""
        base, base_note = resolve_model(target.model_name, target.path_map, self.options.base_model,
                                        file=target.config_file)
        vae_override = self.options.vae or target.vae
        if vae_override:
            vae, vae_note = Path(vae_override), f"VAE from {vae_override}"
        else:
            vae, vae_note = resolve_vae(base)
        bundle = self.models.get(base, vae, device, cast_whole_bf16=settings.sampler.cast_whole_bf16,
                                 quantization=settings.quantization, offload=self.options.offload)
        return bundle, [n for n in (base_note, vae_note) if n]


def profile_settings(profile) -> dict:
    """The profile's knobs as data, so a report never has to guess what a profile name meant."""
    from dataclasses import asdict

    return {k: v for k, v in asdict(profile).items() if k not in ("name", "description")}
