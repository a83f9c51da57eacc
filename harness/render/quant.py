"""ai-toolkit's quantized sampling models (§9, docs/parity), rebuilt so quantized previews can be re-rendered exactly.

What ai-toolkit did (read at 27a03a91, ``toolkit/util/quantize.py`` + ``wan22_14b_model.py`` + ``wan21.py``):

* ``model.quantize`` without an accuracy-recovery adapter (ARA): per transformer, every block is quantized with
  ``model.qtype`` (optimum-quanto 0.2.4 for ``qfloat8``: each ``nn.Linear`` becomes a ``QLinear``, then ``freeze``),
  then the "extras" (the whole transformer again; already-quantized modules are skipped, never re-quantized) minus
  the exclusions ``condition_embedder*`` and ``proj_out*`` since ``e7951ad2`` (2026-07-10, ai-toolkit 0.10.22).
  ``patch_embedding`` (Conv3d), the norms and ``scale_shift_table`` have no quanto counterpart for weight-only
  quantization, so they always stay bf16.
* ``model.quantize_te``: the UMT5 encoder is quantized whole with ``model.qtype`` (not ``qtype_te``).
* ``qtype: "uint4|<ara>"``: the ARA LoRA (bf16, multiplier 1, always on) wraps its target linears, which are quantized
  to uint4 (torchao 0.10 ``UIntXWeightOnlyConfig``: asymmetric, group 64, bf16 arithmetic; since ``b677cdb0`` an
  ostris re-implementation claimed bit-identical). Every other linear is asked for "uint8", which never quantized
  anything: torchao 0.10's uint8 packing raised and ai-toolkit caught the error (its re-implementation refuses uint8
  for the same reason), so those linears stay bf16. A linear whose ``in_features`` is not a multiple of 64 cannot be
  grouped and also stays bf16 (same failure path). The training LoRA wraps the ARA-wrapped forward.
* ``model.layer_offloading``: ``qfloat8`` becomes torchao ``Float8WeightOnlyConfig`` and layers stream through
  ai-toolkit's MemoryManager. Not reproduced: refused with a clear message.

Arithmetic, verified by ``tests/test_quant.py`` for quanto 0.2.4 on CPU, and once on an H100 (torch 2.11): the
quantized data and scales are bit-identical on CPU and CUDA (Wan's 5120/13824 shapes included), and the CUDA forward
equals the same formula on CUDA (quanto runs the same Python for float8 weights on both devices,
``optimum/quanto/library/qbytes_mm.py``; only int8 weights take device-specific kernels). The GEMM itself differs
between CPU and CUDA in the last bits, as for bf16.

* qfloat8: ``scale = bf16(amax(|W|, row) / 448)``; ``data = clamp(bf16(W / scale), ±448).to(float8_e4m3fn)``;
  forward ``y = matmul(x, (scale * data.to(bf16)).T)`` then ``y + bias`` as a separate bf16 add.
* uintX (plain torch here, the same op sequence as torchao 0.10, group 64 along ``in_features``, all in the weight
  dtype): ``lo = min(min(g), 0)``, ``hi = max(max(g), 0)``, ``scale = clamp((hi - lo) / (2**b - 1), min=fp32 eps)``,
  ``zp = clamp(0 - round(lo / scale), 0, 2**b - 1)`` as int32, ``q = clamp(round(W * (1 / scale)) + zp, 0, 2**b - 1)``,
  ``W' = (q - zp).to(bf16) * scale``; forward ``F.linear(x, W', bias)`` (torchao's dequantize-then-linear
  fallback). The weight is stored dequantized: the forward is the same, only the memory saving is lost.
  Checked once against torchao 0.10.0 itself (CPU, scratch install, uint2/3/4, several shapes): weights and linear
  outputs bit-identical; uint8 and a non-multiple-of-64 ``in_features`` raised in torchao, as assumed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

import torch

from ..errors import HarnessError
from .ara import apply_ara, read_ara

BF16 = torch.bfloat16

EXCLUDE_PATTERNS = ("condition_embedder*", "proj_out*")
EXCLUDE_SINCE = (0, 10, 22)  # e7951ad2, 2026-07-10; version.py said 0.10.22 from a4bbe167 (07-09) to 0b62e516 (07-13)
CURRENT_AITK = "0.12.26"  # the newest ai-toolkit read for this module (27a03a91)

QUANTO_QTYPES = ("qfloat8", "qfloat8_e4m3fn", "qfloat8_e5m2", "qint8", "qint4", "qint2")
VERIFIED_QTYPES = ("qfloat8", "qfloat8_e4m3fn")  # arithmetic checked bit for bit (tests/test_quant.py)
VERIFIED_UINTX = "uint4"  # with an ARA: whole previews bit-exact against ai-toolkit 0.12.26 (oracle case_h, 9/9)
UINTX_BITS = {f"uint{b}": b for b in range(2, 9)}
UINTX_GROUP = 64
_TORCHAO_ONLY = ("int8", "float8")  # torchao configs ai-toolkit also accepts; not reproduced

_F32_EPS = torch.finfo(torch.float32).eps
_QTYPE_ATTR = "_aitk_qtype"  # set on linears quantized by the plain-torch uintX path


# ------------------------------------------------------------------------------------------------ the plan


@dataclass(frozen=True)
class QuantPlan:
    """What ai-toolkit quantized for one job, decided from the job's model block and the ai-toolkit version.

    Frozen and hashable: it is part of the model cache key (two plans = two bundles).
    """

    transformer_qtype: str | None  # None: experts stay bf16
    text_encoder_qtype: str | None  # None: UMT5 stays bf16
    exclude: tuple[str, ...] = ()  # fnmatch patterns, relative to each transformer
    ara_source: str | None = None  # the ARA the job names (hub id or path)
    ara_path: str | None = None  # the local file used for it
    aitk_version: str | None = None
    version_assumed: bool = False
    approximate: tuple[str, ...] = ()  # reasons a render with this plan cannot claim bit-exactness
    notes: tuple[str, ...] = ()

    @property
    def other_linears(self) -> str | None:
        """With an ARA, what the non-ARA linears of the experts got."""
        return "bf16 (ai-toolkit asked for uint8, which never quantized: torchao 0.10 raised, the error was caught)" \
            if self.ara_path else None

    def summary(self) -> str:
        parts = []
        if self.transformer_qtype:
            t = f"experts {self.transformer_qtype}"
            if self.ara_path:
                t += f" on the ARA targets + ARA ({Path(self.ara_path).name}), other linears bf16"
            elif self.exclude:
                t += f" (bf16: {', '.join(self.exclude)})"
            else:
                t += " (extras included)"
            parts.append(t)
        if self.text_encoder_qtype:
            parts.append(f"text encoder {self.text_encoder_qtype}")
        return "; ".join(parts) or "none"

    def describe(self) -> dict:
        """The plan as data for results (environment/settings)."""
        return {
            "transformer": self.transformer_qtype,
            "text_encoder": self.text_encoder_qtype,
            "backend": {q: _backend_name(q) for q in {self.transformer_qtype, self.text_encoder_qtype} if q},
            "excluded_from_quantization": list(self.exclude),
            "never_quantized": ["patch_embedding", "norms", "scale_shift_table"],
            "ara": None if not self.ara_path else {"source": self.ara_source, "path": self.ara_path,
                                                   "other_linears": self.other_linears},
            "aitk_version": self.aitk_version,
            "aitk_version_assumed": self.version_assumed,
            "lora_path": "unmerged (ai-toolkit cannot merge into quantized weights)" if self.transformer_qtype else None,
            "summary": self.summary(),
            "approximate": list(self.approximate),
            "notes": list(self.notes),
        }


def _backend_name(qtype: str) -> str:
    if qtype in QUANTO_QTYPES:
        return "optimum-quanto 0.2.4 (quantize + freeze)"
    if qtype == "uint8":
        return "none (ai-toolkit's uint8 never quantized)"
    return f"plain-torch re-implementation of torchao 0.10 UIntXWeightOnlyConfig(group {UINTX_GROUP})"


def parse_version(version: str | None) -> tuple[int, ...] | None:
    """``"0.10.22"`` -> (0, 10, 22); anything unparseable -> None."""
    if not version:
        return None
    match = re.match(r"^\s*v?(\d+)\.(\d+)(?:\.(\d+))?", str(version))
    if not match:
        return None
    return tuple(int(g) if g is not None else 0 for g in match.groups())


def ara_source(model_block: dict) -> str | None:
    """The accuracy recovery adapter a ``qtype: "<qtype>|<ara>"`` names (None without one)."""
    parts = str((model_block or {}).get("qtype") or "").split("|")
    return parts[1].strip() if len(parts) == 2 and parts[1].strip() else None


def _is_hub_file(source: str) -> bool:
    """ai-toolkit's hub form ``user/repo/file.safetensors`` (not a path it found on its disk)."""
    return not source.startswith(("/", ".", "~")) and len(source.split("/")) == 3


