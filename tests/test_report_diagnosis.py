"""Drift diagnoses in the HTML report: the one-sentence explanation and the ranked table, escaped; the plain
report unchanged without one; ``diagnosis.html`` for ``wan-parity diagnose``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from harness import diagnose as dg
from harness.errors import HarnessError
from harness.report import build_report, write_diagnosis_report, write_report
from harness.report.html import player_script
from harness.options import RunOptions
from tests.test_report import ENV, IMG_ATTACK, SCRIPT, Page, make_document

ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"
SENTENCE = "The golden matches the `aitk-unipc` profile (UniPC, shift 3) bit-exactly: the job sampled with UniPC."
HOSTILE_VARIANT = f"seed 43 {SCRIPT}"
ORPHAN_KEY = f"orphan{SCRIPT}::9::0"


def _row(rank, variant, family, changes, psnr_min, bit_exact=False, same_as=None, seconds=1.25):
    return {"rank": rank, "variant": variant, "family": family, "description": f"what {variant} does",
            "changes": changes, "bit_exact": bit_exact, "psnr_min": psnr_min,
            "psnr_mean": psnr_min if psnr_min == "inf" else psnr_min + 3.0, "ssim_min": 1.0 if bit_exact else 0.91,
            "ssim_mean": 1.0 if bit_exact else 0.95, "max_abs_diff": 0 if bit_exact else 37, "mismatch": None,
            "bit_exact_raw": None, "same_as": same_as, "seconds": 0.0 if same_as else seconds}


def _entry(key, status, explanation, best, ranked, **extra):
    return {"key": key, "case": key.split("::")[0], "golden": f"/g/{key}.webp", "step": 0, "index": 0,
            "status": status, "found": status in ("exact", "explained", "likely", "numeric"), "explanation": explanation,
            "best": best, "profile": "aitk-euler", "profile_settings": {}, "profile_why": "job sampler flowmatch",
            "swept": bool(ranked) and status != "exact", "seconds": 12.5, "message": extra.pop("message", None),
            "ranked": ranked, **extra}


def make_diagnosis() -> dict:
    explained = _entry("case::0::0", "explained", SENTENCE, "aitk-unipc", [
        _row(1, "aitk-unipc", "profile", {"profile": "aitk-unipc"}, "inf", bit_exact=True),
        _row(2, "shift 3", "shift", {"shift": 3.0}, 41.5, same_as=None),
        _row(3, HOSTILE_VARIANT, "seed", {"seed": 43, f"knob{SCRIPT}": f"value{IMG_ATTACK}"}, 12.0),
        _row(4, "baseline", "baseline", {}, 11.9),
        _row(5, "seed 41", "seed", {"seed": 41}, 11.9, same_as=HOSTILE_VARIANT),
    ])
    hostile = _entry(f"case{SCRIPT}::2::1", "unexplained",
                     f"No single knob explains the drift: the best variant, {HOSTILE_VARIANT}, reaches 14.0 dB.",
                     HOSTILE_VARIANT, [_row(1, HOSTILE_VARIANT, "seed", {"seed": 2}, 14.0),
                                       _row(2, "baseline", "baseline", {}, 13.0)])
    orphan = _entry(ORPHAN_KEY, "numeric", f"The baseline is the closest render {SCRIPT}.", None,
                    [_row(1, "baseline", "baseline", {}, 38.0), _row(2, "shift 5", "shift", {"shift": 5.0}, 30.0)])
    broken = _entry("case::7::7", f"weird{SCRIPT}", "", None, [], message=f"ctrl_img: file not found {IMG_ATTACK}")
    diagnoses = [explained, hostile, orphan, broken]
    return {"schema": dg.SCHEMA, "environment": dict(ENV, note=SCRIPT), "families": ["profile", "shift", "seed"],
            "summary": {"total": 4, "exact": 0, "explained": 1, "likely": 0, "numeric": 1, "unexplained": 1,
                        "error": 0, "unreproducible": 0, "found": 2, "seconds": 50.0},
            "diagnoses": diagnoses}


def _parse(path: Path) -> tuple[str, Page]:
    raw = path.read_text(encoding="utf-8")
    page = Page()
    page.feed(raw)
    return raw, page


def _assert_safe(raw: str, page: Page) -> None:
    assert SCRIPT not in raw and "<img src=x" not in raw
    assert not [t for t, _ in page.tags if t in ("iframe", "object", "embed", "link")]
    scripts = [t for t, _ in page.tags if t == "script"]  # none, or only the report's player (allowed by its hash)
    assert not scripts or (scripts == ["script"] and f"<script>{player_script()[0]}</script>" in raw)
    assert not [a for _, a in page.tags if any(k.startswith("on") for k in a)]
    for _, attrs in page.tags:
        for name in ("src", "href"):
            assert not (attrs.get(name) or "").strip().lower().startswith(("http:", "https:", "//", "javascript:"))
    # ids and classes are ours, never the document's
    assert all(re.fullmatch(r"[A-Za-z0-9_-]*", a.get("id") or "") for _, a in page.tags)
    assert all(re.fullmatch(r"[A-Za-z0-9_ -]*", a.get("class") or "") for _, a in page.tags)


def _ranked_rows(raw: str, block_id: str) -> list[str]:
    block = raw[raw.index(f'id="{block_id}"'):]
    table = block[block.index('<table class="ranked">'):block.index("</table>")]
    return re.findall(r"<tr class=\"([^\"]*)\">", table)


# --------------------------------------------------------------------------- results report + diagnosis


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("diag")
    document = make_document(tmp)
    diagnosis = make_diagnosis()
    with_diag = write_report(document, tmp / "with", diagnosis=diagnosis)
    plain = write_report(document, tmp / "plain")
    plain_none = write_report(document, tmp / "plain-none", diagnosis=None)
    return {"with": with_diag, "plain": plain, "plain_none": plain_none, "tmp": tmp, "document": document}


def test_section_shows_the_sentence_and_the_ranked_table(pages):
    raw, page = _parse(pages["with"])
    text = page.section_text("p0")
    assert "Drift diagnosis" in text and SENTENCE in text
    assert '<p class="explanation">' + SENTENCE + "</p>" in raw  # the sentence stands on its own
    # the table: every variant, ranked, best (the named one) highlighted, the baseline marked
    assert _ranked_rows(raw, "p0-diagnosis") == ["best", "", "", " base", ""]
    for cell in ("aitk-unipc", "shift 3", "what shift 3 does", "profile = aitk-unipc", "shift = 3.0", "∞", "41.50",
                 "44.50", "0.9100", "1.25", HOSTILE_VARIANT, "seed = 43", f"knob{SCRIPT} = value{IMG_ATTACK}"):
        assert cell in text, cell
    assert raw.index("p0-diagnosis") < raw.index("<h3>Frames")  # prominent: before the pictures


def test_hostile_strings_are_escaped(pages):
    raw, page = _parse(pages["with"])
    _assert_safe(raw, page)
    assert ESCAPED in raw
    hostile = page.section_text("p5")  # the result whose key carries a script tag
    assert f"No single knob explains the drift: the best variant, {HOSTILE_VARIANT}" in hostile
    assert _ranked_rows(raw, "p5-diagnosis")[0] == "best"  # the best named by a hostile string still matches its row
    assert "dg-unknown" in raw  # an unknown status gets the neutral class, its text shown escaped
    assert f"weird{ESCAPED}" in raw


def test_diagnoses_without_a_result_get_their_own_section(pages):
    raw, page = _parse(pages["with"])
    own = [sid for sid, s in page.sections.items() if "diagnosis-only" in s["class"]]
    assert len(own) == 2  # the orphan key and the broken entry
    texts = " ".join(page.section_text(sid) for sid in own)
    assert ORPHAN_KEY in texts and f"The baseline is the closest render {SCRIPT}." in texts
    assert "ctrl_img: file not found" in texts and IMG_ATTACK in texts
    orphan_id = next(sid for sid in own if ORPHAN_KEY in page.section_text(sid))
    assert _ranked_rows(raw, f"{orphan_id}-diagnosis") == ["best base", ""]  # no named best: the top-ranked render
    # the overview and the summary column link to every block
    hrefs = {a.get("href") for t, a in page.tags if t == "a"}
    assert {"#p0-diagnosis", "#p5-diagnosis", f"#{orphan_id}-diagnosis"} <= hrefs
    assert "drift diagnosis" in " ".join(page.sections["summary"]["text"])
    assert "families swept: profile, shift, seed" in page.section_text("diagnoses")


def _normalized(path: Path, root: Path) -> str:
    raw = path.read_text(encoding="utf-8")
    raw = re.sub(r"generated [^·]*·", "generated X ·", raw)
    return re.sub(r"r\d{8}T\d{6}-[0-9a-f]{8}", "RUN", raw)


def test_plain_report_is_unchanged_without_a_diagnosis(pages):
    plain = _normalized(pages["plain"], pages["tmp"])
    assert plain == _normalized(pages["plain_none"], pages["tmp"])
    assert "Drift diagnos" not in plain and "drift diagnosis" not in plain
    assert 'class="diag' not in plain and "dg-" not in plain and ".diag" not in plain and "ranked" not in plain
    with_diag = _normalized(pages["with"], pages["tmp"])
    # the diagnosis only adds: the plain page's sections are all there, in order
    ids = re.findall(r'<section [^>]*id="([^"]+)"', plain)
    assert ids == [i for i in re.findall(r'<section [^>]*id="([^"]+)"', with_diag) if i in ids]


def test_build_report_passes_a_diagnosis_path(pages, tmp_path):
    results = tmp_path / "results.json"
    results.write_text(json.dumps(pages["document"]), encoding="utf-8")
    diag = tmp_path / "diagnosis.json"
    diag.write_text(json.dumps(make_diagnosis()), encoding="utf-8")
    out = build_report([results], tmp_path / "out", diagnosis=diag).path
    raw, page = _parse(out)
    _assert_safe(raw, page)
    assert SENTENCE in page.section_text("p0")


def test_bad_diagnosis_documents_are_one_line_errors(pages, tmp_path):
    with pytest.raises(HarnessError, match="schema"):
        write_report(pages["document"], tmp_path / "a", diagnosis={"schema": "other@9", "diagnoses": []})
    with pytest.raises(HarnessError, match="not a diagnosis document"):
        write_diagnosis_report({"results": []}, tmp_path / "b")
    with pytest.raises(HarnessError, match="file not found"):
        write_diagnosis_report(tmp_path / "nope.json", tmp_path / "c")
    assert not (tmp_path / "a" / "report.html").exists()


# --------------------------------------------------------------------------- diagnosis.html


def test_diagnosis_page(tmp_path):
    out = write_diagnosis_report(make_diagnosis(), tmp_path / "out")
    assert out == tmp_path / "out" / "diagnosis.html"
    raw, page = _parse(out)
    _assert_safe(raw, page)
    assert ESCAPED in raw
    assert SENTENCE in page.section_text("s0") and ORPHAN_KEY in page.section_text("s2")
    assert _ranked_rows(raw, "d0") == ["best", "", "", " base", ""]
    overview = page.section_text("diagnoses")
    for text in (SENTENCE, "aitk-unipc", "11.90 → ∞", HOSTILE_VARIANT):
        assert text in overview, text
    header = " ".join(page.text[: page.text.index("All diagnoses")])
    assert "NVIDIA H100" in header and "note" in header and SCRIPT in header  # environment, as text
    assert "explanation found" in header and "50.00" in header  # the summary
    assert "no single knob explains the drift" in header  # banner: one preview is unexplained
    assert "default-src 'none'" in raw


def test_empty_diagnosis_page(tmp_path):
    raw, page = _parse(write_diagnosis_report({"schema": dg.SCHEMA, "diagnoses": []}, tmp_path))
    assert "no previews were diagnosed" in raw and "<table class=\"ranked\">" not in raw


class _FakeEngine:
    def __init__(self, options):
        pass

    def environment(self):
        return dict(ENV)


def test_diagnose_main_writes_the_page(monkeypatch, tmp_path):
    monkeypatch.setattr(dg, "Engine", _FakeEngine)
    document, code = dg.diagnose_main([], RunOptions(device="cpu"), tmp_path)
    # nothing diagnosed is exit 3 (a nightly that checked nothing is not green), and the page is still written
    assert code == 3 and document["report"] == str(tmp_path / "diagnosis.html")
    assert (tmp_path / "diagnosis.html").is_file()
    assert json.loads((tmp_path / "diagnosis.json").read_text()) == document

    import harness.report

    def broken(*_args, **_kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(harness.report, "write_diagnosis_report", broken)
    document, code = dg.diagnose_main([], RunOptions(device="cpu"), tmp_path / "again")
    assert code == 3 and document["report"] is None and "disk full" in document["report_error"]
    assert json.loads((tmp_path / "again" / "diagnosis.json").read_text()) == document
