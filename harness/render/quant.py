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
* uintX (plain torch in :mod:`.uintx`, the op sequence of torchao 0.10, group 64 along ``in_features``, in the weight
  dtype): ``lo = min(min(g), 0)``, ``hi = max(max(g), 0)``, ``scale = clamp((hi - lo) / (2**b - 1), min=fp32 eps)``,
  ``zp = clamp(0 - round(lo / scale), 0, 2**b - 1)`` as int32, ``q = clamp(round(W * (1 / scale)) + zp, 0, 2**b - 1)``,
  ``W' = (q - zp).to(bf16) * scale``; forward ``F.linear(x, W', bias)`` (torchao's dequantize-then-linear
  fallback). The weight is stored dequantized: the forward is the same, only the memory saving is lost.
  Checked once against torchao 0.10.0 itself (CPU, scratch install, uint2/3/4, several shapes): weights and linear
  outputs bit-identical; uint8 and a non-multiple-of-64 ``in_features`` raised in torchao, as assumed. The codes are
  the same on CPU and CUDA (H200), and uint4 with an ARA reproduces ai-toolkit 0.12.26's previews (oracle case_h).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

import torch

from ..errors import HarnessError
from ..paths import is_hub_file
from .uintx import QTYPE_ATTR, UINTX_GROUP, uintx_codes, uintx_dequantize, uintx_qparams, uintx_quantize_  # noqa: F401

BF16 = torch.bfloat16

EXCLUDE_PATTERNS = ("condition_embedder*", "proj_out*")
EXCLUDE_SINCE = (0, 10, 22)  # e7951ad2, 2026-07-10; version.py said 0.10.22 from a4bbe167 (07-09) to 0b62e516 (07-13)
CURRENT_AITK = "0.12.26"  # the newest ai-toolkit read for this module (27a03a91)

QUANTO_QTYPES = ("qfloat8", "qfloat8_e4m3fn", "qfloat8_e5m2", "qint8", "qint4", "qint2")
VERIFIED_QTYPES = ("qfloat8", "qfloat8_e4m3fn")  # arithmetic checked bit for bit (tests/test_quant.py)
VERIFIED_UINTX = "uint4"  # with an ARA: whole previews bit-exact against ai-toolkit 0.12.26 (oracle case_h, 9/9)
UINTX_BITS = {f"uint{b}": b for b in range(2, 9)}
_TORCHAO_ONLY = ("int8", "float8")  # torchao configs ai-toolkit also accepts; not reproduced



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
                           "matched torchao 0.10.0 bit for bit on CPU); whole previews were verified against "
                           f"ai-toolkit for {VERIFIED_UINTX} with an ARA only (oracle case_h)")
    if qtype == "uint8":
        notes.append("qtype uint8 never quantized anything in ai-toolkit (torchao 0.10 raised, caught); weights stay bf16")

    local_ara = None
    if quantize and ara_source:
        local_ara = Path(ara_path) if ara_path else Path(ara_source)
        if not local_ara.is_file():
            raise HarnessError(ara_path or None, "model.qtype",
                               f"the job uses the accuracy recovery adapter {ara_source!r}; it is not a local file here. "
                               "Download it (e.g. from the Hugging Face hub) and pass its path with --ara PATH")
        if is_hub_file(ara_source):
            approximate.append(f"the ARA is the hub file {ara_source!r}: applied as an always-on bf16 LoRA like the "
                               "synthetic ARA verified against ai-toolkit (oracle case_h), but this file's key format "
                               "and module coverage were never checked against an ai-toolkit render")
        notes.append(ara_note or f"ARA {local_ara}")
        local_ara = str(local_ara.resolve())
    elif ara_source and not quantize:
        notes.append(f"the ARA {ara_source!r} is only used when model.quantize is on; ignored")
    if quantize and ara_source and model.get("low_vram"):
        notes.append("low_vram: ai-toolkit quantized the ARA's linears on the CPU; uintX codes, scales and zero points "
                     "are bit-identical on CPU and CUDA (measured, H200), so this changes no weight")
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
    return isinstance(module, QModuleMixin) or getattr(module, QTYPE_ATTR, None) is not None


def module_qtype(module: torch.nn.Module) -> str:
    """The qtype a linear's weight carries now: quanto's name (``qfloat8_e4m3fn``), ``uint4``..., or its dtype."""
    _, QModuleMixin, _ = _quanto()
    if isinstance(module, QModuleMixin) and module.weight_qtype is not None:
        return module.weight_qtype.name
    tagged = getattr(module, QTYPE_ATTR, None)
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


# ------------------------------------------------------------------------------------- accuracy recovery adapter

