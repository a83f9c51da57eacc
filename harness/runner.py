"""Render every selected preview, compare it with its golden, and write one result per preview.

This is the shared engine of the CLI and the pytest plugin: both build ``PreviewTarget``s and call ``run_one``.
Results are written per preview and atomically, so an interrupted run keeps what it finished (``--resume``).
"""

from __future__ import annotations

import json
import re
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from .errors import HarnessError, NonFiniteError
from .fsutil import write_json_atomic
from .paths import PathMap, resolve_ctrl_img, resolve_model, resolve_vae
from .options import RunOptions
from .spec import PreviewTarget

SCHEMA_VERSION = 1


def resolve_device(name: str) -> str:
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


def choose_profile(target: PreviewTarget, override: str | None):
    """Profile by name, or ``auto``: from the ai-toolkit version in the LoRA metadata (§7.1, docs/parity)."""
    from .render.profiles import get_profile, profile_for_aitk_version

    name = override or target.profile or "auto"
    if name != "auto":
        return get_profile(name), f"profile {name} chosen explicitly"
    return profile_for_aitk_version(aitk_version(target))


def aitk_version(target: PreviewTarget) -> str | None:
    """The ai-toolkit version in the preview's LoRA metadata (``software``), or None."""
    from .aitk.outputs import lora_software_version

    lora = target.preview.lora
    if lora is not None:
        for path in (lora.high, lora.low):
            if path is not None and Path(path).is_file():
                return lora_software_version(path)
    return None


def quantization_for(target: PreviewTarget, ara: str | None = None):
    """ai-toolkit's quantization for the job (§9, docs/parity), or None; HarnessError for what cannot be reproduced."""
    from .render.quant import quantization_plan

    return quantization_plan(target.model_block, aitk_version(target), ara_path=ara)


def approximations(target: PreviewTarget, profile, device: str, quantization=None) -> list[str]:
    """Reasons this render cannot claim bit-exactness, said up front rather than discovered as drift.

    ``quantization``: the ``QuantPlan`` the render used (its own ``approximate`` reasons are added).
    """
    notes = list(target.known_gaps)
    model = target.model_block or {}
    if quantization is not None:
        notes += list(quantization.approximate)
    if model.get("layer_offloading"):  # with quantization on, quantization_plan already refused the job
        notes.append("the job used layer_offloading (ai-toolkit's MemoryManager streams layers); assumed to change no "
                     "pixels (UNVERIFIED)")
    if target.rng_layout == "cuda" and torch_device_type(device) == "cpu":
        notes.append("ai-toolkit drew the first-frame posterior noise from the CUDA generator; a CPU render draws it "
                     "from the CPU stream instead")
    elif target.rng_layout == "cpu" and torch_device_type(device) != "cpu":
        notes.append("the golden was rendered on CPU; CUDA kernels differ from CPU ones in the last bits")
    if not profile.exact:
        notes.append(f"profile {profile.name} is a diagnosis profile, not ai-toolkit's sampler")
    return notes


class LoraCache:
    """The parsed layers of the last few LoRA files, least recently used evicted first.

    Keyed by path and modification time, so a checkpoint rewritten during a run is read again. A preview uses two
    files (high and low noise) and runs are ordered by LoRA, so four entries keep a job's files read once each.
    """

    def __init__(self, size: int = 4, reader=None):
        self.size = size
        self.reader = reader
        self._entries: "OrderedDict[tuple[str, int], dict]" = OrderedDict()

    def get(self, path: Path) -> dict:
        key = (str(path), path.stat().st_mtime_ns)
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key]
        reader = self.reader
        if reader is None:
            from .render.lora import read_lora_file as reader
        self._entries[key] = reader(path)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return self._entries[key]


