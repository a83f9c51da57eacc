"""ai-toolkit LoRA files and the two ways ai-toolkit applies them during sampling (§8, docs/parity).

* unmerged: ``out = base_bf16(x) + bf16(m * B(A(x.float())))`` with fp32 A/B, via forward hooks;
* merged:   ``W' = bf16(W.float() + m * B @ A)``, written into the weights and restored bit-exactly afterwards
  from a saved copy (an arithmetic unmerge would leave bf16 rounding residue);
* ``merge_round``: ai-toolkit's own merge-in and arithmetic merge-out, residue included, to replay its history.

Every key of the file must land on a module: an unmatched key is an error that lists them, never a silent drop.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torch.utils.weak import WeakIdKeyDictionary

from ..errors import HarnessError
from . import kernels
from .offload import StorageMark, pinned_copy

_KEY = re.compile(r"^diffusion_model\.blocks\.(\d+)\.(.+)\.lora_([AB])\.weight$")
_MODULE_NAMES = {
    "self_attn.q": "attn1.to_q", "self_attn.k": "attn1.to_k", "self_attn.v": "attn1.to_v", "self_attn.o": "attn1.to_out.0",
    "cross_attn.q": "attn2.to_q", "cross_attn.k": "attn2.to_k", "cross_attn.v": "attn2.to_v", "cross_attn.o": "attn2.to_out.0",
    "ffn.0": "ffn.net.0.proj", "ffn.2": "ffn.net.2",
}
_PICKLE_SUFFIXES = {".pt", ".pth", ".ckpt", ".bin", ".pkl"}


@dataclass
class LoraLayer:
    down: torch.Tensor  # lora_A, [rank, in], fp32
    up: torch.Tensor  # lora_B, [out, rank], fp32


def diffusers_module_name(file_key: str) -> tuple[str, str] | None:
    """``diffusion_model.blocks.3.self_attn.q.lora_A.weight`` -> (``blocks.3.attn1.to_q``, ``A``)."""
    match = _KEY.match(file_key)
    if not match or match.group(2) not in _MODULE_NAMES:
        return None
    return f"blocks.{match.group(1)}.{_MODULE_NAMES[match.group(2)]}", match.group(3)


def _refuse_unusual_keys(path: Path, keys: list[str]) -> None:
    if any(re.search(r"(^|\.)transformer_[12]\.", k) for k in keys):
        raise HarnessError(path, "keys", "a combined Wan 2.2 LoRA (transformer_1/transformer_2 prefixes, saved with "
                           "split_multistage_loras: false) under a split file's name; give it ai-toolkit's combined "
                           "name <name>_<step>.safetensors (found by itself) or split it into _high_noise "
                           "(transformer_1) and _low_noise (transformer_2) files with the prefix removed")
    special = sorted({m.group(0) for k in keys for m in [re.search(r"(lokr_\w+|hada_\w+|dora_scale|\w*magnitude\w*)", k)] if m})
    if special:
        raise HarnessError(path, "keys", f"LoKr/LoHa/DoRA weights ({', '.join(special)}) are not supported; ai-toolkit's "
                           "Wan 2.2 previews use plain LoRA")


_EXPERT_PREFIX = re.compile(r"^(diffusion_model\.)transformer_([12])\.")
_EXPERT_NUMBER = {"high": "1", "low": "2"}


def expert_tensors(path: Path, tensors: dict, expert: str) -> dict:
    """One expert's tensors of a combined file (``split_multistage_loras: false``, §8.4), prefix removed.

    ai-toolkit keeps ``diffusion_model.transformer_1.`` (high noise) / ``transformer_2.`` (low noise) in a combined
    file; a job that trained one stage only writes no prefix, so every key belongs to that stage."""
    if not any(_EXPERT_PREFIX.match(k) for k in tensors):
        return tensors
    wanted, out = _EXPERT_NUMBER[expert], {}
    for key, tensor in tensors.items():
        match = _EXPERT_PREFIX.match(key)
        if match is None:
            out[key] = tensor  # neither expert's: reported as an unknown key below
        elif match.group(2) == wanted:
            out[match.group(1) + key[match.end():]] = tensor
    if not out:
        raise HarnessError(path, "keys", f"a combined Wan 2.2 LoRA without transformer_{wanted}.* keys: it holds no "
                           f"{expert}-noise LoRA, but the job trained that expert")
    return out


def _refuse_non_float(path: Path, tensors: dict) -> None:
    """ai-toolkit saves LoRAs in ``save.dtype`` (a float type); integer weights would be used as numbers silently."""
    odd = sorted(k for k, t in tensors.items() if not t.is_floating_point())
    if odd:
        raise HarnessError(path, odd[0], f"is {str(tensors[odd[0]].dtype).replace('torch.', '')}"
                           f"{f' (+{len(odd) - 1} more non-float tensors)' if len(odd) > 1 else ''}; ai-toolkit saves "
                           "LoRA weights as float16/bfloat16/float32 (save.dtype), so this is not one of its files "
                           "(a quantized or converted LoRA); give the file ai-toolkit saved")


def read_lora_file(path: Path, expert: str | None = None) -> dict[str, LoraLayer]:
    """Parse an ai-toolkit LoRA file into layers keyed by diffusers module name, as fp32 (its in-memory dtype).

    ``expert`` ('high'/'low') reads that expert's half of a combined file (see :func:`expert_tensors`)."""
    path = Path(path)
    if path.suffix.lower() in _PICKLE_SUFFIXES:
        raise HarnessError(path, None, "pickle checkpoints are refused (they can execute code); convert it to .safetensors")
    if not path.is_file():
        raise HarnessError(path, None, "LoRA file not found")
    try:
        with safe_open(str(path), framework="pt") as handle:
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    except Exception as exc:  # safetensors raises its own types for truncated or foreign files
        raise HarnessError(path, None, f"not a readable safetensors file ({exc}); is it truncated?") from None
    if expert is not None:
        tensors = expert_tensors(path, tensors, expert)
    _refuse_non_float(path, tensors)
    keys = list(tensors)
    _refuse_unusual_keys(path, keys)
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    unmatched = []
    for key, tensor in tensors.items():
        mapped = diffusers_module_name(key)
        if mapped is None:
            if not key.endswith(".alpha"):  # alpha is ignored by ai-toolkit (scale is always 1)
                unmatched.append(key)
            continue
        pairs.setdefault(mapped[0], {})[mapped[1]] = tensor.to(torch.float32)
    if unmatched:
        shown = ", ".join(unmatched[:8]) + (f" (+{len(unmatched) - 8} more)" if len(unmatched) > 8 else "")
        raise HarnessError(path, "keys", f"{len(unmatched)} key(s) are not ai-toolkit Wan LoRA keys: {shown}")
    layers = {}
    for name, ab in pairs.items():
        if set(ab) != {"A", "B"}:
            raise HarnessError(path, name, "has only lora_" + "".join(ab) + "; both lora_A and lora_B are needed")
        layers[name] = LoraLayer(down=ab["A"], up=ab["B"])
    return layers


