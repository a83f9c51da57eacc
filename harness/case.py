"""Case files: one ai-toolkit job's previews frozen next to everything needed to re-render them.

One cohesive thing: the case-file format (its schema, reading, per-field validation, and the previews it yields);
importing an output folder as a case is :mod:`harness.case_import`.

A nightly run must not depend on a training box that keeps deleting old checkpoints and previews, so a
case keeps *copies* of the small things (previews, lossless frames, config, control images) and only
*references* the big ones (LoRA checkpoints, base model). The file is YAML, read with ``safe_load``::

    schema: wan-parity/case@1        # required; bumped on incompatible changes
    name: oracle_case_a              # required; letters, digits, . _ - (used in report paths)
    golden_dir: ../golden/oracle_case_a   # required; relative to this file (or absolute): a copy of the
                                     # ai-toolkit output layout: config.yaml, samples/, samples_raw/, ctrl/
    lora_dir: /data/out/oracle_case_a     # optional; where the checkpoints are (default: golden_dir);
                                     # relative to this file or absolute; path_map applies to it
    ctrl_images:                     # optional; control image path as written in the config -> copy in
      /workspace/oracle/assets/ctrl/ctrl_0.png: ctrl_0.png   # golden_dir/ctrl/
    base_model: null                 # optional; overrides the config's model.name_or_path
    vae: null                        # optional; VAE folder override
    path_map: {/workspace/oracle: /work/shared/oracle}  # optional; OLD: NEW, on top of the CLI's --path-map
    profile: auto                    # auto | a name in harness.render.profiles.PROFILES
    threads: 2                       # optional; CPU threads for the render (bit-exactness depends on it)
    tolerances: {psnr_min: 40.0, ssim_min: 0.99, require_bit_exact: auto}   # optional; every key optional;
                                     # require_bit_exact: auto (default: when the stacks match) | true | false
    golden_stack:                    # optional; the stack that rendered the goldens (`wan-parity fingerprint`):
      {device: cpu, torch: 2.14.1, threads: 2, aten_cpu_capability: avx2, onednn_max_isa: AVX2}  # any subset,
                                     # or the path of a stack file (relative to this file)
    device: auto                          # auto|cpu|cuda: where to render (CPU goldens only match CPU renders)
    lora_overrides:                  # optional; fp32 LoRA files to use instead of a step's checkpoint (the job
      250: {high: x_high.safetensors, low: x_low.safetensors}   # saved bf16); relative to this file or absolute
    steps: [0, 2]                    # optional; only previews with these step labels
    samples: [0]                     # optional; only these sample indices
    notes: free text                 # optional

``base_model``/``vae``: absolute paths and hub ids are used as written; a relative value is taken relative
to the case file when something exists there.

How these keys rank against the command line and the pytest ini is decided in :mod:`harness.options`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable

import yaml

from harness.aitk.outputs import discover
from harness.aitk.overrides import checked_file, combined
from harness.aitk.samples import UNREPRODUCIBLE
from harness.errors import HarnessError
from harness.fsutil import write_text_atomic
from harness.limits import check_threads, finite_number, parse_yaml, read_yaml_mapping
from harness.paths import PathMap, resolve_ctrl_img
from harness.render.profiles import profile_choices  # the registry alone: no torch
from harness.stack import check_stack, load_stack
from harness.spec import PreviewJob

SCHEMA = "wan-parity/case@1"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
REQUIRED = ("schema", "name", "golden_dir")
OPTIONAL = ("lora_dir", "ctrl_images", "base_model", "vae", "path_map", "profile", "device", "threads", "tolerances",
            "golden_stack", "steps", "samples", "notes", "lora_overrides")
TOLERANCE_KEYS = ("psnr_min", "ssim_min", "require_bit_exact")
DEVICES = ("auto", "cpu", "cuda")
CASE_SUFFIXES = (".yaml", ".yml")
HEADER = f"# wan-parity case file ({SCHEMA}); schema documented in harness/case.py\n"


@dataclass
class Case:
    """A parsed case file. Path-like fields are kept as written; the methods resolve them."""

    name: str
    golden_dir: str
    path: Path | None = None  # the case file; relative fields are relative to its folder (cwd while unsaved)
    lora_dir: str | None = None
    ctrl_images: dict[str, str] = field(default_factory=dict)
    base_model: str | None = None
    vae: str | None = None
    path_map: dict[str, str] = field(default_factory=dict)
    profile: str = "auto"
    device: str = "auto"  # where to render: a CPU-rendered golden only matches a CPU render
    threads: int | None = None
    tolerances: dict[str, float] = field(default_factory=dict)
    golden_stack: dict | None = None  # the numerics-deciding stack that rendered the goldens (harness.stack)
    steps: list[int] | None = None
    samples: list[int] | None = None
    notes: str = ""
    lora_overrides: dict[int, dict[str, str]] = field(default_factory=dict)  # step -> {side: path as written}

    @property
    def base(self) -> Path:
        """The folder relative paths are resolved against (cwd for a case never saved)."""
        return self.path.parent if self.path is not None else Path.cwd()

    def golden_path(self) -> Path:
        """The golden folder on this machine."""
        return _under(self.base, self.golden_dir)

    def checked_golden_path(self) -> Path:
        """The golden folder, or an error naming this case file's ``golden_dir`` when it is not one."""
        golden = self.golden_path()
        if not is_aitk_output_dir(golden):
            raise HarnessError(self.path, "golden_dir", f"{golden} is not a golden folder (needs config.yaml and samples/); "
                                                     "re-import the output folder")
        return golden

    def combined_map(self, cli_map: PathMap | Iterable[str] | None = None) -> PathMap:
        """This case's path map with the CLI's --path-map on top (the command line wins for the same OLD)."""
        local = {old: str(_under(self.base, new)) for old, new in self.path_map.items()}  # NEW relative to the case
        return combine_maps(cli_map, local)

    def lora_path(self, cli_map: PathMap | Iterable[str] | None = None) -> Path:
        """Where the checkpoints are: lora_dir (mapped) or, without one, the golden folder itself."""
        if self.lora_dir is None:
            return self.golden_path()
        return _under(self.base, self.combined_map(cli_map).map(self.lora_dir))

    def base_model_path(self) -> str | None:
        """base_model as the resolver expects it (see the module docstring for relative values)."""
        return _model_ref(self.base, self.base_model)

    def vae_path(self) -> str | None:
        """vae as the resolver expects it."""
        return _model_ref(self.base, self.vae)

    def with_defaults(self, defaults: dict[str, Any] | None) -> Case:
        """This case with ``defaults`` (the pytest ini's values, by case key) in the keys it leaves out.

        The file wins over the ini (harness.options): a thread count its golden_stack records counts as set, and
        the ini's path map sits under the file's own. Relative ini paths are taken from the working directory.
        """
        changes: dict[str, Any] = {}
        for key, value in (defaults or {}).items():
            if key == "path_map":
                ini = {old: os.path.abspath(new) for old, new in PathMap(list(value)).pairs}
                changes[key] = {**ini, **self.path_map}
            elif key in ("base_model", "vae"):
                if getattr(self, key) is None:
                    changes[key] = _model_ref(Path.cwd(), value)
            elif key in ("profile", "device"):
                if getattr(self, key) == "auto":
                    changes[key] = value
            elif key == "threads":
                if self.threads is None and not (self.golden_stack or {}).get("threads"):
                    changes[key] = value
            else:
                raise ValueError(f"{key!r} is not a case key with a default")
        return replace(self, **changes) if changes else self

    def preview_jobs(self, path_map: PathMap | Iterable[str] | None = None,
                     lora_overrides: dict | None = None) -> list[PreviewJob]:
        """Discover the golden previews, pair them with the referenced LoRAs (``lora_overrides``, the command
        line's, on top of the case's own) and the copied control images."""
        golden = self.checked_golden_path()
        pmap = self.combined_map(path_map)
        loras = self.lora_path(path_map)
        if not loras.is_dir():
            raise HarnessError(self.path, "lora_dir", f"{loras} does not exist; add a path_map entry (here or "
                                                      "--path-map OLD=NEW) pointing at the folder with the checkpoints")
        own = {step: {side: _under(self.base, path) for side, path in sides.items()}
               for step, sides in self.lora_overrides.items()}
        jobs = discover(golden, case=self.name, lora_dir=loras, overrides=combined(own, lora_overrides))
        self._check_ctrl_images(golden)
        return [self._finish(j, golden, pmap) for j in jobs if self._wanted(j)]

    def _check_ctrl_images(self, golden: Path) -> None:
        """Every ``ctrl_images`` entry names a control image of the config and a file in ``golden_dir/ctrl/``: a typo
        here is a broken case (exit 2), not a preview that cannot be reproduced."""
        from harness.aitk.job import load_job
        from harness.aitk.samples import ctrl_image_users
        from harness.fsutil import file_kind

        named = ctrl_image_users(load_job(golden / "config.yaml"))
        for original, copy_name in self.ctrl_images.items():
            field_ = f"ctrl_images.{original}"
            if original not in named:
                raise HarnessError(self.path, field_, "no sample of the config names this control image (a typo?); "
                                   f"the config names: {', '.join(sorted(named)) or 'none'}")
            if Path(copy_name).name != copy_name or copy_name in (".", ".."):
                raise HarnessError(self.path, field_, f"{copy_name!r} must be a file name inside golden_dir/ctrl/")
            kind = file_kind(golden / "ctrl" / copy_name)
            if kind is not None:
                raise HarnessError(self.path, field_, f"{golden / 'ctrl' / copy_name} is {kind}; fix the name or "
                                   "re-import the output folder")

    def _wanted(self, job: PreviewJob) -> bool:
        """The steps/samples filters; absent means everything."""
        return ((self.steps is None or job.step in self.steps)
                and (self.samples is None or job.index in self.samples))

    def _finish(self, job: PreviewJob, golden: Path, pmap: PathMap) -> PreviewJob:
        """Point the sample at the copied control image; an image found nowhere makes the preview unreproducible."""
        extra = {**job.extra, "profile": self.profile, "case_file": str(self.path) if self.path else None}
        ctrl = job.sample.ctrl_img
        if not ctrl:
            return replace(job, extra=extra)
        local, reason = self._ctrl_local(ctrl, golden, pmap)
        if local is None:
            return replace(job, extra=extra, unreproducible=_join_reasons(job.unreproducible, reason))
        extra["ctrl_img_config"] = ctrl
        return replace(job, sample=replace(job.sample, ctrl_img=str(local)), extra=extra)

    def _ctrl_local(self, ctrl: str, golden: Path, pmap: PathMap) -> tuple[Path | None, str | None]:
        """The copy in ctrl/ when the case has one, else the mapped original; (None, reason) when neither exists."""
        if ctrl in self.ctrl_images:  # checked to be a file by _check_ctrl_images
            return golden / "ctrl" / self.ctrl_images[ctrl], None
        try:
            found, _note = resolve_ctrl_img(ctrl, pmap, [golden / "ctrl"])
        except HarnessError as exc:
            return None, f"the control image {ctrl!r} was not copied into the case and is not found now ({exc.message})"
        return found, None


