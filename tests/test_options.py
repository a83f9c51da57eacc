"""The options table (harness.options): both front ends generate their options from it, build the same RunOptions,
and follow one precedence: command line > case file > ini > default."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness import cli, options as opts
from harness.case import load_case
from harness.demo import DEMO_CASE
from harness.errors import HarnessError
from harness.pytest_plugin import run_settings
from harness.render import profiles
from harness.engine import choose_profile

pytest_plugins = ["pytester"]
ROOT = Path(__file__).resolve().parents[1]
CLI_ONLY = {"resume": "pytest reruns with its own --lf/--sw"}


def write_case(folder: Path, name: str, **keys) -> Path:
    """A case on the bundled demo goldens: it collects (six previews) without any model."""
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"schema": "wan-parity/case@1", "name": name, "golden_dir": str(DEMO_CASE), **keys}))
    return path


def comparable(options: opts.RunOptions) -> dict:
    return {**vars(options), "path_map": options.path_map.pairs}


# ---------------------------------------------------------------------------------------------- the table itself


def test_every_run_option_is_a_pytest_option(pytester):
    run, under_pytest = {o.name for o in opts.options_for("run")}, {o.name for o in opts.options_for("pytest")}
    assert run - under_pytest == set(CLI_ONLY)
    config = pytester.parseconfig()
    for option in opts.options_for("pytest"):
        config.getoption(option.ini)  # raises ValueError when the option was not added
        config.getini(option.ini)
    set_by_table = [o.field for o in opts.OPTIONS if o.field]
    assert sorted(set_by_table) == sorted(f.name for f in dataclasses.fields(opts.RunOptions)), "one row per field"


def test_every_option_has_help_text():
    assert all(o.help.strip() for o in opts.OPTIONS)
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name, sub in commands.items():
        if name == "bench":  # bench parses its own options (harness.bench.cli)
            continue
        for action in sub._actions:
            assert action.help, f"wan-parity {name} {action.option_strings or action.dest} has no help text"


def test_run_commands_keep_their_flags_and_defaults():
    for command, out in (("run", "parity-out"), ("calibrate", "parity-out/calibrate"),
                         ("diagnose", "parity-out/diagnose"), ("selfcheck", "parity-out/selfcheck")):
        args = cli.build_parser().parse_args([command, "T"])
        assert args.out == Path(out) and args.device == "auto" and args.offload == "none" and args.path_map == []
        assert args.steps is None and args.threads is None and args.profile == "auto"


def test_reading_options_and_case_files_never_imports_torch(tmp_path):
    """The CPU pin happens before torch starts: the table, case validation and collecting must not import it."""
    case = write_case(tmp_path, "a", profile="aitk-euler")
    code = ("import sys; from harness import cli, options; from harness.targets import collect; "
            f"args = cli.build_parser().parse_args(['run', {str(case)!r}, '--profile', 'aitk-unipc']); "
            "options.resolve('run', vars(args)); collect(args.targets[0]); print(sorted(m for m in sys.modules "
            "if m == 'torch' or m.startswith('torch.')))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------------------- profiles: the registry


@pytest.fixture
def new_profile(monkeypatch):
    """A profile added to the registry only (the one file a new profile needs)."""
    added = dataclasses.replace(profiles.PROFILES["aitk-euler"], name="my-new-profile")
    monkeypatch.setitem(profiles.PROFILES, added.name, added)
    return added.name


def test_case_profile_validation_uses_the_registry(tmp_path, new_profile):
    assert load_case(write_case(tmp_path, "a", profile=new_profile)).profile == new_profile
    with pytest.raises(HarnessError) as info:
        load_case(write_case(tmp_path, "b", profile="no-such-profile"))
    assert info.value.field == "profile" and ", ".join(profiles.profile_choices()) in info.value.message


def test_cli_and_pytest_name_the_registry_profiles(pytester, new_profile):
    assert cli.build_parser().parse_args(["run", "T", "--profile", new_profile]).profile == new_profile
    assert new_profile in opts.by_name("profile").help_for("run")
    assert run_settings(pytester.parseconfig("--parity-profile", new_profile)).options.profile == new_profile
    with pytest.raises(pytest.UsageError, match="--parity-profile: 'nope' is not one of auto, aitk-euler"):
        run_settings(pytester.parseconfig("--parity-profile", "nope"))


# ---------------------------------------------------------------------------------------------- one RunOptions


@pytest.fixture(autouse=True)
def eight_cpus(monkeypatch):
    """Thread counts are checked against this machine's CPUs (harness.limits); these tests use up to 3."""
    from harness import limits

    monkeypatch.setattr(limits, "cpu_count", lambda: 8)

