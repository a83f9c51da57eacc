"""``wan-parity render``: new prompts rendered exactly as ai-toolkit would, written as ai-toolkit writes previews.

The prompts come from flags, a prompts file or a runcomfy-style request (:mod:`harness.generate` makes them
golden-less targets); :func:`render_one` renders one with the engine and writes an animated WebP with ai-toolkit's
encoder settings (``media.write_like_aitk``), plus an MP4 and lossless frames on request. ``wan-parity serve`` renders
through the same function, so a served request and ``render`` of the same request give the same bytes. (Not named
``render_*``: ``harness.render`` is the renderer package, which must not reach into the runner.)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import HarnessError
from .result import PreviewResult

RENDERED = "rendered"  # PreviewResult.status of a render with no golden
SETTING_FLAGS = (  # (flag, sample item key, type, help)
    ("--seed", "seed", int, "seed (default: the --like preview's, else 42); the same for every prompt"),
    ("--width", "width", int, "width before ai-toolkit's /16 snapping (default: --like's, else 1024)"),
    ("--height", "height", int, "height before snapping (default: --like's, else 1024)"),
    ("--num-frames", "num_frames", int, "frames before 4k+1 snapping (default: --like's, else 41)"),
    ("--fps", "fps", int, "frames per second of the WebP (default: --like's, else 16)"),
    ("--sample-steps", "sample_steps", int, "denoising steps (default: --like's, else 25)"),
    ("--guidance-scale", "guidance_scale", float, "CFG scale (default: --like's, else 4.0)"),
    ("--neg", "neg", str, "negative prompt (default: --like's, else empty)"),
    ("--multiplier", "network_multiplier", float, "LoRA multiplier for both experts (ai-toolkit merges one multiplier "
                                                  "unless the model is quantized)"),
    ("--ctrl-img", "ctrl_img", str, "control image for every prompt (default: --like's)"),
)


def add_render_arguments(parser: argparse.ArgumentParser) -> None:
    """render's own flags (the shared ones come from the options table)."""
    parser.add_argument("source", nargs="?", type=Path, metavar="PROMPTS_OR_REQUEST",
                        help="a prompts file (.txt one per line, or YAML/JSON sample items) or a runcomfy request JSON")
    parser.add_argument("--prompt", action="append", default=[], metavar="TEXT",
                        help="a prompt (repeatable); [trigger] and inline --flags work as in ai-toolkit")
    parser.add_argument("--like", type=Path, metavar="JOB_DIR",
                        help="an ai-toolkit output folder: render as its previews would have looked (model, "
                             "quantization, stack, trigger word, sample settings)")
    parser.add_argument("--like-sample", type=int, default=0, metavar="I",
                        help="which of the job's samples to inherit (seed, size, control image...; default 0)")
    parser.add_argument("--lora-step", type=int, metavar="N",
                        help="with --like: the checkpoint of step N (0: none; default the final one)")
    parser.add_argument("--lora-high", metavar="FILE", help="without --like: the high-noise expert's LoRA")
    parser.add_argument("--lora-low", metavar="FILE", help="without --like: the low-noise expert's LoRA")
    parser.add_argument("--multiplier-high", type=float, metavar="M", help="the high-noise expert's multiplier")
    parser.add_argument("--multiplier-low", type=float, metavar="M", help="the low-noise expert's multiplier")
    parser.add_argument("--trigger-word", metavar="WORD", help="replaces [trigger] (default: --like's)")
    for flag, key, kind, text in SETTING_FLAGS:
        metavar = "PATH" if key == "ctrl_img" else {int: "N", float: "X", str: "TEXT"}[kind]
        parser.add_argument(flag, type=kind, help=text, metavar=metavar)
    parser.add_argument("--mp4", action="store_true", help="also write an H.264 .mp4 beside each WebP")


# ---------------------------------------------------------------- what to render


def render_targets(args) -> tuple[object, list]:
    """(RunOptions, targets) from the arguments: YAML only, so the CPU pin can follow before torch starts."""
    from .options import resolve
    from .sources.runcomfy import is_runcomfy_request
    from .stack import load_stack
    from .targets import with_golden_stack

    options = resolve("render", vars(args)).options
    source = args.source
    if source is not None and not source.is_file():
        raise HarnessError(source, None, "not found; give a prompts file or a request JSON")
    if source is not None and is_runcomfy_request(source):
        targets = _request(args, options, source)
    else:
        targets = _prompts(args, options, source)
    check_base_model(targets, options)
    return options, with_golden_stack(targets, load_stack(args.golden_stack) if args.golden_stack else None)


def basis_of(args, file: Path | None = None):
    """``--like`` or the stand-in made from ``--lora-high/--lora-low`` (shared with ``serve``)."""
    from .generate import COMMAND_LINE, like_job, stand_in

    if args.like is not None:
        for flag in ("lora_high", "lora_low"):
            if getattr(args, flag, None):
                raise HarnessError(None, "--" + flag.replace("_", "-"), "with --like the LoRA is the job's "
                                                                         "checkpoint; choose it with --lora-step")
        return like_job(args.like, args.like_sample, args.lora_step)
    if getattr(args, "lora_step", None) is not None:
        raise HarnessError(None, "--lora-step", "needs --like JOB_DIR (without it, give --lora-high/--lora-low)")
    return stand_in(getattr(args, "lora_high", None), getattr(args, "lora_low", None), file=file or COMMAND_LINE)


