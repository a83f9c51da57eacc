"""The report page's data: one :class:`Section` per preview plus the summary, baseline and diagnosis views.

Everything here is plain strings, numbers and :class:`~harness.report.assets.Picture` records; CSS classes and
element ids are chosen from fixed lists, never taken from the document, so the template only escapes and prints.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..result import STATUSES, PreviewResult, results_of
from . import baseline as baseline_mod
from . import diagnosis as dmod
from .assets import Assets
from .drawing import draw_all
from .format import INFINITY, NO_VALUE, css_class, environment_rows, fmt_metric, fmt_optional, fmt_value, quality_cells
from .knobs import config_diff
from .pictures import DEFAULT_LIMIT, PreviewPictures, drawing_order, has_media, skipped_note
from .sampling import profile_info, summarize_trace


@dataclass
class Section:
    id: str
    index: int
    result: PreviewResult
    status: str
    status_class: str
    key: str
    message: str
    problems: list[str] = field(default_factory=list)
    show_images: bool = False
    pictures: PreviewPictures = field(default_factory=PreviewPictures)
    metrics: list[dict] = field(default_factory=list)
    settings: list[tuple[str, str]] = field(default_factory=list)
    trace_text: str = ""
    trace_steps: list[tuple[int, str, str]] = field(default_factory=list)
    knobs: list = field(default_factory=list)
    knobs_differ: int = 0  # config-diff rows where the render departs from the golden's job
    approximate: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    stack_reason: str = ""  # why exactness is (not) expected on this stack
    stack_diff: list[tuple[str, str, str]] = field(default_factory=list)  # (field, golden, here)
    profile_line: str = ""
    baseline_entry: dict | None = None  # this result's comparison with the baseline (baseline.attach_baseline)
    regression: dict | None = None  # the "vs baseline" cell drawn from it
    diagnoses: list = field(default_factory=list)  # diagnosis.DiagnosisView for this key (usually zero or one)


_METRIC_VIEWS = (("encoded", "encoded (render re-encoded like ai-toolkit vs golden file)"),
                 ("raw", "raw (lossless render vs golden file; includes the golden's own codec loss)"),
                 ("raw_golden", "lossless (lossless render vs lossless golden)"))


def _metrics_rows(r: PreviewResult) -> list[dict]:
    """One row per comparison the result holds (encoded, raw, lossless)."""
    rows = []
    for name, label in _METRIC_VIEWS:
        c = r.view(name)
        if c is None:
            continue
        rows.append({
            "view": label,
            "bit_exact": fmt_value(c.bit_exact),
            **quality_cells(c),
            "worst": fmt_value(c.worst_frame),
            "max_abs_diff": fmt_value(c.max_abs_diff),
            "differing": fmt_value(c.differing_pixels),
            "mismatch": c.mismatch or "",
        })
    return rows


def _size(r: PreviewResult) -> str:
    size = f"{r.width}×{r.height}"
    if r.width_requested and r.height_requested:
        size += f" (requested {r.width_requested}×{r.height_requested})"
    return size


def _settings(r: PreviewResult) -> list[tuple[str, str]]:
    """The sample's settings table: what a reader needs to reproduce the preview elsewhere."""
    lora = r.lora or {}
    rows = [
        ("prompt", r.prompt),
        ("negative prompt", r.negative_prompt if r.negative_prompt != "" else "(empty)"),
        ("seed", r.seed),
        ("size (W×H)", _size(r)),
        ("frames", r.num_frames),
        ("fps", r.fps),
        ("sample steps", r.sample_steps),
        ("guidance scale", r.guidance_scale),
        ("network multiplier", r.network_multiplier),
        ("control image", r.ctrl_img),
        ("LoRA high-noise", lora.get("high")),
        ("LoRA low-noise", lora.get("low")),
        ("LoRA path", r.lora_path),
        ("training step / sample index", f"{r.step} / {r.index}"),
        ("golden", r.golden),
        ("golden (lossless)", r.golden_raw),
        ("render", r.render_path),
        ("render frames (.npy)", r.frames_path),
        ("seconds", r.seconds),
    ]
    if r.label_note:
        rows.append(("label note", r.label_note))
    if r.resumed:
        rows.append(("resumed", "taken from an earlier run (--resume)"))
    return [(k, fmt_value(v)) for k, v in rows]


def _profile_line(r: PreviewResult) -> str:
    info = profile_info(r)
    bits = [info.name or "unknown"]
    if info.exact is not None:
        bits.append("claims exactness" if info.exact else "diagnosis profile (not ai-toolkit's sampler)")
    if info.description:
        bits.append(info.description)
    return " — ".join(bits)


