"""The UDLM ancestral sampler with D-CFG / D-CBG guidance (SPEC_DOMAINS §M.4, §M.7); the process
math is `remdm_jax.diffusion.uniform`.

Sampling (`make_udlm_sampler`): z_1 ~ pi, then on the grid t_i = 1 - i (1 - eps)/T (reused from
`sampling.schedule.uniform_grid`) each step draws every position from q(z_s | z_t, x_theta(z_t))
with alpha_t = 1 - (1 - 1e-3) t and alpha_s = 1 - (1 - 1e-3)(t - dt): the reference sampler's
log-linear noise, move_chance = 1 - exp(-sigma) (`diffusion.uniform.udlm_alpha(., SAMPLING_EPS)`;
the first step has alpha_t = 1e-3, not 0; alpha_t = 1 - t is only the training loss's), with the
32-bit-integer Gumbel-max of `sampling.draws` (per-position keys, independent of batch
size). Guidance: D-CFG mixes the two log posteriors, log_softmax(gamma log q_c + (1 - gamma)
log q_u) (`cfg_log_posterior`, §M.4 D-CFG item 6); D-CBG adds gamma * C over all N values at every
position (`guidance.CBGGuidance`, the same classifier term as the masked sampler).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from remdm_jax.diffusion.uniform import SAMPLING_EPS, log_posterior, udlm_alpha
from remdm_jax.sampling import draws
from remdm_jax.sampling.guidance import CBGGuidance, _check_gamma, cfg_logits_pair, cfg_mix
from remdm_jax.sampling.schedule import uniform_grid
from remdm_jax.types import DenoiseFn


def cfg_log_posterior(lc_logits, lu_logits, z_t, alpha_t, alpha_s, gamma: float) -> jax.Array:
  """D-CFG for UDLM (§M.4 item 6, §M.7): log_softmax(gamma log q_c + (1 - gamma) log q_u), q_c /
  q_u the posteriors under the conditional / null-class x_theta. gamma 0 / 1: log q_u / log q_c
  (the other logits may be None)."""
  g = _check_gamma(gamma, "cfg_log_posterior")
  if g == 0.0:
    return log_posterior(lu_logits, z_t, alpha_t, alpha_s)
  if g == 1.0:
    return log_posterior(lc_logits, z_t, alpha_t, alpha_s)
  return cfg_mix(log_posterior(lc_logits, z_t, alpha_t, alpha_s),
                 log_posterior(lu_logits, z_t, alpha_t, alpha_s), g)



@dataclasses.dataclass(frozen=True)
class CFGGuidance:
  """D-CFG for the UDLM sampler: cond_denoise_fn(model_params, tokens [N, L], t [N], labels [N])
  -> logits; params = {"model": ..., "labels": int32 [B]}; `null_label` the null class; one model
  call of 2B rows per step for gamma not in {0, 1}."""

  cond_denoise_fn: Callable
  gamma: float
  null_label: int

  def __post_init__(self):
    object.__setattr__(self, "gamma", _check_gamma(self.gamma, "CFGGuidance"))
    if not isinstance(self.null_label, int) or self.null_label < 0:
      raise ValueError(f"CFGGuidance.null_label={self.null_label!r} must be an int >= 0")


class UDLMSampler:
  """Callable returned by `make_udlm_sampler`: sampler(params, key, batch_size) -> int32 [B, L];
  `sample_with_info` also returns {"nfe": model rows per sample (static), "classifier_nfe"}.
  Attributes: num_steps, seq_len, t (grid [T + 1]), alpha_t / alpha_s (float64 [T], the alphas
  of each step), nfe, core (un-jitted)."""

  def __init__(self, core, num_steps, seq_len, grid, nfe, jit, alpha_t=None, alpha_s=None):
    self.core, self.num_steps, self.seq_len, self.t, self.nfe = core, num_steps, seq_len, grid, nfe
    self.alpha_t, self.alpha_s = alpha_t, alpha_s
    self._fn = jax.jit(core, static_argnames=("batch_size",)) if jit else core

  def sample_with_info(self, params, key, batch_size: int):
    bad = isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer))
    if bad or batch_size < 1:
      raise ValueError(f"batch_size={batch_size!r} must be an int >= 1")
    return self._fn(params, key, batch_size=int(batch_size))

  def __call__(self, params, key, batch_size: int):
    return self.sample_with_info(params, key, batch_size)[0]


def make_udlm_sampler(denoise_fn: Optional[DenoiseFn], *, num_steps: int, seq_len: int,
                      eps: float = 1e-5, noise_eps: float = SAMPLING_EPS,
                      guidance: Union[None, CFGGuidance, CBGGuidance] = None,
                      jit: bool = True) -> UDLMSampler:
  """The UDLM ancestral sampler (§M.7) as one `lax.scan` over T steps.

  Args:
    denoise_fn: (params, tokens int32 [B, L], t float32 [B]) -> logits [B, L, N] (x_theta =
      softmax); None with CFGGuidance (which carries the conditional denoiser).
    num_steps: T. seq_len: L. eps: the grid end (t_T = eps, SPEC §4.2 grid; the reference's
      `_diffusion_sample(eps=1e-5)`). noise_eps: the log-linear noise's eps, alpha_t =
      1 - (1 - noise_eps) t (the reference's 1e-3; 0 gives alpha_t = 1 - t), in [0, 1).
    guidance: None; CFGGuidance (params {"model", "labels"}); or `guidance.CBGGuidance`
      (params {"model", "classifier"}; C over all N values at every position, exact or approx).
  Keys: z_1 from fold_in(key, T), step i from fold_in(key, i); per-position Gumbel keys, so a
  sample does not depend on the batch size. No final noise removal (the reference has none).
  Returns: `UDLMSampler`; info["nfe"] = model rows per sample (T, or 2T for D-CFG with gamma not
  in {0, 1}), info["classifier_nfe"] = classifier rows per sample (D-CBG).
  """
  if not isinstance(num_steps, int) or num_steps < 1:
    raise ValueError(f"num_steps={num_steps!r} must be an int >= 1")
  if not isinstance(seq_len, int) or seq_len < 1:
    raise ValueError(f"seq_len={seq_len!r} must be an int >= 1")
  if not 0.0 < eps < 1.0:
    raise ValueError(f"eps={eps!r} must lie in (0, 1)")
  if not 0.0 <= noise_eps < 1.0:
    raise ValueError(f"noise_eps={noise_eps!r} must lie in [0, 1)")
  if guidance is not None and not isinstance(guidance, (CFGGuidance, CBGGuidance)):
    raise ValueError(f"guidance={guidance!r} must be None, CFGGuidance or CBGGuidance")
  is_cfg = isinstance(guidance, CFGGuidance)
  if is_cfg and denoise_fn is not None:
    raise ValueError("make_udlm_sampler: with CFGGuidance pass denoise_fn=None (the guidance "
                     "carries cond_denoise_fn)")
  if not is_cfg and denoise_fn is None:
    raise ValueError("make_udlm_sampler: denoise_fn is required without CFGGuidance")
  grid, dt = uniform_grid(num_steps, eps)
  alpha_t = udlm_alpha(grid[:-1], noise_eps)  # float64, before tracing
  alpha_s = udlm_alpha(grid[:-1] - dt, noise_eps)
  T, Lq = num_steps, seq_len
  rows_per_call = (1 if guidance.gamma in (0.0, 1.0) else 2) if is_cfg else 1
  nfe = T * rows_per_call
  need = {"model", "labels"} if is_cfg else ({"model", "classifier"} if guidance else None)

  def core(params, key, batch_size):
    B = batch_size
    if need is not None and (not isinstance(params, dict) or set(params) != need):
      got = sorted(params) if isinstance(params, dict) else type(params).__name__
      raise ValueError(f"make_udlm_sampler: params must be a dict with keys {sorted(need)}, "
                       f"got {got}")
    rows = jnp.broadcast_to(jnp.arange(B, dtype=jnp.int32)[:, None], (B, Lq))
    pos = jnp.broadcast_to(jnp.arange(Lq, dtype=jnp.int32), (B, Lq))

    def model_out(z, t_vec):
      if is_cfg:
        labels = jnp.broadcast_to(jnp.asarray(params["labels"], jnp.int32), (B,))
        return cfg_logits_pair(guidance.cond_denoise_fn, params["model"], z, t_vec, labels,
                               guidance.null_label, guidance.gamma)
      p = params["model"] if guidance is not None else params
      return denoise_fn(p, z, t_vec), None

    lc0, lu0 = jax.eval_shape(model_out, jnp.zeros((B, Lq), jnp.int32), jnp.ones((B,)))
    N = (lc0 if lc0 is not None else lu0).shape[-1]
    z1 = draws.gumbel_argmax(draws.position_keys(jax.random.fold_in(key, T), rows, pos),
                             jnp.zeros((B, Lq, N), jnp.float32))
    xs = {"t": jnp.asarray(grid[:-1], jnp.float32), "a_t": jnp.asarray(alpha_t, jnp.float32),
          "a_s": jnp.asarray(alpha_s, jnp.float32), "step": jnp.arange(T, dtype=jnp.int32)}

    def body(c, x):
      z, cls_nfe = c
      t_vec = jnp.full((B,), x["t"], jnp.float32)
      a_t, a_s = x["a_t"], x["a_s"]
      la, lb = model_out(z, t_vec)
      if is_cfg:
        logq = cfg_log_posterior(la, lb, z, a_t, a_s, guidance.gamma)
      else:
        logq = log_posterior(la, z, a_t, a_s)
      if isinstance(guidance, CBGGuidance):
        logq = logq + guidance.log_weight(params["classifier"], z, t_vec, N)
        cls_nfe = cls_nfe + guidance.classifier_calls_per_step(Lq, N)
      keys = draws.position_keys(jax.random.fold_in(key, x["step"]), rows, pos)
      return (draws.gumbel_argmax(keys, logq), cls_nfe), None

    (z, cls_nfe), _ = lax.scan(body, (z1, jnp.zeros((), jnp.int32)), xs)
    info = {"nfe": jnp.int32(nfe)}
    if isinstance(guidance, CBGGuidance):
      info["classifier_nfe"] = cls_nfe
    return z, info

  return UDLMSampler(core, num_steps, seq_len, grid, nfe, jit, alpha_t, alpha_s)
