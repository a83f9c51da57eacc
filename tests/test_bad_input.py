"""Bad input, end to end through ``wan-parity run``: every malformed input is one clear line naming file and field.

Three outcomes are checked, by where the problem is found:

* ``line``   - found while reading the inputs: exit 2 and stderr is exactly one ``error: <file>: <field>: ...`` line;
* ``result`` - found for one preview (its control image, LoRA, base model, golden): exit 2 and the preview's
  result is ``error`` with a one-line message starting with the file and naming the field (stderr, if the CLI
  prints the error results there, is only ``error:`` lines);
* ``unrepro`` - the preview exists but ai-toolkit's inputs cannot be reconstructed: status ``unreproducible`` with
  the reason naming the field; a run in which every preview is unreproducible compared nothing and exits 3.

Only the tiny offline model is used, and no case here renders more than one denoising step.
"""

from __future__ import annotations

import re

import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import save_file

from harness.cli import main
from harness.demo import DEMO_CASE
from harness.errors import HarnessError
from harness.demo_model import build_tiny_model, make_demo_lora_pair, write_aitk_lora, aitk_metadata
from harness.media import encode_like_aitk
from harness.targets import collect

PROGRESS = re.compile(r"\[\d+/\d+\] ")  # the one line per finished preview off a TTY (stderr)

pytest_plugins = ["pytester"]

HIGH_250 = "demo_000000250_high_noise.safetensors"
LOW_250 = "demo_000000250_low_noise.safetensors"
GOLDEN_0 = "1790000000000__000000000_0.webp"


# ---------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny model, control images and a LoRA pair per checkpoint, built once for the module."""
    root = tmp_path_factory.mktemp("tiny")
    model = build_tiny_model(root / "model")
    shutil.copytree(DEMO_CASE / "ctrl", root / "ctrl")
    loras = root / "loras"
    for seed, step in ((10, 250), (20, None)):
        make_demo_lora_pair(model, loras, "demo", seed=seed, step=step)
    return root


