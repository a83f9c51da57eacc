"""``wan-parity``: argument parsing and exit codes only; the work happens in the modules it calls.

Exit codes (README "Exit codes"): 0 every check passed, 1 some preview drifted, 2 bad input or usage, 3 nothing was
compared (every preview unreproducible, or none selected).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import HarnessError


def _add_options(parser: argparse.ArgumentParser, command: str) -> None:
    """The options table's rows for this command (harness.options): flags, defaults and help in one place."""
    from .options import options_for

    for option in options_for(command):
        kwargs = {"dest": option.dest, "default": option.default_for(command), "help": option.help_for(command)}
        if option.action == "store_true":
            kwargs["action"] = "store_true"
        elif option.action == "toggle":
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs.update(type=_reader(option, command), metavar=option.metavar_for())
            if option.action == "append":
                kwargs.update(action="append", default=list(kwargs["default"]))
        parser.add_argument(option.flag(command), **kwargs)


def _reader(option, command: str):
    """argparse ``type``: the table's parser; a bad value is one HarnessError line naming the flag."""
    return lambda text: option.read(text, None, option.flag(command))


def _finite(flag: str):
    """argparse ``type`` for a finite number (``nan``/``inf`` parse as floats and would poison every comparison)."""
    def parse(text: str) -> float:
        from .limits import finite_number

        return finite_number(text, None, flag)
    return parse


def _whole(flag: str):
    """argparse ``type`` for a whole number >= 1."""
    def parse(text: str) -> int:
        if not text.strip().isdigit() or int(text) < 1:
            raise HarnessError(None, flag, f"must be a whole number >= 1, got {text!r}")
        return int(text)
    return parse


TARGET_HELP = "case file, folder of case files, ai-toolkit output folder, or runcomfy request JSON"


DESCRIPTION = ("Re-render the sample previews ai-toolkit made while training a Wan 2.2 I2V LoRA,\n"
               "compare them frame by frame with the goldens, and explain any drift.")
EPILOG = """first steps:
  wan-parity demo                                   the whole flow on a tiny offline model
  wan-parity run OUTPUT_DIR --path-map OLD=NEW      check an ai-toolkit output folder
  wan-parity diagnose OUTPUT_DIR --steps S --samples I    name the setting behind a drift
  wan-parity report SHARD_DIR... --out DIR          merge shards into one report
exit codes: 0 every check passed, 1 some preview drifted, 2 bad input or usage, 3 nothing was compared"""


