"""The config diff against the golden's job: a profile forced with --profile is not the job's, so the rows where
the render departs from what the job's ai-toolkit version implies are marked (≠ and a CSS class), equal ones not."""

from __future__ import annotations

import pytest

from harness.report import write_report
from harness.report.knobs import MARKS, config_diff
from harness.report.sampling import job_profile
from harness.result import PreviewResult, results_document
from tests.test_report import ENV, _parse, make_document

PROFILE_ROWS = ("sampler", "shift", "expert boundary", "posterior", "dtype of fp32-kept modules")


@pytest.fixture()
def document(tmp_path) -> dict:
    return make_document(tmp_path)


def _variant(document, profile: str, notes=(), version: str | None = None) -> PreviewResult:
    """The bit-exact preview of the test document as rendered with ``profile`` (forced or chosen, as ``notes`` say)."""
    r = PreviewResult.from_json(document["results"][0])
    r.profile, r.profile_settings, r.notes = profile, None, list(notes)
    r.quantization = None if version is None else {"transformer": "qfloat8", "aitk_version": version,
                                                   "aitk_version_assumed": False}
    return r


def _marks(result: PreviewResult) -> dict[str, str]:
    return {row.knob: row.mark for row in config_diff(result, ENV) if row.knob in PROFILE_ROWS}


FORCED = "profile {} chosen explicitly"


@pytest.mark.parametrize("profile,notes,version,differ,job", [
    # --profile aitk-unipc on a job of ai-toolkit 0.12.26 (FlowMatch Euler): sampler and shift differ
    ("aitk-unipc", [FORCED.format("aitk-unipc")], "0.12.26", {"sampler", "shift"}, "aitk-euler"),
    # the same job under auto: the render is the job's own sampler
    ("aitk-euler", ["ai-toolkit 0.12.26 from the LoRA metadata"], None, set(), "aitk-euler"),
    # 0.8.1 implies the new UniPC grid; the old grid forced: only the sampler row (its sigma grid) differs
    ("aitk-unipc-old", [FORCED.format("aitk-unipc-old")], "0.8.1", {"sampler"}, "aitk-unipc"),
    # 0.9.3 spans the switch: under auto the better match kept is the job's
    ("aitk-unipc", ["profile aitk-unipc: the other sampler of 0.9.3"], None, set(), "aitk-unipc"),
    # a diagnosis profile forced, the version unknown: what every era shares still shows
    ("runcomfy", [FORCED.format("runcomfy")], None, {"expert boundary", "dtype of fp32-kept modules"}, None),
])
def test_rows_differing_from_the_golden_job_are_marked(document, profile, notes, version, differ, job):
    result = _variant(document, profile, notes, version)
    assert job_profile(result) == job
    marks = _marks(result)
    assert {k for k, m in marks.items() if m == "differs"} == differ
    assert set(marks.values()) <= set(MARKS)
    if job is not None:  # a known job: every profile row is decided, and the rest are "same"
        assert {k for k, m in marks.items() if m == "same"} == set(PROFILE_ROWS) - differ


def test_the_ai_toolkit_column_is_the_golden_job_not_the_forced_profile(document):
    rows = {r.knob: r for r in config_diff(_variant(document, "aitk-unipc", [FORCED.format("aitk-unipc")], "0.12.26"))}
    assert rows["sampler"].aitk.text == "FlowMatch Euler" and rows["sampler"].render.text.startswith("UniPC")
    assert rows["shift"].aitk.text == "5.0" and rows["shift"].render.text == "3.0"


def _knob_rows(page, sid: str) -> list[str]:
    """The row classes of the config-diff table of section ``sid``."""
    rows, inside = [], False
    for tag, attrs in page.sections[sid]["tags"]:
        if tag == "table":
            inside = attrs.get("class") == "knobs"
        elif inside and tag == "tr" and attrs.get("class"):
            rows.append(attrs["class"])
    return rows


def test_the_page_marks_differing_rows_with_a_class_and_a_sign(document, tmp_path):
    forced = _variant(document, "aitk-unipc", [FORCED.format("aitk-unipc")], "0.12.26")
    auto = _variant(document, "aitk-euler", ["ai-toolkit 0.12.26 from the LoRA metadata"])
    auto.key, auto.index = "case::0::9", 9
    html = write_report(results_document(ENV, [forced, auto]), tmp_path / "out").read_text(encoding="utf-8")
    raw, page = _parse(tmp_path / "out" / "report.html")
    classes = _knob_rows(page, "p0")
    assert set(classes) <= {f"knob-{m}" for m in MARKS} and classes.count("knob-differs") == 2
    section = raw.split('id="p0"', 1)[1].split('id="p1"', 1)[0]
    rows = [row.split("</tr>", 1)[0] for row in section.split("<tr ")[1:]]
    differing = [row for row in rows if row.startswith('class="knob-differs"')]
    assert len(differing) == 2 and all("≠" in row for row in differing)
    assert [r.split("<b>", 1)[1].split("</b>", 1)[0] for r in differing] == ["sampler", "shift"]
    same = [row for row in rows if row.startswith('class="knob-same"')]
    assert same and all("≠" not in row for row in same)
    assert "≠ marks the 2 settings where this render differs from the golden's job" in " ".join(page.sections["p0"]["text"])
    assert _knob_rows(page, "p1").count("knob-differs") == 0  # the same job under auto: nothing marked
    other = html.split('id="p1"', 1)[1]
    assert 'class="knob-differs"' not in other and "matches the golden's job" in other


def test_shared_tables_are_drawn_once_but_never_mixed_up(document, tmp_path):
    a = _variant(document, "aitk-euler")
    b = _variant(document, "aitk-euler")
    c = _variant(document, "aitk-euler")
    b.key, b.index = "case::0::8", 8
    c.key, c.index, c.sample_steps = "case::0::9", 9, 31
    raw = write_report(results_document(ENV, [a, b, c]), tmp_path / "out").read_text(encoding="utf-8")
    tables = [part.split("</table>", 1)[0] for part in raw.split('<table class="knobs">')[1:]]
    assert len(tables) == 3 and tables[0] == tables[1] != tables[2]
    assert "31 from the job" in tables[2] and "31 from the job" not in tables[0]
