"""ai-toolkit's merge history (§8.2): each merged sampling round leaves bf16 residue in the base, and later previews
are reproduced by replaying the earlier rounds; bf16-saved LoRAs are judged by thresholds unless fp32 weights are
given (§8.5).

The end-to-end job (``tests/merge_job.py``) renders its goldens with ai-toolkit's merge arithmetic written out
independently of the harness's LoRA code, on the tiny model, with 4 trained merged rounds.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from harness import diagnose as dg
from harness.aitk.overrides import from_entries
from harness.engine import Engine
from harness.errors import HarnessError
from harness.media import write_like_aitk
from harness.options import RunOptions, resolve
from harness.paths import PathMap
from harness.render.history import HistoryCache, Residue, installed
from harness.render.lora import LoraLayer, merge_round
from harness.runner import run_targets
from harness.targets import from_output_dir

from . import merge_job as mj
from .oracle_paths import ORACLE, ORACLE_CUDA, PATH_MAP, needs_oracle

BF16 = torch.bfloat16


def _aitk_round(weight, up, down, m):
    """merge_in(m) then merge_out(m) as ai-toolkit writes them: W + mult * (up @ down) * scale, mult = m then -|m|."""
    merged = (weight.float() + m * (up @ down) * 1.0).to(BF16)
    return (merged.float() + -abs(m) * (up @ down) * 1.0).to(BF16)


# ------------------------------------------------------------------------------------------------ the arithmetic


@pytest.mark.parametrize("m", [1.0, 0.75, 0.3, -0.5])
def test_a_round_is_merge_in_then_merge_out_with_its_residue(m):
    g = torch.Generator().manual_seed(0)
    weight = (torch.randn(64, 48, generator=g) * 0.05).to(BF16)
    layer = LoraLayer(down=torch.randn(4, 48, generator=g) / 7, up=torch.randn(64, 4, generator=g) * 0.02)
    after = merge_round(weight, layer, m)
    assert torch.equal(after.view(torch.int16), _aitk_round(weight, layer.up, layer.down, m).view(torch.int16))
    assert not torch.equal(after, weight)  # the residue the base keeps
    if m < 0:  # merge_out adds -|m|: for a negative multiplier the delta goes in twice
        assert (after.float() - (weight.float() + 2 * m * (layer.up @ layer.down))).abs().max() < 0.01


def test_an_all_zero_up_or_down_skips_both_merges():
    weight = torch.randn(8, 6).to(BF16)
    for layer in (LoraLayer(down=torch.randn(2, 6), up=torch.zeros(8, 2)),
                  LoraLayer(down=torch.zeros(2, 6), up=torch.randn(8, 2))):
        assert merge_round(weight, layer, 1.0) is weight


def test_a_residue_rebuilds_the_replayed_weight_bit_for_bit():
    pristine = torch.randn(40, 30).to(BF16)
    sparse = pristine.clone()
    sparse[3, 4] = -sparse[3, 4]
    sparse[7, 0] = 0.0 if pristine[7, 0] != 0 else 1.0
    dense = torch.randn(40, 30).to(BF16)
    zero = torch.zeros(4, 4, dtype=BF16)
    for replayed in (sparse, dense):
        residue = Residue.between(pristine, replayed)
        assert torch.equal(residue.applied_to(pristine).view(torch.int16), replayed.view(torch.int16))
    assert Residue.between(pristine, sparse).index.numel() == 2 and Residue.between(pristine, dense).index is None
    assert Residue.between(pristine, pristine.clone()) is None
    assert Residue.between(zero, -zero) is not None  # -0.0 is another bit pattern


# ------------------------------------------------------------------------------------------------ the plan


@pytest.fixture
def fake_job(tmp_path):
    """The job's folder with placeholder checkpoints: planning reads names, never weights."""
    out = tmp_path / mj.NAME
    (out / "samples").mkdir(parents=True)
    (out / "config.yaml").write_text(yaml.safe_dump(mj.config(tmp_path / "model", tmp_path / "ctrl.png")))
    for n, step in enumerate(mj.ROUNDS):
        (out / "samples" / f"{1790000000000 + 1000 * n}__{step:09d}_0.webp").write_bytes(b"")
        stem = mj.NAME if step == mj.ROUNDS[-1] else f"{mj.NAME}_{step:09d}"
        for side in ("high", "low") if step else ():
            (out / f"{stem}_{side}_noise.safetensors").write_bytes(b"")
    return out


