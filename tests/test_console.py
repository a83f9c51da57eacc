"""What `wan-parity run` prints, on a terminal and off one (a CI log): whole keys, a summary, the next command."""

from __future__ import annotations

import io

import numpy as np

from harness.console import print_results, result_line
from harness.metrics import Thresholds, compare_clips
from harness.result import PreviewResult, summary_line
from tests.oracle_paths import PATH_MAP, needs_oracle, output_dir

LONG_CASE = "oracle_case_a_with_a_long_descriptive_name[/]x[bold]"


class Terminal(io.StringIO):
    def isatty(self):
        return True


def _result(status: str, index: int = 0) -> PreviewResult:
    golden = np.zeros((2, 8, 8, 3), np.uint8)
    render = golden.copy()
    render[1, 2, 2] = 40 if status == "fail" else 0
    return PreviewResult(key=f"{LONG_CASE}::250::{index}", case=LONG_CASE, step=250, index=index, status=status,
                         message="a message", source="cases/job [x].yaml", encoded=compare_clips(golden, render),
                         thresholds=Thresholds(require_bit_exact=False))


def test_off_a_terminal_every_key_is_whole_and_the_summary_and_next_command_follow():
    out = io.StringIO()
    print_results([_result("pass"), _result("fail", 1), PreviewResult(key="k::0::0", case="k", step=0, index=0,
                                                                        status="unreproducible", message="seed -1")],
                  out, diagnose_options=" --device cpu")
    text = out.getvalue()
    assert f"{LONG_CASE}::250::0" in text and f"{LONG_CASE}::250::1" in text
    assert "wan-parity: 1 passed, 1 failed, 1 unreproducible, 0 errors (1 bit-exact)" in text
    assert "next: wan-parity diagnose 'cases/job [x].yaml' --device cpu --steps 250 --samples 1" in text
    assert "--samples 0" not in text  # only failing previews get a hint


def test_on_a_terminal_names_are_text_not_markup(monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")
    out = Terminal()
    print_results([_result("fail")], out)
    assert f"{LONG_CASE}::250::0" in out.getvalue()


def test_result_line_rounds_numbers():
    line = result_line(_result("fail"))
    assert line.startswith("FAIL") and "dB" in line and ".0000000" not in line


def test_summary_line_counts_errors():
    results = [PreviewResult(key="a", case="a", step=0, index=0, status="error", message="bad")]
    assert summary_line(results) == "0 passed, 0 failed, 0 unreproducible, 1 errors (0 bit-exact)"


@needs_oracle
def test_a_failing_run_in_a_ci_log(tmp_path, capsys):
    """A forced wrong profile on the CPU oracle: one progress line per preview, the rule named, the next command."""
    from harness.cli import main

    folder = output_dir("case_a")
    rc = main(["run", str(folder), "--path-map", PATH_MAP, "--out", str(tmp_path / "out"), "--no-report",
               "--device", "cpu", "--steps", "0", "--profile", "diffusers-stock"])
    captured = capsys.readouterr()
    progress = [line for line in captured.err.splitlines() if line.startswith("[")]
    assert rc == 1, captured
    assert len(progress) >= 2 and progress[0].startswith("[1/") and "FAIL" in progress[0]
    assert "fails thresholds PSNR >= 30 dB, SSIM >= 0.9" in captured.out or "fails bit-exact required" in captured.out
    assert "passed, " in captured.out and " failed, " in captured.out
    assert f"next: wan-parity diagnose {folder} --path-map {PATH_MAP}" in captured.out


def test_diagnose_progress_is_one_line_per_variant():
    from harness.console import variant_progress

    out = io.StringIO()
    callback = variant_progress(out)
    callback("c::0::0", "baseline", 1, 3)
    callback("c::0::0", "shift 3", 2, 3)
    assert out.getvalue().splitlines() == ["[diagnose 1/3] c::0::0: baseline", "[diagnose 2/3] c::0::0: shift 3"]
