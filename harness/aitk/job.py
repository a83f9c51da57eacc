"""Read an ai-toolkit job YAML (§1.1, docs/parity) into the few settings that decide preview pixels."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.fsutil import file_kind
from harness.limits import read_yaml_mapping

SUPPORTED_ARCHS = ("wan22_14b_i2v",)
P0 = "config.process[0]"  # field prefix: ai-toolkit only runs the first process for a trainer job
BF16_NAMES = ("bf16", "bfloat16")


@dataclass
class AitkJob:
    """The parts of one ai-toolkit job that the harness needs; ``raw`` keeps the rest."""

    path: Path
    name: str
    arch: str
    trigger_word: str | None
    model: dict
    train_dtype: str
    train_steps: int | None
    sample: dict
    first_sample: dict | None
    save: dict
    network: dict
    training_folder: str | None
    raw: dict = field(repr=False, default_factory=dict)
    train: dict = field(repr=False, default_factory=dict)

    def unsupported_reason(self) -> str | None:
        """Why the renderer cannot match this job at all, or None (only bf16 jobs are supported)."""
        if str(self.train_dtype).lower() in BF16_NAMES:
            return None
        return (
            f"train.dtype is {self.train_dtype!r}: ai-toolkit ran the model in that dtype, "
            "but the renderer supports bf16 only (§1.1, docs/parity)"
        )

    @property
    def render_device(self) -> str:
        """'cpu' or 'cuda': where ai-toolkit rendered, which decides the posterior RNG layout (§3, docs/parity)."""
        return "cpu" if str(self.process.get("device", "cuda")).split(":")[0] == "cpu" else "cuda"

    @property
    def process(self) -> dict:
        """The process block that ai-toolkit actually ran."""
        return self.raw["config"]["process"][0]


def load_job(path: str | Path) -> AitkJob:
    """Parse the job file and fail early, with the field named, on anything the harness cannot use."""
    path = Path(path)
    raw = _read_yaml(path)
    proc = _first_process(path, raw)
    model = _model_block(path, proc)
    sample = proc.get("sample")
    if not isinstance(sample, dict):
        raise HarnessError(path, f"{P0}.sample",
                           "no previews were configured (no `sample:` block), so there is nothing to compare")
    first = proc.get("first_sample")
    if first is not None and not isinstance(first, dict):
        raise HarnessError(path, f"{P0}.first_sample", "must be a mapping with the same keys as `sample`")
    train = _mapping(path, proc, "train")
    return AitkJob(
        path=path,
        name=_job_name(path, raw, proc),
        arch=model["arch"],
        trigger_word=_trigger(proc.get("trigger_word")),
        model=model,
        train_dtype=str(train.get("dtype", "fp32")),
        train_steps=_steps(path, train),
        sample=sample,
        first_sample=first,
        save=_mapping(path, proc, "save"),
        network=_mapping(path, proc, "network"),
        training_folder=proc.get("training_folder"),
        raw=raw,
        train=train,
    )


def _read_yaml(path: Path) -> dict:
    """Load with safe_load; a parse error names the line so the user can open the file there."""
    kind = file_kind(path)
    if kind == "missing":
        raise HarnessError(path, None, "job config not found; give the ai-toolkit job YAML (or the output folder's config.yaml)")
    if kind is not None:
        raise HarnessError(path, None, f"is {kind}, not a job config file; give the ai-toolkit job YAML")
    return read_yaml_mapping(path, "the job YAML", "not an ai-toolkit job (top level is not a mapping)")


def _first_process(path: Path, raw: dict) -> dict:
    """ai-toolkit runs ``config.process[0]``; anything else is not a trainer job."""
    config = raw.get("config")
    if not isinstance(config, dict):
        raise HarnessError(path, "config", "missing `config:` mapping; this is not an ai-toolkit job file")
    procs = config.get("process")
    if not isinstance(procs, list) or not procs:
        raise HarnessError(path, "config.process", "missing or empty process list; the job has nothing to run")
    if not isinstance(procs[0], dict):
        raise HarnessError(path, P0, "must be a mapping (type, model, sample, ...)")
    return procs[0]


def _mapping(path: Path, proc: dict, key: str) -> dict:
    """Optional sub-blocks default to empty so defaults apply; a wrong type is the user's to fix."""
    value = proc.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise HarnessError(path, f"{P0}.{key}", "must be a mapping")
    return value


def _model_block(path: Path, proc: dict) -> dict:
    """Model settings with ai-toolkit's defaults filled in, restricted to the supported arch."""
    model = _mapping(path, proc, "model")
    arch = model.get("arch")
    if arch not in SUPPORTED_ARCHS:
        raise HarnessError(path, f"{P0}.model.arch",
                           f"arch {arch!r} is not supported; supported: {', '.join(SUPPORTED_ARCHS)}")
    if not model.get("name_or_path"):
        raise HarnessError(path, f"{P0}.model.name_or_path", "missing; the job must name its base model")
    kwargs = model.get("model_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise HarnessError(path, f"{P0}.model.model_kwargs", "must be a mapping")
    quantize = bool(model.get("quantize", False))
    return {
        "name_or_path": str(model["name_or_path"]),
        "arch": arch,
        "quantize": quantize,
        "qtype": str(model.get("qtype", "qfloat8")),
        # UNVERIFIED default: assumed to follow `quantize` when absent.
        "quantize_te": bool(model.get("quantize_te", quantize)),
        "qtype_te": str(model.get("qtype_te", "qfloat8")),
        "layer_offloading": bool(model.get("layer_offloading", False)),
        "low_vram": bool(model.get("low_vram", False)),
        "model_kwargs": {
            **kwargs,
            "train_high_noise": bool(kwargs.get("train_high_noise", True)),
            "train_low_noise": bool(kwargs.get("train_low_noise", True)),
        },
    }


def _job_name(path: Path, raw: dict, proc: dict) -> str:
    """The name is the output sub-folder and the checkpoint prefix (§2.1, docs/parity)."""
    name = proc.get("name") or raw["config"].get("name")
    if not name:
        raise HarnessError(path, "config.name", "missing; ai-toolkit needs it for the output folder and file names")
    return str(name)


def _trigger(value: Any) -> str | None:
    """An empty trigger is the same as none: ai-toolkit only injects a truthy trigger."""
    if value is None or value == "":
        return None
    return str(value)


def _steps(path: Path, train: dict) -> int | None:
    """train.steps labels the after-training render; None when the job does not say."""
    steps = train.get("steps")
    if steps is None:
        return None
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise HarnessError(path, f"{P0}.train.steps", f"must be a whole number >= 0, got {steps!r}")
    return steps
