"""What ``wan-parity`` prints: readable on a terminal and in a CI log alike.

On a terminal: progress bars and a table. Off a terminal (CI logs, pipes): no bars and no cut columns, but one line
per finished preview as it finishes, and the results as whole lines. Both end with the summary line and, on a
failure, the command that explains it. Names from the user's files are printed as text, never as Rich markup.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager

from .numbers import fmt_db
from .result import PreviewResult, summary_line

FAILED = ("fail", "error")


def is_terminal(stream) -> bool:
    return bool(getattr(stream, "isatty", lambda: False)())


def result_line(r: PreviewResult) -> str:
    """One whole line per result (the CI-log form of a table row)."""
    numbers = "" if r.psnr_min is None else f" PSNR min {fmt_db(r.psnr_min)} dB, SSIM min {fmt_db(r.ssim_min, 4)};"
    return f"{(r.status or '?').upper():<14} {r.key}:{numbers} {r.message or ''}".rstrip()


def print_results(results: list[PreviewResult], stream=None, diagnose_options: str = "") -> None:
    """The results (a table on a terminal, whole lines elsewhere), the summary line, and what to run next."""
    stream = stream or sys.stdout
    if is_terminal(stream):
        _table(results, stream)
    else:
        for r in results:
            print(result_line(r), file=stream)
    print(f"wan-parity: {summary_line(results)}", file=stream)
    for line in next_steps(results, diagnose_options):
        print(line, file=stream)


def next_steps(results: list[PreviewResult], diagnose_options: str = "") -> list[str]:
    """For drift: the diagnose command (one per failing preview, at most three, then a count)."""
    failing = [r for r in results if r.status == "fail"]
    lines = [f"next: {r.diagnose_command(diagnose_options)}" for r in failing[:3]]
    if len(failing) > 3:
        lines.append(f"next: ... and {len(failing) - 3} more failing previews (see the report)")
    return lines


def _table(results: list[PreviewResult], stream) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title="wan-parity results")
    for column in ("preview", "status", "bit-exact", "PSNR min", "SSIM min", "message"):
        table.add_column(column, overflow="fold")
    for r in results:
        table.add_row(Text(r.key), r.status or "?", "yes" if r.bit_exact else "no", fmt_db(r.psnr_min, 2, "-"),
                      fmt_db(r.ssim_min, 4, "-"), Text(r.message or ""))
    Console(file=stream).print(table)


@contextmanager
def preview_progress(total: int, stream=None):
    """``(on_result, on_step)`` callbacks: bars on a terminal, else one line per finished preview."""
    stream = stream or sys.stderr
    if is_terminal(stream):
        with _bars(total, stream) as callbacks:
            yield callbacks
        return
    done = [0]

    def on_result(result: PreviewResult) -> None:
        done[0] += 1
        seconds = f" ({result.seconds:.1f} s)" if result.seconds is not None else ""
        print(f"[{done[0]}/{total}] {result_line(result)}{seconds}", file=stream, flush=True)

    yield on_result, None


@contextmanager
def _bars(total: int, stream):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(file=stream), transient=True, redirect_stdout=False) as bars:
        overall = bars.add_task("previews", total=total)
        steps = bars.add_task("denoise", total=None)

        def on_result(result) -> None:
            bars.advance(overall)
            bars.reset(steps)

        yield on_result, lambda: bars.advance(steps)


def print_errors(results: list[PreviewResult], stream=None) -> None:
    """Every error result's one line on stderr (the table may be far above in a long log)."""
    for r in results:
        if r.status == "error":
            print(f"error: {r.message}", file=stream or sys.stderr)


def variant_progress(stream=None):
    """``diagnose``'s callback ``(key, variant, done, total)``: one line per rendered variant, on a terminal or not."""
    stream = stream or sys.stderr

    def on_variant(key: str, variant: str, done: int, total: int) -> None:
        print(f"[diagnose {done}/{total}] {key}: {variant}", file=stream, flush=True)

    return on_variant


def count_progress(what: str, stream=None, every: int = 100):
    """``progress(done, total)`` for long batch work (the report): a line every ``every`` items and at the end."""
    stream = stream or sys.stderr

    def progress(done: int, total: int) -> None:
        if done == total or done % every == 0:
            print(f"[{what} {done}/{total}]", file=stream, flush=True)

    return progress
