"""The accuracy recovery adapter (ARA) of a ``qtype: "uint4|<ara>"`` job (§9, docs/parity): read, attached, and its
targets quantized, as ai-toolkit does it (the plan itself is :mod:`harness.render.quant`'s)."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..errors import HarnessError

BF16 = torch.bfloat16


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


def apply_ara(model: torch.nn.Module, layers: dict, path: str, quantize) -> int:
    """Attach the ARA (permanent forward hooks) and quantize its targets with ``quantize(name, linear) -> count``
    (the job's qtype, :mod:`harness.render.quant`); other linears stay bf16."""
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
        count += quantize(name, modules[name])
        model.get_submodule(name).register_forward_hook(_ara_hook(down, up))
    return count
