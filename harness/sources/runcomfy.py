"""A runcomfy ai-toolkit-inference request (JSON) as a case source (§10, docs/parity).

Users compare ai-toolkit previews with what the runcomfy service rendered for the same LoRA, so the
harness must rebuild the *service's* settings, not ai-toolkit's: only ``[trigger]`` is replaced (never
``[name]``), ``--`` flags stay in the prompt text, defaults are 1024x1024, 25 steps, CFG 4.0, 41 frames,
16 fps, ``neg ""``, and an item without a seed gets ``42 + index``. Sizes floor to 16 (no /8 step), frames
become 4k+1 (the latent shape), and each expert has its own LoRA multiplier.

Request shape (runcomfy's own schema; per-prompt values override request-level ones)::

    {"model": "wan22_14b_i2v", "trigger_word": "sks",
     "prompts": [{"prompt": "[trigger] ...", "ctrl_img": "ctrl.png" | "<base64>" | "data:image/png;base64,...",
                  "width": 1024, "height": 1024, "num_frames": 41, "fps": 16, "seed": 42,
                  "sample_steps": 25, "guidance_scale": 4.0, "neg": "", "trigger_word": "...",
                  "golden": "service_output_0.webp"}],
     "loras": [{"path": "job/job_000000500_high_noise.safetensors", "transformer": "high", "network_multiplier": 1.0},
               {"path": "job/job_000000500_low_noise.safetensors", "transformer": "low"}]}

Harness additions, not part of runcomfy's schema: ``prompts[i].golden`` (the service's output to compare;
without it ``PreviewJob.golden`` is None and the job is render-only), and request-level ``width``, ``height``,
``num_frames``, ``fps``, ``seed`` (the base seed), ``sample_steps``, ``guidance_scale``, ``neg`` as shared
defaults. The service ignores request-level values, so a job that used one carries a note saying so.

Relative paths (control images, LoRAs, goldens) are relative to the JSON file, after the path map.
Base64 control images are decoded into ``cache_dir`` (content-addressed ``<sha256>.png`` etc.), because the
renderer reads ``SampleSpec.ctrl_img`` as a file path; pass the case's output folder as ``cache_dir``.
URLs are refused: nothing is downloaded.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterable

from harness.aitk.samples import UNREPRODUCIBLE
from harness.errors import HarnessError
from harness.limits import SEED_MAX, parse_json
from harness.paths import PathMap
from harness.spec import LoraPair, PreviewJob, SampleSpec

MODEL = "wan22_14b_i2v"
PROFILE = "runcomfy"
STEP_UNKNOWN = -1  # PreviewJob.step when the LoRA file names carry no step label
DIVISOR = 16  # runcomfy's resolution_divisor for this model
DEFAULTS = {"width": 1024, "height": 1024, "sample_steps": 25, "guidance_scale": 4.0, "num_frames": 41,
            "fps": 16, "neg": "", "seed": 42}
# (min, max) as runcomfy's request schema enforces them; None = unbounded.
INT_RANGES = {"width": (64, 4096), "height": (64, 4096), "sample_steps": (1, 150), "num_frames": (1, 1000),
              "fps": (1, 120), "seed": (-1, SEED_MAX)}
FLOAT_RANGES = {"guidance_scale": (0.0, 20.0), "network_multiplier": (-2.0, 2.0)}
SETTINGS = ("width", "height", "num_frames", "fps", "seed", "sample_steps", "guidance_scale", "neg")
PROMPT_KEYS = ("prompt", "trigger_word", "ctrl_img", "golden", "sampler", "resolution") + SETTINGS
# Keys the service accepts that do not change a wan22_14b_i2v render.
IGNORED_REQUEST_KEYS = ("hf_token", "kv_cache", "match_target_res")
REQUEST_KEYS = ("model", "prompts", "loras", "trigger_word") + IGNORED_REQUEST_KEYS + SETTINGS
LORA_KEYS = ("path", "transformer", "network_multiplier")
SIDES = ("high", "low")
STEP_RE = re.compile(r"_(\d{9,})_(?:high|low)_noise\.safetensors$")
DATA_URL_RE = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(?:;[^,;]*)*),(?P<data>.*)$", re.S)
BASE64_RE = re.compile(r"^[A-Za-z0-9+/=_\-\s]+$")
MAX_PATH_LEN = 4096
URLSAFE = str.maketrans("-_", "+/")
MAGIC = ((b"\x89PNG\r\n\x1a\n", ".png"), (b"\xff\xd8\xff", ".jpg"), (b"GIF87a", ".gif"), (b"GIF89a", ".gif"),
         (b"BM", ".bmp"))


def default_cache_dir() -> Path:
    """Where decoded control images go when the caller gives no folder (content-addressed, safe to share)."""
    return Path(tempfile.gettempdir()) / "wan-parity-ctrl"


def is_runcomfy_request(path: str | Path) -> bool:
    """A .json file with ``model`` and a ``prompts`` list: cheap detection for the CLI, no validation."""
    p = Path(path)
    if p.suffix.lower() != ".json" or not p.is_file():
        return False
    try:
        data = parse_json(p.read_text(encoding="utf-8"), p)
    except (HarnessError, UnicodeDecodeError, OSError):
        return False
    return isinstance(data, dict) and "model" in data and isinstance(data.get("prompts"), list)


def load_request(path: str | Path, *, path_map: PathMap | Iterable[str] | None = None,
                 cache_dir: str | Path | None = None, case: str | None = None) -> list[PreviewJob]:
    """Read a request JSON and return one PreviewJob per prompt, in request order."""
    path = Path(path)
    if not path.is_file():
        raise HarnessError(path, None, "request file not found")
    try:
        data = parse_json(path.read_text(encoding="utf-8"), path)
    except UnicodeDecodeError:
        raise HarnessError(path, None, "not a text file; give the request JSON") from None
    return parse_request(data, file=path, base_dir=path.parent, path_map=path_map, cache_dir=cache_dir,
                         case=case or path.stem)


def parse_request(data: Any, *, file: object, base_dir: str | Path, path_map: PathMap | Iterable[str] | None = None,
                  cache_dir: str | Path | None = None, case: str = "request",
                  roots: Iterable[str | Path] | None = None) -> list[PreviewJob]:
    """A request already parsed from JSON (the HTTP API's body): the same validation as a request file.

    ``file`` names the request in errors; relative paths resolve against ``base_dir``. With ``roots``, every local
    path (LoRA, control image, golden) must lie inside one of them after following symlinks: a server must not be
    steered to other files on its machine.
    """
    pmap = path_map if isinstance(path_map, PathMap) else PathMap(list(path_map or ()))
    ctx = _Context(file, Path(base_dir), pmap, Path(cache_dir) if cache_dir else default_cache_dir(), roots)
    return _parse_request(data, ctx, case)


class _Context:
    """The file being read and how its paths resolve; every error goes through it so it names the file."""

    def __init__(self, file: object, base_dir: Path, pmap: PathMap, cache_dir: Path, roots=None):
        self.file, self.base_dir, self.pmap, self.cache_dir = file, base_dir, pmap, cache_dir
        self.roots = None if roots is None else [os.path.realpath(r) for r in roots]

    def fail(self, field: str | None, message: str):
        raise HarnessError(self.file, field, message)

    def local_path(self, text: str, field: str) -> Path:
        """Path map first, then relative to the request file; refused outside the allowed roots (if any)."""
        mapped = Path(self.pmap.map(text)).expanduser()
        path = mapped if mapped.is_absolute() else Path(os.path.normpath(self.base_dir / mapped))
        if self.roots is not None:
            real = os.path.realpath(path)
            if not any(real == root or real.startswith(root.rstrip(os.sep) + os.sep) for root in self.roots):
                self.fail(field, f"{text!r} is outside the allowed folder(s); give a path under "
                                 f"{', '.join(self.roots)} (or the image as base64)")
        return path


def _parse_request(data: Any, ctx: _Context, case: str) -> list[PreviewJob]:
    """Validate the whole request first, so one run reports the first bad field rather than half a result."""
    if not isinstance(data, dict):
        ctx.fail(None, "not a runcomfy request (top level must be an object with model, prompts, loras)")
    _check_keys(ctx, data, REQUEST_KEYS, "")
    if data.get("model") != MODEL:
        ctx.fail("model", f"is {data.get('model')!r}; only {MODEL!r} requests are supported")
    prompts = data.get("prompts")
    if not isinstance(prompts, list) or not prompts:
        ctx.fail("prompts", "must be a non-empty list of prompt objects")
    lora, multipliers, step = _loras(ctx, data.get("loras"))
    defaults, extended = _request_defaults(ctx, data)
    trigger = _opt_str(ctx, data.get("trigger_word"), "trigger_word")
    return [_job(ctx, item, i, defaults, extended, trigger, lora, multipliers, step, case)
            for i, item in enumerate(prompts)]


def _check_keys(ctx: _Context, obj: dict, known: tuple[str, ...], where: str) -> None:
    """Unknown keys are refused: the service would silently ignore a misspelt setting, hiding the mismatch."""
    for key in obj:
        if key not in known:
            ctx.fail(f"{where}{key}", f"unknown key; known here: {', '.join(known)}")


def _request_defaults(ctx: _Context, data: dict) -> tuple[dict, list[str]]:
    """Service defaults overridden by request-level values (a harness extension, listed so jobs can say so)."""
    defaults, extended = dict(DEFAULTS), []
    for key in SETTINGS:
        if data.get(key) is not None:
            defaults[key] = _setting(ctx, key, data[key], key)
            extended.append(key)
    return defaults, extended


def _setting(ctx: _Context, key: str, value: Any, field: str) -> Any:
    """Type and range check one setting the way runcomfy's request schema does."""
    if key == "neg":
        return _opt_str(ctx, value, field, allow_empty=True)
    if key in INT_RANGES:
        return _bounded(ctx, value, field, INT_RANGES[key], whole=True)
    return _bounded(ctx, value, field, FLOAT_RANGES[key], whole=False)


def _bounded(ctx: _Context, value: Any, field: str, bounds: tuple, whole: bool) -> int | float:
    """A number within the service's limits (bools rejected: JSON true is not 1 here)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if whole:
        ok = ok and (isinstance(value, int) or value.is_integer())
    if not ok:
        ctx.fail(field, f"must be {'a whole number' if whole else 'a number'}, got {value!r}")
    lo, hi = bounds
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        ctx.fail(field, f"{value!r} is outside the range runcomfy accepts ({lo} to {hi if hi is not None else 'any'})")
    return int(value) if whole else float(value)


def _opt_str(ctx: _Context, value: Any, field: str, allow_empty: bool = False) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or (not allow_empty and not value):
        ctx.fail(field, f"must be {'a string' if allow_empty else 'a non-empty string'}, got {value!r}")
    return value


# ---------------------------------------------------------------- LoRAs


def _loras(ctx: _Context, loras: Any) -> tuple[LoraPair | None, dict[str, float], int]:
    """One file per expert with its own multiplier; a side without a file runs at scale 0 (as the service does)."""
    if loras is None:
        ctx.fail("loras", "missing; give a list (empty for the base model alone)")
    if not isinstance(loras, list):
        ctx.fail("loras", "must be a list of {path, transformer, network_multiplier}")
    files: dict[str, Path] = {}
    mults = {s: 0.0 for s in SIDES}
    for i, item in enumerate(loras):
        side, path, mult = _lora_item(ctx, item, f"loras[{i}]")
        if side in files:
            ctx.fail(f"loras[{i}].transformer", f"a second {side!r} LoRA; {MODEL} takes one file per expert")
        files[side], mults[side] = path, mult
    if not files:
        return None, mults, 0
    return LoraPair(high=files.get("high"), low=files.get("low")), mults, step_of(files.values())


def _lora_item(ctx: _Context, item: Any, where: str) -> tuple[str, Path, float]:
    """Validate one LoRA entry and find its file on this machine."""
    if not isinstance(item, dict):
        ctx.fail(where, "must be an object {path, transformer, network_multiplier}")
    _check_keys(ctx, item, LORA_KEYS, f"{where}.")
    text = _opt_str(ctx, item.get("path"), f"{where}.path")
    if text is None:
        ctx.fail(f"{where}.path", "missing")
    if text.startswith(("http://", "https://")):
        ctx.fail(f"{where}.path", "is a URL and nothing is downloaded; download it and give the local path")
    side = item.get("transformer")
    if side not in SIDES:
        ctx.fail(f"{where}.transformer", f"must be 'high' or 'low' for {MODEL} (got {side!r})")
    path = ctx.local_path(text, f"{where}.path")
    if not path.is_file():
        ctx.fail(f"{where}.path", f"{text!r} not found (looked at {path}); fix the path or give --path-map OLD=NEW")
    mult = item.get("network_multiplier")
    mult = 1.0 if mult is None else _bounded(ctx, mult, f"{where}.network_multiplier",
                                             FLOAT_RANGES["network_multiplier"], whole=False)
    return side, path, mult


def step_of(paths: Iterable[Path]) -> int:
    """The training step from ai-toolkit's checkpoint names, when all files agree; else STEP_UNKNOWN."""
    steps = {int(m.group(1)) if (m := STEP_RE.search(p.name)) else None for p in paths}
    return steps.pop() if len(steps) == 1 and None not in steps else STEP_UNKNOWN


# ---------------------------------------------------------------- prompts


def _job(ctx: _Context, item: Any, i: int, defaults: dict, extended: list[str], trigger: str | None,
         lora: LoraPair | None, multipliers: dict, step: int, case: str) -> PreviewJob:
    """One prompt item to a PreviewJob, with the service's semantics."""
    where = f"prompts[{i}]"
    if not isinstance(item, dict):
        ctx.fail(where, "must be an object with at least prompt and ctrl_img")
    _check_keys(ctx, item, PROMPT_KEYS, f"{where}.")
    prompt = _opt_str(ctx, item.get("prompt"), f"{where}.prompt", allow_empty=True)
    if prompt is None:
        ctx.fail(f"{where}.prompt", "missing")
    values = {k: (_setting(ctx, k, item[k], f"{where}.{k}") if item.get(k) is not None else defaults[k])
              for k in SETTINGS}
    used_ext = [k for k in extended if item.get(k) is None and k != "seed"]
    if item.get("seed") is None:
        base = defaults["seed"]
        values["seed"] = base + i if base >= 0 else -1
        if "seed" in extended:
            used_ext.append("seed")
    local_trigger = _opt_str(ctx, item.get("trigger_word"), f"{where}.trigger_word") or trigger
    ctrl = _ctrl_image(ctx, item.get("ctrl_img"), f"{where}.ctrl_img")
    spec = _spec(i, prompt, local_trigger, values, ctrl, lora, multipliers)
    return PreviewJob(
        case=case, golden=_golden(ctx, item.get("golden"), f"{where}.golden"), step=step,
        index=i, sample=spec, lora=lora, merged=False, unreproducible=spec.unreproducible,
        extra={"profile": PROFILE, "source": "runcomfy", "request": str(ctx.file),
               "multipliers": dict(multipliers), "notes": _notes(used_ext)},
    )


def _spec(i: int, prompt: str, trigger: str | None, v: dict, ctrl: Path, lora: LoraPair | None,
          multipliers: dict) -> SampleSpec:
    """The effective settings: [trigger] only, no flag parsing, /16 floor, 4k+1 frames."""
    text = prompt.replace("[trigger]", trigger) if trigger else prompt
    return SampleSpec(
        index=i, prompt=text, negative_prompt=v["neg"], seed=v["seed"],
        width=v["width"] // DIVISOR * DIVISOR, height=v["height"] // DIVISOR * DIVISOR,
        num_frames=(v["num_frames"] - 1) // 4 * 4 + 1, guidance_scale=v["guidance_scale"],
        sample_steps=v["sample_steps"], network_multiplier=_one_multiplier(lora, multipliers), fps=v["fps"],
        ctrl_img=str(ctrl), width_requested=v["width"], height_requested=v["height"],
        num_frames_requested=v["num_frames"], prompt_config=prompt,
        unreproducible=(UNREPRODUCIBLE + "the seed is -1, so the service drew a random seed that the request "
                        "does not record") if v["seed"] == -1 else None,
    )


def _one_multiplier(lora: LoraPair | None, multipliers: dict) -> float:
    """SampleSpec has one multiplier; use the high expert's (the low one's if only low exists).
    ``PreviewJob.extra["multipliers"]`` is the authoritative per-expert pair."""
    if lora is None:
        return 1.0
    return multipliers["high"] if lora.high is not None else multipliers["low"]


def _notes(used_ext: list[str]) -> list[str]:
    """Say when a value came from a request-level default the real service would have ignored."""
    if not used_ext:
        return []
    return [f"request-level {', '.join(used_ext)} used as default (a harness extension): the runcomfy service "
            "reads these per prompt only and would have used its own defaults"]


def _golden(ctx: _Context, value: Any, field: str) -> Path | None:
    """The service's output for this prompt, if the request names one; it must exist."""
    text = _opt_str(ctx, value, field)
    if text is None:
        return None
    path = ctx.local_path(text, field)
    if not path.is_file():
        ctx.fail(field, f"{text!r} not found (looked at {path})")
    return path


# ---------------------------------------------------------------- control images


def _ctrl_image(ctx: _Context, value: Any, field: str) -> Path:
    """A local control image file: an existing path, or base64 / a data URL decoded into the cache."""
    if not isinstance(value, str) or not value.strip():
        ctx.fail(field, f"missing; {MODEL} needs a control image (a path, base64 data or a data: URL)")
    text = value.strip()
    if text.startswith(("http://", "https://")):
        ctx.fail(field, "is a URL and nothing is downloaded; save the image and give its path")
    if text.startswith("data:"):
        return decode_image_data(_data_url_payload(ctx, text, field), ctx.cache_dir, file=ctx.file, field=field)
    if len(text) < MAX_PATH_LEN and "\n" not in text:
        path = ctx.local_path(text, field)
        if path.is_file():
            return path
        if not _looks_like_base64(text):
            ctx.fail(field, f"control image {text!r} not found (looked at {path}); fix the path or give --path-map")
    return decode_image_data(text, ctx.cache_dir, file=ctx.file, field=field)


def _looks_like_base64(text: str) -> bool:
    """Base64 has no dots and is long; a short dotted string is a file name that does not exist."""
    return len(text) >= 32 and "." not in text and bool(BASE64_RE.match(text))


def _data_url_payload(ctx: _Context, text: str, field: str) -> str:
    """The base64 part of ``data:image/png;base64,...``; other data URLs are refused."""
    m = DATA_URL_RE.match(text)
    if not m or ";base64" not in m["params"].lower():
        ctx.fail(field, "is a data: URL but not base64 (expected data:image/...;base64,...)")
    if m["mime"] and not m["mime"].lower().startswith("image/"):
        ctx.fail(field, f"is a data: URL of type {m['mime']!r}, not an image")
    return m["data"]


def decode_image_data(text: str, cache_dir: str | Path, *, file: object = None, field: str = "ctrl_img") -> Path:
    """Decode base64 image bytes into ``cache_dir/<sha256>.<ext>`` (written once, atomically) and return the path."""
    compact = "".join(text.split()).translate(URLSAFE)  # url-safe alphabet and missing padding are common
    try:
        raw = base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise HarnessError(file, field, f"neither an existing file nor valid base64 ({exc})") from None
    ext = _image_ext(raw)
    if ext is None:
        raise HarnessError(file, field, "base64 decodes, but not to a PNG, JPEG, WebP, GIF or BMP image")
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / f"{hashlib.sha256(raw).hexdigest()}{ext}"
    if not target.is_file():
        fd, tmp = tempfile.mkstemp(prefix=".ctrl.", dir=cache)
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
        os.replace(tmp, target)
    return target


def _image_ext(raw: bytes) -> str | None:
    """The file extension for image bytes, from their magic number (PIL sniffs content, not names)."""
    if raw[:4] == b"RIFF" and raw[8:12] == b"WEBP":
        return ".webp"
    for magic, ext in MAGIC:
        if raw.startswith(magic):
            return ext
    return None
