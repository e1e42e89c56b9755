"""The GPT-2 scorer of SPEC §7 (gen PPL under gpt2-large, MAUVE features) over the plain-JAX
GPT-2 port `remdm_jax.models.gpt2` (re-exported here: GPT2Config, load_gpt2_params, gpt2_hidden,
gpt2_logits)."""
from __future__ import annotations

import os
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from remdm_jax.models.gpt2 import (HIGHEST, GPT2Config, gpt2_hidden, gpt2_logits,  # noqa: F401
                                   load_gpt2_params)
from remdm_jax.text.gen_ppl import gen_ppl_from_texts


def _bucket(n: int, cap: int) -> int:
  """Pad lengths to a multiple of 64 (fewer recompiles), at most cap."""
  return min(cap, max(1, -(-n // 64) * 64))


class GPT2Scorer:
  """GPT-2 scorer from a local HF folder: `log_probs_fn` for gen_ppl and `features` for MAUVE.

  Args:
    path: folder with config.json and model.safetensors (e.g. a gpt2-large snapshot).
    encode: optional text -> list[int] tokeniser; by default `path/tokenizer.json` (tokenizers
      library) is used if present. Needed only for text input.
    precision: matmul precision (HIGHEST = true float32, as the reference's torch float32).
  """

  def __init__(self, path: str, encode: Callable[[str], Sequence[int]] | None = None,
               precision=HIGHEST, name: str | None = None):
    self.path = path
    self.config, params = load_gpt2_params(path)
    self.params = jax.tree.map(jnp.asarray, params)
    self.name = name or os.path.basename(os.path.normpath(path))
    self._encode = encode
    cfg = self.config
    self._log_probs = jax.jit(
        lambda p, t: jax.nn.log_softmax(gpt2_logits(p, t, cfg, precision), axis=-1))

    def last_hidden(p, t, lengths):
      h = gpt2_hidden(p, t, cfg, precision)
      return jnp.take_along_axis(h, (lengths - 1)[:, None, None], axis=1)[:, 0]

    self._last_hidden = jax.jit(last_hidden)

  @property
  def eos_id(self) -> int:
    """config.json's eos_token_id (GPT-2: 50256); vocab_size - 1 if that is out of range."""
    e = self.config.eos_token_id
    return e if 0 <= e < self.config.vocab_size else self.config.vocab_size - 1

  def log_probs_fn(self, tokens) -> jax.Array:
    """tokens int [B, L] -> float32 [B, L, V] next-token log-probs."""
    tokens = jnp.asarray(tokens, jnp.int32)
    if tokens.ndim != 2:
      raise ValueError(f"tokens must be [B, L]; got shape {tokens.shape}")
    return self._log_probs(self.params, tokens)

  def encode(self, text: str) -> list[int]:
    """Scorer tokenisation ("<|endoftext|>" -> EOS id)."""
    if self._encode is None:
      tok_path = os.path.join(self.path, "tokenizer.json")
      if not os.path.isfile(tok_path):
        raise FileNotFoundError(
            f"GPT-2 tokenizer.json not found: {tok_path} (or pass encode= to GPT2Scorer)")
      from tokenizers import Tokenizer

      tok = Tokenizer.from_file(tok_path)
      tok.no_truncation()
      tok.no_padding()
      self._encode = lambda s: tok.encode(s, add_special_tokens=False).ids
    return list(self._encode(text))

  def gen_ppl(self, texts: Sequence[str], *, rule: str = "reference", batch_size: int = 8,
              max_length: int | None = None) -> dict:
    """Gen PPL of decoded texts under this scorer (SPEC §7): retokenise with `encode`, truncate
    to max_length (default n_positions = 1024 for gpt2-large), pad with EOS (masked)."""

    max_length = self.config.n_positions if max_length is None else max_length
    if not 2 <= max_length <= self.config.n_positions:
      raise ValueError(f"max_length={max_length} must be in [2, {self.config.n_positions}]")
    return gen_ppl_from_texts(texts, self.log_probs_fn, self.encode, eos_id=self.eos_id,
                              max_length=max_length, rule=rule, batch_size=batch_size)

  def features(self, texts_or_ids, batch_size: int = 8, max_length: int = 1024) -> np.ndarray:
    """MAUVE features: last-layer (post ln_f) hidden state of each sequence's final token.

    texts_or_ids: list of str (tokenised with `encode`) or list of int sequences; each is
    truncated to max_length tokens (mauve-text's max_text_length). Returns float32 [N, n_embd]
    in input order (batches are formed in order of length; short batches get dummy rows).
    """
    if isinstance(texts_or_ids, str):
      raise ValueError("texts_or_ids must be a sequence, not a single str")
    items = list(texts_or_ids)
    if not items:
      raise ValueError("texts_or_ids is empty")
    seqs = [self.encode(x) if isinstance(x, str) else list(np.asarray(x).reshape(-1))
            for x in items]
    max_length = min(max_length, self.config.n_positions)
    seqs = [s[:max_length] for s in seqs]
    for i, s in enumerate(seqs):
      if not s:
        raise ValueError(f"texts_or_ids[{i}] is empty after tokenisation")
    batch_size = max(1, min(batch_size, len(seqs)))
    order = np.argsort([len(q) for q in seqs], kind="stable")  # batch by length: less padding
    out = np.zeros((len(seqs), self.config.n_embd), np.float32)
    for b0 in range(0, len(seqs), batch_size):
      rows = order[b0:b0 + batch_size]
      lengths = np.array([len(seqs[r]) for r in rows] + [1] * (batch_size - len(rows)), np.int32)
      width = _bucket(int(lengths.max()), self.config.n_positions)
      toks = np.full((batch_size, width), self.eos_id, np.int32)
      for n, r in enumerate(rows):
        toks[n, :len(seqs[r])] = seqs[r]
      h = self._last_hidden(self.params, jnp.asarray(toks), jnp.asarray(lengths))
      out[rows] = np.asarray(h)[:len(rows)]
    return out