def _by_step(out, **kwargs):
    return {t.preview.step: t.preview for t in from_output_dir(out, **kwargs)}


def test_each_preview_carries_the_merged_rounds_before_it(fake_job):
    previews = _by_step(fake_job)
    assert {s: [r.step for r in p.merge_history] for s, p in previews.items()} == {
        0: [], 2: [], 4: [2], 6: [2, 4], 8: [2, 4, 6]}
    assert previews[8].merge_history[0].lora == previews[2].lora and previews[8].merge_history[0].multiplier == 1.0
    assert all(p.unreproducible is None for p in previews.values())


def test_a_round_whose_checkpoint_is_gone_makes_the_later_previews_unreproducible(fake_job):
    for side in ("high", "low"):
        (fake_job / f"{mj.NAME}_{4:09d}_{side}_noise.safetensors").unlink()
    previews = _by_step(fake_job)
    assert previews[2].unreproducible is None and previews[4].unreproducible  # its own checkpoint
    for step in (6, 8):
        reason = previews[step].unreproducible
        assert "round at step 4" in reason and "residue" in reason and "deleted" in reason, reason


def test_an_override_stands_in_for_a_deleted_checkpoint(fake_job, tmp_path):
    dump = tmp_path / "dump"
    dump.mkdir()
    files = {}
    for side in ("high", "low"):
        (fake_job / f"{mj.NAME}_{4:09d}_{side}_noise.safetensors").unlink()
        files[side] = dump / f"x_{side}_noise.safetensors"
        files[side].write_bytes(b"")
    previews = _by_step(fake_job, lora_overrides=from_entries([f"4={p}" for p in files.values()]))
    assert all(p.unreproducible is None for p in previews.values())
    assert previews[6].merge_history[1].lora.high == files["high"] and previews[4].lora.low == files["low"]


@pytest.mark.parametrize("change", [{"quantize": True}, {"layer_offloading": True}])
def test_unmerged_jobs_have_no_history(fake_job, change):
    data = yaml.safe_load((fake_job / "config.yaml").read_text())
    data["config"]["process"][0]["model"].update(change)
    (fake_job / "config.yaml").write_text(yaml.safe_dump(data))
    assert all(not p.merge_history for p in _by_step(fake_job).values())


def test_a_rendered_again_label_starts_a_new_process_on_the_pristine_base(fake_job):
    """Resumed at step 4 (force_first_sample renders label 4 again): the new process reloaded the base."""
    samples = fake_job / "samples"
    for f in sorted(samples.iterdir()):
        step = int(f.name.split("__")[1][:9])
        if step >= 6:
            f.rename(samples / f"{int(f.name[:13]) + 10_000}__{step:09d}_0.webp")
    (samples / f"{1790000005000}__{4:09d}_0.webp").write_bytes(b"")
    histories = sorted((t.preview.extra["time"], [r.step for r in t.preview.merge_history])
                       for t in from_output_dir(fake_job) if t.preview.step >= 4)
    assert [h for _, h in histories] == [[2], [], [4], [4, 6]]


def _delete_previews(out: Path, step: int) -> None:
    for f in (out / "samples").glob(f"*__{step:09d}_*"):
        f.unlink()


def test_a_round_whose_previews_were_deleted_still_joins_the_history(fake_job):
    """ai-toolkit sampled at step 4 (the config's schedule says so) even though its previews are gone."""
    _delete_previews(fake_job, 4)
    previews = _by_step(fake_job)
    assert {s: [r.step for r in p.merge_history] for s, p in previews.items()} == {
        0: [], 2: [], 6: [2, 4], 8: [2, 4, 6]}
    assert all(p.unreproducible is None for p in previews.values())


def test_a_deleted_round_without_its_checkpoint_makes_the_later_previews_unreproducible(fake_job):
    _delete_previews(fake_job, 4)
    for side in ("high", "low"):
        (fake_job / f"{mj.NAME}_{4:09d}_{side}_noise.safetensors").unlink()
    previews = _by_step(fake_job)
    assert previews[2].unreproducible is None
    for step in (6, 8):
        reason = previews[step].unreproducible
        assert "round at step 4" in reason and "previews are gone" in reason, reason


