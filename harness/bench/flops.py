"""Render sizes and the FLOP bound of a denoising step (../shared/DIFFUSERS-FACTS.md, section 6, outside the repo).

Pure arithmetic, no torch: the bound is what every measured step time is compared with.
"""

from __future__ import annotations

TEXT_LEN = 512  # UMT5 sequence length the pipeline always pads to
NOMINAL_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0, "H800": 989.0, "A100": 312.0}


def parse_size(text: str) -> tuple[int, int, int]:
    """``WxHxF`` -> (width, height, frames); width/height multiples of 16, frames 4k+1."""
    try:
        w, h, f = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"size {text!r} is not WxHxF (e.g. 832x480x41)") from None
    if w % 16 or h % 16 or (f - 1) % 4 or f < 1:
        raise ValueError(f"size {text!r}: width and height must be multiples of 16 and frames 4k+1")
    return w, h, f


def parse_sizes(text: str) -> list[tuple[int, int, int]]:
    """A comma-separated ``WxHxF`` list (``--sizes``, ``--fast-sizes``); empty items are ignored."""
    return [parse_size(s) for s in text.split(",") if s.strip()]


def size_label(size) -> str:
    """(832, 480, 41) -> ``832x480x41``: the key of a size in rows and in the JSON."""
    return "x".join(str(v) for v in size)


def tokens(width: int, height: int, frames: int) -> int:
    """Transformer sequence length L = F_lat * (H/16) * (W/16) (VAE x8 spatial, x4 temporal; patch (1,2,2))."""
    return ((frames - 1) // 4 + 1) * (height // 16) * (width // 16)


def transformer_dims(config: dict) -> tuple[int, int, int]:
    """(model dim, FFN dim, layers) of a transformer config: all the FLOP count needs."""
    return config["num_attention_heads"] * config["attention_head_dim"], config["ffn_dim"], config["num_layers"]


def flops_per_forward(L: int, d: int, f: int, layers: int, text_len: int = TEXT_LEN) -> float:
    """``layers * [(12d^2 + 4df)L + 4dL^2 + 4dL*Lt + 4d^2*Lt]``: linears, self-attention core, cross-attention core,
    cross-attention K/V on the text; embedders and the head (< 0.1 %) are ignored. Multiply-add = 2 FLOPs."""
    return float(layers) * ((12 * d * d + 4 * d * f) * L + 4 * d * L * L + 4 * d * L * text_len + 4 * d * d * text_len)


def nominal_tflops(device_name: str) -> float | None:
    """The datasheet dense bf16 rate of a known GPU, to set the measured peak against; None when unknown."""
    for key, value in NOMINAL_BF16_TFLOPS.items():
        if all(part in device_name for part in key.split()):
            return value
    return None


def step_bound(size, dims: tuple[int, int, int], peak: dict, attention: dict | None = None) -> dict:
    """Seconds a CFG step (two forwards) needs at the measured GEMM peak, at the nominal rate, and, once the
    self-attention at this size is measured, at what the exact path can reach (GEMM work at the GEMM peak,
    self-attention at SDPA's rate)."""
    L = tokens(*size)
    fwd = flops_per_forward(L, *dims)
    peak_flops = peak["tflops"] * 1e12
    out = {"tokens": L, "pflop_per_forward": round(fwd / 1e15, 6),
           "step_bound_s": 2 * fwd / peak_flops}  # two forwards per step (CFG)
    nominal = peak.get("nominal_tflops")
    if nominal:
        out["step_bound_nominal_s"] = 2 * fwd / (nominal * 1e12)
    if attention:
        d, _, layers = dims
        rest = fwd - layers * 4.0 * d * L * L
        out["step_attainable_s"] = 2 * (rest / peak_flops + layers * attention["seconds"])
    return out