def _prompts(args, options, source: Path | None) -> list:
    from .generate import COMMAND_LINE, prompt_targets, read_prompts_file

    block, items = read_prompts_file(source) if source is not None else ({}, [])
    items += [{"prompt": text} for text in args.prompt]
    if not items:
        raise HarnessError(None, "--prompt", "nothing to render; give --prompt TEXT, a prompts file or a request")
    basis = basis_of(args, source)
    if args.trigger_word:  # beats the --like job's
        basis.job.trigger_word = args.trigger_word
    settings = {key: getattr(args, flag[2:].replace("-", "_")) for flag, key, _, _ in SETTING_FLAGS}
    if settings["ctrl_img"]:
        settings["ctrl_img"] = str(Path(settings["ctrl_img"]).expanduser().absolute())
    return prompt_targets(basis, items, settings, block, _multipliers(args), options.path_map,
                          file=source or COMMAND_LINE)


def _multipliers(args) -> dict | None:
    """Per-expert multipliers (the unmerged path), or None for ai-toolkit's one multiplier."""
    if args.multiplier_high is None and args.multiplier_low is None:
        return None
    both = 1.0 if args.multiplier is None else args.multiplier
    return {"high": both if args.multiplier_high is None else args.multiplier_high,
            "low": both if args.multiplier_low is None else args.multiplier_low}


def _request(args, options, source: Path) -> list:
    """A request file: its own prompts, LoRAs and settings; the flags may only choose the model (``--like``)."""
    from .generate import read_request, request_targets

    given = [flag for flag, key, _, _ in SETTING_FLAGS if getattr(args, flag[2:].replace("-", "_")) is not None]
    given += [f"--{name.replace('_', '-')}" for name in ("lora_high", "lora_low", "multiplier_high", "multiplier_low",
                                                         "trigger_word") if getattr(args, name) is not None]
    if args.prompt or given:
        raise HarnessError(source, (["--prompt"] + given)[0] if args.prompt else given[0],
                           "a request carries its own prompts, LoRAs and settings; edit the request instead")
    return request_targets(read_request(source), basis_of(args, source), file=source, base_dir=source.parent,
                           path_map=options.path_map, cache_dir=Path(options.out) / "ctrl-cache", case=source.stem)


def check_base_model(targets: list, options) -> None:
    """Without a job there is no model name to resolve: --base-model is the model."""
    if options.base_model is None and any(not t.model_name for t in targets):
        raise HarnessError(None, "--base-model", "required without --like (no training job names the base model); "
                                                 "give the diffusers Wan 2.2 I2V folder")


# ---------------------------------------------------------------- rendering


def render_one(engine, target, folder: Path, stem: str, mp4: bool = False, save_frames: bool = False) -> PreviewResult:
    """Render one target with ai-toolkit's settings and write it as ai-toolkit writes previews (HarnessError for what
    the user must fix)."""
    from .media import save_npy_atomic, write_like_aitk, write_mp4
    from .runner import base_result, record_render

    result = base_result(target)
    outcome = engine.render(target, engine.baseline(target))
    record_render(result, outcome, list(outcome.notes) + list(target.preview.extra.get("notes", [])) +
                  [target.preview.extra.get("merge_reason", "")])
    fps, frames = target.preview.sample.fps, outcome.frames
    ext = "webp" if len(frames) > 1 else target.preview.extra.get("ext", "jpg")
    result.render_path = str(write_like_aitk(Path(folder) / f"{stem}.{ext}", frames, fps))
    if mp4:
        result.mp4_path = str(write_mp4(Path(folder) / f"{stem}.mp4", frames, fps))
    if save_frames:
        result.frames_path = str(save_npy_atomic(Path(folder) / f"{stem}.npy", frames))
    result.status = RENDERED
    result.message = (f"{target.preview.sample.width}x{target.preview.sample.height}x{target.preview.sample.num_frames}"
                      f", seed {target.preview.sample.seed}, {result.profile}, LoRA {result.lora_path}")
    return result


def output_stem(target) -> str:
    """``<case>_<index>``, safe as one file name."""
    from .layout import safe_name

    return safe_name(f"{target.preview.case}_{target.preview.index}")


def render_main(options, targets: list, mp4: bool = False) -> int:
    """Render every target into ``--out`` and write ``results.json`` (status ``rendered``); exit code 0."""
    from .engine import Engine, torch_device_type
    from .fsutil import write_json_atomic
    from .generate import on_device
    from .result import results_document

    engine = Engine(options)
    on_device(targets, torch_device_type(engine.device))
    results = []
    for i, target in enumerate(targets, start=1):
        result = render_one(engine, target, Path(options.out), output_stem(target), mp4=mp4,
                            save_frames=options.save_frames)
        print(f"[{i}/{len(targets)}] {result.render_path}: {result.message} ({result.seconds:.1f} s)", file=sys.stderr)
        results.append(result)
    path = write_json_atomic(Path(options.out) / "results.json", results_document(engine.environment(), results))
    print(f"results: {path}", file=sys.stderr)
    return 0
