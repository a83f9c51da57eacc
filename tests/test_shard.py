"""--shard I/N: deterministic, whole (base model, LoRA) groups, every preview in exactly one shard."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.errors import HarnessError
from harness.spec import LoraPair, PreviewJob, PreviewTarget, SampleSpec
from harness.options import by_name
from harness.targets import select, shard, shard_group
from tests.oracle_paths import PATH_MAP, needs_oracle, output_dir


def _target(case: str, step: int, index: int, lora: str | None, model: str = "base") -> PreviewTarget:
    sample = SampleSpec(index=index, prompt="p", negative_prompt="", seed=index, width=16, height=16, num_frames=1,
                        guidance_scale=1.0, sample_steps=1, network_multiplier=1.0, fps=16, ctrl_img=None)
    pair = None if lora is None else LoraPair(Path(f"/box/{lora}_high.safetensors"), Path(f"/box/{lora}_low.safetensors"))
    job = PreviewJob(case=case, golden=Path(f"{case}_{step}_{index}.webp"), step=step, index=index, sample=sample,
                     lora=pair, merged=False)
    return PreviewTarget(preview=job, model_name=model, config_file=Path("config.yaml"))


def _suite() -> list[PreviewTarget]:
    targets = []
    for case in ("a", "b", "c"):
        for step in (0, 250, 500, 750):
            for index in range(3):
                targets.append(_target(case, step, index, None if step == 0 else f"{case}{step}"))
    return targets


@pytest.mark.parametrize("count", [1, 2, 3, 5, 40])
def test_the_shards_partition_the_suite(count):
    suite = _suite()
    shards = [shard(suite, i, count) for i in range(1, count + 1)]
    keys = [t.key for part in shards for t in part]
    assert sorted(keys) == sorted(t.key for t in suite) and len(keys) == len(set(keys))


def test_a_group_never_splits_and_the_split_is_balanced():
    suite = _suite()
    shards = [shard(suite, i, 4) for i in range(1, 5)]
    for part in shards:
        for other in shards:
            if part is not other:
                assert not {shard_group(t) for t in part} & {shard_group(t) for t in other}
    sizes = sorted(len(part) for part in shards)
    assert sizes[-1] - sizes[0] <= 3  # groups are 3 previews each here


def test_the_split_does_not_depend_on_order_or_machine_paths():
    suite = _suite()
    moved = [_target(t.preview.case, t.preview.step, t.preview.index,
                     None if t.preview.lora is None else t.preview.lora.high.name.split("_")[0]) for t in suite]
    assert [t.key for t in shard(suite, 2, 3)] == [t.key for t in shard(moved, 2, 3)]
    assert sorted(t.key for t in shard(list(reversed(suite)), 2, 3)) == sorted(t.key for t in shard(suite, 2, 3))


@pytest.mark.parametrize("text", ["0/4", "5/4", "1/0", "x", "1/2/3", "-1/3"])
def test_bad_shards_are_one_clear_line(text):
    with pytest.raises(HarnessError) as info:
        by_name("shard").read(text, None, "--shard")
    assert info.value.line().startswith("--shard") and text in info.value.line()


def test_shard_reads_and_applies_after_the_filters():
    assert by_name("shard").read("2/4", None, "--shard") == (2, 4)
    suite = _suite()
    kept = select(suite, {250, 500}, None)
    assert select(suite, {250, 500}, None, (1, 2)) == shard(kept, 1, 2)


@needs_oracle
def test_a_sharded_run_merges_to_the_same_results_as_one_run(tmp_path):
    """Two `run --shard I/2` processes' outputs merged by `report` hold what one run holds (the oracle, CPU)."""
    import json

    from harness.cli import main

    def run(out, *extra):
        assert main(["run", str(output_dir("case_a")), "--path-map", PATH_MAP, "--device", "cpu", "--samples", "0",
                     "--out", str(out), "--no-report", *extra]) == 0

    run(tmp_path / "whole")
    run(tmp_path / "s1", "--shard", "1/2")
    run(tmp_path / "s2", "--shard", "2/2")
    assert main(["report", str(tmp_path / "s1"), str(tmp_path / "s2"), "--out", str(tmp_path / "merged")]) == 0

    def comparable(folder):
        doc = json.loads(next(f for f in (folder / "results.merged.json", folder / "results.json") if f.is_file()).read_text())
        drop = ("seconds", "render_path", "frames_path")
        return [{k: v for k, v in r.items() if k not in drop} for r in doc["results"]], doc["summary"]

    whole, merged = comparable(tmp_path / "whole"), comparable(tmp_path / "merged")
    assert len(whole[0]) >= 2 and whole == merged
    parts = [json.loads((tmp_path / s / "results.json").read_text())["results"] for s in ("s1", "s2")]
    assert parts[0] and parts[1]
