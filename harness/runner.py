"""Render every selected preview, compare it with its golden, and write one result per preview.

The CLI and the pytest plugin both build ``PreviewTarget``s and call ``run_one`` (or ``run_targets``): the engine
renders (:mod:`harness.engine`), :func:`harness.compare.compare_to_golden` judges, and the outcome becomes one
:class:`~harness.result.PreviewResult`. Results are written per preview and atomically, so an interrupted run keeps
what it finished (``--resume``).
"""

from __future__ import annotations

import json
from pathlib import Path

from .compare import Golden, Verdict, compare_to_golden, read_golden
from .engine import Engine, RenderOutcome, profile_settings
from .envelope import envelope_for, thresholds_from
from .errors import HarnessError, NonFiniteError
from .fsutil import write_json_atomic
from .layout import result_file, safe_name
from .numbers import fmt_db
from .options import RunOptions
from .result import PreviewResult
from .spec import PreviewTarget


def effective_thresholds(thresholds, match, envelope=None, *, impossible=()):
    """The preview's thresholds (defaults for the encoded view) with ``require_bit_exact: auto`` decided: exact where
    the stacks match, unless ``impossible`` says why no stack can be (a bf16-saved LoRA); where the stacks differ, a
    measured ``envelope`` (harness.envelope) replaces the fixed PSNR/SSIM minimums."""
    from .metrics import ENCODED_VIEW

    exact = match.exact_expected and not impossible
    resolved = (thresholds or ENCODED_VIEW).resolved(exact)
    return resolved if match.exact_expected else thresholds_from(resolved, envelope)


def base_result(target: PreviewTarget) -> PreviewResult:
    """The result's identity and the sample's settings, before anything renders."""
    p, s = target.preview, target.preview.sample
    return PreviewResult(
        key=target.key, case=p.case, step=p.step, index=p.index, golden=str(p.golden) if p.golden else None,
        golden_raw=str(p.golden_raw) if p.golden_raw else None, label_note=p.label_note or None,
        source=str(target.source) if target.source else None,
        seed=s.seed, prompt=s.prompt, negative_prompt=s.negative_prompt, width=s.width, height=s.height,
        width_requested=s.width_requested, height_requested=s.height_requested, num_frames=s.num_frames,
        num_frames_requested=s.num_frames_requested, fps=s.fps, guidance_scale=s.guidance_scale,
        sample_steps=s.sample_steps, network_multiplier=p.multiplier, ctrl_img=s.ctrl_img,
        lora=None if p.lora is None else _pair_json(p.lora),
        lora_path="none" if p.lora is None else ("merged" if p.merged else "unmerged"),
        golden_stack=target.golden_stack, lora_override=None if p.lora_saved is None else _pair_json(p.lora),
        merge_history=[{"step": r.step, "multiplier": r.multiplier, "lora": _pair_json(r.lora)}
                       for r in p.merge_history] or None)


def _pair_json(pair) -> dict:
    return {side: str(getattr(pair, side)) if getattr(pair, side) else None for side in ("high", "low")}


def run_one(engine: Engine, target: PreviewTarget) -> PreviewResult:
    """Render, compare and (with --out) write one preview; user-facing problems become an ``error`` result."""
    result = base_result(target)
    result.identity = result_identity(engine, target)
    if target.preview.broken:
        result.status, result.message = "error", target.preview.broken
        return result
    if target.preview.unreproducible:
        result.status, result.message = "unreproducible", target.preview.unreproducible
        return result
    try:
        golden = read_golden(target)
        envelope = envelope_for(target)
        outcome = engine.render(target, engine.baseline(target))
    except HarnessError as exc:
        result.status, result.message = "error", _error_line(exc, target)
        return result
    except (MemoryError, RuntimeError) as exc:  # torch.OutOfMemoryError is a RuntimeError
        error = _out_of_memory(exc, target, engine)
        if error is None:
            raise
        result.status, result.message = "error", error.line()
        return result
    thresholds = effective_thresholds(target.thresholds, outcome.stack, envelope, impossible=outcome.exact_impossible)
    outcome, judged, notes = _best_profile(engine, target, outcome, compare_to_golden(outcome.frames, golden, thresholds),
                                           golden)
    if envelope is not None and not outcome.stack.exact_expected:
        result.envelope = envelope.judge(judged.encoded.psnr_min, judged.encoded.ssim_min)
    _record(result, outcome, judged, notes)
    if engine.options.out is not None:
        _write_render(result, target, outcome, engine.options)
    return result