def combine_maps(cli_map: PathMap | Iterable[str] | None, case_map: dict[str, str]) -> PathMap:
    """Merge the case's map with the command line's; the command line wins for the same OLD prefix.

    A case stores the map of the machine it was imported on; the user running it elsewhere must be able to
    override that without editing the committed file.
    """
    entries: dict[str, str] = {old.rstrip("/") or "/": new for old, new in case_map.items()}
    if isinstance(cli_map, PathMap):
        entries.update(cli_map.pairs)
    elif cli_map:
        entries.update(PathMap(list(cli_map)).pairs)
    return PathMap([f"{old}={new}" for old, new in entries.items()])


def _under(base: Path, value: str | os.PathLike) -> Path:
    """A path relative to the case file's folder unless it is absolute."""
    p = Path(value).expanduser()
    return p if p.is_absolute() else Path(os.path.normpath(base / p))


def _model_ref(base: Path, value: str | None) -> str | None:
    """Absolute paths and hub ids stay as written; an existing relative path is made absolute."""
    if value is None or Path(value).is_absolute():
        return value
    candidate = base / value
    return str(candidate) if candidate.exists() else value


def _join_reasons(first: str | None, second: str) -> str:
    """Append a reason to an existing unreproducible sentence, so the report shows all of them."""
    if not first:
        return UNREPRODUCIBLE + second
    return f"{first}; {second}"


