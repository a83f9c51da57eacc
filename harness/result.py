"""One preview's result: the typed record every room reads, and the results schema on disk.

``run_one`` builds a :class:`PreviewResult`; the results document (:func:`results_document`) is a list of them as
JSON, written per preview and merged across shards. The report, baseline, calibrate, diagnose and the pytest plugin
read results through :meth:`PreviewResult.from_json`, never through raw keys, so a field is added here once.

Schema 2 (this harness) dropped schema 1's ``psnr_per_frame``/``ssim_per_frame`` copies (they are ``encoded.psnr``
and ``encoded.ssim``); schema 1 files are still read. Headline numbers (``psnr_min`` …) are written beside the
views for people reading the JSON, and derived from ``encoded`` when read back.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from .metrics import Comparison, Thresholds
from .numbers import to_json

SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)
STATUSES = ("pass", "fail", "error", "unreproducible")
HEADLINE = ("bit_exact", "psnr_mean", "psnr_min", "ssim_mean", "ssim_min", "worst_frame")


@dataclass
class PreviewResult:
    """What one preview's check found, with the settings a reader needs to reproduce it elsewhere."""

    key: str
    case: str
    step: int
    index: int
    status: str | None = None  # one of STATUSES once decided; "rendered" for a render with no golden (render, serve)
    message: str | None = None
    golden: str | None = None
    golden_raw: str | None = None
    label_note: str | None = None
    source: str | None = None  # the case file, output folder or request this preview came from
    # the sample as ai-toolkit rendered it (effective values; *_requested as the config asked)
    seed: int | None = None
    prompt: str = ""
    negative_prompt: str = ""
    width: int | None = None
    height: int | None = None
    width_requested: int | None = None
    height_requested: int | None = None
    num_frames: int | None = None
    num_frames_requested: int | None = None
    fps: int | None = None
    guidance_scale: float | None = None
    sample_steps: int | None = None
    network_multiplier: object = None  # float, or {"high": m, "low": m}
    ctrl_img: str | None = None
    lora: dict | None = None  # {"high": path | None, "low": path | None}
    lora_path: str = "none"  # none | merged | unmerged
    # the comparison (harness.compare)
    encoded: Comparison | None = None
    raw: Comparison | None = None
    raw_golden: Comparison | None = None
    thresholds: Thresholds | None = None  # with require_bit_exact resolved for this stack
    # the stacks (harness.stack)
    golden_stack: dict | None = None
    pinned: dict | None = None
    exact_expected: bool | None = None
    stack_diff: dict | None = None
    stack_unknown: list | None = None
    stack_reason: str | None = None
    identity: dict | None = None  # what decided this result besides the code (runner.result_identity): --resume key
    envelope: dict | None = None  # the measured cross-stack envelope that judged it and where it fell (harness.envelope)
    # how it was rendered (harness.engine.RenderOutcome)
    device: str | None = None
    offload: str | None = None
    quantization: dict | None = None
    profile: str | None = None
    profile_exact: bool | None = None
    profile_settings: dict | None = None
    approximate: list | None = None
    notes: list = field(default_factory=list)
    trace: list = field(default_factory=list)
    seconds: float | None = None
    render_path: str | None = None
    frames_path: str | None = None
    resumed: bool = False
    frames_sha256: str | None = None  # of the lossless uint8 frames (F, H, W, 3): bit-identity at a glance
    mp4_path: str | None = None  # wan-parity render --mp4 / serve --mp4
    lora_saved_dtype: str | None = None  # fp32 | bf16 | fp16: how the job saved this step's LoRA (sampling used fp32)
    lora_override: dict | None = None  # {"high", "low"}: fp32 files used instead of the job's checkpoint
    merge_history: list | None = None  # [{step, multiplier, lora}]: earlier merged rounds replayed into the base

    # ------------------------------------------------------------------ headline numbers (the encoded view)

    @property
    def bit_exact(self) -> bool:
        return bool(self.encoded is not None and self.encoded.bit_exact)

    @property
    def bit_exact_raw(self) -> bool | None:
        return None if self.raw_golden is None else bool(self.raw_golden.bit_exact)

    @property
    def psnr_min(self) -> float | None:
        return None if self.encoded is None else self.encoded.psnr_min

    @property
    def psnr_mean(self) -> float | None:
        return None if self.encoded is None else self.encoded.psnr_mean

    @property
    def ssim_min(self) -> float | None:
        return None if self.encoded is None else self.encoded.ssim_min

    @property
    def ssim_mean(self) -> float | None:
        return None if self.encoded is None else self.encoded.ssim_mean

    @property
    def worst_frame(self) -> int | None:
        return None if self.encoded is None else self.encoded.worst_frame

    @property
    def require_bit_exact(self):
        return None if self.thresholds is None else self.thresholds.require_bit_exact

    def rule(self) -> str:
        """The pass rule this result was judged by, in words (named in every failure message)."""
        t = self.thresholds
        if t is None:
            return ""
        if t.require_bit_exact is True:
            return "bit-exact required" + (" (the stacks match)" if self.exact_expected else "")
        if self.envelope:
            return (f"the measured envelope PSNR >= {t.psnr_min:.2f} dB (floor {self.envelope['psnr_floor']:.2f} - margin "
                    f"{self.envelope['margin_db']:g}), SSIM >= {t.ssim_min:.3f}")
        return f"thresholds PSNR >= {t.psnr_min:g} dB, SSIM >= {t.ssim_min:g}"

    def diagnose_command(self, options: str = "") -> str:
        """The command that explains this preview's drift (printed on every failure); ``options`` as the run had."""
        import shlex

        return (f"wan-parity diagnose {shlex.quote(self.source or '<case>')}{options} --steps {self.step} "
                f"--samples {self.index}")

    def view(self, name: str) -> Comparison | None:
        """One comparison view by name (``encoded``, ``raw``, ``raw_golden``)."""
        return getattr(self, name)

    # ------------------------------------------------------------------ JSON

    def to_json(self) -> dict:
        """Strict-JSON dict (``inf`` as :mod:`harness.numbers` writes it)."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Comparison):
                value = value.to_json()
            elif isinstance(value, Thresholds):
                value = asdict(value)
            out[f.name] = to_json(value)
        for name in HEADLINE:
            out[name] = to_json(getattr(self, name))
        out["bit_exact_raw"] = self.bit_exact_raw
        out["require_bit_exact"] = self.require_bit_exact
        return out

    @classmethod
    def from_json(cls, data: dict, source=None) -> "PreviewResult":
        """A result as written by :meth:`to_json` (schema 1 or 2); a corrupt one is a HarnessError naming ``source``."""
        from .errors import HarnessError

        if not isinstance(data, dict) or "key" not in data:
            raise HarnessError(source, None, "not a preview result (no 'key')")
        if data.get("status") not in (*STATUSES, None):  # would count as neither pass nor fail (missing: unknown)
            raise HarnessError(source, f"results[{data.get('key')}].status",
                               f"{data.get('status')!r} is not a result status ({', '.join(STATUSES)})")
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        try:
            for name in ("encoded", "raw", "raw_golden", "thresholds"):
                if values.get(name) is not None and not isinstance(values[name], dict):
                    raise TypeError(f"{name} is {type(values[name]).__name__}, not an object")
            for name in ("encoded", "raw", "raw_golden"):
                if isinstance(values.get(name), dict):
                    values[name] = Comparison.from_json(values[name])
            if isinstance(values.get("thresholds"), dict):
                limits = values["thresholds"]
                values["thresholds"] = Thresholds(
                    psnr_min=float(limits.get("psnr_min", Thresholds.psnr_min)),
                    ssim_min=float(limits.get("ssim_min", Thresholds.ssim_min)),
                    require_bit_exact=limits.get("require_bit_exact", data.get("require_bit_exact", "auto")))
        except (TypeError, ValueError) as exc:
            raise HarnessError(source, f"results[{data.get('key')}]", f"corrupt comparison ({exc})") from None
        values.setdefault("case", "")
        values.setdefault("step", None)
        values.setdefault("index", None)
        return cls(**values)


def summarize(results: list[PreviewResult]) -> dict:
    """Counts by status, and how many were bit-exact."""
    counts: dict[str, int] = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    return {"total": len(results), **counts, "bit_exact": sum(1 for r in results if r.bit_exact)}


def summary_line(results: list[PreviewResult]) -> str:
    """``N passed, M failed, K unreproducible, E errors (B bit-exact)``: the last line a CI log needs; a run that
    compared nothing says so, so a green-looking line can never hide an empty check."""
    counts = summarize(results)
    words = (("pass", "passed"), ("fail", "failed"), ("unreproducible", "unreproducible"), ("error", "errors"))
    line = ", ".join(f"{counts.get(status, 0)} {word}" for status, word in words)
    line += f" ({counts['bit_exact']} bit-exact)"
    return line + (f"; {nothing_compared(results)}" if exit_code(results) == NOTHING_COMPARED else "")


NOTHING_COMPARED = 3


def nothing_compared(results: list[PreviewResult]) -> str:
    """Why a run compared no preview with its golden (the exit-3 line)."""
    if not results:
        return "nothing was compared: no previews were selected"
    return (f"nothing was compared: all {len(results)} previews are unreproducible (see each result's reason); "
            "this run checked nothing")


def exit_code(results: list[PreviewResult]) -> int:
    """0 every compared preview passed, 1 some preview drifted, 2 bad input (an ``error`` result), 3 nothing was
    compared (no previews, or every one unreproducible): a nightly that checked nothing must not be green."""
    statuses = {r.status for r in results}
    if "error" in statuses:
        return 2
    if "fail" in statuses:
        return 1
    return 0 if "pass" in statuses else NOTHING_COMPARED


def result_order(r: PreviewResult) -> tuple:
    """Results sorted by case, then training step and sample index as numbers, then key."""
    def num(v):
        return (0, v) if isinstance(v, int) else (1, 0)

    return (r.case or "", num(r.step), num(r.index), r.key or "")


def results_document(environment: dict, results: list[PreviewResult], **extra) -> dict:
    """The results document (``results.json``) as JSON: schema, environment, summary, results in order."""
    ordered = sorted(results, key=result_order)
    return {"schema_version": SCHEMA_VERSION, "environment": environment, "summary": summarize(results),
            **extra, "results": [r.to_json() for r in ordered]}


def results_of(document: dict, source=None) -> list[PreviewResult]:
    """The typed results of a document (any readable schema)."""
    from .errors import HarnessError

    version = document.get("schema_version", SCHEMA_VERSION)
    if version not in READABLE_SCHEMAS:
        raise HarnessError(source, "schema_version", f"{version!r}; this harness reads {READABLE_SCHEMAS}")
    return [PreviewResult.from_json(r, source) for r in document.get("results") or []]