def quantization_plan(model_block: dict, aitk_version: str | None, ara_path: str | Path | None = None,
                      ara_note: str | None = None) -> QuantPlan | None:
    """Decide what ai-toolkit quantized for a job (None: nothing, the bf16 renderer is already the right model).

    ``model_block`` is the job's ``model`` mapping (``harness.aitk.job`` fills the defaults); ``aitk_version`` comes from
    the LoRA metadata (``lora_software_version``); ``ara_path`` is the ARA the job names, found on this machine
    (``harness.paths.resolve_ara``; ``ara_note`` says how).
    Raises HarnessError for what cannot be reproduced (layer offloading with quantization, torchao int8/float8, other
    backends, a missing ARA file).
    """
    model = model_block or {}
    quantize = bool(model.get("quantize", False))
    quantize_te = bool(model.get("quantize_te", quantize))  # ai-toolkit's ModelConfig default (config_modules.py)
    if not quantize and not quantize_te:
        return None
    raw = str(model.get("qtype") or "qfloat8")
    parts = raw.split("|")
    if len(parts) > 2:
        raise HarnessError(None, "model.qtype", f"{raw!r} has more than one '|'; ai-toolkit expects 'qtype|ara_path'")
    qtype, ara_source = parts[0].strip(), (parts[1].strip() if len(parts) == 2 else None)
    if model.get("layer_offloading"):
        raise HarnessError(None, "model.layer_offloading",
                           "not supported: with layer_offloading ai-toolkit swaps qfloat8 for torchao float8 weight-only "
                           "quantization (transformer and text encoder) and streams layers through its MemoryManager; "
                           "this harness does not reproduce torchao's float8 arithmetic, so a render could only be "
                           "approximate and the job is refused")
    if qtype in _TORCHAO_ONLY:
        raise HarnessError(None, "model.qtype", f"not supported: {qtype!r} is a torchao config "
                           f"({'Int8' if qtype == 'int8' else 'Float8'}WeightOnlyConfig) this harness does not reproduce")
    if qtype not in QUANTO_QTYPES and qtype not in UINTX_BITS:
        raise HarnessError(None, "model.qtype", f"not supported: {qtype!r}; supported: {', '.join(QUANTO_QTYPES)}, "
                           f"{', '.join(UINTX_BITS)} (optionally with '|<accuracy recovery adapter>')")

    approximate, notes = [], []
    version = parse_version(aitk_version)
    assumed = version is None
    if assumed:
        notes.append(f"ai-toolkit version {'unknown' if not aitk_version else repr(aitk_version) + ' unparseable'}; "
                     f"assumed current ({CURRENT_AITK}): condition_embedder*/proj_out* excluded from quantization")
        version = parse_version(CURRENT_AITK)
    exclude = EXCLUDE_PATTERNS if version >= EXCLUDE_SINCE else ()
    if version[:3] == EXCLUDE_SINCE:
        approximate.append("ai-toolkit 0.10.22 spans the commit that stopped quantizing condition_embedder*/proj_out* "
                           "(e7951ad2, 2026-07-10); assumed after it (kept bf16)")

    if qtype in QUANTO_QTYPES and qtype not in VERIFIED_QTYPES:
        approximate.append(f"{qtype}: run through optimum-quanto like ai-toolkit, but only qfloat8's arithmetic was "
                           "verified (int weights take device-specific kernels in quanto)")
    elif qtype in UINTX_BITS and qtype != "uint8" and (qtype != VERIFIED_UINTX or not ara_source or not quantize):
        approximate.append(f"{qtype}{'' if ara_source and quantize else ' without an ARA'}: plain-torch "
                           f"re-implementation of torchao 0.10 UIntXWeightOnlyConfig (asymmetric, group {UINTX_GROUP}; "
                           "matched torchao 0.10.0 bit for bit on CPU); whole previews were verified against ai-toolkit "
                           f"for {VERIFIED_UINTX} with an ARA only (oracle case_h)")
    if qtype == "uint8":
        notes.append("qtype uint8 never quantized anything in ai-toolkit (torchao 0.10 raised, caught); weights stay bf16")

    local_ara = None
    if quantize and ara_source:
        local_ara = Path(ara_path) if ara_path else Path(ara_source)
        if not local_ara.is_file():
            raise HarnessError(ara_path or None, "model.qtype",
                               f"the job uses the accuracy recovery adapter {ara_source!r}; it is not a local file here. "
                               "Download it (e.g. from the Hugging Face hub) and pass its path with --ara PATH")
        if _is_hub_file(ara_source):
            approximate.append(f"the ARA is the hub file {ara_source!r}: applied as an always-on bf16 LoRA like the "
                               "synthetic ARA verified against ai-toolkit (oracle case_h), but this file's key format "
                               "and module coverage were never checked against an ai-toolkit render")
        notes.append(ara_note or f"ARA {local_ara}")
        local_ara = str(local_ara.resolve())
    elif ara_source and not quantize:
        notes.append(f"the ARA {ara_source!r} is only used when model.quantize is on; ignored")
    if quantize_te:
        notes.append(f"text encoder quantized with model.qtype ({qtype}), not qtype_te "
                     f"({model.get('qtype_te', 'qfloat8')}), as ai-toolkit does")
    if quantize and ara_source and exclude:
        notes.append("with an ARA the exclusion patterns only matter for uint8, which is a no-op")
    return QuantPlan(
        transformer_qtype=qtype if quantize else None,
        text_encoder_qtype=qtype if quantize_te else None,
        exclude=exclude if quantize else (),
        ara_source=ara_source if quantize else None,
        ara_path=local_ara,
        aitk_version=aitk_version,
        version_assumed=assumed,
        approximate=tuple(approximate),
        notes=tuple(notes),
    )


