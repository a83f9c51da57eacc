"""The drift diagnosis: goldens fabricated under one wrong knob must be traced back to that knob.

Each golden is rendered by the *runner* (``Engine.render``) with one setting changed through the target itself (an
explicit or registered profile, the sample's seed/multiplier/negative prompt, the preview's LoRA/merge flag, or the
control-image loader), not through the diagnosis' own variant code, so a variant that applied its knob differently
from the runner would not match bit-exactly and the test would fail.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness import diagnose as dg
from harness.demo_model import build_tiny_model, make_demo_lora_pair
from harness.media import write_like_aitk
from harness.paths import PathMap
from harness.render import conditioning
from harness.render.profiles import PROFILES
from harness.engine import Engine
from harness.spec import PreviewTarget
from harness.options import RunOptions
from harness.spec import LoraPair, MergeRound, PreviewJob, SampleSpec

BASE_NEG = "blurry, low quality"
BASE_PROFILE = "aitk-unipc-old"
# One thread: the tests are self-consistent (goldens and variants render on the same engine), and on a busy 2-core
# machine two threads spend more time synchronising than computing (~4x slower per render).
THREADS = 1
# Variant renders do not depend on the golden: the knob tests diagnose one preview against 11 goldens, so they share
# the renders through the diagnosis' opt-in cache (the first test does the full sweep and times it).
RENDER_CACHE: dict = {}
# The test preview was rendered on CPU (rng_layout cpu): no CUDA noise layout to vary (tests/test_gpu_layout.py has those).
NO_VARIANTS_HERE = {"gpu-layout"}


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("diagnose")
    model = build_tiny_model(root / "tiny_model")
    high, low = make_demo_lora_pair(model, root / "lora", "diag", seed=7, step=250)
    earlier = LoraPair(*make_demo_lora_pair(model, root / "lora", "diag", seed=3, step=200))
    y, x = np.mgrid[0:32, 0:48].astype(np.float32)  # 3:2, so a centre crop differs from a stretch
    ctrl = np.stack([40 + 200 * (x / 48), 120 + 100 * np.sin(y / 5), 200 - 150 * ((x + y) % 17 > 8)], axis=-1)
    Image.fromarray(np.clip(ctrl, 0, 255).astype(np.uint8)).save(root / "ctrl.png")
    sample = SampleSpec(index=2, prompt="a red kite drifts over the green hills", negative_prompt=BASE_NEG, seed=44,
                        width=32, height=32, num_frames=5, guidance_scale=4.0, sample_steps=4, network_multiplier=0.8,
                        fps=16, ctrl_img=str(root / "ctrl.png"))  # 4 UniPC-old steps: t=899 sits between 875 and 900
    preview = PreviewJob(case="diag", golden=root / "unset.webp", step=250, index=2, sample=sample,
                         lora=LoraPair(high, low), merged=False,  # on a base an earlier merged round left (§8.2)
                         merge_history=(MergeRound(step=200, multiplier=0.8, lora=earlier),))
    target = PreviewTarget(preview=preview, model_name=str(model), config_file=root / "config.yaml",
                           profile=BASE_PROFILE, path_map=PathMap(), rng_layout="cpu", device="cpu")
    engine = Engine(RunOptions(device="cpu", threads=THREADS))
    return {"root": root, "target": target, "engine": engine}


def _golden(world, name: str, target: PreviewTarget, monkeypatch=None, patch=None) -> PreviewTarget:
    """Render ``target`` with the runner (inside ``patch``), save it like ai-toolkit, return the base target with it."""
    if monkeypatch is not None:
        with monkeypatch.context() as m:
            patch(m)
            render = world["engine"].render(target)
    else:
        render = world["engine"].render(target)
    path = write_like_aitk(world["root"] / f"golden_{name}.webp", render.frames, target.preview.sample.fps)
    base = world["target"]
    return replace(base, preview=replace(base.preview, golden=path))


def _with_sample(target, **changes):
    return replace(target, preview=replace(target.preview, sample=replace(target.preview.sample, **changes)))


def _with_profile(monkeypatch, **changes):
    """Register a one-knob profile under a test name (only while the golden renders)."""
    def patch(m):
        m.setitem(PROFILES, "test-knob", replace(PROFILES[BASE_PROFILE], name="test-knob", **changes))
    return patch


def _wrong_knob_goldens():
    """(family, expected best variant, how to fabricate the golden)."""
    def profile(world, mp):
        return _golden(world, "profile", replace(world["target"], profile="runcomfy"))

    def via_profile(**changes):
        def make(world, mp):
            return _golden(world, "_".join(changes), replace(world["target"], profile="test-knob"), mp,
                           _with_profile(mp, **changes))
        return make

    def multiplier(world, mp):
        return _golden(world, "multiplier", _with_sample(world["target"], network_multiplier=1.0))

    def lora_off(world, mp):
        t = world["target"]
        return _golden(world, "lora_off", replace(t, preview=replace(t.preview, lora=None)))

    def merged(world, mp):
        t = world["target"]
        return _golden(world, "merged", replace(t, preview=replace(t.preview, merged=True)))

    def seed(world, mp):
        return _golden(world, "seed", _with_sample(world["target"], seed=42))

    def negative(world, mp):
        return _golden(world, "negative", _with_sample(world["target"], negative_prompt=""))

    def resize(world, mp):
        original = conditioning.load_control_image

        def crop(*args, **kwargs):  # whatever resize the caller asks for, the golden is centre-cropped
            return original(*args, **{**kwargs, "resize": "center-crop"})
        return _golden(world, "resize", world["target"], mp,
                       lambda m: m.setattr(conditioning, "load_control_image", crop))

    def quantized(world, mp):
        from harness.render import quant

        plan = quant.quantization_plan({"quantize": True, "quantize_te": True, "qtype": "qfloat8"}, "0.12.26")
        return _golden(world, "quantized", world["target"], mp,
                       lambda m: m.setattr(quant, "quantization_plan", lambda *args, **kwargs: plan))

    def pristine(world, mp):
        t = world["target"]
        return _golden(world, "pristine", replace(t, preview=replace(t.preview, merge_history=())))

    return [
        ("profile", "runcomfy", profile),
        ("quantization", "qfloat8 (UI default)", quantized),
        ("shift", "shift 5", via_profile(shift=5.0)),
        ("boundary", "boundary 0.9", via_profile(boundary=0.9)),
        ("multiplier", "multiplier 1", multiplier),
        ("lora", "LoRA off", lora_off),
        ("merge", "merged LoRA", merged),
        ("posterior", "posterior mode", via_profile(posterior="mode")),
        ("dtype", "fp32-kept modules", via_profile(cast_whole_bf16=False)),
        ("seed", "seed 42", seed),
        ("negative", "negative prompt empty", negative),
        ("resize", "centre crop", resize),
        ("merge-history", "pristine base", pristine),
    ]


SWEEP_SECONDS: list[float] = []


@pytest.mark.parametrize("family,expected,make", _wrong_knob_goldens(), ids=[c[0] for c in _wrong_knob_goldens()])
def test_wrong_knob_is_ranked_first(world, monkeypatch, family, expected, make):
    golden_target = make(world, monkeypatch)
    started = time.perf_counter()
    d = dg.diagnose_target(world["engine"], golden_target, cache=RENDER_CACHE, exhaustive=True)
    SWEEP_SECONDS.append(time.perf_counter() - started)
    table = dg.format_table(d)
    assert d.profile == BASE_PROFILE, table
    assert d.swept
    assert not d.baseline.bit_exact, f"the {family} knob made no difference to the golden; the test proves nothing"
    top = d.ranked[0]
    assert (top.variant, top.family, top.bit_exact) == (expected, family, True), table
    assert d.status == "explained" and d.found and d.best == expected, table
    assert f"`{expected}`" in d.explanation and d.explanation.count(".") >= 1
    # only the culprit (or variants rendering the very same frames) are exact
    assert {r.digest for r in d.ranked if r.bit_exact} == {top.digest}, table
    assert len({r.variant for r in d.ranked}) == len(d.ranked)
    assert {r.family for r in d.ranked} == set(dg.FAMILIES) - NO_VARIANTS_HERE | {"baseline"}
    print(f"\n{table}\nsweep: {SWEEP_SECONDS[-1]:.1f} s, {sum(r.same_as is None for r in d.ranked)} renders")


def test_lora_off_and_multiplier_zero_share_one_render(world, monkeypatch):
    make = dict((c[0], c[2]) for c in _wrong_knob_goldens())["lora"]
    d = dg.diagnose_target(world["engine"], make(world, monkeypatch), families=("lora", "multiplier"),
                          cache=RENDER_CACHE, exhaustive=True)
    rows = {r.variant: r for r in d.ranked}
    assert rows["multiplier 0"].same_as == "LoRA off" and rows["multiplier 0"].bit_exact
    assert "equivalently: multiplier 0" in d.explanation


def test_baseline_variant_path_matches_the_runner(world):
    """The diagnosis renders variants itself; with no knob changed it must reproduce Engine.render bit for bit."""
    engine, target = world["engine"], world["target"]
    ctx = dg.load_context(engine, replace(target, preview=replace(target.preview, golden=_any_golden(world))))
    for knobs in (ctx.base, replace(ctx.base, merged=True)):
        ours = dg.render_knobs(engine, target, knobs)
        runner_target = replace(target, preview=replace(target.preview, merged=knobs.merged))
        assert np.array_equal(ours, engine.render(runner_target).frames)


def _any_golden(world) -> Path:
    path = world["root"] / "golden_baseline.webp"
    if not path.exists():
        render = world["engine"].render(world["target"])
        write_like_aitk(path, render.frames, 16)
    return path


def test_every_variant_changes_exactly_one_knob(world):
    ctx = dg.load_context(world["engine"], replace(world["target"], preview=replace(world["target"].preview,
                                                                               golden=_any_golden(world))))
    variants = dg.variants_for(world["target"], ctx.base)
    assert {v.family for v in variants} == set(dg.FAMILIES) - NO_VARIANTS_HERE
    names = [v.name for v in variants]
    assert len(names) == len(set(names))
    knob_of = {"profile": {"profile"}, "shift": {"shift"}, "boundary": {"boundary"}, "lora": {"lora"},
               "multiplier": {"multiplier"}, "merge": {"lora_path"}, "posterior": {"posterior"},
               "dtype": {"cast_whole_bf16"}, "seed": {"seed"}, "negative": {"negative_prompt"}, "resize": {"resize"},
               "quantization": {"quantization"}, "merge-history": {"merge_history"}}
    for v in variants:
        assert set(dg.changes(ctx.base, v.apply(ctx.base))) == knob_of[v.family], v.name
    assert {v.name for v in variants if v.family == "profile"} == set(PROFILES) - {BASE_PROFILE}
    assert {v.name for v in variants if v.family == "seed"} == {"seed 43", "seed 45", "seed 42", "seed 46"}
    assert dg.variants_for(world["target"], ctx.base, families=["seed"]) and all(
        v.family == "seed" for v in dg.variants_for(world["target"], ctx.base, families=["seed"]))
    with pytest.raises(dg.HarnessError, match="unknown knob family"):
        dg.variants_for(world["target"], ctx.base, families=["sheduler"])


def test_exact_baseline_skips_the_sweep_unless_forced(world):
    target = replace(world["target"], preview=replace(world["target"].preview, golden=_any_golden(world)))
    d = dg.diagnose_target(world["engine"], target)
    assert (d.status, d.found, d.swept, len(d.ranked)) == ("exact", True, False, 1)
    assert "already bit-exact" in d.explanation
    forced = dg.diagnose_target(world["engine"], target, families=("seed", "shift"), force=True, cache=RENDER_CACHE)
    assert forced.swept and forced.status == "exact" and forced.ranked[0].variant == "baseline"
    assert len(forced.ranked) == 1 + 4 + 1


def test_diagnose_main_writes_json_and_exit_codes(world, monkeypatch, tmp_path):
    explained = dict((c[0], c[2]) for c in _wrong_knob_goldens())["seed"](world, monkeypatch)
    # two knobs wrong at once: no single-knob variant can be exact, and a wrong seed is far outside thresholds
    two = _with_sample(replace(world["target"], profile="test-knob"), seed=42)
    unexplained = _golden(world, "two_knobs", two, monkeypatch, _with_profile(monkeypatch, shift=5.0))
    skipped = replace(world["target"], preview=replace(world["target"].preview, unreproducible="seed -1"))
    calls = []
    document, code = dg.diagnose_main([explained, replace(unexplained, preview=replace(unexplained.preview, index=3)),
                                       skipped], RunOptions(device="cpu", threads=THREADS), tmp_path,
                                      families=("seed", "shift"), progress=lambda *a: calls.append(a))
    assert code == 1
    text = (tmp_path / "diagnosis.json").read_text()
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}")) == document
    assert document["schema"] == dg.SCHEMA and document["families"] == ["seed", "shift"]
    by_status = {e["status"]: e for e in document["diagnoses"]}
    assert set(by_status) == {"explained", "unexplained", "unreproducible"}
    assert document["summary"]["found"] == 1 and document["summary"]["total"] == 3
    ok = by_status["explained"]
    assert ok["best"] == "seed 42" and ok["ranked"][0]["psnr_min"] == "inf" and ok["ranked"][0]["bit_exact"]
    assert set(ok["ranked"][0]) >= {"rank", "variant", "family", "psnr_min", "psnr_mean", "ssim_min", "bit_exact",
                                    "seconds", "changes", "same_as"}
    bad = by_status["unexplained"]
    assert not bad["found"] and bad["explanation"].startswith("No single knob explains the drift")
    assert all(not r["bit_exact"] for r in bad["ranked"])
    assert calls and calls[-1][2] == calls[-1][3]  # (key, variant, done, total)
    document, code = dg.diagnose_main([explained], RunOptions(device="cpu", threads=THREADS), tmp_path, families=("seed",))
    assert code == 0 and document["summary"]["explained"] == 1


def test_bad_input_is_an_error_entry(world, tmp_path):
    target = replace(world["target"], preview=replace(world["target"].preview, golden=_any_golden(world)))
    broken = _with_sample(target, ctrl_img=str(tmp_path / "missing.png"))
    document, code = dg.diagnose_main([broken], RunOptions(device="cpu", threads=THREADS), tmp_path, families=("seed",))
    assert code == 2 and document["diagnoses"][0]["status"] == "error" and document["diagnoses"][0]["message"]


def test_centre_crop_box():
    assert conditioning.center_crop_box((48, 32), 32, 32) == (8, 0, 40, 32)
    assert conditioning.center_crop_box((32, 48), 32, 32) == (0, 8, 32, 40)
    assert conditioning.center_crop_box((64, 32), 64, 32) == (0, 0, 64, 32)
    with pytest.raises(ValueError, match="resize mode"):
        conditioning.load_control_image(Path(__file__).parent / "nothing.png", 8, 8, resize="fit")


def test_ranking_puts_bit_exact_first_then_psnr():
    def row(name, exact, pmin, pmean):
        return dg.Row(name, "x", "", {}, exact, pmin, pmean, 0.5, 0.5, 0, None, 0.0)
    rows = [row("a", False, 30.0, 35.0), row("b", True, math.inf, math.inf), row("c", False, 30.0, 36.0),
            row("d", False, None, None), row("e", False, 31.0, 31.0)]
    ranked = [r.variant for _, r in sorted(enumerate(rows), key=lambda p: p[1].sort_key(p[0]))]
    assert ranked == ["b", "e", "c", "a", "d"]


def _row(name, family, exact, pmin, pmean, ssim, digest):
    return dg.Row(name, family, f"{name} described", {}, exact, pmin, pmean, ssim, ssim, 0, None, 0.0,
                  meaning=f"{name} meant", digest=digest)


def _explained(rows, thresholds=None):
    from harness.metrics import ENCODED_VIEW

    ranked = [r for _, r in sorted(enumerate(rows), key=lambda p: p[1].sort_key(p[0]))]
    d = dg.Diagnosis(key="k", status="", found=False, explanation="", ranked=ranked, profile="aitk-euler", swept=True)
    dg.explain(d, next(r for r in rows if r.variant == "baseline"), thresholds or ENCODED_VIEW)
    return d


def test_explanation_closest_when_nothing_is_exact():
    d = _explained([_row("baseline", "baseline", False, 23.0, 24.0, 0.8, "b"),
                    _row("multiplier 0.8", "multiplier", False, 41.2, 43.0, 0.99, "m"),
                    _row("seed 41", "seed", False, 12.0, 13.0, 0.1, "s")])
    assert (d.status, d.found, d.best) == ("likely", True, "multiplier 0.8")
    assert d.explanation == "Closest: multiplier 0.8 (41.2 dB vs 23.0 dB baseline, encoded PSNR min) — multiplier 0.8 meant."


def test_explanation_ignores_variants_that_render_like_the_baseline():
    # "boundary 0.9" rendered the very same frames as the baseline, so it cannot explain anything
    d = _explained([_row("baseline", "baseline", False, 33.0, 35.0, 0.95, "b"),
                    _row("boundary 0.9", "boundary", False, 33.0, 35.0, 0.95, "b"),
                    _row("shift 5", "shift", False, 20.0, 21.0, 0.7, "s")])
    assert (d.status, d.found, d.best) == ("numeric", True, "shift 5")
    assert "numeric" in d.explanation and "33.0 dB" in d.explanation


def test_explanation_unexplained_when_no_variant_passes():
    d = _explained([_row("baseline", "baseline", False, 20.0, 21.0, 0.7, "b"),
                    _row("shift 5", "shift", False, 24.0, 25.0, 0.8, "s")])
    assert (d.status, d.found, d.best) == ("unexplained", False, "shift 5")
    assert d.explanation.startswith("No single knob explains the drift: the best variant, shift 5, reaches 24.0 dB "
                                    "and improves on the 20.0 dB baseline")
    assert dg.exit_code([{"status": "unexplained"}, {"status": "explained"}]) == 1
    assert dg.exit_code([{"status": "exact"}, {"status": "unreproducible"}, {"status": "numeric"}]) == 0


def test_a_forced_profile_is_blamed_on_the_override_not_on_the_version():
    """With --profile forced, the profile variants' meaning names the override (not another ai-toolkit version)."""
    from harness.engine import RenderSettings

    sample = SampleSpec(index=0, prompt="p", negative_prompt="", seed=1, width=16, height=16, num_frames=1,
                        guidance_scale=1.0, sample_steps=1, network_multiplier=1.0, fps=16, ctrl_img=None)
    target = PreviewTarget(preview=PreviewJob(case="c", golden=Path("g.webp"), step=0, index=0, sample=sample,
                                              lora=None, merged=False), model_name="m", config_file=Path("c.yaml"))
    for forced in (True, False):
        base = RenderSettings(profile=PROFILES["runcomfy"], sample=sample, multiplier=1.0, use_lora=True,
                              merged=False, profile_forced=forced)
        euler = next(v for v in dg.variants_for(target, base, ("profile",)) if v.name == "aitk-euler")
        assert ("forced profile runcomfy" in euler.meaning) is forced
        assert ("another ai-toolkit version" in euler.meaning) is not forced


