"""The engine's LoRA cache: each checkpoint is read once per run of a case, and a rewritten file is read again."""

from __future__ import annotations

import os
from pathlib import Path

from harness.errors import NonFiniteError
from harness.engine import LoraCache


def _checkpoints(tmp_path: Path, steps: int) -> list[tuple[Path, Path]]:
    pairs = []
    for step in range(steps):
        pair = tuple(tmp_path / f"job_{step:09d}_{side}_noise.safetensors" for side in ("high", "low"))
        for path in pair:
            path.write_bytes(b"x")
        pairs.append(pair)
    return pairs


def test_each_checkpoint_is_read_once_over_a_job(tmp_path):
    """6 steps x 3 samples, ordered by LoRA as run_targets orders them: 12 files, 12 reads (not 28)."""
    reads: list[Path] = []
    cache = LoraCache(reader=lambda path: reads.append(path) or {"path": path})
    for high, low in _checkpoints(tmp_path, 6):
        for _sample in range(3):
            assert cache.get(high) == {"path": high} and cache.get(low) == {"path": low}
    assert len(reads) == 12 and len(set(reads)) == 12


def test_the_least_recently_used_entry_is_evicted(tmp_path):
    reads: list[str] = []
    cache = LoraCache(size=2, reader=lambda path: reads.append(path.name) or {})
    (a, b), (c, _) = _checkpoints(tmp_path, 2)
    for path in (a, b, a, c, a, b):
        cache.get(path)
    assert reads == [a.name, b.name, c.name, b.name]  # a stayed (used last), b was evicted by c


def test_a_rewritten_checkpoint_is_read_again(tmp_path):
    reads: list[str] = []
    cache = LoraCache(reader=lambda path: reads.append(path.name) or {})
    (a, _), = _checkpoints(tmp_path, 1)
    cache.get(a)
    stat = a.stat()
    os.utime(a, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    cache.get(a)
    assert reads == [a.name, a.name]


def test_non_finite_error_carries_its_expert():
    error = NonFiniteError("render", "step 3", "NaN/Inf first appeared", expert="low")
    assert error.expert == "low" and error.line() == "render: step 3: NaN/Inf first appeared"