def test_after_a_resume_deleted_rounds_are_not_guessed(fake_job):
    """Two processes: which one sampled the deleted step 2 cannot be told, so only seen rounds count."""
    samples = fake_job / "samples"
    (samples / f"{1790000009000}__{6:09d}_0.webp").write_bytes(b"")  # label 6 rendered again: a resume
    _delete_previews(fake_job, 2)
    histories = {(t.preview.step, t.preview.extra["time"]): [r.step for r in t.preview.merge_history]
                 for t in from_output_dir(fake_job)}
    assert histories[(4, 1790000002000)] == [] and histories[(6, 1790000009000)] == []


@pytest.mark.parametrize("sample_every,train,start,expected", [
    (2, {}, 0, [0, 2, 4, 6, 8]),
    (3, {}, 0, [0, 3, 6, 8]),  # the after-training render is always one
    (2, {"skip_first_sample": True}, 0, [2, 4, 6, 8]),
    (2, {}, 5, [0, 6, 8]),  # sample_start_step
    (2, {"disable_sampling": True}, 0, []),
])
def test_the_schedule_follows_ai_toolkits_training_loop(fake_job, sample_every, train, start, expected):
    from harness.aitk.history import scheduled_steps
    from harness.aitk.job import load_job

    data = yaml.safe_load((fake_job / "config.yaml").read_text())
    process = data["config"]["process"][0]
    process["sample"].update(sample_every=sample_every, sample_start_step=start)
    process["train"].update(train)
    (fake_job / "config.yaml").write_text(yaml.safe_dump(data))
    assert scheduled_steps(load_job(fake_job / "config.yaml")) == expected


# ------------------------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    root = tmp_path_factory.mktemp("merge_job")
    model, out = mj.build(root)
    return {"root": root, "model": model, "out": out}


@pytest.fixture(scope="module")
def engine():
    return Engine(RunOptions(device="cpu", threads=mj.THREADS))


def _targets(out, **kwargs) -> dict:
    return {t.preview.step: t for t in from_output_dir(out, **kwargs)}


def _run(engine, out, steps=mj.ROUNDS, **kwargs) -> dict:
    targets = [t for step, t in _targets(out, **kwargs).items() if step in steps]
    _, results = run_targets(targets, engine.options, engine=engine)
    return {r.step: r for r in results}


def test_every_merged_preview_is_bit_exact_with_its_history_replayed(job, engine):
    replayed = engine.histories.rounds_replayed
    results = _run(engine, job["out"])
    assert {s: (r.status, r.bit_exact, r.exact_expected) for s, r in results.items()} == {
        s: ("pass", True, True) for s in mj.ROUNDS}
    assert [h["step"] for h in results[8].merge_history] == [2, 4, 6] and results[2].merge_history is None
    assert results[8].lora_saved_dtype == "fp32"
    assert engine.histories.rounds_replayed - replayed == 3  # one replayed round per preview step, not 0+1+2


def test_deleted_previews_of_an_earlier_round_keep_the_later_ones_exact(job, engine, tmp_path):
    out = tmp_path / mj.NAME
    shutil.copytree(job["out"], out)
    _delete_previews(out, 4)
    results = _run(engine, out, steps=(6, 8))
    assert {s: r.bit_exact for s, r in results.items()} == {6: True, 8: True}
    assert [h["step"] for h in results[6].merge_history] == [2, 4]


def test_the_pristine_base_misses_the_later_rounds(job, engine):
    """Steps 0 and 2 render on the pristine base anyway (no history); from the second trained round on it differs."""
    for step in (4, 8):
        target = _targets(job["out"])[step]
        frames = engine.render(target, replace(engine.baseline(target), merge_history=None)).frames
        assert not np.array_equal(frames, np.load(target.preview.golden_raw)), f"step {step}"


def test_a_render_leaves_the_pristine_weights_in_place(job, engine):
    target = _targets(job["out"])[8]
    bundle, _ = engine._bundle(target, engine.baseline(target), engine.device)
    before = {n: p.detach().clone() for n, p in bundle.transformer.named_parameters()}
    engine.render(target)
    assert all(torch.equal(p.view(torch.int16), before[n].view(torch.int16))
               for n, p in bundle.transformer.named_parameters() if p.dtype == BF16)


