"""The HTML parity report: one self-contained page per results document, opened from disk.

With a drift diagnosis (``diagnosis.json`` from ``wan-parity diagnose``), each preview that was diagnosed shows a
"Drift diagnosis" block: the one-sentence explanation, then the variants ranked by encoded PSNR against the golden
(best row highlighted); ``write_diagnosis_report`` writes the same blocks as ``diagnosis.html`` without results.

Pictures are PNG files under ``<out>/report_assets/<run-id>/`` (or inline ``data:`` URIs with
``inline=True``), all written by this module; the page loads nothing from the network and runs no
script (its Content-Security-Policy forbids both). Every string from the results document is
escaped by Jinja2's autoescaping; the template never marks user data safe.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import math
import re
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import HarnessError
from ..fsutil import write_atomic, write_json_atomic, write_text_atomic
from . import baseline as baseline_mod
from . import plots
from .knobs import STACKS, config_diff, profile_info, summarize_trace

TEMPLATES = Path(__file__).resolve().parent / "templates"
ASSETS_DIR = "report_assets"
REPORT_NAME = "report.html"
DIAGNOSIS_REPORT_NAME = "diagnosis.html"
STATUSES = ("pass", "fail", "error", "unreproducible")
_RUN_DIR = re.compile(r"^r\d{8}T\d{6}-[0-9a-f]{8}$")


# --------------------------------------------------------------------------- assets


@dataclass
class Picture:
    src: str
    width: int
    height: int
    alt: str


class Assets:
    """Writes PNGs for one report run into a fresh folder (or returns data: URIs when inline)."""

    def __init__(self, out_dir: Path, inline: bool):
        self.out_dir = out_dir
        self.inline = inline
        self.run_id = _dt.datetime.now().strftime("r%Y%m%dT%H%M%S") + "-" + secrets.token_hex(4)
        self.folder = out_dir / ASSETS_DIR / self.run_id
        self.count = 0

    def add(self, name: str, image: np.ndarray | None = None, data: bytes | None = None, alt: str = "") -> Picture:
        if data is None:
            data = plots.png_bytes(image)
        if image is not None:
            height, width = image.shape[:2]
        else:
            from PIL import Image
            import io

            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
        self.count += 1
        if self.inline:
            src = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        else:
            write_atomic(self.folder / name, lambda handle: handle.write(data))
            src = f"{ASSETS_DIR}/{self.run_id}/{name}"
        return Picture(src, int(width), int(height), alt)

    def discard(self) -> None:
        if self.folder.is_dir():
            shutil.rmtree(self.folder, ignore_errors=True)

    def prune_older(self) -> None:
        """After the new page is in place: remove asset folders of earlier runs (only ours, by name)."""
        root = self.out_dir / ASSETS_DIR
        if not root.is_dir():
            return
        for child in root.iterdir():
            if child.is_dir() and _RUN_DIR.match(child.name) and child.name != self.run_id:
                shutil.rmtree(child, ignore_errors=True)
        if not any(root.iterdir()):
            root.rmdir()


# --------------------------------------------------------------------------- formatting


def fmt_psnr(value) -> str:
    if value is None:
        return "n/a"
    if value in ("inf", "Infinity") or (isinstance(value, float) and math.isinf(value)):
        return "∞"
    try:
        return f"{float(value):.2f}"
    except (TypeError, ValueError):
        return str(value)


def fmt_ssim(value) -> str:
    if value is None:
        return "n/a"
    try:
        return f"{float(value):.4f}"
    except (TypeError, ValueError):
        return str(value)


def fmt_value(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return " | ".join(fmt_value(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def status_class(status) -> str:
    return status if status in STATUSES else "unknown"


# --------------------------------------------------------------------------- frames


def resolve_path(path, search_dirs) -> Path | None:
    """A recorded path as a readable file: absolute as is, relative tried against cwd then ``search_dirs``."""
    if not path:
        return None
    p = Path(path)
    if p.is_absolute() or p.exists():
        return p
    for base in search_dirs:
        candidate = Path(base) / p
        if candidate.exists():
            return candidate
    return p


def _load(path, label: str, search_dirs, problems: list[str]) -> np.ndarray | None:
    from ..media import read_frames

    resolved = resolve_path(path, search_dirs)
    if resolved is None:
        return None
    try:
        return read_frames(resolved).frames
    except HarnessError as exc:
        problems.append(f"{label}: {exc.line()}")
    except Exception as exc:  # a report must keep going whatever one file holds
        problems.append(f"{label}: {resolved}: cannot read ({type(exc).__name__}: {exc})")
    return None


def load_render(result: dict, search_dirs, problems: list[str]) -> tuple[np.ndarray | None, str | None]:
    """Render frames: the re-encoded preview (``render_path``, the encoded view) or else the lossless ``.npy``."""
    for key, what in (("render_path", "render (re-encoded like ai-toolkit)"), ("frames_path", "render (lossless .npy)")):
        if result.get(key):
            frames = _load(result[key], what, search_dirs, problems)
            if frames is not None:
                return frames, what
    if not result.get("render_path") and not result.get("frames_path"):
        problems.append("render: no render file was recorded for this preview (run with --out to keep renders)")
    return None, None


# --------------------------------------------------------------------------- sections


@dataclass
class Section:
    id: str
    index: int
    result: dict
    status: str
    status_class: str
    key: str
    message: str
    problems: list[str] = field(default_factory=list)
    show_images: bool = False
    render_label: str | None = None
    strips: list[tuple[str, Picture]] = field(default_factory=list)
    worst: list[tuple[str, Picture]] = field(default_factory=list)
    worst_index: int | None = None
    curves: Picture | None = None
    metrics: list[dict] = field(default_factory=list)
    settings: list[tuple[str, str]] = field(default_factory=list)
    trace_text: str = ""
    trace_steps: list[tuple[int, str, str]] = field(default_factory=list)
    knobs: list = field(default_factory=list)
    approximate: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    profile_line: str = ""
    regression: dict | None = None
    diagnoses: list = field(default_factory=list)  # diagnosis.DiagnosisView for this key (usually zero or one)


def _metrics_rows(r: dict) -> list[dict]:
    rows = []
    for key, label in (("encoded", "encoded (render re-encoded like ai-toolkit vs golden file)"),
                       ("raw", "raw (lossless render vs golden file; includes the golden's own codec loss)"),
                       ("raw_golden", "lossless (lossless render vs lossless golden)")):
        c = r.get(key)
        if not isinstance(c, dict):
            continue
        rows.append({
            "view": label,
            "bit_exact": fmt_value(c.get("bit_exact")),
            "psnr_min": fmt_psnr(c.get("psnr_min")), "psnr_mean": fmt_psnr(c.get("psnr_mean")),
            "ssim_min": fmt_ssim(c.get("ssim_min")), "ssim_mean": fmt_ssim(c.get("ssim_mean")),
            "worst": fmt_value(c.get("worst_frame")),
            "max_abs_diff": fmt_value(c.get("max_abs_diff")),
            "differing": fmt_value(c.get("differing_pixels")),
            "mismatch": c.get("mismatch") or "",
        })
    return rows


def _settings(r: dict) -> list[tuple[str, str]]:
    lora = r.get("lora") or {}
    size = f"{r.get('width')}×{r.get('height')}"
    if r.get("width_requested") and r.get("height_requested"):
        size += f" (requested {r['width_requested']}×{r['height_requested']})"
    rows = [
        ("prompt", r.get("prompt")),
        ("negative prompt", r.get("negative_prompt") if r.get("negative_prompt") != "" else "(empty)"),
        ("seed", r.get("seed")),
        ("size (W×H)", size),
        ("frames", r.get("num_frames")),
        ("fps", r.get("fps")),
        ("sample steps", r.get("sample_steps")),
        ("guidance scale", r.get("guidance_scale")),
        ("network multiplier", r.get("network_multiplier")),
        ("control image", r.get("ctrl_img")),
        ("LoRA high-noise", lora.get("high") if lora else None),
        ("LoRA low-noise", lora.get("low") if lora else None),
        ("LoRA path", r.get("lora_path")),
        ("training step / sample index", f"{r.get('step')} / {r.get('index')}"),
        ("golden", r.get("golden")),
        ("golden (lossless)", r.get("golden_raw")),
        ("render", r.get("render_path")),
        ("render frames (.npy)", r.get("frames_path")),
        ("seconds", r.get("seconds")),
    ]
    if r.get("label_note"):
        rows.append(("label note", r.get("label_note")))
    if r.get("resumed"):
        rows.append(("resumed", "taken from an earlier run (--resume)"))
    return [(k, fmt_value(v)) for k, v in rows]


def build_section(index: int, r: dict, environment: dict, assets: Assets, search_dirs) -> Section:
    status = r.get("status") or "unknown"
    sec = Section(id=f"p{index}", index=index, result=r, status=str(status), status_class=status_class(status),
                  key=str(r.get("key") or f"(result {index})"), message=fmt_value(r.get("message")) if r.get("message") else "")
    sec.settings = _settings(r)
    sec.regression = _regression_cell(r.get("regression"))
    sec.approximate = [str(a) for a in (r.get("approximate") or [])]
    sec.notes = [str(n) for n in (r.get("notes") or [])]
    if status in ("error", "unreproducible"):
        return sec
    info = profile_info(r)
    bits = [info.name or "unknown"]
    if info.exact is not None:
        bits.append("claims exactness" if info.exact else "diagnosis profile (not ai-toolkit's sampler)")
    if info.description:
        bits.append(info.description)
    sec.profile_line = " — ".join(bits)
    trace = summarize_trace(r.get("trace"))
    sec.trace_text = trace.text()
    sec.trace_steps = [(i, e, f"{t:.4f}") for i, (e, t) in enumerate(trace.steps)]
    sec.knobs = config_diff(r, environment)
    sec.metrics = _metrics_rows(r)
    sec.show_images = True
    try:
        _pictures(sec, r, assets, search_dirs)
    except Exception as exc:  # never lose the whole report to one preview's pictures
        sec.problems.append(f"pictures: could not be drawn ({type(exc).__name__}: {exc})")
    return sec


def _pictures(sec: Section, r: dict, assets: Assets, search_dirs) -> None:
    n = sec.index
    golden = _load(r.get("golden"), "golden", search_dirs, sec.problems) if r.get("golden") else None
    if not r.get("golden"):
        sec.problems.append("golden: no golden path recorded")
    render, sec.render_label = load_render(r, search_dirs, sec.problems)
    worst = r.get("worst_frame")
    same = golden is not None and render is not None and golden.shape == render.shape
    if golden is not None and render is not None and not same:
        sec.problems.append(f"golden frames {tuple(golden.shape)} and render frames {tuple(render.shape)} differ in shape: "
                            "no difference image")
    if not isinstance(worst, int):
        worst = None
    if worst is None and same:
        worst = plots.worst_by_mean_error(golden, render)
    clips = [c for c in (golden, render) if c is not None]
    if not clips:
        return
    ref = clips[0]
    th = plots.thumb_height(ref.shape[1], ref.shape[2], ref.shape[0])
    if golden is not None:
        sec.strips.append(("golden", assets.add(f"p{n:04d}-strip-golden.png", plots.strip(golden, th, worst),
                                                alt=f"golden frames of {sec.key}")))
    if render is not None:
        sec.strips.append((sec.render_label or "render",
                           assets.add(f"p{n:04d}-strip-render.png", plots.strip(render, th, worst),
                                      alt=f"render frames of {sec.key}")))
    if same:
        sec.strips.append((f"|Δ| ×{plots.DIFF_GAIN}",
                           assets.add(f"p{n:04d}-strip-diff.png", plots.strip(plots.diff_frames(golden, render, th), th, worst),
                                      alt=f"difference heatmap of {sec.key}")))
    if worst is not None and 0 <= worst < min(len(c) for c in clips):
        sec.worst_index = worst
        lh = plots.large_height(ref.shape[1], ref.shape[2])
        panels = [("golden", "golden", golden[worst] if golden is not None else None),
                  ("render", "render", render[worst] if render is not None else None)]
        if same:
            panels.append((f"|Δ| ×{plots.DIFF_GAIN}", "diff", plots.diff_heatmap(golden[worst], render[worst])))
        for label, kind, frame in panels:
            if frame is not None:
                sec.worst.append((label, assets.add(f"p{n:04d}-worst-{kind}.png", plots.resize(frame, lh),
                                                    alt=f"{label} frame {worst} of {sec.key}")))
    series = {}
    if r.get("psnr_per_frame") or r.get("ssim_per_frame"):
        series["encoded"] = (r.get("psnr_per_frame") or [], r.get("ssim_per_frame") or [])
    lossless = r.get("raw_golden")
    if isinstance(lossless, dict) and (lossless.get("psnr") or lossless.get("ssim")):
        series["lossless"] = (lossless.get("psnr") or [], lossless.get("ssim") or [])
    curves = plots.metric_curves(series, r.get("thresholds"), sec.worst_index)
    if curves is not None:
        sec.curves = assets.add(f"p{n:04d}-curves.png", data=curves, alt=f"per-frame PSNR and SSIM of {sec.key}")


# --------------------------------------------------------------------------- document


def counts(results: list[dict]) -> dict:
    c = {s: 0 for s in STATUSES} | {"other": 0}
    for r in results:
        s = r.get("status") if r.get("status") in STATUSES else "other"
        c[s] = c.get(s, 0) + 1
    c["bit_exact"] = sum(1 for r in results if r.get("bit_exact"))
    c["total"] = len(results)
    return c


def _summary_row(sec: Section) -> dict:
    r = sec.result
    return {
        "id": sec.id, "key": sec.key, "status": sec.status, "status_class": sec.status_class,
        "bit_exact": fmt_value(bool(r.get("bit_exact"))) if sec.status in ("pass", "fail") else "—",
        "bit_exact_raw": fmt_value(r.get("bit_exact_raw")) if "bit_exact_raw" in r else "—",
        "psnr_min": fmt_psnr(r.get("psnr_min")), "psnr_mean": fmt_psnr(r.get("psnr_mean")),
        "ssim_min": fmt_ssim(r.get("ssim_min")), "ssim_mean": fmt_ssim(r.get("ssim_mean")),
        "message": sec.message,
        "regression": sec.regression,
    }


def _regression_cell(entry) -> dict | None:
    """The summary table's "vs baseline" cell: category (CSS-safe) and its reasons as one line."""
    if not isinstance(entry, dict):
        return None
    category = entry.get("category")
    css = category if category in baseline_mod.CATEGORIES else "unknown"
    return {"category": css, "label": baseline_mod.LABELS.get(category, fmt_value(category)),
            "reasons": "; ".join(_reasons(entry))}