def build_section(index: int, r: PreviewResult, environment: dict, baseline_entry: dict | None = None) -> Section:
    """One preview's section without pictures (:func:`build_sections` adds them); errors and unreproducible
    previews get their message and settings only."""
    status = r.status or "unknown"
    sec = Section(id=f"p{index}", index=index, result=r, status=str(status), status_class=css_class(status, STATUSES),
                  key=str(r.key or f"(result {index})"), message=fmt_optional(r.message))
    sec.settings = _settings(r)
    sec.baseline_entry = baseline_entry if isinstance(baseline_entry, dict) else None
    sec.regression = _regression_cell(sec.baseline_entry)
    sec.approximate = [str(a) for a in (r.approximate or [])]
    sec.notes = [str(n) for n in (r.notes or [])]
    sec.stack_reason = str(r.stack_reason or "")
    sec.stack_diff = [(str(k), str(v[0]), str(v[1])) for k, v in (r.stack_diff or {}).items()]
    sec.stack_diff += [(str(k), "unknown", "") for k in (r.stack_unknown or []) if k != "*"]
    if status in ("error", "unreproducible"):
        return sec
    sec.profile_line = _profile_line(r)
    trace = summarize_trace(r.trace)
    sec.trace_text = trace.text()
    sec.trace_steps = [(i, e, f"{t:.4f}") for i, (e, t) in enumerate(trace.steps)]
    sec.knobs = config_diff(r, environment)
    sec.knobs_differ = sum(1 for k in sec.knobs if k.mark == "differs")
    sec.metrics = _metrics_rows(r)
    sec.show_images = True
    return sec


def counts(results: list[PreviewResult]) -> dict:
    """Results per status (unknown statuses as "other"), bit-exact ones and the total."""
    c = {s: 0 for s in STATUSES} | {"other": 0}
    for r in results:
        s = r.status if r.status in STATUSES else "other"
        c[s] = c.get(s, 0) + 1
    c["bit_exact"] = sum(1 for r in results if r.bit_exact)
    c["total"] = len(results)
    return c


def overall_status(c: dict) -> str:
    """The page's banner: any error beats any failure; no results at all is "unknown"."""
    return "error" if c["error"] else ("fail" if c["fail"] else ("pass" if c["total"] else "unknown"))


def summary_row(sec: Section) -> dict:
    r = sec.result
    return {
        "id": sec.id, "key": sec.key, "status": sec.status, "status_class": sec.status_class,
        "bit_exact": fmt_value(r.bit_exact) if sec.status in ("pass", "fail") else NO_VALUE,
        "bit_exact_raw": fmt_value(r.bit_exact_raw),  # None (a dash) when the lossless golden was not compared
        **quality_cells(r),
        "message": sec.message,
        "regression": sec.regression,
        "diagnoses": sec.diagnoses,
    }


# --------------------------------------------------------------------------- baseline


def _reasons(entry: dict) -> list[str]:
    reasons = entry.get("reasons")
    if isinstance(reasons, (list, tuple)):
        return [str(x) for x in reasons]
    return [str(reasons)] if reasons else []


def _regression_cell(entry) -> dict | None:
    """The summary table's "vs baseline" cell: category (CSS-safe) and its reasons as one line."""
    if not isinstance(entry, dict):
        return None
    category = entry.get("category")
    return {"category": css_class(category, baseline_mod.CATEGORIES),
            "label": baseline_mod.LABELS.get(category, fmt_value(category)), "reasons": "; ".join(_reasons(entry))}


def _fmt_delta(value) -> str:
    """A PSNR change with its sign ("+∞" when the preview became identical)."""
    text = fmt_metric(value, missing=NO_VALUE)
    return "+" + text if text[:1].isdigit() or text == INFINITY else text


def _then_now(entry: dict, field_name: str, fmt=fmt_value) -> str:
    """A value in the baseline and now, as "before → after"."""
    return f"{fmt(entry.get('baseline_' + field_name))} → {fmt(entry.get(field_name))}"


def _baseline_row(sec: Section, entry: dict) -> dict:
    return {"id": sec.id, "key": sec.key, "status": _then_now(entry, "status"),
            "bit_exact": _then_now(entry, "bit_exact"), "psnr": _then_now(entry, "psnr_min", fmt_metric),
            "delta": _fmt_delta(entry.get("psnr_delta")), "reasons": _reasons(entry)}


def baseline_view(document: dict, sections: list[Section]) -> dict | None:
    """Data for the Regressions section at the top of the page (None without a baseline)."""
    info = document.get("baseline")
    if not isinstance(info, dict):
        return None
    rows = {c: [] for c in baseline_mod.CATEGORIES}
    for sec in sections:
        entry = sec.baseline_entry
        if entry is not None and entry.get("category") in rows:
            rows[entry["category"]].append(_baseline_row(sec, entry))
    recorded = info.get("counts") or {}
    return {
        "source": fmt_optional(info.get("source")),
        "threshold": fmt_value(info.get("psnr_drop_db")),
        "counts": [(baseline_mod.LABELS[c], c, int(recorded.get(c, 0) or 0)) for c in (*baseline_mod.CATEGORIES, "missing")],
        "regressions": rows[baseline_mod.REGRESSION],
        "standing": rows[baseline_mod.STANDING],
        "improvements": rows[baseline_mod.IMPROVEMENT],
        "new": rows[baseline_mod.NEW],
        "missing": [str(k) for k in info.get("missing") or []],
        "environment": [(fmt_value(c.get("key")), fmt_value(c.get("baseline")), fmt_value(c.get("current")))
                        for c in info.get("environment_changes") or [] if isinstance(c, dict)],
    }


