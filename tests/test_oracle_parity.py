"""Bit-exact parity with real ai-toolkit previews (shared/oracle, rendered by ai-toolkit on CPU, 2 threads).

Where this stack matches the oracle's (tests/stacks/cpu-oracle.yaml; the session pins the ISAs to it), each preview
must render to exactly the frames ai-toolkit passed to its WebP encoder (samples_raw/*.npy), and our re-encoding must
give the golden WebP's bytes. No tolerance: PSNR = inf or the test fails. Where the stack cannot match (another CPU
vendor or torch), the exactness test skips with the stack difference and the threshold test judges the render.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from harness.media import encode_like_aitk, read_frames, reencode_roundtrip
from harness.paths import PathMap
from harness.engine import Engine
from harness.options import RunOptions
from harness.targets import from_output_dir

from .oracle_paths import ORACLE, PATH_MAP, TINY_MODEL, needs_oracle, oracle_stack, output_dir, skip_unless_exact_expected

pytestmark = [needs_oracle, pytest.mark.oracle]
CASES = ("case_a", "case_d")


def _targets():
    if not ORACLE.is_dir():
        return []
    return [t for case in CASES for t in from_output_dir(output_dir(case), PathMap([PATH_MAP]))]


TARGETS = _targets()


@pytest.fixture(scope="module")
def engine():
    return Engine(RunOptions(base_model=str(TINY_MODEL), device="cpu", threads=2))


_RENDERS: dict[str, object] = {}


def _render(engine, target):
    """Each preview is rendered once per session; several tests inspect the same render."""
    if target.key not in _RENDERS:
        _RENDERS[target.key] = engine.render(target)
    return _RENDERS[target.key]


def _manifest_entry(target):
    case_dir = Path(target.preview.golden).parents[3]
    manifest = json.loads((case_dir / "manifest.json").read_text())
    return next(s for s in manifest["samples"] if Path(s["file"]).name == Path(target.preview.golden).name)


@pytest.mark.parametrize("target", TARGETS, ids=[t.key for t in TARGETS])
def test_preview_is_bit_exact(engine, target):
    skip_unless_exact_expected(engine, "cpu", "cpu")
    render = _render(engine, target)
    raw = np.load(target.preview.golden_raw)
    assert render.frames.shape == raw.shape
    differing = int((render.frames != raw).any(axis=-1).sum())
    assert differing == 0, f"{differing} pixels differ from ai-toolkit's frames"
    encoded = encode_like_aitk(render.frames, target.preview.sample.fps)
    assert encoded == Path(target.preview.golden).read_bytes(), "re-encoded WebP differs from the golden file"
    decoded_golden = read_frames(target.preview.golden).frames
    assert np.array_equal(decoded_golden, reencode_roundtrip(render.frames, fps=target.preview.sample.fps))


@pytest.mark.parametrize("target", TARGETS, ids=[t.key for t in TARGETS])
def test_preview_passes_its_verdict(engine, target):
    """On every stack: exact where the stacks match, within the encoded-view thresholds where they do not."""
    from harness.metrics import ENCODED_VIEW, compare_clips, verdict
    from harness.stack import compare_stacks

    match = compare_stacks(oracle_stack("cpu"), engine.stack_here("cpu"))
    render = _render(engine, target)
    golden = read_frames(target.preview.golden).frames
    encoded = compare_clips(golden, reencode_roundtrip(render.frames, fps=target.preview.sample.fps))
    thresholds = ENCODED_VIEW.resolved(match.exact_expected)
    assert verdict(encoded, thresholds) == "pass", (
        f"encoded PSNR min {encoded.psnr_min:.2f} dB, SSIM min {encoded.ssim_min:.4f}; {match.reason() or 'stacks match'}")


@pytest.mark.parametrize("target", TARGETS, ids=[t.key for t in TARGETS])
def test_expert_trace_matches_manifest(engine, target):
    """Which expert ran at which timestep, forward by forward, as hooks recorded inside ai-toolkit."""
    entry = _manifest_entry(target)
    render = _render(engine, target)
    names = {"high": "transformer_1", "low": "transformer_2"}
    assert [[names[e], t] for e, t in render.trace] == [list(x) for x in entry["denoise_trace"]]


@pytest.mark.parametrize("target", TARGETS, ids=[t.key for t in TARGETS])
def test_merge_path_matches_manifest(target):
    entry = _manifest_entry(target)
    if target.preview.lora is None:
        assert entry["lora_files"] == []
    else:
        assert target.preview.merged == entry["network_state_during_sampling"]["merged_in"]
        assert sorted(Path(p).name for p in (target.preview.lora.high, target.preview.lora.low)) == sorted(entry["lora_files"])


UNMERGED = [t for t in TARGETS if t.preview.lora is not None and not t.preview.merged][:2]


@pytest.fixture(scope="module")
def literal_engine():
    return Engine(RunOptions(base_model=str(TINY_MODEL), device="cpu", threads=2, lean_lora=False))


@pytest.mark.parametrize("target", UNMERGED, ids=[t.key for t in UNMERGED])
def test_the_lean_lora_default_renders_the_bytes_of_the_literal_path(engine, literal_engine, target):
    """The lean unmerged path (the default) on ai-toolkit's unmerged previews: the frames of ai-toolkit's literal
    arithmetic (``--no-lean-lora``) on every stack, and so ai-toolkit's own wherever test_preview_is_bit_exact holds."""
    assert engine.options.lean_lora and not literal_engine.options.lean_lora
    assert np.array_equal(literal_engine.render(target).frames, _render(engine, target).frames)
