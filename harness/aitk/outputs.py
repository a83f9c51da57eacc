"""Find the previews in an ai-toolkit output folder and pair each with its settings and LoRA (§1.8, §2, docs/parity).

The file name is the only record of which step and sample a preview belongs to, so pairing follows
ai-toolkit's naming exactly: ``<time>__<step:09d>_<i>.<ext>`` and ``<name>_<step:09d>_{high,low}_noise`` (or one
combined ``<name>_<step:09d>`` file with ``split_multistage_loras: false``; :func:`checkpoint_formats`).
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

from harness.aitk.history import UnseenRound, plan_merge_history, scheduled_steps
from harness.aitk.job import P0, AitkJob, load_job
from harness.aitk.overrides import Overrides, pair_for
from harness.aitk.samples import UNREPRODUCIBLE, expand_samples, merge_decision
from harness.errors import HarnessError
from harness.fsutil import file_kind
from harness.spec import LoraPair, PreviewJob, SampleSpec

PREVIEW_RE = re.compile(r"^(?P<time>\d+)__(?P<step>\d{9,})_(?P<index>\d+)\.(?P<ext>webp|jpg|jpeg|png)$", re.I)
SIDES = ("high", "low")
PICKLE_SUFFIXES = {".pt", ".pth", ".ckpt", ".bin", ".pkl"}  # never opened: unpickling runs code


@dataclass(frozen=True)
class FoundPreview:
    """One preview file and what its name says about it."""

    path: Path
    time: int
    step: int
    index: int


def scan_previews(samples_dir: Path) -> list[FoundPreview]:
    """Preview files directly in ``samples/`` (``.tmp``/``.thumbs`` are staging and thumbnails, not previews)."""
    found = []
    for p in sorted(samples_dir.iterdir()):
        m = PREVIEW_RE.match(p.name)
        if m and p.is_file():
            found.append(FoundPreview(p, int(m["time"]), int(m["step"]), int(m["index"])))
    return sorted(found, key=lambda f: (f.step, f.index, f.time, f.path.name))


def discover(output_dir: str | Path, job: AitkJob | None = None, case: str | None = None,
             lora_dir: str | Path | None = None, overrides: Overrides | None = None) -> list[PreviewJob]:
    """Every preview in the output folder, paired with its effective sample settings, checkpoint and merge history.

    ``lora_dir`` is where the checkpoints live when they are not next to the previews: a case keeps a
    copy of the previews but only references the (large) LoRA files in the original output folder.
    ``overrides`` ({step: {side: path}}) are fp32 LoRA files to use in place of a step's checkpoint.
    """
    out = Path(output_dir)
    if not out.is_dir():
        raise HarnessError(out, None, "output folder not found; give <training_folder>/<job name>")
    loras = Path(lora_dir) if lora_dir is not None else out
    if not loras.is_dir():
        raise HarnessError(loras, None, "LoRA folder not found; give the job's output folder that holds the checkpoints")
    job = job if job is not None else load_job(out / "config.yaml")
    samples_dir = out / "samples"
    if not samples_dir.is_dir():
        raise HarnessError(samples_dir, None, "no samples/ folder: this job rendered no previews (or the wrong folder was given)")
    rounds = _rounds(job)
    groups: dict[tuple[int, int], list[FoundPreview]] = defaultdict(list)
    for f in scan_previews(samples_dir):
        groups[(f.step, f.index)].append(f)
    jobs = []
    for (step, index), renders in sorted(groups.items()):
        for k, found in enumerate(renders):
            jobs.append(_pair(out, loras, job, rounds, found, k, len(renders), case or out.name, overrides))
    unseen = unseen_rounds(loras, job, rounds["sample"], {step for step, _ in groups}, overrides)
    return _with_job_version(plan_merge_history(jobs, job.train_steps, unseen), job_aitk_version(loras, job))


def unseen_rounds(loras: Path, job: AitkJob, specs: list[SampleSpec], seen: set[int],
                  overrides: Overrides | None = None) -> list[UnseenRound]:
    """The merged rounds the config's schedule ran whose previews are gone: each still left residue (§8.2)."""
    merged, _why = merge_decision(job, specs)
    if not (merged and specs):
        return []
    found = []
    for step in scheduled_steps(job):
        if step == 0 or step in seen:
            continue
        lora, reason = _lora_for(loras, job, step)
        lora, reason, _saved = pair_for(overrides, step, lora, reason, expected_sides(job))
        if reason:
            reason += " (and its previews are gone: the config's schedule says it sampled there)"
        found.append(UnseenRound(step, float(specs[0].network_multiplier), lora, reason))
    return found


