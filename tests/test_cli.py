"""The command line's own surface: --version, help for people, global flags on either side of the command."""

from __future__ import annotations

import pytest

from harness import __version__
from harness.cli import build_parser, main


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"wan-parity {__version__}"


def test_top_level_help_is_for_users(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "ai-toolkit" in text and "wan-parity demo" in text and "exit codes" in text
    assert "argument parsing" not in text  # the module docstring is for developers


@pytest.mark.parametrize("argv", [["--debug", "report", "missing.json"], ["report", "missing.json", "--debug"]])
def test_debug_before_or_after_the_command(argv):
    assert build_parser().parse_args(argv).debug is True
    with pytest.raises(Exception, match="file not found"):
        main(argv)  # --debug: the traceback, not the one-line error


def test_without_debug_an_error_is_one_line(capsys):
    assert main(["report", "missing.json"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: missing.json")


def test_every_option_has_help():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command").choices
    missing = [f"{name} {action.option_strings or action.dest}" for name, sub in subparsers.items() if name != "bench"
               for action in sub._actions if not action.help]
    assert not missing


def test_report_flags_self_contained_and_progress(tmp_path, capsys):
    """`report --self-contained` writes one page with nothing beside it; progress lines go to stderr."""
    import json

    from harness.result import PreviewResult, results_document

    results = [PreviewResult(key=f"c::0::{i}", case="c", step=0, index=i, status="unreproducible", message="seed -1")
               for i in range(3)] + [PreviewResult(key="c::1::0", case="c", step=1, index=0, status="error",
                                                   message="bad")]
    (tmp_path / "results.json").write_text(json.dumps(results_document({}, results)))
    main(["report", str(tmp_path / "results.json"), "--out", str(tmp_path / "out"), "--self-contained"])
    page = (tmp_path / "out" / "report.html").read_text()
    assert "report_assets/" not in page
    assert "[report 4/4]" in capsys.readouterr().err