# ------------------------------------------------------------------------------------------------ applying it


def _quanto():
    try:
        from optimum.quanto import freeze, qtypes  # noqa: F401
        from optimum.quanto.nn import QModuleMixin, quantize_module
    except ImportError as exc:  # pragma: no cover - dependency missing
        raise HarnessError(None, "optimum-quanto", f"not importable ({exc}); install optimum-quanto==0.2.4, the version "
                           "ai-toolkit pins, to render quantized previews") from None
    return qtypes, QModuleMixin, quantize_module


def _set_module(root: torch.nn.Module, name: str, module: torch.nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, module)


def is_quantized(module: torch.nn.Module) -> bool:
    _, QModuleMixin, _ = _quanto()
    return isinstance(module, QModuleMixin) or getattr(module, _QTYPE_ATTR, None) is not None


def module_qtype(module: torch.nn.Module) -> str:
    """The qtype a linear's weight carries now: quanto's name (``qfloat8_e4m3fn``), ``uint4``..., or its dtype."""
    _, QModuleMixin, _ = _quanto()
    if isinstance(module, QModuleMixin) and module.weight_qtype is not None:
        return module.weight_qtype.name
    tagged = getattr(module, _QTYPE_ATTR, None)
    if tagged:
        return tagged
    return str(module.weight.dtype).replace("torch.", "").replace("bfloat16", "bf16")


