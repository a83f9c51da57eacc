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

STACKS = Path(__file__).resolve().parent / "stacks"


def oracle_stack(name: str) -> dict:
    """The stack that rendered an oracle: ``cpu`` (../shared/oracle) or ``cuda`` (../shared/oracle-cuda)."""
    from harness.stack import load_stack

    return load_stack(STACKS / f"{name}-oracle.yaml")


def skip_unless_exact_expected(engine, device: str, name: str):
    """Exactness is only claimed where this stack matches the oracle's (harness.stack.RULES); else skip, saying why."""
    from harness.stack import compare_stacks

    match = compare_stacks(oracle_stack(name), engine.stack_here(device))
    if not match.exact_expected:
        pytest.skip(match.reason())
    return match
