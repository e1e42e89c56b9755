"""Generative perplexity under an autoregressive scorer (SPEC §7), scorer-agnostic.

For each sample (retokenised for the scorer, right-padded with EOS) and each target position
p = 1..L-1:   nll_p = -log P_scorer(token_p | token_<p),
  Gen PPL = exp( sum_{n,p} w_{n,p} nll_{n,p} / sum_{n,p} w_{n,p} )
over ALL target tokens of ALL samples (token-weighted, not a mean over samples).

The weights w come from `target_weights` (rule "reference" reproduces kuleshov-group/mdlm/remdm's
`compute_generative_perplexity`: target p counts if token_p != EOS or if
cumsum(token == EOS)_p == 1, i.e. it lies between the first EOS (inclusive) and the second EOS
(exclusive)), times the attention mask, so padding never counts. The reference code's batching
drops the last partial batch; ours scores every sample (the last batch is padded with dummy rows of
weight 0).
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

RULES = ("reference", "truncate_at_first_eos")


def target_weights(tokens, eos_id: int, rule: str = "reference", attention_mask=None) -> np.ndarray:
  """Which next-token targets count towards gen PPL. Pure numpy.

  Args:
    tokens: int [B, L] scorer token ids (right padding allowed, see attention_mask).
    eos_id: the scorer's EOS id (GPT-2: 50256).
    rule:
      "reference" (SPEC §7, default): target p >= 1 counts iff token_p != EOS, or
        #{q <= p : token_q == EOS} == 1 (from the first EOS inclusive to the second EOS
        exclusive; position 0 takes part in the count, so a leading EOS/BOS is the first EOS and
        is only context, and every later EOS target is excluded; non-EOS text after an EOS
        still counts).
      "truncate_at_first_eos" [LIB]: a leading token at position 0 is context only; target p
        counts iff no EOS occurs at positions 1..p-1 (the first EOS target at p >= 1 counts,
        as the end of text; nothing after it counts).
    attention_mask: optional {0,1} [B, L]; 1 = real token. Padded positions (0) are neither
      counted as targets nor as EOS occurrences.

  Returns:
    bool [B, L-1]: w[:, j] is the weight of target tokens[:, j+1] (predicted from tokens[:, :j+1]).
  """
  tokens = np.asarray(tokens)
  if tokens.ndim != 2:
    raise ValueError(f"tokens must be [B, L]; got shape {tokens.shape}")
  if rule not in RULES:
    raise ValueError(f"rule must be one of {RULES}; got rule={rule!r}")
  if attention_mask is None:
    mask = np.ones(tokens.shape, bool)
  else:
    mask = np.asarray(attention_mask).astype(bool)
    if mask.shape != tokens.shape:
      raise ValueError(
          f"attention_mask shape {mask.shape} must equal tokens shape {tokens.shape}")
  is_eos = (tokens == eos_id) & mask
  if rule == "reference":
    first_span = np.cumsum(is_eos, axis=1) == 1
    w = (~is_eos) | first_span
    w = w[:, 1:]
  else:
    eos_after0 = is_eos.copy()
    eos_after0[:, 0] = False
    # number of EOS at positions 1..p-1 for target p
    before = np.cumsum(eos_after0, axis=1)[:, :-1]
    w = before == 0
  return w & mask[:, 1:]


@jax.jit
def _token_nll(out: jax.Array, tokens: jax.Array) -> jax.Array:
  """out: [B, L, V] logits or log-probs; tokens [B, L] -> float32 nll [B, L-1] of tokens[:, 1:]."""
  logp = jax.nn.log_softmax(out[:, :-1].astype(jnp.float32), axis=-1)
  tgt = tokens[:, 1:].astype(jnp.int32)
  return -jnp.take_along_axis(logp, tgt[..., None], axis=-1)[..., 0]


def _as_batches(tokens, attention_mask):
  """Normalise input to a list of (tokens [B, L], mask [B, L] or None) pairs."""
  if isinstance(tokens, (np.ndarray, jax.Array)):
    return [(np.asarray(tokens), None if attention_mask is None else np.asarray(attention_mask))]
  tokens = list(tokens)
  if attention_mask is None:
    masks = [None] * len(tokens)
  else:
    masks = list(attention_mask)
    if len(masks) != len(tokens):
      raise ValueError(
          f"attention_mask has {len(masks)} batches but token_batches has {len(tokens)}")
  return [(np.asarray(t), None if m is None else np.asarray(m)) for t, m in zip(tokens, masks)]


def gen_ppl(token_batches, log_probs_fn: Callable, *, eos_id: int, rule: str = "reference",
            batch_size: int = 8, attention_mask=None, context_size: int | None = None) -> dict:
  """Generative perplexity (SPEC §7) of scorer-tokenised samples.

  Args:
    token_batches: int [N, L] array, or an iterable of int [B_i, L_i] arrays (scorer ids,
      right-padded with EOS where needed).
    log_probs_fn: tokens int32 [B, L] -> [B, L, V] next-token logits or log-probs of an AR scorer
      (a log_softmax is applied, so either works). Called on [batch_size, L] arrays only.
      Padding is on the right, so a causal scorer needs no attention mask.
    eos_id: scorer EOS id (GPT-2: 50256).
    rule: see `target_weights`.
    batch_size: rows per scorer call; a last partial batch is padded with zero-weight EOS rows.
    attention_mask: optional {0,1} masks with the same structure as token_batches (1 = real).
    context_size: if set and L > context_size, each row is split into chunks of this many
      tokens that are scored independently, weights computed per chunk (as the reference does).

  Returns:
    dict(ppl=exp(nll_sum / num_tokens), nll_sum (float64 sum of w * nll), num_tokens (sum w),
    num_samples, rule).
  """
  if rule not in RULES:
    raise ValueError(f"rule must be one of {RULES}; got rule={rule!r}")
  if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
    raise ValueError(f"batch_size must be a positive int; got batch_size={batch_size!r}")
  if context_size is not None and context_size < 2:
    raise ValueError(f"context_size must be >= 2; got context_size={context_size!r}")
  nll_sum = 0.0
  num_tokens = 0
  num_samples = 0
  for toks, mask in _as_batches(token_batches, attention_mask):
    if toks.ndim != 2:
      raise ValueError(f"each token batch must be [B, L]; got shape {toks.shape}")
    if not np.issubdtype(toks.dtype, np.integer):
      raise ValueError(f"tokens must be integer ids; got dtype {toks.dtype}")
    if mask is None:
      mask = np.ones(toks.shape, bool)
    if mask.shape != toks.shape:
      raise ValueError(f"attention_mask shape {mask.shape} must equal tokens shape {toks.shape}")
    num_samples += toks.shape[0]
    length = toks.shape[1]
    if length < 2:
      continue
    chunk = length if context_size is None else context_size
    for c0 in range(0, length, chunk):
      t_c = toks[:, c0:c0 + chunk].astype(np.int32)
      m_c = mask[:, c0:c0 + chunk].astype(bool)
      if t_c.shape[1] < 2:
        continue
      for b0 in range(0, t_c.shape[0], batch_size):
        tb, mb = t_c[b0:b0 + batch_size], m_c[b0:b0 + batch_size]
        nreal = tb.shape[0]
        if nreal < batch_size:
          pad = batch_size - nreal
          tb = np.concatenate([tb, np.full((pad, tb.shape[1]), eos_id, np.int32)], axis=0)
          mb = np.concatenate([mb, np.zeros((pad, mb.shape[1]), bool)], axis=0)
        w = target_weights(tb, eos_id, rule, mb)
        if not w.any():
          continue
        out = log_probs_fn(jnp.asarray(tb))
        if out.ndim != 3 or out.shape[:2] != tb.shape:
          raise ValueError(
              f"log_probs_fn must return [B, L, V] = [{tb.shape[0]}, {tb.shape[1]}, V]; "
              f"got shape {tuple(out.shape)}")
        nll = np.asarray(_token_nll(jnp.asarray(out), jnp.asarray(tb)), np.float64)
        nll_sum += float(np.sum(nll * w))
        num_tokens += int(w.sum())
  if num_tokens == 0:
    raise ValueError("no target token counts towards gen PPL (empty or all-padding input)")
  return dict(ppl=math.exp(nll_sum / num_tokens), nll_sum=nll_sum, num_tokens=num_tokens,
              num_samples=num_samples, rule=rule)


def retokenize(texts: Sequence[str], encode: Callable[[str], Sequence[int]], *, max_length: int,
               eos_id: int) -> tuple[np.ndarray, np.ndarray]:
  """Scorer tokenisation of decoded samples (SPEC §7 step 1).

  Each text -> encode(text) (special tokens such as "<|endoftext|>" must map to eos_id, e.g.
  tiktoken with allowed_special="all"), truncated to max_length, right-padded with eos_id to the
  longest row. Returns (tokens int32 [N, L], attention_mask bool [N, L]).
  """
  if max_length < 1:
    raise ValueError(f"max_length must be >= 1; got max_length={max_length}")
  if isinstance(texts, str):
    raise ValueError("texts must be a sequence of strings, not a single str")
  ids = [list(encode(t))[:max_length] for t in texts]
  if not ids:
    raise ValueError("texts is empty")
  length = max(1, max(len(i) for i in ids))
  toks = np.full((len(ids), length), eos_id, np.int32)
  mask = np.zeros((len(ids), length), bool)
  for n, row in enumerate(ids):
    toks[n, :len(row)] = row
    mask[n, :len(row)] = True
  return toks, mask


def gen_ppl_from_texts(texts: Sequence[str], log_probs_fn: Callable,
                       encode: Callable[[str], Sequence[int]], *, eos_id: int,
                       max_length: int = 1024, rule: str = "reference",
                       batch_size: int = 8) -> dict:
  """Gen PPL of decoded texts: `retokenize` (truncate to the scorer context max_length, pad with
  EOS, masked) then `gen_ppl`. The reference retokenises with max_length = model length = 1024."""
  toks, mask = retokenize(texts, encode, max_length=max_length, eos_id=eos_id)
  return gen_ppl(toks, log_probs_fn, eos_id=eos_id, rule=rule, batch_size=batch_size,
                 attention_mask=mask)
