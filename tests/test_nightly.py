"""Nightly outputs: baseline comparison (every category, ∞ handling, missing fields) and the report's
Regressions section, its escaping, and the exit code the nightly job reads."""

from __future__ import annotations

import copy
import json
import math
from html.parser import HTMLParser
from pathlib import Path

import pytest

from harness.errors import HarnessError
from harness.metrics import Comparison
from harness.numbers import from_json
from harness.report import (attach_baseline, build_report, compare_to_baseline, regression_count, report_main,
                            write_report)
from harness.report.baseline import classify
from harness.report.html import player_script
from harness.result import SCHEMA_VERSION, PreviewResult

HOSTILE = "<script>alert('nightly')</script>"
ENV = {"harness": "0.1.0", "torch": "2.14.1", "device": "cuda:0", "gpu": "NVIDIA H100"}


def res(key: str, status: str | None = "pass", psnr=None, bit_exact=None, **extra) -> PreviewResult:
    """One preview's result; with ``psnr`` (the encoded PSNR min, as results JSON writes it) it was compared, and
    is bit-exact when told so or, as compare_clips decides it, when every frame is identical (∞)."""
    encoded = None
    if psnr is not None:
        psnr_min = from_json(psnr)
        exact = math.isinf(psnr_min) if bit_exact is None else bit_exact
        encoded = Comparison(golden_shape=(5, 32, 48, 3), render_shape=(5, 32, 48, 3), psnr_min=psnr_min,
                             psnr_mean=psnr_min, ssim_min=1.0 if exact else 0.95, ssim_mean=1.0 if exact else 0.97,
                             bit_exact=exact)
    return PreviewResult(key=key, case=key.split("::")[0], step=0, index=0, status=status, encoded=encoded, **extra)


def doc(results: list, env: dict | None = None) -> dict:
    """A results document; typed results are written as the runner writes them, dicts as they are."""
    return {"schema_version": SCHEMA_VERSION, "environment": dict(env or ENV), "summary": {},
            "results": [r.to_json() if isinstance(r, PreviewResult) else r for r in results]}


# --------------------------------------------------------------------------- categories


PAIRS = {
    # key: (baseline result or None, tonight's result, expected category, a word every reason list must contain)
    "lost_exact": (res("c::lost_exact", "pass", "inf", True), res("c::lost_exact", "pass", 41.0, False),
                   "regression", "lost bit-exactness"),
    "psnr_drop": (res("c::psnr_drop", "pass", 40.0, False), res("c::psnr_drop", "pass", 38.5, False),
                  "regression", "fell"),
    "pass_fail": (res("c::pass_fail", "pass", 30.4, False), res("c::pass_fail", "fail", 29.9, False),
                  "regression", "pass → fail"),
    "pass_error": (res("c::pass_error", "pass", 33.0, False), res("c::pass_error", "error"), "regression", "pass → error"),
    "pass_unrep": (res("c::pass_unrep", "pass", 33.0, False), res("c::pass_unrep", "unreproducible"),
                   "regression", "no longer checked"),
    "worse_failure": (res("c::worse_failure", "fail", 25.0, False), res("c::worse_failure", "fail", 20.0, False),
                      "regression", "fell"),
    "standing": (res("c::standing", "fail", 25.0, False), res("c::standing", "fail", 24.6, False),
                 "standing_failure", "still fail"),
    "standing_error": (res("c::standing_error", "error"), res("c::standing_error", "fail", 22.0, False),
                       "standing_failure", "error → fail"),
    "fixed": (res("c::fixed", "fail", 25.0, False), res("c::fixed", "pass", "inf", True), "improvement", "fail → pass"),
    "became_exact": (res("c::became_exact", "pass", 36.0, False), res("c::became_exact", "pass", "inf", True),
                     "improvement", "became bit-exact"),
    "psnr_rise": (res("c::psnr_rise", "pass", 33.0, False), res("c::psnr_rise", "pass", 36.0, False),
                  "improvement", "rose"),
    "small_drop": (res("c::small_drop", "pass", 40.0, False), res("c::small_drop", "pass", 39.0, False),
                   "unchanged", None),  # exactly the threshold: not "more than"
    "still_exact": (res("c::still_exact", "pass", "inf", True), res("c::still_exact", "pass", float("inf"), True),
                    "unchanged", None),
    "still_unrep": (res("c::still_unrep", "unreproducible"), res("c::still_unrep", "unreproducible"), "unchanged", None),
    "brand_new": (None, res("c::brand_new", "fail", 20.0, False), "new", "not in the baseline"),
    "now_checked": (res("c::now_checked", "unreproducible"), res("c::now_checked", "fail", 21.0, False), "new",
                    "unreproducible in the baseline"),
}


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_each_category(name):
    before, after, category, word = PAIRS[name]
    entry = classify(after, before, psnr_drop_db=1.0)
    assert entry["category"] == category, entry
    if word:
        assert any(word in reason for reason in entry["reasons"]), entry["reasons"]
    json.dumps(entry, allow_nan=False)  # strict JSON: ∞ is written as "inf"


