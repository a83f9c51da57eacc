"""``--fused-blocks``: the Wan block with its elementwise chains fused (:mod:`.kernels`), bit-identical, CUDA only.

diffusers' Wan block spends a full pass over an L x 5120 tensor on each elementwise operation between its GEMMs: the
adaptive norm's multiply, add and cast, the gated residual's two casts, multiply, add and cast, and the rotary
embedding's six operations per query and key. :func:`block_forward` restates the block's forward with those chains
as single kernels and everything else (layer norms, RMS norms, linears, attention, the FFN) called exactly as
diffusers calls it, so LoRA hooks, quantized linears and offload hooks work unchanged. With ``ops=EAGER`` the same
function runs the eager twins; a test checks that this equals diffusers' own forward bit for bit, and the GPU tests
check the kernels against the twins at A14B width.

Anything the restatement does not cover (Wan 2.2 TI2V's per-token modulation, fused QKV projections, the I2V
image-context attention, an attention mask) runs diffusers' original code.
"""

from __future__ import annotations

from contextlib import contextmanager
from types import SimpleNamespace

from . import kernels

FUSED = SimpleNamespace(modulate=kernels.modulate, gated_residual=kernels.gated_residual, rope=kernels.rope)
EAGER = SimpleNamespace(modulate=kernels.modulate_eager, gated_residual=kernels.gated_residual_eager,
                        rope=kernels.rope_eager)


def block_forward(block, hidden_states, encoder_hidden_states, temb, rotary_emb, ops=FUSED, original=None):
    """One Wan transformer block (self-attention, cross-attention, FFN, each behind its norm) with ``ops`` doing
    the elementwise chains; ``original`` (the block's own forward) takes the cases not restated here."""
    if temb.ndim != 3:
        return original(hidden_states, encoder_hidden_states, temb, rotary_emb)
    shift, scale, gate, c_shift, c_scale, c_gate = (block.scale_shift_table + temb.float()).chunk(6, dim=1)
    dtype = hidden_states.dtype

    normed = ops.modulate(block.norm1(hidden_states.float()), 1 + scale, shift, dtype)
    hidden_states = ops.gated_residual(hidden_states, block.attn1(normed, None, None, rotary_emb), gate)

    normed = block.norm2(hidden_states.float()).type_as(hidden_states)
    hidden_states = hidden_states + block.attn2(normed, encoder_hidden_states, None, None)

    normed = ops.modulate(block.norm3(hidden_states.float()), 1 + c_scale, c_shift, dtype)
    return ops.gated_residual(hidden_states, block.ffn(normed), c_gate)


class RopeFusedProcessor:
    """Self-attention with the rotary embedding as one kernel per query and key; other calls go to ``original``."""

    def __init__(self, original, ops=FUSED):
        self.original, self.ops = original, ops
        self._attention_backend = getattr(original, "_attention_backend", None)
        self._parallel_config = getattr(original, "_parallel_config", None)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        if (rotary_emb is None or encoder_hidden_states is not None or attention_mask is not None
                or attn.add_k_proj is not None or getattr(attn, "fused_projections", False)):
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        from diffusers.models.attention_dispatch import dispatch_attention_fn

        query = attn.norm_q(attn.to_q(hidden_states)).unflatten(2, (attn.heads, -1))
        key = attn.norm_k(attn.to_k(hidden_states)).unflatten(2, (attn.heads, -1))
        value = attn.to_v(hidden_states).unflatten(2, (attn.heads, -1))
        query, key = self.ops.rope(query, *rotary_emb), self.ops.rope(key, *rotary_emb)
        out = dispatch_attention_fn(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                                    backend=self._attention_backend, parallel_config=self._parallel_config)
        out = out.flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))


@contextmanager
def fused_blocks(transformers: dict, ops=FUSED):
    """Every block of every expert in ``transformers`` runs :func:`block_forward` and its self-attention the
    :class:`RopeFusedProcessor`, for the duration; the blocks' own forwards and processors come back on exit."""
    saved = []
    try:
        for model in transformers.values():
            for block in model.blocks:
                had_forward = "forward" in block.__dict__
                previous = block.__dict__.get("forward")
                original = block.forward

                def forward(hidden_states, encoder_hidden_states, temb, rotary_emb, _block=block, _original=original):
                    return block_forward(_block, hidden_states, encoder_hidden_states, temb, rotary_emb, ops, _original)

                processor = block.attn1.processor
                saved.append((block, had_forward, previous, processor))
                block.forward = forward
                block.attn1.processor = RopeFusedProcessor(processor, ops)
        yield
    finally:
        for block, had_forward, previous, processor in reversed(saved):
            if had_forward:
                block.forward = previous
            else:
                del block.forward
            block.attn1.processor = processor