def _fmt_delta(value) -> str:
    v = baseline_mod.as_psnr(value)
    if v is None:
        return "—"
    if math.isinf(v):
        return "+∞" if v > 0 else "−∞"
    return f"{v:+.2f}"


def _reasons(entry: dict) -> list[str]:
    reasons = entry.get("reasons")
    if isinstance(reasons, (list, tuple)):
        return [str(x) for x in reasons]
    return [str(reasons)] if reasons else []


def _baseline_view(document: dict, sections: list) -> dict | None:
    """Data for the Regressions section at the top of the page (None without a baseline)."""
    info = document.get("baseline")
    if not isinstance(info, dict):
        return None
    rows = {c: [] for c in baseline_mod.CATEGORIES}
    for sec in sections:
        entry = sec.result.get("regression")
        if not isinstance(entry, dict) or entry.get("category") not in rows:
            continue
        rows[entry["category"]].append({
            "id": sec.id, "key": sec.key,
            "status": f"{fmt_value(entry.get('baseline_status'))} → {fmt_value(entry.get('status'))}",
            "bit_exact": f"{fmt_value(entry.get('baseline_bit_exact'))} → {fmt_value(entry.get('bit_exact'))}",
            "psnr": f"{fmt_psnr(entry.get('baseline_psnr_min'))} → {fmt_psnr(entry.get('psnr_min'))}",
            "delta": _fmt_delta(entry.get("psnr_delta")),
            "reasons": _reasons(entry),
        })
    counts = info.get("counts") or {}
    return {
        "source": fmt_value(info.get("source")) if info.get("source") else "",
        "threshold": fmt_value(info.get("psnr_drop_db")),
        "counts": [(baseline_mod.LABELS[c], c, int(counts.get(c, 0) or 0)) for c in (*baseline_mod.CATEGORIES, "missing")],
        "regressions": rows[baseline_mod.REGRESSION],
        "standing": rows[baseline_mod.STANDING],
        "improvements": rows[baseline_mod.IMPROVEMENT],
        "new": rows[baseline_mod.NEW],
        "missing": [str(k) for k in info.get("missing") or []],
        "environment": [(fmt_value(c.get("key")), fmt_value(c.get("baseline")), fmt_value(c.get("current")))
                        for c in info.get("environment_changes") or [] if isinstance(c, dict)],
    }