def _best_profile(engine: Engine, target: PreviewTarget, outcome: RenderOutcome, judged: Verdict, golden: Golden):
    """Under ``auto``, for an ai-toolkit version that spans a sampler change, also try the other profile(s)."""
    from dataclasses import replace

    from .render.profiles import alternative_profiles

    notes = list(outcome.notes)
    if judged.bit_exact or not engine.profile_is_auto(target):
        return outcome, judged, notes
    version = engine.aitk_version(target)
    for alternative in alternative_profiles(version, target.preview.extra.get("time")):
        other = engine.render(target, replace(outcome.settings, profile=alternative,
                                              profile_why=f"profile {alternative.name}: the other sampler of {version}"))
        other_judged = compare_to_golden(other.frames, golden, judged.thresholds)
        notes.append(f"ai-toolkit {version} spans a sampler change; {alternative.name} gave encoded PSNR min "
                     f"{fmt_db(other_judged.encoded.psnr_min, 3)} dB vs {fmt_db(judged.encoded.psnr_min, 3)} dB for "
                     f"{outcome.profile.name}")
        if _score(other_judged) > _score(judged):
            outcome, judged = other, other_judged
    return outcome, judged, notes


def _score(judged: Verdict) -> tuple:
    """Bit-exact first, then the higher worst-frame encoded PSNR."""
    value = judged.encoded.psnr_min
    return (judged.bit_exact, float("-inf") if value is None else value)


def _record(result: PreviewResult, outcome: RenderOutcome, judged: Verdict, notes: list[str]) -> None:
    """Fill the result from the render's decisions and the comparison's views."""
    match = outcome.stack
    result.status = judged.status
    result.encoded, result.raw, result.raw_golden, result.thresholds = (judged.encoded, judged.raw, judged.raw_golden,
                                                                          judged.thresholds)
    result.exact_expected = match.exact_expected and not outcome.exact_impossible
    result.lora_saved_dtype = outcome.lora_saved_dtype
    result.stack_diff, result.stack_unknown, result.stack_reason = (match.diff or None, list(match.unknown) or None,
                                                                    match.reason())
    record_render(result, outcome, notes)
    result.message = judged.encoded.mismatch or _describe(result)
    if not result.bit_exact and outcome.exact_impossible:
        result.message += f"; max |diff| {judged.encoded.max_abs_diff} levels; {outcome.exact_impossible[0]}"
    if not result.bit_exact and match.reason():
        result.message += f"; {match.reason()}"


def record_render(result: PreviewResult, outcome: RenderOutcome, notes: list[str]) -> None:
    """Fill the result with how it was rendered (also for renders with no golden: ``wan-parity render``/``serve``)."""
    import hashlib

    profile, plan = outcome.profile, outcome.settings.quantization
    result.pinned = outcome.pinned
    result.device, result.offload = outcome.device, outcome.offload
    result.quantization = None if plan is None else plan.describe()
    result.profile, result.profile_exact, result.profile_settings = profile.name, profile.exact, profile_settings(profile)
    result.approximate, result.notes, result.trace = outcome.approximate or None, notes, outcome.trace
    result.seconds = outcome.seconds
    result.frames_sha256 = hashlib.sha256(outcome.frames.tobytes()).hexdigest()


def _write_render(result: PreviewResult, target: PreviewTarget, outcome: RenderOutcome, options: RunOptions) -> None:
    """The render as ai-toolkit would have saved it (and, with --save-frames, losslessly) under --out."""
    from .media import save_npy_atomic, write_like_aitk

    preview = target.preview
    stem = Path(preview.golden).stem
    folder = Path(options.out) / "renders" / safe_name(preview.case)
    folder.mkdir(parents=True, exist_ok=True)
    result.render_path = str(write_like_aitk(folder / f"{stem}.{preview.golden_ext}", outcome.frames, preview.sample.fps))
    if options.save_frames:
        result.frames_path = str(save_npy_atomic(folder / f"{stem}.npy", outcome.frames))


