"""Confidence-ranked commits: the one selection step shared by MaskGIT decoding (SPEC_DOMAINS §I.1,
re-mask the `mask_len` lowest-confidence new tokens) and the LLaDA samplers (SPEC_DOMAINS §L.1,
§L.3: transfer the top-`n` confidences of a block; ReMDM-LLaDA: re-mask the `r` smallest cached
confidences).

Both are "per row, pick the n positions with the largest (or smallest) score", with n varying per
row and per step. `select_top_n` does it with one stable sort per row, so it runs inside `lax.scan`
with static shapes; ties are broken toward the lower position index (deterministic; the references'
`torch.topk` / `sort` tie orders are unspecified, and their scores are continuous, so ties only
arise between +/-inf entries, which callers use as "never" / "always" sentinels).
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