def _global_flags() -> argparse.ArgumentParser:
    """Flags every command takes, before or after its name (``--debug`` at either place)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks instead of one-line errors")
    return common


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .options import by_name

    parser = argparse.ArgumentParser(prog="wan-parity", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    parser.add_argument("--version", action="version", version=f"wan-parity {__version__}")
    common = _global_flags()
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_parser = sub.add_parser

    def with_globals(name, **kwargs):
        return add_parser(name, parents=kwargs.pop("parents", []) + [common], **kwargs)

    sub.add_parser = with_globals

    run = sub.add_parser("run", help="re-render previews and compare them with their goldens")
    run.add_argument("targets", nargs="+", metavar="TARGET", help=TARGET_HELP)
    _add_options(run, "run")
    run.add_argument("--no-report", action="store_true", help="skip the HTML report")

    imp = sub.add_parser("import", help="turn an ai-toolkit output folder into a committed case")
    imp.add_argument("output_dir", type=Path, help="the ai-toolkit output folder (config.yaml, samples/, checkpoints)")
    imp.add_argument("--name", required=True, help="case name: letters, digits, . _ - (the file and folder names)")
    imp.add_argument("--cases-dir", type=Path, default=Path("cases"), help="where the case file goes (default cases/)")
    imp.add_argument("--golden-dir", type=Path, default=Path("golden"),
                     help="where the copied goldens go, as golden/NAME/ (default golden/)")
    imp.add_argument("--path-map", action="append", default=[], metavar="OLD=NEW",
                     help="rewrite a training-machine path prefix (repeatable; stored in the case)")
    imp.add_argument("--force", action="store_true", help="overwrite an existing case")
    imp.add_argument("--golden-stack", type=Path, metavar="FILE",
                     help="the stack that rendered the previews (default: the folder's golden_stack.yaml, if any)")

    fpr = sub.add_parser("fingerprint", help="print this machine's numerics-deciding stack (keep it beside the job)")
    fpr.add_argument("--json", action="store_true", help="JSON instead of YAML")
    fpr.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N: the device the renders use")
    fpr.add_argument("--threads", type=_reader(by_name("threads"), "fingerprint"),
                     help="CPU threads to record (default: torch's current count)")

    rep = sub.add_parser("report", help="write the HTML report from results JSON files (merges shards)")
    rep.add_argument("paths", nargs="+", type=Path, metavar="RESULTS", help="results.json files or --out folders")
    rep.add_argument("--out", type=Path, default=Path("parity-out"), help="report folder (default parity-out/)")
    rep.add_argument("--baseline", type=Path, metavar="PREVIOUS.json",
                     help="previous run's results (or --out folder): mark regressions, exit 1 if any")
    rep.add_argument("--psnr-drop", type=_finite("--psnr-drop"), default=1.0, metavar="DB",
                     help="encoded PSNR-min drop counted as a regression (default 1.0)")
    rep.add_argument("--regressions-only", action="store_true",
                     help="exit 1 only for regressions against --baseline, not for failures standing since then")
    rep.add_argument("--self-contained", action="store_true",
                     help="one report.html with every picture inlined, to share with nothing beside it")
    rep.add_argument("--max-pictures", type=_whole("--max-pictures"), default=None, metavar="N",
                     help="draw pictures for at most N previews, those most in need first (default 24)")

    cal = sub.add_parser("calibrate", help="measure this stack's noise floor and suggest thresholds")
    cal.add_argument("targets", nargs="+", metavar="TARGET", help=TARGET_HELP)
    _add_options(cal, "calibrate")
    cal.add_argument("--perturb", choices=["attention", "threads", "stack"],
                     help="also render under a perturbed stack; stack: every real alternative here (ISA caps, threads; "
                          "SDPA, TF32 on CUDA), stored beside the case as the envelope run and pytest judge by")
    cal.add_argument("--previews", type=_whole("--previews"), default=3,
                     help="how many previews to calibrate on (default 3)")
    cal.add_argument("--margin-db", type=_finite("--margin-db"), default=3.0,
                     help="suggested PSNR minimum this far below the lowest observed (default 3.0)")
    cal.add_argument("--ssim-margin", type=_finite("--ssim-margin"), default=0.02,
                     help="suggested SSIM minimum this far below the lowest observed (default 0.02)")

    dia = sub.add_parser("diagnose", help="re-render failing previews under single-knob variants and name the cause")
    dia.add_argument("targets", nargs="+", metavar="TARGET", help=TARGET_HELP)
    _add_options(dia, "diagnose")
    dia.add_argument("--families", help="only these knob families (comma-separated): profile, shift, boundary, lora, "
                                        "multiplier, merge, posterior, dtype, seed, negative, resize, quantization, "
                                        "merge-history, gpu-layout")
    dia.add_argument("--force", action="store_true", help="sweep even previews that are already bit-exact")
    dia.add_argument("--exhaustive", action="store_true",
                     help="render every variant (default: stop at the first bit-exact one, and confirm a setting "
                          "found on one preview of a job on its later previews with one render each)")

    chk = sub.add_parser("selfcheck", help="render one preview twice; fail loudly if this stack is nondeterministic")
    chk.add_argument("targets", nargs=1, metavar="TARGET", help=TARGET_HELP)
    _add_options(chk, "selfcheck")
    chk.add_argument("--preview", type=int, default=0, help="which reproducible preview (default the first)")

    ren = sub.add_parser("render", help="render new prompts exactly as ai-toolkit would (WebP like its previews)")
    from .generate_cmd import add_render_arguments

    add_render_arguments(ren)
    _add_options(ren, "render")

    srv = sub.add_parser("serve", help="HTTP API: the seed service's requests rendered with ai-toolkit's exact sampler")
    from .serve.server import add_serve_arguments

    add_serve_arguments(srv)
    _add_options(srv, "serve")

    sub.add_parser("bench", help="time the exact path on the real A14B architecture with random weights",
                   add_help=False, prefix_chars="\0")  # options are bench's own: `wan-parity bench --help`

    demo = sub.add_parser("demo", help="build a tiny model offline, run the bundled case, write the report")
    demo.add_argument("--out", type=Path, default=Path("parity-out/demo"),
                      help="model, results and report (default parity-out/demo/)")
    return parser


def _options_and_targets(args, **extra):
    """Shared by run, diagnose, calibrate and selfcheck: validated options and the selected previews."""
    from .options import resolve
    from .targets import collect, select, unique, with_golden_stack

    resolved = resolve(args.command, vars(args), **extra)
    options = resolved.options
    targets = []
    for target in args.targets:
        targets.extend(collect(target, options.path_map, cache_dir=args.out / "ctrl-cache",
                               lora_overrides=options.lora_overrides))
    targets = select(unique(targets), resolved.steps, resolved.samples, resolved.shard)
    if not targets and resolved.shard is None:
        raise HarnessError(None, "TARGET", "no previews selected (check --steps/--samples and the samples/ folder)")
    _check_writable(args.out)
    pin_for(with_golden_stack(targets, _golden_stack(args)))
    return options, targets


def _golden_stack(args) -> dict | None:
    """The ``--golden-stack`` file, read and checked, or None."""
    from .stack import load_stack

    return load_stack(args.golden_stack) if args.golden_stack else None


def pin_for(targets) -> dict:
    """Cap the CPU ISAs to the goldens' stack before torch starts (all targets of one process must agree)."""
    from .stack import apply_pin, merge_pins, plan_pin

    return apply_pin(merge_pins([plan_pin(t.golden_stack) for t in targets if t.golden_stack]))


