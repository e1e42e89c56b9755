"""UDLM: uniform-noise discrete diffusion (Schiff et al. 2025; SPEC_DOMAINS §M.7), the QM9
baseline: forward process, posterior and the continuous-time NELBO integrand (process math). The
training loss is `diffusion.losses.udlm_loss`, the guided sampler `sampling.udlm`.

Vocabulary of N tokens (all ids of the model output, no special role for a mask id), limiting
distribution pi = 1/N. Two schedules, as in the reference (`guidance` repo, diffusion.py): its
training loss hard-codes alpha_t = 1 - t (`udlm_alpha(t)`), while its sampler (and its forward
noising) use the log-linear noise with eps = 1e-3, move_chance_t = 1 - exp(-sigma_t) = (1 - eps) t,
i.e. alpha_t = 1 - (1 - 1e-3) t (`udlm_alpha(t, SAMPLING_EPS)`: alpha = 1e-3, not 0, at t = 1):
  forward    q(z_t | x) = alpha_t x + (1 - alpha_t) / N                 (`forward_probs`)
  posterior  q(z_s | z_t, x) = [alpha_t N x⊙z_t + (alpha_ts - alpha_t) z_t
                                + (alpha_s - alpha_t) x + (1 - alpha_ts)(1 - alpha_s) / N]
                               / [alpha_t N <x, z_t> + 1 - alpha_t],
             alpha_ts = alpha_t / alpha_s, x one-hot or x_theta        (`posterior_probs`)
  NELBO      per position, with x̄ = N alpha_t x + 1 - alpha_t, x̄_θ = N alpha_t x_theta
             + 1 - alpha_t and alpha'_t = -1:
             (alpha'_t / (N alpha_t)) [N / x̄(z_t) - N / x̄_θ(z_t)
             - sum_v (x̄_v / x̄(z_t)) (log x̄_θ(z_t) - log x̄_θ,v + log x̄_v - log x̄(z_t))]
             (`nelbo_integrand`), plus the reconstruction term -log x_theta(x)[x] at t = 0.
For a product distribution p the minimiser of the NELBO is x_theta = p (the marginal, not
p(x | z_t): the posterior formula already conditions on z_t), and the NELBO is then exactly the
entropy H(p) (tests/test_uniform.py integrates it).

Sampling (`sampling.udlm.make_udlm_sampler`): z_1 ~ pi, then on the grid t_i = 1 - i (1 - eps)/T
each step draws every position from q(z_s | z_t, x_theta(z_t)) with alpha = udlm_alpha(.,
SAMPLING_EPS). Guidance and draws: see `sampling.udlm`.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from remdm_jax.diffusion.subs import NEG_INF

ApplyFn = Callable[[jax.Array, jax.Array], jax.Array]
DenoiseFn = Callable[[Any, jax.Array, jax.Array], jax.Array]


SAMPLING_EPS = 1e-3  # the reference's LogLinearNoise(eps=1e-3), used by its UDLM sampler


def udlm_alpha(t, eps: float = 0.0):
  """alpha_t = 1 - (1 - eps) t (§M.7). eps = 0 (default): the reference's training-loss schedule
  alpha_t = 1 - t; eps = SAMPLING_EPS: its sampler's move_chance_t = (1 - eps) t."""
  return 1.0 - (1.0 - eps) * t


def forward_probs(x: jax.Array, alpha_t, vocab: int, dtype=jnp.float32) -> jax.Array:
  """q(z_t | x) [..., N] (dtype) for int tokens x [...]: alpha_t onehot(x) + (1 - alpha_t) / N.
  alpha_t: scalar or broadcastable to x's shape."""
  a = jnp.asarray(alpha_t, dtype)
  a = a[..., None] if a.ndim else a
  return a * jax.nn.one_hot(x, vocab, dtype=dtype) + (1.0 - a) / vocab


def posterior_probs(x_probs: jax.Array, z_t: jax.Array, alpha_t, alpha_s) -> jax.Array:
  """q(z_s | z_t, x) [..., N] of §M.7 for x_probs [..., N] (one-hot x or x_theta) and int z_t
  [...]; alpha_t <= alpha_s, alpha_s > 0 (scalars or broadcastable to z_t). Rows sum to 1.
  Computed in x_probs' float dtype (float64 under x64 for float64 input)."""
  x = x_probs
  N = x.shape[-1]
  dt = jnp.promote_types(x.dtype, jnp.float32)
  x = x.astype(dt)
  a_t = jnp.asarray(alpha_t, dt)
  a_s = jnp.asarray(alpha_s, dt)
  if a_t.ndim:
    a_t, a_s = a_t[..., None], a_s[..., None]
  zt = jax.nn.one_hot(z_t, N, dtype=dt)
  a_ts = a_t / a_s
  num = (a_t * N * x * zt + (a_ts - a_t) * zt + (a_s - a_t) * x
         + (1.0 - a_ts) * (1.0 - a_s) / N)
  den = a_t * N * jnp.sum(x * zt, -1, keepdims=True) + 1.0 - a_t
  return num / den


def log_posterior(logits: jax.Array, z_t: jax.Array, alpha_t, alpha_s) -> jax.Array:
  """log q(z_s | z_t, x_theta) [..., N] with x_theta = softmax(logits) (float32 at least);
  entries of probability 0 are NEG_INF (only possible at alpha_s = 1)."""
  dt = jnp.promote_types(logits.dtype, jnp.float32)
  q = posterior_probs(jax.nn.softmax(logits.astype(dt), -1), z_t, alpha_t, alpha_s)
  return jnp.where(q > 0, jnp.log(jnp.where(q > 0, q, 1.0)), NEG_INF)


def nelbo_integrand(x_theta: jax.Array, x: jax.Array, z_t: jax.Array, alpha_t) -> jax.Array:
  """The continuous-time UDLM NELBO integrand at time t (§M.7), per position [...] (>= 0; = 0
  where x_theta = onehot(x)); the NELBO is its integral over t in [0, 1] in expectation over
  z_t ~ q(z_t | x) (plus the t = 0 reconstruction term).

  Args: x_theta [..., N] probabilities; x, z_t int [...]; alpha_t in (0, 1] (scalar or [...]).
  """
  N = x_theta.shape[-1]
  dt = jnp.promote_types(x_theta.dtype, jnp.float32)
  a = jnp.asarray(alpha_t, dt)
  a = a[..., None] if a.ndim else a
  xb = N * a * jax.nn.one_hot(x, N, dtype=dt) + 1.0 - a
  xbt = N * a * x_theta.astype(dt) + 1.0 - a
  xb_z = jnp.take_along_axis(xb, z_t[..., None], -1)
  xbt_z = jnp.take_along_axis(xbt, z_t[..., None], -1)
  inner = jnp.sum((xb / xb_z) * (jnp.log(xbt_z) - jnp.log(xbt) + jnp.log(xb) - jnp.log(xb_z)),
                  -1, keepdims=True)
  bracket = N / xb_z - N / xbt_z - inner
  return (-1.0 / (N * a) * bracket)[..., 0]
