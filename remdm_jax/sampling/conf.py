"""The confidence weights of remdm_conf (SPEC §4.4): the one home of the conf weighting, used by
the sampler's kernel (`sampler.token_sigma`) and by tests."""
from __future__ import annotations

import jax
import jax.numpy as jnp


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