# ---------------------------------------------------------------- loading and validation


def load_case(path: str | Path) -> Case:
    """Read and validate a case file; every problem names the file and the field."""
    path = Path(path)
    data = _read(path)
    _check_keys(path, data)
    schema = data["schema"]
    if schema != SCHEMA:
        raise HarnessError(path, "schema", f"is {schema!r}; this harness reads {SCHEMA!r}")
    v = _Validator(path)
    return Case(
        path=path,
        name=v.name(data["name"]),
        golden_dir=v.string(data["golden_dir"], "golden_dir"),
        lora_dir=v.opt_string(data.get("lora_dir"), "lora_dir"),
        ctrl_images=v.str_dict(data.get("ctrl_images"), "ctrl_images"),
        base_model=v.opt_string(data.get("base_model"), "base_model"),
        vae=v.opt_string(data.get("vae"), "vae"),
        path_map=v.str_dict(data.get("path_map"), "path_map"),
        profile=v.profile(data.get("profile", "auto")),
        device=v.device(data.get("device", "auto")),
        threads=v.threads(data.get("threads")),
        tolerances=v.tolerances(data.get("tolerances")),
        golden_stack=v.golden_stack(data.get("golden_stack")),
        steps=v.index_list(data.get("steps"), "steps"),
        samples=v.index_list(data.get("samples"), "samples"),
        notes=v.opt_string(data.get("notes"), "notes") or "",
        lora_overrides=v.lora_overrides(data.get("lora_overrides")),
    )


