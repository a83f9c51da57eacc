"""The HTML pages: ``report.html`` for a results document, ``diagnosis.html`` for a drift diagnosis.

With a drift diagnosis (``diagnosis.json`` from ``wan-parity diagnose``), each preview that was diagnosed shows a
"Drift diagnosis" block: the one-sentence explanation, then the variants ranked by encoded PSNR against the golden
(best row highlighted); ``write_diagnosis_report`` writes the same blocks as ``diagnosis.html`` without results.

This module only renders: the page data comes from :mod:`.sections` and :mod:`.diagnosis`, the pictures from
:mod:`.assets`. The page loads nothing from the network and runs no script (its Content-Security-Policy forbids
both). Every string from the documents is escaped by Jinja2's autoescaping; the templates never mark user data safe.
"""

from __future__ import annotations

import datetime as _dt
import math
from pathlib import Path

from ..fsutil import write_text_atomic
from . import diagnosis as dmod
from . import plots
from .assets import Assets
from .format import plural
from .knobs import STACKS
from .sections import report_view

TEMPLATES = Path(__file__).resolve().parent / "templates"
REPORT_NAME = "report.html"
DIAGNOSIS_REPORT_NAME = "diagnosis.html"


def _jinja():
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=True,  # every {{ }} is escaped; the templates never use |safe
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _render(template: str, heading: str, previews: int, view: dict, **extra) -> str:
    """One page: the shared title line ("<heading> — N previews", time, harness version) over the page's data."""
    from .. import __version__

    return _jinja().get_template(template).render(
        title=f"{heading} — {plural(previews, 'preview')}",
        generated=_dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z"),
        harness_version=__version__,
        **view, **extra)


def render_html(document: dict, assets: Assets, search_dirs=(), diagnosis: dict | None = None) -> str:
    view = report_view(document, assets, search_dirs, diagnosis)
    colorbar = assets.add("colorbar.png", plots.colorbar(), alt="difference colour scale")
    return _render("report.html", "Wan 2.2 I2V parity report", view.pop("previews"), view,
                   stacks=STACKS, colorbar=colorbar, diff_gain=plots.DIFF_GAIN,
                   saturate=math.ceil(255 / plots.DIFF_GAIN))


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
        diagnosis = dmod.check_document(diagnosis)
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
    view = dmod.page_view(diagnosis)
    return _render("diagnosis.html", "Wan 2.2 I2V drift diagnosis", view.pop("previews"), view)


def write_diagnosis_report(diagnosis_document, out_dir) -> Path:
    """Write ``out_dir/diagnosis.html`` (atomically) for a diagnosis document (a dict or a diagnosis.json path).

    The page has no pictures and loads nothing; its blocks are the ones ``write_report(..., diagnosis=...)`` shows.
    """
    document = dmod.check_document(diagnosis_document)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / DIAGNOSIS_REPORT_NAME
    write_text_atomic(target, render_diagnosis_html(document))
    return target
