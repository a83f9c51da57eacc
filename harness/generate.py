"""New prompts rendered the way ai-toolkit would have: golden-less ``PreviewTarget``s for ``render`` and ``serve``.

Two kinds of input become the same targets (``PreviewJob.golden`` is None):

* prompts from the command line or a prompts file are **sample items** of an ai-toolkit job and are expanded by
  ai-toolkit's own rules (:mod:`harness.aitk.samples`: trigger word, inline ``--`` flags, /8 then /16 snapping, 4k+1
  frames). With ``--like JOB_DIR`` the job is a real training job: its base model, quantization, golden stack,
  trigger word, sample block and one preview's item (``--like-sample``, seed included) are inherited, so a new
  prompt renders as that preview would have. Without it, a stand-in job with the seed service's defaults.
* a runcomfy-style request keeps its schema's semantics (:mod:`harness.sources.runcomfy`).

Either way the sampler is ai-toolkit's exact one (profile ``auto``: from the LoRA's ai-toolkit version) and the LoRA
is merged or not by ai-toolkit's rule for a sampling round (§8.2): merged when the round has one multiplier and the
model is not quantized. Per-expert multipliers that differ can only be applied unmerged. Only YAML-level modules
are imported here: the CPU pin comes after this and before torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from .aitk.job import AitkJob, load_job
from .aitk.samples import CLASS_DEFAULTS, ITEM_KEYS, UNREPRODUCIBLE, expand_samples, merge_decision
from .errors import HarnessError
from .paths import PathMap
from .spec import LoraPair, PreviewJob, PreviewTarget, SampleSpec
from .stack import stack_beside

# The seed service's defaults (harness.sources.runcomfy.DEFAULTS) as an ai-toolkit sample block, for prompts that
# have no training job to inherit from.
STAND_IN_BLOCK = {"width": 1024, "height": 1024, "num_frames": 41, "fps": 16, "sample_steps": 25,
                  "guidance_scale": 4.0, "neg": "", "seed": 42, "walk_seed": False, "network_multiplier": 1.0}
BLOCK_KEYS = tuple(CLASS_DEFAULTS) + ("samples",)
ITEM_FIELDS = ITEM_KEYS + ("prompt", "ctrl_img", "seed")
SIDES = ("high", "low")
PREFIX = "config.process[0].sample."
COMMAND_LINE = Path("command line")
DEVICE_LAYOUT = "rng_layout_from_device"  # extra key: no job says where ai-toolkit rendered, so this device decides


@dataclass
class Basis:
    """What new prompts render on: a training job's model and LoRA (``--like``), or a stand-in from the flags."""

    job: AitkJob  # whose sample block and rules expand the prompts
    lora: LoraPair | None
    step: int
    model_name: str = ""
    golden_stack: dict | None = None
    rng_layout: str | None = None  # None: this render device's own layout
    base_item: dict = field(default_factory=dict)  # the preview item new prompts inherit (--like-sample)
    round_specs: list = field(default_factory=list)  # the job's own round, for the merge decision
    search_dirs: list = field(default_factory=list)
    source: Path | None = None

    @property
    def case(self) -> str:
        return self.job.name


# ---------------------------------------------------------------- the basis


def like_job(job_dir: str | Path, sample: int = 0, step: int | None = None) -> Basis:
    """``--like JOB_DIR``: the job's settings, preview ``sample``'s item, and the checkpoint of ``step`` (default: the
    final save, else the newest numbered one; 0: the untrained base)."""
    from .aitk.outputs import checkpoint_for, saved_steps

    folder = Path(job_dir)
    job = load_job(folder / "config.yaml")
    specs = expand_samples(job)
    items = _job_items(job)
    if not 0 <= sample < len(items):
        raise HarnessError(folder / "config.yaml", "--like-sample", f"{sample} is not a sample of this job (it has "
                                                                    f"{len(items)}: 0..{len(items) - 1})")
    if step is None and checkpoint_for(folder, job, None)[0] is None:  # no final save: the newest numbered one
        steps = saved_steps(folder, job)
        if not steps:
            raise HarnessError(folder, "--lora-step", "the folder has no LoRA checkpoint; give --lora-step 0 for the "
                                                      "base model")
        step = steps[-1]
    lora, reason = checkpoint_for(folder, job, step)
    if reason:
        raise HarnessError(folder, "--lora-step", reason[len(UNREPRODUCIBLE):] if reason.startswith(UNREPRODUCIBLE)
                           else reason)
    stack = stack_beside(folder)
    base_item = {**items[sample], "seed": specs[sample].seed}  # the seed the preview used, walk_seed and all
    return Basis(job=job, lora=lora, step=(job.train_steps or 0) if step is None else step,
                 model_name=str(job.model.get("name_or_path", "")), golden_stack=stack, rng_layout=job.render_device,
                 base_item=base_item, round_specs=specs, search_dirs=[folder], source=folder)


