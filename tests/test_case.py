"""Case files: schema validation, save/load, import of an output folder, discovery through a case."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from harness.aitk.outputs import discover
from harness.case import SCHEMA, Case, find_case_files, is_aitk_output_dir, is_case_file, load_case, save_case
from harness.case_import import import_output
from harness.errors import HarnessError

ORACLE = Path("/work/shared/oracle")
CASE_A = ORACLE / "cases/case_a/output/oracle_case_a"
ORACLE_MAP = ["/workspace/oracle=/work/shared/oracle"]
needs_oracle = pytest.mark.skipif(not CASE_A.is_dir(), reason="oracle folder /work/shared/oracle is absent")


def make_output(root: Path, ctrl_paths, previews=("1__000000000_0.webp", "2__000000002_0.webp"),
                ckpts=("myjob_000000002_high_noise.safetensors", "myjob_000000002_low_noise.safetensors")) -> Path:
    """A small ai-toolkit output folder: config, previews, one checkpoint, lossless frames for one preview."""
    out = root / "myjob"
    (out / "samples").mkdir(parents=True)
    samples = [{"prompt": f"p{i}", "ctrl_img": c} for i, c in enumerate(ctrl_paths)]
    proc = {"type": "sd_trainer", "train": {"steps": 4, "dtype": "bf16"}, "save": {"save_every": 2},
            "model": {"name_or_path": "/m", "arch": "wan22_14b_i2v"},
            "sample": {"neg": "", "seed": 7, "walk_seed": True, "samples": samples}}
    (out / "config.yaml").write_text(yaml.safe_dump({"job": "extension", "config": {"name": "myjob", "process": [proc]}}))
    for name in previews:
        (out / "samples" / name).write_bytes(b"webp")
    (out / "samples" / ".thumbs").mkdir()
    (out / "samples" / "notes.txt").write_text("not a preview")
    (out / "samples_raw").mkdir()
    (out / "samples_raw" / (Path(previews[0]).stem + ".npy")).write_bytes(b"npy")
    for name in ckpts:
        (out / name).write_bytes(b"lora")
    return out


def write_case(tmp_path: Path, **fields) -> Path:
    data = {"schema": SCHEMA, "name": "c1", "golden_dir": "g"}
    data.update(fields)
    path = tmp_path / "c1.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in data.items() if v is not ...}))
    return path


def error_of(path: Path) -> HarnessError:
    with pytest.raises(HarnessError) as e:
        load_case(path)
    return e.value


# ---------------------------------------------------------------- schema


def full_case(tmp_path: Path) -> Case:
    return Case(name="full", golden_dir="../golden/full", lora_dir="/data/out/full",
                ctrl_images={"/w/ctrl.png": "ctrl.png"}, base_model="/models/wan", vae="vae_dir",
                path_map={"/workspace": "/data"}, profile="aitk-unipc", threads=2,
                tolerances={"psnr_min": 40.0, "ssim_min": 0.99}, steps=[0, 2], samples=[1], notes="why this case")


def test_round_trip(tmp_path):
    case = full_case(tmp_path)
    path = save_case(case, tmp_path / "cases" / "full.yaml")
    loaded = load_case(path)
    assert dataclasses.asdict(loaded) == dataclasses.asdict(case)
    assert path.read_text().startswith("# wan-parity case file")
    assert [p.name for p in path.parent.iterdir()] == ["full.yaml"]  # the temp file was renamed away


def test_minimal_case_defaults(tmp_path):
    case = load_case(write_case(tmp_path))
    assert (case.profile, case.lora_dir, case.steps, case.tolerances, case.path_map) == ("auto", None, None, {}, {})
    assert case.golden_path() == tmp_path / "g" and case.lora_path() == tmp_path / "g"


def test_save_elsewhere_rebases_relative_paths(tmp_path):
    src = write_case(tmp_path, lora_dir="loras")
    case = load_case(src)
    moved = load_case(save_case(case, tmp_path / "deeper" / "x" / "c1.yaml"))
    assert moved.golden_dir == "../../g" and moved.golden_path() == tmp_path / "g"
    assert moved.lora_path() == tmp_path / "loras"


@pytest.mark.parametrize("fields, field, words", [
    ({"colour": "red"}, "colour", "unknown key"),
    ({"schema": "wan-parity/case@2"}, "schema", "wan-parity/case@1"),
    ({"schema": ...}, "schema", "missing"),
    ({"golden_dir": ...}, "golden_dir", "missing"),
    ({"golden_dir": 3}, "golden_dir", "non-empty string"),
    ({"name": "a/b"}, "name", "not a valid case name"),
    ({"name": 5}, "name", "not a valid case name"),
    ({"lora_dir": ["x"]}, "lora_dir", "non-empty string"),
    ({"base_model": ""}, "base_model", "non-empty string"),
    ({"profile": "euler"}, "profile", "aitk-euler"),
    ({"threads": 0}, "threads", "from 1 to"),
    ({"threads": 100000}, "threads", "CPUs"),
    ({"threads": True}, "threads", "whole number"),
    ({"threads": 1.5}, "threads", "whole number"),
    ({"tolerances": [40]}, "tolerances", "mapping"),
    ({"tolerances": {"psnr": 40}}, "tolerances.psnr", "unknown tolerance"),
    ({"tolerances": {"psnr_min": "40"}}, "tolerances.psnr_min", "number"),
    ({"tolerances": {"ssim_min": 1.5}}, "tolerances.ssim_min", "[-1, 1]"),
    ({"steps": 2}, "steps", "list"),
    ({"steps": []}, "steps", "non-empty"),
    ({"steps": [0, -2]}, "steps[1]", ">= 0"),
    ({"samples": [True]}, "samples[0]", "whole number"),
    ({"path_map": ["/a=/b"]}, "path_map", "mapping"),
    ({"path_map": {"/a": 3}}, "path_map./a", "non-empty string"),
    ({"ctrl_images": {"/a.png": None}}, "ctrl_images./a.png", "non-empty string"),
    ({"notes": ["x"]}, "notes", "string"),
])
def test_validation_errors_name_file_and_field(tmp_path, fields, field, words):
    err = error_of(write_case(tmp_path, **fields))
    assert err.file == str(tmp_path / "c1.yaml") and err.field == field and words in err.message


def test_unreadable_files(tmp_path):
    p = tmp_path / "c1.yaml"
    p.write_text("schema: [unclosed\n")
    assert error_of(p).field.startswith("line ")
    p.write_text("- a list\n")
    assert "top level" in error_of(p).message
    assert "not found" in error_of(tmp_path / "none.yaml").message


# ---------------------------------------------------------------- import


@needs_oracle
def test_import_oracle_case_a(tmp_path):
    case_file = import_output(CASE_A, "case_a", cases_dir=tmp_path / "cases", golden_dir=tmp_path / "golden",
                              path_map=ORACLE_MAP)
    golden = tmp_path / "golden" / "case_a"
    assert case_file == tmp_path / "cases" / "case_a.yaml"
    assert sorted(p.name for p in (golden / "samples").iterdir()) == sorted(p.name for p in (CASE_A / "samples").glob("*.webp"))
    assert len(list((golden / "samples_raw").glob("*.npy"))) == 9 and (golden / "config.yaml").is_file()
    assert not list(golden.rglob("*.safetensors"))  # LoRAs are referenced, not copied
    for i in range(3):
        assert (golden / "ctrl" / f"ctrl_{i}.png").read_bytes() == (ORACLE / f"assets/ctrl/ctrl_{i}.png").read_bytes()
    case = load_case(case_file)
    assert case.lora_dir == str(CASE_A) and case.golden_dir == "../golden/case_a"
    assert case.path_map == {"/workspace/oracle": "/work/shared/oracle"}

    mine = case.preview_jobs()
    theirs = discover(CASE_A)
    key = lambda j: (j.step, j.index, j.sample.seed, j.sample.prompt, j.lora, j.merged, j.golden.name,  # noqa: E731
                     j.golden_raw.name, j.unreproducible, j.label_note, j.sample.width, j.sample.num_frames)
    assert [key(j) for j in mine] == [key(j) for j in theirs]
    assert all(j.golden.parent == golden / "samples" for j in mine)
    assert all(Path(j.sample.ctrl_img).parent == golden / "ctrl" for j in mine)
    assert mine[0].extra["ctrl_img_config"] == "/workspace/oracle/assets/ctrl/ctrl_0.png"
    assert mine[0].extra["profile"] == "auto"


def test_import_copies_and_references(tmp_path):
    ctrl = tmp_path / "assets" / "c0.png"
    ctrl.parent.mkdir()
    ctrl.write_bytes(b"png0")
    out = make_output(tmp_path / "train", [str(ctrl)])
    case_file = import_output(out, "mine", cases_dir=tmp_path / "cases", golden_dir=tmp_path / "golden")
    golden = tmp_path / "golden" / "mine"
    assert sorted(p.name for p in (golden / "samples").iterdir()) == ["1__000000000_0.webp", "2__000000002_0.webp"]
    assert [p.name for p in (golden / "samples_raw").iterdir()] == ["1__000000000_0.npy"]
    jobs = load_case(case_file).preview_jobs()
    assert jobs[1].lora.high == out / "myjob_000000002_high_noise.safetensors"
    assert jobs[0].golden_raw == golden / "samples_raw/1__000000000_0.npy" and jobs[1].golden_raw is None
    assert jobs[0].sample.ctrl_img == str(golden / "ctrl/c0.png") and jobs[0].sample.seed == 7
    assert not [p for p in (tmp_path / "golden").iterdir() if p.name.startswith(".")]  # staging folder gone


def test_missing_control_image_is_a_note_not_a_crash(tmp_path):
    good = tmp_path / "assets" / "c0.png"
    good.parent.mkdir()
    good.write_bytes(b"png0")
    out = make_output(tmp_path / "train", [str(good), "/gone/c1.png"],
                      previews=("1__000000000_0.webp", "2__000000000_1.webp"))
    case = load_case(import_output(out, "m", cases_dir=tmp_path / "cases", golden_dir=tmp_path / "golden"))
    assert "'/gone/c1.png' (samples 1) was not found at import" in case.notes
    jobs = case.preview_jobs()
    assert jobs[0].unreproducible is None
    assert "/gone/c1.png" in jobs[1].unreproducible and jobs[1].unreproducible.startswith("this preview cannot be")


def test_control_images_with_the_same_name_get_unique_copies(tmp_path):
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "ctrl.png").write_bytes(d.encode())
    out = make_output(tmp_path / "train", [str(tmp_path / "a/ctrl.png"), str(tmp_path / "b/ctrl.png")],
                      previews=("1__000000000_0.webp", "2__000000000_1.webp"))
    case = load_case(import_output(out, "m", cases_dir=tmp_path / "cases", golden_dir=tmp_path / "golden"))
    assert sorted(case.ctrl_images.values()) == ["ctrl.png", "ctrl_1.png"]
    jobs = case.preview_jobs()
    assert [Path(j.sample.ctrl_img).read_bytes() for j in jobs] == [b"a", b"b"]


def test_import_uses_path_map_for_control_images(tmp_path):
    (tmp_path / "here").mkdir()
    (tmp_path / "here" / "c.png").write_bytes(b"png")
    out = make_output(tmp_path / "train", ["/workspace/x/c.png"])
    case = load_case(import_output(out, "m", cases_dir=tmp_path / "cases", golden_dir=tmp_path / "golden",
                                   path_map={"/workspace/x": str(tmp_path / "here")}))
    assert case.ctrl_images == {"/workspace/x/c.png": "c.png"}


def test_overwrite_refused_unless_forced(tmp_path):
    out = make_output(tmp_path / "train", ["/gone.png"])
    kw = dict(cases_dir=tmp_path / "cases", golden_dir=tmp_path / "golden")
    import_output(out, "m", **kw)
    with pytest.raises(HarnessError) as e:
        import_output(out, "m", **kw)
    assert "already exists" in str(e.value) and "force" in str(e.value)
    (tmp_path / "golden" / "m" / "samples" / "stale.webp").write_bytes(b"x")
    import_output(out, "m", force=True, **kw)
    assert not (tmp_path / "golden" / "m" / "samples" / "stale.webp").exists()
    (tmp_path / "golden" / "other").mkdir()
    (tmp_path / "golden" / "other" / "precious.txt").write_text("keep")
    with pytest.raises(HarnessError):
        import_output(out, "other", force=True, **kw)
    assert (tmp_path / "golden" / "other" / "precious.txt").exists()


@pytest.mark.parametrize("name", ["a/b", "..", "../x", "a..b", ".hidden", "", "a\\b", "sp ace"])
def test_import_refuses_bad_names(tmp_path, name):
    out = make_output(tmp_path / "train", ["/gone.png"])
    with pytest.raises(HarnessError) as e:
        import_output(out, name, cases_dir=tmp_path / "cases", golden_dir=tmp_path / "golden")
    assert e.value.field == "name"
    assert not (tmp_path / "cases").exists()


def test_import_refuses_non_output_folder(tmp_path):
    with pytest.raises(HarnessError) as e:
        import_output(tmp_path, "m", cases_dir=tmp_path / "cases", golden_dir=tmp_path / "golden")
    assert "not an ai-toolkit output folder" in str(e.value)


# ---------------------------------------------------------------- using a case


def test_lora_dir_goes_through_path_maps(tmp_path):
    out = make_output(tmp_path / "train", ["/gone.png"])
    case = load_case(import_output(out, "m", cases_dir=tmp_path / "cases", golden_dir=tmp_path / "golden"))
    case.lora_dir = "/old/box/myjob"
    with pytest.raises(HarnessError) as e:
        case.preview_jobs()
    assert e.value.field == "lora_dir" and "path_map" in e.value.message
    jobs = case.preview_jobs([f"/old/box={out.parent}"])  # the CLI's --path-map
    assert jobs[1].lora.low == out / "myjob_000000002_low_noise.safetensors"
    case.path_map = {"/old/box": "/nowhere"}  # the command line wins over the case's stored entry
    assert case.preview_jobs([f"/old/box={out.parent}"])[1].lora.low == jobs[1].lora.low
    with pytest.raises(HarnessError):
        case.preview_jobs()


def test_filters(tmp_path):
    out = make_output(tmp_path / "train", ["/gone.png", "/gone.png"],
                      previews=("1__000000000_0.webp", "2__000000000_1.webp", "3__000000002_0.webp", "4__000000002_1.webp"))
    case = load_case(import_output(out, "m", cases_dir=tmp_path / "cases", golden_dir=tmp_path / "golden"))
    case.steps, case.samples = [2], [1]
    assert [(j.step, j.index) for j in case.preview_jobs()] == [(2, 1)]
    case.steps = None
    assert [(j.step, j.index) for j in case.preview_jobs()] == [(0, 1), (2, 1)]


def test_missing_golden_folder(tmp_path):
    with pytest.raises(HarnessError) as e:
        load_case(write_case(tmp_path)).preview_jobs()
    assert e.value.field == "golden_dir"


def test_base_model_reference(tmp_path):
    (tmp_path / "models" / "wan").mkdir(parents=True)
    case = load_case(write_case(tmp_path, base_model="models/wan", vae="ai-toolkit/wan2.1-vae"))
    assert case.base_model_path() == str(tmp_path / "models/wan")
    assert case.vae_path() == "ai-toolkit/wan2.1-vae"  # a hub id stays as written


# ---------------------------------------------------------------- finding


def test_find_case_files(tmp_path):
    a = write_case(tmp_path)
    (tmp_path / "other.yaml").write_text("just: yaml\n")
    (tmp_path / "readme.md").write_text("x")
    assert find_case_files(tmp_path) == [a]
    assert find_case_files(a) == [a]
    assert is_case_file(a) and not is_case_file(tmp_path / "other.yaml")
    with pytest.raises(HarnessError):
        find_case_files(tmp_path / "missing")
    with pytest.raises(HarnessError):
        find_case_files(tmp_path / "readme.md")
    (tmp_path / "empty").mkdir()
    with pytest.raises(HarnessError) as e:
        find_case_files(tmp_path / "empty")
    assert "no case files" in e.value.message


def test_is_aitk_output_dir(tmp_path):
    out = make_output(tmp_path, ["/c.png"])
    assert is_aitk_output_dir(out) and not is_aitk_output_dir(tmp_path)
    assert not is_aitk_output_dir(out / "config.yaml")


def test_load_jobs_dispatches_case_files_and_output_folders(tmp_path):
    from harness.targets import collect

    out = make_output(tmp_path / "train", ["/gone.png"])
    case_file = import_output(out, "m", cases_dir=tmp_path / "cases", golden_dir=tmp_path / "golden")
    via_case = [t.preview for t in collect(case_file)]
    via_dir = [t.preview for t in collect(out)]
    assert [(j.step, j.index, j.lora) for j in via_case] == [(j.step, j.index, j.lora) for j in via_dir]
    assert via_case[0].golden.parent == tmp_path / "golden/m/samples" and via_dir[0].golden.parent == out / "samples"
