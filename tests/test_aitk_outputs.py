"""discover(): finding previews in an output folder and pairing them with settings and checkpoints."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
import yaml

from harness.aitk.job import load_job
from harness.aitk.outputs import discover, lora_metadata, lora_software_version
from harness.errors import HarnessError

ORACLE = Path("/work/shared/oracle")
needs_oracle = pytest.mark.skipif(not ORACLE.is_dir(), reason="oracle folder /work/shared/oracle is absent")
CTRL = "/c.png"


def make_output(tmp_path, previews, ckpts, steps=6, save=None, model_kwargs=None, **proc_extra):
    """An output folder with config.yaml, empty preview files and empty checkpoint files."""
    out = tmp_path / "myjob"
    (out / "samples").mkdir(parents=True)
    proc = {"type": "sd_trainer", "train": {"steps": steps, "dtype": "bf16"},
            "save": save or {"save_every": 2, "max_step_saves_to_keep": 1},
            "model": {"name_or_path": "/m", "arch": "wan22_14b_i2v",
                      "model_kwargs": model_kwargs or {"train_high_noise": True, "train_low_noise": True}},
            "sample": {"neg": "", "samples": [{"prompt": "a", "ctrl_img": CTRL}, {"prompt": "b", "ctrl_img": CTRL}]}}
    proc.update(proc_extra)
    (out / "config.yaml").write_text(yaml.safe_dump({"job": "extension", "config": {"name": "myjob", "process": [proc]}}))
    for name in previews:
        (out / "samples" / name).write_bytes(b"x")
    for name in ckpts:
        (out / name).write_bytes(b"x")
    return out


def both(stem):
    return [f"{stem}_high_noise.safetensors", f"{stem}_low_noise.safetensors"]


def by_label(jobs):
    return {(j.step, j.index): j for j in jobs}


def test_pairing_deleted_and_final(tmp_path):
    previews = [f"{1000 + s}__{s:09d}_{i}.webp" for s in (0, 2, 4, 6) for i in (0, 1)]
    out = make_output(tmp_path, previews, both("myjob_000000004") + both("myjob"))
    jobs = by_label(discover(out))
    assert len(jobs) == 8
    assert jobs[(0, 0)].lora is None and jobs[(0, 0)].unreproducible is None and not jobs[(0, 0)].merged
    assert "step 2 was deleted (max_step_saves_to_keep=1" in jobs[(2, 1)].unreproducible
    assert jobs[(2, 1)].lora is None
    assert jobs[(4, 0)].lora.high == out / "myjob_000000004_high_noise.safetensors"
    assert jobs[(4, 0)].lora.low == out / "myjob_000000004_low_noise.safetensors" and jobs[(4, 0)].merged
    assert jobs[(6, 1)].lora.high == out / "myjob_high_noise.safetensors"
    # merged job: the deleted step-2 round left residue in the base steps 4 and 6 rendered on (§8.2)
    assert "merged sampling round at step 2" in jobs[(6, 1)].unreproducible
    assert jobs[(6, 1)].sample.prompt == "b" and jobs[(6, 1)].case == "myjob"


def test_final_step_prefers_numbered_when_present(tmp_path):
    out = make_output(tmp_path, ["1__000000006_0.webp"], both("myjob_000000006") + both("myjob"))
    assert discover(out)[0].lora.high.name == "myjob_000000006_high_noise.safetensors"


def test_step_zero_has_no_lora_even_without_checkpoint(tmp_path):
    out = make_output(tmp_path, ["1__000000000_0.webp"], [])
    j = discover(out)[0]
    assert j.lora is None and j.unreproducible is None


def test_duplicate_labels_kept_in_time_order(tmp_path):
    out = make_output(tmp_path, ["500__000000006_0.webp", "300__000000006_0.webp"], both("myjob"))
    jobs = discover(out)
    assert [j.golden.name for j in jobs] == ["300__000000006_0.webp", "500__000000006_0.webp"]
    assert jobs[0].label_note.startswith("render 1 of 2") and jobs[1].label_note.startswith("render 2 of 2")
    assert "after-training render repeats the last step label" in jobs[1].label_note


def test_high_only_job(tmp_path):
    kw = {"train_high_noise": True, "train_low_noise": False}
    out = make_output(tmp_path, ["1__000000002_0.webp", "2__000000006_0.webp"],
                      ["myjob_000000002_high_noise.safetensors", "myjob_high_noise.safetensors"], model_kwargs=kw)
    jobs = discover(out)
    assert all(j.lora.low is None and j.lora.high is not None and j.unreproducible is None for j in jobs)


def test_half_checkpoint_is_unreproducible(tmp_path):
    out = make_output(tmp_path, ["1__000000002_0.webp"], ["myjob_000000002_high_noise.safetensors"])
    j = discover(out)[0]
    assert j.lora is None and "myjob_000000002_low_noise.safetensors is missing" in j.unreproducible


def test_never_saved_step(tmp_path):
    out = make_output(tmp_path, ["1__000000003_0.webp"], [])
    assert "never written" in discover(out)[0].unreproducible


def test_index_beyond_samples(tmp_path):
    out = make_output(tmp_path, ["1__000000000_5.webp"], [])
    j = discover(out)[0]
    assert j.unreproducible.startswith("this preview cannot be reproduced because") and "index 5" in j.unreproducible


def test_names_ignored_and_unpadded_index(tmp_path):
    out = make_output(tmp_path, ["1__000000000_1.webp", "2_000000000_0.webp", "3__000000000_0.gif", "notes.txt"], [])
    for sub in (".tmp", ".thumbs"):
        (out / "samples" / sub).mkdir()
        (out / "samples" / sub / "4__000000000_0.webp").write_bytes(b"x")
    (out / "samples" / "5__000000000_1.webp.jpg").write_bytes(b"x")
    jobs = discover(out)
    assert [j.golden.name for j in jobs] == ["1__000000000_1.webp"]
    sample = {"neg": "", "samples": [{"prompt": str(i), "ctrl_img": CTRL} for i in range(11)]}
    out2 = make_output(tmp_path / "b", ["1__000000000_10.jpg"], [], sample=sample)
    assert discover(out2)[0].sample.prompt == "10"


def test_golden_raw(tmp_path):
    out = make_output(tmp_path, ["1__000000000_0.webp", "2__000000000_1.webp"], [])
    (out / "samples_raw").mkdir()
    (out / "samples_raw" / "1__000000000_0.npy").write_bytes(b"x")
    jobs = discover(out)
    assert jobs[0].golden_raw == out / "samples_raw/1__000000000_0.npy" and jobs[1].golden_raw is None


def test_first_sample_then_baseline_at_step_zero(tmp_path):
    first = {"neg": "", "samples": [{"prompt": "first", "ctrl_img": CTRL}]}
    out = make_output(tmp_path, ["1__000000000_0.webp", "2__000000000_0.webp", "3__000000000_1.webp"], [],
                      first_sample=first)
    jobs = discover(out)
    assert [(j.index, j.sample.prompt, j.extra["round"]) for j in jobs] == [
        (0, "first", "first_sample"), (0, "a", "sample"), (1, "b", "sample")]
    assert "first_sample round" in jobs[0].label_note


def test_first_sample_only_when_baseline_skipped(tmp_path):
    first = {"neg": "", "samples": [{"prompt": "first", "ctrl_img": CTRL}]}
    out = make_output(tmp_path, ["1__000000000_0.webp"], [], first_sample=first,
                      train={"steps": 6, "dtype": "bf16", "skip_first_sample": True})
    assert discover(out)[0].sample.prompt == "first"


def test_merged_flag_follows_multipliers(tmp_path):
    sample = {"neg": "", "samples": [{"prompt": "a", "ctrl_img": CTRL}, {"prompt": "b --m 0.5", "ctrl_img": CTRL}]}
    out = make_output(tmp_path, ["1__000000006_0.webp"], both("myjob"), sample=sample)
    j = discover(out)[0]
    assert j.merged is False and "multipliers" in j.extra["merge_reason"]


def test_missing_folders(tmp_path):
    with pytest.raises(HarnessError):
        discover(tmp_path / "nope")
    out = make_output(tmp_path, [], [])
    (out / "samples").rmdir()
    with pytest.raises(HarnessError) as e:
        discover(out)
    assert "samples" in e.value.file


def _safetensors(path: Path, meta):
    header = json.dumps({"__metadata__": meta} if meta is not None else {}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header)


def test_lora_metadata_and_version(tmp_path):
    p = tmp_path / "a.safetensors"
    _safetensors(p, {"software": json.dumps({"name": "ai-toolkit", "version": "0.9.1"})})
    assert lora_software_version(p) == "0.9.1"
    _safetensors(p, {"format": "pt"})
    assert lora_software_version(p) is None and lora_metadata(p) == {"format": "pt"}
    _safetensors(p, None)
    assert lora_software_version(p) is None
    p.write_bytes(b"\x01")
    with pytest.raises(HarnessError):
        lora_metadata(p)


@needs_oracle
@pytest.mark.parametrize("case", ["case_a", "case_d"])
def test_oracle_discovery_matches_manifest(case):
    root = ORACLE / "cases" / case
    manifest = json.loads((root / "manifest.json").read_text())
    out = root / "output" / manifest["job_name"]
    jobs = {j.golden.name: j for j in discover(out, load_job(root / "config.yaml"))}
    assert len(jobs) == len(manifest["samples"])
    for rec in manifest["samples"]:
        j = jobs[Path(rec["file"]).name]
        assert (j.step, j.index, j.unreproducible) == (rec["step"], rec["prompt_index"], None)
        got = sorted(p.name for p in (j.lora.high, j.lora.low)) if j.lora else []
        assert got == sorted(rec["lora_files"])
        assert j.golden_raw == out / rec["raw_frames"]
        assert j.merged == (rec["network_state_during_sampling"]["merged_in"] and j.lora is not None)
        assert j.sample.prompt == rec["prompt"] and j.sample.seed == rec["seed"]


@needs_oracle
def test_oracle_lora_version():
    f = ORACLE / "cases/case_a/output/oracle_case_a/oracle_case_a_high_noise.safetensors"
    assert lora_software_version(f) == "0.12.26"


def test_lora_dir_separate_from_previews(tmp_path):
    """A case keeps copies of the previews elsewhere; checkpoints are looked up in lora_dir only."""
    out = make_output(tmp_path, ["1__000000004_0.webp"], both("myjob_000000004"))
    copy = make_output(tmp_path / "copy", ["1__000000004_0.webp"], [])
    assert discover(copy)[0].lora is None
    j = discover(copy, lora_dir=out)[0]
    assert j.golden == copy / "samples/1__000000004_0.webp"
    assert j.lora.high == out / "myjob_000000004_high_noise.safetensors" and j.unreproducible is None
    with pytest.raises(HarnessError) as e:
        discover(copy, lora_dir=tmp_path / "gone")
    assert "LoRA folder not found" in str(e.value)


def test_step_0_previews_carry_the_version_of_the_jobs_earliest_checkpoint(tmp_path):
    """A baseline preview has no LoRA of its own; the sampler ai-toolkit used is read from the job's checkpoints."""
    from harness.demo_model import aitk_metadata, write_aitk_lora

    previews = [f"{1000 + s}__{s:09d}_0.webp" for s in (0, 2, 4)]
    out = make_output(tmp_path, previews, [])
    state = {"diffusion_model.blocks.0.self_attn.q.lora_A.weight": torch.zeros(4, 24),
             "diffusion_model.blocks.0.self_attn.q.lora_B.weight": torch.zeros(24, 4)}
    for stem, version in (("myjob_000000002", "0.9.3"), ("myjob", "0.9.4")):  # resumed with a newer ai-toolkit
        for side in ("high", "low"):
            meta = {**aitk_metadata("myjob"), "software": {"name": "ai-toolkit", "version": version}}
            write_aitk_lora(out / f"{stem}_{side}_noise.safetensors", state, meta)
    (out / "myjob_000000003_high_noise.safetensors").mkdir()  # not a file: never opened
    jobs = by_label(discover(out))
    assert jobs[(0, 0)].extra["job_aitk_version"] == {"version": "0.9.3",
                                                      "file": "myjob_000000002_high_noise.safetensors"}