def _job_items(job: AitkJob) -> list[dict]:
    """The raw sample items (a legacy ``prompts`` list as items)."""
    if job.sample.get("samples") is None and isinstance(job.sample.get("prompts"), list):
        return [{"prompt": p} for p in job.sample["prompts"]]
    return [dict(item) for item in job.sample.get("samples") or []]


def stand_in(lora_high: str | None = None, lora_low: str | None = None, trigger_word: str | None = None,
             file: Path = COMMAND_LINE) -> Basis:
    """No training job: a bf16 model (``--base-model``), the LoRA files given, the seed service's defaults."""
    from .sources.runcomfy import STEP_UNKNOWN, step_of

    files = {side: Path(p) for side, p in (("high", lora_high), ("low", lora_low)) if p}
    for side, path in files.items():
        if not path.is_file():
            raise HarnessError(path, f"--lora-{side}", "LoRA file not found")
    lora = LoraPair(high=files.get("high"), low=files.get("low")) if files else None
    model = {"name_or_path": "", "arch": "wan22_14b_i2v", "quantize": False, "quantize_te": False}
    job = AitkJob(path=file, name="render", arch="wan22_14b_i2v", trigger_word=trigger_word or None, model=model,
                  train_dtype="bf16", train_steps=None, sample=dict(STAND_IN_BLOCK), first_sample=None, save={},
                  network={}, training_folder=None)
    return Basis(job=job, lora=lora, step=step_of(files.values()) if files else STEP_UNKNOWN,
                 search_dirs=[file.parent] if file != COMMAND_LINE else [])


# ---------------------------------------------------------------- prompts: ai-toolkit sample items