def check_targets(path: Path, layers: dict[str, LoraLayer], transformer: torch.nn.Module) -> dict[str, torch.nn.Linear]:
    """Resolve every layer to a Linear of the transformer; list missing modules and name shape mismatches."""
    modules = dict(transformer.named_modules())
    missing = sorted(name for name in layers if not isinstance(modules.get(name), torch.nn.Linear))
    if missing:
        shown = ", ".join(missing[:8]) + (f" (+{len(missing) - 8} more)" if len(missing) > 8 else "")
        raise HarnessError(path, "keys", f"{len(missing)} LoRA layer(s) match no linear of the base model: {shown}; "
                           "is this LoRA for another model?")
    targets = {}
    for name, layer in layers.items():
        linear = modules[name]
        expected = (linear.out_features, linear.in_features)
        got = (layer.up.shape[0], layer.down.shape[1])
        if got != expected or layer.up.shape[1] != layer.down.shape[0]:
            raise HarnessError(path, name, f"shape mismatch: LoRA B{tuple(layer.up.shape)} @ A{tuple(layer.down.shape)} "
                               f"vs base weight {expected}")
        targets[name] = linear
    return targets


class SharedCast:
    """``x.float()`` once per distinct input tensor (the lean path): q, k and v of an attention read one tensor, so
    the fp32 copy ai-toolkit makes per linear is made once and reused. The cast is exact and the reused tensor is
    the same values, so no bit can change; an input modified in place (its version moved) is cast again. On CUDA
    with Triton the lean path also fuses the tail (multiply, cast, add) into one pass (:meth:`fuses_tail`)."""

    def __init__(self):
        self._last = (None, -1, None)
        self._fused_tail: bool | None = None  # decided on the first CUDA call, so CPU runs never import Triton

    def fuses_tail(self, delta: torch.Tensor) -> bool:
        """Whether multiply, cast and add run as one kernel (kernels.lora_epilogue): CUDA with Triton."""
        if not delta.is_cuda:
            return False
        if self._fused_tail is None:
            self._fused_tail = kernels.unavailable(delta.device) is None
        return self._fused_tail

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        source, version, cast = self._last
        if source is x and version == x._version:
            return cast
        cast = x.to(torch.float32)
        self._last = (x, x._version, cast)
        return cast

    def clear(self) -> None:
        """Drop the held input and its copy (one activation each) when the render ends."""
        self._last = (None, -1, None)


