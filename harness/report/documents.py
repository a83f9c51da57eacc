"""Results documents in: files and ``--out`` folders read as documents, shards merged into one.

A report is often built from several shards of one night (one per GPU), or from a folder whose run crashed
before ``results.json`` was written; both must give the same one document a finished single run would.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import HarnessError


def _canonical(value) -> str:
    """A JSON value as text that compares equal exactly when the values are the same."""
    return json.dumps(value, sort_keys=True, default=str)


def _order(r: dict):
    """Results sorted by case, then training step and sample index as numbers, then key."""
    def num(v):
        try:
            return (0, int(v))
        except (TypeError, ValueError):
            return (1, 0)

    return (str(r.get("case") or ""), num(r.get("step")), num(r.get("index")), str(r.get("key") or ""))


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


def _check_documents(docs: list[dict], schema_version: int) -> None:
    if not docs:
        raise ValueError("merge_documents needs at least one results document")
    for i, d in enumerate(docs):
        if not isinstance(d, dict) or not isinstance(d.get("results"), list):
            raise ValueError(f"document {i} is not a results document (no 'results' list)")
        version = d.get("schema_version", schema_version)
        if version != schema_version:
            raise ValueError(f"document {i} has schema_version {version!r}; this harness reads {schema_version}")


def _results_by_key(docs: list[dict]) -> tuple[list[dict], list[str]]:
    """Every result once, sorted (a later duplicate key wins; results without a key all stay), and the duplicates."""
    by_key: dict[str, dict] = {}
    duplicates: list[str] = []
    anonymous = 0
    for d in docs:
        for r in d["results"]:
            key = r.get("key")
            if key is None:
                anonymous += 1
                key = f"\0anonymous-{anonymous}"
            elif key in by_key:
                duplicates.append(key)
            by_key[key] = r
    return sorted(by_key.values(), key=_order), duplicates


def merge_documents(docs: list[dict]) -> dict:
    """One results document from several shards: results by key (a later duplicate wins), summary recomputed.

    Environments that agree collapse to one; keys whose values differ between shards hold the list of
    distinct values and are listed in ``environment_differs`` (bit-exactness needs one identical stack).
    Per-shard environments and summaries are kept under ``shards`` when there is more than one document.
    """
    from ..runner import SCHEMA_VERSION, summarize

    _check_documents(docs, SCHEMA_VERSION)
    results, duplicates = _results_by_key(docs)
    environment, differs = _merge_environments([d.get("environment") or {} for d in docs if d.get("environment")])
    merged = {"schema_version": SCHEMA_VERSION, "environment": environment, "summary": summarize(results),
              "results": results}
    if differs:
        merged["environment_differs"] = differs
    if len(docs) > 1:
        merged["shards"] = [{"environment": d.get("environment") or {}, "summary": d.get("summary") or summarize(d["results"]),
                             "results": len(d["results"])} for d in docs]
    if duplicates:
        merged["duplicates"] = sorted(set(duplicates))
    return merged


def _as_document(data, source: Path) -> dict:
    if isinstance(data, dict) and isinstance(data.get("results"), list):
        return data
    if isinstance(data, dict) and "key" in data and "status" in data:  # one per-preview file from --out/results/
        return {"schema_version": data.get("schema_version", 1), "environment": {}, "results": [data]}
    if isinstance(data, list) and all(isinstance(r, dict) for r in data):
        return {"schema_version": 1, "environment": {}, "results": data}
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


def load_documents(paths) -> tuple[list[dict], list[Path]]:
    """Results documents from files or folders (a folder: its results.json, else every results/**/*.json).

    Also returns the folders relative media paths in them may be relative to (each file's folder and its parent).
    """
    docs, dirs = [], []
    for raw in paths:
        for f in _files(Path(raw)):
            docs.append(_as_document(_read_json(f), f))
            dirs.extend([f.parent, f.parent.parent])
    return docs, dirs


def load_baseline(path) -> dict:
    """A previous night's results (results.json, results.merged.json, an --out folder) as one document."""
    docs, _ = load_documents([path])
    try:
        return merge_documents(docs)
    except ValueError as exc:
        raise HarnessError(path, "--baseline", str(exc)) from None
