"""The ReMDM image fork's own posteriors: a reference-reproduction mode of the image decoder
(SPEC_DOMAINS §I.1 "mdlm" / "remdm_*" branches; yair-schiff/maskgit `libml/parallel_decode.py`).
Never imports Flax.

The fork samples over the codebook with slot K - 1 as the mask (never emitted), alpha from the
MaskGIT mask schedule at t = (T - step) / T, its own key chain (per step `rng, sample_rng =
split(rng)`, uniforms over the whole [B, L, K] array) and the float32 exponential race
(`draws.race_argmax` on those uniforms). Quirks kept: remdm_conf's stale neg-log-prob values stay
in the softmax denominator (`conf_stale=True`), no final noise-removal step, known (prompt)
tokens may be re-masked except a class token at position 0. T denoiser calls. The clean image
sampler is `sampling.sampler` itself; this module exists only to reproduce the fork.
"""
from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
from jax import lax

from remdm_jax.sampling import draws

FORK_STRATEGIES = ("mdlm", "remdm_cap", "remdm_rescale", "remdm_conf", "fb", "remdm_fb")


def fork_sigma(strategy: str, alpha_t, alpha_s, eta: float):
  """The fork's base sigma of a remdm_* step (§I.1): cap min((1-a_s)/a_t, eta), rescale
  eta min((1-a_s)/a_t, 1), conf min((1-a_s)/a_t, 1) (times the weights), fb min((a_s-a_t)/a_t, 1),
  mdlm 0."""
  smax = (1.0 - alpha_s) / alpha_t
  if strategy == "remdm_cap":
    return jnp.minimum(smax, eta)
  if strategy == "remdm_rescale":
    return eta * jnp.minimum(smax, 1.0)
  if strategy == "remdm_conf":
    return jnp.minimum(smax, 1.0)
  if strategy in ("fb", "remdm_fb"):
    return jnp.minimum((alpha_s - alpha_t) / alpha_t, 1.0)
  return jnp.zeros_like(alpha_t)


def fork_conf_weights(neg_logprobs, tokens, mask_id: int, stale: bool = True):
  """remdm_conf weights w [B, L] (§I.1): softmax over positions of the stored neg-log-probs, then 0
  where `tokens == mask_id` (NaN -> 0). stale=True (the fork): masked positions' old values stay in
  the softmax denominator; stale=False (clean): the softmax runs over decoded positions only."""
  masked = tokens == mask_id
  x = neg_logprobs if stale else jnp.where(masked, -jnp.inf, neg_logprobs)
  w = jax.nn.softmax(x, axis=-1)
  return jnp.nan_to_num(jnp.where(masked, 0.0, w))


def fork_posterior(tokens, logits, alpha_t, alpha_s, sigma, mask_id: int, strategy: str):
  """The fork's q(z_s | z_t) rows [B, L, K] over the codebook with slot K-1 as the mask (§I.1).

  logits: [B, L, K] (codebook logits / temperature; entry K-1 is overwritten with -inf).
  alpha_t, alpha_s: scalars or [B, 1, 1]. sigma: scalar or [B, L]. mdlm: q = x (mc_t - mc_s)/mc_t,
  slot = mc_s/mc_t (known tokens are kept by the caller). remdm_*: masked
  q = (a_s - a_t(1-sigma))/(1-a_t) x + (1-a_s-a_t sigma)/(1-a_t) e_M;
  decoded q = (1-sigma) onehot(z) + sigma e_M (onehot of an id >= K is all zeros).
  Returns (q, log_softmax(logits with slot at -inf)).
  """
  K = logits.shape[-1]
  lg = logits.astype(jnp.float32).at[..., K - 1].set(-jnp.inf)
  logp = jax.nn.log_softmax(lg, axis=-1)
  x = jnp.exp(logp)
  e_m = jax.nn.one_hot(K - 1, K, dtype=jnp.float32)
  if strategy == "mdlm":
    mc_t, mc_s = 1.0 - alpha_t, 1.0 - alpha_s
    q = x * (mc_t - mc_s) / mc_t
    return jnp.where(jnp.arange(K) == K - 1, mc_s / mc_t, q), logp
  sig = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), tokens.shape)[..., None]
  case1 = ((alpha_s - alpha_t * (1.0 - sig)) / (1.0 - alpha_t) * x
           + (1.0 - alpha_s - alpha_t * sig) / (1.0 - alpha_t) * e_m)
  case2 = (1.0 - sig) * jax.nn.one_hot(tokens, K, dtype=jnp.float32) + sig * e_m
  return jnp.where((tokens == mask_id)[..., None], case1, case2), logp


def race(q, uniforms):
  """The fork's exponential race argmax q / (1e-10 - log(U + 1e-10)) in q's dtype (float32):
  `draws.race_argmax` on given uniforms (q >= 0, so its q > 0 gate changes no winner)."""
  return draws.race_argmax(None, q, uniforms=uniforms)