def _both():
    base = doc([b for b, _, _, _ in PAIRS.values() if b is not None] + [res("c::gone", "pass", 35.0, False)])
    now = doc([a for _, a, _, _ in PAIRS.values()], env=dict(ENV, torch="2.15.0"))
    return base, now


def test_compare_to_baseline_counts_lists_and_environment():
    base, now = _both()
    frozen = copy.deepcopy((base, now))
    cmp = compare_to_baseline(now, base, psnr_drop_db=1.0)
    assert (base, now) == frozen  # inputs untouched
    expected = {}
    for _, _, category, _ in PAIRS.values():
        expected[category] = expected.get(category, 0) + 1
    for category in ("regression", "new", "standing_failure", "improvement", "unchanged"):
        assert cmp["counts"][category] == expected.get(category, 0), category
    assert cmp["counts"]["missing"] == 1 and cmp["missing"] == ["c::gone"]  # a shard that did not finish
    assert sorted(cmp["regressions"]) == sorted(f"c::{n}" for n, p in PAIRS.items() if p[2] == "regression")
    assert cmp["environment_changes"] == [{"key": "torch", "baseline": "2.14.1", "current": "2.15.0"}]
    json.dumps(cmp, allow_nan=False)


def test_threshold_is_configurable_and_validated():
    before, after = res("k::0::0", "pass", 40.0, False), res("k::0::0", "pass", 39.5, False)
    assert classify(after, before, 1.0)["category"] == "unchanged"
    assert classify(after, before, 0.25)["category"] == "regression"
    assert classify(after, before, 0.0)["category"] == "regression"
    for bad in (-1, float("nan"), "lots"):
        with pytest.raises(ValueError):
            compare_to_baseline(doc([after]), doc([before]), psnr_drop_db=bad)


@pytest.mark.parametrize("written,value", [("inf", math.inf), ("-inf", -math.inf), (31.5, 31.5), (31, 31.0),
                                           (None, None)])
def test_psnr_values_as_in_results_json(written, value):
    """PSNR is read as results JSON writes it (harness.numbers): a number, "inf", or null when not computed."""
    r = PreviewResult.from_json({"key": "k::0::0", "status": "pass", "encoded": {"psnr_min": written}})
    assert r.psnr_min == value


@pytest.mark.parametrize("junk", ["Infinity", "∞", "31.5", "n/a", True, [1]])
def test_psnr_written_any_other_way_is_a_corrupt_results_file(tmp_path, junk):
    """One convention for ∞ (harness.numbers): anything else is a one-line error naming the file, not a guess."""
    bad = _write(tmp_path, "odd.json", doc([{"key": "k::0::0", "status": "pass", "encoded": {"psnr_min": junk}}]))
    with pytest.raises(HarnessError, match=r"odd\.json: results\[k::0::0\]: corrupt comparison"):
        build_report([bad], tmp_path / "out")
    _, s1, _, _ = _nightly_files(tmp_path)
    with pytest.raises(HarnessError, match=r"odd\.json: results\[k::0::0\]: corrupt comparison"):
        build_report([s1], tmp_path / "out", baseline=bad)


def test_a_view_that_is_not_an_object_is_a_corrupt_results_file(tmp_path):
    bad = _write(tmp_path, "odd.json", doc([{"key": "k::0::0", "status": "pass", "encoded": "bit-exact"}]))
    with pytest.raises(HarnessError, match=r"odd\.json: results\[k::0::0\]: corrupt comparison \(encoded is str"):
        build_report([bad], tmp_path / "out")


