"""HTML report: sections, pictures, escaping of every user string, offline-only resources, merging shards."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness.errors import HarnessError
from harness.media import read_frames, write_like_aitk
from harness.metrics import compare_clips, verdict
from harness.report import merge_documents, report_main, write_report
from harness.report.html import player_script
from harness.report.knobs import config_diff, summarize_trace
from harness.result import PreviewResult, results_document

SCRIPT = "<script>alert(1)</script>"
TITLE_SCRIPT = "<script>document.title='XSS'</script>"
IMG_ATTACK = "\"><img src=x onerror=document.title='XSS2'>"
ENV = {"harness": "0.1.0", "torch": "2.14.1", "device": "cuda:0", "gpu": "NVIDIA H100", "pillow": "12.3.0", "libwebp": "1.6.0"}
TRACE = [["high", 1000.0], ["high", 1000.0], ["high", 952.66], ["high", 952.66], ["high", 883.21], ["high", 883.21],
         ["low", 771.43], ["low", 771.43], ["low", 561.65], ["low", 561.65], ["low", 24.41], ["low", 24.41]]


# --------------------------------------------------------------------------- fixtures


def _frames(seed: int, f: int = 5, h: int = 32, w: int = 48) -> np.ndarray:
    """Smooth coloured frames (noise would make lossy WebP differences huge and the pictures unreadable)."""
    y, x = np.mgrid[0:h, 0:w]
    out = []
    for i in range(f):
        r = (x * 5 + i * 20 + seed * 30) % 256
        g = (y * 7 + i * 10) % 256
        b = ((x + y) * 3 + seed * 50) % 256
        out.append(np.stack([r, g, b], axis=-1))
    return np.asarray(out, dtype=np.uint8)


def _base(key: str, case: str, step: int, index: int, golden: Path, prompt: str = "a red cat") -> dict:
    return {
        "key": key, "case": case, "golden": str(golden), "golden_raw": None, "step": step, "index": index,
        "label_note": None, "seed": 42 + index, "prompt": prompt, "negative_prompt": "", "width": 48, "height": 32,
        "num_frames": 5, "fps": 16, "guidance_scale": 4.0, "sample_steps": 6, "network_multiplier": 1.0,
        "ctrl_img": "/data/ctrl.png", "lora": {"high": "/loras/x_high_noise.safetensors", "low": "/loras/x_low_noise.safetensors"},
        "lora_path": "unmerged", "status": None, "bit_exact": False, "psnr_mean": None, "psnr_min": None,
        "ssim_mean": None, "ssim_min": None, "psnr_per_frame": None, "ssim_per_frame": None, "frames_path": None,
        "render_path": None, "message": None,
    }


def _compared(result: dict, golden_path: Path, render_path: Path) -> dict:
    golden = read_frames(golden_path).frames
    render = read_frames(render_path).frames
    c = compare_clips(golden, render)
    j = c.to_json()
    result.update(status=verdict(c), bit_exact=bool(c.bit_exact), encoded=j, raw=j,
                  thresholds={"psnr_min": 30.0, "ssim_min": 0.9}, render_path=str(render_path),
                  profile="aitk-euler", profile_exact=True, approximate=None, notes=["a note"], trace=TRACE, seconds=1.5)
    for k in ("psnr_mean", "psnr_min", "ssim_mean", "ssim_min", "worst_frame"):
        result[k] = j[k]
    result["psnr_per_frame"], result["ssim_per_frame"] = j["psnr"], j["ssim"]
    result["message"] = c.mismatch or ("bit-exact with the golden preview" if c.bit_exact else "drifted")
    return result


@pytest.fixture()
def document(tmp_path) -> dict:
    return make_document(tmp_path)


def make_document(tmp_path: Path) -> dict:
    """Six results covering every status, a missing render, a frame-count mismatch and hostile strings."""
    media = tmp_path / "media"
    attack_dir = media / IMG_ATTACK
    gold = _frames(0)
    g1 = write_like_aitk(media / "g1.webp", gold, 16)
    r1 = write_like_aitk(media / "r1.webp", gold, 16)
    g2 = write_like_aitk(attack_dir / "g2.webp", _frames(1), 16)
    noisy = np.clip(_frames(1).astype(np.int16) + np.random.default_rng(0).integers(-40, 41, _frames(1).shape), 0, 255)
    r2 = write_like_aitk(media / "r2.webp", noisy.astype(np.uint8), 16)
    g4 = write_like_aitk(media / "g4.webp", _frames(2), 16)
    r4 = write_like_aitk(media / "r4.webp", _frames(2, f=9), 16)
    results = [
        _compared(_base("case::0::0", "case", 0, 0, g1, prompt=f"sks {SCRIPT} {TITLE_SCRIPT} & more"), g1, r1),
        _compared(_base("case::0::1", "case", 0, 1, g2), g2, r2),
        # the render was recorded but its file is gone
        dict(_compared(_base("case::0::2", "case", 0, 2, g1), g1, r1), render_path=str(media / "gone.webp")),
        _compared(_base("case::0::3", "case", 0, 3, g4), g4, r4),  # frame-count mismatch
        dict(_base("case::2::0", "case", 2, 0, media / "missing.webp"), status="error",
             message="cases/x.yaml: sample.samples[0].ctrl_img: file not found <b>bold</b>"),
        dict(_base(f"case{SCRIPT}::2::1", f"case{SCRIPT}", 2, 1, media / "g9.webp"), status="unreproducible",
             message="seed -1 is re-randomised at render time"),
    ]
    results[1]["profile"] = "runcomfy"
    results[1]["profile_exact"] = False
    results[1]["approximate"] = ["the job quantized the transformer (qfloat8); this render is a bf16 reference"]
    return {"schema_version": 1, "environment": dict(ENV), "summary": {}, "results": results}


class Page(HTMLParser):
    """Collects tags, attributes and text, and which section each belongs to."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.sections: dict[str, dict] = {}
        self.current: str | None = None
        self.depth = 0
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag == "section" and attrs.get("id"):
            self.current = attrs["id"]
            self.sections[self.current] = {"imgs": [], "text": [], "tags": [], "class": attrs.get("class", "")}
            self.depth = 0
        elif tag == "section":
            self.depth += 1
        if tag == "img" and self.current:
            self.sections[self.current]["imgs"].append(attrs)
        if self.current:
            self.sections[self.current]["tags"].append((tag, attrs))

    def handle_endtag(self, tag):
        if tag == "section":
            if self.depth:
                self.depth -= 1
            else:
                self.current = None

    def handle_data(self, data):
        self.text.append(data)
        if self.current:
            self.sections[self.current]["text"].append(data)

    def section_text(self, sid: str) -> str:
        return " ".join(self.sections[sid]["text"])


