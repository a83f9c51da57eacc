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
from .aitk.samples import ctrl_image_users
from .case import Case, is_aitk_output_dir, save_case, valid_name
from .errors import HarnessError
from .fsutil import file_kind
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
    _mkdir(Path(cases_dir), "--cases-dir")  # both folders first: a refused one leaves nothing half-imported
    _refuse_overwrite(case_file, golden, force)
    map_dict = _map_dict(path_map)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=_mkdir(Path(golden_dir), "--golden-dir")))
    try:
        _copy_outputs(out, staging)
        ctrl_map, notes = _copy_ctrl_images(out, staging, PathMap([f"{k}={v}" for k, v in map_dict.items()]))
        if golden.exists():
            shutil.rmtree(golden)
        os.replace(staging, golden)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    case = Case(name=name, golden_dir=os.path.relpath(golden.resolve(), Path(cases_dir).resolve()),
                path=case_file, lora_dir=str(out), ctrl_images=ctrl_map, path_map=map_dict,
                golden_stack=golden_stack or stack_beside(out), notes="\n".join([f"imported from {out}"] + notes))
    return save_case(case, case_file)


def _mkdir(p: Path, flag: str) -> Path:
    """The folder, created if needed; a file (or anything else) in its place is one error line."""
    try:
        p.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise HarnessError(p, flag, "exists and is not a folder; give a folder") from None
    except OSError as exc:
        raise HarnessError(p, flag, f"cannot be created ({exc.strerror})") from None
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
    _copy_inside(out, out / "config.yaml", dest / "config.yaml")
    (dest / "samples").mkdir()
    for p in sorted((out / "samples").iterdir()):
        if PREVIEW_RE.match(p.name):
            _copy_inside(out, p, dest / "samples" / p.name)
    raw = out / "samples_raw"
    if raw.is_dir():
        (dest / "samples_raw").mkdir()
        for p in sorted(raw.glob("*.npy")):
            _copy_inside(out, p, dest / "samples_raw" / p.name)


def _copy_inside(out: Path, source: Path, dest: Path) -> None:
    """Copy a regular file of the output folder; a symlink out of it (``samples/x.webp -> /etc/passwd``), a FIFO or a
    device is refused, so a case never carries files that were not the job's."""
    kind = file_kind(source)
    if kind is not None:
        raise HarnessError(source, None, f"is {kind}, not a regular file; import copies only the job's own files")
    if not source.resolve().is_relative_to(out):
        raise HarnessError(source, None, f"is a symlink to {source.resolve()}, outside the output folder; import "
                                         "copies only files inside it")
    shutil.copy2(source, dest)


def _copy_ctrl_images(out: Path, dest: Path, pmap: PathMap) -> tuple[dict[str, str], list[str]]:
    """Copy every control image into ctrl/ (unique names); missing ones become notes, not errors."""
    ctrl_dir = dest / "ctrl"
    ctrl_dir.mkdir()
    mapping, notes, used = {}, [], set()
    for original, indices in ctrl_image_users(load_job(out / "config.yaml")).items():
        try:
            found, note = resolve_ctrl_img(original, pmap, [out], field="ctrl_img")
        except HarnessError as exc:
            notes.append(f"control image {original!r} (samples {', '.join(map(str, indices))}) was not found at "
                         f"import ({exc.message}); those previews are unreproducible")
            continue
        kind = file_kind(found)
        if kind is not None:  # opening a FIFO would hang the import
            raise HarnessError(found, "ctrl_img", f"is {kind}, not an image file; fix the config or --path-map")
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