class Engine:
    """Holds loaded models, parsed LoRAs and prompt embeddings for the whole run."""

    def __init__(self, options: RunOptions, progress=None):
        from .render.models import MODEL_CACHE
        from .render.text import PromptCache

        self.options = options
        self.device = resolve_device(options.device)
        self.threads = set_threads(options.threads, "cpu" if options.device in ("cpu", "auto") else self.device)
        self.models = MODEL_CACHE
        self.prompts = PromptCache()
        self.loras = LoraCache()
        self.progress = progress
        self._stacks: dict[str, dict] = {}

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

    def _lora_layers(self, path: Path) -> dict:
        return self.loras.get(Path(path))

    def _bundle(self, target: PreviewTarget, profile, quantization="job"):
        """The loaded models for a target; ``quantization`` is the job's plan ("job"), a plan, or None (bf16)."""
        merged_map = target.path_map
        base, base_note = resolve_model(target.model_name, merged_map, self.options.base_model, file=target.config_file)
        vae_override = self.options.vae or target.vae
        if vae_override:
            vae, vae_note = Path(vae_override), f"VAE from {vae_override}"
        else:
            vae, vae_note = resolve_vae(base)
        plan = quantization_for(target, self.options.ara) if quantization == "job" else quantization
        bundle = self.models.get(base, vae, self.device_for(target), cast_whole_bf16=profile.cast_whole_bf16,
                                 quantization=plan, offload=self.options.offload)
        return bundle, [n for n in (base_note, vae_note) if n], merged_map

    def render(self, target: PreviewTarget, *, profile=None, sample=None, multiplier=None, merged=None,
               use_lora: bool = True, resize: str = "stretch", quantization="job"):
        """Render one preview exactly; returns (render, profile, notes).

        The keyword arguments override one setting at a time (the drift diagnosis); left out, the preview renders
        the way ai-toolkit rendered it.
        """
        from .render import lora as lora_mod
        from .render.conditioning import load_control_image
        from .render.pipeline import render_sample

        preview = target.preview
        if target.threads and self.options.threads is None:  # the case's thread count unless --threads says otherwise
            import torch

            torch.set_num_threads(target.threads)
        if profile is None:
            profile, profile_why = choose_profile(target, self.options.profile)
        else:
            profile_why = f"profile {profile.name} (override)"
        bundle, notes, merged_map = self._bundle(target, profile, quantization)
        sample = sample or preview.sample
        ctrl, ctrl_note = resolve_ctrl_img(sample.ctrl_img, merged_map, target.search_dirs, file=target.config_file,
                                           field=f"sample.samples[{sample.index}].ctrl_img")
        notes += [profile_why] + ([ctrl_note] if ctrl_note else [])
        try:
            image = load_control_image(ctrl, sample.width, sample.height, resize=resize)
        except (OSError, ValueError) as exc:
            raise HarnessError(ctrl, f"sample.samples[{sample.index}].ctrl_img", f"not a readable image ({exc})") from None
        paths, layers = {}, {}
        if preview.lora is not None and use_lora:
            for side in ("high", "low"):
                path = getattr(preview.lora, side)
                if path is not None:
                    paths[side], layers[side] = Path(path), self._lora_layers(Path(path))
        if multiplier is None:
            multiplier = preview.extra.get("multipliers", sample.network_multiplier)
        merged = preview.merged if merged is None else merged
        with lora_mod.applied(paths, layers, bundle.experts, multiplier, merged=merged, compute_device=bundle.device):
            result = render_sample(bundle, sample, image, profile, self.prompts, progress=self.progress,
                                   rng_layout=_rng_layout(target, bundle.device))
        return result, profile, notes


def _rng_layout(target: PreviewTarget, device) -> str:
    """ai-toolkit's RNG layout; a CUDA-rendered preview re-rendered on CPU can only approximate the posterior."""
    return "cpu" if target.rng_layout == "cpu" or torch_device_type(device) == "cpu" else "cuda"


def torch_device_type(device) -> str:
    return str(device).split(":")[0]


def _comparison_fields(golden_frames, render_frames, raw_golden, fps, ext, thresholds):
    from .media import reencode_roundtrip
    from .metrics import ENCODED_VIEW, compare_clips, verdict

    thresholds = thresholds or ENCODED_VIEW
    encoded = compare_clips(golden_frames, reencode_roundtrip(render_frames, fps=fps, ext=ext))
    raw = compare_clips(golden_frames, render_frames)
    fields = {
        "status": verdict(encoded, thresholds),
        "bit_exact": bool(encoded.bit_exact),
        "encoded": encoded.to_json(),
        "raw": raw.to_json(),
        "thresholds": {"psnr_min": thresholds.psnr_min, "ssim_min": thresholds.ssim_min},
    }
    if raw_golden is not None:
        lossless = compare_clips(raw_golden, render_frames)
        fields["raw_golden"] = lossless.to_json()
        fields["bit_exact_raw"] = bool(lossless.bit_exact)
    summary = encoded.to_json()
    for key in ("psnr_mean", "psnr_min", "ssim_mean", "ssim_min", "worst_frame"):
        fields[key] = summary.get(key)
    fields["psnr_per_frame"] = summary.get("psnr")
    fields["ssim_per_frame"] = summary.get("ssim")
    if encoded.mismatch:
        fields["message"] = encoded.mismatch
    return fields


def effective_thresholds(thresholds, match):
    """The preview's thresholds (defaults for the encoded view) with ``require_bit_exact: auto`` decided."""
    from .metrics import ENCODED_VIEW

    return (thresholds or ENCODED_VIEW).resolved(match.exact_expected)


def _stack_fields(target: PreviewTarget, match) -> dict:
    """What the result says about stacks: the golden's, what was pinned, and why exactness is (not) expected."""
    from .stack import pinned_env

    return {"golden_stack": target.golden_stack, "pinned": pinned_env() or None,
            "exact_expected": match.exact_expected, "stack_diff": match.diff or None,
            "stack_unknown": list(match.unknown) or None, "stack_reason": match.reason()}