def _parse(path: Path) -> tuple[str, Page]:
    raw = path.read_text(encoding="utf-8")
    page = Page()
    page.feed(raw)
    return raw, page


# --------------------------------------------------------------------------- the page


def test_report_has_every_section_and_links(document, tmp_path):
    out = write_report(document, tmp_path / "out")
    assert out == tmp_path / "out" / "report.html"
    raw, page = _parse(out)
    assert "summary" in page.sections
    hrefs = {a.get("href") for t, a in page.tags if t == "a"}
    for i, r in enumerate(document["results"]):
        assert f"p{i}" in page.sections, r["key"]
        assert f"#p{i}" in hrefs
        assert r["key"] in page.section_text(f"p{i}")
    header = " ".join(page.text)
    for word in ("pass", "fail", "error", "unreproducible", "bit-exact", "NVIDIA H100", "libwebp"):
        assert word in header
    first = page.section_text("p0")
    for expected in ("sample steps", "guidance scale", "x_high_noise.safetensors", "unmerged", "aitk-euler",
                     "3 steps on high, 3 steps on low", "switch before step 3", "Config diff", "expert boundary", "0.875"):
        assert expected in first, expected
    # no leftovers of the atomic write
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]


def _check_asset(data: bytes, suffix: str) -> None:
    """An asset decodes: raster images through Pillow, the SVG curves as XML."""
    import io
    import xml.etree.ElementTree as ET

    if suffix == ".svg":
        assert ET.fromstring(data).tag.endswith("svg")
        return
    with Image.open(io.BytesIO(data)) as im:
        im.verify()


def test_pictures_are_present_and_decodable(document, tmp_path):
    out = write_report(document, tmp_path / "out")
    _, page = _parse(out)
    imgs = [a for t, a in page.tags if t == "img"]
    assert imgs
    for attrs in imgs:
        src = attrs["src"]
        assert src.startswith("report_assets/") and ".." not in src
        _check_asset((out.parent / src).read_bytes(), Path(src).suffix)
        assert attrs.get("alt")
    exact = page.sections["p0"]["imgs"]
    assert len(exact) >= 3 + 3 + 3 + 1  # player panels, golden/render/diff strips, worst-frame triple, curves
    strip = next(a for a in exact if "strip-golden" in a["src"])
    with Image.open(out.parent / strip["src"]) as im:  # strips stay light: ≤ 160 px thumbnails + border
        assert im.height <= 160 + 4