@pytest.fixture(autouse=True)
def empty_hf_cache(tmp_path, monkeypatch):
    """Hub ids resolve only from this (empty) cache; the VAE comes from <base>/vae."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)


class Job:
    """A writable ai-toolkit output folder for the demo job, pointing at the tiny model with real paths."""

    def __init__(self, root: Path, tiny: Path):
        self.tiny = tiny
        self.dir = root / "output" / "demo"
        self.dir.mkdir(parents=True)
        shutil.copytree(DEMO_CASE / "samples", self.dir / "samples")
        for f in (tiny / "loras").iterdir():
            shutil.copy2(f, self.dir / f.name)
        self.config = yaml.safe_load((DEMO_CASE / "config.yaml").read_text())
        self.model["name_or_path"] = str(tiny / "model")
        for item in self.sample["samples"]:
            item["ctrl_img"] = str(tiny / "ctrl" / Path(item["ctrl_img"]).name)
        self.write()

    @property
    def proc(self) -> dict:
        return self.config["config"]["process"][0]

    @property
    def model(self) -> dict:
        return self.proc["model"]

    @property
    def sample(self) -> dict:
        return self.proc["sample"]

    @property
    def config_file(self) -> Path:
        return self.dir / "config.yaml"

    def write(self) -> None:
        self.config_file.write_text(yaml.safe_dump(self.config, sort_keys=False))

    def golden(self, step: int, index: int) -> Path:
        return next((self.dir / "samples").glob(f"*__{step:09d}_{index}.webp"))


@pytest.fixture
def job(tmp_path, tiny):
    return Job(tmp_path, tiny)


def run_cli(capsys, target, out, *extra) -> tuple[int, list[str], dict | None]:
    """``wan-parity run`` in-process; returns (exit code, stderr lines, results document or None)."""
    capsys.readouterr()
    rc = main(["run", str(target), "--out", str(out), "--no-report", "--device", "cpu", "--threads", "2", *extra])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and not PROGRESS.match(line)]
    doc_file = Path(out) / "results.json"
    return rc, err, json.loads(doc_file.read_text()) if doc_file.is_file() else None


def assert_line(rc, err, file, field, *words):
    assert rc == 2, err
    assert len(err) == 1, err
    line = err[0]
    prefix = "error: " + (f"{file}: " if file is not None else "")
    assert line.startswith(prefix), line
    assert field in line, line
    for w in words:
        assert w in line, line


def only_result(doc) -> dict:
    assert doc is not None and len(doc["results"]) == 1, doc and [r["key"] for r in doc["results"]]
    return doc["results"][0]


def assert_result_error(rc, err, doc, file, field, *words):
    assert rc == 2
    assert all(line.startswith("error: ") for line in err), err
    result = only_result(doc)
    assert result["status"] == "error", result
    message = result["message"]
    assert "\n" not in message and message.startswith(f"{file}: "), message
    if field is not None:
        assert f": {field}" in message or field in message.split(": ")[1], message
    for w in words:
        assert w in message, message
    return message


# ---------------------------------------------------------------------------------------------------- mutations


def set_item(key, value, index=0):
    def mutate(job):
        job.sample["samples"][index][key] = value
    return mutate


def set_block(key, value):
    def mutate(job):
        job.sample[key] = value
    return mutate


def drop_item_key(key, index=0):
    def mutate(job):
        job.sample["samples"][index].pop(key, None)
    return mutate


def raw_config(text):
    def mutate(job):
        job.config_file.write_text(text)
        return "raw"
    return mutate


def no_process(job):
    job.config["config"]["process"] = []


def wrong_arch(job):
    job.model["arch"] = "wan21_14b"


def neg_missing(job):
    job.sample.pop("neg")


def neg_false(job):
    job.sample["neg"] = False


LINE_CASES = {
    # id: (mutation, field, words)
    "yaml_does_not_parse": (raw_config("config:\n  name: demo\n  process: [\n    {type: x\n"), "line ", ["YAML"]),
    "yaml_top_level_list": (raw_config("- a\n- b\n"), "", ["not an ai-toolkit job"]),
    "yaml_binary": (raw_config("\udcff"), "", []),
    "no_process": (no_process, "config.process", ["empty"]),
    "wrong_arch": (wrong_arch, "model.arch", ["wan21_14b", "wan22_14b_i2v"]),
    "width_text": (set_block("width", "big"), "sample.width", ["whole number"]),
    "height_zero": (set_item("height", 0), "samples[0].height", ["greater than 0"]),
    "num_frames_negative": (set_item("num_frames", -9), "samples[0].num_frames", ["greater than 0"]),
    "num_frames_float": (set_item("num_frames", 8.5), "samples[0].num_frames", ["whole number"]),
    "fps_list": (set_block("fps", [16]), "sample.fps", ["whole number"]),
    "steps_zero": (set_block("sample_steps", 0), "sample.sample_steps", ["greater than 0"]),
    "guidance_nan": (set_block("guidance_scale", float("nan")), "sample.guidance_scale", ["finite"]),
    "guidance_text": (set_item("guidance_scale", "high"), "samples[0].guidance_scale", ["number"]),
    "flag_not_int": (set_item("prompt", "a kite --w wide"), "samples[0].prompt", ["--w", "wide"]),
    "flag_without_value": (set_item("prompt", "a kite --frames"), "samples[0].prompt", ["--frames"]),
    "flag_zero_steps": (set_item("prompt", "a kite --s 0"), "samples[0].prompt", ["greater than 0"]),
    "flag_cfg_not_float": (set_item("prompt", "a kite --cfg lots"), "samples[0].prompt", ["--cfg"]),
    "prompt_not_text": (set_item("prompt", ["a", "b"]), "samples[0].prompt", ["string"]),
    "seed_text": (set_item("seed", "lucky"), "samples[0].seed", ["whole number"]),
    "samples_not_list": (set_block("samples", "a kite"), "sample.samples", ["list"]),
}


@pytest.mark.parametrize("case_id", sorted(LINE_CASES))
def test_bad_config_is_one_line(job, tmp_path, capsys, case_id):
    mutate, field, words = LINE_CASES[case_id]
    if case_id == "yaml_binary":
        job.config_file.write_bytes(b"\xff\xfe\x00garbage")
    elif mutate(job) != "raw":
        job.write()
    rc, err, doc = run_cli(capsys, job.dir, tmp_path / "out")
    assert_line(rc, err, job.config_file, field, *words)
    assert doc is None


UNREPRO_CASES = {
    "neg_missing": (neg_missing, ["sample.neg", 'neg: ""']),
    "neg_false": (neg_false, ["False", "sample.neg"]),
    "seed_minus_one": (set_item("seed", -1), ["samples[0]", "-1"]),
    "seed_flag_minus_one": (set_item("prompt", "a kite --seed -1"), ["samples[0]", "-1"]),
    "no_ctrl_img": (drop_item_key("ctrl_img"), ["samples[0]", "ctrl_img"]),
}


@pytest.mark.parametrize("case_id", sorted(UNREPRO_CASES))
def test_unreproducible_previews_are_reported_not_failed(job, tmp_path, capsys, case_id):
    mutate, words = UNREPRO_CASES[case_id]
    mutate(job)
    job.write()
    rc, err, doc = run_cli(capsys, job.dir, tmp_path / "out", "--steps", "0", "--samples", "0")
    assert rc == 3, err  # nothing was compared: never green
    result = only_result(doc)
    assert result["status"] == "unreproducible"
    for w in words:
        assert w in result["message"], result["message"]


def test_deleted_checkpoint_is_unreproducible_and_a_combined_one_is_used(job, tmp_path, capsys):
    from harness.demo_model import write_combined_aitk_lora

    high, low = job.dir / HIGH_250, job.dir / LOW_250
    combined = write_combined_aitk_lora(tmp_path / "demo_000000250.safetensors", high, low)
    high.unlink()
    low.unlink()
    rc, err, doc = run_cli(capsys, job.dir, tmp_path / "out", "--steps", "250", "--samples", "0")
    message = only_result(doc)["message"]
    assert rc == 3 and "was deleted" in message and "demo_000000250.safetensors" in message  # no file in any format
    os.replace(combined, job.dir / combined.name)
    lora = next(t.preview.lora for t in collect(job.dir) if t.preview.step == 250)
    assert lora.combined and lora.high == lora.low == job.dir / combined.name


# ---------------------------------------------------------------------------------------------------- per preview


def ctrl_missing(job):
    job.sample["samples"][0]["ctrl_img"] = "/nonexistent/ctrl/kite.png"
    job.write()


def ctrl_bytes(data: bytes, name="bad.png"):
    def mutate(job):
        path = job.dir / name
        path.write_bytes(data)
        job.sample["samples"][0]["ctrl_img"] = str(path)
        job.write()
    return mutate


def _png_bytes() -> bytes:
    import io

    buf = io.BytesIO()
    Image.new("RGB", (96, 80), (200, 30, 40)).save(buf, format="PNG")
    return buf.getvalue()


def lora_bytes(data: bytes):
    def mutate(job):
        (job.dir / HIGH_250).write_bytes(data)
    return mutate


def lora_truncated(job):
    path = job.dir / HIGH_250
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def lora_pickle_renamed(job):
    torch.save({"diffusion_model.blocks.0.self_attn.q.lora_A.weight": torch.zeros(4, 24)}, str(job.dir / HIGH_250))


def _lora_state(job, *, extra=None, drop_prefix=None, reshape=None, block_offset=0):
    from safetensors.torch import load_file

    state = load_file(str(job.tiny / "loras" / HIGH_250))
    if block_offset:
        state = {k.replace("blocks.1.", f"blocks.{1 + block_offset}."): v for k, v in state.items()}
    if reshape:
        state[reshape] = torch.zeros(state[reshape].shape[0], state[reshape].shape[1] + 3)
    state.update(extra or {})
    return state


def lora_state(**kwargs):
    def mutate(job):
        save_file(_lora_state(job, **kwargs), str(job.dir / HIGH_250), metadata={"format": "pt"})
    return mutate


def lora_combined(job):
    state = {f"transformer_1.{k}": v for k, v in _lora_state(job).items()}
    save_file(state, str(job.dir / HIGH_250))


def base_missing(job):
    job.model["name_or_path"] = "/nonexistent/Wan2.2-I2V-A14B-Diffusers"
    job.write()


def base_hub_id(job):
    job.model["name_or_path"] = "Wan-AI/Wan2.2-I2V-A14B-Diffusers"
    job.write()


def base_without_subfolder(job):
    partial = job.dir.parent.parent / "partial_model"
    partial.mkdir()
    for sub in (job.tiny / "model").iterdir():
        if sub.name != "transformer_2":
            os.symlink(sub, partial / sub.name)
    job.model["name_or_path"] = str(partial)
    job.write()


def golden_frames(n: int, size=(64, 64), duration: int | None = None):
    def mutate(job):
        frames = np.stack([np.full((size[1], size[0], 3), 60 + 20 * i, np.uint8) for i in range(n)])  # distinct
        data = encode_like_aitk(frames, fps=16) if n > 1 else None
        path = job.golden(0, 0)
        if n == 1:
            Image.fromarray(frames[0]).save(path, format="WEBP")
        elif duration is not None:
            images = [Image.fromarray(f) for f in frames]
            images[0].save(path, format="WEBP", save_all=True, append_images=images[1:], duration=duration, loop=0)
        else:
            path.write_bytes(data)
    return mutate


def golden_truncated(job):
    path = job.golden(0, 0)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def raw_golden_garbage(job):
    raw = job.dir / "samples_raw"
    raw.mkdir()
    (raw / (job.golden(0, 0).stem + ".npy")).write_bytes(b"\x93NUMPY garbage")


# (mutation, steps, file (callable job -> path), field, words)
RESULT_CASES = {
    "ctrl_missing": (ctrl_missing, "0", lambda j: j.config_file, "samples[0].ctrl_img", ["not found", "--path-map"]),
    "ctrl_not_an_image": (ctrl_bytes(b"this is not a png"), "0", lambda j: j.dir / "bad.png", "ctrl_img",
                          ["not a readable image"]),
    "ctrl_truncated": (ctrl_bytes(_png_bytes()[:60]), "0", lambda j: j.dir / "bad.png", "ctrl_img",
                       ["not a readable image"]),
    "ctrl_empty": (ctrl_bytes(b""), "0", lambda j: j.dir / "bad.png", "ctrl_img", ["not a readable image"]),
    "lora_truncated": (lora_truncated, "250", lambda j: j.dir / HIGH_250, None, ["truncated"]),
    "lora_not_safetensors": (lora_bytes(b"\x00" * 3), "250", lambda j: j.dir / HIGH_250, None, ["not a safetensors"]),
    "lora_pickle_renamed": (lora_pickle_renamed, "250", lambda j: j.dir / HIGH_250, None, ["safetensors"]),
    "lora_unknown_keys": (lora_state(extra={"lora_unet_down.weight": torch.zeros(2, 2)}), "250",
                          lambda j: j.dir / HIGH_250, "keys", ["lora_unet_down.weight"]),
    "lora_keys_match_no_module": (lora_state(block_offset=40), "250", lambda j: j.dir / HIGH_250, "keys",
                                  ["blocks.41.attn1.to_q", "match no linear"]),
    "lora_shape_mismatch": (lora_state(reshape="diffusion_model.blocks.0.self_attn.q.lora_A.weight"), "250",
                            lambda j: j.dir / HIGH_250, "blocks.0.attn1.to_q", ["shape mismatch", "(24, 24)"]),
    "lora_combined_unsplit": (lora_combined, "250", lambda j: j.dir / HIGH_250, "keys",
                              ["combined", "split", "_high_noise", "_low_noise"]),
    "lora_lokr": (lora_state(extra={"diffusion_model.blocks.0.self_attn.q.lokr_w1": torch.zeros(2, 2)}), "250",
                  lambda j: j.dir / HIGH_250, "keys", ["LoKr", "lokr_w1"]),
    "lora_dora": (lora_state(extra={"diffusion_model.blocks.0.self_attn.q.dora_scale": torch.zeros(1, 24)}), "250",
                  lambda j: j.dir / HIGH_250, "keys", ["DoRA", "dora_scale"]),
    "base_model_missing": (base_missing, "0", lambda j: j.config_file, "model.name_or_path",
                           ["not found", "--base-model"]),
    "base_model_subfolder_missing": (base_without_subfolder, "0", lambda j: j.config_file, "model.name_or_path",
                                     ["transformer_2/", "--base-model"]),
    "hub_id_not_cached": (base_hub_id, "0", lambda j: j.config_file, "model.name_or_path",
                          ["not in the local Hugging Face cache", "--base-model", "nothing is downloaded"]),
    "golden_truncated": (golden_truncated, "0", lambda j: j.golden(0, 0), None, ["truncated"]),
    "golden_not_animated": (golden_frames(1), "0", lambda j: j.golden(0, 0), "frames", ["not animated", "9"]),
    "golden_frame_count": (golden_frames(5), "0", lambda j: j.golden(0, 0), "frames", ["5 frame", "num_frames"]),
    "golden_size": (golden_frames(9, size=(80, 64)), "0", lambda j: j.golden(0, 0), "size", ["80x64", "72x64"]),
    "golden_fps": (golden_frames(9, duration=100), "0", lambda j: j.golden(0, 0), "fps", ["100 ms", "62 ms"]),
    "raw_golden_corrupt": (raw_golden_garbage, "0", lambda j: j.dir / "samples_raw" / (j.golden(0, 0).stem + ".npy"),
                           None, [".npy"]),
}


@pytest.mark.parametrize("case_id", sorted(RESULT_CASES))
def test_bad_preview_input_is_an_error_result(job, tmp_path, capsys, monkeypatch, case_id):
    mutate, steps, file, field, words = RESULT_CASES[case_id]
    mutate(job)

    def no_unpickling(*args, **kwargs):
        raise AssertionError("a LoRA was unpickled")

    monkeypatch.setattr(torch, "load", no_unpickling)
    rc, err, doc = run_cli(capsys, job.dir, tmp_path / "out", "--steps", steps, "--samples", "0")
    assert_result_error(rc, err, doc, file(job), field, *words)


def test_golden_size_mismatch_reports_requested_and_snapped(job, tmp_path, capsys):
    golden_frames(9, size=(80, 64))(job)
    rc, err, doc = run_cli(capsys, job.dir, tmp_path / "out", "--steps", "0", "--samples", "0")
    assert "requested 72x64" in only_result(doc)["message"]


@pytest.mark.parametrize("suffix", [".pt", ".ckpt", ".bin", ".pth"])
def test_pickle_lora_in_a_request_is_refused_and_never_loaded(tmp_path, tiny, capsys, monkeypatch, suffix):
    def no_unpickling(*args, **kwargs):
        raise AssertionError("a LoRA was unpickled")

    monkeypatch.setattr(torch, "load", no_unpickling)
    import pickle

    monkeypatch.setattr(pickle, "load", no_unpickling)
    lora = tmp_path / f"evil{suffix}"
    torch.save({"x": torch.zeros(1)}, str(lora)) if suffix != ".pth" else lora.write_bytes(b"\x80\x04K\x01.")
    request = tmp_path / "request.json"
    request.write_text(json.dumps({
        "model": "wan22_14b_i2v",
        "prompts": [{"prompt": "a kite", "ctrl_img": str(tiny / "ctrl" / "hills.png"), "width": 64, "height": 64,
                     "num_frames": 5, "sample_steps": 1, "golden": str(DEMO_CASE / "samples" / GOLDEN_0)}],
        "loras": [{"path": str(lora), "transformer": "high"}],
    }))
    rc, err, doc = run_cli(capsys, request, tmp_path / "out", "--base-model", str(tiny / "model"))
    assert rc == 2, err
    messages = err + [r["message"] for r in (doc or {}).get("results", [])]
    assert any(m.replace("error: ", "").startswith(str(lora)) and "pickle" in m for m in messages), messages


def test_base_model_override_missing(job, tmp_path, capsys):
    rc, err, doc = run_cli(capsys, job.dir, tmp_path / "out", "--steps", "0", "--samples", "0",
                           "--base-model", str(tmp_path / "nope"))
    message = assert_result_error(rc, err, doc, "--base-model", None, "not a folder")
    assert message.startswith("--base-model: ")


def test_non_finite_render_names_step_expert_and_lora(job, tmp_path, capsys):
    state = _lora_state(job)
    state = {k: torch.full_like(v, float("nan")) if "lora_B" in k else v for k, v in state.items()}
    write_aitk_lora(job.dir / HIGH_250, state, aitk_metadata("demo", 250))
    job.sample["sample_steps"] = 2
    job.write()
    rc, err, doc = run_cli(capsys, job.dir, tmp_path / "out", "--steps", "250", "--samples", "0")
    message = assert_result_error(rc, err, doc, job.dir / HIGH_250, "step 0", "NaN/Inf", "high-noise", "demo::250::0")
    assert "low-noise" not in message


def test_cuda_out_of_memory_names_the_offload_mode(job, tmp_path, capsys, monkeypatch):
    import harness.render.pipeline as pipeline

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(pipeline, "render_sample", oom)
    rc, err, doc = run_cli(capsys, job.dir, tmp_path / "out", "--steps", "0", "--samples", "0")
    message = assert_result_error(rc, err, doc, "--offload", None, "CUDA out of memory", "demo::0::0")
    assert "try --offload experts (or sequential on cards < 32 GB)" in message


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_requested_but_absent(job, tmp_path, capsys, device):
    capsys.readouterr()
    rc = main(["run", str(job.dir), "--out", str(tmp_path / "out"), "--device", device, "--no-report"])
    err = [line for line in capsys.readouterr().err.splitlines() if not PROGRESS.match(line)]
    assert_line(rc, err, None, "--device", device, "no CUDA device", "--device cpu")


def test_unknown_device(job, tmp_path, capsys):
    capsys.readouterr()
    rc = main(["run", str(job.dir), "--out", str(tmp_path / "out"), "--device", "tpu", "--no-report"])
    assert_line(rc, capsys.readouterr().err.splitlines(), None, "--device", "'tpu'")


# ---------------------------------------------------------------------------------------------------- case files


def write_case(tmp_path, job, **fields) -> Path:
    data = {"schema": "wan-parity/case@1", "name": "demo", "golden_dir": str(job.dir), **fields}
    path = tmp_path / "cases" / "demo.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


CASE_CASES = {
    "name_escapes": ({"name": "../../outside"}, "name", ["no path separators or '..'"]),
    "name_absolute": ({"name": "/tmp/outside"}, "name", ["not a valid case name"]),
    "unknown_key": ({"golden": "x"}, "golden", ["unknown key"]),
    "profile": ({"profile": "fast"}, "profile", ["aitk-euler"]),
    "threads": ({"threads": 0}, "threads", ["from 1 to"]),
    "tolerance": ({"tolerances": {"psnr_min": "high"}}, "tolerances.psnr_min", ["number"]),
    "steps": ({"steps": "0,250"}, "steps", ["list"]),
    "golden_dir_missing": ({"golden_dir": "../nowhere"}, "golden_dir", ["re-import"]),
    "lora_dir_missing": ({"lora_dir": "/nonexistent/loras"}, "lora_dir", ["path_map"]),
}


@pytest.mark.parametrize("case_id", sorted(CASE_CASES))
def test_bad_case_file_is_one_line(job, tmp_path, capsys, case_id):
    fields, field, words = CASE_CASES[case_id]
    case = write_case(tmp_path, job, **fields)
    rc, err, doc = run_cli(capsys, case, tmp_path / "out")
    assert_line(rc, err, case, field, *words)
    assert not (tmp_path / "outside").exists() and not Path("/tmp/outside").exists()


@pytest.mark.parametrize("via_folder", [False, True])
def test_case_yaml_that_does_not_parse_is_reported_not_skipped(job, tmp_path, capsys, via_folder):
    case = write_case(tmp_path, job)
    case.write_text(case.read_text() + "steps: [0, 250\n")
    rc, err, doc = run_cli(capsys, case.parent if via_folder else case, tmp_path / "out")
    assert_line(rc, err, case, "line ", "YAML does not parse")


def test_outputs_stay_under_out_whatever_the_case_name(job, tmp_path, capsys):
    case = write_case(tmp_path, job, name="a.b-c_d", steps=[0], samples=[0])
    job.sample["samples"][0]["seed"] = -1  # unreproducible: no rendering needed to write a result
    job.write()
    out = tmp_path / "out"
    rc, err, doc = run_cli(capsys, case, out)
    assert rc == 3  # its one preview is unreproducible: nothing was compared
    written = [p for p in tmp_path.rglob("*.json") if "hf" not in p.parts]
    assert written and all(out in p.parents for p in written)


# ---------------------------------------------------------------------------------------------------- where results go


def test_output_directory_not_writable(job, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    rc, err, doc = run_cli(capsys, job.dir, blocker / "out", "--steps", "0")
    assert_line(rc, err, blocker / "out", "--out", "not writable")


def _seed_all_minus_one(job):
    """Every preview unreproducible: the run writes results without rendering."""
    job.sample["seed"] = -1
    job.sample["walk_seed"] = False
    job.write()


def test_disk_full_leaves_no_half_written_result(job, tmp_path, capsys, monkeypatch):
    _seed_all_minus_one(job)

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    out = tmp_path / "out"
    rc, err, doc = run_cli(capsys, job.dir, out)
    assert rc == 2 and len(err) == 1 and err[0].startswith(f"error: {out / 'results'}"), err
    assert ".json: write failed (No space left on device); nothing was left half-written" in err[0]
    assert not [p for p in out.rglob("*") if p.is_file()]


def test_interrupt_keeps_finished_results_and_resume_skips_them(job, tmp_path, capsys, monkeypatch):
    import harness.runner as runner

    _seed_all_minus_one(job)
    real = runner.run_one
    calls = []

    def interrupted(engine, target):
        calls.append(target.key)
        if len(calls) == 3 and not engine.options.resume:
            raise KeyboardInterrupt
        return real(engine, target)

    monkeypatch.setattr(runner, "run_one", interrupted)
    out = tmp_path / "out"
    rc, err, doc = run_cli(capsys, job.dir, out)
    assert rc == 130 and "--resume" in err[-1]
    kept = sorted(p.name for p in (out / "results").rglob("*.json"))
    assert len(kept) == 2 and not list(out.rglob("*.tmp")) and doc is None

    calls.clear()
    rc, err, doc = run_cli(capsys, job.dir, out, "--resume")
    assert rc == 3 and len(calls) == 4  # 6 previews, 2 taken from the interrupted run; all unreproducible
    assert sum(1 for r in doc["results"] if r.get("resumed")) == 2


def test_interrupt_while_writing_leaves_no_partial_file(tmp_path, monkeypatch):
    from harness.fsutil import write_json_atomic

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_json_atomic(tmp_path / "r.json", {"a": 1})
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------------- control images


@pytest.mark.parametrize("mode", ["CMYK", "L", "LA", "RGBA", "P", "I;16", "1"])
def test_control_image_modes_become_rgb_like_ai_toolkit(tmp_path, mode):
    from harness.render.conditioning import load_control_image

    rgb = Image.new("RGB", (40, 24), (200, 100, 50))
    image = rgb.convert(mode) if mode != "I;16" else Image.fromarray(np.full((24, 40), 40000, np.uint16))
    path = tmp_path / ("c.tif" if mode == "CMYK" else "c.png")
    image.save(path)
    with Image.open(path) as reopened:
        expected = reopened.convert("RGB").resize((32, 16), Image.LANCZOS)
    got = load_control_image(path, 32, 16)
    assert got.mode == "RGB" and np.array_equal(np.asarray(got), np.asarray(expected))


# ---------------------------------------------------------------------------------------------------- pytest plugin


def test_plugin_turns_a_bad_case_into_one_failed_line(job, pytester):
    case = pytester.path / "broken.yaml"
    case.write_text(yaml.safe_dump({"schema": "wan-parity/case@1", "name": "../up", "golden_dir": str(job.dir)}))
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--parity-device", "cpu", str(case))
    result.assert_outcomes(failed=1)
    text = result.stdout.str()
    assert f"error: {case}: name:" in text and "Traceback" not in text


def test_request_without_golden_is_an_error_not_a_crash(tmp_path, tiny, capsys):
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"model": "wan22_14b_i2v", "loras": [],
                                   "prompts": [{"prompt": "a kite", "ctrl_img": str(tiny / "ctrl" / "hills.png")}]}))
    rc, err, doc = run_cli(capsys, request, tmp_path / "out", "--base-model", str(tiny / "model"))
    assert_result_error(rc, err, doc, request, "prompts[0].golden", "no golden")


# ---------------------------------------------------------------------------------------------------- selfcheck


def test_selfcheck_renders_twice_and_says_ok(job, tmp_path, capsys):
    from harness.options import RunOptions
    from harness.selfcheck import selfcheck_main

    job.sample["sample_steps"] = 2
    job.write()
    rc = selfcheck_main(job.dir, RunOptions(device="cpu", threads=2))
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "OK: demo::0::0 rendered twice bit-identically" in out
    for flag in ("cuda.matmul.allow_tf32", "cudnn.benchmark", "torch.compile: not used"):
        assert flag in out


def test_selfcheck_fails_loudly_with_the_difference(job, capsys, monkeypatch):
    from types import SimpleNamespace

    from harness.engine import Engine
    from harness.options import RunOptions
    from harness.selfcheck import selfcheck_main

    frames = np.zeros((9, 64, 72, 3), np.uint8)
    renders = [frames, frames.copy()]
    renders[1][4, 10, 10:13] = (0, 5, 2)  # one frame, three pixels, max difference 5

    def fake_render(self, target, settings=None):
        return SimpleNamespace(frames=renders.pop(0), trace=[["high", 999.0]], profile=SimpleNamespace(name="aitk-euler"))

    monkeypatch.setattr(Engine, "render", fake_render)
    rc = selfcheck_main(job.dir, RunOptions(device="cpu"))
    out = capsys.readouterr().out
    assert rc == 1
    assert "NONDETERMINISTIC: 1 frames / 3 pixels differ (max Δ 5)" in out


def test_selfcheck_without_a_reproducible_preview(job, capsys):
    from harness.errors import HarnessError
    from harness.options import RunOptions
    from harness.selfcheck import selfcheck_main

    _seed_all_minus_one(job)
    with pytest.raises(HarnessError, match="no reproducible preview"):
        selfcheck_main(job.dir, RunOptions(device="cpu"))


# ---------------------------------------------------------------------------------------------------- hostile inputs
# Each class of the 125 hostile inputs tried through the CLI (issue 19): one line naming file and field, exit 2,
# nothing replaced or half-written, and nothing loaded before the values are checked.


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


HOSTILE_LINE_CASES = {
    "seed_2_pow_70": (set_item("seed", 2 ** 70), "samples[0].seed", ["torch.manual_seed", "2**64-1"]),
    "seed_below_int64": (set_block("seed", -(2 ** 63) - 1), "sample.seed", ["torch.manual_seed"]),
    "seed_flag_2_pow_70": (set_item("prompt", f"a kite --seed {2 ** 70}"), "samples[0].prompt", ["torch.manual_seed"]),
    "multiplier_nan": (set_item("network_multiplier", float("nan")), "samples[0].network_multiplier", ["finite"]),
    "multiplier_flag_inf": (set_item("prompt", "a kite --m inf"), "samples[0].prompt", ["finite"]),
    "yaml_nested_deep": (raw_config("a: " + _nested(5000) + "\n"), "", ["nested more than"]),
    "yaml_nested_64_plus": (raw_config("a: " + _nested(80) + "\n"), "", ["nested more than 64"]),
}


@pytest.mark.parametrize("case_id", sorted(HOSTILE_LINE_CASES))
def test_hostile_config_values_are_one_line(job, tmp_path, capsys, case_id):
    mutate, field, words = HOSTILE_LINE_CASES[case_id]
    if mutate(job) != "raw":
        job.write()
    rc, err, doc = run_cli(capsys, job.dir, tmp_path / "out")
    assert_line(rc, err, job.config_file, field, *words)
    assert doc is None


def test_largest_seed_torch_accepts_is_not_refused(job, tmp_path, capsys):
    set_item("seed", 2 ** 64 - 1)(job)
    job.write()
    assert collect(job.dir)[0].preview.sample.seed == 2 ** 64 - 1


@pytest.mark.parametrize("fields, field, words", [
    ({"tolerances": {"psnr_min": float("nan")}}, "tolerances.psnr_min", ["finite"]),
    ({"tolerances": {"ssim_min": float("inf")}}, "tolerances.ssim_min", ["finite"]),
    ({"threads": 100000}, "threads", ["CPUs", "100000"]),
    ({"notes": yaml.safe_load(_nested(100))}, "", ["nested more than 64"]),
    ({"ctrl_images": {"/workspace/typo/hills.png": "hills.png"}}, "ctrl_images./workspace/typo/hills.png",
     ["no sample of the config names", "typo"]),
], ids=["tolerance_nan", "tolerance_inf", "threads_100000", "nested", "ctrl_images_key_typo"])
def test_hostile_case_values_are_one_line(job, tmp_path, capsys, fields, field, words):
    case = write_case(tmp_path, job, **fields)
    rc, err, doc = run_cli(capsys, case, tmp_path / "out")
    assert_line(rc, err, case, field, *words)
    assert doc is None


def test_ctrl_images_entry_whose_copy_is_missing_is_broken_not_unreproducible(job, tmp_path, capsys):
    hills = job.sample["samples"][0]["ctrl_img"]
    (job.dir / "ctrl").mkdir()
    case = write_case(tmp_path, job, ctrl_images={hills: "hils.png"})  # typo in the copy's name
    rc, err, doc = run_cli(capsys, case, tmp_path / "out")
    assert_line(rc, err, case, f"ctrl_images.{hills}", "hils.png", "missing")


@pytest.mark.parametrize("text, field", [
    ('{"model": "wan22_14b_i2v", "prompts": [{"prompt": "a", "guidance_scale": NaN}]}', None),
    ('{"model": "wan22_14b_i2v", "prompts": [{"prompt": "a", "seed": Infinity}]}', None),
    ('{"model": "wan22_14b_i2v", "prompts": [], "x": ' + _nested(5000) + "}", None),
    ('{"model": "wan22_14b_i2v", "loras": [], "prompts": [{"prompt": "a", "seed": 1180591620717411303424}]}',
     "prompts[0].seed"),
], ids=["nan", "infinity", "nested", "seed_2_pow_70"])
def test_hostile_request_json_is_one_line(tmp_path, tiny, capsys, text, field):
    request = tmp_path / "request.json"
    request.write_text(text)
    rc, err, doc = run_cli(capsys, request, tmp_path / "out", "--base-model", str(tiny / "model"))
    assert rc == 2 and len(err) == 1 and err[0].startswith(f"error: {request}"), err
    assert field is None or field in err[0], err


def test_huge_golden_is_refused_before_decoding(job, tmp_path, capsys):
    """A 16383x16383 WebP (a crafted header: a real one would be 800 MB decoded) is refused from its header."""
    import io

    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="WEBP", lossless=True)
    data = bytearray(buf.getvalue())
    at = data.find(b"VP8L") + 9  # after the chunk header and the 0x2f signature: 14 bits width-1, 14 bits height-1
    size = int.from_bytes(data[at:at + 4], "little") & ~((1 << 28) - 1) | 16382 | (16382 << 14)
    data[at:at + 4] = size.to_bytes(4, "little")
    job.golden(0, 0).write_bytes(bytes(data))
    rc, err, doc = run_cli(capsys, job.dir, tmp_path / "out", "--steps", "0", "--samples", "0")
    assert_result_error(rc, err, doc, job.golden(0, 0), "size", "too large to decode")  # Pillow's own guard first


def test_huge_frame_limit_applies_to_control_images(job, tmp_path, capsys, monkeypatch):
    from harness import limits

    monkeypatch.setattr(limits, "MAX_FRAME_PIXELS", 100)
    rc, err, doc = run_cli(capsys, job.dir, tmp_path / "out", "--steps", "0", "--samples", "0")
    assert_result_error(rc, err, doc, job.golden(0, 0), "size", "limit 100 pixels")  # the golden is checked first
    monkeypatch.setattr(limits, "MAX_FRAME_PIXELS", 72 * 64)  # the golden passes, the 96x80 control image does not
    rc, err, doc = run_cli(capsys, job.dir, tmp_path / "out2", "--steps", "0", "--samples", "0")
    assert_result_error(rc, err, doc, job.tiny / "ctrl" / "hills.png", "ctrl_img", "96x80 pixels", "not decoded")


def _lora_as(kind: str, path: Path) -> None:
    path.unlink()
    if kind == "folder":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    else:  # a symlink loop
        os.symlink(path, path)


@pytest.mark.parametrize("kind, words", [("folder", "a folder"), ("fifo", "FIFO"), ("loop", "symlink loop")])
def test_lora_path_that_is_no_file_is_an_error_not_deleted(job, tmp_path, capsys, kind, words):
    _lora_as(kind, job.dir / HIGH_250)
    rc, err, doc = run_cli(capsys, job.dir, tmp_path / "out", "--steps", "250", "--samples", "0")
    assert_result_error(rc, err, doc, job.dir / HIGH_250, "LoRA for step 250", words, "not a regular file")


def test_int8_lora_is_refused_with_the_reason(job, tmp_path, capsys):
    state = _lora_state(job)
    key = next(iter(state))
    state[key] = state[key].to(torch.int8)
    save_file(state, str(job.dir / HIGH_250))
    rc, err, doc = run_cli(capsys, job.dir, tmp_path / "out", "--steps", "250", "--samples", "0")
    assert_result_error(rc, err, doc, job.dir / HIGH_250, key, "int8", "save.dtype")


def test_folder_with_config_but_no_samples_says_so(job, tmp_path, capsys):
    shutil.rmtree(job.dir / "samples")
    rc, err, doc = run_cli(capsys, job.dir, tmp_path / "out")
    assert_line(rc, err, job.dir / "samples", "", "no samples/ folder")


def test_config_that_is_no_file_says_so(job, tmp_path, capsys):
    job.config_file.unlink()
    job.config_file.mkdir()
    rc, err, doc = run_cli(capsys, job.dir, tmp_path / "out")
    assert_line(rc, err, job.config_file, "", "is a folder, not a job config file")


def test_unreadable_config_says_so(job, tmp_path, capsys, monkeypatch):
    real = Path.read_text

    def denied(self, *args, **kwargs):
        if self == job.config_file:
            raise PermissionError(errno.EACCES, "Permission denied")  # root reads anything: simulate the EACCES
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", denied)
    rc, err, doc = run_cli(capsys, job.dir, tmp_path / "out")
    assert_line(rc, err, job.config_file, "", "cannot be read (Permission denied)")


# ---------------------------------------------------------------------------------------------------- data safety


@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_json_output_never_replaces_a_non_regular_file(job, tmp_path, capsys, kind):
    _seed_all_minus_one(job)
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    target = tmp_path / "results-link.json"
    os.symlink(precious, target) if kind == "symlink" else os.mkfifo(target)
    rc, err, doc = run_cli(capsys, job.dir, tmp_path / "out", "--json", str(target))
    assert_line(rc, err, target, "", "not a regular file", "refusing")
    assert precious.read_text() == "keep me" and (target.is_symlink() if kind == "symlink" else target.is_fifo())
    assert doc is None  # refused before anything ran


def test_planted_symlink_in_out_is_not_followed(job, tmp_path, capsys):
    from harness.fsutil import write_json_atomic

    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    os.symlink(precious, tmp_path / "results.json")
    with pytest.raises(HarnessError, match="is a symlink, not a regular file"):
        write_json_atomic(tmp_path / "results.json", {"a": 1})
    assert precious.read_text() == "keep me" and (tmp_path / "results.json").is_symlink()


def test_import_refuses_a_preview_symlinked_out_of_the_job(job, tmp_path, capsys):
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0")
    link = job.dir / "samples" / "1790000000009__000000000_7.webp"
    os.symlink(secret, link)
    rc = main(["import", str(job.dir), "--name", "demo", "--cases-dir", str(tmp_path / "cases"),
               "--golden-dir", str(tmp_path / "golden")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith(f"error: {link}") and "outside the output folder" in err[0]
    assert not list((tmp_path / "golden").rglob("*.webp")) and not (tmp_path / "cases" / "demo.yaml").exists()


def test_import_with_cases_dir_a_file_leaves_nothing_behind(job, tmp_path, capsys):
    blocker = tmp_path / "cases"
    blocker.write_text("")
    rc = main(["import", str(job.dir), "--name", "demo", "--cases-dir", str(blocker),
               "--golden-dir", str(tmp_path / "golden")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == [f"error: {blocker}: --cases-dir: exists and is not a folder; give a folder"]
    assert not (tmp_path / "golden").exists() or not any((tmp_path / "golden").iterdir())


def test_two_cases_of_one_name_are_refused_and_one_given_twice_runs_once(job, tmp_path, capsys):
    _seed_all_minus_one(job)
    case = write_case(tmp_path, job)
    capsys.readouterr()
    rc = main(["run", str(case), str(case), str(case.parent), "--out", str(tmp_path / "out"), "--no-report"])
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    assert rc == 3 and len(doc["results"]) == 6  # the same file three times: six previews, once each
    other = tmp_path / "other"
    shutil.copytree(job.dir, other / "demo", symlinks=True)
    twin = other / "demo.yaml"
    twin.write_text(yaml.safe_dump({"schema": "wan-parity/case@1", "name": "demo", "golden_dir": str(other / "demo")}))
    capsys.readouterr()
    rc = main(["run", str(case), str(twin), "--out", str(tmp_path / "out2"), "--no-report"])
    assert_line(rc, capsys.readouterr().err.splitlines(), twin, "name", "would overwrite each other")


def test_corrupt_result_under_resume_is_one_line_before_rendering(job, tmp_path, capsys, monkeypatch):
    import harness.runner as runner

    _seed_all_minus_one(job)
    out = tmp_path / "out"
    run_cli(capsys, job.dir, out)
    victim = sorted((out / "results").rglob("*.json"))[3]
    victim.write_text('{"key": "demo::250::0", "status": "pass", "encoded": [1, 2')
    monkeypatch.setattr(runner, "run_one", lambda *a: pytest.fail("rendered before the earlier results were read"))
    rc, err, doc = run_cli(capsys, job.dir, out, "--resume")
    assert_line(rc, err, None, "--resume", str(victim), "JSON does not parse", "without --resume")


def test_resume_reuses_only_results_made_with_the_same_settings(job, tmp_path, capsys):
    _seed_all_minus_one(job)
    out = tmp_path / "out"
    run_cli(capsys, job.dir, out)
    rc, err, doc = run_cli(capsys, job.dir, out, "--resume")
    assert all(r["resumed"] for r in doc["results"])  # same settings: reused
    rc, err, doc = run_cli(capsys, job.dir, out, "--resume", "--profile", "aitk-unipc")
    assert not any(r["resumed"] for r in doc["results"])  # another profile: made again, and said why
    assert all("re-rendered under --resume" in " ".join(r["notes"]) and "profile" in " ".join(r["notes"])
               for r in doc["results"])
    os.utime(job.dir / HIGH_250, ns=(1, 1))  # the step-250 LoRA file changed
    rc, err, doc = run_cli(capsys, job.dir, out, "--resume", "--profile", "aitk-unipc")
    assert {r["step"] for r in doc["results"] if not r["resumed"]} == {250}


# ---------------------------------------------------------------------------------------------------- exit codes that cannot lie


def test_plugin_session_that_compared_nothing_exits_5(job, pytester):
    _seed_all_minus_one(job)
    case = pytester.path / "all_unreproducible.yaml"
    case.write_text(yaml.safe_dump({"schema": "wan-parity/case@1", "name": "demo", "golden_dir": str(job.dir)}))
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--parity-device", "cpu", str(case))
    result.assert_outcomes(skipped=6)
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED
    result.stdout.fnmatch_lines(["*wan-parity: nothing was compared: all 6 parity items skipped*"])
    pytester.makepyfile(test_other="def test_ok():\n    pass\n")  # a session that also tested something else
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--parity-device", "cpu", str(case), "test_other.py")
    assert result.ret == pytest.ExitCode.OK


def _results_file(tmp_path: Path, statuses: list) -> Path:
    path = tmp_path / f"results_{len(list(tmp_path.glob('results_*')))}.json"
    path.write_text(json.dumps({"schema_version": 2, "environment": {}, "results": [
        {"key": f"c::{i}::0", "case": "c", "step": i, "index": 0, "status": s} for i, s in enumerate(statuses)]}))
    return path


@pytest.mark.parametrize("statuses, flags, code", [
    (["pass", "fail"], [], 1),  # failures in the documents fail the report ...
    (["pass", "fail"], ["--regressions-only"], 0),  # ... unless only regressions should
    (["pass", "error"], [], 1),
    (["unreproducible", "unreproducible"], [], 3),  # nothing was compared
    (["pass", "unreproducible"], [], 0),
])
def test_report_exit_codes(tmp_path, capsys, statuses, flags, code):
    assert main(["report", str(_results_file(tmp_path, statuses)), "--out", str(tmp_path / "r"), *flags]) == code


def test_report_rejects_an_unknown_status(tmp_path, capsys):
    results = _results_file(tmp_path, ["pass", "passed"])
    assert main(["report", str(results), "--out", str(tmp_path / "r")]) == 2
    assert capsys.readouterr().err.strip() == (f"error: {results}: results[c::1::0].status: 'passed' is not a result "
                                               "status (pass, fail, error, unreproducible)")


def test_diagnose_that_diagnosed_nothing_exits_3(job, tmp_path, capsys):
    _seed_all_minus_one(job)
    assert main(["diagnose", str(job.dir), "--out", str(tmp_path / "d"), "--device", "cpu"]) == 3


def test_empty_shard_is_not_a_failure_and_says_so(job, tmp_path, capsys):
    rc = main(["run", str(job.dir), "--steps", "0", "--samples", "0", "--shard", "2/2", "--out", str(tmp_path / "o")])
    assert rc == 0 and "shard 2/2 holds no previews" in capsys.readouterr().err