def test_infinity_handling():
    # ∞ → finite: one reason (no duplicate "fell ∞ → x")
    e = classify(res("k", "pass", 44.0), res("k", "pass", "inf"))
    assert e["category"] == "regression" and len(e["reasons"]) == 1 and "lost bit-exactness" in e["reasons"][0]
    assert e["baseline_psnr_min"] == "inf" and e["psnr_delta"] == "-inf"
    # finite → ∞: improvement, delta "inf"
    e = classify(res("k", "pass", "inf"), res("k", "pass", 44.0))
    assert e["category"] == "improvement" and e["psnr_delta"] == "inf"
    # ∞ → ∞: no delta at all (inf − inf is not a number)
    e = classify(res("k", "pass", "inf"), res("k", "pass", math.inf))
    assert e["category"] == "unchanged" and e["psnr_delta"] is None


def test_missing_fields_and_keys_are_tolerated():
    now = doc([{"key": "a::0::0"}, {"key": None, "status": "fail"}, res("b::0::0", None)])
    base = doc([{"key": "a::0::0", "status": "pass"}, {"key": "b::0::0"}])
    cmp = compare_to_baseline(now, base)
    a = cmp["results"]["a::0::0"]
    assert a["category"] == "regression" and "pass → unknown" in a["reasons"]  # the status vanished
    assert cmp["results"]["b::0::0"]["category"] == "unchanged"
    anonymous = [k for k in cmp["results"] if k.startswith("(result without key")]
    assert len(anonymous) == 1 and cmp["results"][anonymous[0]]["category"] == "new"
    # documents without results or environment
    assert compare_to_baseline({}, {})["counts"]["regression"] == 0
    assert compare_to_baseline(doc([res("x::0::0")]), {"results": None})["counts"]["new"] == 1
    # an entry that is no result at all (no "key" field, not an object) is a corrupt document: one line, no guess
    for junk in ({"status": "fail", "psnr_min": 20.0}, "not a dict"):
        with pytest.raises(HarnessError, match="not a preview result"):
            compare_to_baseline(doc([junk]), base)


def test_attach_baseline_marks_results_and_counts():
    base, now = _both()
    cmp = compare_to_baseline(now, base)
    out = attach_baseline(now, cmp, source="last-night.json")
    assert "baseline" not in now and all("regression" not in r for r in now["results"])
    assert out["baseline"]["source"] == "last-night.json" and "results" not in out["baseline"]
    assert all(r["regression"]["category"] for r in out["results"])
    assert regression_count(out) == cmp["counts"]["regression"] > 0
    assert regression_count(now) == 0


# --------------------------------------------------------------------------- report and exit code


class Page(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.ids: list[str] = []
        self.tags: list[tuple[str, dict]] = []
        self.text: dict[str, list[str]] = {}
        self.stack: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag == "section":
            self.stack.append(attrs.get("id") or "")
            if attrs.get("id"):
                self.ids.append(attrs["id"])

    def handle_endtag(self, tag):
        if tag == "section" and self.stack:
            self.stack.pop()

    def handle_data(self, data):
        self.text.setdefault(self.stack[-1] if self.stack else "", []).append(data)

    def section(self, sid: str) -> str:
        return " ".join(self.text.get(sid, []))


def _write(tmp_path: Path, name: str, document: dict) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(document))
    return path


def _nightly_files(tmp_path: Path):
    hostile_key = f"case{HOSTILE}::0::0"
    last = doc([res(hostile_key, "pass", "inf", True), res("case::0::1", "fail", 22.0, False),
                res("case::0::2", "pass", 35.0, False)])
    shard1 = doc([res(hostile_key, "pass", 37.5, False, message=f"drifted {HOSTILE}")])
    shard2 = doc([res("case::0::1", "fail", 22.1, False), res("case::0::2", "pass", 35.2, False)],
                 env=dict(ENV, device="cuda:1"))
    return (_write(tmp_path, "last-night.json", last), _write(tmp_path, "shard1.json", shard1),
            _write(tmp_path, "shard2.json", shard2), hostile_key)


