"""PathMap and the resolvers: training-machine paths and hub ids to local files, never downloading."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.errors import HarnessError
from harness.paths import PathMap, resolve_ctrl_img, resolve_model, resolve_vae

SUBS = ("transformer", "transformer_2", "vae", "text_encoder", "tokenizer")


def model_dir(root: Path, subs=SUBS) -> Path:
    for s in subs:
        (root / s).mkdir(parents=True, exist_ok=True)
    return root


def fake_hub(home: Path, repo_id: str, commit="abc123", with_ref=True) -> Path:
    repo = home / "hub" / f"models--{repo_id.replace('/', '--')}"
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    if with_ref:
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(commit)
    return snap


@pytest.fixture
def hf_home(tmp_path, monkeypatch):
    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    return home


def test_pathmap_longest_prefix_and_component_boundary():
    m = PathMap(["/workspace=/a", "/workspace/oracle=/b/", "/x=/y"])
    assert m.map("/workspace/oracle/c.png") == "/b/c.png"
    assert m.map("/workspace/other/c.png") == "/a/other/c.png"
    assert m.map("/workspace/oracle2/c.png") == "/a/oracle2/c.png"
    assert m.map("/workspace/oracle") == "/b/"
    assert m.map("/elsewhere/c.png") == "/elsewhere/c.png"
    assert not PathMap()


@pytest.mark.parametrize("bad", ["no-equals", "=/new", "/old="])
def test_pathmap_bad_syntax(bad):
    with pytest.raises(HarnessError) as e:
        PathMap([bad])
    assert e.value.field == "--path-map"


def test_ctrl_img_mapped(tmp_path):
    (tmp_path / "c.png").write_bytes(b"x")
    path, note = resolve_ctrl_img("/workspace/c.png", PathMap([f"/workspace={tmp_path}"]), [])
    assert path == tmp_path / "c.png" and note is None


def test_ctrl_img_found_by_name_with_note(tmp_path):
    (tmp_path / "out" / "sub").mkdir(parents=True)
    (tmp_path / "out" / "sub" / "c.png").write_bytes(b"x")
    path, note = resolve_ctrl_img("/gone/c.png", PathMap(), [tmp_path / "out"])
    assert path.name == "c.png" and "same name" in note


def test_ctrl_img_missing_names_field(tmp_path):
    with pytest.raises(HarnessError) as e:
        resolve_ctrl_img("/gone/c.png", PathMap(), [tmp_path], file="job.yaml", field="sample.samples[0].ctrl_img")
    assert e.value.field == "sample.samples[0].ctrl_img" and "--path-map" in e.value.message


def test_ctrl_img_ambiguous_name(tmp_path):
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "c.png").write_bytes(b"x")
    with pytest.raises(HarnessError):
        resolve_ctrl_img("/gone/c.png", PathMap(), [tmp_path])


def test_model_override_wins(tmp_path):
    base = model_dir(tmp_path / "base")
    mapped = model_dir(tmp_path / "mapped")
    path, note = resolve_model("/workspace/m", PathMap([f"/workspace/m={mapped}"]), base)
    assert path == base and "--base-model" in note


def test_model_mapped_and_missing_subfolder(tmp_path):
    model_dir(tmp_path / "m", subs=("transformer", "vae", "text_encoder", "tokenizer"))
    with pytest.raises(HarnessError) as e:
        resolve_model("/workspace/m", PathMap([f"/workspace={tmp_path}"]))
    assert "transformer_2/" in e.value.message
    model_dir(tmp_path / "m")
    assert resolve_model("/workspace/m", PathMap([f"/workspace={tmp_path}"]))[0] == tmp_path / "m"


def test_model_missing_path_says_what_to_give(tmp_path):
    with pytest.raises(HarnessError) as e:
        resolve_model("/workspace/m", PathMap(), file="job.yaml")
    assert "--base-model" in e.value.message and e.value.field.endswith("model.name_or_path")


def test_model_from_fake_hf_cache(hf_home):
    snap = model_dir(fake_hub(hf_home, "ai-toolkit/Wan2.2-I2V-A14B-Diffusers-bf16"))
    path, note = resolve_model("ai-toolkit/Wan2.2-I2V-A14B-Diffusers-bf16", PathMap())
    assert path == snap and "cache" in note


def test_model_hub_id_not_cached(hf_home):
    with pytest.raises(HarnessError) as e:
        resolve_model("org/absent", PathMap())
    assert "not in the local Hugging Face cache" in e.value.message


def test_vae_from_cache_else_base(hf_home, tmp_path):
    base = model_dir(tmp_path / "base")
    path, note = resolve_vae(base)
    assert path == base / "vae" and "not in the local Hugging Face cache" in note
    snap = fake_hub(hf_home, "ai-toolkit/wan2.1-vae", with_ref=False)
    (snap / "config.json").write_text("{}")
    assert resolve_vae(base) == (snap, None)


def test_vae_nowhere(hf_home, tmp_path):
    with pytest.raises(HarnessError):
        resolve_vae(tmp_path / "nothing")


@pytest.mark.skipif(not Path("/work/shared/oracle").is_dir(), reason="oracle folder /work/shared/oracle is absent")
def test_oracle_path_map():
    m = PathMap(["/workspace/oracle=/work/shared/oracle"])
    path, note = resolve_ctrl_img("/workspace/oracle/assets/ctrl/ctrl_0.png", m, [])
    assert path.is_file() and note is None
    assert resolve_model("/workspace/oracle/tiny_model", m)[0] == Path("/work/shared/oracle/tiny_model")
