"""Tests of remdm_jax.tokenizers (offline GPT-2 BPE and bytes, SPEC §1)."""
import shutil
import sys

import numpy as np
import pytest

from remdm_jax import tokenizers
from remdm_jax.tokenizers import ByteTokenizer, GPT2Tokenizer, get_tokenizer


@pytest.fixture(scope="module")
def gpt2():
  return GPT2Tokenizer()


def _prose():
  from pydoc_data.topics import topics
  return topics["assignment"][:3000] + " naïve café — 日本語 🙂"


def test_gpt2_known_ids(gpt2):
  assert gpt2.encode("Hello world") == [15496, 995]
  assert gpt2.encode(" world world") == [995, 995]
  assert (gpt2.vocab_size, gpt2.mask_id, gpt2.bos_id, gpt2.eos_id) == (50258, 50257, 50256, 50256)
  assert gpt2.text_vocab_size == 50257
  assert gpt2.name == "gpt2"


def test_gpt2_endoftext(gpt2):
  assert gpt2.encode("<|endoftext|>", allow_special=True) == [50256]
  plain = gpt2.encode("<|endoftext|>")
  assert 50256 not in plain and gpt2.decode(plain) == "<|endoftext|>"
  assert gpt2.decode([50256, 15496, 995, 50256]) == "<|endoftext|>Hello world<|endoftext|>"


def test_gpt2_round_trip_and_mask(gpt2):
  text = _prose()
  ids = gpt2.encode(text)
  assert max(ids) < 50256
  assert gpt2.decode(ids) == text
  assert gpt2.decode(np.array([15496, 50257, 995], np.int32)) == "Hello[MASK] world"
  assert "[UNK:60000]" in gpt2.decode([15496, 60000])
  # a multi-byte character split by a mask: invalid bytes are replaced, not raised
  emoji = gpt2.encode("🙂")
  assert len(emoji) > 1
  out = gpt2.decode([emoji[0], 50257] + emoji[1:])
  assert "[MASK]" in out and "\ufffd" in out


def test_gpt2_explicit_files(tmp_path, gpt2):
  enc, bpe = tokenizers._gpt2_default_files()
  shutil.copy(enc, tmp_path / "encoder.json")
  shutil.copy(bpe, tmp_path / "vocab.bpe")
  tok = GPT2Tokenizer(encoder_json=str(tmp_path / "encoder.json"), vocab_bpe=str(tmp_path / "vocab.bpe"))
  assert tok.encode("Hello world") == [15496, 995]
  with pytest.raises(FileNotFoundError, match="nope.json"):
    GPT2Tokenizer(encoder_json=str(tmp_path / "nope.json"), vocab_bpe=str(tmp_path / "vocab.bpe"))


def test_gpt2_missing_dependency_message(monkeypatch):
  monkeypatch.setitem(sys.modules, "tiktoken", None)
  with pytest.raises(ImportError, match=r"pip install remdm-jax\[bpe\]"):
    GPT2Tokenizer()


def test_byte_tokenizer():
  tok = ByteTokenizer()
  assert (tok.vocab_size, tok.mask_id, tok.bos_id, tok.eos_id, tok.name) == (257, 256, None, None, "byte")
  text = _prose()
  ids = tok.encode(text)
  assert ids == list(text.encode("utf-8")) and max(ids) < 256
  assert tok.decode(ids) == text
  assert tok.decode([104, 105, 256, 33]) == "hi\u2592!"
  assert tok.decode([104, 300, -1]) == "h\ufffd\ufffd"
  assert tok.decode([0xC3, 256, 0xA9]) == "\ufffd\u2592\ufffd"  # split UTF-8 -> replacement
  assert tok.decode(np.array([0xC3, 0xA9])) == "é"


def test_get_tokenizer():
  assert isinstance(get_tokenizer("byte"), ByteTokenizer)
  assert isinstance(get_tokenizer("gpt2"), GPT2Tokenizer)
  with pytest.raises(ValueError, match="name='bert'"):
    get_tokenizer("bert")
