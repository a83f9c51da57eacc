"""Turn what the user points at (ai-toolkit output folder, case file, folder of cases, runcomfy JSON) into targets."""

from __future__ import annotations

from pathlib import Path

from .errors import HarnessError
from .runner import PreviewTarget


def from_output_dir(output_dir: Path, profile: str = "auto") -> list[PreviewTarget]:
    """An ai-toolkit output folder used directly: its config.yaml plus samples/ and the checkpoints beside them."""
    from .aitk.job import load_job
    from .aitk.outputs import discover

    config = Path(output_dir) / "config.yaml"
    job = load_job(config)
    return [
        PreviewTarget(preview=p, model_name=str(job.model.get("name_or_path", "")), config_file=config,
                      search_dirs=[Path(output_dir)], profile=profile, model_block=job.model)
        for p in discover(output_dir, job)
    ]


def collect(target: str | Path) -> list[PreviewTarget]:
    """Dispatch on what the path is; anything else is a one-line error naming it."""
    from . import case as case_mod

    path = Path(target)
    if not path.exists():
        raise HarnessError(path, None, "not found; give a case file, a folder of case files or an ai-toolkit output folder")
    if path.is_dir() and case_mod.is_aitk_output_dir(path):
        return from_output_dir(path)
    if path.suffix.lower() == ".json":
        from .sources.runcomfy import load_request

        return load_request(path)
    targets = []
    for case_file in case_mod.find_case_files(path):
        targets.extend(case_mod.load_case(case_file).targets())
    return targets


def select(targets: list[PreviewTarget], steps: set[int] | None, samples: set[int] | None) -> list[PreviewTarget]:
    """The ``--steps``/``--samples`` filters."""
    return [t for t in targets
            if (steps is None or t.preview.step in steps) and (samples is None or t.preview.index in samples)]