@pytest.mark.parametrize("split", [False, True])
def test_combined_checkpoints_are_paired_and_the_jobs_own_format_wins(tmp_path, split):
    """``split_multistage_loras: false`` saves one ``<name>[_<step>].safetensors`` for both experts (§2.5)."""
    previews = [f"{1000 + s}__{s:09d}_0.webp" for s in (0, 2, 4, 6)]
    ckpts = ["myjob_000000002.safetensors", "myjob.safetensors", *both("myjob_000000004"), "myjob_000000004.safetensors",
             "myjob_LoRA_000000006.safetensors"]
    out = make_output(tmp_path, previews, ckpts, network={"split_multistage_loras": split},
                      save={"save_every": 2})
    jobs = by_label(discover(out))
    two, four, final = jobs[(2, 0)].lora, jobs[(4, 0)].lora, jobs[(6, 0)].lora
    assert two.combined and two.high == two.low == out / "myjob_000000002.safetensors"
    assert four.combined is not split  # both formats exist for step 4: the job's own is used
    assert four.high == (out / "myjob_000000004_high_noise.safetensors" if split else out / "myjob_000000004.safetensors")
    # the last step: its numbered save (here with the _LoRA infix of a job that also trains an embedding) comes
    # before the un-numbered final one
    assert final.combined and final.high == final.low == out / "myjob_LoRA_000000006.safetensors"
    assert all(j.unreproducible is None and j.broken is None for j in jobs.values())


def test_a_combined_file_of_a_one_stage_job_serves_that_expert(tmp_path):
    previews = ["1002__000000002_0.webp"]
    out = make_output(tmp_path, previews, ["myjob_000000002.safetensors"], network={"split_multistage_loras": False},
                      model_kwargs={"train_high_noise": False, "train_low_noise": True})
    lora = by_label(discover(out))[(2, 0)].lora
    assert lora.combined and lora.high is None and lora.low == out / "myjob_000000002.safetensors"
