"""Unit tests for harness.render.text: prompt cleaning, tokenisation and UMT5 encoding (§4, docs/parity)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from harness.render.text import MAX_SEQUENCE_LENGTH, PromptCache, clean_prompt, encode_prompt, token_ids

ORACLE = Path(__file__).resolve().parents[1].parent / "shared" / "oracle"
needs_oracle = pytest.mark.skipif(not ORACLE.is_dir(), reason=f"oracle folder {ORACLE} absent (tokenizer, encoder, "
                                  "manifest come from it)")
BF16 = torch.bfloat16


@pytest.fixture(scope="module")
def oracle_tokenizer():
    from harness.render.models import load_tokenizer

    return load_tokenizer(ORACLE / "tiny_model" / "tokenizer")


# --- cleaning (§4 step 1) --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, cleaned", [
    ("  a &amp;amp; b\n\tc ", "a & b c"),  # html.unescape twice, whitespace runs -> one space, stripped
    # with a "<" in the text ftfy leaves entities alone, so exactly two unescapes remain (not "until stable")
    ("<b> &amp;amp;amp; </b>", "<b> &amp; </b>"),
    ("caf\u00c3\u00a9", "caf\u00e9"),  # ftfy repairs mojibake
    ("\u201cquoted\u201d", '"quoted"'),  # ftfy.fix_text defaults uncurl quotes
    ("x\u00a0\u00a0y", "x y"),  # non-breaking spaces are whitespace for the collapse
    ("", ""),
    ("   ", ""),
    ("plain prompt", "plain prompt"),
])
def test_clean_prompt(raw, cleaned):
    assert clean_prompt(raw) == cleaned


# --- tokenisation (§4 step 2) ----------------------------------------------------------------------------------------

@needs_oracle
def test_empty_negative_is_just_eos(oracle_tokenizer):
    assert token_ids(oracle_tokenizer, "") == [1]
    assert token_ids(oracle_tokenizer, "  \n ") == [1]


@needs_oracle
def test_token_ids_match_oracle_manifest(oracle_tokenizer):
    manifest = json.loads((ORACLE / "cases" / "case_a" / "manifest.json").read_text())
    checked = 0
    for sample in manifest["samples"]:
        assert token_ids(oracle_tokenizer, sample["prompt"]) == sample["prompt_token_ids"], sample["file"]
        if "negative_prompt_token_ids" in sample:
            assert token_ids(oracle_tokenizer, sample["negative_prompt"]) == sample["negative_prompt_token_ids"]
        checked += 1
    assert checked == len(manifest["samples"]) > 0


@needs_oracle
def test_token_ids_truncate_to_512_with_eos(oracle_tokenizer):
    ids = token_ids(oracle_tokenizer, "cat " * 600)
    assert len(ids) == MAX_SEQUENCE_LENGTH == 512
    assert ids[-1] == 1


@needs_oracle
def test_token_ids_see_the_cleaned_prompt(oracle_tokenizer):
    assert token_ids(oracle_tokenizer, "  a &amp;amp; red\n\tcat ") == token_ids(oracle_tokenizer, "a & red cat")


# --- encoding (§4 steps 3-4) -----------------------------------------------------------------------------------------

class _FakeTokenizer:
    """ids 2..n+1 for n words, then EOS=1, padded with 0 to max_length; records what it was asked."""

    def __init__(self):
        self.calls = []

    def __call__(self, texts, padding, max_length, truncation, add_special_tokens, return_attention_mask,
                 return_tensors):
        self.calls.append((texts, padding, max_length, truncation, add_special_tokens))
        words = texts[0].split()
        ids = [2 + (sum(map(ord, w)) % 200) for w in words][: max_length - 1] + [1]
        mask = [1] * len(ids) + [0] * (max_length - len(ids))
        ids = ids + [0] * (max_length - len(ids))
        return SimpleNamespace(input_ids=torch.tensor([ids]), attention_mask=torch.tensor([mask]))


def _tiny_umt5():
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(vocab_size=260, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4,
                        feed_forward_proj="gated-gelu", dropout_rate=0.0, relative_attention_num_buckets=32)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = UMT5EncoderModel(config)
    return model.to(BF16).eval()


def _expected_embeds(encoder, ids, mask):
    with torch.no_grad():
        hidden = encoder(input_ids=ids, attention_mask=mask).last_hidden_state.to(BF16)
    n = int(mask.sum())
    expected = torch.zeros_like(hidden)
    expected[:, :n] = hidden[:, :n]
    return hidden, expected, n


def test_encode_prompt_zeroes_rows_past_sequence_length():
    tokenizer, encoder = _FakeTokenizer(), _tiny_umt5()
    prompt = "  a red\tcat &amp;amp; dog "
    embeds = encode_prompt(tokenizer, encoder, prompt, "cpu")
    texts, padding, max_length, truncation, special = tokenizer.calls[0]
    assert texts == ["a red cat & dog"] and padding == "max_length" and max_length == 512 and truncation and special
    ids = tokenizer(texts, "max_length", 512, True, True, True, "pt")
    hidden, expected, n = _expected_embeds(encoder, ids.input_ids, ids.attention_mask)
    assert n == 6
    assert embeds.shape == (1, 512, 32) and embeds.dtype == BF16
    assert torch.equal(embeds, expected)
    assert hidden[:, n:].abs().sum() > 0  # the encoder's padded rows are not zero by themselves
    assert embeds[:, n:].abs().sum() == 0


@needs_oracle
def test_encode_prompt_with_oracle_encoder(oracle_tokenizer):
    from transformers import UMT5EncoderModel

    encoder = UMT5EncoderModel.from_pretrained(str(ORACLE / "tiny_model" / "text_encoder"), torch_dtype=BF16)
    encoder = encoder.to(BF16).eval()
    for prompt in ("sks a red cat walks slowly in the misty forest", ""):
        embeds = encode_prompt(oracle_tokenizer, encoder, prompt, "cpu")
        ids = token_ids(oracle_tokenizer, prompt)
        full = torch.tensor([ids + [0] * (512 - len(ids))])
        mask = torch.tensor([[1] * len(ids) + [0] * (512 - len(ids))])
        hidden, expected, n = _expected_embeds(encoder, full, mask)
        assert n == len(ids)
        assert embeds.dtype == BF16 and embeds.shape == (1, 512, 32)
        assert torch.equal(embeds, expected), prompt
        assert hidden[:, n:].abs().sum() > 0 and embeds[:, n:].abs().sum() == 0


def test_prompt_cache_encodes_each_prompt_once():
    tokenizer, encoder = _FakeTokenizer(), _tiny_umt5()
    cache = PromptCache()
    a = cache.get(tokenizer, encoder, "a cat", "cpu")
    b = cache.get(tokenizer, encoder, "a cat", "cpu")
    c = cache.get(tokenizer, encoder, "a dog", "cpu")
    assert a is b and len(tokenizer.calls) == 2
    assert not torch.equal(a, c)