def job_aitk_version(loras: Path, job: AitkJob) -> dict | None:
    """The ai-toolkit version the job's earliest checkpoint records, or None: a step-0 preview has no LoRA of its own,
    so this is the evidence which sampler ai-toolkit used for it (``{"version", "file"}``)."""
    named = re.compile(rf"^{re.escape(job.name)}(_LoRA)?(_(?P<step>\d{{9}}))?(_high_noise|_low_noise)?\.safetensors$")
    found = sorted((int(m["step"]) if m["step"] else float("inf"), p.name)
                   for p in loras.iterdir() if (m := named.match(p.name)) and file_kind(p) is None)
    for _step, name in found:
        try:
            version = lora_software_version(loras / name)
        except HarnessError:  # a broken checkpoint is reported by the preview that uses it
            continue
        if version:
            return {"version": version, "file": name}
    return None


def _with_job_version(jobs: list[PreviewJob], version: dict | None) -> list[PreviewJob]:
    return [replace(j, extra={**j.extra, "job_aitk_version": version}) for j in jobs] if version else jobs


def _rounds(job: AitkJob) -> dict[str, list[SampleSpec]]:
    """Sample lists per sampling round type; ``first_sample`` only renders at label 0 (§1.8)."""
    rounds = {"sample": expand_samples(job, "sample")}
    if job.first_sample is not None:
        rounds["first_sample"] = expand_samples(job, "first_sample")
    return rounds


def _round_at(job: AitkJob, rounds: dict, step: int, index: int, k: int) -> str:
    """Which round the k-th render with label (step, index) came from: at step 0 first_sample renders first."""
    if step != 0 or "first_sample" not in rounds:
        return "sample"
    baseline = not (job.train.get("skip_first_sample") or job.train.get("disable_sampling"))
    order = ["first_sample"] + (["sample"] if baseline else [])
    having = [r for r in order if index < len(rounds[r])] or ["sample"]
    return having[min(k, len(having) - 1)]


def _pair(out: Path, loras: Path, job: AitkJob, rounds: dict, f: FoundPreview, k: int, n: int,
          case: str, overrides: Overrides | None = None) -> PreviewJob:
    """Build one PreviewJob; missing inputs make it unreproducible rather than failing the whole run."""
    round_name = _round_at(job, rounds, f.step, f.index, k)
    specs = rounds[round_name]
    if f.index < len(specs):
        spec = specs[f.index]
    else:
        spec = _placeholder(f.index, f"{round_name} lists only {len(specs)} samples but the file name says index "
                                     f"{f.index}; the config does not match this output folder")
    lora, lora_reason = _lora_for(loras, job, f.step)
    lora, lora_reason, saved = pair_for(overrides, f.step, lora, lora_reason, expected_sides(job))
    merged, merge_reason = merge_decision(job, specs)
    raw = out / "samples_raw" / (f.path.stem + ".npy")
    return PreviewJob(
        case=case,
        golden=f.path,
        step=f.step,
        index=f.index,
        sample=spec,
        lora=lora,
        merged=merged and lora is not None,
        label_note=_label_note(job, f.step, k, n, round_name),
        unreproducible=_combine(spec.unreproducible, lora_reason),
        broken=broken_checkpoint(loras, job, f.step),
        golden_raw=raw if raw.is_file() else None,
        extra={"time": f.time, "round": round_name, "merge_reason": merge_reason, "lora_missing": lora_reason,
               "merge_multiplier": float(specs[0].network_multiplier) if merged else None},
        lora_saved=saved,
    )


def _placeholder(index: int, reason: str) -> SampleSpec:
    """A spec for a preview whose settings are unknown; it carries the reason and is never rendered."""
    return SampleSpec(index=index, prompt="", negative_prompt="", seed=0, width=0, height=0, num_frames=0,
                      guidance_scale=0.0, sample_steps=0, network_multiplier=1.0, fps=0, ctrl_img=None,
                      unreproducible=UNREPRODUCIBLE + reason)