def _environment_rows(document: dict) -> list[tuple[str, str, bool]]:
    env = document.get("environment") or {}
    differs = set(document.get("environment_differs") or [])
    return [(str(k), fmt_value(v), k in differs) for k, v in env.items()]


def _shard_rows(document: dict) -> list[dict]:
    rows = []
    for shard in document.get("shards") or []:
        env = shard.get("environment") or {}
        summary = shard.get("summary") or {}
        rows.append({"results": fmt_value(shard.get("results")),
                     "summary": ", ".join(f"{k} {v}" for k, v in summary.items()),
                     "device": " ".join(str(env[k]) for k in ("device", "gpu") if env.get(k)) or "—"})
    return rows


def _jinja():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=True,  # every {{ }} is escaped; the template never uses |safe
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env


def _attach_diagnoses(diagnosis: dict | None, sections: list[Section]) -> dict | None:
    """Put each diagnosis on the section of its key; the rest get sections of their own. None without a diagnosis."""
    if diagnosis is None:
        return None
    from . import diagnosis as dmod

    by_key = {str(sec.result.get("key")): sec for sec in sections if sec.result.get("key") is not None}
    orphans: dict[str, list] = {}  # key -> views, in document order; their section ids are x0, x1, ...
    views = []
    for entry in dmod.entries(diagnosis):
        key = str(entry.get("key"))
        sec = by_key.get(key)
        if sec is not None:
            base, same_key = sec.id, sec.diagnoses
        else:
            if key not in orphans:
                orphans[key] = []
            base, same_key = f"x{list(orphans).index(key)}", orphans[key]
        view = dmod.build_view(entry, f"{base}-diagnosis" + (f"-{len(same_key) + 1}" if same_key else ""))
        same_key.append(view)
        views.append(view)
    families = diagnosis.get("families")
    return {
        "total": len(views),
        "orphans": sum(len(v) for v in orphans.values()),
        "families": ", ".join(str(f) for f in families) if isinstance(families, list) and families else "—",
        "overview": [dmod.overview_row(v) for v in views],
        "orphans_sections": [{"id": f"x{i}", "key": views_[0].key, "diagnoses": views_}
                             for i, views_ in enumerate(orphans.values())],
    }


