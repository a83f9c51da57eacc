"""The run's options: one table for the command line, pytest and case files.

Every option the front ends share is one :class:`Option` in ``OPTIONS``. ``cli.py`` turns the table into the
arguments of ``run``, ``calibrate``, ``diagnose`` and ``selfcheck``; ``pytest_plugin.py`` into ``--parity-<name>``
options with ``parity_<name>`` ini keys; both build what a run uses with :func:`resolve`. A new option is one row.

Precedence, decided here once: **command line > case file > ini > default**.

* A value given on the command line (``--device`` or ``--parity-device``) beats the case file's key of the same
  meaning (``base_model``, ``vae``, ``device``, ``threads``, ``profile``; ``path_map`` per OLD prefix).
* A case file's value beats the pytest ini: an ini value only fills in the keys a case leaves out
  (:meth:`harness.case.Case.with_defaults`); a thread count its ``golden_stack`` records counts as set.
* ``auto`` (device, profile) means "no preference": given anywhere, it never overrides a case's value.
* Options no case file has (``out``, ``offload``, ``ara``, ...): command line > ini > default.
* By nature, ``golden_stack`` only fills in for goldens that carry none, and the ``steps``/``samples`` filters
  combine with a case's own (a preview runs when every filter keeps it).

Only YAML-level modules are imported here: the CPU pin happens before torch starts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping

from .aitk import overrides
from .errors import HarnessError
from .paths import PathMap
from .render.profiles import profile_choices


@dataclass
class RunOptions:
    base_model: str | None = None
    vae: str | None = None
    path_map: PathMap = field(default_factory=PathMap)
    device: str = "auto"
    out: Path | None = None
    save_frames: bool = False
    threads: int | None = None
    profile: str | None = None  # overrides the case's profile
    resume: bool = False
    offload: str = "none"  # none | experts | sequential (identical numerics)
    ara: str | None = None  # local copy of the accuracy recovery adapter a 'uint4|<ara>' job names (--ara PATH)
    lora_overrides: dict = field(default_factory=dict)  # {step: {side: Path}}: fp32 files instead of checkpoints
    lean_lora: bool = True  # the unmerged LoRA path's bit-identical shortcut (render.lora.SharedCast)
    fused_blocks: bool = True  # the Wan block's elementwise chains as bit-identical kernels (render.fused; CUDA)


FLAGS = ("store_true", "toggle")  # options whose value is a boolean
RUN_COMMANDS = ("run", "calibrate", "diagnose", "selfcheck")
PYTEST = "pytest"
EVERYWHERE = (*RUN_COMMANDS, PYTEST)
RENDERING = (*EVERYWHERE, "render", "serve")  # rows new renders share (wan-parity render, wan-parity serve)


# ---------------------------------------------------------------- parsers: text -> value, ValueError(message)


def _text(text: str) -> str:
    if not text.strip():
        raise ValueError("must not be empty")
    return text


def _threads(text: str) -> int:
    """1 .. this machine's CPUs: torch segfaults inside OpenMP on a count like 100000."""
    from .limits import check_threads
    from .errors import HarnessError

    try:
        value = int(text)
    except ValueError:
        value = text
    try:
        return check_threads(value, None, "threads")
    except HarnessError as exc:
        raise ValueError(exc.message) from None


def _int_set(text: str) -> set[int] | None:
    try:
        return {int(part) for part in text.split(",") if part.strip()} or None
    except ValueError:
        raise ValueError(f"{text!r} is not a comma-separated list of integers (e.g. 0,250,500)") from None


def _shard(text: str) -> tuple[int, int]:
    """``I/N``, 1-based as a CI matrix counts (a Kubernetes Indexed Job passes ``$((JOB_COMPLETION_INDEX + 1))/N``)."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"{text!r} is not I/N (e.g. 1/4)") from None
    if count < 1 or not 1 <= index <= count:
        raise ValueError(f"{text!r}: need 1 <= I <= N (e.g. 1/4 .. 4/4)")
    return index, count


def _path_map_entry(text: str) -> str:
    old, sep, new = text.partition("=")
    if not sep or not old.strip() or not new.strip():
        raise ValueError(f"{text!r} is not OLD=NEW (e.g. /workspace/oracle=/data/oracle)")
    return text


def _bool(text: str) -> bool:
    """ini flags: true/false (the command line has only the bare flag)."""
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"must be true or false, got {text!r}")


def _no_preference(value: str) -> str | None:
    """``auto`` never overrides a case's profile: RunOptions keeps None for it."""
    return None if value == "auto" else value


