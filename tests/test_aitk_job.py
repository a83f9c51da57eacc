"""load_job: what is read from an ai-toolkit job file, and every way it refuses one."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from harness.aitk.job import load_job
from harness.errors import HarnessError

ORACLE = Path("/work/shared/oracle")
BASE = {
    "job": "extension",
    "config": {"name": "myjob", "process": [{
        "type": "sd_trainer", "training_folder": "/workspace/out", "trigger_word": "sks",
        "network": {"type": "lora", "linear": 8}, "save": {"save_every": 2},
        "train": {"steps": 6, "dtype": "bf16"},
        "model": {"name_or_path": "/workspace/model", "arch": "wan22_14b_i2v"},
        "sample": {"neg": "", "samples": [{"prompt": "a cat", "ctrl_img": "/c.png"}]},
    }]},
}


def write(tmp_path: Path, data=None, text=None) -> Path:
    """Write a job (dict or raw text) and return its path."""
    path = tmp_path / "job.yaml"
    path.write_text(text if text is not None else yaml.safe_dump(data))
    return path


def job(**proc) -> dict:
    """Base job with process[0] keys replaced; None deletes a key."""
    data = copy.deepcopy(BASE)
    p = data["config"]["process"][0]
    for k, v in proc.items():
        p.pop(k, None) if v is None else p.__setitem__(k, v)
    return data


def test_fields_and_model_defaults(tmp_path):
    j = load_job(write(tmp_path, job()))
    assert (j.name, j.arch, j.trigger_word, j.train_dtype, j.train_steps) == ("myjob", "wan22_14b_i2v", "sks", "bf16", 6)
    assert j.model["quantize"] is False and j.model["qtype"] == "qfloat8" and j.model["layer_offloading"] is False
    assert j.model["model_kwargs"] == {"train_high_noise": True, "train_low_noise": True}
    assert j.first_sample is None and j.save == {"save_every": 2} and j.training_folder == "/workspace/out"
    assert j.raw["config"]["name"] == "myjob" and j.unsupported_reason() is None


def test_process_name_wins_and_empty_trigger_is_none(tmp_path):
    j = load_job(write(tmp_path, job(name="procname", trigger_word="")))
    assert j.name == "procname" and j.trigger_word is None


def test_dtype_default_fp32_is_recorded_not_raised(tmp_path):
    j = load_job(write(tmp_path, job(train={"steps": 2})))
    assert j.train_dtype == "fp32"
    assert "bf16 only" in j.unsupported_reason()


def test_missing_file(tmp_path):
    with pytest.raises(HarnessError) as e:
        load_job(tmp_path / "nope.yaml")
    assert "nope.yaml" in e.value.file and "not found" in e.value.message


def test_yaml_syntax_error_names_line(tmp_path):
    path = write(tmp_path, text="job: extension\nconfig:\n  name: x\n  process: [\n   - a: b\n  bad: : :\n")
    with pytest.raises(HarnessError) as e:
        load_job(path)
    assert e.value.field.startswith("line ") and "does not parse" in e.value.message
    assert len(str(e.value).splitlines()) == 1


@pytest.mark.parametrize("data,field", [
    ({"job": "extension"}, "config"),
    ({"config": {"name": "x"}}, "config.process"),
    ({"config": {"name": "x", "process": []}}, "config.process"),
])
def test_missing_config_or_process(tmp_path, data, field):
    with pytest.raises(HarnessError) as e:
        load_job(write(tmp_path, data))
    assert e.value.field == field


def test_wrong_arch_lists_supported(tmp_path):
    data = job()
    data["config"]["process"][0]["model"]["arch"] = "wan22_14b"
    with pytest.raises(HarnessError) as e:
        load_job(write(tmp_path, data))
    assert e.value.field == "config.process[0].model.arch"
    assert "'wan22_14b'" in e.value.message and "wan22_14b_i2v" in e.value.message


def test_missing_sample_block(tmp_path):
    with pytest.raises(HarnessError) as e:
        load_job(write(tmp_path, job(sample=None)))
    assert e.value.field == "config.process[0].sample" and "no previews were configured" in e.value.message


def test_bad_steps(tmp_path):
    with pytest.raises(HarnessError) as e:
        load_job(write(tmp_path, job(train={"steps": "many", "dtype": "bf16"})))
    assert e.value.field == "config.process[0].train.steps"


@pytest.mark.skipif(not ORACLE.is_dir(), reason="oracle folder /work/shared/oracle is absent")
def test_oracle_case_a():
    j = load_job(ORACLE / "cases/case_a/config.yaml")
    assert j.name == "oracle_case_a" and j.train_steps == 4 and j.trigger_word == "sks"
    assert j.model["name_or_path"] == "/workspace/oracle/tiny_model" and j.unsupported_reason() is None
