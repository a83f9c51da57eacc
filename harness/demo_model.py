"""Tiny, offline, deterministic stand-in for Wan 2.2 I2V A14B plus ai-toolkit-format demo LoRAs.

Why this exists: the harness must be testable without the 14B checkpoint, without network access
and without Hub downloads (diffusers' own Wan tests fetch their tokenizer and text encoder from the
Hub). Everything here is built from code and random numbers with fixed seeds, so a test can build a
complete diffusers-layout model folder in a few seconds and get the same bytes every time.

The folder has the layout of ``Wan-AI/Wan2.2-I2V-A14B-Diffusers`` (two experts ``transformer`` /
``transformer_2``, ``vae``, ``text_encoder``, ``tokenizer``, ``scheduler``, ``model_index.json`` with
``boundary_ratio`` 0.9) at toy sizes, so the same loading code paths run as for the real model.

The LoRA writer produces files in ai-toolkit's on-disk layout (§8.4, docs/parity): original-Wan key
names (``diffusion_model.blocks.N.self_attn.q.lora_A.weight``), no alpha keys (scale 1), metadata
as ai-toolkit writes it, and ai-toolkit's ``_high_noise`` / ``_low_noise`` file names.
"""

from __future__ import annotations

import io
import json
import re
import string
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .render.schedule import UNIPC_FLOW_CONFIG

__all__ = [
    "TRANSFORMER_CONFIG",
    "VAE_CONFIG",
    "TEXT_ENCODER_CONFIG",
    "AITK_VERSION",
    "build_tiny_model",
    "build_tokenizer",
    "lora_module_names",
    "aitk_lora_filename",
    "aitk_metadata",
    "write_aitk_lora",
    "make_demo_lora_pair",
]

# --------------------------------------------------------------------------------------------
# Sizes. Same architecture as the real model (I2V: 36 input channels = 16 noise + 4 mask + 16
# image-condition latents; no CLIP image embedding in Wan 2.2), just small.
# --------------------------------------------------------------------------------------------

TRANSFORMER_CONFIG = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=2,
    attention_head_dim=12,
    in_channels=36,
    out_channels=16,
    text_dim=32,
    freq_dim=32,
    ffn_dim=64,
    num_layers=2,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    image_dim=None,
    added_kv_proj_dim=None,
    rope_max_seq_len=64,
    pos_embed_seq_len=None,
)

# Public Wan 2.1 VAE latent statistics (the real checkpoint's values). The pipeline uses them to
# normalise latents, so keeping the real numbers keeps that arithmetic realistic.
WAN21_LATENTS_MEAN = [
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
]
WAN21_LATENTS_STD = [
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
]

VAE_CONFIG = dict(
    base_dim=8,
    z_dim=16,
    dim_mult=[1, 2, 4, 4],
    num_res_blocks=1,
    attn_scales=[],
    temperal_downsample=[False, True, True],  # sic: diffusers' spelling
    dropout=0.0,
    latents_mean=WAN21_LATENTS_MEAN,
    latents_std=WAN21_LATENTS_STD,
)

# T5 convention: <pad>=0, </s>=1, <unk>=2, sentencepiece pieces, then <extra_id_99>..<extra_id_0>.
SPM_VOCAB_SIZE = 160
EXTRA_IDS = 100
VOCAB_SIZE = SPM_VOCAB_SIZE + EXTRA_IDS  # 260

TEXT_ENCODER_CONFIG = dict(
    vocab_size=VOCAB_SIZE,
    d_model=32,
    d_kv=8,
    d_ff=64,
    num_layers=2,
    num_decoder_layers=2,
    num_heads=4,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    dropout_rate=0.0,  # no dropout anywhere, even if someone forgets .eval()
    feed_forward_proj="gated-gelu",
    pad_token_id=0,
    eos_token_id=1,
    decoder_start_token_id=0,
    tie_word_embeddings=True,
)

# Same flow-matching UniPC settings ai-toolkit and the real checkpoint use for Wan 2.2 14B.
SCHEDULER_CONFIG = dict(UNIPC_FLOW_CONFIG)  # what Wan2.2-I2V-A14B-Diffusers ships: UniPC, flow shift 3

BOUNDARY_RATIO = 0.9  # Wan2.2-I2V-A14B-Diffusers model_index.json