def test_the_sweep_stops_at_the_first_exact_variant(world, monkeypatch):
    golden = dict((c[0], c[2]) for c in _wrong_knob_goldens())["profile"](world, monkeypatch)
    rendered = []
    quick = dg.diagnose_target(world["engine"], golden, families=("profile", "seed"), cache=RENDER_CACHE,
                               on_variant=lambda name, done, total: rendered.append(name))
    full = dg.diagnose_target(world["engine"], golden, families=("profile", "seed"), cache=RENDER_CACHE,
                              exhaustive=True)
    assert quick.best == full.best == "runcomfy" and quick.status == full.status == "explained"
    assert rendered[-1] == "runcomfy" and len(quick.ranked) == len(rendered) < len(full.ranked)


def test_a_setting_found_on_one_preview_is_confirmed_on_the_next_with_one_render(world, monkeypatch, tmp_path):
    first = dict((c[0], c[2]) for c in _wrong_knob_goldens())["profile"](world, monkeypatch)
    later = replace(first, preview=replace(first.preview, step=500))  # the same job's later preview, same golden
    calls = []
    document, code = dg.diagnose_main([later, first], RunOptions(device="cpu", threads=THREADS), tmp_path,
                                      families=("profile", "seed"), progress=lambda *a: calls.append(a))
    assert code == 0 and [e["key"] for e in document["diagnoses"]] == [first.key, later.key]  # earliest first
    assert [e["best"] for e in document["diagnoses"]] == ["runcomfy", "runcomfy"]
    assert [c[1] for c in calls if c[0] == later.key] == ["runcomfy"]  # one confirming render, no sweep
    assert "one confirming render" in document["diagnoses"][1]["explanation"]