def _read(path: Path) -> dict:
    """safe_load the file; a parse error names the line."""
    if not path.is_file():
        raise HarnessError(path, None, "case file not found")
    return read_yaml_mapping(path, "a case .yaml", f"not a case file (top level must be a mapping with schema: {SCHEMA})")


def _check_keys(path: Path, data: dict) -> None:
    """Unknown keys are typos until proven otherwise: a silently ignored filter would test the wrong thing."""
    for key in data:
        if key not in REQUIRED + OPTIONAL:
            raise HarnessError(path, str(key), f"unknown key; a case file has: {', '.join(REQUIRED + OPTIONAL)}")
    for key in REQUIRED:
        if data.get(key) is None:
            raise HarnessError(path, key, "missing (required)")


class _Validator:
    """Type checks for case fields; each raises HarnessError(case_file, field, message)."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, field_: str, message: str):
        raise HarnessError(self.path, field_, message)

    def string(self, value: Any, field_: str) -> str:
        if not isinstance(value, str) or not value.strip():
            self.fail(field_, f"must be a non-empty string, got {value!r}")
        return value

    def opt_string(self, value: Any, field_: str) -> str | None:
        return None if value is None else self.string(value, field_)

    def name(self, value: Any) -> str:
        if not isinstance(value, str) or not valid_name(value):
            self.fail("name", f"{value!r} is not a valid case name (letters, digits, '.', '_', '-'; no path separators or '..')")
        return value

    def str_dict(self, value: Any, field_: str) -> dict[str, str]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(field_, "must be a mapping OLD: NEW")
        for k, v in value.items():
            if not isinstance(k, str) or not k or not isinstance(v, str) or not v:
                self.fail(f"{field_}.{k}", f"entries must map a non-empty string to a non-empty string, got {v!r}")
        return dict(value)

    def profile(self, value: Any) -> str:
        if value not in profile_choices():
            self.fail("profile", f"{value!r} is not a sampler profile; choose one of {', '.join(profile_choices())}")
        return value

    def device(self, value: Any) -> str:
        if value not in DEVICES:
            self.fail("device", f"must be one of {', '.join(DEVICES)}, got {value!r}")
        return value

    def threads(self, value: Any) -> int | None:
        return None if value is None else check_threads(value, self.path, "threads")

    def tolerances(self, value: Any) -> dict[str, float]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail("tolerances", f"must be a mapping with {' and/or '.join(TOLERANCE_KEYS)}")
        out = {}
        for k, v in value.items():
            if k not in TOLERANCE_KEYS:
                self.fail(f"tolerances.{k}", f"unknown tolerance; known: {', '.join(TOLERANCE_KEYS)}")
            if k == "require_bit_exact":
                if not isinstance(v, bool) and v != "auto":
                    self.fail(f"tolerances.{k}", f"must be auto, true or false, got {v!r}")
                out[k] = v
                continue
            if isinstance(v, str) or not isinstance(v, (int, float)):
                self.fail(f"tolerances.{k}", f"must be a number, got {v!r}")
            v = finite_number(v, self.path, f"tolerances.{k}")  # a NaN would pass every comparison and break JSON
            if k == "ssim_min" and not -1.0 <= v <= 1.0:
                self.fail(f"tolerances.{k}", f"SSIM lies in [-1, 1], got {v!r}")
            out[k] = v
        return out

    def golden_stack(self, value: Any) -> dict | None:
        """A mapping of stack keys, or the path of a stack file (relative to the case file)."""
        if value is None:
            return None
        if isinstance(value, str):
            try:
                return load_stack(_under(self.path.parent, value))
            except HarnessError as exc:
                self.fail("golden_stack", f"{value!r}: {exc.line()}")
        return check_stack(value, self.path)

    def lora_overrides(self, value: Any) -> dict[int, dict[str, str]]:
        """{step: {high|low: file}}; each file must exist (relative to the case file)."""
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail("lora_overrides", "must be a mapping STEP: {high: FILE, low: FILE}")
        for step, sides in value.items():
            if isinstance(step, bool) or not isinstance(step, int) or step < 0:
                self.fail(f"lora_overrides.{step}", "the key must be a step label (a whole number >= 0)")
            if not isinstance(sides, dict) or not sides or set(sides) - {"high", "low"}:
                self.fail(f"lora_overrides.{step}", "must be a mapping with high and/or low")
            for side, path in sides.items():
                try:
                    checked_file(_under(self.path.parent, self.string(path, f"lora_overrides.{step}.{side}")))
                except ValueError as exc:
                    self.fail(f"lora_overrides.{step}.{side}", str(exc))
        return {step: dict(sides) for step, sides in value.items()}

    def index_list(self, value: Any, field_: str) -> list[int] | None:
        if value is None:
            return None
        if not isinstance(value, list) or not value:
            self.fail(field_, "must be a non-empty list of whole numbers (omit the key to keep everything)")
        for i, v in enumerate(value):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                self.fail(f"{field_}[{i}]", f"must be a whole number >= 0, got {v!r}")
        return list(value)


def valid_name(name: str) -> bool:
    """A case name becomes a file and folder name: no separators, no '..', nothing hidden."""
    return bool(NAME_RE.match(name)) and ".." not in name


# ---------------------------------------------------------------- saving


def case_to_dict(case: Case) -> dict:
    """The YAML mapping of a case; optional fields at their defaults are left out to keep files short."""
    data: dict[str, Any] = {"schema": SCHEMA, "name": case.name, "golden_dir": case.golden_dir}
    optional = {
        "lora_dir": case.lora_dir, "ctrl_images": case.ctrl_images or None, "base_model": case.base_model,
        "vae": case.vae, "path_map": case.path_map or None, "profile": case.profile,
        "device": None if case.device == "auto" else case.device, "threads": case.threads,
        "tolerances": case.tolerances or None, "golden_stack": case.golden_stack, "steps": case.steps, "samples": case.samples, "notes": case.notes or None,
        "lora_overrides": case.lora_overrides or None,
    }
    data.update({k: v for k, v in optional.items() if v is not None})
    return data


def save_case(case: Case, path: str | Path) -> Path:
    """Write the case atomically; relative paths are rebased so they still point at the same folders."""
    path = Path(path)
    data = case_to_dict(case)
    if case.path is not None:  # an in-memory case's relative paths already mean "relative to the new file"
        old_base, new_base = case.base.resolve(), path.parent.resolve()
        rebase = (lambda p: os.path.relpath(old_base / p, new_base) if not Path(p).is_absolute() and
                  old_base != new_base else p)
        for key in ("golden_dir", "lora_dir"):
            if data.get(key):
                data[key] = rebase(data[key])
        if data.get("lora_overrides"):
            data["lora_overrides"] = {step: {side: rebase(p) for side, p in sides.items()}
                                      for step, sides in data["lora_overrides"].items()}
    text = HEADER + yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=False)
    write_text_atomic(path, text)
    case.path = path
    case.golden_dir, case.lora_dir = data["golden_dir"], data.get("lora_dir")
    case.lora_overrides = data.get("lora_overrides") or {}
    return path


# ---------------------------------------------------------------- finding


def is_aitk_output_dir(path: str | Path) -> bool:
    """An ai-toolkit job output folder: config.yaml and samples/ side by side."""
    p = Path(path)
    return (p / "config.yaml").is_file() and (p / "samples").is_dir()


def looks_like_output_dir(path: str | Path) -> bool:
    """A folder with only one of config.yaml and samples/ (or a config.yaml that is not a file): meant as an output
    folder, so the error should say what is missing rather than "no case files here"."""
    p = Path(path)
    return os.path.lexists(p / "config.yaml") or (p / "samples").is_dir()


def is_case_file(path: str | Path) -> bool:
    """A YAML file whose top level declares a wan-parity case schema (cheap check, no validation)."""
    p = Path(path)
    if p.suffix.lower() not in CASE_SUFFIXES or not p.is_file():
        return False
    try:
        text = p.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return False
    try:
        data = parse_yaml(text, p)
    except HarnessError:
        # A case file with a syntax error is still a case file: collecting it reports the error instead of
        # silently dropping the case from a nightly run.
        return "wan-parity/case@" in text
    return isinstance(data, dict) and str(data.get("schema", "")).startswith("wan-parity/case@")


def find_case_files(target: str | Path) -> list[Path]:
    """A case file itself, or the case files directly inside a folder (other YAML files are skipped)."""
    t = Path(target)
    if t.is_file():
        if t.suffix.lower() not in CASE_SUFFIXES:
            raise HarnessError(t, None, "not a case file; give a .yaml case or a folder of them")
        return [t]
    if not t.is_dir():
        raise HarnessError(t, None, "no such case file or folder")
    found = sorted(p for p in t.iterdir() if is_case_file(p))
    if not found:
        raise HarnessError(t, None, f"no case files (YAML with schema: {SCHEMA}) in this folder")
    return found