def test_report_with_baseline_shows_regressions_first_and_escapes(tmp_path):
    last, s1, s2, hostile_key = _nightly_files(tmp_path)
    outcome = build_report([s1, s2], tmp_path / "nightly", baseline=last)
    assert outcome.regression_count == 1 and outcome.exit_code == 1 and outcome.missing_count == 0
    merged = json.loads((tmp_path / "nightly" / "results.merged.json").read_text())
    assert merged["baseline"]["regressions"] == [hostile_key] and merged["baseline"]["source"] == str(last)
    assert {r["key"]: r["regression"]["category"] for r in merged["results"]} == {
        hostile_key: "regression", "case::0::1": "standing_failure", "case::0::2": "unchanged"}
    raw = outcome.path.read_text(encoding="utf-8")
    page = Page()
    page.feed(raw)
    assert page.ids.index("regressions") < page.ids.index("summary")  # at the top
    top = page.section("regressions")
    assert hostile_key in top and "lost bit-exactness" in top and "standing failures (1)" in top
    assert HOSTILE not in raw and "&lt;script&gt;alert(" in raw
    assert [t for t, _ in page.tags if t == "script"] == ["script"]  # the player, by its hash; nothing injected
    assert f"<script>{player_script()[0]}</script>" in raw
    assert not [a for _, a in page.tags if any(k.startswith("on") for k in a)]
    headers = [d.strip() for d in page.text.get("summary", [])]
    assert "vs baseline" in headers
    assert "regression" in page.section("summary") and "standing failure" in page.section("summary")
    link = [a for t, a in page.tags if t == "a" and a.get("href", "").startswith("#p")]
    assert link  # regressions link to their preview sections


def test_report_without_regressions_exits_zero(tmp_path):
    last, s1, s2, _ = _nightly_files(tmp_path)
    tonight = build_report([s1, s2], tmp_path / "n1")
    rolled = build_report([s2], tmp_path / "n2", baseline=tmp_path / "n1" / "results.merged.json")
    assert rolled.regression_count == 0 and tonight.failing_count > 0  # standing failures, no regression
    assert tonight.exit_code == rolled.exit_code == 1  # failures in the documents fail `report` by default ...
    tonight.regressions_only = rolled.regressions_only = True
    assert tonight.exit_code == rolled.exit_code == 0  # ... and with --regressions-only only regressions do
    assert rolled.missing_count == 1  # tonight's shard 1 did not run
    raw = rolled.path.read_text(encoding="utf-8")
    assert "no regressions" in raw and "did not finish" in raw
    plain = Page()
    plain.feed(tonight.path.read_text(encoding="utf-8"))
    assert "regressions" not in plain.ids and "vs baseline" not in " ".join(plain.text.get("summary", []))
    assert report_main([s1], tmp_path / "n3", baseline=last).name == "report.html"  # path-returning API kept


def test_bad_baseline_is_a_one_line_error(tmp_path):
    _, s1, _, _ = _nightly_files(tmp_path)
    with pytest.raises(HarnessError, match="file not found"):
        build_report([s1], tmp_path / "out", baseline=tmp_path / "nope.json")
    wrong = _write(tmp_path, "wrong.json", {"schema_version": 99, "results": []})
    with pytest.raises(HarnessError, match=r"wrong\.json: schema_version: 99"):
        build_report([s1], tmp_path / "out", baseline=wrong)
    with pytest.raises(HarnessError, match="psnr"):
        build_report([s1], tmp_path / "out", baseline=s1, psnr_drop_db=-2)


def test_write_report_renders_a_hand_made_regression_entry_escaped(tmp_path):
    """A document edited by hand (odd categories, reasons as a string) still renders, escaped."""
    r = dict(res("k::0::0", "fail", 20.0, False).to_json(),
             regression={"category": f"x{HOSTILE}", "reasons": f"because {HOSTILE}"})
    document = doc([r])
    document["baseline"] = {"psnr_drop_db": 1.0, "counts": {"regression": 0}, "regressions": [],
                            "missing": [HOSTILE], "environment_changes": [{"key": HOSTILE, "baseline": 1, "current": 2}]}
    raw = write_report(document, tmp_path / "out").read_text(encoding="utf-8")
    assert HOSTILE not in raw and "cat-unknown" in raw and "because &lt;script&gt;" in raw