def test_thumbnails_are_capped_for_large_frames(tmp_path):
    from harness.report import plots

    big = np.zeros((3, 720, 1280, 3), dtype=np.uint8)
    h = plots.thumb_height(720, 1280, 3)
    assert h == 160
    assert plots.strip(big, h).shape[0] == 160 + 2 * plots.GAP
    assert plots.thumb_height(720, 1280, 81) < 160  # long clips shrink further
    assert plots.thumb_height(32, 48, 5) >= 64  # tiny test frames are enlarged


def test_user_strings_are_escaped(document, tmp_path):
    out = write_report(document, tmp_path / "out")
    raw, page = _parse(out)
    assert SCRIPT not in raw and TITLE_SCRIPT not in raw
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in raw
    assert "<img src=x" not in raw and "<b>bold</b>" not in raw
    assert "&#34;&gt;&lt;img src=x onerror=" in raw or "&quot;&gt;&lt;img src=x onerror=" in raw
    assert [t for t, _ in page.tags if t == "script"] == ["script"]  # only the player, allowed by its hash
    assert f"<script>{player_script()[0]}</script>" in raw
    assert not [a for t, a in page.tags if any(k.startswith("on") for k in a)]
    assert SCRIPT in page.section_text("p0")  # the prompt is shown, as text
    assert IMG_ATTACK in page.section_text("p1")
    assert f"case{SCRIPT}::2::1" in page.section_text("p5")  # a hostile case name, as text


