"""Confidence-ranked commits: the selection steps shared by MaskGIT decoding (SPEC_DOMAINS §I.1,
re-mask the lowest-confidence new tokens) and the LLaDA samplers (SPEC_DOMAINS §L.1, §L.3:
transfer the top-`n` confidences of a block; ReMDM-LLaDA: re-mask the `r` smallest cached
confidences).

Two rules, because the references differ exactly where scores tie:

* `select_top_n`: exactly n positions per row (the LLaDA references' `torch.topk(k)` /
  `argsort(...)[:r]`), ties broken toward the lower position index (deterministic; torch's tie
  order is unspecified).
* `select_below_nth`: the positions whose score is strictly below the row's n-th smallest score
  (Google's `mask_by_random_topk`: `cut_off = sort(confidence)[mask_len]`,
  `masking = confidence < cut_off`). Positions tied with the cut-off value are NOT selected, so
  fewer than n may be.

Ties are real, not only between the +-inf sentinels callers use for "never" / "always": a model
confident to float32 1.0 (log p = 0 at several positions) or identical logit rows give equal
scores, and MaskGIT's Gumbel term vanishes at its last step (choice temperature x (1 - r) = 0).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def select_top_n(scores: jax.Array, n, *, largest: bool = True) -> jax.Array:
  """Per row, the `n` positions with the largest (`largest=True`) or smallest scores.

  Args:
    scores: float [B, L] (any float dtype; NaN is not allowed).
    n: int scalar or int [B]: how many to pick per row, clipped to [0, L].
    largest: pick the largest (True) or the smallest (False) scores.
  Returns:
    bool [B, L] with exactly clip(n, 0, L) True entries per row. Ties (including equal infinities)
    go to the lower index. A -inf score (largest=True) or +inf (largest=False) is picked only when
    n exceeds the number of other entries, so callers gate positions out by n, not by score alone.
  """
  B, L = scores.shape
  key = -scores if largest else scores
  order = jnp.argsort(key, axis=-1, stable=True)                       # best first
  rank = jnp.zeros((B, L), jnp.int32).at[jnp.arange(B)[:, None], order].set(
      jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32), (B, L)))
  n = jnp.clip(jnp.broadcast_to(jnp.asarray(n, jnp.int32), (B,)), 0, L)
  return rank < n[:, None]


def select_below_nth(scores: jax.Array, n) -> jax.Array:
  """Per row, the positions whose score is strictly below the row's n-th smallest score (0-based:
  cut_off = sort(scores)[n]): Google MaskGIT's `mask_by_random_topk` (libml/parallel_decode.py).

  Args:
    scores: float [B, L] (NaN is not allowed).
    n: int scalar or int [B], clipped to [0, L - 1] (the reference indexes the sorted row with
      it; callers keep it below L).
  Returns:
    bool [B, L] with at most n True entries per row: exactly n when the n-th and (n+1)-th smallest
    scores differ, fewer when positions tie with the cut-off (they stay unselected). +inf scores
    are never selected.
  """
  B, L = scores.shape
  n = jnp.clip(jnp.broadcast_to(jnp.asarray(n, jnp.int32), (B,)), 0, L - 1)
  cut = jnp.take_along_axis(jnp.sort(scores, axis=-1), n[:, None], axis=-1)
  return scores < cut


def ranked_commit(tokens: jax.Array, candidates: jax.Array, scores: jax.Array, n, *,
                  largest: bool = True) -> tuple[jax.Array, jax.Array]:
  """Writes `candidates` into `tokens` at the `n` best-scored positions of each row.

  Args:
    tokens, candidates: int [B, L]. scores: float [B, L]. n: int scalar or [B]. largest: as in
      `select_top_n`.
  Returns:
    (new tokens int32 [B, L], selected bool [B, L]).
  """
  sel = select_top_n(scores, n, largest=largest)
  return jnp.where(sel, candidates, tokens).astype(jnp.int32), sel
