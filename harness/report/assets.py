"""Where the report's pictures go: files under ``<out>/report_assets/<run-id>/``, or ``data:`` URIs in the page.

A self-contained report (``self_contained=True``) inlines every asset so ``report.html`` opens with nothing beside
it; the folder form keeps the page light. Each report run writes a fresh folder and removes the older ones only
after its page is in place: a reader never sees a page whose pictures are gone. Drawing happens elsewhere
(:mod:`.pictures`); this module only stores bytes and hands back what an ``<img>`` or a link needs.
"""

from __future__ import annotations

import base64
import datetime as _dt
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import HarnessError
from . import plots

ASSETS_DIR = "report_assets"
_RUN_DIR = re.compile(r"^r\d{8}T\d{6}-[0-9a-f]{8}$")
MIME = {".png": "image/png", ".jpg": "image/jpeg", ".webp": "image/webp", ".svg": "image/svg+xml"}


@dataclass
class Picture:
    src: str  # a path relative to the page, or a data: URI
    width: int
    height: int
    alt: str
    name: str = ""  # the file name a download link offers


class Assets:
    """Stores the assets of one report run in a fresh folder, or returns them as data: URIs when inline."""

    def __init__(self, out_dir: Path, inline: bool):
        self.out_dir = out_dir
        self.inline = inline
        self.run_id = _dt.datetime.now().strftime("r%Y%m%dT%H%M%S") + "-" + secrets.token_hex(4)
        self.folder = out_dir / ASSETS_DIR / self.run_id

    def add(self, name: str, image: np.ndarray | None = None, data: bytes | None = None, alt: str = "",
            size: tuple[int, int] | None = None) -> Picture:
        """One asset: ``image`` (encoded as PNG) or ready ``data`` whose type is ``name``'s suffix (see MIME).

        ``size`` is (width, height) for ``data``; PNG, JPEG and WebP data are measured when it is not given.
        """
        if data is None:
            data = plots.png_bytes(image)
            size = image.shape[1], image.shape[0]
        elif size is None:
            size = _image_size(data)
        mime = MIME[Path(name).suffix.lower()]
        if self.inline:
            src = f"data:{mime};base64," + base64.b64encode(data).decode("ascii")
        else:
            self._write(name, data)
            src = f"{ASSETS_DIR}/{self.run_id}/{name}"
        return Picture(src, int(size[0]), int(size[1]), alt, name)

    def _write(self, name: str, data: bytes) -> None:
        """A plain write: the run's folder is new and no page points into it until the page is replaced, so the
        per-file temp-and-rename (and its fsync, ~6 ms a file) of :func:`~harness.fsutil.write_atomic` buys nothing."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            (self.folder / name).write_bytes(data)
        except OSError as exc:
            raise HarnessError(self.folder / name, None, f"cannot write the report's picture ({exc.strerror})") from None

    def discard(self) -> None:
        if self.folder.is_dir():
            shutil.rmtree(self.folder, ignore_errors=True)

    def prune_older(self) -> None:
        """After the new page is in place: remove asset folders of earlier runs (only ours, by name)."""
        root = self.out_dir / ASSETS_DIR
        if not root.is_dir():
            return
        for child in root.iterdir():
            if child.is_dir() and _RUN_DIR.match(child.name) and child.name != self.run_id:
                shutil.rmtree(child, ignore_errors=True)
        if not any(root.iterdir()):
            root.rmdir()


def _image_size(data: bytes) -> tuple[int, int]:
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return im.size