def test_the_cache_extends_the_longest_prefix_and_stays_bounded(job, engine):
    target = _targets(job["out"])[8]
    bundle, _ = engine._bundle(target, engine.baseline(target), engine.device)
    history = target.preview.merge_history
    cache = HistoryCache(engine.loras.get, size=2)
    states = [cache.base_for(bundle, history[:n]) for n in (1, 2, 3)]
    assert cache.rounds_replayed == 3 and len(cache._entries) == 2
    assert cache.base_for(bundle, history[:3]) is states[2] and cache.rounds_replayed == 3
    cache.base_for(bundle, history[:1])  # evicted: replayed again
    assert cache.rounds_replayed == 4
    fresh = HistoryCache(engine.loras.get).base_for(bundle, history)
    assert fresh.keys() == states[2].keys()
    assert all(torch.equal(fresh[k].values, states[2][k].values) for k in fresh)
    with installed(bundle.experts, fresh):
        residue_elements = sum(int(r.values.numel()) for r in fresh.values())
    assert 0 < residue_elements < sum(p.numel() for e in bundle.experts.values() for p in e.parameters()) / 2


@pytest.fixture(scope="module")
def bf16_job(job):
    """The same job as the UI saves it (save.dtype bf16), with its fp32 weights kept aside (a dump)."""
    out = job["root"] / "bf16" / mj.NAME
    shutil.copytree(job["out"], out)
    mj.resave(out, BF16, job["root"] / "bf16" / "fp32")
    return out, job["root"] / "bf16" / "fp32"


def test_a_bf16_saved_lora_is_judged_by_thresholds_and_says_why(bf16_job, engine):
    results = _run(engine, bf16_job[0], steps=(0, 2, 8))
    trained = [r for s, r in results.items() if s]
    assert all(r.lora_saved_dtype == "bf16" and r.exact_expected is False for r in trained)
    assert all(r.thresholds.require_bit_exact is False and r.status in ("pass", "fail") for r in trained)
    assert not all(r.bit_exact for r in trained)
    drifted = next(r for r in trained if not r.bit_exact)
    assert "lora_saved_dtype: bf16" in drifted.message and "max |diff|" in drifted.message, drifted.message
    assert any("lora_saved_dtype: bf16" in a for a in drifted.approximate)
    assert results[0].exact_expected is True  # the untrained baseline uses no LoRA file


def test_fp32_overrides_make_a_bf16_saved_job_exact(bf16_job, engine):
    out, fp32 = bf16_job
    entries = [f"{s}={fp32 / p.name}" for s in mj.ROUNDS[1:] for p in sorted(out.glob(
        f"{mj.NAME}{'' if s == mj.ROUNDS[-1] else f'_{s:09d}'}_*_noise.safetensors"))]
    overrides = resolve("run", {"lora_override": entries}).options.lora_overrides
    assert sorted(overrides) == list(mj.ROUNDS[1:]) and all(len(v) == 2 for v in overrides.values())
    results = _run(engine, out, steps=(2, 8), lora_overrides=overrides)
    assert all(r.bit_exact and r.exact_expected for r in results.values())
    assert results[8].lora_saved_dtype == "bf16" and results[8].lora_override["high"].startswith(str(fp32))


def test_diagnose_names_the_pristine_base(job, engine, tmp_path):
    """A golden rendered on the pristine base (a restarted job) is traced to the merge-history knob."""
    target = _targets(job["out"])[6]
    frames = engine.render(target, replace(engine.baseline(target), merge_history=None)).frames
    golden = write_like_aitk(tmp_path / Path(target.preview.golden).name, frames, target.preview.sample.fps)
    target = replace(target, preview=replace(target.preview, golden=golden, golden_raw=None))
    diagnosis = dg.diagnose_target(engine, target, families=["merge-history"])
    assert diagnosis.status == "explained" and diagnosis.best == "pristine base", diagnosis.explanation
    assert "pristine base" in diagnosis.explanation