@dataclass(frozen=True)
class Option:
    """One option: ``--<name>`` on the CLI, ``--parity-<name>`` / ini ``parity_<name>`` under pytest."""

    name: str
    help: str  # may name {default} and {choices}
    parse: Callable[[str], Any] = _text
    default: Any = None
    commands: tuple[str, ...] = EVERYWHERE
    field: str | None = None  # the RunOptions field it sets
    to_field: Callable[[Any], Any] | None = None  # value -> that field's value, where they differ
    case_key: str | None = None  # the case-file key the command line overrides and the ini fills in
    choices: Callable[[], tuple[str, ...]] | None = None  # called when used: registries may grow
    action: str | None = None  # "store_true" (a flag), "toggle" (--x / --no-x; default on) or "append" (repeatable)
    metavar: str | None = None
    command_defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # `field` is taken above

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")

    @property
    def ini(self) -> str:
        """The pytest ini key, also the pytest option's dest."""
        return f"parity_{self.dest}"

    def flag(self, command: str) -> str:
        return f"--parity-{self.name}" if command == PYTEST else f"--{self.name}"

    def default_for(self, command: str) -> Any:
        return self.command_defaults.get(command, self.default)

    def help_for(self, command: str) -> str:
        default = self.default_for(command)
        choices = ", ".join(self.choices()) if self.choices else ""
        return self.help.format(default=default, choices=choices)

    def metavar_for(self) -> str | None:
        if self.metavar is None and self.choices:
            return "{" + ",".join(self.choices()) + "}"
        return self.metavar

    def read(self, value: Any, file: object, where: str) -> Any:
        """Text as this option's value (a value argparse already parsed passes); HarnessError(file, where, ...)."""
        if self.action == "append" and not isinstance(value, str):  # the whole list (argparse hands one item)
            return tuple(self.read(item, file, where) for item in value)
        if isinstance(value, str):
            try:
                value = (_bool if self.action in FLAGS else self.parse)(value)
            except ValueError as exc:
                raise HarnessError(file, where, str(exc)) from None
        if self.choices and value not in self.choices():
            raise HarnessError(file, where, f"{value!r} is not one of {', '.join(self.choices())}")
        return value


_OUT_DEFAULTS = {command: Path(f"parity-out/{command}") for command in ("calibrate", "diagnose", "selfcheck", "render",
                                                                        "serve")}