def base_result(target: PreviewTarget) -> dict:
    p, s = target.preview, target.preview.sample
    return {
        "key": target.key, "case": p.case, "golden": str(p.golden), "golden_raw": str(p.golden_raw) if p.golden_raw else None,
        "step": p.step, "index": p.index, "label_note": p.label_note or None,
        "seed": s.seed, "prompt": s.prompt, "negative_prompt": s.negative_prompt,
        "width": s.width, "height": s.height, "width_requested": s.width_requested,
        "height_requested": s.height_requested, "num_frames_requested": s.num_frames_requested, "num_frames": s.num_frames, "fps": s.fps,
        "guidance_scale": s.guidance_scale, "sample_steps": s.sample_steps,
        "network_multiplier": p.extra.get("multipliers", s.network_multiplier),
        "ctrl_img": s.ctrl_img,
        "lora": None if p.lora is None else {"high": str(p.lora.high) if p.lora.high else None,
                                             "low": str(p.lora.low) if p.lora.low else None},
        "lora_path": "none" if p.lora is None else ("merged" if p.merged else "unmerged"),
        "status": None, "bit_exact": False, "psnr_mean": None, "psnr_min": None, "ssim_mean": None, "ssim_min": None,
        "psnr_per_frame": None, "ssim_per_frame": None, "frames_path": None, "render_path": None, "message": None,
    }


def run_one(engine: Engine, target: PreviewTarget) -> dict:
    """Render, compare and (with --out) write one preview; user-facing problems become an ``error`` result."""
    from .media import check_preview_golden, read_frames, write_like_aitk, save_npy_atomic

    result = base_result(target)
    if target.preview.unreproducible:
        result.update(status="unreproducible", message=target.preview.unreproducible)
        return result
    started = time.perf_counter()
    try:
        if target.preview.golden is None:
            raise HarnessError(target.config_file, f"prompts[{target.preview.index}].golden", "no golden file to compare "
                               "with; add the service's output as `golden:` (render-only requests cannot be compared)")
        golden = read_frames(target.preview.golden)
        check_preview_golden(golden, target.preview, target.config_file)
        raw_golden = read_frames(target.preview.golden_raw).frames if target.preview.golden_raw else None
        render, profile, notes = engine.render(target)
    except HarnessError as exc:
        result.update(status="error", message=_error_line(exc, target))
        return result
    except (MemoryError, RuntimeError) as exc:  # torch.OutOfMemoryError is a RuntimeError
        error = _out_of_memory(exc, target, engine)
        if error is None:
            raise
        result.update(status="error", message=error.line())
        return result
    ext = Path(target.preview.golden).suffix.lstrip(".").lower() or "webp"
    match = engine.stack_match(target)
    thresholds = effective_thresholds(target.thresholds, match)
    result.update(_stack_fields(target, match), require_bit_exact=thresholds.require_bit_exact)
    result.update(_comparison_fields(golden.frames, render.frames, raw_golden, target.preview.sample.fps, ext,
                                     thresholds))
    for alternative in _alternatives(engine, target, result):
        other, _, _ = engine.render(target, profile=alternative)
        fields = _comparison_fields(golden.frames, other.frames, raw_golden, target.preview.sample.fps, ext,
                                    thresholds)
        notes.append(f"ai-toolkit {aitk_version(target)} spans a sampler change; {alternative.name} gave encoded PSNR "
                     f"min {_fmt(fields['psnr_min'])} dB vs {_fmt(result['psnr_min'])} dB for {profile.name}")
        if _better(fields, result):
            result.update(fields)
            render, profile = other, alternative
    plan = quantization_for(target, engine.options.ara)  # already validated by engine.render
    approx = approximations(target, profile, engine.device_for(target), plan)
    result["quantization"] = None if plan is None else plan.describe()
    result["device"] = engine.device_for(target)
    result["offload"] = engine.options.offload
    result.update(profile=profile.name, profile_exact=profile.exact, profile_settings=profile_settings(profile), approximate=approx or None, notes=notes,
                  trace=[list(t) for t in render.trace], seconds=round(time.perf_counter() - started, 3))
    if result["message"] is None:
        result["message"] = _describe(result)
    if not result["bit_exact"] and match.reason():
        result["message"] += f"; {match.reason()}"
    if engine.options.out is not None:
        stem = Path(target.preview.golden).stem
        folder = Path(engine.options.out) / "renders" / _safe(target.preview.case)
        folder.mkdir(parents=True, exist_ok=True)
        result["render_path"] = str(write_like_aitk(folder / f"{stem}.{ext}", render.frames, target.preview.sample.fps))
        if engine.options.save_frames:
            result["frames_path"] = str(save_npy_atomic(folder / f"{stem}.npy", render.frames))
    return result


