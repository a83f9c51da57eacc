"""The oracle case files reference ../shared/oracle(-cuda) in place; without them they are not collected at all."""

from .oracle_paths import ORACLE, ORACLE_CUDA

collect_ignore_glob = []
if not ORACLE.is_dir():
    collect_ignore_glob += ["oracle_cases/*"]
elif not ORACLE_CUDA.is_dir():
    collect_ignore_glob += ["oracle_cases/oracle_cuda_*"]
