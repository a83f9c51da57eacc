"""ai-toolkit versions that span a change: 0.9.3 the UniPC -> FlowMatch Euler switch (ab1ee4df, 2026-04-16), 0.10.22
ai-toolkit's own VAE copy -> diffusers' (883d60eb, 2026-07-10). A preview saved before the change gets the older
profile outright; otherwise `auto` tries both and keeps the match."""

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from harness.media import write_like_aitk
from harness.render.profiles import PROFILES, alternative_profiles, profile_for_aitk_version


@pytest.mark.parametrize("version, alternatives", [("0.9.3", ["aitk-unipc"]), ("0.9.2", []), ("0.9.4", []),
                                                   ("0.10.22", ["aitk-euler-vae-bf16"]), ("0.10.23", []),
                                                   ("0.12.26", []), (None, [])])
def test_alternative_profiles(version, alternatives):
    assert [p.name for p in alternative_profiles(version)] == alternatives


def test_first_choice_is_the_newer_build():
    assert profile_for_aitk_version("0.9.3")[0].name == "aitk-euler-vae-bf16"
    assert profile_for_aitk_version("0.10.22")[0].name == "aitk-euler"


@pytest.mark.parametrize("version, before, after, switch", [
    ("0.9.3", "aitk-unipc", "aitk-euler-vae-bf16", "2026-04-16T20:53:50+00:00"),
    ("0.10.22", "aitk-euler-vae-bf16", "aitk-euler", "2026-07-10T14:02:32+00:00"),
])
def test_a_preview_saved_before_the_change_settles_it(version, before, after, switch):
    from datetime import datetime

    at = int(datetime.fromisoformat(switch).timestamp() * 1000)
    profile, why = profile_for_aitk_version(version, at - 1)
    assert profile.name == before and "saved before" in why and alternative_profiles(version, at - 1) == []
    assert profile_for_aitk_version(version, at)[0].name == after  # at or after: either build could have saved it
    assert [p.name for p in alternative_profiles(version, at)] == [before]


@pytest.fixture(scope="module")
def unipc_golden(tmp_path_factory):
    """A demo preview whose LoRA says ai-toolkit 0.9.3 and whose golden was rendered with the UniPC profile."""
    import harness.demo_model as demo_model
    from harness.demo import DEMO_ROOT, prepare
    from harness.paths import PathMap
    from harness.engine import Engine
    from harness.options import RunOptions
    from harness.targets import from_output_dir

    torch.set_num_threads(1)
    work = tmp_path_factory.mktemp("ambiguous")
    output = prepare(work)
    software = dict(demo_model.AITK_SOFTWARE)
    demo_model.AITK_SOFTWARE["version"] = "0.9.3"
    try:
        demo_model.make_demo_lora_pair(work / "tiny_model", output, "demo", seed=10, step=250)
    finally:
        demo_model.AITK_SOFTWARE.update(software)
    target = next(t for t in from_output_dir(output, PathMap([f"{DEMO_ROOT}={work}"]))
                  if t.preview.step == 250 and t.preview.index == 0)
    small = replace(target.preview.sample, sample_steps=3, num_frames=5, width=32, height=32)
    target = replace(target, preview=replace(target.preview, sample=small, golden=work / "golden.webp", golden_raw=None))
    engine = Engine(RunOptions(device="cpu", threads=1))
    render = engine.render(target, replace(engine.baseline(target), profile=PROFILES["aitk-unipc"]))
    write_like_aitk(Path(target.preview.golden), render.frames, small.fps)
    return engine, target


def test_auto_keeps_the_profile_that_matches(unipc_golden):
    from harness.runner import run_one

    engine, target = unipc_golden
    result = run_one(engine, target)
    assert (result.status, result.bit_exact, result.profile) == ("pass", True, "aitk-unipc")
    assert any("spans a sampler change" in note for note in result.notes)


def test_an_explicit_profile_is_not_second_guessed(unipc_golden):
    from harness.runner import run_one

    engine, target = unipc_golden
    engine.options.profile = "aitk-euler"
    try:
        result = run_one(engine, target)
    finally:
        engine.options.profile = None
    assert result.profile == "aitk-euler" and not result.bit_exact