def render_html(document: dict, assets: Assets, search_dirs=(), diagnosis: dict | None = None) -> str:
    results = list(document.get("results") or [])
    environment = document.get("environment") or {}
    sections = [build_section(i, r, environment, assets, search_dirs) for i, r in enumerate(results)]
    diagnosed = _attach_diagnoses(diagnosis, sections)
    c = counts(results)
    overall = "error" if c["error"] else ("fail" if c["fail"] else ("pass" if results else "unknown"))
    from .. import __version__

    legend = plots.colorbar()
    colorbar = assets.add("colorbar.png", legend, alt="difference colour scale")
    return _jinja().get_template("report.html").render(
        title=f"Wan 2.2 I2V parity report — {len(results)} preview{'s' if len(results) != 1 else ''}",
        generated=_dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z"),
        harness_version=__version__,
        schema_version=document.get("schema_version"),
        counts=c, overall=overall, statuses=STATUSES,
        environment=_environment_rows(document),
        shards=_shard_rows(document),
        duplicates=document.get("duplicates") or [],
        summary=[_summary_row(s) | {"diagnoses": s.diagnoses} for s in sections],
        sections=sections,
        diagnosed=diagnosed,
        baseline=_baseline_view(document, sections),
        stacks=STACKS,
        colorbar=colorbar,
        diff_gain=plots.DIFF_GAIN,
        saturate=math.ceil(255 / plots.DIFF_GAIN),
    )