# Default seeds per component; ``build_tiny_model(seed=s)`` offsets all of them by ``s``.
_SEEDS = {"transformer": 1000, "transformer_2": 2000, "vae": 3000, "text_encoder": 4000}

# Why the gains: with PyTorch's default init the text path of a 2-layer, 24-wide transformer is
# so weak that two different prompts move the noise prediction by only ~3-5 % of its std, and a
# parity test could hardly tell a dropped or mis-tokenised prompt from a correct one. Scaling the
# two text-projection weights by 3 brings that to ~30-45 % (one changed word ~17 %). The timestep
# path needs no help: t=450 vs t=500 already moves the output by ~13-30 %, and the control image
# by ~90 %. tests/test_demo_model.py checks these effects stay visible.
_TRANSFORMER_GAINS = {
    "condition_embedder.text_embedder.linear_1.weight": 3.0,
    "condition_embedder.text_embedder.linear_2.weight": 3.0,
}

# Built-in English text for the sentencepiece model: short video-caption-like sentences, plus
# every printable ASCII character (``required_chars``) so ASCII prompts round-trip without <unk>.
_CORPUS = """\
a cat walks slowly across a sunny kitchen floor and looks at the camera
a dog runs along the beach at sunset while waves roll onto the sand
the camera pans left over a quiet city street in the rain at night
a woman in a red coat turns her head and smiles, her hair moving in the wind
a man plays the guitar on a wooden stage under warm yellow lights
close-up of a flower opening its petals in the early morning light
an old car drives down a dusty road through the desert, leaving a trail of dust
a small boat floats on a calm lake surrounded by green mountains
snow falls gently on a pine forest as the camera moves forward
a child throws a ball in the park and laughs while birds fly overhead
the astronaut floats inside the space station and waves at the camera
a chef chops vegetables quickly on a cutting board in a busy restaurant
slow motion shot of water drops splashing into a glass bowl
the sun rises over the ocean and the sky turns orange, pink and purple
a horse gallops across an open field with tall grass swaying in the wind
a robot walks through a futuristic city with neon signs and flying cars
two people dance in a ballroom while the camera circles around them
a butterfly lands on a leaf, then flies away into the bright blue sky
the train moves through the countryside past farms, rivers and small towns
a candle flickers on a table in a dark room with soft shadows on the wall
Bright colors, overexposed, static, blurred details, subtitles, style, artwork, painting.
Worst quality, low quality, JPEG artifacts, ugly, deformed, extra fingers, bad hands!
Shot on 35mm film; 4K, 60fps, 1080p, f/1.8 -- (cinematic) [lighting] {depth} <soft> @ 100% & #1.
"It's 12:30," she said? Yes: "~$5 + 3 = 8 * 2 / 4 ^ 1 | x _ y = z` \\ ok".
"""
_REQUIRED_CHARS = "".join(c for c in string.printable if c not in string.whitespace)


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------

def _train_sentencepiece_pieces() -> list[tuple[str, float]]:
    """Train a tiny unigram sentencepiece model in memory; return its (piece, score) list.

    Single-threaded training on a fixed corpus is deterministic, and the identity normaliser
    matches the T5 ``tokenizers`` pipeline we wrap it in (which gets no precompiled charsmap).
    """
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_CORPUS.splitlines()),
        model_writer=buf,
        model_type="unigram",
        vocab_size=SPM_VOCAB_SIZE,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        pad_piece="<pad>",
        eos_piece="</s>",
        unk_piece="<unk>",
        character_coverage=1.0,
        required_chars=_REQUIRED_CHARS,
        normalization_rule_name="identity",
        num_threads=1,
        minloglevel=2,
        hard_vocab_limit=True,
    )
    proc = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    return [(proc.id_to_piece(i), float(proc.get_score(i))) for i in range(proc.get_piece_size())]


