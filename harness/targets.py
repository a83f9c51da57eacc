"""Turn what the user points at (ai-toolkit output folder, case file, folder of cases, runcomfy JSON) into targets.

This is the one place that knows the kinds of input; everything downstream sees ``PreviewTarget``s.
"""

from __future__ import annotations

from pathlib import Path

from .errors import HarnessError
from .paths import PathMap
from .spec import PreviewTarget
from .stack import stack_beside


def from_output_dir(output_dir: Path, path_map: PathMap | None = None,
                    lora_overrides: dict | None = None) -> list[PreviewTarget]:
    """An ai-toolkit output folder used directly: its config.yaml plus samples/ and the checkpoints beside them
    (``lora_overrides``: fp32 files to use instead of some steps' checkpoints)."""
    from .aitk.job import load_job
    from .aitk.outputs import discover

    config = Path(output_dir) / "config.yaml"
    job = load_job(config)
    golden_stack = stack_beside(output_dir)
    return [
        PreviewTarget(preview=p, model_name=str(job.model.get("name_or_path", "")), config_file=config,
                      search_dirs=[Path(output_dir)], path_map=path_map or PathMap(), model_block=job.model,
                      rng_layout=job.render_device, known_gaps=_gaps(job), golden_stack=golden_stack,
                      threads=(golden_stack or {}).get("threads"), source=Path(output_dir))
        for p in discover(output_dir, job, overrides=lora_overrides)
    ]


def _gaps(job) -> list[str]:
    reason = job.unsupported_reason()
    return [reason] if reason else []


def from_case(case_file: Path, path_map: PathMap | None = None, defaults: dict | None = None,
              lora_overrides: dict | None = None) -> list[PreviewTarget]:
    """A committed case: goldens from golden_dir, LoRAs from lora_dir, tolerances and profile from the case.

    ``defaults``: values for the case keys the file leaves out (the pytest ini; see harness.options).
    ``lora_overrides``: the run's --lora-override, on top of the case's own ``lora_overrides``.
    """
    from .aitk.job import load_job
    from .case import load_case
    from .metrics import Thresholds

    case = load_case(case_file).with_defaults(defaults)
    config = case.checked_golden_path() / "config.yaml"
    job = load_job(config)
    combined = case.combined_map(path_map)
    thresholds = Thresholds(**case.tolerances) if case.tolerances else None
    model_name = case.base_model_path() or str(job.model.get("name_or_path", ""))
    return [
        PreviewTarget(preview=p, model_name=model_name, config_file=Path(case_file), search_dirs=[case.golden_path()],
                      profile=case.profile, thresholds=thresholds, path_map=combined, model_block=job.model,
                      threads=case.threads or (case.golden_stack or {}).get("threads"), vae=case.vae_path(),
                      device=case.device, rng_layout=job.render_device, known_gaps=_gaps(job),
                      golden_stack=case.golden_stack, source=Path(case_file))
        for p in case.preview_jobs(path_map, lora_overrides)
    ]


def from_runcomfy(request: Path, path_map: PathMap | None = None, cache_dir: Path | None = None) -> list[PreviewTarget]:
    """A runcomfy-style request: no job config, so the base model comes from --base-model."""
    from .sources.runcomfy import load_request

    return [
        PreviewTarget(preview=p, model_name="", config_file=Path(request), search_dirs=[Path(request).parent],
                      profile=p.extra.get("profile", "runcomfy"), path_map=path_map or PathMap(), source=Path(request))
        for p in load_request(request, path_map=path_map, cache_dir=cache_dir)
    ]


