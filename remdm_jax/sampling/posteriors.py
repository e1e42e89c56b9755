"""The explicit ReMDM posterior q(z_s | z_t, x_theta) (SPEC §4.1) and the conf sigma (SPEC §4.4).

`transition_probs` builds the full [B, L, V] rows; it is the oracle the fast two-stage kernel is
tested against and is never used by the exact32 sampler.
"""
from __future__ import annotations

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


def conf_weights(psi: jax.Array, decoded: jax.Array, conf_dtype: str = "float32") -> jax.Array:
  """w_l = exp(-psi_l) / sum_{decoded l'} exp(-psi_l'), 0 at masked positions and in rows with
  nothing decoded (SPEC §4.4). conf_dtype="bfloat16" emulates the reference, which stores
  c = -psi in bf16 and returns a bf16 softmax. psi: float [B, L]; decoded: bool [B, L]."""
  c = -psi.astype(jnp.float32)
  if conf_dtype == "bfloat16":
    c = c.astype(jnp.bfloat16).astype(jnp.float32)
  c = jnp.where(decoded, c, -jnp.inf)
  cmax = jnp.max(c, axis=-1, keepdims=True)
  cmax = jnp.where(jnp.isfinite(cmax), cmax, 0.0)
  e = jnp.where(decoded, jnp.exp(c - cmax), 0.0)
  z = jnp.sum(e, axis=-1, keepdims=True)
  w = jnp.where(z > 0, e / jnp.where(z > 0, z, 1.0), 0.0)
  if conf_dtype == "bfloat16":
    w = w.astype(jnp.bfloat16).astype(jnp.float32)
  return w


def conf_sigma(psi: jax.Array, decoded: jax.Array, sigma_max, conf_dtype: str = "float32"):
  """Per-token sigma of remdm_conf: sigma^l = w_l * sigma_max at decoded positions, 0 at masked
  ones (SPEC §4.4). psi: [B, L] confidences (probability of the token when it was decoded);
  decoded: bool [B, L]; sigma_max: scalar (or the cap/rescale base sigma). Returns float32 [B, L]."""
  w = conf_weights(psi, decoded, conf_dtype)
  sig = w * jnp.asarray(sigma_max, jnp.float32)
  if conf_dtype == "bfloat16":
    sig = sig.astype(jnp.bfloat16).astype(jnp.float32)
  return sig