def write_report(document: dict, out_dir: Path, *, inline: bool = False, search_dirs=(), diagnosis=None) -> Path:
    """Write ``out_dir/report.html`` (atomically) and its pictures; returns the page's path.

    ``diagnosis``: a diagnosis document (``diagnosis.json`` as a dict, or its path) whose entries are shown as
    "Drift diagnosis" blocks in the sections of their keys (keys without a result get sections of their own).
    Without it the page is exactly the plain report.

    ``inline=True`` embeds the pictures as data: URIs (one file, heavier); otherwise they go to
    ``out_dir/report_assets/<run-id>/`` and earlier runs' asset folders are removed once the new page
    is in place. Relative paths in the results are tried against the cwd, ``out_dir`` and ``search_dirs``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if diagnosis is not None:
        from .diagnosis import check_document

        diagnosis = check_document(diagnosis)
    assets = Assets(out_dir, inline)
    target = out_dir / REPORT_NAME
    try:
        page = render_html(document, assets, [*search_dirs, out_dir], diagnosis=diagnosis)
        write_text_atomic(target, page)
    except BaseException:
        assets.discard()
        raise
    assets.prune_older()
    return target


def render_diagnosis_html(diagnosis: dict) -> str:
    """The page of ``wan-parity diagnose``: environment, summary counts, an overview and one block per diagnosis."""
    from . import diagnosis as dmod
    from .. import __version__

    views = [dmod.build_view(entry, f"d{n}") for n, entry in enumerate(dmod.entries(diagnosis))]
    statuses = {v.status_class for v in views}
    unexplained = sum(1 for v in views if v.status_class == "unexplained")
    errors = sum(1 for v in views if v.status_class == "error")
    if not views:
        overall, banner = "unknown", "no previews were diagnosed"
    elif errors:
        overall, banner = "error", f"{errors} preview{'s' if errors != 1 else ''} could not be diagnosed (bad input)"
    elif unexplained:
        overall, banner = "fail", f"{unexplained} preview{'s' if unexplained != 1 else ''}: no single knob explains the drift"
    elif statuses <= {"exact", "unreproducible"}:
        overall, banner = "pass", "every reproducible preview is already bit-exact"
    else:
        overall, banner = "pass", "every drifting preview has an explanation"
    families = diagnosis.get("families")
    return _jinja().get_template("diagnosis.html").render(
        title=f"Wan 2.2 I2V drift diagnosis — {len(views)} preview{'s' if len(views) != 1 else ''}",
        generated=_dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z"),
        harness_version=__version__,
        schema=fmt_value(diagnosis.get("schema", dmod.SCHEMA)),
        families=", ".join(str(f) for f in families) if isinstance(families, list) and families else "—",
        overall=overall, banner=banner,
        counts=dmod.summary_counts(diagnosis),
        environment=_environment_rows({"environment": diagnosis.get("environment") or {}}),
        overview=[dmod.overview_row(v) for v in views],
        views=views,
    )


def write_diagnosis_report(diagnosis_document, out_dir) -> Path:
    """Write ``out_dir/diagnosis.html`` (atomically) for a diagnosis document (a dict or a diagnosis.json path).

    The page has no pictures and loads nothing; its blocks are the ones ``write_report(..., diagnosis=...)`` shows.
    """
    from .diagnosis import check_document

    document = check_document(diagnosis_document)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / DIAGNOSIS_REPORT_NAME
    write_text_atomic(target, render_diagnosis_html(document))
    return target


# --------------------------------------------------------------------------- merging and loading


def _order(r: dict):
    def num(v):
        try:
            return (0, int(v))
        except (TypeError, ValueError):
            return (1, 0)

    return (str(r.get("case") or ""), num(r.get("step")), num(r.get("index")), str(r.get("key") or ""))


def _merge_environments(envs: list[dict]) -> tuple[dict, list[str]]:
    merged: dict = {}
    differs: list[str] = []
    keys: list[str] = []
    for env in envs:
        for k in env:
            if k not in keys:
                keys.append(k)
    for k in keys:
        values = []
        for env in envs:
            v = env.get(k)
            if all(json.dumps(v, sort_keys=True, default=str) != json.dumps(x, sort_keys=True, default=str) for x in values):
                values.append(v)
        if len(values) == 1:
            merged[k] = values[0]
        else:
            merged[k] = values
            differs.append(k)
    return merged, differs


def merge_documents(docs: list[dict]) -> dict:
    """One results document from several shards: results by key (a later duplicate wins), summary recomputed.

    Environments that agree collapse to one; keys whose values differ between shards hold the list of
    distinct values and are listed in ``environment_differs`` (bit-exactness needs one identical stack).
    Per-shard environments and summaries are kept under ``shards`` when there is more than one document.
    """
    from ..runner import SCHEMA_VERSION, summarize

    if not docs:
        raise ValueError("merge_documents needs at least one results document")
    for i, d in enumerate(docs):
        if not isinstance(d, dict) or not isinstance(d.get("results"), list):
            raise ValueError(f"document {i} is not a results document (no 'results' list)")
        version = d.get("schema_version", SCHEMA_VERSION)
        if version != SCHEMA_VERSION:
            raise ValueError(f"document {i} has schema_version {version!r}; this harness reads {SCHEMA_VERSION}")
    by_key: dict[str, dict] = {}
    duplicates: list[str] = []
    anonymous = 0
    for d in docs:
        for r in d["results"]:
            key = r.get("key")
            if key is None:
                anonymous += 1
                key = f"\0anonymous-{anonymous}"
            elif key in by_key:
                duplicates.append(key)
            by_key[key] = r
    results = sorted(by_key.values(), key=_order)
    environment, differs = _merge_environments([d.get("environment") or {} for d in docs if d.get("environment")])
    merged = {"schema_version": SCHEMA_VERSION, "environment": environment, "summary": summarize(results),
              "results": results}
    if differs:
        merged["environment_differs"] = differs
    if len(docs) > 1:
        merged["shards"] = [{"environment": d.get("environment") or {}, "summary": d.get("summary") or summarize(d["results"]),
                             "results": len(d["results"])} for d in docs]
    if duplicates:
        merged["duplicates"] = sorted(set(duplicates))
    return merged


def _as_document(data, source: Path) -> dict:
    if isinstance(data, dict) and isinstance(data.get("results"), list):
        return data
    if isinstance(data, dict) and "key" in data and "status" in data:  # one per-preview file from --out/results/
        return {"schema_version": data.get("schema_version", 1), "environment": {}, "results": [data]}
    if isinstance(data, list) and all(isinstance(r, dict) for r in data):
        return {"schema_version": 1, "environment": {}, "results": data}
    raise HarnessError(source, None, "not a results document (expected {'results': [...]}, one result, or a list of results)")


def load_documents(paths) -> tuple[list[dict], list[Path]]:
    """Results documents from files or folders (a folder: its results.json, else every results/**/*.json)."""
    docs, dirs = [], []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files = [path / "results.json"] if (path / "results.json").is_file() else sorted((path / "results").rglob("*.json"))
            if not files:
                raise HarnessError(path, None, "folder holds no results.json and no results/**/*.json")
        elif path.is_file():
            files = [path]
        else:
            raise HarnessError(path, None, "file not found")
        for f in files:
            try:
                data = json.loads(f.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise HarnessError(f, None, f"cannot read results JSON: {exc}") from None
            docs.append(_as_document(data, f))
            dirs.extend([f.parent, f.parent.parent])
    return docs, dirs


@dataclass
class ReportOutcome:
    """What ``build_report`` did: the page, the merged document, and how the nightly job should exit."""

    path: Path
    document: dict
    regression_count: int = 0
    missing_count: int = 0
    merged_path: Path | None = None

    @property
    def exit_code(self) -> int:
        """0 no regression against the baseline (or no baseline given), 1 regressions. Bad input raises."""
        return 1 if self.regression_count else 0


def load_baseline(path) -> dict:
    """A previous night's results (results.json, results.merged.json, an --out folder) as one document."""
    docs, _ = load_documents([path])
    try:
        return merge_documents(docs)
    except ValueError as exc:
        raise HarnessError(path, "--baseline", str(exc)) from None


