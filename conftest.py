"""Top-level conftest, imported before any test module imports torch.

* The wan-parity plugin is also registered through the package's pytest11 entry point; loading it here too keeps
  `pytest` working from a plain checkout before `pip install -e .`.
* This repository's own tests compare against the CPU oracle, so unless the session is already pinned
  (``--parity-golden-stack`` or the collected case files), the CPU is pinned to the oracle's stack here: the same
  rule the CLI and the plugin apply (harness.stack), before torch starts, inherited by xdist workers.
"""

import importlib.util
from pathlib import Path

if importlib.util.find_spec("harness") is not None:
    import sys

    if "harness.pytest_plugin" not in sys.modules:
        pytest_plugins = ["harness.pytest_plugin"]

    from harness.stack import apply_pin, load_stack, pinned_env, plan_pin

    if not pinned_env():
        apply_pin(plan_pin(load_stack(Path(__file__).parent / "tests" / "stacks" / "cpu-oracle.yaml")), "conftest.py")