def collect(target: str | Path, path_map: PathMap | None = None, cache_dir: Path | None = None,
            lora_overrides: dict | None = None) -> list[PreviewTarget]:
    """Dispatch on what the path is; anything else is a one-line error naming it."""
    from .case import find_case_files, is_aitk_output_dir, looks_like_output_dir
    from .sources.runcomfy import is_runcomfy_request

    path = Path(target)
    if not path.exists():
        raise HarnessError(path, None, "not found; give a case file, a folder of case files, an ai-toolkit output "
                                       "folder or a runcomfy request JSON")
    if path.is_dir() and (is_aitk_output_dir(path) or looks_like_output_dir(path)):
        return from_output_dir(path, path_map, lora_overrides)  # a half output folder says what is missing or unreadable
    if path.is_file() and is_runcomfy_request(path):
        return from_runcomfy(path, path_map, cache_dir)
    case_files = find_case_files(path)
    if not case_files:
        raise HarnessError(path, None, "no case files here (YAML with schema: wan-parity/case@1); for an ai-toolkit "
                                       "output folder give the folder holding config.yaml and samples/")
    return [t for case_file in case_files for t in from_case(case_file, path_map, lora_overrides=lora_overrides)]


def with_golden_stack(targets: list[PreviewTarget], stack: dict | None) -> list[PreviewTarget]:
    """``--golden-stack``: the goldens' stack where they carry none (a case's or a folder's own record wins)."""
    if stack is None:
        return targets
    for target in targets:
        if target.golden_stack is None:
            target.golden_stack = stack
            target.threads = target.threads or stack.get("threads")
    return targets


def select(targets: list[PreviewTarget], steps: set[int] | None, samples: set[int] | None,
           shard_of: tuple[int, int] | None = None) -> list[PreviewTarget]:
    """The ``--steps``/``--samples`` filters, then ``--shard I/N`` (of what the filters kept)."""
    kept = [t for t in targets
            if (steps is None or t.preview.step in steps) and (samples is None or t.preview.index in samples)]
    return kept if shard_of is None else shard(kept, *shard_of)


def unique(targets: list[PreviewTarget]) -> list[PreviewTarget]:
    """Each preview once. The same preview reached twice (a case file and its folder) runs once; two different
    previews under one name (two cases or output folders called the same) would overwrite each other's results and
    renders in --out, so that is refused before anything renders."""
    from .layout import result_file

    seen: dict[Path, PreviewTarget] = {}
    kept = []
    for target in targets:
        slot = result_file(Path("."), target)
        other = seen.get(slot)
        if other is None:
            seen[slot] = target
            kept.append(target)
        elif _golden_identity(other) != _golden_identity(target):
            raise HarnessError(target.source, "name", f"preview {target.key} is also a preview of {other.source}: "
                               "their results and renders would overwrite each other in --out; give one of them "
                               "another name (the case's `name:`, or `wan-parity import --name`)")
    return kept


def _golden_identity(target: PreviewTarget):
    golden = target.preview.golden
    return Path(golden).resolve() if golden else (target.source, target.preview.index)


def shard_group(target: PreviewTarget) -> tuple:
    """Previews that share loaded weights (one base model, one LoRA pair) stay in one shard.

    Built from names, not absolute paths, so every machine of a matrix computes the same groups.
    """
    lora = target.preview.lora
    files = () if lora is None else tuple(Path(p).name if p else "" for p in (lora.high, lora.low))
    return (target.model_name, target.preview.case, files)


def shard(targets: list[PreviewTarget], index: int, count: int) -> list[PreviewTarget]:
    """Shard ``index`` of ``count`` (1-based): whole groups, balanced by preview count, the same on every machine.

    Groups are dealt largest first (ties by group key) to the shard with the fewest previews so far (ties: lowest
    number), so the split depends only on the selected previews: every shard must be given the same targets and
    filters. The union of all shards is the selection, each preview exactly once.
    """
    groups: dict[tuple, list[PreviewTarget]] = {}
    for target in targets:
        groups.setdefault(shard_group(target), []).append(target)
    loads = [0] * count
    mine: set[tuple] = set()
    for key in sorted(groups, key=lambda k: (-len(groups[k]), repr(k))):
        chosen = min(range(count), key=lambda i: (loads[i], i))
        loads[chosen] += len(groups[key])
        if chosen == index - 1:
            mine.add(key)
    return [t for t in targets if shard_group(t) in mine]
