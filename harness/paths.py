"""Turn the paths a job recorded on the training machine into files on this machine, without any download.

Jobs carry absolute paths of the box they trained on (``/workspace/...``) and hub ids; the harness
must find the very same files locally or say exactly which flag would fix it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from harness.errors import HarnessError
from harness.fsutil import file_kind

MODEL_SUBFOLDERS = ("transformer", "transformer_2", "vae", "text_encoder", "tokenizer")
VAE_HUB_ID = "ai-toolkit/wan2.1-vae"
HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


class PathMap:
    """Prefix rewrites ``OLD=NEW``; the longest matching OLD wins, matching whole path components only."""

    def __init__(self, entries: list[str] | tuple[str, ...] = ()):
        self.pairs: list[tuple[str, str]] = []
        for entry in entries:
            old, sep, new = str(entry).partition("=")
            old, new = old.strip(), new.strip()
            if not sep or not old or not new:
                raise HarnessError(None, "--path-map", f"{entry!r} is not OLD=NEW (e.g. /workspace/oracle=/data/oracle)")
            self.pairs.append((old.rstrip("/") or "/", new))
        self.pairs.sort(key=lambda p: len(p[0]), reverse=True)

    def map(self, path: str | os.PathLike) -> str:
        """The rewritten path, or the path unchanged when no prefix matches."""
        text = os.fspath(path)
        for old, new in self.pairs:
            if text == old or text.startswith(old if old == "/" else old + "/"):
                rest = text[len(old):].lstrip("/")
                return str(Path(new) / rest) if rest else new
        return text

    def __bool__(self) -> bool:
        return bool(self.pairs)


def resolve_ctrl_img(path: str, path_map: PathMap, search_dirs: list[str | Path] = (), *,
                     file: object = None, field: str = "ctrl_img") -> tuple[Path, str | None]:
    """The control image on this machine, plus a note when it was only found by name (weaker evidence)."""
    mapped = Path(path_map.map(path))
    if mapped.is_file():
        return mapped, None
    if not mapped.is_absolute():
        for d in search_dirs:
            if (Path(d) / mapped).is_file():
                return Path(d) / mapped, f"relative ctrl_img {path!r} resolved inside {d}"
    hits = _find_by_name(mapped.name, search_dirs)
    if len(hits) == 1:
        return hits[0], (f"ctrl_img {path!r} (mapped: {mapped}) does not exist; using the file with the same "
                         f"name found in {hits[0].parent} (check it is the same image)")
    if len(hits) > 1:
        raise HarnessError(file, field, f"{path!r} does not exist and {len(hits)} files named {mapped.name!r} were "
                                        "found; give --path-map OLD=NEW so the right one is used")
    raise HarnessError(file, field, f"control image {path!r} not found (mapped: {mapped}); "
                                    "give --path-map OLD=NEW pointing at the folder that holds it")


def _find_by_name(name: str, dirs: list[str | Path]) -> list[Path]:
    """Distinct files with this name anywhere under the given folders."""
    hits: set[Path] = set()
    for d in dirs:
        d = Path(d)
        if d.is_dir() and name:
            hits.update(p.resolve() for p in d.rglob(name) if p.is_file())
    return sorted(hits)


def hf_hub_cache() -> Path:
    """The local hub cache the way huggingface_hub finds it (HF_HUB_CACHE, then HF_HOME/hub)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def cached_snapshot(repo_id: str) -> Path | None:
    """A hub repo's snapshot folder in the local cache (refs/main first), or None. Never downloads."""
    repo = hf_hub_cache() / f"models--{repo_id.replace('/', '--')}"
    snaps = repo / "snapshots"
    ref = repo / "refs" / "main"
    if ref.is_file():
        pinned = snaps / ref.read_text().strip()
        if pinned.is_dir():
            return pinned
    found = sorted((p for p in snaps.glob("*") if p.is_dir()), key=lambda p: p.stat().st_mtime) if snaps.is_dir() else []
    return found[-1] if found else None


def looks_like_hub_id(text: str) -> bool:
    """``org/name`` with no leading slash or dot: what from_pretrained would look up on the hub."""
    return bool(HUB_ID_RE.match(text)) and not text.startswith(".")