def _alternatives(engine: Engine, target: PreviewTarget, result: dict) -> list:
    """Profiles still worth trying: only under ``auto``, only for ambiguous versions, only when not already exact."""
    from .render.profiles import alternative_profiles

    if result["bit_exact"] or (engine.options.profile or target.profile or "auto") != "auto":
        return []
    return alternative_profiles(aitk_version(target))


def _better(candidate: dict, current: dict) -> bool:
    """Bit-exact first, then the higher worst-frame encoded PSNR."""
    def score(fields):
        value = fields.get("psnr_min")
        return (bool(fields.get("bit_exact")), float("inf") if value == "inf" else float(value or float("-inf")))

    return score(candidate) > score(current)


def _error_line(exc: HarnessError, target: PreviewTarget) -> str:
    """The one-line message of an error result; a NaN/Inf render names the LoRA file of the expert it came from."""
    if isinstance(exc, NonFiniteError):
        lora = target.preview.lora
        path = getattr(lora, exc.expert) if lora is not None and exc.expert in ("high", "low") else None
        return HarnessError(path or target.config_file, f"{target.key}: {exc.field}", exc.message).line()
    return exc.line()


def _out_of_memory(exc: BaseException, target: PreviewTarget, engine: Engine) -> HarnessError | None:
    """A HarnessError for running out of GPU or CPU memory (with the knob to turn), or None for any other error."""
    import torch

    s = target.preview.sample
    size = f"{s.width}x{s.height}, {s.num_frames} frames"
    if isinstance(exc, torch.OutOfMemoryError):
        torch.cuda.empty_cache()
        mode = getattr(engine.options, "offload", "none")
        fix = {"none": "try --offload experts (or sequential on cards < 32 GB)", "experts": "try --offload sequential"}
        return HarnessError(None, "--offload", f"CUDA out of memory rendering {target.key} ({size}) with --offload "
                            f"{mode}; {fix.get(mode, 'render on a card with more memory')}")
    if isinstance(exc, MemoryError):
        return HarnessError(None, "--device", f"out of CPU memory rendering {target.key} ({size}); render on a "
                            "machine with more RAM or on CUDA (--device cuda)")
    return None


def profile_settings(profile) -> dict:
    """The profile's knobs as data, so a report never has to guess what a profile name meant."""
    from dataclasses import asdict

    return {k: v for k, v in asdict(profile).items() if k not in ("name", "description")}


def _describe(result: dict) -> str:
    if result["bit_exact"]:
        return "bit-exact with the golden preview"
    return (f"encoded PSNR min {_fmt(result['psnr_min'])} dB, SSIM min {_fmt(result['ssim_min'])} "
            f"(worst frame {result.get('worst_frame')})")


def _fmt(value) -> str:
    return "inf" if value in ("inf", float("inf")) else ("n/a" if value is None else f"{float(value):.3f}")


def _safe(name: str) -> str:
    """A case name as a single folder name: outputs stay under --out whatever the name says."""
    cleaned = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name).strip(".")
    return cleaned or "case"


def result_file(out: Path, target: PreviewTarget) -> Path:
    return Path(out) / "results" / _safe(target.preview.case) / (_safe(target.key.replace("::", "__")) + ".json")


def summarize(results: list[dict]) -> dict:
    counts: dict[str, int] = {}
    for r in results:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    return {"total": len(results), **counts, "bit_exact": sum(1 for r in results if r.get("bit_exact"))}


def exit_code(results: list[dict]) -> int:
    """0 every check passed, 1 some preview drifted, 2 bad input (an ``error`` result)."""
    statuses = {r["status"] for r in results}
    if "error" in statuses:
        return 2
    return 1 if "fail" in statuses else 0


def run_targets(targets: list[PreviewTarget], options: RunOptions, on_result=None, progress=None) -> tuple[dict, list[dict]]:
    """Run all targets in an order that reuses loaded models and LoRAs; returns (environment, results)."""
    engine = Engine(options, progress=progress)
    ordered = sorted(targets, key=lambda t: (t.model_name, str(t.preview.lora), t.preview.case, t.preview.step, t.preview.index))
    results = []
    for target in ordered:
        done = result_file(options.out, target) if options.out is not None else None
        if options.resume and done is not None and done.is_file():
            result = json.loads(done.read_text())
            result["resumed"] = True
        else:
            result = run_one(engine, target)
            if done is not None:
                write_json_atomic(done, result)
        results.append(result)
        if on_result is not None:
            on_result(result)
    return engine.environment(), results


def results_document(environment: dict, results: list[dict]) -> dict:
    ordered = sorted(results, key=lambda r: (r["case"], r["step"], r["index"], r["key"]))
    return {"schema_version": SCHEMA_VERSION, "environment": environment, "summary": summarize(results), "results": ordered}