def test_no_network_resources(document, tmp_path):
    out = write_report(document, tmp_path / "out")
    raw, page = _parse(out)
    for tag, attrs in page.tags:
        for name in ("src", "href", "srcset", "data", "action", "poster"):
            value = (attrs.get(name) or "").strip().lower()
            assert not value.startswith(("http:", "https:", "//")), (tag, name, value)
    assert not [t for t, _ in page.tags if t in ("link", "iframe", "object", "embed")]
    assert "@import" not in raw and "url(" not in raw
    csp = [a for t, a in page.tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"]
    assert csp and "default-src 'none'" in csp[0]["content"]
    assert f"script-src '{player_script()[1]}';" in csp[0]["content"]  # one script, by hash: no 'unsafe-inline'
    assert "'unsafe-inline'" not in csp[0]["content"].split("script-src", 1)[1].split(";", 1)[0]


def test_missing_render_and_mismatch_are_reported_not_raised(document, tmp_path):
    out = write_report(document, tmp_path / "out")
    _, page = _parse(out)
    gone = page.section_text("p2")
    assert "gone.webp" in gone and "file not found" in gone
    assert len(page.sections["p2"]["imgs"]) >= 1  # the golden strip and the curves still show
    mismatch = page.section_text("p3")
    assert "num_frames snapping differs" in mismatch and "no difference image" in mismatch


def test_error_and_unreproducible_show_message_without_pictures(document, tmp_path):
    out = write_report(document, tmp_path / "out")
    _, page = _parse(out)
    for sid, words in (("p4", "file not found <b>bold</b>"), ("p5", "seed -1 is re-randomised")):
        assert words in page.section_text(sid)
        assert page.sections[sid]["imgs"] == []
    assert "error" in page.sections["p4"]["class"] and "unreproducible" in page.sections["p5"]["class"]


DATA_URI = re.compile(r"^data:image/(png|jpeg|webp|svg\+xml);base64,([A-Za-z0-9+/=]+)$")


def _data_uri_assets(page: Page) -> list[tuple[str, bytes]]:
    """(suffix, bytes) of every img src and link href that is a data: URI; asserts there is nothing else."""
    import base64

    found = []
    for tag, attrs in page.tags:
        for name in ("src", "href"):
            value = attrs.get(name)
            if value is None or (name == "href" and value.startswith("#")):
                continue
            match = DATA_URI.match(value)
            assert match, (tag, name, value[:80])
            suffix = {"png": ".png", "jpeg": ".jpg", "webp": ".webp", "svg+xml": ".svg"}[match.group(1)]
            found.append((suffix, base64.b64decode(match.group(2))))
    return found


def test_inline_mode_embeds_pictures(document, tmp_path):
    out = write_report(document, tmp_path / "out", inline=True)  # the older name of self_contained
    _, page = _parse(out)
    assets = _data_uri_assets(page)
    assert {suffix for suffix, _ in assets} == {".png", ".jpg", ".webp", ".svg"}
    assert not (tmp_path / "out" / "report_assets").exists()
    for suffix, data in assets:
        _check_asset(data, suffix)


def test_rewriting_replaces_assets_of_the_earlier_run(document, tmp_path):
    out = write_report(document, tmp_path / "out")
    first = {p.name for p in (tmp_path / "out" / "report_assets").iterdir()}
    (tmp_path / "out" / "report_assets" / "mine").mkdir()  # not ours: left alone
    out = write_report(document, tmp_path / "out")
    second = {p.name for p in (tmp_path / "out" / "report_assets").iterdir()}
    assert len(first) == 1 and "mine" in second and not (first & second) and len(second) == 2
    _, page = _parse(out)
    for _, attrs in [(t, a) for t, a in page.tags if t == "img"]:
        assert (out.parent / attrs["src"]).is_file()


def test_knob_table_flags_drift(document):
    rows = {r.knob: r for r in config_diff(PreviewResult.from_json(document["results"][0]), ENV)}
    boundary = rows["expert boundary"]
    assert boundary.render.drift is False and boundary.stacks["runcomfy"].drift is True
    assert "3 of 6 steps" in boundary.render.text
    diag = {r.knob: r for r in config_diff(PreviewResult.from_json(document["results"][1]), ENV)}
    assert diag["expert boundary"].render.drift is True  # runcomfy profile departs from ai-toolkit
    assert diag["dtype of fp32-kept modules"].render.drift is True
    assert diag["transformer quantization"].render.drift is True
    t = summarize_trace(TRACE)
    assert t.counts == {"high": 3, "low": 3} and t.switch_index == 3 and t.forwards == 12


def test_schema_2_results_give_the_same_page(document, tmp_path):
    """Results as ``PreviewResult.to_json()`` writes them (schema 2) read exactly like the schema 1 ones."""
    typed = [PreviewResult.from_json(r) for r in document["results"]]
    schema_2 = results_document(document["environment"], typed)
    assert schema_2["schema_version"] == 2 and "psnr_per_frame" not in schema_2["results"][0]
    assert [r["key"] for r in schema_2["results"]] == [r["key"] for r in document["results"]]
    _, one = _parse(write_report(document, tmp_path / "one"))
    raw, two = _parse(write_report(schema_2, tmp_path / "two"))
    assert "schema 2" in raw
    for i in range(len(document["results"])):
        assert two.section_text(f"p{i}") == one.section_text(f"p{i}")
        assert len(two.sections[f"p{i}"]["imgs"]) == len(one.sections[f"p{i}"]["imgs"])
    assert two.section_text("summary") == one.section_text("summary")


# --------------------------------------------------------------------------- merging


def _shard(results: list[dict], device: str) -> dict:
    return {"schema_version": 1, "environment": dict(ENV, device=device), "summary": {"total": len(results)},
            "results": results}


def _drifted(result: dict) -> dict:
    """``result`` re-run as a failing, no longer bit-exact preview (schema 2 JSON: exactness lives in ``encoded``)."""
    typed = PreviewResult.from_json(result)
    return replace(typed, status="fail", encoded=replace(typed.encoded, bit_exact=False)).to_json()


def test_merge_documents_combines_and_recomputes(document):
    res = document["results"]
    a = _shard([res[3], res[0], res[4]], "cuda:0")
    b = _shard([res[1], res[5], _drifted(res[0])], "cuda:1")
    merged = merge_documents([a, b])
    keys = [r["key"] for r in merged["results"]]
    assert sorted(keys) == keys and len(keys) == 5
    assert merged["summary"] == {"total": 5, "fail": 3, "error": 1, "unreproducible": 1, "bit_exact": 0}
    assert merged["duplicates"] == ["case::0::0"]
    assert merged["environment"]["device"] == ["cuda:0", "cuda:1"] and merged["environment_differs"] == ["device"]
    assert merged["environment"]["torch"] == "2.14.1" and len(merged["shards"]) == 2
    single = merge_documents([_shard(res[:2], "cuda:0")])
    assert single["environment"]["device"] == "cuda:0" and "shards" not in single
    with pytest.raises(ValueError):
        merge_documents([])
    with pytest.raises(ValueError):
        merge_documents([dict(a, schema_version=99)])


def test_report_main_merges_files(document, tmp_path):
    res = document["results"]
    f1, f2 = tmp_path / "s1.json", tmp_path / "s2.json"
    f1.write_text(json.dumps(_shard(res[:3], "cuda:0")))
    f2.write_text(json.dumps(_shard(res[3:], "cuda:1")))
    out = report_main([f1, f2], tmp_path / "rep")
    assert out.is_file()
    merged = json.loads((tmp_path / "rep" / "results.merged.json").read_text())
    assert merged["summary"]["total"] == 6
    raw, page = _parse(out)
    assert "differs between shards" in raw and len([s for s in page.sections if s.startswith("p")]) == 6
    # a per-preview result file from --out/results/ is accepted too
    one = tmp_path / "one.json"
    one.write_text(json.dumps(res[0]))
    assert report_main([one], tmp_path / "rep1").is_file()
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(HarnessError, match="bad.json"):
        report_main([bad], tmp_path / "rep2")
    with pytest.raises(HarnessError, match="file not found"):
        report_main([tmp_path / "nope.json"], tmp_path / "rep3")


def test_relative_paths_resolve_against_the_results_folder(document, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tmp_path / "media", run / "media")
    r = json.loads(json.dumps(document["results"][0]))
    r["golden"], r["render_path"] = "media/g1.webp", "media/r1.webp"
    (run / "results.json").write_text(json.dumps(_shard([r], "cpu")))
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        out = report_main([run / "results.json"], tmp_path / "rep")
    finally:
        os.chdir(cwd)
    _, page = _parse(out)
    assert len(page.sections["p0"]["imgs"]) >= 7 and "file not found" not in page.section_text("p0")


# --------------------------------------------------------------------------- a real browser

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


def _chromium(page: Path, tmp_path: Path, virtual_ms: int = 0) -> tuple[str, str]:
    """(DOM after load and ``virtual_ms`` of virtual time, stderr) of headless chromium, or skip the test."""
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'chrome'}",
           "--enable-logging=stderr", "--v=0", *([f"--virtual-time-budget={virtual_ms}"] if virtual_ms else []),
           "--dump-dom", page.resolve().as_uri()]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.skip("chromium did not finish within 120 s")
    if proc.returncode != 0 or "<html" not in proc.stdout:
        pytest.skip(f"chromium could not run here (rc {proc.returncode}): {proc.stderr[-300:]}")
    return proc.stdout, proc.stderr