def resolve_model(name_or_path: str, path_map: PathMap, base_model_override: str | Path | None = None,
                  subfolders_required: tuple[str, ...] = MODEL_SUBFOLDERS, *, file: object = None,
                  field: str = "config.process[0].model.name_or_path") -> tuple[Path, str | None]:
    """The base model folder: --base-model, else the mapped path, else the local hub cache."""
    if base_model_override is not None:
        path = Path(base_model_override)
        if not path.is_dir():
            raise HarnessError(None, "--base-model", f"{str(path)!r} is not a folder; give the diffusers model folder")
        _check_subfolders(path, subfolders_required, None, "--base-model")
        return path, f"base model from --base-model {path} (the job named {name_or_path!r})"
    mapped = Path(path_map.map(name_or_path))
    if mapped.is_dir():
        _check_subfolders(mapped, subfolders_required, file, field)
        note = None if str(mapped) == name_or_path else f"{name_or_path!r} mapped to {mapped}"
        return mapped, note
    if looks_like_hub_id(name_or_path):
        snap = cached_snapshot(name_or_path)
        if snap is not None:
            _check_subfolders(snap, subfolders_required, file, field)
            return snap, f"hub id {name_or_path!r} resolved from the local Hugging Face cache ({snap})"
        raise HarnessError(file, field, f"hub id {name_or_path!r} is not in the local Hugging Face cache "
                                        f"({hf_hub_cache()}) and nothing is downloaded; give --base-model DIR")
    raise HarnessError(file, field, f"model folder {name_or_path!r} not found (mapped: {mapped}); "
                                    "give --path-map OLD=NEW or --base-model DIR")


def is_hub_file(source: str) -> bool:
    """ai-toolkit's hub form of an ARA, ``user/repo/file.safetensors`` (anything else is a path on its disk)."""
    return not source.startswith(("/", ".", "~")) and len(source.split("/")) == 3


def resolve_ara(source: str, path_map: PathMap, override: str | Path | None = None, *, file: object = None,
                field: str = "config.process[0].model.qtype") -> tuple[Path, str | None]:
    """The accuracy recovery adapter a ``qtype: "uint4|<ara>"`` job names, on this machine: ``--ara`` (an override),
    else the job's path through --path-map, else ai-toolkit's hub form ``user/repo/file.safetensors`` from the local
    Hugging Face cache (ai-toolkit's ``hf_hub_download`` target). Never downloads. Returns (path, how it was found)."""
    if override is not None:
        path = Path(override)
        kind = file_kind(path)
        if kind is not None:
            raise HarnessError(None, "--ara", f"{str(path)!r} is {kind}, not the adapter's .safetensors file")
        return path, f"ARA from --ara {path} (the job names {source!r})"
    mapped = Path(path_map.map(source))
    if mapped.is_file():
        return mapped, None if str(mapped) == source else f"ARA {source!r} mapped to {mapped}"
    parts = source.split("/")
    if is_hub_file(source):  # ai-toolkit's hf_hub_download(f"{parts[0]}/{parts[1]}", filename=parts[-1])
        snap = cached_snapshot(f"{parts[0]}/{parts[1]}")
        if snap is not None and (snap / parts[-1]).is_file():
            return snap / parts[-1], f"ARA hub file {source!r} resolved from the local Hugging Face cache ({snap})"
    raise HarnessError(file, field, f"the accuracy recovery adapter {source!r} is not a file here (mapped: {mapped}) "
                                    "and not in the local Hugging Face cache, and nothing is downloaded; give "
                                    "--path-map OLD=NEW or --ara PATH")


def _check_subfolders(path: Path, required: tuple[str, ...], file: object, field: str) -> None:
    """Name the first missing component so the user knows the folder is incomplete, not wrong."""
    for sub in required:
        if not (path / sub).is_dir():
            raise HarnessError(file, field, f"{path} has no {sub}/ subfolder; give a complete diffusers "
                                            "Wan 2.2 I2V folder (--base-model DIR)")


def resolve_vae(base_dir: str | Path, path_map: PathMap | None = None) -> tuple[Path, str | None]:
    """ai-toolkit loads the VAE from ``ai-toolkit/wan2.1-vae``; use it from the cache, else the base model's vae/."""
    snap = cached_snapshot(VAE_HUB_ID)
    if snap is not None:
        for cand in (snap, snap / "vae"):
            if (cand / "config.json").is_file():
                return cand, None
    base = Path(path_map.map(base_dir)) if path_map else Path(base_dir)
    vae = base / "vae"
    if not vae.is_dir():
        raise HarnessError(None, "vae", f"{VAE_HUB_ID} is not in the local Hugging Face cache and {vae} does not "
                                        "exist; give --base-model DIR with a vae/ subfolder")
    return vae, (f"{VAE_HUB_ID} (the VAE ai-toolkit loads) is not in the local Hugging Face cache; "
                 f"using {vae} instead")