def _combine(*reasons: str | None) -> str | None:
    """One sentence listing every reason, so the report shows them all."""
    parts = [r[len(UNREPRODUCIBLE):] if r.startswith(UNREPRODUCIBLE) else r for r in reasons if r]
    return UNREPRODUCIBLE + "; ".join(parts) if parts else None


def _label_note(job: AitkJob, step: int, k: int, n: int, round_name: str) -> str:
    """Explain repeated labels; the file name alone cannot tell renders with the same label apart."""
    if n == 1:
        return ""
    note = f"render {k + 1} of {n} with this label (ordered by time)"
    if step == 0 and job.first_sample is not None:
        return f"{note}; this one is from the {round_name} round"
    if job.train_steps is not None and step == job.train_steps:
        return f"{note}; the after-training render repeats the last step label"
    return f"{note}; the run was resumed or repeated and rendered this label again"


def expected_sides(job: AitkJob) -> tuple[str, ...]:
    """Which expert LoRA files a checkpoint has: one per trained stage (§2.5)."""
    kw = job.model.get("model_kwargs", {})
    sides = tuple(s for s in SIDES if kw.get(f"train_{s}_noise", True))
    return sides or SIDES


def splits_loras(job: AitkJob) -> bool:
    """``network.split_multistage_loras`` (ai-toolkit's default True): one file per expert, else one combined file."""
    return bool(job.network.get("split_multistage_loras", True))


def checkpoint_formats(out: Path, job: AitkJob, step: int | None) -> list[tuple[dict[str, Path], bool]]:
    """Every name ai-toolkit may have saved a step's LoRA under, the job's own format first: ``(files, combined)``.

    ``save()`` names a LoRA ``<name>[_LoRA][_<step:09d>].safetensors`` (``_LoRA`` when an embedding or adapter is
    trained alongside; no step for the final save) and Wan 2.2's ``save_lora`` splits it into ``_high_noise`` /
    ``_low_noise`` files unless ``split_multistage_loras`` is false (§2.5)."""
    suffix = "" if step is None else f"_{step:09d}"
    sides = expected_sides(job)

    def files(stem: str, combined: bool) -> dict[str, Path]:
        return {s: out / (f"{stem}.safetensors" if combined else f"{stem}_{s}_noise.safetensors") for s in sides}

    order = (False, True) if splits_loras(job) else (True, False)  # the job's own format first
    return [(files(stem, combined), combined) for combined in order
            for stem in (f"{job.name}{suffix}", f"{job.name}_LoRA{suffix}")]


def _lora_for(out: Path, job: AitkJob, step: int) -> tuple[LoraPair | None, str | None]:
    """Checkpoint for a preview label, or the reason it cannot be had. Step 0 is the untrained baseline."""
    found = _found_checkpoint(out, job, step)
    if found is not None:
        return _pair_files(*found, step)
    if step == 0:
        return None, None
    if job.train_steps is not None and step == job.train_steps:
        names = ", ".join(sorted({p.name for p in checkpoint_formats(out, job, None)[0][0].values()}))
        return None, f"the final checkpoint ({names}) is missing"
    return None, _missing_reason(job, step)


def _found_checkpoint(out: Path, job: AitkJob, step: int) -> tuple[dict[str, Path], bool] | None:
    """The first format with a file for this label (the un-numbered final save for the last step), or None."""
    if step == 0:
        return None
    labels = [step] + ([None] if job.train_steps is not None and step == job.train_steps else [])
    return next(((files, combined) for label in labels for files, combined in checkpoint_formats(out, job, label)
                 if any(os.path.lexists(p) for p in files.values())), None)


def broken_checkpoint(out: Path, job: AitkJob, step: int) -> str | None:
    """The error line for a checkpoint path that exists but is no file (a folder, a FIFO, a symlink loop): broken
    input, not a deleted checkpoint. Never opens the path (a FIFO would block)."""
    found = _found_checkpoint(out, job, step)
    for path in dict.fromkeys(found[0].values()) if found else ():
        kind = file_kind(path)
        if kind not in (None, "missing"):
            return HarnessError(path, f"LoRA for step {step}", f"is {kind}, not a regular file; give the .safetensors "
                                "file ai-toolkit saved").line()
    return None


def _pair_files(files: dict[str, Path], combined: bool, step: int) -> tuple[LoraPair | None, str | None]:
    """A LoraPair when every expected side exists; a half checkpoint cannot reproduce the preview."""
    missing = [p.name for p in files.values() if not p.is_file()]
    if missing:
        return None, f"the checkpoint for step {step} is incomplete: {', '.join(missing)} is missing"
    return LoraPair(high=files.get("high"), low=files.get("low"), combined=combined), None