def _unmerged_hook(layer: LoraLayer, multiplier: torch.Tensor, shared: SharedCast | None = None):
    """ai-toolkit's unmerged arithmetic (§8.2). With ``shared`` (the lean path) the fp32 input copy is shared between
    linears and the ``* 1.0`` runtime scale is skipped: multiplying by exactly 1.0 returns every IEEE value
    unchanged, so both paths give the same bits with fewer passes over memory."""
    on_device: dict = {}  # the fp32 A/B (and m) per device, so offloaded layers follow their inputs
    m_value = float(multiplier)  # the float32 value, exactly: the fused tail takes it as a float32 scalar

    def hook(module, inputs, output):
        x = shared(inputs[0]) if shared is not None else inputs[0].to(torch.float32)
        if x.device not in on_device:
            on_device[x.device] = (layer.down.to(x.device), layer.up.to(x.device), multiplier.to(x.device),
                                   _UNIT_SCALE.to(x.device))
        down, up, m, unit = on_device[x.device]
        delta = torch.nn.functional.linear(torch.nn.functional.linear(x, down), up)
        if shared is None:
            delta = delta * unit
        elif shared.fuses_tail(delta):
            return kernels.lora_epilogue(output, delta, m_value)
        return kernels.lora_epilogue_eager(output, delta, m)

    return hook


_UNIT_SCALE = torch.tensor(1.0)  # ai-toolkit's runtime scale: alpha is forced to the rank, so always 1


def merged_weight(weight: torch.Tensor, layer: LoraLayer, multiplier: float, device=None) -> torch.Tensor:
    """``bf16(W.float() + m * (B @ A))``: the merge ai-toolkit does before a sampling round.

    Computed on ``device`` (the compute device, as ai-toolkit merges on its training device) and returned on the
    weight's own device, so an offloaded expert merges to the same bits as a resident one.
    """
    device = device or weight.device
    delta = layer.up.to(device) @ layer.down.to(device)
    merged = (weight.to(device).float() + delta * multiplier).to(weight.dtype)
    if merged.device == weight.device:
        return merged
    return pinned_copy(merged) if weight.is_pinned() else merged.to(weight.device)  # offloaded: stays fast to upload


_HOST_ORIGINALS = WeakIdKeyDictionary()  # parameter -> (pinned original, StorageMark of the tensor restored from it)


