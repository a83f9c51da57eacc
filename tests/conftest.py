"""Shared test setup.

* CPU results depend on the thread count (the oracle was rendered with 2), so every test module starts at 2 threads.
* The oracle case files reference ../shared/oracle(-cuda) in place; without them they are not collected at all.
"""

import pytest
import torch

from .oracle_paths import ORACLE, ORACLE_CUDA

collect_ignore_glob = []
if not ORACLE.is_dir():
    collect_ignore_glob += ["oracle_cases/*"]
elif not ORACLE_CUDA.is_dir():
    collect_ignore_glob += ["oracle_cases/oracle_cuda_*"]


@pytest.fixture(scope="module", autouse=True)
def _two_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)
