"""Test oracle: the explicit ReMDM posterior q(z_s | z_t, x_theta) (SPEC §4.1).

`transition_probs` builds the full [B, L, V] rows in float64; it is the oracle the samplers'
kernels are tested against (tests/test_sampling_kernel.py) and is used by no sampler. It is
deliberately NOT exported from `remdm_jax.sampling` (import it from `remdm_jax.sampling.reference`)
and deliberately written independently of `remdm_jax.diffusion.sigmas` (an oracle must not share the code it
checks).
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp


def _float_dtype():
  return jnp.float64 if jax.config.jax_enable_x64 else jnp.float32


def transition_probs(z_t: jax.Array, x0_probs: jax.Array, *, alpha_t, alpha_s, sigma,
                     mask_id: int) -> jax.Array:
  """q(z_s | z_t, x_theta) per position, [B, L, V] probabilities (float64 when x64 is on).

  Decoded z_t = x != m:  q = (1 - sigma) onehot(x) + sigma onehot(m).
  Masked z_t = m:        q = u x0 + (1 - u) onehot(m),
                         u = clip((alpha_s - (1 - sigma) alpha_t) / (1 - alpha_t), 0, 1).
  The clip to [0, 1] is FB's documented last step (SPEC §4.4).

  Args:
    z_t: int [B, L].
    x0_probs: [B, L, V] x_theta after nucleus filtering (zero mass on the mask; the decoded
      rows are ignored).
    alpha_t, alpha_s: scalars.
    sigma: scalar or [B, L] per-token sigma (for conf: `conf_sigma`, 0 at masked positions).
    mask_id: the mask id.
  """
  dt = _float_dtype()
  x0 = x0_probs.astype(dt)
  at, as_ = jnp.asarray(alpha_t, dt), jnp.asarray(alpha_s, dt)
  sig = jnp.broadcast_to(jnp.asarray(sigma, dt), z_t.shape)
  vocab = x0.shape[-1]
  onehot_m = jax.nn.one_hot(mask_id, vocab, dtype=dt)
  onehot_z = jax.nn.one_hot(z_t, vocab, dtype=dt)
  denom = 1.0 - at
  u = jnp.where(denom > 0, (as_ - (1.0 - sig) * at) / jnp.where(denom > 0, denom, 1.0), 0.0)
  u = jnp.clip(u, 0.0, 1.0)[..., None]
  masked = (z_t == mask_id)[..., None]
  q_masked = u * x0 + (1.0 - u) * onehot_m
  q_decoded = (1.0 - sig[..., None]) * onehot_z + sig[..., None] * onehot_m
  return jnp.where(masked, q_masked, q_decoded)


def guided_transition_probs(z_t: jax.Array, x0_probs: jax.Array, log_weight: Optional[jax.Array],
                            *, alpha_t, alpha_s, sigma, mask_id: int) -> jax.Array:
  """Oracle of the guided row: q_guided ∝ q_sigma(z_s | z_t, x_theta) exp(log_weight), [B, L, V]
  (float64 under x64), rows normalised; q_sigma = `transition_probs`. log_weight None
  gives q_sigma itself. Used by tests; the sampler never builds it in exact32 unless guided."""
  q = transition_probs(z_t, x0_probs, alpha_t=alpha_t, alpha_s=alpha_s, sigma=sigma,
                       mask_id=mask_id)
  if log_weight is None:
    return q
  lq = jnp.where(q > 0, jnp.log(jnp.where(q > 0, q, 1.0)), -jnp.inf) + log_weight.astype(q.dtype)
  return jax.nn.softmax(lq, axis=-1)
