"""Drawing the chosen previews' pictures: on forked worker processes when that is safe and worth it, else here.

Decoding and encoding are CPU-bound and hold the GIL (threads gave no speed-up), so the pictures of many previews
are drawn on a process pool. Workers are forked, and only from a process that is plainly safe to fork: Linux, one
thread, torch never imported (``wan-parity report`` is such a process; ``run`` and the pytest plugin, which hold
torch and its thread pools, draw here). ``spawn`` would be safe everywhere but re-runs the caller's main script in
every worker, which a library must not do to a script without a ``__main__`` guard. Each worker writes its
previews' assets itself (or returns them inline) and sends back the
:class:`~harness.report.pictures.PreviewPictures` and the problems noted. A pool that cannot start or breaks falls
back to drawing here, so a report never depends on multiprocessing.
"""

from __future__ import annotations

import os
from typing import Iterator

from ..result import PreviewResult
from .assets import Assets
from .pictures import PreviewPictures, draw_preview

MIN_FOR_POOL = 8  # previews; fewer are drawn here (starting workers costs about a second)
MAX_WORKERS = 8

Job = tuple[int, PreviewResult, str]  # (section index, result, key as shown)
Drawn = tuple[int, PreviewPictures, list]  # (section index, its pictures, problems noted while drawing)


def draw_one(job: Job, assets: Assets, search_dirs) -> Drawn:
    """One preview's pictures; a failure is one problem line, never the report's end."""
    index, result, key = job
    pics, problems = PreviewPictures(), []
    try:
        draw_preview(pics, result, index, key, assets, search_dirs, problems)
    except Exception as exc:  # never lose the whole report to one preview's pictures
        problems.append(f"pictures: could not be drawn ({type(exc).__name__}: {exc})")
    return index, pics, problems


def fork_is_safe() -> bool:
    """Linux, this thread alone, and no torch (whose native thread pools a fork would copy half-alive)."""
    import sys
    import threading

    return sys.platform.startswith("linux") and threading.active_count() == 1 and "torch" not in sys.modules


def default_workers(jobs: int) -> int:
    """Worker processes for ``jobs`` previews: one per CPU this process may use (at most MAX_WORKERS), or 1 when
    there are few jobs or forking is not safe here."""
    if jobs < MIN_FOR_POOL or not fork_is_safe():
        return 1
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(MAX_WORKERS, cpus, jobs))


def draw_all(jobs: list[Job], assets: Assets, search_dirs, workers: int | None = None) -> Iterator[Drawn]:
    """Every job's pictures, yielded as each is done (in completion order when drawn on workers)."""
    workers = default_workers(len(jobs)) if workers is None else workers
    done: set[int] = set()
    if workers > 1:
        try:
            for drawn in _on_pool(jobs, assets, list(search_dirs), workers):
                done.add(drawn[0])
                yield drawn
        except Exception:  # no pool here (no semaphores, no spawn) or a worker died: draw the rest here
            pass
    for job in jobs:
        if job[0] not in done:
            yield draw_one(job, assets, search_dirs)


def _on_pool(jobs: list[Job], assets: Assets, search_dirs: list, workers: int) -> Iterator[Drawn]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from . import plots

    plots.lut()  # load the colour map (matplotlib) once, here: every worker inherits it
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        futures = [pool.submit(draw_one, job, assets, search_dirs) for job in jobs]
        for future in as_completed(futures):
            yield future.result()