def _missing_reason(job: AitkJob, step: int) -> str:
    """Say why no checkpoint exists for a step in any format, as specifically as the config allows."""
    save_every = job.save.get("save_every")
    if isinstance(save_every, int) and save_every > 0 and step % save_every:
        return (f"no checkpoint was saved for step {step} ({P0}.save.save_every={save_every}), "
                "so the LoRA this preview used was never written")
    keep = job.save.get("max_step_saves_to_keep")
    keep_txt = f"={keep}" if keep is not None else ""
    return (f"checkpoint for step {step} was deleted (max_step_saves_to_keep{keep_txt} keeps only the newest "
            f"checkpoints; no file for the step exists in any format ai-toolkit writes: {job.name}_{step:09d}"
            f"_{{high,low}}_noise.safetensors or {job.name}_{step:09d}.safetensors), so the LoRA this preview used is "
            "gone")


def lora_metadata(path: str | Path) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file, read from its JSON header without loading tensors."""
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise HarnessError(path, None, "pickle checkpoints are refused (loading one can execute code); "
                                       "convert it to .safetensors")
    try:
        with path.open("rb") as fh:
            head = fh.read(8)
            if len(head) != 8:
                raise ValueError("shorter than the 8-byte header length")
            (size,) = struct.unpack("<Q", head)
            if size > 100_000_000:
                raise ValueError(f"header length {size} is implausible")
            header = json.loads(fh.read(size).decode("utf-8"))
    except FileNotFoundError:
        raise HarnessError(path, None, "LoRA file not found") from None
    except IsADirectoryError:
        raise HarnessError(path, None, "is a folder, not a LoRA file; give the .safetensors file") from None
    except (ValueError, UnicodeDecodeError, OSError) as exc:
        raise HarnessError(path, None, f"not a safetensors file ({exc}); give the .safetensors LoRA ai-toolkit saved") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return dict(meta) if isinstance(meta, dict) else {}


def lora_software_version(path: str | Path) -> str | None:
    """The ai-toolkit version that wrote the LoRA (``software`` metadata, §8.4), or None when not recorded."""
    software = lora_metadata(path).get("software")
    if not software:
        return None
    try:
        info = json.loads(software)
    except (TypeError, ValueError):
        return None
    if not isinstance(info, dict) or info.get("version") is None:
        return None
    return str(info["version"])


def saved_steps(out: Path, job: AitkJob) -> list[int]:
    """Steps with a numbered checkpoint in the folder (any side), ascending: what ``render --like`` can pick from."""
    pattern = re.compile(rf"^{re.escape(job.name)}_(\d{{9,}})_(?:high|low)_noise\.safetensors$")
    return sorted({int(m.group(1)) for p in Path(out).glob("*.safetensors") if (m := pattern.match(p.name))})


def checkpoint_for(out: Path, job: AitkJob, step: int | None) -> tuple[LoraPair | None, str | None]:
    """The LoRA pair a render at ``step`` uses (0: none, the untrained base; None: the final, un-numbered save), or the
    reason there is none, by the same pairing rules as the previews."""
    if step is None:
        found = next(((files, combined) for files, combined in checkpoint_formats(Path(out), job, None)
                      if any(os.path.lexists(p) for p in files.values())), None)
        return _pair_files(*found, job.train_steps or 0) if found else (None, "no final checkpoint in the folder")
    return _lora_for(Path(out), job, step)


SAVED_DTYPES = {"F32": "fp32", "BF16": "bf16", "F16": "fp16", "F64": "fp64"}


def lora_saved_dtype(path: str | Path) -> str | None:
    """The dtype the LoRA's tensors were saved in (``save.dtype``, §8.5): ``fp32``, ``bf16``, ``fp16`` (several
    joined by ``+``), read from the header; None for a file without tensors. Sampling used fp32 weights."""
    from safetensors import safe_open

    lora_metadata(path)  # the same one-line errors for a missing, pickled or foreign file
    with safe_open(str(path), framework="numpy") as handle:
        found = {handle.get_slice(key).get_dtype() for key in handle.keys()}
    return "+".join(sorted(SAVED_DTYPES.get(d, d.lower()) for d in found)) or None
