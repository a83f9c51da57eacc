"""Where a run writes under ``--out``: one folder per case, one results file per preview.

Apart from the runner so that collecting targets (``targets.unique``) can check two previews' slots without
importing the rendering side.
"""

from __future__ import annotations

from pathlib import Path


def safe_name(name: str) -> str:
    """A case name as a single folder name: outputs stay under --out whatever the name says."""
    cleaned = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name).strip(".")
    return cleaned or "case"


def result_file(out: Path, target) -> Path:
    """``out/results/<case>/<case>__<step>__<index>.json`` for a ``spec.PreviewTarget``."""
    name = safe_name(target.key.replace("::", "__")) + ".json"
    return Path(out) / "results" / safe_name(target.preview.case) / name
