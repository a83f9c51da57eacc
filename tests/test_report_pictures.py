"""The report's motion: player sheets in step, the shareable clip, the self-contained page, which previews get
pictures (failing first, up to a limit), progress over a few hundred results, drawing on worker processes."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageSequence

from harness.media import write_like_aitk
from harness.metrics import Comparison, Thresholds, compare_clips
from harness.report import build_report, curves, drawing, motion, plots, write_report
from harness.report.assets import ASSETS_DIR, Assets
from harness.report.pictures import drawing_order
from harness.result import PreviewResult, results_document
from tests.test_report import _check_asset, _data_uri_assets, _frames, _parse, make_document

PANEL = 48 * 3  # the test frames are 48×32: enlarged ×3 to 144×96 panels
ROW = 32 * 3


@pytest.fixture()
def document(tmp_path) -> dict:
    return make_document(tmp_path)


def _tags(page, sid: str, tag: str) -> list[dict]:
    return [a for t, a in page.sections[sid]["tags"] if t == tag]


def _clip(path: Path) -> list[np.ndarray]:
    with Image.open(path) as im:
        return [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(im)]


# --------------------------------------------------------------------------- the player


def test_player_has_one_sheet_per_panel_in_one_grid(document, tmp_path):
    out = write_report(document, tmp_path / "out")
    _, page = _parse(out)
    player = next(a for a in _tags(page, "p1", "div") if a.get("class") == "player")
    assert player["data-frames"] == "5" and player["data-fps"] == "16.0" and player["data-frame"] == "0"
    cols = int(player["data-cols"])
    rows = -(-5 // cols)
    panels = [a["data-panel"] for a in _tags(page, "p1", "figure") if "data-panel" in a]
    assert panels == ["golden", "render", "diff"]
    sheets = [a for a in _tags(page, "p1", "img") if "-motion-" in a["src"]]
    assert len(sheets) == 3
    for img in sheets:
        assert (img["width"], img["height"]) == (str(PANEL), str(ROW))
        with Image.open(out.parent / img["src"]) as im:
            assert im.size == (cols * PANEL, rows * ROW)
    slider = next(a for a in _tags(page, "p1", "input"))
    assert slider["type"] == "range" and slider["max"] == "4"
    assert "hidden" in next(a for a in _tags(page, "p1", "div") if a.get("class") == "controls")  # until the script runs
    # a bit-exact preview draws the render's frames once: its sheets are the golden's
    exact = {a["src"] for a in _tags(page, "p0", "img") if "-motion-" in a["src"]}
    assert len(exact) == 2 and any("motion-golden" in s for s in exact)


def test_the_sheet_cells_are_the_frames_in_order(document, tmp_path):
    out = write_report(document, tmp_path / "out")
    _, page = _parse(out)
    player = next(a for a in _tags(page, "p1", "div") if a.get("class") == "player")
    cols = int(player["data-cols"])
    golden = next(a for a in _tags(page, "p1", "img") if "motion-golden" in a["src"])
    sheet = np.asarray(Image.open(out.parent / golden["src"]).convert("RGB")).astype(int)
    frames = [np.repeat(np.repeat(f, 3, 0), 3, 1).astype(int) for f in _frames(1)]  # the golden, ×3 NEAREST
    for i in range(5):
        x, y = (i % cols) * PANEL, (i // cols) * ROW
        cell = sheet[y:y + ROW, x:x + PANEL]
        errors = [np.abs(cell - f).mean() for f in frames]
        assert int(np.argmin(errors)) == i, errors


# --------------------------------------------------------------------------- the clip


def test_clip_is_golden_render_and_difference_with_every_frame(document, tmp_path):
    out = write_report(document, tmp_path / "out")
    _, page = _parse(out)
    links = [a for a in _tags(page, "p1", "a") if "download" in a]
    assert len(links) == 1 and links[0]["href"].endswith("-clip.webp") and links[0]["download"].endswith(".webp")
    assert "download side-by-side clip" in page.section_text("p1")
    frames = _clip(out.parent / links[0]["href"])
    assert len(frames) == 5
    assert frames[0].shape == (ROW + motion.LABEL_H, 3 * PANEL + 2 * plots.GAP, 3)
    golden = [np.repeat(np.repeat(f, 3, 0), 3, 1).astype(int) for f in _frames(1)]
    for i, frame in enumerate(frames):  # each clip frame holds that frame's golden in its first panel
        panel = frame[motion.LABEL_H:, :PANEL].astype(int)
        assert int(np.argmin([np.abs(panel - g).mean() for g in golden])) == i


def test_clip_of_clips_of_different_lengths_has_the_longer_length(document, tmp_path):
    out = write_report(document, tmp_path / "out")  # p3: golden 5 frames, render 9: no difference panel
    _, page = _parse(out)
    link = next(a for a in _tags(page, "p3", "a") if "download" in a)
    frames = _clip(out.parent / link["href"])
    assert len(frames) == 9 and frames[0].shape[1] == 2 * PANEL + plots.GAP
    ended = frames[7][motion.LABEL_H:, :PANEL].astype(int)  # the golden has ended: a grey panel (lossy WebP)
    assert np.abs(ended - motion.BLANK).max() <= 6
    player = next(a for a in _tags(page, "p3", "div") if a.get("class") == "player")
    assert player["data-frames"] == "9"


# --------------------------------------------------------------------------- one file


def test_self_contained_report_works_alone(document, tmp_path):
    out = write_report(document, tmp_path / "out", self_contained=True)
    assert not (tmp_path / "out" / ASSETS_DIR).exists()
    alone = tmp_path / "elsewhere" / "report.html"
    alone.parent.mkdir()
    shutil.move(out, alone)
    shutil.rmtree(tmp_path / "media")  # nothing it shows may come from anywhere else
    raw, page = _parse(alone)
    assert ASSETS_DIR not in raw
    assets = _data_uri_assets(page)  # every src and href is a data: URI or an anchor on the page
    assert {suffix for suffix, _ in assets} == {".png", ".jpg", ".webp", ".svg"}
    for suffix, data in assets:
        _check_asset(data, suffix)
    clips = [a for t, a in page.tags if t == "a" and "download" in a]
    assert clips and all(a["href"].startswith("data:image/webp;base64,") for a in clips)
    import base64

    with Image.open(io.BytesIO(base64.b64decode(clips[1]["href"].split(",", 1)[1]))) as im:
        assert im.n_frames == 5


def test_build_report_writes_a_self_contained_page(document, tmp_path):
    results = tmp_path / "results.json"
    results.write_text(json.dumps(document), encoding="utf-8")
    outcome = build_report([results], tmp_path / "out", self_contained=True)
    _, page = _parse(outcome.path)
    assert _data_uri_assets(page) and not (tmp_path / "out" / ASSETS_DIR).exists()


# --------------------------------------------------------------------------- which previews, and progress


def _media(tmp_path: Path) -> dict:
    """Three pairs on disk: identical, a little drift, a lot of drift (with their real comparisons)."""
    gold = _frames(0)
    out = {}
    for name, noise in (("exact", 0), ("near", 4), ("far", 40)):
        render = np.clip(gold.astype(np.int16) + np.random.default_rng(1).integers(-noise, noise + 1, gold.shape), 0, 255)
        g = write_like_aitk(tmp_path / f"{name}-golden.webp", gold, 16)
        r = write_like_aitk(tmp_path / f"{name}-render.webp", gold if not noise else render.astype(np.uint8), 16)
        from harness.media import read_frames

        out[name] = (g, r, compare_clips(read_frames(g).frames, read_frames(r).frames))
    return out


def _many(tmp_path: Path, n: int = 300) -> list[PreviewResult]:
    """``n`` results: every 10th has files on disk (fails on the far pair), the rest record no media."""
    media = _media(tmp_path)
    results = []
    for i in range(n):
        kind = ("far" if i % 30 == 0 else "near" if i % 30 == 10 else "exact") if i % 10 == 0 else None
        status = "fail" if kind == "far" else "error" if i % 50 == 7 else "pass"
        g, r, c = media[kind or "exact"]
        results.append(PreviewResult(
            key=f"case::{i:03d}::0", case="case", step=i, index=0, status=status, golden=str(g) if kind else None,
            render_path=str(r) if kind else None, encoded=None if status == "error" else c,
            thresholds=Thresholds(), width=48, height=32, num_frames=5, fps=16, profile="aitk-euler"))
    return results


def test_pictures_go_to_the_previews_most_in_need_and_progress_is_reported(tmp_path):
    results = _many(tmp_path)
    document = results_document({"device": "cpu"}, results)
    calls = []
    out = write_report(document, tmp_path / "out", max_pictures=6, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(i, 300) for i in range(1, 301)]
    raw, page = _parse(out)
    sections = [s for s in page.sections if s.startswith("p")]
    assert len(sections) == 300
    assert raw.count('<tr class="row-') == 300  # every result has its summary row
    drawn = {int(s[1:]) for s in sections if any("-motion-" in a["src"] for a in page.sections[s]["imgs"])}
    assert drawn == {0, 30, 60, 90, 120, 150}  # 6 of the 10 failures (equal PSNR: document order), nothing else
    skipped = [s for s in sections if "pictures not drawn" in page.section_text(s)]
    assert len(skipped) == 30 - 6  # every other result with files says why it has no pictures
    assert "6 previews could not be checked" in raw and "sks" not in raw
    assert [int(s[1:]) for s in sections] == list(range(300))


def test_drawing_order_failures_first_then_drift_then_exact():
    def r(status, psnr, exact=False, media=True):
        c = Comparison(golden_shape=(1, 2, 2, 3), render_shape=(1, 2, 2, 3), psnr_min=psnr, bit_exact=exact)
        return PreviewResult(key="k", case="c", step=0, index=0, status=status, encoded=c,
                             golden="g.webp" if media else None)

    results = [r("pass", float("inf"), exact=True), r("pass", 35.0), r("fail", 25.0), r("fail", 20.0),
               r("error", None), r("pass", 40.0), r("pass", 30.0, media=False), r("unreproducible", None)]
    assert drawing_order(results, limit=None) == {0, 1, 2, 3, 5}
    assert drawing_order(results, limit=2) == {2, 3}
    assert drawing_order(results, limit=3) == {1, 2, 3}  # then the pass that drifted most
    assert drawing_order(results, urgent={5}, limit=1) == {5}  # a baseline regression comes first
    assert drawing_order(results, limit=0) == set()


# --------------------------------------------------------------------------- worker processes


def test_a_pool_that_breaks_falls_back_to_drawing_here(tmp_path, monkeypatch):
    results = _many(tmp_path, 60)
    jobs = [(i, r, r.key) for i, r in enumerate(results) if r.golden][:4]

    def broken(jobs, assets, search_dirs, workers):
        yield drawing.draw_one(jobs[0], assets, search_dirs)
        raise OSError("no semaphores here")

    monkeypatch.setattr(drawing, "_on_pool", broken)
    drawn = list(drawing.draw_all(jobs, Assets(tmp_path / "out", False), [], workers=2))
    assert sorted(i for i, _, _ in drawn) == sorted(i for i, _, _ in jobs)  # each once
    assert all(pics.player is not None for _, pics, _ in drawn)


def test_workers_draw_the_same_pictures(tmp_path):
    """Forked workers (in a fresh interpreter, where forking is safe) draw what drawing here draws."""
    script = textwrap.dedent(f"""
        import json, os, sys
        from pathlib import Path
        from harness.report import drawing
        from harness.report.assets import Assets
        from tests.test_report_pictures import _many
        if not drawing.fork_is_safe():
            print(json.dumps("unsafe")); sys.exit()
        original = drawing.draw_preview
        def noting_the_process(pics, result, index, key, assets, search_dirs, problems):
            original(pics, result, index, key, assets, search_dirs, problems)
            problems.append(os.getpid())  # workers are forked: they run this too
        drawing.draw_preview = noting_the_process
        tmp = Path({str(tmp_path)!r})
        results = _many(tmp, 100)
        jobs = [(i, r, r.key) for i, r in enumerate(results) if r.golden]
        out = {{}}
        for workers in (1, 2):
            drawn = sorted(drawing.draw_all(jobs, Assets(tmp / "out", True), [], workers=workers), key=lambda d: d[0])
            out[workers] = [[i, [p.src for _, p in pics.strips], [p.src for _, p in pics.player.panels],
                             pics.clip.src, problems[:-1]] for i, pics, problems in drawn]
            out[f"pids{{workers}}"] = sorted({{"here" if p[-1] == os.getpid() else "worker" for _, _, p in drawn}})
        print(json.dumps([out[1] == out[2], len(out[1]), out["pids1"], out["pids2"]]))
    """)
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=root,
                          env={**os.environ, "PYTHONPATH": str(root)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    verdict = json.loads(proc.stdout.strip().splitlines()[-1])
    if verdict == "unsafe":
        pytest.skip("forking is not safe on this platform")
    same, count, one, two = verdict
    assert same and count == 10
    assert one == ["here"] and two == ["worker"]  # workers=2: every preview drawn by a worker process


# --------------------------------------------------------------------------- the curves


def test_curves_mark_identical_frames_thresholds_and_the_worst_frame():
    import xml.etree.ElementTree as ET

    svg = curves.metric_curves({"encoded": ([float("inf"), 41.0, None, 38.5], [1.0, 0.99, None, 0.97])},
                               Thresholds(psnr_min=30.0, ssim_min=0.9), worst=3)
    root = ET.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    assert root.get("width") == str(curves.WIDTH) and root.get("height") == str(curves.HEIGHT)
    assert len(root.findall(f"{ns}path")) == 1  # one ▲ for the one identical frame
    assert len(root.findall(f"{ns}polyline")) == 4  # PSNR and SSIM, each broken at the missing frame
    strokes = [e.get("stroke") for e in root.findall(f"{ns}line")]
    assert strokes.count(curves.THRESHOLD) >= 2 and strokes.count(curves.WORST) == 2
    assert "http" not in svg.replace('xmlns="http://www.w3.org/2000/svg"', "")  # loads nothing
    assert curves.metric_curves({}) is None
