"""The SUBS parameterization of the denoiser output x_theta(z_t) (SPEC §1; MDLM, Sahoo et al. 2024).

1. Zero mask probability: the mask logit is removed before the log-softmax.
2. Carry-over: where z_t != m, x_theta = onehot(z_t) exactly.

Both are done with `where` on float32 log-probs, using a large *finite* negative number for
"log 0" so that gradients never see inf - inf. exp(NEG_INF) underflows to exactly 0.0 in float32,
so probabilities are exact zeros for sampling too.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

NEG_INF = -1e9  # "log 0": finite (NaN-free gradients), exp() of it is exactly 0 in float32/64.


def subs_log_probs(logits: jax.Array, z_t: jax.Array, mask_id: int) -> jax.Array:
  """log x_theta(z_t) under SUBS.

  Args:
    logits: [..., L, V] raw network outputs (any float dtype; computed in at least float32).
    z_t: [..., L] int tokens, `mask_id` where masked.
    mask_id: id of the mask token, in [0, V).

  Returns:
    [..., L, V] log-probs (float32, or float64 if `logits` is): at masked positions a
    log-softmax over the non-mask vocabulary (mask entry = NEG_INF); at unmasked positions 0 at
    z_t and NEG_INF elsewhere.
  """
  dtype = jnp.promote_types(logits.dtype, jnp.float32)
  vocab = logits.shape[-1]
  ids = jnp.arange(vocab, dtype=z_t.dtype)
  logits = jnp.where(ids == mask_id, NEG_INF, logits.astype(dtype))
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  carry = jnp.where(ids == z_t[..., None], 0.0, NEG_INF).astype(dtype)
  return jnp.where((z_t == mask_id)[..., None], log_probs, carry)