# --------------------------------------------------------------------------- environment and shards


def document_environment(document: dict) -> list[tuple[str, str, bool]]:
    return environment_rows(document.get("environment") or {}, set(document.get("environment_differs") or []))


def shard_rows(document: dict) -> list[dict]:
    rows = []
    for shard in document.get("shards") or []:
        env = shard.get("environment") or {}
        summary = shard.get("summary") or {}
        rows.append({"results": fmt_value(shard.get("results")),
                     "summary": ", ".join(f"{k} {v}" for k, v in summary.items()),
                     "device": " ".join(str(env[k]) for k in ("device", "gpu_name", "gpu") if env.get(k)) or NO_VALUE})
    return rows


# --------------------------------------------------------------------------- diagnoses


def attach_diagnoses(diagnosis: dict | None, sections: list[Section]) -> dict | None:
    """Put each diagnosis on the section of its key; the rest get sections of their own. None without a diagnosis."""
    if diagnosis is None:
        return None
    by_key = {str(sec.result.key): sec for sec in sections if sec.result.key is not None}
    orphans: dict[str, list] = {}  # key -> views, in document order; their section ids are x0, x1, ...
    views = []
    for entry in dmod.entries(diagnosis):
        key = str(entry.get("key"))
        sec = by_key.get(key)
        if sec is not None:
            base, same_key = sec.id, sec.diagnoses
        else:
            same_key = orphans.setdefault(key, [])
            base = f"x{list(orphans).index(key)}"
        view = dmod.build_view(entry, f"{base}-diagnosis" + (f"-{len(same_key) + 1}" if same_key else ""))
        same_key.append(view)
        views.append(view)
    return {
        "total": len(views),
        "orphans": sum(len(v) for v in orphans.values()),
        "families": dmod.families_text(diagnosis),
        "overview": [dmod.overview_row(v) for v in views],
        "orphans_sections": [{"id": f"x{i}", "key": views_[0].key, "diagnoses": views_}
                             for i, views_ in enumerate(orphans.values())],
    }


def build_sections(results: list[PreviewResult], entries: list, environment: dict, assets: Assets, search_dirs,
                   max_pictures: int | None = DEFAULT_LIMIT, progress=None) -> list[Section]:
    """Every result's section; pictures for the ``max_pictures`` most in need (see :func:`.pictures.drawing_order`),
    drawn by :func:`.drawing.draw_all`.

    ``progress(done, total)`` is called once per section as it is finished: those without pictures first.
    """
    urgent = {i for i, e in enumerate(entries) if isinstance(e, dict) and e.get("category") == baseline_mod.REGRESSION}
    chosen = drawing_order(results, urgent, max_pictures)
    sections, done = [], 0
    for i, (r, entry) in enumerate(zip(results, entries)):
        sec = build_section(i, r, environment, entry)
        sections.append(sec)
        if i in chosen:
            continue
        if sec.show_images and has_media(r):
            sec.pictures.skipped = skipped_note(max_pictures)
        done += 1
        if progress is not None:
            progress(done, len(results))
    for i, pictures, problems in draw_all([(i, results[i], sections[i].key) for i in sorted(chosen)], assets,
                                          search_dirs):
        sections[i].pictures = pictures
        sections[i].problems.extend(problems)
        done += 1
        if progress is not None:
            progress(done, len(results))
    return sections


def report_view(document: dict, assets: Assets, search_dirs=(), diagnosis: dict | None = None,
                max_pictures: int | None = DEFAULT_LIMIT, progress=None) -> dict:
    """Template data of ``report.html`` except the page's title line (see :mod:`harness.report.html`).

    The results are read once here, as :class:`~harness.result.PreviewResult` records (any readable schema).
    """
    results = results_of(document)
    entries = baseline_mod.regression_entries(document)
    sections = build_sections(results, entries, document.get("environment") or {}, assets, search_dirs,
                              max_pictures, progress)
    diagnosed = attach_diagnoses(diagnosis, sections)
    c = counts(results)
    return {
        "previews": len(results),
        "schema_version": document.get("schema_version"),
        "counts": c, "overall": overall_status(c), "statuses": STATUSES,
        "environment": document_environment(document),
        "shards": shard_rows(document),
        "duplicates": document.get("duplicates") or [],
        "summary": [summary_row(s) for s in sections],
        "sections": sections,
        "diagnosed": diagnosed,
        "baseline": baseline_view(document, sections),
    }
