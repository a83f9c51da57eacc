"""--shard I/N: deterministic, whole (base model, LoRA) groups, every preview in exactly one shard."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.errors import HarnessError
from harness.spec import LoraPair, PreviewJob, PreviewTarget, SampleSpec
from harness.targets import parse_shard, shard, shard_group


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
        parse_shard(text, "--shard")
    assert info.value.line().startswith("--shard") and text in info.value.line()


def test_parse_shard():
    assert parse_shard("2/4") == (2, 4) and parse_shard(None) is None