INPUTS = {"base-model": "/models/base", "vae": "/models/vae", "device": "cpu", "threads": "3",
          "profile": "aitk-unipc", "ara": "/models/ara.safetensors", "offload": "experts", "out": "somewhere"}


def test_cli_and_pytest_build_the_same_run_options(pytester):
    argv = [part for name, value in INPUTS.items() for part in (f"--{name}", value)]
    argv += ["--path-map", "/a=/b", "--path-map", "/c=/d", "--save-frames", "--steps", "0,250", "--samples", "1"]
    from_cli = opts.resolve("run", vars(cli.build_parser().parse_args(["run", "T", *argv])))
    pytest_argv = [arg.replace("--", "--parity-", 1) if arg.startswith("--") else arg for arg in argv]
    from_pytest = run_settings(pytester.parseconfig(*pytest_argv))
    assert comparable(from_cli.options) == comparable(from_pytest.options)
    assert from_cli.options.threads == 3 and from_cli.options.path_map.pairs == [("/a", "/b"), ("/c", "/d")]
    assert (from_cli.steps, from_cli.samples) == (from_pytest.steps, from_pytest.samples) == ({0, 250}, {1})
    # the same values in the ini: options no case has land in RunOptions, case keys wait for the case
    lines = [f"parity_{name.replace('-', '_')} = {value}" for name, value in INPUTS.items()]
    pytester.makeini("[pytest]\n" + "\n".join(lines) + "\nparity_save_frames = true\n")
    from_ini = run_settings(pytester.parseconfig())
    assert (from_ini.options.offload, from_ini.options.ara, from_ini.options.out, from_ini.options.save_frames) == \
        ("experts", "/models/ara.safetensors", Path("somewhere"), True)
    assert from_ini.case_defaults == {"base_model": "/models/base", "vae": "/models/vae", "device": "cpu",
                                      "threads": 3, "profile": "aitk-unipc"}
    assert comparable(from_ini.options) == comparable(opts.resolve(
        "pytest", {}, {"offload": "experts", "ara": "/models/ara.safetensors", "out": "somewhere",
                       "save_frames": "true"}).options)


def test_bad_values_name_the_flag_or_the_ini_key(pytester, capsys):
    assert cli.main(["run", "T", "--threads", "0"]) == 2
    assert capsys.readouterr().err.strip() == ("error: --threads: must be a whole number from 1 to 8 (this machine "
                                               "has 8 CPUs), got 0")
    assert cli.main(["run", "T", "--threads", "100000"]) == 2  # torch segfaults setting it
    assert "got 100000" in capsys.readouterr().err
    with pytest.raises(pytest.UsageError, match=r"^--parity-steps: 'x' is not a comma-separated list"):
        run_settings(pytester.parseconfig("--parity-steps", "x"))
    ini = pytester.makeini("[pytest]\nparity_offload = most\n")
    with pytest.raises(pytest.UsageError, match=rf"^{ini}: parity_offload: 'most' is not one of none, experts"):
        run_settings(pytester.parseconfig())


# ---------------------------------------------------------------------------------------------- precedence


def test_cli_precedence_command_line_beats_case_beats_auto(tmp_path):
    """An explicit --profile/--threads/--device beats the case's value; ``auto`` (given or default) never does."""
    from harness.engine import Engine

    case = write_case(tmp_path, "pinned", profile="aitk-unipc-old", device="cuda", threads=2)

    def run(*flags):
        args = cli.build_parser().parse_args(["run", str(case), "--out", str(tmp_path / "out"), *flags])
        options, targets = cli._options_and_targets(args)
        return options, targets[0]

    for flags in ((), ("--profile", "auto")):
        options, target = run(*flags)
        assert choose_profile(target, options.profile, None)[0].name == "aitk-unipc-old"
        assert options.threads is None and options.device == "auto" and target.threads == 2
    options, target = run("--profile", "runcomfy", "--threads", "1", "--device", "cpu")
    assert choose_profile(target, options.profile, None)[0].name == "runcomfy"
    assert options.threads == 1
    assert Engine(options).device_for(target) == "cpu"  # the case says cuda: the command line wins


