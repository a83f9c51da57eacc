"""The HTML pages: ``report.html`` for a results document, ``diagnosis.html`` for a drift diagnosis.

With a drift diagnosis (``diagnosis.json`` from ``wan-parity diagnose``), each preview that was diagnosed shows a
"Drift diagnosis" block: the one-sentence explanation, then the variants ranked by encoded PSNR against the golden
(best row highlighted); ``write_diagnosis_report`` writes the same blocks as ``diagnosis.html`` without results.

This module only renders: the page data comes from :mod:`.sections` and :mod:`.diagnosis`, the pictures from
:mod:`.pictures` through :mod:`.assets`. The page loads nothing from the network. Its one script is the player
(``templates/_player.js.html``, ours and static, inserted verbatim): the Content-Security-Policy allows exactly that
script by its SHA-256 and nothing else, so an injected one would not run even if escaping ever failed. Every string
from the documents is escaped by Jinja2's autoescaping; the templates never mark user data safe, and the script
reads only numbers from data- attributes and writes text and styles, never HTML.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import math
from functools import lru_cache
from pathlib import Path

from ..fsutil import write_text_atomic
from . import diagnosis as dmod
from . import plots
from .assets import Assets
from .batch import gc_paused
from .format import plural
from .knobs import STACKS
from .pictures import DEFAULT_LIMIT, DIFF_LABEL
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


@lru_cache(maxsize=1)
def player_script() -> tuple[str, str]:
    """(the player's script, its CSP hash ``sha256-…``): the page allows this one script and no other."""
    import markupsafe

    text = (TEMPLATES / "_player.js.html").read_text(encoding="utf-8")
    digest = base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii")
    return markupsafe.Markup(text), f"sha256-{digest}"  # our static file, not document data


def _render(template: str, heading: str, previews: int, view: dict, script_hash: str | None = None, **extra) -> str:
    """One page: the shared title line ("<heading> — N previews", time, harness version) over the page's data."""
    from .. import __version__

    return _jinja().get_template(template).render(
        title=f"{heading} — {plural(previews, 'preview')}",
        generated=_dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z"),
        harness_version=__version__, script_hash=script_hash,
        **view, **extra)


def _knobs_tables():
    """The config-diff table of a section, rendered (escaped) once per distinct set of rows: a night's previews of
    one job share their table, and rendering thousands of identical ones was a third of a large report's time."""
    macro = _jinja().get_template("_knobs.html").module.table
    tables: dict = {}

    def table(rows):
        key = tuple(row.key() for row in rows)
        if key not in tables:
            tables[key] = macro(rows, STACKS)
        return tables[key]

    return table


def render_html(document: dict, assets: Assets, search_dirs=(), diagnosis: dict | None = None,
                max_pictures: int | None = DEFAULT_LIMIT, progress=None) -> str:
    view = report_view(document, assets, search_dirs, diagnosis, max_pictures, progress)
    colorbar = assets.add("colorbar.png", plots.colorbar(), alt="difference colour scale")
    script, script_hash = player_script()
    return _render("report.html", "Wan 2.2 I2V parity report", view.pop("previews"), view, script_hash,
                   colorbar=colorbar, diff_gain=plots.DIFF_GAIN, diff_label=DIFF_LABEL,
                   saturate=math.ceil(255 / plots.DIFF_GAIN), player_script=script, knobs_table=_knobs_tables())


def write_report(document: dict, out_dir: Path, *, self_contained: bool = False, inline: bool = False,
                 search_dirs=(), diagnosis=None, max_pictures: int | None = DEFAULT_LIMIT, progress=None) -> Path:
    """Write ``out_dir/report.html`` (atomically) and its pictures; returns the page's path.

    ``diagnosis``: a diagnosis document (``diagnosis.json`` as a dict, or its path) whose entries are shown as
    "Drift diagnosis" blocks in the sections of their keys (keys without a result get sections of their own).
    Without it the page is exactly the plain report.

    ``self_contained=True`` (``inline`` is its older name) embeds every asset (pictures, player sheets, clips) as
    data: URIs: report.html works alone, moved or mailed, and is heavier. Otherwise assets go to
    ``out_dir/report_assets/<run-id>/`` and earlier runs' asset folders are removed once the new page is in place.
    Relative paths in the results are tried against the cwd, ``out_dir`` and ``search_dirs``.

    ``max_pictures``: how many previews get pictures, regressions and failures first (None: all; see
    :func:`harness.report.pictures.drawing_order`). ``progress(done, total)`` is called after each preview.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if diagnosis is not None:
        diagnosis = dmod.check_document(diagnosis)
    assets = Assets(out_dir, self_contained or inline)
    target = out_dir / REPORT_NAME
    try:
        with gc_paused():
            page = render_html(document, assets, [*search_dirs, out_dir], diagnosis=diagnosis,
                               max_pictures=max_pictures, progress=progress)
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
