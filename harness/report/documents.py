"""Results documents in: files and ``--out`` folders read as documents, shards merged into one.

A report is often built from several shards of one night (one per GPU), or from a folder whose run crashed
before ``results.json`` was written; both must give the same one document a finished single run would.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import HarnessError
from ..result import PreviewResult, results_document, results_of, summarize


@dataclass
class Shard:
    """One results document as read: its results typed, its environment and summary as written."""

    results: list[PreviewResult]
    environment: dict = field(default_factory=dict)
    summary: dict | None = None

    @classmethod
    def read(cls, document: dict, source) -> "Shard":
        """``document``'s results through :func:`~harness.result.results_of` (HarnessError naming ``source``)."""
        return cls(results_of(document, source), document.get("environment") or {}, document.get("summary"))


def _canonical(value) -> str:
    """A JSON value as text that compares equal exactly when the values are the same."""
    return json.dumps(value, sort_keys=True, default=str)


def _merge_environments(envs: list[dict]) -> tuple[dict, list[str]]:
    """One environment: a key's value where the shards agree, else the list of their distinct values."""
    merged: dict = {}
    differs: list[str] = []
    keys = list(dict.fromkeys(k for env in envs for k in env))
    for k in keys:
        values = []
        for env in envs:
            v = env.get(k)
            if all(_canonical(v) != _canonical(x) for x in values):
                values.append(v)
        if len(values) == 1:
            merged[k] = values[0]
        else:
            merged[k] = values
            differs.append(k)
    return merged, differs


def _results_by_key(shards: list[Shard]) -> tuple[list[PreviewResult], list[str]]:
    """Every result once (a later duplicate key wins; results without a key all stay), and the duplicated keys."""
    by_key: dict = {}
    duplicates: list[str] = []
    anonymous = 0
    for shard in shards:
        for r in shard.results:
            key = r.key
            if key is None:
                anonymous += 1
                key = ("anonymous", anonymous)
            elif key in by_key:
                duplicates.append(key)
            by_key[key] = r
    return list(by_key.values()), duplicates


def merge_shards(shards: list[Shard]) -> dict:
    """One results document (JSON, this schema) from several shards: results by key (a later duplicate wins),
    in :func:`~harness.result.result_order`, summary recomputed.

    Environments that agree collapse to one; keys whose values differ between shards hold the list of
    distinct values and are listed in ``environment_differs`` (bit-exactness needs one identical stack).
    Per-shard environments and summaries are kept under ``shards`` when there is more than one.
    """
    if not shards:
        raise ValueError("nothing to merge: no results documents given")
    results, duplicates = _results_by_key(shards)
    environment, differs = _merge_environments([s.environment for s in shards if s.environment])
    extra: dict = {}
    if differs:
        extra["environment_differs"] = differs
    if len(shards) > 1:
        extra["shards"] = [{"environment": s.environment, "summary": s.summary or summarize(s.results),
                            "results": len(s.results)} for s in shards]
    if duplicates:
        extra["duplicates"] = sorted(set(duplicates))
    return results_document(environment, results, **extra)


def merge_documents(docs: list[dict]) -> dict:
    """:func:`merge_shards` for documents in memory (the pytest plugin's workers), any readable schema.

    Raises ValueError when ``docs`` is empty or holds something that is not a readable results document (there is
    no file to name; files go through :func:`load_shards`, whose errors name them).
    """
    shards = []
    for i, d in enumerate(docs):
        if not isinstance(d, dict) or not isinstance(d.get("results"), list):
            raise ValueError(f"document {i} is not a results document (no 'results' list)")
        try:
            shards.append(Shard.read(d, f"document {i}"))
        except HarnessError as exc:
            raise ValueError(exc.line()) from None
    return merge_shards(shards)


def _as_document(data, source: Path) -> dict:
    """A file's JSON as a results document; bare results carry no schema_version and read as any schema does."""
    if isinstance(data, dict) and isinstance(data.get("results"), list):
        return data
    if isinstance(data, dict) and "key" in data and "status" in data:  # one per-preview file from --out/results/
        return {"environment": {}, "results": [data]}
    if isinstance(data, list) and all(isinstance(r, dict) for r in data):
        return {"environment": {}, "results": data}
    raise HarnessError(source, None, "not a results document (expected {'results': [...]}, one result, or a list of results)")


def _files(path: Path) -> list[Path]:
    """The JSON files behind one input: a file itself; a folder's results.json, else its results/**/*.json."""
    if path.is_dir():
        if (path / "results.json").is_file():
            return [path / "results.json"]
        files = sorted((path / "results").rglob("*.json"))
        if not files:
            raise HarnessError(path, None, "folder holds no results.json and no results/**/*.json")
        return files
    if path.is_file():
        return [path]
    raise HarnessError(path, None, "file not found")


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HarnessError(path, None, f"cannot read results JSON: {exc}") from None


def load_shards(paths) -> tuple[list[Shard], list[Path]]:
    """Results documents from files or folders (a folder: its results.json, else every results/**/*.json), read.

    A file that is not a readable results document (schema, a corrupt result) is one HarnessError naming it. Also
    returns the folders relative media paths in them may be relative to (each file's folder and its parent).
    """
    shards, dirs = [], []
    for raw in paths:
        for f in _files(Path(raw)):
            shards.append(Shard.read(_as_document(_read_json(f), f), f))
            dirs.extend([f.parent, f.parent.parent])
    return shards, dirs


def load_baseline(path) -> dict:
    """A previous night's results (results.json, results.merged.json, an --out folder) as one document."""
    shards, _ = load_shards([path])
    return merge_shards(shards)
