"""``wan-parity import``: freeze an ai-toolkit output folder as a committed case (goldens copied, LoRAs referenced).

The training box deletes its output folder; the case keeps what the previews need (previews, lossless frames,
config, control images) under ``golden/NAME/`` and writes ``cases/NAME.yaml`` (schema: :mod:`harness.case`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

from .aitk.job import load_job
from .aitk.outputs import PREVIEW_RE
from .aitk.samples import expand_samples
from .case import Case, is_aitk_output_dir, save_case, valid_name
from .errors import HarnessError
from .paths import PathMap, resolve_ctrl_img
from .stack import stack_beside


def import_output(output_dir: str | Path, name: str, cases_dir: str | Path = "cases",
                  golden_dir: str | Path = "golden", path_map: PathMap | Iterable[str] | dict | None = None,
                  force: bool = False, golden_stack: dict | None = None) -> Path:
    """Freeze an ai-toolkit output folder as ``golden/NAME/`` plus ``cases/NAME.yaml``; returns the case file.

    Previews, lossless frames, config and control images are copied (the training box deletes them);
    LoRAs are referenced by the absolute path of the output folder (they are large and kept there).
    ``golden_stack`` (else the folder's own ``golden_stack.yaml``) is written into the case.
    """
    out = Path(output_dir).resolve()
    if not valid_name(name):
        raise HarnessError(None, "name", f"{name!r} is not a valid case name (letters, digits, '.', '_', '-'; "
                                         "no path separators or '..')")
    if not is_aitk_output_dir(out):
        raise HarnessError(out, None, "not an ai-toolkit output folder (needs config.yaml and samples/)")
    case_file = Path(cases_dir) / f"{name}.yaml"
    golden = Path(golden_dir) / name
    _refuse_overwrite(case_file, golden, force)
    map_dict = _map_dict(path_map)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=_mkdir(Path(golden_dir))))
    try:
        _copy_outputs(out, staging)
        ctrl_map, notes = _copy_ctrl_images(out, staging, PathMap([f"{k}={v}" for k, v in map_dict.items()]))
        if golden.exists():
            shutil.rmtree(golden)
        os.replace(staging, golden)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    case = Case(name=name, golden_dir=os.path.relpath(golden.resolve(), _mkdir(Path(cases_dir)).resolve()),
                path=case_file, lora_dir=str(out), ctrl_images=ctrl_map, path_map=map_dict,
                golden_stack=golden_stack or stack_beside(out), notes="\n".join([f"imported from {out}"] + notes))
    return save_case(case, case_file)


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def _refuse_overwrite(case_file: Path, golden: Path, force: bool) -> None:
    """Never replace a reviewed case by accident; with force, only replace what looks like our own golden folder."""
    if not force:
        for p in (case_file, golden):
            if p.exists():
                raise HarnessError(p, None, "already exists; choose another name or pass force=True (--force) to replace it")
    elif golden.exists() and not (golden.is_dir() and ((golden / "config.yaml").is_file() or not any(golden.iterdir()))):
        raise HarnessError(golden, None, "exists and is not a golden folder written by import; remove it yourself")


def _map_dict(path_map: PathMap | Iterable[str] | dict | None) -> dict[str, str]:
    """The import's path map as the case stores it (OLD: NEW)."""
    if path_map is None:
        return {}
    if isinstance(path_map, dict):
        return {str(k): str(v) for k, v in path_map.items()}
    pm = path_map if isinstance(path_map, PathMap) else PathMap(list(path_map))
    return dict(pm.pairs)


def _copy_outputs(out: Path, dest: Path) -> None:
    """config.yaml, the preview files and their lossless frames; staging files and thumbnails are skipped."""
    shutil.copy2(out / "config.yaml", dest / "config.yaml")
    (dest / "samples").mkdir()
    for p in sorted((out / "samples").iterdir()):
        if p.is_file() and PREVIEW_RE.match(p.name):
            shutil.copy2(p, dest / "samples" / p.name)
    raw = out / "samples_raw"
    if raw.is_dir():
        (dest / "samples_raw").mkdir()
        for p in sorted(raw.glob("*.npy")):
            shutil.copy2(p, dest / "samples_raw" / p.name)


def _ctrl_users(out: Path) -> dict[str, list[int]]:
    """Each control image path named by the config, with the sample indices that use it."""
    job = load_job(out / "config.yaml")
    users: dict[str, list[int]] = {}
    rounds = ["sample"] + (["first_sample"] if job.first_sample is not None else [])
    for which in rounds:
        for spec in expand_samples(job, which):
            if spec.ctrl_img and spec.index not in users.setdefault(spec.ctrl_img, []):
                users[spec.ctrl_img].append(spec.index)
    return users


def _copy_ctrl_images(out: Path, dest: Path, pmap: PathMap) -> tuple[dict[str, str], list[str]]:
    """Copy every control image into ctrl/ (unique names); missing ones become notes, not errors."""
    ctrl_dir = dest / "ctrl"
    ctrl_dir.mkdir()
    mapping, notes, used = {}, [], set()
    for original, indices in _ctrl_users(out).items():
        try:
            found, note = resolve_ctrl_img(original, pmap, [out], field="ctrl_img")
        except HarnessError as exc:
            notes.append(f"control image {original!r} (samples {', '.join(map(str, indices))}) was not found at "
                         f"import ({exc.message}); those previews are unreproducible")
            continue
        target = _unique_name(found.name, used)
        shutil.copy2(found, ctrl_dir / target)
        mapping[original] = target
        if note:
            notes.append(note)
    return mapping, notes


def _unique_name(name: str, used: set[str]) -> str:
    """Two control images may share a file name in different folders; suffix the later ones."""
    stem, suffix = os.path.splitext(name)
    candidate, n = name, 1
    while candidate in used:
        candidate = f"{stem}_{n}{suffix}"
        n += 1
    used.add(candidate)
    return candidate