def cmd_run(args) -> int:
    from .fsutil import refuse_non_regular, write_json_atomic
    from .result import exit_code, results_document

    from .console import preview_progress, print_errors, print_results
    from .runner import run_targets

    options, targets = _options_and_targets(args, save_frames=args.save_frames, resume=args.resume)
    if args.json:
        refuse_non_regular(args.json)  # before minutes of rendering, not after
    if not targets:  # only a --shard can select nothing: the other shards hold every group, which is no failure
        print(f"wan-parity: shard {args.shard[0]}/{args.shard[1]} holds no previews (the selection's groups went to "
              "other shards); nothing to compare here", file=sys.stderr)
        return 0
    with preview_progress(len(targets)) as (on_result, on_step):
        environment, results = run_targets(targets, options, on_result=on_result, progress=on_step)
    document = results_document(environment, results)
    write_json_atomic(args.out / "results.json", document)
    if args.json:
        write_json_atomic(args.json, document)
    if not args.no_report:
        _write_report(document, args.out)
    print_results(results, diagnose_options=_diagnose_options(args))
    print_errors(results)
    return exit_code(results)


def _diagnose_options(args) -> str:
    """The run's options that ``diagnose`` needs to find the same files and stack (for the printed next command)."""
    import shlex

    parts = [f" --path-map {shlex.quote(m)}" for m in args.path_map]
    for flag in ("base_model", "vae", "ara", "golden_stack", "threads", "profile"):
        value = getattr(args, flag, None)
        if value is not None:
            parts.append(f" --{flag.replace('_', '-')} {shlex.quote(str(value))}")
    if args.device != "auto":
        parts.append(f" --device {shlex.quote(args.device)}")
    return "".join(parts)


def _check_writable(out: Path) -> None:
    import os
    import tempfile

    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".write-test.")  # a fresh name: never follows a planted link
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise HarnessError(out, "--out", f"output directory is not writable ({exc.strerror})") from None


def _write_report(document: dict, out: Path) -> None:
    try:
        from .report import write_report
    except ImportError:
        return
    path = write_report(document, out)
    print(f"report: {path}", file=sys.stderr)


def cmd_import(args) -> int:
    from .case_import import import_output
    from .paths import PathMap

    path = import_output(args.output_dir, args.name, cases_dir=args.cases_dir, golden_dir=args.golden_dir,
                         path_map=PathMap(args.path_map), force=args.force,
                         golden_stack=_golden_stack(args))
    print(f"wrote {path}")
    return 0


