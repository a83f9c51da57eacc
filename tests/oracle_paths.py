"""Where the shared ai-toolkit oracle lives (beside the checkout, as on CI) and how to skip without it."""

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
ORACLE = SHARED / "oracle"
ORACLE_CUDA = SHARED / "oracle-cuda"
TINY_MODEL = ORACLE / "tiny_model"
PATH_MAP = f"/workspace/oracle={ORACLE}"

needs_oracle = pytest.mark.skipif(not ORACLE.is_dir(), reason=f"ai-toolkit oracle not found at {ORACLE}")


def output_dir(case: str) -> Path:
    folder = ORACLE / "cases" / case / "output"
    return next(folder.iterdir()) if folder.is_dir() else folder / "missing"
