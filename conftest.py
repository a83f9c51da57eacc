"""Top-level conftest: the wan-parity plugin is also registered through the package's pytest11 entry point; loading
it here too keeps `pytest` working from a plain checkout before `pip install -e .`."""

import importlib.util

if importlib.util.find_spec("harness") is not None:
    import sys

    if "harness.pytest_plugin" not in sys.modules:
        pytest_plugins = ["harness.pytest_plugin"]