def _console_problems(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "CONSOLE" in line or "Content Security Policy" in line
            or "Refused to" in line or "Uncaught" in line]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (CI: apt-get install chromium)")
def test_chromium_renders_escaped_text_and_runs_only_the_player(document, tmp_path):
    out = write_report(document, tmp_path / "out")
    dom, stderr = _chromium(out, tmp_path)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom
    assert dom.lower().count("<script") == 1  # the player; no payload became a script
    assert "XSS" not in dom.split("</title>")[0]  # neither payload changed the title
    parsed = Page()
    parsed.feed(dom)
    assert not [a for t, a in parsed.tags if any(k.startswith("on") for k in a)]
    assert not [a for t, a in parsed.tags if t == "img" and a.get("src") == "x"]
    assert SCRIPT in " ".join(parsed.text)
    players = [a for t, a in parsed.tags if t == "div" and "player" in (a.get("class") or "").split()]
    assert players and all(a.get("data-ready") == "true" for a in players)  # the CSP let the player run
    assert not _console_problems(stderr), _console_problems(stderr)


# Runs after the player (appended to a copy of the page, allowed by its own hash): plays, samples what every panel
# shows, pauses, steps and seeks, and writes the samples into the DOM for --dump-dom.
PLAYER_PROBE = """(function () {
  var player = document.querySelector("#p1 .player");
  var samples = [];
  function state(what) {
    var panels = Array.prototype.map.call(player.querySelectorAll("[data-panel]"), function (f) {
      return [f.getAttribute("data-panel"), Number(f.getAttribute("data-frame")), f.querySelector("img").style.objectPosition];
    });
    samples.push({what: what, frame: Number(player.getAttribute("data-frame")), panels: panels,
                  label: player.querySelector("output").textContent, playing: player.getAttribute("data-playing")});
  }
  function click(action) { player.querySelector("[data-action=" + action + "]").click(); }
  state("loaded");
  click("play");
  var ticks = 0;
  var sampler = setInterval(function () {
    state("playing");
    if (++ticks < 12) { return; }
    clearInterval(sampler);
    click("play");
    state("paused");
    click("next");
    state("next");
    click("prev");
    click("prev");
    state("prev");
    var slider = player.querySelector("input[type=range]");
    slider.value = "3";
    slider.dispatchEvent(new Event("input"));
    state("seek");
    var pre = document.createElement("pre");
    pre.id = "probe";
    pre.textContent = JSON.stringify(samples);
    document.body.appendChild(pre);
  }, 45);
})();"""


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (CI: apt-get install chromium)")
def test_chromium_plays_golden_and_render_in_step(document, tmp_path):
    import base64
    import hashlib
    import html as html_mod

    out = write_report(document, tmp_path / "out")
    raw = out.read_text(encoding="utf-8")
    probe_hash = "sha256-" + base64.b64encode(hashlib.sha256(PLAYER_PROBE.encode()).digest()).decode()
    ours = f"script-src '{player_script()[1]}';"
    assert raw.count(ours) == 1
    probed = raw.replace(ours, f"script-src '{player_script()[1]}' '{probe_hash}';")
    probed = probed.replace("</body>", f"<script>{PLAYER_PROBE}</script></body>")
    page = out.parent / "probe.html"
    page.write_text(probed, encoding="utf-8")
    dom, stderr = _chromium(page, tmp_path, virtual_ms=3000)
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert found, _console_problems(stderr) or dom[-500:]
    samples = json.loads(html_mod.unescape(found.group(1)))
    _, parsed = _parse(out)
    tags = parsed.sections["p1"]["tags"]
    player = next(a for t, a in tags if t == "div" and a.get("class") == "player")
    frames, cols = int(player["data-frames"]), int(player["data-cols"])
    golden = next(a for t, a in tags if t == "img" and "motion-golden" in a["src"])
    w, h = int(golden["width"]), int(golden["height"])
    by_what = {}
    for s in samples:
        kinds = [p[0] for p in s["panels"]]
        assert kinds == ["golden", "render", "diff"]
        assert {p[1] for p in s["panels"]} == {s["frame"]}, s  # every panel on the player's frame, always
        f = s["frame"]  # and every panel shows that frame's cell of its sheet
        assert {p[2] for p in s["panels"]} == {f"{-(f % cols) * w}px {-(f // cols) * h}px".replace("-0px", "0px")}, s
        assert s["label"] == f"frame {f} / {frames - 1}"
        by_what.setdefault(s["what"], []).append(s)
    assert by_what["loaded"][0]["frame"] == 0
    assert all(s["playing"] == "true" for s in by_what["playing"])
    assert len({s["frame"] for s in by_what["playing"]}) >= 3  # it moved on, through several frames
    paused = by_what["paused"][0]
    assert paused["playing"] == "false"
    assert by_what["next"][0]["frame"] == (paused["frame"] + 1) % frames  # stepping moves every panel
    assert by_what["prev"][0]["frame"] == (paused["frame"] - 1) % frames
    assert by_what["seek"][0]["frame"] == 3
    assert not _console_problems(stderr), _console_problems(stderr)