def build_report(paths, out_dir, baseline=None, psnr_drop_db: float = 1.0, *, inline: bool = False,
                 diagnosis=None) -> ReportOutcome:
    """``wan-parity report RESULTS.json... --out DIR [--baseline PREVIOUS.json]``.

    Loads and merges the inputs, compares them with ``baseline`` when given (see
    :func:`harness.report.baseline.compare_to_baseline`), writes ``DIR/report.html`` and, with several inputs
    or a baseline, ``DIR/results.merged.json`` (the merged document with the comparison attached: keep it as
    the next night's baseline). ``diagnosis`` (a diagnosis.json path or document) adds the drift-diagnosis blocks.
    Problems with the inputs raise :class:`~harness.errors.HarnessError`.
    """
    if not paths:
        raise HarnessError(None, "report", "give at least one results JSON file or output folder")
    docs, dirs = load_documents(paths)
    try:
        merged = merge_documents(docs)
    except ValueError as exc:
        raise HarnessError(None, "report", str(exc)) from None
    if baseline is not None:
        previous = load_baseline(baseline)
        try:
            comparison = baseline_mod.compare_to_baseline(merged, previous, psnr_drop_db)
        except ValueError as exc:
            raise HarnessError(None, "--psnr-drop", str(exc)) from None
        merged = baseline_mod.attach_baseline(merged, comparison, source=str(baseline))
    out_dir = Path(out_dir)
    merged_path = None
    if len(docs) > 1 or baseline is not None:
        merged_path = write_json_atomic(out_dir / "results.merged.json", merged)
    unique_dirs = list(dict.fromkeys(dirs))
    page = write_report(merged, out_dir, inline=inline, search_dirs=unique_dirs, diagnosis=diagnosis)
    info = merged.get("baseline") or {}
    return ReportOutcome(path=page, document=merged, regression_count=baseline_mod.regression_count(merged),
                         missing_count=len(info.get("missing") or []), merged_path=merged_path)


def report_main(paths, out_dir, baseline=None, psnr_drop_db: float = 1.0) -> Path:
    """``wan-parity report``: :func:`build_report` returning only the page's path (kept for callers of the
    path-returning API; the CLI should use ``build_report(...).exit_code``)."""
    return build_report(paths, out_dir, baseline=baseline, psnr_drop_db=psnr_drop_db).path
