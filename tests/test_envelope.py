"""The measured cross-stack envelope (harness.envelope): its rules, its file, and the oracle measurement.

The oracle test renders one CPU-oracle preview under this CPU's real stack alternatives (ISA rungs in subprocesses,
thread counts) and checks what the envelope is for: each alternative left out falls inside the envelope of the
others, and a wrong checkpoint, a wrong profile and a wrong multiplier fall outside it.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from harness import envelope as env
from harness.errors import HarnessError
from harness.metrics import Thresholds
from harness.result import PreviewResult
from harness.runner import effective_thresholds
from harness.stack import StackMatch

from .oracle_paths import PATH_MAP, TINY_MODEL, needs_oracle, output_dir


class _Target:
    def __init__(self, source, key="case::2::1"):
        self.source, self.key = source, key


def _measured(floor, ssim=0.95):
    return {"alternatives": {"isa avx512": "ATen avx512"}, "pairs": [], "psnr_floor": floor, "psnr_ceiling": None,
            "ssim_floor": ssim}


def _write(tmp_path, previews, name="case.yaml") -> Path:
    case = tmp_path / name
    case.write_text("schema: wan-parity/case@1\n")
    env.save(env.envelope_path(_Target(case)), env.document(previews, {"device": "cpu"}, 3.0, 0.02))
    return case


def test_envelope_path_beside_a_case_file_or_inside_an_output_folder(tmp_path):
    assert env.envelope_path(_Target(tmp_path / "my.yaml")) == tmp_path / "my.envelope.json"
    assert env.envelope_path(_Target(tmp_path)) == tmp_path / "wan-parity-envelope.json"
    assert env.envelope_path(_Target(None)) is None


def test_file_round_trip_own_preview_then_the_case_floor(tmp_path):
    case = _write(tmp_path, {"case::2::1": _measured(34.0), "case::2::2": _measured(32.5, 0.93)})
    own = env.envelope_for(_Target(case, "case::2::1"))
    assert own.own and own.psnr_floor == 34.0 and own.psnr_threshold == 31.0
    other = env.envelope_for(_Target(case, "case::4::0"))
    assert not other.own and other.psnr_floor == 32.5 and other.ssim_floor == 0.93
    assert env.envelope_for(_Target(tmp_path / "none.yaml")) is None


def test_an_envelope_that_saw_no_drift_judges_nothing(tmp_path):
    case = _write(tmp_path, {"case::2::1": _measured(float("inf"), 1.0)})
    assert json.loads(env.envelope_path(_Target(case)).read_text())["psnr_floor"] == "inf"
    assert env.envelope_for(_Target(case)) is None


def test_a_corrupt_envelope_is_one_line_naming_the_file(tmp_path):
    case = tmp_path / "bad.yaml"
    env.envelope_path(_Target(case)).write_text('{"schema": "something-else"}')
    with pytest.raises(HarnessError, match="bad.envelope.json.*calibrate --perturb stack"):
        env.envelope_for(_Target(case))


def test_thresholds_follow_the_envelope_only_where_exactness_is_not_expected(tmp_path):
    envelope = env.envelope_for(_Target(_write(tmp_path, {"case::2::1": _measured(34.0)})))
    exact, drift = StackMatch(True), StackMatch(False, {"threads": [4, 2]})
    assert effective_thresholds(None, exact, envelope).require_bit_exact is True
    judged = effective_thresholds(None, drift, envelope)
    assert (judged.psnr_min, judged.ssim_min) == (31.0, pytest.approx(0.93))
    assert effective_thresholds(None, drift, None).psnr_min == 30.0
    forced = effective_thresholds(Thresholds(require_bit_exact=True), drift, envelope)
    assert forced.require_bit_exact is True and forced.psnr_min == 30.0


def test_judge_says_where_the_golden_falls(tmp_path):
    envelope = env.envelope_for(_Target(_write(tmp_path, {"case::2::1": _measured(34.0)})))
    inside = envelope.judge(32.0, 0.96)
    assert inside["inside"] and inside["below_floor_db"] == 2.0 and inside["psnr_threshold"] == 31.0
    assert not envelope.judge(25.0, 0.96)["inside"] and not envelope.judge(33.0, 0.80)["inside"]
    result = PreviewResult(key="k", case="c", step=2, index=1, thresholds=effective_thresholds(
        None, StackMatch(False), envelope), envelope=inside)
    assert result.rule().startswith("the measured envelope PSNR >= 31.00 dB (floor 34.00 - margin 3)")
    assert PreviewResult.from_json(result.to_json()).envelope == inside


def test_cpu_alternatives_stay_at_or_below_this_cpu_and_skip_the_current_pin(monkeypatch):
    from harness import stack

    monkeypatch.setattr(stack, "native_cpu", lambda: {"aten_cpu_capability": "avx512", "onednn_max_isa": "AVX512_CORE",
                                                      "mkl_max_isa": "AVX512", "cpu_vendor": "x", "cpu_model": "y"})
    monkeypatch.setattr(stack, "pinned_env", lambda: {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
                                                      "MKL_ENABLE_INSTRUCTIONS": "AVX2"})
    names = [a.name for a in env.cpu_alternatives(2)]
    assert names[:3] == ["isa sse4.1", "isa avx", "isa avx512"]  # avx2 is the pin; the VNNI/BF16/AMX rungs are above
    assert "threads 1" in names and "threads 2" not in names


# ----------------------------------------------------------------------------- measured on the oracle


# one rung of each group that renders alike on an AVX-512 CPU (sse4.1 = avx; avx512 = -vnni = -bf16, measured) plus a
# second member of the AVX-512 group, so that leaving a group out leaves an envelope; and the other thread count
TESTED = ("isa avx", "isa avx512", "isa avx512-bf16", "threads 1")


@pytest.fixture(scope="module")
def oracle_measurement():
    """One oracle preview (96x64, unmerged LoRA at 0.5) under the oracle's pin and this CPU's alternatives."""
    from harness.compare import compare_to_golden, read_golden
    from harness.engine import Engine
    from harness.options import RunOptions
    from harness.paths import PathMap
    from harness.render.profiles import get_profile
    from harness.targets import from_output_dir

    options = RunOptions(base_model=str(TINY_MODEL), device="cpu", threads=2, path_map=PathMap([PATH_MAP]))
    targets = from_output_dir(output_dir("case_a"), PathMap([PATH_MAP]))
    target = next(t for t in targets if t.key == "oracle_case_a::2::1")
    engine = Engine(options)
    renders = {"baseline": engine.render(target).frames}
    for alt in env.cpu_alternatives(2):
        if alt.name in TESTED:
            renders[alt.name] = env.render_alternative(target, options, alt)
    base = engine.baseline(target)
    step4 = next(t for t in targets if t.key == "oracle_case_a::4::1").preview.lora
    wrong = {"checkpoint": engine.render(replace(target, preview=replace(target.preview, lora=step4))).frames,
             "profile": engine.render(target, replace(base, profile=get_profile("aitk-unipc"))).frames,
             "multiplier": engine.render(target, replace(base, multiplier=1.0)).frames}
    golden = read_golden(target)
    psnr = {name: compare_to_golden(frames, golden).encoded.psnr_min for name, frames in {**renders, **wrong}.items()}
    return {"target": target, "renders": renders, "wrong": wrong, "psnr": psnr}


def _spread(m) -> dict:
    return env.spread_of(m["renders"], m["target"].preview.sample.fps, m["target"].preview.golden_ext)


@needs_oracle
def test_every_alternative_falls_inside_the_envelope_of_the_others(oracle_measurement):
    """Leave each drifting alternative out, with every alternative that rendered the same bits (else the envelope
    would contain it by construction): the golden's distance to it must lie inside the rest's envelope."""
    import numpy as np

    m = oracle_measurement
    checked = 0
    for name, frames in m["renders"].items():
        if name == "baseline" or m["psnr"][name] == float("inf"):
            continue
        twins = [k for k, v in m["renders"].items() if k != "baseline" and np.array_equal(v, frames)]
        rest = {k: v for k, v in m["renders"].items() if k not in twins}
        floor = env.spread_of(rest, m["target"].preview.sample.fps, m["target"].preview.golden_ext)["psnr_floor"]
        if floor is None or floor == float("inf"):
            continue
        assert m["psnr"][name] >= floor - env.DEFAULT_MARGIN_DB, f"{name}: {m['psnr'][name]:.2f} dB vs floor {floor:.2f}"
        checked += 1
    if not checked:
        pytest.skip("this CPU has too few ISA/thread alternatives that change the render")


@needs_oracle
@pytest.mark.parametrize("mistake", ["checkpoint", "profile", "multiplier"])
def test_a_wrong_setting_falls_outside_the_envelope(oracle_measurement, mistake):
    m = oracle_measurement
    floor = _spread(m)["psnr_floor"]
    assert floor != float("inf"), "no alternative changed the render: the envelope says nothing here"
    assert m["psnr"][mistake] < floor - env.DEFAULT_MARGIN_DB, f"{mistake}: {m['psnr'][mistake]:.2f} vs {floor:.2f}"


# ----------------------------------------------------------------------------- calibrate writes it, run reads it


def test_calibrate_stack_writes_the_envelope_and_run_judges_by_it(tmp_path, monkeypatch):
    """The tiny demo job: `calibrate --perturb stack` (one in-process alternative, to stay fast) writes the file in
    the output folder; `run` of a golden from another stack then records the envelope and judges by it."""
    import io

    from harness import calibrate as cal
    from harness.demo import DEMO_ROOT, prepare
    from harness.engine import Engine
    from harness.options import RunOptions
    from harness.paths import PathMap
    from harness.runner import run_one
    from harness.targets import collect

    output = prepare(tmp_path / "work")
    path_map = PathMap([f"{DEMO_ROOT}={tmp_path / 'work'}"])
    targets = collect(output, path_map)
    options = RunOptions(path_map=path_map, device="cpu", threads=2)
    monkeypatch.setattr(env, "cpu_alternatives", lambda threads: [env.Alternative("threads 1", "1 thread", threads=1)])
    out = io.StringIO()
    assert cal.calibrate_main(targets, options, tmp_path / "cal", perturb="stack", max_previews=1, file=out) == 0
    written = json.loads((Path(output) / "wan-parity-envelope.json").read_text())
    assert written["schema"] == env.SCHEMA and list(written["previews"]) == [targets[0].key]
    assert written["previews"][targets[0].key]["alternatives"] == {"threads 1": "1 thread"}
    assert "envelope:" in out.getvalue()

    env.save(Path(output) / "wan-parity-envelope.json", env.document(
        {targets[0].key: _measured(40.0, 0.97)}, {"device": "cpu"}, 3.0, 0.02))
    other_stack = replace(targets[0], golden_stack={"device": "cpu", "torch": "2.0.0"})
    result = run_one(Engine(options), other_stack)
    assert result.exact_expected is False and result.thresholds.psnr_min == 37.0
    assert result.envelope["psnr_threshold"] == 37.0 and result.envelope["file"].endswith("wan-parity-envelope.json")
    assert result.envelope["inside"] == (result.status == "pass")