def build_tokenizer():
    """Return a T5 tokenizer (transformers 5.x, ``tokenizers``-backed) with vocab 260.

    Layout like real T5/UMT5 tokenizers: <pad>=0, </s>=1, <unk>=2, the sentencepiece pieces,
    then ``<extra_id_99>`` .. ``<extra_id_0>`` at the top (ids 160..259). ``""`` encodes to [1].
    We pass the vocab list rather than an ``spiece.model`` file: in transformers 5.x,
    ``T5Tokenizer(vocab_file=...)`` silently builds a broken 4-token tokenizer
    (../shared/DIFFUSERS-FACTS.md, section 3.2, outside the repo).
    """
    from transformers import T5Tokenizer

    pieces = _train_sentencepiece_pieces()
    if len(pieces) != SPM_VOCAB_SIZE or [p for p, _ in pieces[:3]] != ["<pad>", "</s>", "<unk>"]:
        raise RuntimeError(f"unexpected sentencepiece vocab: {len(pieces)} pieces, head {pieces[:3]}")
    vocab = pieces + [(f"<extra_id_{i}>", 0.0) for i in range(EXTRA_IDS - 1, -1, -1)]
    return T5Tokenizer(vocab=vocab, extra_ids=EXTRA_IDS, model_max_length=512)


# --------------------------------------------------------------------------------------------
# Model folder
# --------------------------------------------------------------------------------------------