def test_lora_override_entries_are_checked(tmp_path):
    ok = tmp_path / "a_high_noise.safetensors"
    ok.write_bytes(b"")
    assert resolve("run", {"lora_override": [f"250={ok}"]}).options.lora_overrides == {250: {"high": ok}}
    odd = tmp_path / "a.safetensors"
    odd.write_bytes(b"")
    for entry, words in ((f"x={ok}", "STEP=PATH"), (f"250={tmp_path / 'gone_low_noise.safetensors'}", "not found"),
                         (f"250={odd}", "_high_noise")):
        with pytest.raises(HarnessError, match=words) as info:
            resolve("run", {"lora_override": [entry]})
        assert info.value.field == "--lora-override"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible")
def test_every_offload_mode_replays_the_history_to_the_same_bytes(job, tmp_path):
    """Goldens rendered with ai-toolkit's arithmetic on CUDA; each memory mode replays them bit-exactly."""
    out = tmp_path / mj.NAME
    shutil.copytree(job["out"], out)
    mj.render_goldens(out, RunOptions(device="cuda"))
    for mode in ("none", "experts", "sequential"):
        engine = Engine(RunOptions(device="cuda", offload=mode))
        results = _run(engine, out, steps=(4, 8))
        assert all(r.bit_exact and r.offload == mode for r in results.values()), (mode, [r.message for r in results.values()])
        assert engine.histories.rounds_replayed == 3


@needs_oracle
@pytest.mark.parametrize("oracle, case", [(ORACLE, "case_d"), (ORACLE_CUDA, "cuda_d")])
def test_the_oracles_merged_job_samples_its_trained_round_on_the_pristine_base(oracle, case):
    """case_d/cuda_d sampled at steps 0 and 2 (the after-training render): the step-0 round's LoRA up was all
    zero (the manifest), which skips merge-in and merge-out, so step 2 needs no replay; its bit-exactness is
    tested in test_oracle_parity / test_gpu."""
    import json

    folder = oracle / "cases" / case
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["lora_at_sample_time_vs_saved"]["0"]["in_memory"]["lora_up_all_zero"] is True
    assert {s["step"] for s in manifest["samples"]} == {0, 2}
    assert all(s["network_state_during_sampling"]["merged_in"] for s in manifest["samples"])
    targets = from_output_dir(next((folder / "output").iterdir()), PathMap([PATH_MAP]))
    assert {t.preview.step for t in targets} == {0, 2} and all(t.preview.merged for t in targets if t.preview.step)
    assert all(t.preview.merge_history == () and t.preview.unreproducible is None for t in targets)


def test_a_case_file_gives_overrides_and_the_command_line_wins(fake_job, tmp_path):
    from harness.case import load_case

    dump = tmp_path / "dump"
    dump.mkdir()
    for name in ("a_high_noise.safetensors", "b_high_noise.safetensors"):
        (dump / name).write_bytes(b"")
    case = tmp_path / "case.yaml"
    body = {"schema": "wan-parity/case@1", "name": "c", "golden_dir": str(fake_job),
            "lora_overrides": {4: {"high": "dump/a_high_noise.safetensors"}}}
    case.write_text(yaml.safe_dump(body))
    jobs = {j.step: j for j in load_case(case).preview_jobs()}
    assert jobs[4].lora.high == dump / "a_high_noise.safetensors" and jobs[6].merge_history[1].lora.high == jobs[4].lora.high
    assert jobs[4].lora_saved.high == fake_job / f"{mj.NAME}_{4:09d}_high_noise.safetensors"
    cli = from_entries([f"4={dump / 'b_high_noise.safetensors'}"])
    jobs = {j.step: j for j in load_case(case).preview_jobs(lora_overrides=cli)}
    assert jobs[4].lora.high.name == "b_high_noise.safetensors"
    for bad, field in (({4: {"high": "dump/gone.safetensors"}}, "lora_overrides.4.high"),
                       ({4: {"middle": "dump/a_high_noise.safetensors"}}, "lora_overrides.4"),
                       ({"x": {"high": "dump/a_high_noise.safetensors"}}, "lora_overrides.x")):
        case.write_text(yaml.safe_dump({**body, "lora_overrides": bad}))
        with pytest.raises(HarnessError) as info:
            load_case(case)
        assert info.value.field == field