def test_pytest_precedence_command_line_beats_case_beats_ini(pytester):
    cases = pytester.mkdir("cases")
    write_case(cases, "pinned", profile="aitk-unipc-old", threads=2, device="cpu")
    write_case(cases, "open")
    pytester.makeini("[pytest]\nparity_profile = aitk-unipc\nparity_threads = 3\nparity_device = cpu\n")

    def collect(*args):
        items, _ = pytester.inline_genitems("-p", "no:cacheprovider", str(cases), *args)
        by_case = {item.target.preview.case: item.target for item in items}
        return items[0].config._parity.settings.options, by_case["pinned"], by_case["open"]

    options, pinned, open_ = collect()
    assert (options.profile, options.threads, options.device) == (None, None, "auto")  # the ini does not override
    assert (pinned.profile, pinned.threads) == ("aitk-unipc-old", 2)  # the case beats the ini
    assert (open_.profile, open_.threads, open_.device) == ("aitk-unipc", 3, "cpu")  # the ini fills in
    options, pinned, open_ = collect("--parity-profile", "runcomfy", "--parity-threads", "1")
    assert choose_profile(pinned, options.profile, None)[0].name == "runcomfy" and options.threads == 1
    assert open_.profile == "auto"  # the command line, not the ini, decides: the runner takes options.profile


def test_pytest_steps_and_samples_deselect(pytester):
    case = write_case(pytester.path, "open")
    _, calls = pytester.inline_genitems("-p", "no:cacheprovider", str(case), "--parity-steps", "0,500",
                                        "--parity-samples", "1")
    kept = calls.getcall("pytest_collection_finish").session.items
    assert sorted(item.name for item in kept) == ["open::0::1", "open::500::1"]
    deselected = [item for call in calls.getcalls("pytest_deselected") for item in call.items]
    assert len(deselected) == 4


def test_pytest_shards_partition_the_items(pytester):
    case = write_case(pytester.path, "open")
    names = []
    for index in (1, 2):
        _, calls = pytester.inline_genitems("-p", "no:cacheprovider", str(case), "--parity-shard", f"{index}/2")
        names.append({item.name for item in calls.getcall("pytest_collection_finish").session.items})
    _, calls = pytester.inline_genitems("-p", "no:cacheprovider", str(case))
    everything = {item.name for item in calls.getcall("pytest_collection_finish").session.items}
    assert not names[0] & names[1] and names[0] | names[1] == everything


# ---------------------------------------------------------------------------------------------- the demo


def test_demo_runs_without_the_cli(tmp_path, monkeypatch, capsys):
    """``wan-parity demo`` calls the runner and the report itself (no argv round trip through cli.main)."""
    import harness.targets as targets
    from harness.demo import run_demo

    source = ast.parse((ROOT / "harness" / "demo.py").read_text())
    imported = {node.module for node in ast.walk(source) if isinstance(node, ast.ImportFrom)}
    assert "cli" not in imported and "harness.cli" not in imported
    one = targets.from_output_dir
    monkeypatch.setattr(targets, "from_output_dir", lambda *a, **k: [t for t in one(*a, **k) if t.preview.step == 0][:1])
    assert run_demo(tmp_path) == 0
    captured = capsys.readouterr()
    assert "demo: tiny model and LoRAs built offline" in captured.out
    assert f"report: {tmp_path / 'report.html'}" in captured.err and (tmp_path / "results.json").is_file()
    assert "wan-parity: 1 passed, 0 failed, 0 unreproducible, 0 errors (1 bit-exact)" in captured.out


def test_the_bit_identical_shortcuts_default_on_and_turn_off_everywhere():
    """--fused-blocks and --lean-lora are on by default (proven bit-identical) and --no-… / ini false turn them off."""
    def built(argv):
        return opts.resolve("run", vars(cli.build_parser().parse_args(["run", "T", *argv]))).options

    default = built([])
    assert (default.fused_blocks, default.lean_lora) == (True, True)
    off = built(["--no-fused-blocks", "--no-lean-lora"])
    assert (off.fused_blocks, off.lean_lora) == (False, False)
    from_ini = opts.resolve("pytest", {"fused_blocks": False}, {"lean_lora": "false"}).options
    assert (from_ini.fused_blocks, from_ini.lean_lora) == (False, False)
    listed = subprocess.run([sys.executable, "-m", "pytest", "--parity-no-fused-blocks", "--parity-lean-lora", "-q",
                             "--co", "-p", "no:cacheprovider", "tests/test_architecture.py"],
                            cwd=ROOT, capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr[-500:]
