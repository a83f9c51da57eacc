"""Fuzz the input path: a few hundred mutated job configs and case files through ``wan-parity run``.

Every run must end in exit code 2 with one ``error:`` line (or error results with one-line messages), or in exit 3
(every preview unreproducible: nothing was compared); never in a traceback. Nothing is rendered: the job's base model does not
exist, and loading any model fails the test outright. A seeded mutator (no hypothesis dependency) keeps every
failure reproducible: the test id carries the seed.
"""

from __future__ import annotations

import re

import copy
import json
import os
import random
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from harness import console
from harness.cli import main
from harness.demo import DEMO_CASE
from harness.demo_model import aitk_metadata, write_aitk_lora

PROGRESS = re.compile(r"\[\d+/\d+\] ")  # the one line per finished preview off a TTY (stderr)

ROUNDS = 8  # x 25 mutations each: 200 mutated job configs, then 100 mutated case files
PER_ROUND = 25

VALUES = [None, "", "x", "abc --w", "../../../etc/passwd", "/nonexistent", "日本語", "a\nb", "-1", "0", 0, -1, 1, 2,
          7, 1.5, -0.0, float("inf"), float("nan"), 10**12, True, False, [], [1], ["a", None], {}, {"a": 1},
          {"samples": []}, "--s 0", "--frames", "--seed -1", "wan22_14b_i2v", "bf16", "fp32",
          "Wan-AI/Wan2.2-I2V-A14B-Diffusers", "2024-01-01",
          2 ** 70, -(2 ** 70), 2 ** 64 - 1, "--seed 1180591620717411303424", 100000, -(2 ** 63) - 1,
          json.loads("[" * 80 + "]" * 80)]  # hostile: beyond torch's seed range, OpenMP, nesting
YAML_NOISE = list(":-[]{}'\"\t#&*!|>%@`,?\\") + ["\n", "  ", "- ", ": ", "&a ", "*a", "!!python/object:os.system ",
                                                  "\x00", "\ufeff"]


@pytest.fixture(scope="module")
def job_dir(tmp_path_factory) -> Path:
    """An ai-toolkit output folder whose base model does not exist: every reproducible preview stops there."""
    root = tmp_path_factory.mktemp("fuzz")
    out = root / "output" / "demo"
    out.mkdir(parents=True)
    shutil.copytree(DEMO_CASE / "samples", out / "samples")
    shutil.copytree(DEMO_CASE / "ctrl", root / "ctrl")
    state = {"diffusion_model.blocks.0.self_attn.q.lora_A.weight": torch.zeros(4, 24),
             "diffusion_model.blocks.0.self_attn.q.lora_B.weight": torch.zeros(24, 4)}
    for stem in ("demo_000000250", "demo"):
        for side in ("high", "low"):
            write_aitk_lora(out / f"{stem}_{side}_noise.safetensors", state, aitk_metadata("demo"))
    config = yaml.safe_load((DEMO_CASE / "config.yaml").read_text())
    proc = config["config"]["process"][0]
    proc["model"]["name_or_path"] = str(root / "no_such_model")
    for item in proc["sample"]["samples"]:
        item["ctrl_img"] = str(root / "ctrl" / Path(item["ctrl_img"]).name)
    (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return out


@pytest.fixture(autouse=True)
def never_render(monkeypatch, tmp_path):
    """Reaching the model loader means a mutated input got past every check it should have failed."""
    import harness.render.models as models

    def refuse(*args, **kwargs):
        raise AssertionError("the fuzz test must never load a model")

    monkeypatch.setattr(models, "load_bundle", refuse)
    # Speed only (a few hundred runs): durability has its own tests, and the results table is not under test.
    monkeypatch.setattr(os, "fsync", lambda fd: None)
    monkeypatch.setattr(console, "print_results", lambda results, **kwargs: None)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)


# ---------------------------------------------------------------------------------------------------- mutator


def _paths(node, prefix=()):
    """Every (container path) in a YAML tree: where a value can be replaced, deleted or added."""
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


def _get(node, path):
    for p in path:
        node = node[p]
    return node


def mutate_tree(rng: random.Random, data):
    """One to three structural mutations: replace a value, delete a key, add a key, or swap a value's type."""
    for _ in range(rng.randint(1, 3)):
        paths = [p for p in _paths(data) if p]
        if not paths:
            return copy.deepcopy(rng.choice(VALUES))
        path = rng.choice(paths)
        parent, key = _get(data, path[:-1]), path[-1]
        action = rng.random()
        if action < 0.6:
            parent[key] = copy.deepcopy(rng.choice(VALUES))
        elif action < 0.8:
            del parent[key]
        elif isinstance(parent, dict):
            parent[rng.choice(["extra", "seed", "neg", "ctrl_img", "width", "num_frames", "process", "schema",
                               "name", "arch", "golden_dir", "steps", "device", "prompt"])] = copy.deepcopy(rng.choice(VALUES))
        else:
            parent.append(copy.deepcopy(rng.choice(VALUES)))
    return data


