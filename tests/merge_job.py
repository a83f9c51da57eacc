"""A merged ai-toolkit job on the tiny model whose goldens carry ai-toolkit's merge history (§8.2).

The goldens are rendered the way ai-toolkit's sampler did it, written here from ai-toolkit's ``merge_in`` /
``merge_out`` (``toolkit/network_mixins.py`` at 27a03a91) rather than through the harness's LoRA code: before each
round the fp32 LoRA is merged into the live bf16 weights (``weight + multiplier * (up @ down) * scale``, written back
in bf16), the round renders with no LoRA applied, and ``merge_out`` merges ``-|multiplier|`` in again, so the weights
keep the residue for the next round. The LoRAs come from the harness's own tiny writer (``harness/demo_model.py``).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from harness.demo_model import build_tiny_model, lora_module_names, make_demo_lora_pair
from harness.engine import Engine
from harness.media import write_like_aitk
from harness.options import RunOptions
from harness.stack import STACK_FILE, dump_stack
from harness.targets import from_output_dir

NAME = "hist"
ROUNDS = (0, 2, 4, 6, 8)  # step 0: the untrained LoRA (zero up); 8: the after-training render (un-numbered files)
MULTIPLIER = 1.0
THREADS = 1  # self-consistent renders; one thread is faster on a busy two-core machine


def config(model: Path, ctrl: Path, multiplier: float = MULTIPLIER) -> dict:
    sample = {"sample_every": 2, "width": 32, "height": 32, "num_frames": 5, "fps": 16, "seed": 42, "walk_seed": True,
              "guidance_scale": 4.0, "sample_steps": 4, "neg": "", "network_multiplier": multiplier,
              "samples": [{"prompt": "a red kite drifts over the green hills", "ctrl_img": str(ctrl)}]}
    process = {"type": "sd_trainer", "training_folder": "/workspace/out", "device": "cpu",
               "network": {"type": "lora", "linear": 4, "linear_alpha": 4},
               "save": {"dtype": "float32", "save_every": 2, "max_step_saves_to_keep": 10},
               "train": {"steps": ROUNDS[-1], "dtype": "bf16"},
               "model": {"name_or_path": str(model), "arch": "wan22_14b_i2v", "quantize": False},
               "sample": sample}
    return {"job": "extension", "config": {"name": NAME, "process": [process]}, "meta": {"name": "[name]"}}


def write_job(root: Path, model: Path, multiplier: float = MULTIPLIER) -> Path:
    """The output folder with config, checkpoints and placeholder previews (``render_goldens`` fills them in)."""
    y, x = np.mgrid[0:32, 0:32].astype(np.float32)
    ctrl = root / "ctrl.png"
    Image.fromarray(np.stack([40 + 6 * x, 120 + 80 * np.sin(y / 5), 200 - 5 * (x + y)], -1).astype(np.uint8)).save(ctrl)
    out = root / NAME
    (out / "samples").mkdir(parents=True)
    (out / "config.yaml").write_text(yaml.safe_dump(config(model, ctrl, multiplier)))
    for n, step in enumerate(ROUNDS):
        (out / "samples" / f"{1790000000000 + 1000 * n}__{step:09d}_0.webp").write_bytes(b"")
        if step:
            make_demo_lora_pair(model, out, NAME, seed=10 * n, step=None if step == ROUNDS[-1] else step)
    return out


def _aitk_merge(transformer, lora_file: Path, weight: float) -> None:
    """ai-toolkit's ``LoRAModule.merge_in(weight)`` for every module of one expert's file (merge_out: -|m|), computed
    on the device the weights are on (ai-toolkit's training device)."""
    state = load_file(str(lora_file), device=str(next(transformer.parameters()).device))
    for aitk, diffusers in lora_module_names(len(transformer.blocks)):
        down = state[f"{aitk}.lora_A.weight"].float()
        up = state[f"{aitk}.lora_B.weight"].float()
        if not up.any() or not down.any():
            continue
        param = transformer.get_submodule(diffusers).weight
        merged = param.data.float() + weight * (up @ down) * 1.0
        param.data = merged.to(param.dtype)


def render_goldens(out: Path, options: RunOptions | None = None) -> None:
    """Render every round as ai-toolkit did, carrying the merge residue from round to round."""
    engine = Engine(options or RunOptions(device="cpu", threads=THREADS))
    targets = sorted(from_output_dir(out), key=lambda t: t.preview.step)
    bundle, _ = engine._bundle(targets[0], engine.baseline(targets[0]), engine.device)
    pristine = {id(p): p.data for e in bundle.experts.values() for p in e.parameters()}
    (out / "samples_raw").mkdir(exist_ok=True)
    try:
        for target in targets:
            lora = target.preview.lora
            files = {} if lora is None else {"high": lora.high, "low": lora.low}
            for side, path in files.items():
                _aitk_merge(bundle.experts[side], path, MULTIPLIER)
            settings = replace(engine.baseline(target), use_lora=False, merge_history=None)
            frames = engine.render(target, settings).frames
            for side, path in files.items():
                _aitk_merge(bundle.experts[side], path, -abs(MULTIPLIER))
            golden = Path(target.preview.golden)
            write_like_aitk(golden, frames, target.preview.sample.fps)
            np.save(out / "samples_raw" / f"{golden.stem}.npy", frames)
    finally:
        for expert in bundle.experts.values():
            for p in expert.parameters():
                p.data = pristine[id(p)]
    (out / STACK_FILE).write_text(dump_stack(engine.stack_here(engine.device)))


def resave(out: Path, dtype: torch.dtype, keep: Path) -> None:
    """Re-save every checkpoint in ``dtype`` (as the UI's ``save.dtype: bf16`` does), keeping the fp32 ones in
    ``keep`` under the same names."""
    keep.mkdir(parents=True, exist_ok=True)
    for path in sorted(out.glob(f"{NAME}*_noise.safetensors")):
        (keep / path.name).write_bytes(path.read_bytes())
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata()
        save_file({k: v.to(dtype) for k, v in load_file(str(path)).items()}, str(path), metadata=meta)


def build(root: Path) -> tuple[Path, Path]:
    model = build_tiny_model(root / "tiny_model")
    out = write_job(root, model)
    render_goldens(out)
    return model, out
