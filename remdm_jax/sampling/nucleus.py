"""Nucleus (top-p) filtering of x_theta (SPEC §4.3).

Rules, on a row pi sorted descending with cumulative sums C_k:
  "reference": keep k iff C_k <= p, and always keep k = 1 (the token that crosses p is dropped).
  "hf":        keep k iff C_{k-1} < p (the smallest set with mass >= p; Hugging Face).
Two implementations: `method="sort"` (the sorted rule itself; the oracle and the race modes) and
`method="bisect"` (sort-free threshold form: keep v iff sum_{u: pi_u >= pi_v} pi_u <= p, or v is
the argmax; for "hf" keep v iff sum_{u: pi_u > pi_v} pi_u < p). The threshold is found exactly by
a 30-step bisection over the bit patterns of non-negative float32 values (which order like the
values). The two differ only on exact ties, whose order the reference leaves unspecified.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from remdm_jax.subs import NEG_INF

_ONE_PLUS = 0x3F800001  # bit pattern just above float32 1.0


def _check(top_p, rule):
  if rule not in ("reference", "hf"):
    raise ValueError(f"nucleus rule={rule!r} must be 'reference' or 'hf'")
  if top_p is not None and not 0.0 < top_p <= 1.0:
    raise ValueError(f"top_p={top_p!r} must lie in (0, 1]")


def keep_mask_sort(probs: jax.Array, top_p: float, rule: str = "reference") -> jax.Array:
  """Boolean [..., V] of kept entries by the sorted rule."""
  order = jnp.argsort(-probs, axis=-1, stable=True)
  sp = jnp.take_along_axis(probs, order, axis=-1)
  c = jnp.cumsum(sp, axis=-1)
  if rule == "reference":
    keep_sorted = c <= top_p
    keep_sorted = keep_sorted.at[..., 0].set(True)
  else:
    keep_sorted = (c - sp) < top_p
  inv = jnp.argsort(order, axis=-1)
  return jnp.take_along_axis(keep_sorted, inv, axis=-1)


def keep_mask_bisect(probs: jax.Array, top_p: float, rule: str = "reference") -> jax.Array:
  """Boolean [..., V] of kept entries by the sort-free threshold rule (float32 bisection)."""
  p = probs.astype(jnp.float32)
  top = jnp.float32(top_p)
  strict = rule == "hf"

  def crit(tau_bits):
    tau = lax.bitcast_convert_type(tau_bits, jnp.float32)[..., None]
    sel = (p > tau) if strict else (p >= tau)
    mass = jnp.sum(jnp.where(sel, p, 0.0), axis=-1)
    return (mass < top) if strict else (mass <= top)

  shape = p.shape[:-1]
  lo = jnp.zeros(shape, jnp.int32)           # crit(lo) is False (mass ~ 1 > p)
  hi = jnp.full(shape, _ONE_PLUS, jnp.int32)  # crit(hi) is True (mass 0)

  def body(_, lohi):
    lo, hi = lohi
    mid = lo + (hi - lo) // 2
    c = crit(mid)
    return jnp.where(c, lo, mid), jnp.where(c, mid, hi)

  lo, hi = lax.fori_loop(0, 30, body, (lo, hi))
  tau = lax.bitcast_convert_type(hi, jnp.float32)[..., None]
  keep = p >= tau
  if not strict:
    top_idx = jnp.argmax(p, axis=-1)
    keep = keep | (jnp.arange(p.shape[-1]) == top_idx[..., None])
  return keep


def nucleus_filter(x: jax.Array, top_p, rule: str = "reference", *, log_space: bool = True,
                   method: str = "sort") -> jax.Array:
  """Top-p filter and renormalise each row of x [..., V].

  Args:
    x: log-probs (log_space=True; dropped entries become NEG_INF) or probs (dropped become 0).
    top_p: nucleus mass in (0, 1]; None or 1.0 returns x unchanged.
    rule: "reference" or "hf" (module docstring).
    method: "sort" or "bisect" (float32 threshold search).
  Returns: the filtered, renormalised row, same shape, space and dtype as x.
  """
  _check(top_p, rule)
  if method not in ("sort", "bisect"):
    raise ValueError(f"nucleus method={method!r} must be 'sort' or 'bisect'")
  if top_p is None or top_p >= 1.0:
    return x
  probs = jnp.exp(x) if log_space else x
  keep = (keep_mask_sort if method == "sort" else keep_mask_bisect)(probs, top_p, rule)
  if log_space:
    lse = jax.nn.logsumexp(jnp.where(keep, x, -jnp.inf), axis=-1, keepdims=True)
    return jnp.where(keep, x - lse, jnp.asarray(NEG_INF, x.dtype))
  kept = jnp.where(keep, x, 0.0)
  return kept / jnp.sum(kept, axis=-1, keepdims=True)