def cmd_report(args) -> int:
    from .report import build_report

    from .console import count_progress

    limit = {} if args.max_pictures is None else {"max_pictures": args.max_pictures}
    outcome = build_report(args.paths, args.out, baseline=args.baseline, psnr_drop_db=args.psnr_drop,
                           self_contained=args.self_contained, progress=count_progress("report"), **limit)
    outcome.regressions_only = args.regressions_only
    print(f"report: {outcome.path}")
    if outcome.failing_count and not args.regressions_only:
        print(f"report: {outcome.failing_count} failing previews (exit 1; --regressions-only exits 0 for failures "
              "that are not regressions)", file=sys.stderr)
    if outcome.exit_code == 3:
        print("report: nothing was compared: no result passed or failed (every one unreproducible, or none)",
              file=sys.stderr)
    if args.baseline is not None:
        c = outcome.document["baseline"]["counts"]
        print(f"vs baseline: {c['regression']} regressions, {c['standing_failure']} standing failures, {c['new']} new, "
              f"{c['improvement']} improvements, {c['missing']} missing", file=sys.stderr)
    return outcome.exit_code


def cmd_calibrate(args) -> int:
    from .calibrate import calibrate_main

    options, targets = _options_and_targets(args)
    return calibrate_main(targets, options, args.out, perturb=args.perturb, max_previews=args.previews,
                          margin_db=args.margin_db, ssim_margin=args.ssim_margin)


def cmd_diagnose(args) -> int:
    from .console import variant_progress
    from .diagnose import diagnose_main, format_table

    options, targets = _options_and_targets(args)
    families = [f.strip() for f in args.families.split(",")] if args.families else None
    document, code = diagnose_main(targets, options, args.out, families=families, force=args.force,
                                   progress=variant_progress(), exhaustive=args.exhaustive)
    for entry in document["diagnoses"]:
        if entry.get("ranked") and entry["status"] != "exact":
            print(format_table(entry))
        else:
            print(f"{entry['key']}: {entry['status']}: {entry.get('explanation') or entry.get('message') or ''}")
    print(f"diagnosis: {Path(args.out) / 'diagnosis.json'}", file=sys.stderr)
    print(f"report: {document.get('report') or document.get('report_error')}", file=sys.stderr)
    return code


def cmd_selfcheck(args) -> int:
    from .selfcheck import selfcheck_main

    options, _ = _options_and_targets(args)
    return selfcheck_main(args.targets[0], options, args.preview)


def cmd_fingerprint(args) -> int:
    import torch

    from .engine import resolve_device
    from .stack import dump_stack, fingerprint

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    sys.stdout.write(dump_stack(fingerprint(resolve_device(args.device)), as_json=args.json))
    return 0


def cmd_render(args) -> int:
    from .generate_cmd import render_main, render_targets

    options, targets = render_targets(args)
    pin_for(targets)
    return render_main(options, targets, mp4=args.mp4)


def cmd_serve(args) -> int:
    from .serve.server import serve_main, server_basis

    basis = server_basis(args)
    pin_for([basis])  # the job's golden stack (--like), before torch starts
    return serve_main(args, basis)


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(args.out)


COMMANDS = {"run": cmd_run, "import": cmd_import, "report": cmd_report, "calibrate": cmd_calibrate, "diagnose": cmd_diagnose,
            "selfcheck": cmd_selfcheck, "fingerprint": cmd_fingerprint, "demo": cmd_demo, "render": cmd_render,
            "serve": cmd_serve}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # its own parser (harness.bench); only the error handling is shared
        from .bench import bench_main

        try:
            return bench_main(argv[1:])
        except HarnessError as exc:
            print(f"error: {exc.line()}", file=sys.stderr)
            return 2
    try:
        args = build_parser().parse_args(argv)
    except HarnessError as exc:  # a value the options table refuses (argparse's own usage errors exit 2 there)
        if "--debug" in argv:
            raise
        print(f"error: {exc.line()}", file=sys.stderr)
        return 2
    try:
        return COMMANDS[args.command](args)
    except HarnessError as exc:
        if args.debug:
            raise
        print(f"error: {exc.line()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished previews are kept in --out; rerun with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
