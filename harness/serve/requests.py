"""Requests at the HTTP API: the seed's JSON, validated exactly as a request file is (harness.sources.runcomfy).

Two rules a request file does not need: every local path (LoRA, control image) must lie inside the allowed roots
after following symlinks, and nothing is fetched (URLs are refused by the shared validation); a ``golden`` is
refused, because the server renders and never compares. Relative paths resolve against the first root. With no root
at all, control images can only come as base64 and no LoRA file can be named.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import HarnessError
from ..paths import PathMap

REQUEST = "request"  # what errors name as the file: the request body


class RequestReader:
    """Turns a request body into golden-less targets on the server's model (``basis``)."""

    def __init__(self, basis, roots: list[Path], cache_dir: Path, path_map: PathMap | None = None,
                 device_type: str = "cpu"):
        self.basis, self.roots, self.cache_dir = basis, [Path(r) for r in roots], Path(cache_dir)
        self.path_map, self.device_type = path_map or PathMap(), device_type

    def targets(self, data: object) -> list:
        """HarnessError(``request``, field, message) for anything the CLI would refuse too, plus the rules above."""
        from ..generate import on_device, request_targets

        for i, item in enumerate(data.get("prompts") or [] if isinstance(data, dict) else []):
            if isinstance(item, dict) and "golden" in item:
                raise HarnessError(REQUEST, f"prompts[{i}].golden", "not accepted by the server (it renders, it does "
                                                                    "not compare); use wan-parity run for that")
        base_dir = self.roots[0] if self.roots else self.cache_dir
        targets = request_targets(data, self.basis, file=REQUEST, base_dir=base_dir, path_map=self.path_map,
                                  cache_dir=self.cache_dir, roots=self.roots)
        return on_device(targets, self.device_type)
