"""Which earlier sampling rounds changed the base weights a preview was rendered on (§8.2, docs/parity).

On the merged path ai-toolkit merges the LoRA into the bf16 base for a sampling round and merges it out afterwards
with a second bf16 rounding: the base keeps a residue for the rest of the process, and every later round renders on
it. So a preview's base is the pristine one replayed through every earlier merged round of its process, each with
its own checkpoint; a round whose checkpoint is gone makes the preview unreproducible (never silently approximated).

The previews in ``samples/`` say which rounds ran and in what order (their time stamps). A step label rendered
again marks a new process (a resumed or repeated run loads the pristine base again), except the after-training
render repeating the last label. The step-0 round of a fresh run has an all-zero LoRA up, which skips both merges.

A round whose previews were deleted still left its residue: in a run that was never resumed, the config's schedule
(:func:`scheduled_steps`) names the rounds without previews, and they join the history from their checkpoints.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace

from harness.aitk.job import AitkJob
from harness.aitk.samples import UNREPRODUCIBLE
from harness.spec import LoraPair, MergeRound, PreviewJob


@dataclass(frozen=True)
class UnseenRound:
    """A merged round the schedule says ran but whose previews are not in ``samples/``: its checkpoint, or why not."""

    step: int
    multiplier: float
    lora: LoraPair | None
    missing: str | None


def scheduled_steps(job: AitkJob) -> list[int]:
    """The labels a fresh run of ``job`` sampled at, as ai-toolkit's training loop decides them: the baseline at 0
    (unless ``skip_first_sample``), every ``sample_every`` steps from ``sample_start_step`` inside the loop (never at
    its first step), and the after-training render at ``train.steps``; none with ``disable_sampling``."""
    steps, every = job.train_steps, job.sample.get("sample_every")
    if job.train.get("disable_sampling") or not steps:
        return []
    start = int(job.sample.get("sample_start_step") or 0)
    looped = [s for s in range(1, steps) if every and s % int(every) == 0 and s >= start]
    return ([] if job.train.get("skip_first_sample") else [0]) + looped + [steps]


def plan_merge_history(jobs: list[PreviewJob], train_steps: int | None,
                       unseen: list[UnseenRound] = ()) -> list[PreviewJob]:
    """``jobs`` (one output folder's previews) each with the merged rounds before its own, or unreproducible.

    ``unseen`` rounds (no previews left) join the history by step, but only when the previews show one process: after
    a resume nobody can tell which process a deleted round ran in."""
    rounds = _rounds(jobs)
    timeline = [(step, again, members, None) for (step, _name, again), members in rounds]
    if not any(again and step != train_steps for step, again, _members, _ghost in timeline):  # one process
        timeline = sorted(timeline + [(r.step, 0, [], r) for r in unseen], key=lambda e: e[0])  # stable: time order kept
    planned: dict[int, tuple[tuple, tuple]] = {}
    history: list[MergeRound] = []
    missing: list[tuple[int, str]] = []
    for step, again, members, unseen_round in timeline:
        if again and step != train_steps:
            history, missing = [], []
        for member in members:
            planned[id(member)] = (tuple(history), tuple(missing))
        merged = unseen_round or _merged_round(members[0])
        if merged is None or step == 0:  # unmerged, or the untrained LoRA: no residue
            continue
        if merged.lora is not None:
            history.append(MergeRound(step=step, multiplier=merged.multiplier, lora=merged.lora))
        else:
            missing.append((step, merged.missing))
    return [_planned(job, *planned[id(job)]) for job in jobs]


def _merged_round(first: PreviewJob) -> UnseenRound | None:
    """The round ``first`` belongs to as a merge, or None when it ran unmerged."""
    multiplier = first.extra.get("merge_multiplier")
    if multiplier is None:
        return None
    return UnseenRound(first.step, float(multiplier), first.lora,
                       first.extra.get("lora_missing") or "its checkpoint is missing")


def _rounds(jobs: list[PreviewJob]) -> list[tuple[tuple, list[PreviewJob]]]:
    """Sampling rounds in the order they ran, keyed (step, round type, how often that label was rendered before)."""
    seen: Counter = Counter()
    rounds: dict[tuple, list[PreviewJob]] = {}
    for job in sorted(jobs, key=lambda j: (j.extra.get("time", 0), j.step, j.index)):
        label = (job.step, job.index, job.extra.get("round", "sample"))
        rounds.setdefault((job.step, label[2], seen[label]), []).append(job)
        seen[label] += 1
    return sorted(rounds.items(), key=lambda item: min(j.extra.get("time", 0) for j in item[1]))


def _planned(job: PreviewJob, history: tuple, missing: tuple) -> PreviewJob:
    if not missing:
        return replace(job, merge_history=history)
    steps = ", ".join(str(step) for step, _ in missing)
    many = len(missing) > 1
    reason = (f"the merged sampling round{'s' if many else ''} at step{'s' if many else ''} {steps} left bf16 residue "
              f"in the base weights this preview was rendered on (ai-toolkit's merge-out does not restore them, §8.2) "
              f"and {'their checkpoints are' if many else 'its checkpoint is'} gone ({missing[0][1]}); keep the "
              "checkpoint of every sampling step to reproduce later merged previews")
    unreproducible = f"{job.unreproducible}; {reason}" if job.unreproducible else UNREPRODUCIBLE + reason
    return replace(job, merge_history=history, unreproducible=unreproducible)