OPTIONS: tuple[Option, ...] = (
    Option("cases", "case file or folder of case files to collect (default: cases/ when no paths are given)",
           commands=(PYTEST,)),
    Option("base-model", "local diffusers Wan 2.2 I2V folder (overrides the job's name_or_path)",
           field="base_model", case_key="base_model", commands=RENDERING),
    Option("vae", "local VAE folder (default: ai-toolkit/wan2.1-vae from the HF cache, else <base>/vae)",
           field="vae", case_key="vae", commands=RENDERING),
    Option("path-map", "rewrite a training-machine path prefix (repeatable)", parse=_path_map_entry,
           default=(), action="append", metavar="OLD=NEW", field="path_map", to_field=lambda v: PathMap(list(v)),
           case_key="path_map", commands=RENDERING),
    Option("device", "cpu, cuda, cuda:N or auto (default)", default="auto", field="device", case_key="device",
           commands=RENDERING),
    Option("threads", "CPU threads (CPU results depend on it; default 2 on CPU)", parse=_threads, field="threads",
           case_key="threads", commands=RENDERING),
    Option("profile", "sampler profile: {choices}", default="auto", choices=profile_choices, metavar="NAME",
           field="profile", to_field=_no_preference, case_key="profile", commands=RENDERING),
    Option("golden-stack", "the stack that rendered the goldens (a `wan-parity fingerprint` file or any subset of "
                           "its keys), for goldens that carry none; pins this CPU to it and decides whether "
                           "exactness is expected", parse=Path, metavar="FILE", commands=RENDERING),
    Option("ara", "local copy of the accuracy recovery adapter a 'uint4|<ara>' job names", field="ara",
           commands=RENDERING),
    Option("lora-override", "fp32 LoRA weights to use instead of step STEP's checkpoint (a dump, or a re-save with "
                            "save.dtype float32; the expert from the name ..._high_noise/_low_noise.safetensors), "
                            "for that preview and the merge history of later ones (repeatable)",
           parse=overrides.checked_entry, default=(), action="append", metavar="STEP=PATH", field="lora_overrides",
           to_field=overrides.from_entries),
    Option("offload", "memory mode, identical numerics: none (all on GPU), experts (active expert only; 80 GB for "
                      "A14B), sequential (block by block; 24 GB cards)", default="none",
           choices=lambda: ("none", "experts", "sequential"), field="offload", commands=RENDERING),
    Option("lean-lora", "unmerged LoRAs: share the fp32 input copy between linears, skip the x1.0 scale and, on CUDA "
                        "with Triton, fuse the tail (the same bits with fewer memory passes; proven on CPU and the "
                        "H200, benchmarks/RESULTS.md); --no-lean-lora takes ai-toolkit's literal path",
           action="toggle", default=True, field="lean_lora", commands=RENDERING),
    Option("fused-blocks", "CUDA with Triton: the Wan block's elementwise chains (adaptive norm, gated residuals, "
                           "rotary embedding) as one kernel each, the same IEEE operations in the same order (no "
                           "effect on CPU; proven on the H200, benchmarks/RESULTS.md); --no-fused-blocks runs "
                           "diffusers' block as it is",
           action="toggle", default=True, field="fused_blocks", commands=RENDERING),
    Option("out", "results, renders and report (default {default}/)", parse=Path, default=Path("parity-out"),
           command_defaults=_OUT_DEFAULTS, field="out", commands=RENDERING),
    Option("json", "also write the results JSON here", parse=Path, metavar="FILE", commands=("run", PYTEST)),
    Option("save-frames", "also save each render losslessly as uint8 .npy (F,H,W,3)", action="store_true",
           default=False, commands=("run", PYTEST, "render", "serve"), field="save_frames"),
    Option("steps", "only these training steps, e.g. 0,250", parse=_int_set),
    Option("samples", "only these sample indices, e.g. 0,2", parse=_int_set),
    Option("shard", "only shard I of N (e.g. 2/4) of the selected previews: whole (base model, LoRA) groups, the "
                    "same split on every machine; merge the shards with `wan-parity report`", parse=_shard,
           metavar="I/N", commands=("run", PYTEST)),
    # CLI only: pytest reruns what it wants to with its own --lf / --sw.
    Option("resume", "skip previews whose result is already in --out", action="store_true", default=False,
           commands=("run",), field="resume"),
)


def options_for(command: str) -> tuple[Option, ...]:
    return tuple(o for o in OPTIONS if command in o.commands)


def by_name(name: str) -> Option:
    return next(o for o in OPTIONS if o.name == name)


@dataclass
class Resolved:
    """What one run uses: the RunOptions, the preview filters, and the ini's case-key defaults."""

    options: RunOptions
    values: dict[str, Any]  # every option's value by dest (json, cases, golden_stack, steps, ...)
    case_defaults: dict[str, Any]  # case key -> ini value, for the keys a case file leaves out

    @property
    def steps(self) -> set[int] | None:
        return self.values.get("steps")

    @property
    def samples(self) -> set[int] | None:
        return self.values.get("samples")

    @property
    def shard(self) -> tuple[int, int] | None:
        return self.values.get("shard")


def _given(value: Any) -> bool:
    return value not in (None, "", [], ())


def resolve(command: str, given: Mapping[str, Any], ini: Mapping[str, Any] | None = None, *,
            ini_file: object = None, **fields) -> Resolved:
    """The one place RunOptions are built, for every front end, by the precedence in the module docstring.

    ``given``: command-line values by dest (text or already parsed; absent/None: not given). ``ini``: pytest ini
    values by dest. ``fields``: RunOptions fields a command sets itself.
    """
    values, case_defaults, run = {}, {}, {}
    for option in options_for(command):
        if _given(given.get(option.dest)):
            value = option.read(given[option.dest], None, option.flag(command))
        elif ini is not None and _given(ini.get(option.dest)):
            raw = ini[option.dest]  # TOML may hand over numbers and booleans: read them as the text they are
            value = option.read(raw if isinstance(raw, (str, list)) else str(raw), ini_file, option.ini)
            if option.case_key:
                case_defaults[option.case_key] = value
                value = option.default_for(command)  # the case decides; the ini only fills in (above)
        else:
            value = option.default_for(command)
        values[option.dest] = value
        if option.field:
            run[option.field] = option.to_field(value) if option.to_field else value
    return Resolved(options=replace(RunOptions(**run), **fields), values=values, case_defaults=case_defaults)
