"""The config diff: a render's effective inference settings next to what common stacks use (§13, docs/parity).

Each row is one drift knob. ``this render`` is derived from the result (and its sampler profile); the
``ai-toolkit`` column is what ai-toolkit did for previews of that era; the other columns are the defaults
of stacks people load these LoRAs into. A cell is marked as drift when its value differs from ai-toolkit's,
so a reader sees at a glance which settings must be matched to reproduce a training preview elsewhere.

Values marked ``UNVERIFIED`` are carried over unverified from PARITY.md/ANCHORS.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field

STACKS = (
    ("diffusers", "diffusers WanImageToVideoPipeline"),
    ("official", "Wan2.2 generate.py (I2V-A14B)"),
    ("runcomfy", "runcomfy ai-toolkit-inference"),
    ("comfyui", "ComfyUI Wan 2.2 I2V template"),
)

# What ai-toolkit's own sampler did per profile era (§7.1, docs/parity); non-aitk profiles map to None.
_AITK_ERA = {
    "aitk-euler": ("euler", 5.0, None),
    "aitk-unipc": ("unipc", 3.0, "new"),
    "aitk-unipc-old": ("unipc", 3.0, "old"),
}


@dataclass
class Cell:
    text: str
    drift: bool | None = None  # True: differs from ai-toolkit; False: same; None: unknown / not comparable


@dataclass
class KnobRow:
    knob: str
    section: str  # section of docs/parity
    render: Cell
    aitk: Cell
    stacks: dict[str, Cell] = field(default_factory=dict)
    effect: str = ""

    @property
    def render_differs(self) -> bool:
        return bool(self.render.drift)

    @property
    def drift_count(self) -> int:
        return sum(1 for c in self.stacks.values() if c.drift)


@dataclass
class ProfileInfo:
    """The sampler settings a result ran with; from harness.render.profiles when the name is known."""

    name: str | None
    scheduler: str | None = None
    shift: float | None = None
    boundary: float | None = None
    unipc_sigmas: str | None = None
    posterior: str | None = None
    cast_whole_bf16: bool | None = None
    exact: bool | None = None
    description: str = ""


def profile_info(result: dict) -> ProfileInfo:
    """Profile fields for a result: recorded fields win, else the registry, else name-only."""
    name = result.get("profile")
    info = ProfileInfo(name=name, exact=result.get("profile_exact"))
    base = (name or "").split("+", 1)[0]
    try:  # lightweight module (no torch); the report still works if it moves or the name is unknown
        from harness.render.profiles import PROFILES
    except Exception:  # pragma: no cover - defensive
        PROFILES = {}
    prof = PROFILES.get(base)
    if prof is not None:
        info.scheduler, info.shift, info.boundary = prof.scheduler, prof.shift, prof.boundary
        info.unipc_sigmas, info.posterior, info.cast_whole_bf16 = prof.unipc_sigmas, prof.posterior, prof.cast_whole_bf16
        info.description = prof.description
        if info.exact is None:
            info.exact = prof.exact
    # A "+k=v,..." suffix (with_overrides) changes fields; the runner may also record them explicitly.
    if name and "+" in name:
        for part in name.split("+", 1)[1].split(","):
            key, _, value = part.partition("=")
            _apply_override(info, key.strip(), value.strip())
    recorded = result.get("profile_settings")
    if isinstance(recorded, dict):
        for key, value in recorded.items():
            if hasattr(info, key) and key != "name":
                setattr(info, key, value)
    return info


def _apply_override(info: ProfileInfo, key: str, value: str) -> None:
    if not hasattr(info, key) or key == "name":
        return
    current = getattr(info, key)
    try:
        if isinstance(current, bool) or value in ("True", "False"):
            setattr(info, key, value == "True")
        elif isinstance(current, float):
            setattr(info, key, float(value))
        else:
            setattr(info, key, value)
    except ValueError:
        pass


# --------------------------------------------------------------------------- trace


@dataclass
class TraceSummary:
    steps: list[tuple[str, float]]  # one (expert, t) per denoising step
    forwards: int
    counts: dict[str, int]
    switch_index: int | None  # first step on the second expert
    switch_between: tuple[float, float] | None  # (last t on the first expert, first t on the next)

    def text(self) -> str:
        if not self.steps:
            return "no trace recorded"
        parts = [f"{n} step{'s' if n != 1 else ''} on {e}" for e, n in self.counts.items()]
        out = ", ".join(parts) + f" ({self.forwards} transformer forwards)"
        if self.switch_between is not None:
            a, b = self.switch_between
            out += f"; switch before step {self.switch_index}, between t={_num(a)} and t={_num(b)}"
        else:
            out += "; no expert switch"
        return out


def summarize_trace(trace) -> TraceSummary:
    """Collapse per-forward entries (cond + uncond share a t) into per-step entries."""
    steps: list[tuple[str, float]] = []
    forwards = 0
    for entry in trace or []:
        try:
            expert, t = str(entry[0]), float(entry[1])
        except (TypeError, ValueError, IndexError):
            continue
        forwards += 1
        if not steps or steps[-1] != (expert, t):
            steps.append((expert, t))
    counts: dict[str, int] = {}
    for expert, _ in steps:
        counts[expert] = counts.get(expert, 0) + 1
    switch_index = switch_between = None
    for i in range(1, len(steps)):
        if steps[i][0] != steps[i - 1][0]:
            switch_index, switch_between = i, (steps[i - 1][1], steps[i][1])
            break
    return TraceSummary(steps, forwards, counts, switch_index, switch_between)


def _num(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def _shift(value) -> str:
    return "unknown" if value is None else f"{float(value):.1f}"


def _high_steps_at(steps: list[tuple[str, float]], boundary: float) -> int:
    return sum(1 for _, t in steps if t >= boundary * 1000.0)


# --------------------------------------------------------------------------- rows


def _same(a, b) -> bool | None:
    if a is None or b is None:
        return None
    return a != b


def config_diff(result: dict, environment: dict | None = None) -> list[KnobRow]:
    """The knob table for one result (see module doc)."""
    env = environment or {}
    p = profile_info(result)
    era = _AITK_ERA.get((p.name or "").split("+", 1)[0])
    a_sched, a_shift, a_sigmas = era if era else (None, None, None)
    trace = summarize_trace(result.get("trace"))
    steps = result.get("sample_steps")
    g = result.get("guidance_scale")
    m = result.get("network_multiplier")
    frames = result.get("num_frames")
    fps = result.get("fps")
    lora_path = result.get("lora_path") or "none"
    approx = " ".join(result.get("approximate") or [])
    rows: list[KnobRow] = []

    def sched_text(s, sig=None):
        if s == "euler":
            return "FlowMatch Euler"
        if s == "unipc":
            return "UniPC bh2, order 2" + (f", {sig} sigma grid" if sig else "")
        return "unknown"

    aitk_sched_text = sched_text(a_sched, a_sigmas) if era else "Euler (≥ 0.9.3) / UniPC (0.4.1–0.9.2)"
    rows.append(KnobRow(
        "sampler", "§7.1",
        Cell(sched_text(p.scheduler, p.unipc_sigmas if p.scheduler == "unipc" else None), _same(p.scheduler, a_sched)),
        Cell(aitk_sched_text),
        {"diffusers": Cell("UniPC (UNVERIFIED)", _same("unipc", a_sched)),
         "official": Cell("UniPC (--sample_solver unipc)", _same("unipc", a_sched)),
         "runcomfy": Cell("UniPC bh2, order 2", _same("unipc", a_sched)),
         "comfyui": Cell("euler / simple", _same("euler", a_sched))},
        "different detail and noise texture; same composition at best"))
    rows.append(KnobRow(
        "shift", "§7.1",
        Cell(_shift(p.shift), _same(p.shift, a_shift)),
        Cell(_shift(a_shift) if era else "5.0 (Euler) / 3.0 (UniPC)"),
        {"diffusers": Cell("scheduler config of the model repo (UNVERIFIED)"),
         "official": Cell("5.0", _same(5.0, a_shift)),
         "runcomfy": Cell("3.0", _same(3.0, a_shift)),
         "comfyui": Cell("5.0 (ModelSamplingSD3; 5–8 common, UNVERIFIED)", _same(5.0, a_shift))},
        "higher shift = more steps at high noise; changes motion and structure"))
    boundary_text = _num(p.boundary)
    if p.boundary is not None and trace.steps:
        boundary_text += (f" → t ≥ {p.boundary * 1000:g}: {_high_steps_at(trace.steps, p.boundary)} of "
                          f"{len(trace.steps)} steps on the high-noise expert")
    alt = ""
    if trace.steps:
        alt = f" ({_high_steps_at(trace.steps, 0.9)} high steps on this schedule)"
    rows.append(KnobRow(
        "expert boundary", "§7.4",
        Cell(boundary_text, _same(p.boundary, 0.875)),
        Cell("0.875 (every version)"),
        {"diffusers": Cell("0.9 (Wan2.2 I2V repo)" + alt, True),
         "official": Cell("0.9" + alt, True),
         "runcomfy": Cell("0.9" + alt, True),
         "comfyui": Cell("step split (10 of 20), not a sigma boundary", True)},
        "1–3 steps change expert; visible in coarse structure and motion"))
    cfg = f"{_num(g)} for both experts" + ("" if g is None or g > 1 else " (≤ 1: CFG off)")
    rows.append(KnobRow(
        "CFG per expert", "§6",
        Cell(cfg, False), Cell(f"one guidance_scale for both ({_num(g)})"),
        {"diffusers": Cell("guidance_scale, optional guidance_scale_2", None),
         "official": Cell("(3.5, 3.5)", None if g is None else g != 3.5),
         "runcomfy": Cell("one for both (ai-toolkit pipeline)", False),
         "comfyui": Cell("per KSampler; template 3.5", None if g is None else g != 3.5)},
        "contrast and saturation"))
    rows.append(KnobRow(
        "steps", "§1.2",
        Cell(_num(steps), False), Cell(f"{_num(steps)} from the job (UI default 25, 30 from 2026-04-10)"),
        {"diffusers": Cell("50", _same(50, steps)), "official": Cell("40", _same(40, steps)),
         "runcomfy": Cell("25", _same(25, steps)), "comfyui": Cell("20 (split at 10)", _same(20, steps))},
        "detail / sharpness"))
    rows.append(KnobRow(
        "LoRA multiplier", "§8.3",
        Cell("no LoRA" if lora_path == "none" else f"{_num(m)} on both experts", False),
        Cell("one multiplier for both experts"),
        {"diffusers": Cell("per adapter; LoRA on transformer only unless load_into_transformer_2", True),
         "official": Cell("n/a (no LoRA loader)", None),
         "runcomfy": Cell("per expert (loras[].network_multiplier)", True),
         "comfyui": Cell("per expert (one LoraLoaderModelOnly each)", True)},
        "LoRA strength per stage"))
    lora_text = {"none": "no LoRA",
                 "merged": "merged: W' = bf16(W + m·up@down)",
                 "unmerged": "unmerged: fp32 A/B, delta rounded to bf16 then added"}.get(lora_path, lora_path)
    rows.append(KnobRow(
        "LoRA path / precision", "§8.2",
        Cell(lora_text, False),
        Cell("unmerged if quantize/layer_offloading/several multipliers, else merged (base weights drift per round)"),
        {"diffusers": Cell("PEFT adapters cast to bf16", True),
         "official": Cell("n/a", None),
         "runcomfy": Cell("PEFT bf16 adapters (or fuse_lora)", True),
         "comfyui": Cell("patched into the (fp8) weights", True)},
        "tiny per layer, cumulative"))
    post = {"sample": "posterior sample(), RNG seeded with seed", "mode": "posterior mode"}.get(p.posterior or "", "unknown")
    rows.append(KnobRow(
        "posterior", "§3",
        Cell(post, _same(p.posterior, "sample")), Cell("sample() with seeded CUDA RNG (bf16)"),
        {"diffusers": Cell("mode", True), "official": Cell("UNVERIFIED", None),
         "runcomfy": Cell("sample(), CUDA RNG never seeded", True), "comfyui": Cell("UNVERIFIED", None)},
        "first-frame fidelity / colour; run-to-run nondeterminism in runcomfy"))
    cast = {True: "all bf16 (.to(bf16))", False: "fp32-kept modules stay fp32"}.get(p.cast_whole_bf16, "unknown")
    rows.append(KnobRow(
        "dtype of fp32-kept modules", "§11.1",
        Cell(cast, _same(p.cast_whole_bf16, True)), Cell("all bf16 (time embedder, scale_shift_table, norms)"),
        {"diffusers": Cell("kept fp32 (_keep_in_fp32_modules)", True), "official": Cell("params bf16 (UNVERIFIED)", None),
         "runcomfy": Cell("kept fp32", True), "comfyui": Cell("UNVERIFIED", None)},
        "tiny per step, accumulates; not bit-exact"))
    quantized = "quantiz" in approx or "layer_offloading" in approx
    rows.append(KnobRow(
        "transformer quantization", "§9",
        Cell("none (bf16 reference)", True if quantized else None),
        Cell("as the job: qfloat8 (UI default) / uint4+ARA / none" + (" — this job quantized" if quantized else "")),
        {"diffusers": Cell("bf16", None), "official": Cell("bf16", None), "runcomfy": Cell("bf16", None),
         "comfyui": Cell("fp8_scaled", True)},
        "noticeable texture and detail differences"))
    rows.append(KnobRow(
        "initial noise", "§3",
        Cell("CPU generator, fp32 → bf16 → fp32", False), Cell("CPU generator, fp32 → bf16 → fp32"),
        {"diffusers": Cell("caller's generator, fp32 not rounded", True), "official": Cell("CUDA generator", True),
         "runcomfy": Cell("same as ai-toolkit", False), "comfyui": Cell("own CPU noise", True)},
        "everything, if the generator differs"))
    size = f"{result.get('width')}×{result.get('height')}"
    req = (result.get("width_requested"), result.get("height_requested"))
    if all(req) and tuple(req) != (result.get("width"), result.get("height")):
        size += f" (requested {req[0]}×{req[1]})"
    rows.append(KnobRow(
        "control image resize", "§5",
        Cell(f"LANCZOS stretch to {size}", False), Cell("LANCZOS stretch to the /16 size, no EXIF transpose"),
        {"diffusers": Cell("caller's choice (examples: aspect-fit)", None), "official": Cell("aspect kept (max area)", True),
         "runcomfy": Cell("LANCZOS stretch", False), "comfyui": Cell("aspect-fit / crop nodes", None)},
        "geometry of the first frame"))
    snapped = None
    try:
        snapped = (int(result["width"]) % 16 == 0 and int(result["height"]) % 16 == 0)
    except (KeyError, TypeError, ValueError):
        pass
    rows.append(KnobRow(
        "resolution snap", "§5.2",
        Cell(size + ("" if snapped is None else (" (multiple of 16)" if snapped else " (NOT a multiple of 16)")),
             None if snapped is None else not snapped),
        Cell("/8 (min 64) then /16 floor"),
        {"diffusers": Cell("model-specific", None), "official": Cell("--size area, aspect kept", True),
         "runcomfy": Cell("/16 floor (I2V)", False), "comfyui": Cell("node-specific", None)},
        "size mismatch"))
    ok = None
    try:
        ok = (int(frames) - 1) % 4 == 0
    except (TypeError, ValueError):
        pass
    rows.append(KnobRow(
        "frames", "§5.1",
        Cell(f"{_num(frames)}" + ("" if ok is None else (" (4k+1)" if ok else " (NOT 4k+1)")),
             None if ok is None else not ok),
        Cell("(n−1)//4·4+1; UI default 41"),
        {"diffusers": Cell("81", _same(81, frames)), "official": Cell("81", _same(81, frames)),
         "runcomfy": Cell("41", _same(41, frames)), "comfyui": Cell("template length", None)},
        "length / motion"))
    try:
        single = int(frames) == 1
    except (TypeError, ValueError):
        single = False
    if single:
        enc = "JPEG q75 4:2:0 (Pillow defaults)"
    else:
        enc = f"animated WebP q80, duration 1000//fps = {1000 // int(fps)} ms" if fps else "animated WebP q80"
    rows.append(KnobRow(
        "output encoding", "§2.3",
        Cell(enc, False), Cell("animated WebP q80 (video), JPEG q75 (single frame)"),
        {"diffusers": Cell("export_to_video: mp4", True), "official": Cell("mp4", True),
         "runcomfy": Cell("WebP q80 (video), JPEG q95 (image)", True if single else False),
         "comfyui": Cell("save node: mp4 / webp settings", True)},
        "compression artefacts in goldens"))
    rows.append(KnobRow(
        "VAE", "§11.4",
        Cell("bf16, untiled decode", False), Cell("bf16, untiled (I2V)"),
        {"diffusers": Cell("fp32 in examples", True), "official": Cell("UNVERIFIED", None),
         "runcomfy": Cell("bf16, untiled", False), "comfyui": Cell("tiled decode common", True)},
        "slight colour / texture; seams with tiling"))
    tf32 = env.get("allow_tf32_matmul")
    attn = "native SDPA, eager" + ("" if tf32 is None else f", TF32 matmul {'on' if tf32 else 'off'}")
    rows.append(KnobRow(
        "attention / TF32 / compile", "§11.3",
        Cell(attn, bool(tf32) if tf32 is not None else None), Cell("native SDPA, TF32 off, no torch.compile"),
        {"diffusers": Cell("SDPA by default", False), "official": Cell("flash-attn when available (UNVERIFIED)", None),
         "runcomfy": Cell("xformers if installed, TF32 on, max-autotune compile", True),
         "comfyui": Cell("varies (sage / flash / sdpa)", None)},
        "tiny (not bit-exact)"))
    neg = result.get("negative_prompt")
    rows.append(KnobRow(
        "negative prompt", "§1.6",
        Cell("empty" if neg == "" else ("unknown" if neg is None else "set (see settings)"), False),
        Cell('"" unless the job sets neg'),
        {"diffusers": Cell("caller's (None → empty)", None),
         "official": Cell("empty → Wan's default Chinese negative", True if neg == "" else None),
         "runcomfy": Cell('"" default', False),
         "comfyui": Cell("Wan's long default negative", True if neg == "" else None)},
        "contrast, artefacts, prompt adherence"))
    return rows
