"""`wan-parity bench` on CPU: the tiny synthetic run end to end (JSON shape only, never timings), the A14B build on
the meta device (real parameter counts, no memory), and the FLOP bound of the issue."""

from __future__ import annotations

import json

import pytest
import torch

from harness import bench


def test_flop_bound_matches_the_issue():
    d, f, layers = bench.transformer_dims(bench.A14B_TRANSFORMER_CONFIG)
    assert (d, f, layers) == (5120, 13824, 40)
    assert bench.tokens(1024, 1024, 41) == 45056
    assert bench.tokens(832, 480, 41) == 17160
    assert bench.flops_per_forward(45056, d, f, layers) / 1e15 == pytest.approx(2.76, abs=0.005)
    assert bench.flops_per_forward(17160, d, f, layers) / 1e15 == pytest.approx(0.66, abs=0.005)


def test_parse_size_refuses_unpatchable_sizes():
    assert bench.parse_size("832x480x41") == (832, 480, 41)
    for bad in ("830x480x41", "832x480x40", "832x480"):
        with pytest.raises(ValueError):
            bench.parse_size(bad)


def test_a14b_builds_on_the_meta_device(tmp_path, capsys):
    out = tmp_path / "meta.json"
    assert bench.bench_main(["--synthetic", "a14b", "--device", "meta", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    models = doc["models"]
    assert models["transformer"]["params"] == models["transformer_2"]["params"] == 14_288_901_184
    assert models["transformer"]["per_block_params"] == 351_394_304
    assert 5.6e9 < models["text_encoder"]["params"] < 5.8e9  # UMT5-XXL encoder
    assert 1.2e8 < models["vae"]["params"] < 1.3e8  # Wan 2.1 VAE
    assert "14,288,901,184" in capsys.readouterr().out


def test_tiny_bench_end_to_end_json_shape(tmp_path):
    out, md = tmp_path / "bench.json", tmp_path / "bench.md"
    argv = ["--synthetic", "tiny", "--device", "cpu", "--sizes", "32x32x5", "--preview-steps", "4", "--previews", "2",
            "--modes", "exact,fast", "--compile-backend", "aot_eager", "--offload", "none,experts", "--quantize",
            "--json", str(out), "--markdown", str(md)]
    with torch.random.fork_rng(devices=[]):
        assert bench.bench_main(argv) == 0
    doc = json.loads(out.read_text())
    assert doc["schema"] == bench.SCHEMA and doc["complete"] is True
    assert {"machine", "peak", "models", "flop_bound", "rows", "n_previews", "offload_identical", "fast"} <= set(doc)
    assert doc["flop_bound"]["32x32x5"]["tokens"] == 2 * 2 * 2
    phases = {(r["phase"], r["mode"], r["offload"]) for r in doc["rows"]}
    for phase in ("instantiate", "text encode (2 prompts)", "vae encode (condition)", "step high (cond+uncond)",
                  "step low (cond+uncond)", "vae decode", "render (4 steps)", "preview (4 steps)"):
        assert (phase, "exact", "none") in phases, phase
    assert ("step high (cond+uncond)", "fast", "none") in phases
    assert ("render (2 steps)", "exact", "experts") in phases  # offload renders: one step per expert
    assert ("lora switch (unmerged)", "exact", "none") in phases
    assert ("lora switch (merged)", "exact", "none") in phases
    assert ("quantize (qfloat8)", "qfloat8", "none") in phases and ("render (4 steps)", "qfloat8", "none") in phases
    for r in doc["rows"]:
        assert {"phase", "mode", "exact", "offload", "size", "seconds", "status", "extrapolated", "note"} <= set(r)
        assert r["exact"] == (r["mode"] != "fast")  # quantized renders are the exact path on quantized weights
    steps = [r for r in doc["rows"] if r["phase"].startswith("step ") and r["mode"] == "exact"]
    assert all(r["ratio_to_bound"] > 0 and r["flop_bound_s"] > 0 for r in steps)
    # the same weights give the same bytes whatever the placement, and one process equals loading per preview
    assert doc["offload_identical"] == {"experts 32x32x5 2 steps": True}
    assert doc["n_previews"]["bit_identical"] is True and doc["n_previews"]["measured"] is True
    assert doc["fast_vs_exact"]["32x32x5"]["max_abs_levels"] >= 0
    assert "| phase |" in md.read_text()


def test_load_probe_reads_a_real_safetensors_folder_back(tmp_path):
    args = bench.build_parser().parse_args(["--synthetic", "tiny", "--device", "cpu", "--sizes", "32x32x5", "--load-probe-layers", "1"])
    runner = bench.Bench(args)
    runner.model_shapes()
    per_load = runner.load_probe(tmp_path)
    probe = runner.doc["load_probe"]
    assert probe is per_load and probe["layers"] == 1 and probe["bytes"] > 0 and set(probe["load_s"]) == {"cold", "warm"}
    total = runner.doc["models"]["total_gib"] * bench.GIB  # the whole pipeline at the probe's rate
    assert probe["pipeline_load_s"]["warm"] == pytest.approx(total * probe["load_s"]["warm"] / probe["bytes"], rel=0.05)
    assert probe["startup_s"] > 0
    assert not (tmp_path / "load-probe").exists()  # the probe cleans up after itself


def test_the_lora_step_times_the_lean_path_and_checks_its_bytes(tmp_path):
    out = tmp_path / "bench.json"
    argv = ["--synthetic", "tiny", "--device", "cpu", "--sizes", "32x32x5", "--preview-steps", "2", "--previews", "1",
            "--modes", "exact", "--offload", "none", "--lora-step", "--json", str(out)]
    with torch.random.fork_rng(devices=[]):
        assert bench.bench_main(argv) == 0
    rows = {r["phase"]: r for r in json.loads(out.read_text())["rows"]}
    for expert in ("high", "low"):
        lean = rows[f"step {expert}, unmerged LoRA (lean)"]
        assert lean["status"] == "ok" and "identical to the plain LoRA path" in lean["note"], lean
        assert rows[f"step {expert}, unmerged LoRA"]["seconds"] > 0


def _bench_exact_and_fused(tmp_path) -> dict:
    out = tmp_path / "bench.json"
    argv = ["--synthetic", "tiny", "--device", "cpu", "--sizes", "32x32x5", "--preview-steps", "2", "--previews", "1",
            "--modes", "exact,fused", "--offload", "none", "--json", str(out)]
    with torch.random.fork_rng(devices=[]):
        assert bench.bench_main(argv) == 0
    return json.loads(out.read_text())


def test_the_fused_mode_renders_again_and_compares_bytes_with_exact(tmp_path, monkeypatch):
    """The bench's plumbing for --modes fused (on CPU, the kernels' eager twins stand in for Triton)."""
    from harness.render import fused, kernels

    monkeypatch.setattr(kernels, "unavailable", lambda device: None)
    for name in ("modulate", "gated_residual", "rope"):
        monkeypatch.setattr(fused.FUSED, name, getattr(fused.EAGER, name))
    doc = _bench_exact_and_fused(tmp_path)
    assert doc["fused_identical"] == {"32x32x5 4 steps": True}
    assert any(r["mode"] == "fused" and r["phase"].startswith("render") for r in doc["rows"])


def test_the_fused_mode_is_skipped_with_the_reason_where_it_cannot_run(tmp_path):
    doc = _bench_exact_and_fused(tmp_path)
    skipped = [r for r in doc["rows"] if r["mode"] == "fused"]
    assert [r["status"] for r in skipped] == ["skipped"] and "CUDA only" in skipped[0]["note"]
    assert "fused_identical" not in doc