def read_prompts_file(path: str | Path) -> tuple[dict, list[dict]]:
    """A prompts file: text (one prompt a line), or YAML/JSON: a list of prompts/items, or a sample block
    ``{width: ..., samples: [...]}`` with ai-toolkit's keys. Returns (block settings, items)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise HarnessError(path, None, f"cannot read the prompts file ({exc})") from None
    if path.suffix.lower() == ".txt":
        return {}, [{"prompt": line.strip()} for line in text.splitlines() if line.strip()]
    try:
        data = yaml.safe_load(text)  # JSON is YAML
    except yaml.YAMLError as exc:
        raise HarnessError(path, None, f"neither YAML nor JSON ({str(exc).splitlines()[0]})") from None
    block, items = ({}, data) if isinstance(data, list) else (dict(data or {}), None)
    if items is None:
        _known(path, block, BLOCK_KEYS, "")
        items = block.pop("samples", None)
    if not isinstance(items, list) or not items:
        raise HarnessError(path, "samples", "give a non-empty list of prompts (strings or {prompt, ctrl_img, ...})")
    out = []
    for i, item in enumerate(items):
        item = {"prompt": item} if isinstance(item, str) else item
        if not isinstance(item, dict):
            raise HarnessError(path, f"samples[{i}]", "must be a prompt string or a mapping with `prompt`")
        _known(path, item, ITEM_FIELDS, f"samples[{i}].")
        out.append(_relative_to(dict(item), path.parent))
    return _relative_to(block, path.parent), out


def _known(path: Path, mapping: dict, known: tuple, where: str) -> None:
    for key in mapping:
        if key not in known:
            raise HarnessError(path, f"{where}{key}", f"unknown key; known here: {', '.join(known)}")


def _relative_to(item: dict, folder: Path) -> dict:
    """A relative ``ctrl_img`` is relative to the file that names it, not to the current folder."""
    ctrl = item.get("ctrl_img")
    if isinstance(ctrl, str) and ctrl and not Path(ctrl).expanduser().is_absolute():
        item["ctrl_img"] = str(folder / ctrl)
    return item


def prompt_targets(basis: Basis, items: list[dict], settings: dict | None = None, block: dict | None = None,
                   multipliers: dict | None = None, path_map: PathMap | None = None,
                   file: Path = COMMAND_LINE) -> list[PreviewTarget]:
    """Sample items (``prompt`` at least) rendered on ``basis``; ``settings`` (the flags) beat every item's values,
    ``block`` (a prompts file's block) beats the job's; ``multipliers``: per expert, for the unmerged path. Errors
    name ``file`` (where the prompts came from) and ``prompts[i]``."""
    block, settings = dict(block or {}), {k: v for k, v in (settings or {}).items() if v is not None}
    inherited = {k: v for k, v in basis.base_item.items() if k not in block and k != "prompt"}
    if "walk_seed" in block:
        inherited.pop("seed", None)
    full = [{**inherited, **item, **settings} for item in items]
    job = replace(basis.job, path=file, sample={**basis.job.sample, **block, "samples": full})
    try:
        specs = expand_samples(job)
    except HarnessError as exc:
        raise _renamed(exc) from None
    for spec in specs:
        _check_renderable(file, spec)
    merged, why = _merge_rule(job, basis.round_specs + specs, basis.lora, multipliers)
    return [_target(basis, _preview(basis, spec, merged, why, multipliers), path_map) for spec in specs]


def _check_renderable(file: Path, spec: SampleSpec) -> None:
    """What ai-toolkit could not render (or not reproducibly) is an error for a new prompt, naming the fix."""
    where = f"prompts[{spec.index}]"
    if not spec.ctrl_img:
        raise HarnessError(file, f"{where}.ctrl_img", "no control image; give --ctrl-img or ctrl_img (I2V needs one)")
    if spec.seed == -1:
        raise HarnessError(file, f"{where}.seed", "-1 draws a random seed that nothing records; give a seed")
    if spec.unreproducible:
        raise HarnessError(file, where, spec.unreproducible[len(UNREPRODUCIBLE):])


def _renamed(exc: HarnessError) -> HarnessError:
    """ai-toolkit's config field names point into the job; for new prompts, at the prompt or the setting."""
    where = (exc.field or "").replace(PREFIX + "samples[", "prompts[").replace(PREFIX, "")
    return HarnessError(exc.file, where or None, exc.message)


def _merge_rule(job: AitkJob, specs: list[SampleSpec], lora: LoraPair | None, multipliers: dict | None):
    """ai-toolkit's merge decision for the round; two different per-expert multipliers force the unmerged path."""
    if lora is None:
        return False, "no LoRA"
    if multipliers is not None:
        present = {multipliers[side] for side in SIDES if getattr(lora, side) is not None}
        if len(present) > 1:
            return False, f"unmerged: per-expert multipliers {multipliers} differ"
        specs = [replace(s, network_multiplier=present.pop()) for s in specs]
    return merge_decision(job, specs)


def _preview(basis: Basis, spec: SampleSpec, merged: bool, why: str, multipliers: dict | None) -> PreviewJob:
    extra = {"merge_reason": why, "render": True, "ext": str(basis.job.sample.get("ext", "jpg")).lstrip(".")}
    if multipliers is not None:
        extra["multipliers"] = dict(multipliers)
    return PreviewJob(case=basis.case, golden=None, step=basis.step, index=spec.index, sample=spec, lora=basis.lora,
                      merged=merged, extra=extra)


def _target(basis: Basis, preview: PreviewJob, path_map: PathMap | None) -> PreviewTarget:
    model = basis.job.model
    if basis.rng_layout is None:
        preview.extra[DEVICE_LAYOUT] = True
    gaps = [r for r in [basis.job.unsupported_reason()] if r]
    return PreviewTarget(preview=preview, model_name=basis.model_name, config_file=Path(basis.job.path),
                         search_dirs=list(basis.search_dirs), path_map=path_map or PathMap(), model_block=model,
                         threads=(basis.golden_stack or {}).get("threads"), rng_layout=basis.rng_layout or "cuda",
                         known_gaps=gaps, golden_stack=basis.golden_stack, source=basis.source)


# ---------------------------------------------------------------- requests: the seed service's schema


def request_targets(data: Any, basis: Basis, *, file: object, base_dir: Path, path_map: PathMap | None = None,
                    cache_dir: Path | None = None, roots=None, case: str = "request") -> list[PreviewTarget]:
    """A runcomfy-style request (already parsed JSON) on ``basis``'s model; its own LoRAs, multipliers and settings.

    A ``golden`` in the request is ignored here: rendering is not comparing (``wan-parity run`` compares)."""
    from .sources.runcomfy import parse_request

    jobs = parse_request(data, file=file, base_dir=base_dir, path_map=path_map, cache_dir=cache_dir, case=case,
                         roots=roots)
    for job in jobs:
        if job.unreproducible:
            raise HarnessError(file, f"prompts[{job.index}].seed", job.unreproducible[len(UNREPRODUCIBLE):])
    lora = jobs[0].lora
    multipliers = jobs[0].extra["multipliers"]
    merged, why = _merge_rule(basis.job, [j.sample for j in jobs], lora, multipliers)
    on = replace(basis, lora=lora, step=jobs[0].step)
    return [_target(on, replace(job, golden=None, merged=merged, extra={
        "merge_reason": why, "render": True, "multipliers": multipliers, "notes": job.extra.get("notes", [])}),
        path_map) for job in jobs]


def read_request(path: str | Path) -> Any:
    """The request file's JSON (validation is :func:`request_targets`')."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise HarnessError(path, None, f"cannot read the request ({exc})") from None
    except json.JSONDecodeError as exc:
        raise HarnessError(path, f"line {exc.lineno} column {exc.colno}", f"JSON does not parse: {exc.msg}") from None


def on_device(targets: list[PreviewTarget], device_type: str) -> list[PreviewTarget]:
    """Targets no job placed render with this device's RNG layout, as ai-toolkit on this machine would."""
    for target in targets:
        if target.preview.extra.get(DEVICE_LAYOUT):
            target.rng_layout = device_type
    return targets