_ARA_KEY = re.compile(r"^(?:transformer\.|diffusion_model\.)?(transformer_[12])\.(.+)\.(lora_A|lora_B|lora_down|lora_up)"
                      r"\.weight$")
_PART = {"q": "to_q", "k": "to_k", "v": "to_v", "o": "to_out.0", "k_img": "add_k_proj", "v_img": "add_v_proj"}


def _diffusers_name(name: str) -> str:
    """Original-Wan module names -> diffusers (ai-toolkit converts ARA keys the same way before loading)."""
    name = name.replace("self_attn", "attn1").replace("cross_attn", "attn2")
    name = ".".join(_PART.get(part, part) for part in name.split("."))
    return name.replace("ffn.0", "ffn.net.0.proj").replace("ffn.2", "ffn.net.2")


def read_ara(path: str | Path) -> dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """An ARA file -> ``{'high'|'low': {module: (down [r, in], up [out, r])}}`` in bf16 (ai-toolkit's ARA dtype)."""
    from safetensors import safe_open

    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise HarnessError(path, None, "the accuracy recovery adapter must be a .safetensors file")
    try:
        with safe_open(str(path), framework="pt") as handle:
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    except Exception as exc:
        raise HarnessError(path, None, f"not a readable safetensors file ({exc})") from None
    pairs: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    unmatched = []
    for key, tensor in tensors.items():
        if key.endswith(".alpha"):
            continue  # ai-toolkit forces alpha = rank for transformers: scale 1
        if not tensor.is_floating_point():
            kind = str(tensor.dtype).replace("torch.", "")
            raise HarnessError(path, key, f"is {kind}; an ARA holds float LoRA weights")
        match = _ARA_KEY.match(key)
        if not match:
            unmatched.append(key)
            continue
        expert = "high" if match.group(1) == "transformer_1" else "low"
        role = "down" if match.group(3) in ("lora_A", "lora_down") else "up"
        pairs.setdefault((expert, _diffusers_name(match.group(2))), {})[role] = tensor.to(BF16)
    if unmatched:
        shown = ", ".join(unmatched[:6]) + (f" (+{len(unmatched) - 6} more)" if len(unmatched) > 6 else "")
        raise HarnessError(path, "keys", f"{len(unmatched)} key(s) are not ARA LoRA keys with a transformer_1/"
                           f"transformer_2 prefix: {shown}")
    layers: dict[str, dict] = {"high": {}, "low": {}}
    for (expert, name), ab in pairs.items():
        if set(ab) != {"down", "up"}:
            raise HarnessError(path, name, "has only one of lora_A/lora_B")
        layers[expert][name] = (ab["down"], ab["up"])
    return layers


def _ara_hook(down: torch.Tensor, up: torch.Tensor):
    """ai-toolkit's LoRA forward with bf16 A/B, scale 1, multiplier 1: ``out + B(A(x.bf16))`` (the x1 steps are exact)."""
    on_device: dict = {}

    def hook(module, inputs, output):
        x = inputs[0]
        if x.device not in on_device:
            on_device[x.device] = (down.to(x.device), up.to(x.device))
        a, b = on_device[x.device]
        delta = torch.nn.functional.linear(torch.nn.functional.linear(x.to(a.dtype), a), b)
        return output + delta.to(output.dtype)

    return hook


def apply_ara(model: torch.nn.Module, layers: dict, qtype: str, path: str) -> int:
    """Attach the ARA (permanent forward hooks) and quantize its targets with ``qtype``; other linears stay bf16."""
    modules = dict(model.named_modules())
    missing = sorted(n for n in layers if not isinstance(modules.get(n), torch.nn.Linear))
    if missing:
        raise HarnessError(path, "keys", f"{len(missing)} ARA layer(s) match no linear of the model: "
                           + ", ".join(missing[:6]))
    for name, (down, up) in layers.items():
        linear = modules[name]
        if (up.shape[0], down.shape[1]) != (linear.out_features, linear.in_features) or up.shape[1] != down.shape[0]:
            raise HarnessError(path, name, f"shape mismatch: B{tuple(up.shape)} @ A{tuple(down.shape)} vs weight "
                               f"{(linear.out_features, linear.in_features)}")
    count = 0
    for name, (down, up) in layers.items():
        # ai-toolkit wraps first and quantizes the wrapped module after; a hook on the final module (quanto swaps the
        # object) computes the same thing: quantized base, then + the ARA delta
        count += _quantize_one(model, name, modules[name], qtype)
        model.get_submodule(name).register_forward_hook(_ara_hook(down, up))
    return count


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
                apply_ara(model, ara[expert], plan.transformer_qtype, plan.ara_path)
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