def fork_step(tokens, neg, logits, alpha_t, alpha_s, u, *, mask_id: int, strategy: str,
              eta: float, conf_stale: bool, class_token: bool):
  """One step of the fork (§I.1). tokens int32 [B, L]; neg float32 [B, L] stored neg-log-probs;
  logits float32 [B, L, K]; alpha_t, alpha_s [B, 1, 1]; u [B, L, K] uniforms of the race.
  Returns (z_s int32 [B, L], neg)."""
  B, L = tokens.shape
  K = logits.shape[-1]
  m = mask_id
  sigma = fork_sigma(strategy, alpha_t, alpha_s, eta)[..., 0]  # [B, 1]
  if strategy == "remdm_conf":
    sigma = fork_conf_weights(neg, tokens, m, conf_stale) * sigma
  sigma = jnp.broadcast_to(sigma, (B, L))
  q, logp = fork_posterior(tokens, logits, alpha_t, alpha_s, sigma, m, strategy)
  sampled = race(q, u)
  sampled = jnp.where(sampled == K - 1, m, sampled)
  if strategy == "mdlm":
    sampled = jnp.where(tokens == m, sampled, tokens)
  new_neg = -jnp.take_along_axis(logp, jnp.clip(sampled, 0, K - 1)[..., None], axis=-1)[..., 0]
  neg = jnp.where(sampled != m, new_neg, neg)
  if class_token:
    sampled = sampled.at[:, 0].set(tokens[:, 0])
    neg = neg.at[:, 0].set(-jnp.inf)
  return sampled, neg


def fork_decode(step_logits: Callable, tokens0, key, *, num_steps: int, mask_id: int,
                strategy: str, eta: float, alpha: Callable, conf_stale: bool = True,
                class_token: bool = True, noise: Optional[dict] = None,
                record_steps: bool = False):
  """Runs the fork's decoding (module docstring) in one `lax.scan`.

  Args:
    step_logits: (tokens int32 [B, L], step int32 scalar) -> float32 [B, L, K] codebook logits of
      step i at time t = (T - i) / T, temperature applied.
    tokens0: int32 [B, L] start state. key: PRNG key of the fork's chain (unused with noise).
    num_steps: T. mask_id: the model's mask id (>= K). strategy: one of `FORK_STRATEGIES`.
    eta: ReMDM eta. alpha: (t float32 scalar, unknown0 int32 [B, 1, 1]) -> alpha_t (the mask
      schedule at time t). conf_stale: remdm_conf's stale softmax (the fork).
    class_token: position 0 is a class token (never changed).
    noise: optional {"uniforms": [T, B, L, K]} replacing the drawn uniforms.
    record_steps: also return every step's sample.
  Returns:
    (tokens int32 [B, L], info {"nfe": T} (+ "final_seqs" int32 [B, T, L])).
  """
  if strategy not in FORK_STRATEGIES:
    raise ValueError(f"fork_decode: strategy={strategy!r} must be one of {FORK_STRATEGIES}")
  T = num_steps
  B, L = tokens0.shape
  unknown0 = jnp.sum(tokens0 == mask_id, axis=-1).astype(jnp.int32)[:, None, None]
  neg0 = jnp.full((B, L), -jnp.inf, jnp.float32)  # [UNVERIFIED] initial value of the fork

  def body(carry, xs):
    tokens, neg, rng = carry
    i = xs["step"].astype(jnp.float32)
    t = (jnp.float32(T) - i) / jnp.float32(T)
    s = (jnp.float32(T) - i - 1.0) / jnp.float32(T)
    logits = step_logits(tokens, xs["step"])
    a_t = jnp.broadcast_to(alpha(t, unknown0), (B, 1, 1))
    a_s = jnp.broadcast_to(alpha(s, unknown0), (B, 1, 1))
    if noise is None:
      rng, sample_rng = jax.random.split(rng)
      u = jax.random.uniform(sample_rng, logits.shape)
    else:
      u = xs["uniforms"]
    sampled, neg = fork_step(tokens, neg, logits, a_t, a_s, u, mask_id=mask_id,
                             strategy=strategy, eta=eta, conf_stale=conf_stale,
                             class_token=class_token)
    return (sampled, neg, rng), (sampled if record_steps else None)

  xs = {"step": jnp.arange(T, dtype=jnp.int32)}
  if noise is not None:
    xs["uniforms"] = noise["uniforms"]
  (tokens, _, _), rec = lax.scan(body, (tokens0, neg0, key), xs)
  info = {"nfe": T}
  if record_steps:
    info["final_seqs"] = jnp.swapaxes(rec, 0, 1)
  return tokens, info