def linear_qtypes(model: torch.nn.Module) -> dict[str, str]:
    """Every ``nn.Linear`` (QLinear included) of ``model`` -> its qtype (``module_qtype``)."""
    return {name: module_qtype(m) for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def _quantize_one(root: torch.nn.Module, name: str, module: torch.nn.Module, qtype: str) -> bool:
    """Quantize one module in place the way ai-toolkit's ``quantize`` does; False when it has no quantized form."""
    if is_quantized(module):  # ai-toolkit skips already-quantized modules (Q_MODULES), never re-quantizes them
        return False
    if qtype in QUANTO_QTYPES:
        qtypes, _, quantize_module = _quanto()
        qmodule = quantize_module(module, weights=qtypes[qtype])
        if qmodule is None:
            return False
        qmodule.name = name
        qmodule.freeze()
        if name:
            _set_module(root, name, qmodule)
        for pname, _ in list(module.named_parameters(recurse=False)):  # free the bf16 copy now, as quanto does
            setattr(module, pname, None)
        return True
    bits = UINTX_BITS[qtype]
    if not isinstance(module, torch.nn.Linear) or bits == 8:
        return False
    return uintx_quantize_(module, bits)


def _quantize_tree(root: torch.nn.Module, qtype: str, exclude=()) -> int:
    """ai-toolkit's ``quantize(root, weights=qtype, exclude=...)``: every non-excluded module, in named order."""
    count = 0
    for name, module in list(root.named_modules()):
        if not name:
            continue
        if exclude and any(fnmatch(name, pattern) for pattern in exclude):
            continue
        count += _quantize_one(root, name, module, qtype)
    return count


def quantize_transformer(model: torch.nn.Module, qtype: str, exclude=()) -> None:
    """``quantize_model`` without ARA: block by block, then the extras minus ``exclude`` (§9, docs/parity)."""
    for block in model.blocks:
        _quantize_tree(block, qtype, exclude)
    _quantize_tree(model, qtype, exclude)


def quantize_text_encoder(model: torch.nn.Module, qtype: str) -> None:
    """``quantize(text_encoder, weights=model.qtype)`` + ``freeze``: every linear of the UMT5 encoder."""
    _quantize_tree(model, qtype)


# ---------------------------------------------------------------------------------------- uintX (torchao 0.10)


def uintx_qparams(weight: torch.Tensor, bits: int, group: int = UINTX_GROUP):
    """Per-group (scale, zero_point) of torchao 0.10's asymmetric ``choose_qparams_affine`` in the weight dtype."""
    out_f, in_f = weight.shape
    qmin, qmax = 0, (1 << bits) - 1
    grouped = weight.reshape(out_f, in_f // group, group)
    min_val = torch.amin(grouped, dim=-1)
    max_val = torch.amax(grouped, dim=-1)
    min_neg = torch.min(min_val, torch.zeros_like(min_val))
    max_pos = torch.max(max_val, torch.zeros_like(max_val))
    scale = (max_pos - min_neg) / float(qmax - qmin)
    scale = torch.clamp(scale, min=_F32_EPS)
    zero_point = qmin - torch.round(min_neg / scale)
    zero_point = torch.clamp(zero_point, qmin, qmax).to(torch.int32)
    return scale, zero_point


def uintx_codes(weight: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, bits: int,
                group: int = UINTX_GROUP) -> torch.Tensor:
    """torchao 0.10 ``quantize_affine`` (INT zero-point domain): ``clamp(round(W * (1/scale)) + zp)`` as uint8 codes."""
    out_f, in_f = weight.shape
    grouped = weight.reshape(out_f, in_f // group, group)
    q = torch.round(grouped * (1.0 / scale.unsqueeze(-1))) + zero_point.unsqueeze(-1)
    return torch.clamp(q, 0, (1 << bits) - 1).to(torch.uint8).reshape(out_f, in_f)


def uintx_dequantize(codes: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, dtype,
                     group: int = UINTX_GROUP) -> torch.Tensor:
    """torchao 0.10 ``dequantize_affine``: ``(q.int32 - zp.int32).to(dtype) * scale``."""
    out_f, in_f = codes.shape
    q = codes.reshape(out_f, in_f // group, group).to(torch.int32) - zero_point.to(torch.int32).unsqueeze(-1)
    return (q.to(dtype) * scale.unsqueeze(-1)).reshape(out_f, in_f)


def uintx_quantize_(linear: torch.nn.Linear, bits: int, group: int = UINTX_GROUP) -> bool:
    """Replace the weight by its uintX round trip; False (left as is) when ``in_features`` is not a multiple of
    ``group``, where torchao raised and ai-toolkit caught the error."""
    weight = linear.weight.data
    if bits >= 8 or weight.ndim != 2 or weight.shape[1] % group != 0:  # torchao 0.10 packs 1..7 bits only
        return False
    scale, zero_point = uintx_qparams(weight, bits, group)
    codes = uintx_codes(weight, scale, zero_point, bits, group)
    linear.weight.data = uintx_dequantize(codes, scale, zero_point, weight.dtype, group)
    setattr(linear, _QTYPE_ATTR, f"uint{bits}")
    return True


# ------------------------------------------------------------------------------------------------ the bundle


def apply_plan(bundle, plan: QuantPlan | None) -> dict | None:
    """Quantize the bundle's experts and text encoder in place as ``plan`` says, on the bundle's device.

    Returns (and stores as ``bundle.quantization``) a report of what was applied: per component, the count of linears
    per qtype and the names of those left unquantized.
    """
    if plan is None:
        return None
    devices = [bundle.device.index or 0] if bundle.device.type == "cuda" else []
    with torch.no_grad(), torch.random.fork_rng(devices=devices):  # QLinear's init draws from the global RNG
        ara = read_ara(plan.ara_path) if plan.transformer_qtype and plan.ara_path else None
        for expert, model in (("high", bundle.transformer), ("low", bundle.transformer_2)):
            if not plan.transformer_qtype:
                continue
            if ara is not None:
                apply_ara(model, ara[expert], plan.ara_path,
                          lambda name, linear, model=model: _quantize_one(model, name, linear, plan.transformer_qtype))
            else:
                quantize_transformer(model, plan.transformer_qtype, plan.exclude)
        if plan.text_encoder_qtype:
            quantize_text_encoder(bundle.text_encoder, plan.text_encoder_qtype)
    report = applied_report(bundle, plan, ara)
    bundle.quantization = report
    bundle.notes.append(f"quantization: {plan.summary()}")
    return report


def applied_report(bundle, plan: QuantPlan, ara=None) -> dict:
    components = {}
    for label, model in (("transformer", bundle.transformer), ("transformer_2", bundle.transformer_2),
                         ("text_encoder", bundle.text_encoder)):
        kinds = linear_qtypes(model)
        counts: dict[str, int] = {}
        for qtype in kinds.values():
            counts[qtype] = counts.get(qtype, 0) + 1
        left = sorted(n for n, q in kinds.items() if q in ("bf16", "float32", "float16"))
        components[label] = {"linears": counts, "unquantized": left if len(left) <= 24 else left[:24] + ["..."]}
    return {**plan.describe(), "applied": components,
            "ara_layers": None if ara is None else {k: len(v) for k, v in ara.items()}}


def applied(bundle) -> dict | None:
    """The report ``apply_plan`` stored on a bundle, or None for an unquantized bundle."""
    return getattr(bundle, "quantization", None)
