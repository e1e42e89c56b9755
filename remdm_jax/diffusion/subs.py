"""The SUBS parameterization of the denoiser output x_theta(z_t) (SPEC §1; MDLM, Sahoo et al. 2024).

1. Zero mask probability: the mask logit is removed before the log-softmax.
2. Carry-over: where z_t != m, x_theta = onehot(z_t) exactly.

This module is the one home of the formula for the samplers: `masked_log_probs` (rule 1, with the
sampler's temperature) is what every sampling path draws from (the exact32 token draw gathers
rows of logits and calls it; the float64 / float32 race and the final argmax call
`subs_log_probs`, rule 1 + rule 2). (The training loss evaluates the same formula fused with its
target gather and a custom VJP, `remdm_jax.diffusion.losses.subs_target_nll`, tested equal to
`subs_log_probs`.)

"log 0" is a large *finite* negative number (NEG_INF) at the mask entry and at the carried-over
zeros, so that gradients never see inf - inf; exp(NEG_INF) underflows to exactly 0.0 in
float32/64, so probabilities are exact zeros for sampling too.

Degenerate rows (the output must never be the mask, SPEC §10.3): if no non-mask logit is finite
and above -inf (every non-mask logit -inf, e.g. a denoiser that only likes the mask), x_theta is
uniform over the non-mask vocabulary; if some non-mask logits are +inf (e.g. overflow of
logits / temperature), x_theta is uniform over those. Finite logits, however negative (e.g. -1e30
everywhere but the mask), are a proper distribution over the non-mask tokens and are used as is:
the mask logit never competes. NaN logits are not handled (the result is NaN).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

NEG_INF = -1e9  # "log 0": finite (NaN-free gradients), exp() of it is exactly 0 in float32/64.


def masked_log_probs(logits: jax.Array, mask_id: int, temperature: float = 1.0) -> jax.Array:
  """log x_theta at a masked position: log_softmax(logits / temperature) over the non-mask
  vocabulary (SUBS rule 1), the mask entry set to NEG_INF.

  Args:
    logits: [..., V] raw network outputs (any float dtype; computed in at least float32).
    mask_id: id of the mask token, in [0, V) (static).
    temperature: tau > 0 (static Python float); 1.0 skips the division (bitwise the untempered
      result).
  Returns:
    [..., V] log-probs, float32 (float64 if `logits` is). Non-mask entries whose logit is -inf
    stay -inf; rows without any finite non-mask logit follow the degenerate-row rule of the
    module docstring, so the row's non-mask mass is always 1 and the mask's is exactly 0.
  """
  dtype = jnp.promote_types(logits.dtype, jnp.float32)
  vocab = logits.shape[-1]
  is_mask = jnp.arange(vocab) == mask_id
  lg = logits.astype(dtype)
  if temperature != 1.0:
    lg = lg / jnp.asarray(temperature, dtype)
  lg = jnp.where(is_mask, -jnp.inf, lg)
  top = jax.lax.stop_gradient(jnp.max(lg, axis=-1, keepdims=True))
  # Degenerate rows: +inf somewhere -> uniform over the +inf entries; all -inf -> uniform over the
  # non-mask vocabulary. Ordinary rows pass through unchanged.
  lg = jnp.where(top == jnp.inf, jnp.where(lg == jnp.inf, 0.0, -jnp.inf).astype(dtype), lg)
  lg = jnp.where(top == -jnp.inf, jnp.where(is_mask, -jnp.inf, 0.0).astype(dtype), lg)
  logp = jax.nn.log_softmax(lg, axis=-1)
  return jnp.where(is_mask, jnp.asarray(NEG_INF, dtype), logp)


def subs_log_probs(logits: jax.Array, z_t: jax.Array, mask_id: int,
                   temperature: float = 1.0) -> jax.Array:
  """log x_theta(z_t) under SUBS.

  Args:
    logits: [..., L, V] raw network outputs (any float dtype; computed in at least float32).
    z_t: [..., L] int tokens, `mask_id` where masked.
    mask_id: id of the mask token, in [0, V).
    temperature: tau > 0 applied to the logits at masked positions (`masked_log_probs`).

  Returns:
    [..., L, V] log-probs (float32, or float64 if `logits` is): at masked positions
    `masked_log_probs` (a log-softmax over the non-mask vocabulary, mask entry = NEG_INF, never
    all mass on the mask); at unmasked positions 0 at z_t and NEG_INF elsewhere.
  """
  log_probs = masked_log_probs(logits, mask_id, temperature)
  dtype = log_probs.dtype
  ids = jnp.arange(logits.shape[-1], dtype=z_t.dtype)
  carry = jnp.where(ids == z_t[..., None], 0.0, NEG_INF).astype(dtype)
  return jnp.where((z_t == mask_id)[..., None], log_probs, carry)
