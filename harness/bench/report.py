"""The results document: rows as they are measured, the JSON (rewritten after every row, so a run cut short still
leaves its results), the console log and table, and the Markdown report."""

from __future__ import annotations

import json
import time

SCHEMA = "wan-parity-bench/1"
HEADERS = ["phase", "mode", "offload", "size", "seconds", "ratio", "peak GiB", "status", "note"]


def make_row(phase: str, seconds: float | None, mode: str = "exact", offload: str = "none", size: str = "-",
             status: str = "ok", note: str = "", extrapolated: bool = False, peak: dict | None = None,
             **extra) -> dict:
    """One row of the JSON: the fixed keys every consumer reads, then the peak memory, then phase-specific keys."""
    entry = {"phase": phase, "mode": mode, "exact": mode != "fast", "offload": offload, "size": size,
             "seconds": None if seconds is None else round(seconds, 4), "status": status,
             "extrapolated": extrapolated, "note": note}
    entry.update(peak or {})
    entry.update(extra)
    return entry


class Recorder:
    """Holds the results document and its rows; every ``row`` is logged and the files are rewritten at once."""

    def __init__(self, json_path=None, markdown_path=None):
        self.json_path = json_path
        self.markdown_path = markdown_path
        self.start = time.perf_counter()
        self.rows: list[dict] = []
        self.doc: dict = {}

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def row(self, phase: str, seconds: float | None, *args, **kwargs) -> dict:
        """Record a row (arguments as ``make_row``), print it and save."""
        entry = make_row(phase, seconds, *args, **kwargs)
        self.rows.append(entry)
        self.log(entry)
        self.save()
        return entry

    def skip(self, phase: str, **kwargs) -> dict:
        """A phase left out because it would end past ``--budget-s``."""
        return self.row(phase, None, status="skipped", note="time budget", **kwargs)

    def log(self, entry: dict) -> None:
        secs = "-" if entry["seconds"] is None else f"{entry['seconds']:.3f}s"
        mem = f" peak {entry['peak_allocated_gib']:.1f} GiB" if entry.get("peak_allocated_gib") is not None else ""
        ratio = f" x{entry['ratio_to_bound']:.2f} bound" if entry.get("ratio_to_bound") is not None else ""
        print(f"[{self.elapsed():6.1f}s] {entry['phase']:<28} {entry['mode']:<5} {entry['offload']:<10} "
              f"{entry['size']:<15} {secs:>10}{ratio}{mem} {entry['status']} {entry['note']}", flush=True)

    def save(self) -> None:
        """Rewrite the JSON (and the Markdown, once the peak that its header needs is known)."""
        self.doc["rows"] = self.rows
        self.doc["elapsed_s"] = round(self.elapsed(), 1)
        if self.json_path:
            from ..fsutil import write_json_atomic

            write_json_atomic(self.json_path, self.doc)
        if self.markdown_path and self.doc.get("peak"):
            from ..fsutil import write_text_atomic

            write_text_atomic(self.markdown_path, markdown_report(self.doc))


# ---------------------------------------------------------------------------------------------------------------------
# Console and Markdown
# ---------------------------------------------------------------------------------------------------------------------

def print_model_stats(stats: dict) -> None:
    """Parameter counts and bf16 sizes, one line per component (what ``--device meta`` is run for)."""
    for name, s in stats.items():
        if isinstance(s, dict):
            print(f"{name:<14} {s['params']:>16,} params  {s['gib']:8.3f} GiB bf16"
                  + (f"  ({s['per_block_params']:,} per block)" if "per_block_params" in s else ""))
    print(f"{'total':<14} {'':>16}         {stats['total_gib']:8.2f} GiB")


def _fmt_s(value) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def table_rows(doc: dict) -> list[list[str]]:
    """The rows as table cells in HEADERS order (note rows left out); shared by the console and Markdown tables."""
    out = []
    for r in doc.get("rows", []):
        if r["phase"] == "note":
            continue
        mem = r.get("peak_allocated_gib")
        ratio = r.get("ratio_to_bound") or r.get("ratio_to_naive")
        out.append([r["phase"], r["mode"], r["offload"], r["size"],
                    _fmt_s(r["seconds"]) + (" (extrap.)" if r.get("extrapolated") else ""),
                    "-" if ratio is None else f"{ratio:.2f}",
                    "-" if mem is None else f"{mem:.1f}",
                    r["status"] if r["status"] != "ok" else "", r.get("note", "")])
    return out


def print_table(doc: dict) -> None:
    rows = table_rows(doc)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(HEADERS[:-1])]
    line = "  ".join(h.ljust(w) for h, w in zip(HEADERS, widths)) + "  note"
    print(line)
    print("-" * min(len(line) + 40, 160))
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])


def _summary_lines(doc: dict) -> list[str]:
    m = doc.get("machine", {})
    peak = doc.get("peak", {})
    return [f"# wan-parity bench: synthetic {doc.get('synthetic')}", "",
            f"* date: {doc.get('date')}",
            f"* machine: {m.get('gpu', m.get('cpu'))} ({m.get('gpu_memory_gib', '-')} GiB), "
            f"torch {m.get('torch')}, CUDA {m.get('cuda')}, cuDNN {m.get('cudnn', '-')}, diffusers {m.get('diffusers')}, "
            f"transformers {m.get('transformers')}",
            f"* bf16 peak: {peak.get('tflops')} TFLOP/s measured ({peak.get('gemm')}); nominal "
            f"{peak.get('nominal_tflops') or '-'} TFLOP/s dense",
            f"* sampler profile {doc.get('profile')}, CFG {doc.get('guidance_scale')}, preview = "
            f"{doc.get('preview_steps')} steps; ratio = step time / FLOP-bound step time at the measured peak "
            "(for LoRA/N-preview rows: one process / per-preview load)", ""]


def _models_table(models: dict) -> list[str]:
    if not models:
        return []
    return (["| model | params | GiB (bf16) |", "|---|---|---|"]
            + [f"| {k} | {v['params']:,} | {v['gib']} |" for k, v in models.items() if isinstance(v, dict)] + [""])


def _bound_table(bound: dict) -> list[str]:
    if not bound:
        return []
    lines = ["| size | tokens L | PFLOP / forward | bound per step (measured peak) | bound (nominal) |",
             "|---|---|---|---|---|"]
    for size, b in bound.items():
        lines.append(f"| {size} | {b['tokens']:,} | {b['pflop_per_forward']:.3f} | {b['step_bound_s']:.3f} s | "
                     f"{b.get('step_bound_nominal_s', float('nan')):.3f} s |")
    return lines + [""]


def markdown_report(doc: dict) -> str:
    lines = _summary_lines(doc) + _models_table(doc.get("models", {})) + _bound_table(doc.get("flop_bound", {}))
    lines += ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in r) + " |" for r in table_rows(doc)]
    lines.append("")
    for key in ("n_previews", "load_probe", "attention", "offload_identical", "fused_identical", "fast_vs_exact",
                "fast"):
        if doc.get(key):
            lines.append(f"* {key}: `{json.dumps(doc[key])}`")
    return "\n".join(lines) + "\n"