def _park(param: torch.nn.Parameter) -> torch.Tensor:
    """Keep the exact original bf16 weight on the host while merged: a GPU copy of every targeted weight of a 14B
    expert would not fit beside the model (the restore is a copy back, bit-exact either way).

    The host copy made for the previous merge is reused while the weight is still the tensor restored from it, so
    switching between merged LoRAs moves the originals over the link once per switch instead of twice."""
    weight = param.data
    if weight.device.type == "cpu":
        return weight
    host, restored = _HOST_ORIGINALS.get(param, (None, None))
    if restored is not None and restored.matches(weight):
        return host
    return pinned_copy(weight)


def _restore(param: torch.nn.Parameter, original: torch.Tensor) -> None:
    """Put the original back where the module is now (it may have moved since, under offloading)."""
    param.data = original.to(param.device)
    if param.device.type != "cpu":
        _HOST_ORIGINALS[param] = (original, StorageMark(param.data))


@contextmanager
def applied(path_by_expert: dict, layers_by_expert: dict, transformers: dict, multiplier: float, merged: bool,
            compute_device=None, lean: bool = False):
    """Apply one LoRA per expert for the duration of a render, then leave the base weights bit-identical.

    ``layers_by_expert``/``transformers`` map 'high'/'low' to parsed layers and modules; ``multiplier`` may also be a
    dict per expert (non-ai-toolkit comparisons). A zero multiplier skips the LoRA as ai-toolkit does; all-zero up or
    down weights (the untrained baseline) skip the merge. ``lean`` takes the unmerged path's bit-identical shortcut
    (:class:`SharedCast`).
    """
    handles, saved = [], []
    shared = SharedCast() if lean and not merged else None
    try:
        for expert, layers in layers_by_expert.items():
            m = multiplier[expert] if isinstance(multiplier, dict) else multiplier
            if m == 0:
                continue
            targets = check_targets(path_by_expert[expert], layers, transformers[expert])
            for name, layer in layers.items():
                linear = targets[name]
                if merged:
                    if not (layer.up.any() and layer.down.any()):
                        continue
                    original = _park(linear.weight)
                    linear.weight.data = merged_weight(linear.weight.data, layer, m, compute_device)
                    saved.append((linear, original))
                else:
                    m_tensor = torch.tensor([m], dtype=torch.float32)
                    handles.append(linear.register_forward_hook(_unmerged_hook(layer, m_tensor, shared)))
        yield
    finally:
        for handle in handles:
            handle.remove()
        if shared is not None:
            shared.clear()
        for linear, original in saved:
            _restore(linear.weight, original)


def merge_round(weight: torch.Tensor, layer: LoraLayer, multiplier: float, device=None) -> torch.Tensor:
    """One sampling round of ai-toolkit's merged path on a bf16 weight: ``merge_in(m)``, then ``merge_out(m)``,
    which is ``merge_in(-|m|)``: a second ``bf16(W' + (-|m|) * B @ A)`` (§8.2). The result is the base every later
    round of the process trains and samples on; it differs from ``weight`` by the two roundings' residue (and, for a
    negative ``m``, by ``2m * B @ A``: merge-out adds the delta again). All-zero up or down skips both, as there.
    """
    if not (layer.up.any() and layer.down.any()):
        return weight
    merged = merged_weight(weight, layer, multiplier, device)
    return merged_weight(merged, layer, -abs(multiplier), device)


@contextmanager
def weights_replaced(replacements):
    """Point each ``(linear, weight)``'s module at that weight for the duration (a replayed merge history), then
    restore the originals bit-exactly from the parked copies, as :func:`applied` does after a merge. An iterator is
    consumed one pair at a time, so each weight may be built only when its turn comes."""
    saved = []
    try:
        for linear, weight in replacements:
            original = _park(linear.weight)
            linear.weight.data = weight
            saved.append((linear, original))
        yield
    finally:
        for linear, original in saved:
            _restore(linear.weight, original)
