"""Prompt encoding as ai-toolkit does it through diffusers' Wan pipeline (§4, docs/parity)."""

from __future__ import annotations

import html
import re

import ftfy
import torch

MAX_SEQUENCE_LENGTH = 512


def clean_prompt(text: str) -> str:
    """ftfy, HTML-unescape twice, strip, collapse whitespace: the text the tokenizer sees."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return re.sub(r"\s+", " ", text).strip()


def token_ids(tokenizer, prompt: str) -> list[int]:
    """Unpadded token ids of the cleaned prompt (what the manifests record)."""
    ids = tokenizer(clean_prompt(prompt), max_length=MAX_SEQUENCE_LENGTH, truncation=True, add_special_tokens=True)
    return list(ids.input_ids)


@torch.no_grad()
def encode_prompt(tokenizer, text_encoder, prompt: str, device) -> torch.Tensor:
    """(1, 512, dim) bf16 embeddings; rows past the prompt's length are zero, as the transformer expects."""
    inputs = tokenizer(
        [clean_prompt(prompt)],
        padding="max_length",
        max_length=MAX_SEQUENCE_LENGTH,
        truncation=True,
        add_special_tokens=True,
        return_attention_mask=True,
        return_tensors="pt",
    )
    mask = inputs.attention_mask
    seq_len = int(mask.gt(0).sum())
    encoder_device = next(text_encoder.parameters()).device
    hidden = text_encoder(inputs.input_ids.to(encoder_device), mask.to(encoder_device)).last_hidden_state
    hidden = hidden.to(dtype=torch.bfloat16, device=device)
    embeds = torch.zeros_like(hidden)
    embeds[:, :seq_len] = hidden[:, :seq_len]
    return embeds


class PromptCache:
    """Embeddings per (prompt, encoder identity): a suite encodes each distinct prompt once."""

    def __init__(self):
        self._cache: dict[tuple[str, int, str], tuple[object, torch.Tensor]] = {}

    def get(self, tokenizer, text_encoder, prompt: str, device) -> torch.Tensor:
        key = (prompt, id(text_encoder), str(device))
        cached = self._cache.get(key)
        if cached is None or cached[0] is not text_encoder:  # holding the encoder keeps its id from being reused
            cached = (text_encoder, encode_prompt(tokenizer, text_encoder, prompt, device))
            self._cache[key] = cached
        return cached[1]