def test_diff_thumbnails_keep_single_pixel_differences():
    from harness.report import plots

    g = np.zeros((1, 480, 640, 3), dtype=np.uint8)
    r = g.copy()
    r[0, 100, 200, 1] = 40  # one channel of one pixel, ≥ 32 levels → saturated colour
    thumb = next(plots.diff_frames(g, r, 160))
    assert thumb.shape[0] == 160 and (thumb != plots.lut()[0]).any(axis=-1).sum() >= 1
    full = plots.diff_heatmap(g[0], r[0])
    assert (full[100, 200] == plots.lut()[255]).all() and (full[0, 0] == plots.lut()[0]).all()


def test_stack_difference_is_shown_and_escaped(document, tmp_path):
    result = next(r for r in document["results"] if r["status"] in ("pass", "fail"))
    result.update(stack_reason="exactness not expected: stack differs (cpu_vendor AuthenticAMD here <b>Intel</b>)",
                  stack_diff={"cpu_vendor": ["AuthenticAMD", "<b>Intel</b>"]}, stack_unknown=["threads"])
    html = (write_report(document, tmp_path / "out")).read_text()
    assert "<h3>Stack</h3>" in html and "exactness not expected" in html
    assert "<td>cpu_vendor</td><td>AuthenticAMD</td><td>&lt;b&gt;Intel&lt;/b&gt;</td>" in html
    assert "<td>threads</td><td>unknown</td>" in html and "<b>Intel</b>" not in html