def _apply_gains(model: torch.nn.Module, gains: dict[str, float]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, g in gains.items():
            params[name].mul_(g)


def _make_transformer(seed: int):
    from diffusers import WanTransformer3DModel

    # fork_rng: building must not disturb the caller's global random state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = WanTransformer3DModel(**TRANSFORMER_CONFIG)
    _apply_gains(model, _TRANSFORMER_GAINS)
    return model.eval()


def _make_vae(seed: int):
    from diffusers import AutoencoderKLWan

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoencoderKLWan(**VAE_CONFIG)
        _shape_vae(model)
    return model.eval()


def _shape_vae(vae) -> None:
    """Make the random VAE behave a bit like a trained one (runs inside the seeded build).

    Why: at default init the posterior mean has std ~0.13 and two different images differ by
    ~0.05, which the pipeline's (z - latents_mean) / latents_std normalisation shrinks to almost
    nothing, so the control image would barely change a render. ``quant_conv`` outputs
    [mean | logvar]; scaling the mean rows by 10 gives a mean std ~1.3 (like real latents), and
    pushing logvar to ~-8 makes the posterior narrow (std ~0.02), so sampling the posterior and
    taking its mode give nearly the same latents, as with the real VAE.

    On the decoder side, the output conv is scaled by 1.5 for more contrast and its bias is set so
    that decoding typical latents (N(0, 1) in normalised space, as the pipeline produces) gives
    frames centred on mid-grey; otherwise two channels sit near 0.7 and many pixels clip at 1,
    which hides differences between renders. (The VAE's decode clamps to [-1, 1].)
    """
    z = VAE_CONFIG["z_dim"]
    with torch.no_grad():
        vae.quant_conv.weight[:z].mul_(10.0)
        vae.quant_conv.bias[:z].mul_(10.0)
        vae.quant_conv.weight[z:].mul_(0.1)
        vae.quant_conv.bias[z:].fill_(-8.0)

        conv_out = vae.decoder.conv_out
        conv_out.weight.mul_(1.5)
        conv_out.bias.zero_()
        mean = torch.tensor(WAN21_LATENTS_MEAN).view(1, z, 1, 1, 1)
        std = torch.tensor(WAN21_LATENTS_STD).view(1, z, 1, 1, 1)
        latents = torch.randn(1, z, 3, 8, 8) * std + mean
        frames = vae.decode(latents).sample  # [-1, 1] range, mid-grey = 0
        # Rounded so float noise across thread counts / CPUs cannot change the saved bytes.
        conv_out.bias.copy_(torch.round(-frames.mean(dim=(0, 2, 3, 4)) * 1000) / 1000)


def _make_text_encoder(seed: int):
    from transformers import UMT5Config, UMT5EncoderModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = UMT5EncoderModel(UMT5Config(**TEXT_ENCODER_CONFIG))
    return model.eval()


def _model_index() -> dict:
    """The real checkpoint's model_index.json, with no CLIP image encoder (Wan 2.2 has none)."""
    import diffusers

    return {
        "_class_name": "WanImageToVideoPipeline",
        "_diffusers_version": diffusers.__version__,
        "boundary_ratio": BOUNDARY_RATIO,
        "expand_timesteps": False,
        "image_encoder": [None, None],
        "image_processor": [None, None],
        "scheduler": ["diffusers", "UniPCMultistepScheduler"],
        "text_encoder": ["transformers", "UMT5EncoderModel"],
        "tokenizer": ["transformers", "T5Tokenizer"],
        "transformer": ["diffusers", "WanTransformer3DModel"],
        "transformer_2": ["diffusers", "WanTransformer3DModel"],
        "vae": ["diffusers", "AutoencoderKLWan"],
    }


def build_tiny_model(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny Wan 2.2 I2V A14B-shaped diffusers folder to ``out_dir`` and return its path.

    Loadable with ``WanImageToVideoPipeline.from_pretrained(out_dir)`` or per component
    (``WanTransformer3DModel`` from ``transformer`` / ``transformer_2``, ``AutoencoderKLWan`` from
    ``vae``, ``UMT5EncoderModel`` from ``text_encoder``, ``AutoTokenizer`` / ``T5Tokenizer`` from
    ``tokenizer``). The two experts get different seeds, so expert routing mistakes show up.
    All weights are float32 safetensors; the same ``seed`` gives the same bytes.
    """
    from diffusers import UniPCMultistepScheduler

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    for name in ("transformer", "transformer_2"):
        _make_transformer(_SEEDS[name] + seed).save_pretrained(out / name, safe_serialization=True)
    _make_vae(_SEEDS["vae"] + seed).save_pretrained(out / "vae", safe_serialization=True)
    _make_text_encoder(_SEEDS["text_encoder"] + seed).save_pretrained(
        out / "text_encoder", safe_serialization=True
    )
    build_tokenizer().save_pretrained(out / "tokenizer")
    UniPCMultistepScheduler(**SCHEDULER_CONFIG).save_pretrained(out / "scheduler")
    (out / "model_index.json").write_text(json.dumps(_model_index(), indent=2, sort_keys=True) + "\n")
    return out


# --------------------------------------------------------------------------------------------
# ai-toolkit LoRA files
# --------------------------------------------------------------------------------------------

AITK_VERSION = "0.12.26"
AITK_SOFTWARE = {"name": "ai-toolkit", "repo": "https://github.com/ostris/ai-toolkit", "version": AITK_VERSION}

# ai-toolkit (original-Wan) module name -> diffusers module name, per block. These are the 10
# Linear modules ai-toolkit targets in every block (§8.1/§8.4, docs/parity).
AITK_TO_DIFFUSERS = {
    "self_attn.q": "attn1.to_q",
    "self_attn.k": "attn1.to_k",
    "self_attn.v": "attn1.to_v",
    "self_attn.o": "attn1.to_out.0",
    "cross_attn.q": "attn2.to_q",
    "cross_attn.k": "attn2.to_k",
    "cross_attn.v": "attn2.to_v",
    "cross_attn.o": "attn2.to_out.0",
    "ffn.0": "ffn.net.0.proj",
    "ffn.2": "ffn.net.2",
}

_KEY_RE = re.compile(
    r"^diffusion_model\.blocks\.\d+\."
    r"(self_attn\.[qkvo]|cross_attn\.[qkvo]|cross_attn\.[kv]_img|ffn\.[02])"
    r"\.lora_[AB]\.weight$"
)


def lora_module_names(num_layers: int) -> list[tuple[str, str]]:
    """``(aitk_name, diffusers_name)`` for every targeted Linear, e.g.
    ``("diffusion_model.blocks.0.self_attn.q", "blocks.0.attn1.to_q")``."""
    return [
        (f"diffusion_model.blocks.{i}.{a}", f"blocks.{i}.{d}")
        for i in range(num_layers)
        for a, d in AITK_TO_DIFFUSERS.items()
    ]


def aitk_lora_filename(name: str, expert: str, step: int | None = None) -> str:
    """ai-toolkit's file name: ``<name>_<step:09d>_high_noise.safetensors`` for intermediate
    saves, ``<name>_high_noise.safetensors`` for the final one (``expert`` is high/low)."""
    if expert not in ("high", "low"):
        raise ValueError(f"expert must be 'high' or 'low', not {expert!r}")
    stem = name if step is None else f"{name}_{step:09d}"
    return f"{stem}_{expert}_noise.safetensors"


def write_aitk_lora(path: str | Path, state: dict[str, torch.Tensor], metadata: dict) -> Path:
    """Save ``state`` as an ai-toolkit LoRA file (float32, keys checked, metadata as strings).

    ai-toolkit JSON-encodes every non-string metadata value before saving; we do the same so
    readers see exactly what a real file would carry. Keys must be in the saved (original-Wan,
    PEFT-renamed) layout; alpha keys are rejected because ai-toolkit never writes them for Wan.
    """
    bad = [k for k in state if not _KEY_RE.match(k)]
    if bad:
        raise ValueError(f"not ai-toolkit Wan LoRA keys: {bad[:5]}")
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items()}
    meta = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=meta)
    return path


def write_combined_aitk_lora(path: str | Path, high: str | Path, low: str | Path) -> Path:
    """The one file ai-toolkit saves with ``split_multistage_loras: false`` from a split pair: the same tensors with
    ``diffusion_model.transformer_1.`` (high noise) / ``transformer_2.`` (low noise) keys and the same metadata."""
    from safetensors import safe_open

    state, meta = {}, {}
    for number, source in (("1", high), ("2", low)):
        with safe_open(str(source), framework="pt") as handle:
            meta = handle.metadata() or meta
            for key in handle.keys():
                prefixed = key.replace("diffusion_model.", f"diffusion_model.transformer_{number}.", 1)
                state[prefixed] = handle.get_tensor(key)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata=meta)
    return path


def aitk_metadata(name: str, step: int | None = None, epoch: int = 0) -> dict:
    """Metadata like ai-toolkit's ``save()``: the example job ``meta:`` block (name/version) with
    ``[name]`` filled in, then training_info, base model version, output name, software, format."""
    return {
        "name": name,
        "version": "1.0",
        "training_info": {"step": 0 if step is None else step, "epoch": epoch},
        "ss_base_model_version": "wan_2.2_14b",
        "ss_output_name": name,
        "software": AITK_SOFTWARE,
        "format": "pt",
    }


def _linear_shapes(weights_file: Path, num_layers: int) -> dict[str, tuple[int, int]]:
    """``aitk_name -> (out, in)`` read from the expert's own weights, so the LoRA always fits."""
    shapes = {}
    with safe_open(str(weights_file), framework="pt") as f:
        for aitk, diff in lora_module_names(num_layers):
            out_f, in_f = f.get_slice(f"{diff}.weight").get_shape()
            shapes[aitk] = (out_f, in_f)
    return shapes


def _random_lora(shapes: dict[str, tuple[int, int]], rank: int, seed: int) -> dict[str, torch.Tensor]:
    """Random A ~ N(0, 1/in) and small random B ~ N(0, 0.05^2).

    B is non-zero (a freshly initialised LoRA has B = 0 and does nothing); the size is chosen so
    the delta B@A is a few percent of the tiny model's weights: enough to change a render visibly,
    small enough to keep it a LoRA-like perturbation.
    """
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for aitk in sorted(shapes):
        out_f, in_f = shapes[aitk]
        state[f"{aitk}.lora_A.weight"] = torch.randn(rank, in_f, generator=gen) / in_f**0.5
        state[f"{aitk}.lora_B.weight"] = torch.randn(out_f, rank, generator=gen) * 0.05
    return state


def make_demo_lora_pair(
    model_dir: str | Path,
    out_dir: str | Path,
    name: str,
    rank: int = 4,
    seed: int = 1,
    step: int | None = None,
) -> tuple[Path, Path]:
    """Write a random high-noise/low-noise LoRA pair for the model in ``model_dir``.

    Returns ``(high_path, low_path)``: the high-noise file targets ``transformer`` and the
    low-noise file ``transformer_2`` (ai-toolkit's split of one both-stage network). The two files
    hold different weights (seeds ``seed`` and ``seed + 1``) and the same metadata, as ai-toolkit
    writes one metadata dict for both.
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    paths = []
    for i, (expert, sub) in enumerate((("high", "transformer"), ("low", "transformer_2"))):
        cfg = json.loads((model_dir / sub / "config.json").read_text())
        shapes = _linear_shapes(model_dir / sub / "diffusion_pytorch_model.safetensors", cfg["num_layers"])
        state = _random_lora(shapes, rank, seed + i)
        paths.append(
            write_aitk_lora(out_dir / aitk_lora_filename(name, expert, step), state, aitk_metadata(name, step))
        )
    return paths[0], paths[1]