def _describe(result: PreviewResult) -> str:
    """The result's one line: exact, or the rounded numbers and the rule that passed or failed them."""
    if result.bit_exact:
        return "bit-exact with the golden preview"
    verdict = "passes" if result.status == "pass" else "fails"
    return (f"encoded PSNR min {fmt_db(result.psnr_min)} dB, SSIM min {fmt_db(result.ssim_min, 4)} (worst frame "
            f"{result.worst_frame}); {verdict} {result.rule()}")


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


def run_targets(targets: list[PreviewTarget], options: RunOptions, on_result=None, progress=None,
                engine: Engine | None = None) -> tuple[dict, list[PreviewResult]]:
    """Run all targets in an order that reuses loaded models and LoRAs; returns (environment, results).

    With ``--resume`` a finished result is reused only when it was made with this run's settings
    (:func:`result_identity`); every earlier result is read before anything renders, so a corrupt one stops the run
    at once."""
    engine = engine or Engine(options, progress=progress)
    ordered = sorted(targets, key=lambda t: (t.model_name, str(t.preview.lora), t.preview.case, t.preview.step, t.preview.index))
    earlier = _earlier_results(ordered, options)
    results = []
    for target in ordered:
        result, changed = _reusable(earlier.get(target.key), engine, target)
        if result is None:
            result = run_one(engine, target)
            if changed:
                result.notes.append(f"re-rendered under --resume: the earlier result was made with other {changed}")
            if options.out is not None:
                write_json_atomic(result_file(options.out, target), result.to_json())
        results.append(result)
        if on_result is not None:
            on_result(result)
    return engine.environment(), results


def result_identity(engine: Engine, target: PreviewTarget) -> dict:
    """What decides a preview's result besides the code: the sampler choice, the stack, the thresholds, the options
    that pick the models, and the identity (size, mtime) of the LoRA and golden files."""
    from dataclasses import asdict

    from .numbers import to_json

    def stat(path) -> dict | None:
        try:
            info = Path(path).stat()
        except (OSError, TypeError):
            return None
        return {"path": str(path), "size": info.st_size, "mtime_ns": info.st_mtime_ns}

    o, p = engine.options, target.preview
    threads = target.threads if target.threads and o.threads is None else engine.threads
    try:
        device = engine.device_for(target)
        stack = {**engine.stack_here(device), "threads": threads}
    except HarnessError:  # a device this machine lacks: the render reports it as the preview's error
        device, stack = target.device, None
    identity = {
        "profile": o.profile or target.profile or "auto", "device": device, "offload": o.offload,
        "stack": stack, "golden_stack": target.golden_stack,
        "thresholds": asdict(target.thresholds) if target.thresholds is not None else None,
        "models": {"base_model": o.base_model, "vae": o.vae or target.vae, "ara": o.ara, "name": target.model_name},
        "lora": None if p.lora is None else {s: stat(getattr(p.lora, s)) for s in ("high", "low")},
        "golden": stat(p.golden), "golden_raw": stat(p.golden_raw) if p.golden_raw else None,
    }
    return json.loads(json.dumps(to_json(identity), default=str))  # as it reads back from a result file


def _earlier_results(targets: list[PreviewTarget], options: RunOptions) -> dict[str, PreviewResult]:
    """``--resume``: the results already in --out, by key; a corrupt one is one error line naming it."""
    from .limits import parse_json

    if not options.resume or options.out is None:
        return {}
    found = {}
    for target in targets:
        done = result_file(options.out, target)
        if not done.is_file():
            continue
        try:
            found[target.key] = PreviewResult.from_json(parse_json(done.read_text(encoding="utf-8"), done), done)
        except (HarnessError, UnicodeDecodeError, OSError) as exc:
            reason = exc.line() if isinstance(exc, HarnessError) else f"{done}: {exc}"
            raise HarnessError(None, "--resume", f"{reason}; delete that result (it is rendered again) or run "
                                                 "without --resume") from None
    return found


def _reusable(earlier: PreviewResult | None, engine: Engine, target: PreviewTarget):
    """(the earlier result, None) when it was made with this run's settings, else (None, what changed)."""
    if earlier is None:
        return None, None
    now = result_identity(engine, target)
    if earlier.identity == now:
        earlier.resumed = True
        return earlier, None
    if not isinstance(earlier.identity, dict):
        return None, "settings (it records none)"
    changed = sorted(k for k in now if earlier.identity.get(k) != now[k])
    return None, "settings (" + ", ".join(changed) + ")"