def mutate_text(rng: random.Random, text: str) -> str:
    """Syntax-level damage: truncation, lost or doubled lines, stray YAML punctuation."""
    lines = text.splitlines(keepends=True)
    action = rng.random()
    if action < 0.25:
        return text[: rng.randrange(len(text))]
    if action < 0.45 and lines:
        del lines[rng.randrange(len(lines))]
    elif action < 0.6 and lines:
        i = rng.randrange(len(lines))
        lines.insert(i, lines[i])
    elif action < 0.75 and lines:
        i = rng.randrange(len(lines))
        lines[i] = lines[i].replace("  ", " ", 1) if rng.random() < 0.5 else "  " + lines[i]
    else:
        pos = rng.randrange(len(text))
        return text[:pos] + rng.choice(YAML_NOISE) + text[pos:]
    return "".join(lines)


# ---------------------------------------------------------------------------------------------------- checks


def run_and_check(capsys, target: Path, out: Path, label: str) -> int:
    capsys.readouterr()
    try:
        rc = main(["run", str(target), "--out", str(out), "--no-report", "--device", "cpu", "--threads", "1"])
    except BaseException as exc:  # noqa: BLE001 - the point: nothing may escape
        raise AssertionError(f"{label}: {type(exc).__name__} escaped main(): {exc}") from exc
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and not PROGRESS.match(line)]
    doc_file = out / "results.json"
    doc = json.loads(doc_file.read_text()) if doc_file.is_file() else None
    assert rc in (2, 3), f"{label}: exit code {rc}: {err}"  # nothing renders here: never 0 (nothing was compared)
    assert all(line.startswith("error: ") for line in err), f"{label}: {err}"
    if rc == 2 and doc is None:
        assert len(err) == 1, f"{label}: {err}"
    if doc is not None:
        statuses = {r["status"] for r in doc["results"]}
        assert statuses <= {"error", "unreproducible"}, f"{label}: {statuses}"
        assert (rc == 2) == ("error" in statuses), f"{label}: rc {rc}, {statuses}"
        assert (rc == 3) == (statuses <= {"unreproducible"}), f"{label}: rc {rc}, {statuses}"
        for r in doc["results"]:
            assert r["message"] and "\n" not in r["message"] and "Traceback" not in r["message"], f"{label}: {r}"
    return rc


def _fresh_copy(job_dir: Path, dest: Path) -> Path:
    """A private copy of the job folder (samples and LoRAs linked, config copied) for one mutation."""
    dest.mkdir(parents=True)
    for p in job_dir.iterdir():
        if p.name != "config.yaml":
            (dest / p.name).symlink_to(p)
    shutil.copy2(job_dir / "config.yaml", dest / "config.yaml")
    return dest


@pytest.mark.parametrize("seed", range(ROUNDS))
def test_mutated_job_configs_never_trace_back(job_dir, tmp_path, capsys, seed):
    rng = random.Random(seed)
    base = yaml.safe_load((job_dir / "config.yaml").read_text())
    outcomes = {2: 0, 3: 0}
    for n in range(PER_ROUND):
        folder = _fresh_copy(job_dir, tmp_path / f"m{n}" / "demo")
        if rng.random() < 0.7:
            data = mutate_tree(rng, json.loads(json.dumps(base)))
            text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
        else:
            text = mutate_text(rng, (job_dir / "config.yaml").read_text())
        (folder / "config.yaml").write_text(text, encoding="utf-8", errors="surrogatepass")
        outcomes[run_and_check(capsys, folder, tmp_path / f"m{n}" / "out", f"seed {seed} #{n}")] += 1
    assert outcomes[2] > 0  # the mutator does break things


@pytest.mark.parametrize("seed", range(ROUNDS // 2))
def test_mutated_case_files_never_trace_back(job_dir, tmp_path, capsys, seed):
    rng = random.Random(1000 + seed)
    base = {"schema": "wan-parity/case@1", "name": "demo", "golden_dir": str(job_dir), "lora_dir": str(job_dir),
            "profile": "auto", "device": "cpu", "threads": 1, "tolerances": {"psnr_min": 30.0, "ssim_min": 0.9},
            "steps": [0, 250], "samples": [0], "path_map": {"/workspace": str(tmp_path)}, "notes": "fuzz"}
    for n in range(PER_ROUND):
        if rng.random() < 0.75:
            text = yaml.safe_dump(mutate_tree(rng, json.loads(json.dumps(base))), allow_unicode=True)
        else:
            text = mutate_text(rng, yaml.safe_dump(base))
        case = tmp_path / f"c{n}" / "case.yaml"
        case.parent.mkdir()
        case.write_text(text, encoding="utf-8", errors="surrogatepass")
        run_and_check(capsys, case, tmp_path / f"c{n}" / "out", f"case seed {seed} #{n}")
