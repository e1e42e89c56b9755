"""UDLM: uniform-noise discrete diffusion (Schiff et al. 2025; SPEC_DOMAINS §M.7), the QM9
baseline: forward process, posterior, continuous-time NELBO and the guided posterior sampler.

Vocabulary of N tokens (all ids of the model output, no special role for a mask id), limiting
distribution pi = 1/N, alpha_t = 1 - t (the reference's hard-coded log-linear schedule):
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

Sampling (`make_udlm_sampler`): z_1 ~ pi, then on the grid t_i = 1 - i (1 - eps)/T (reused from
`sampling.schedule.uniform_grid`) each step draws every position from q(z_s | z_t, x_theta(z_t))
with the 32-bit-integer Gumbel-max of `sampling.draws` (per-position keys, independent of batch
size). Guidance: D-CFG mixes the two log posteriors, log_softmax(gamma log q_c + (1 - gamma)
log q_u) (`cfg_log_posterior`, §M.4 D-CFG item 6); D-CBG adds gamma * C over all N values at every
position (`guidance.CBGGuidance`, the same classifier term as the masked sampler).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from remdm_jax.sampling import draws
from remdm_jax.sampling.guidance import CBGGuidance, _check_gamma, cfg_logits_pair, cfg_mix
from remdm_jax.sampling.schedule import uniform_grid
from remdm_jax.schedules import NoiseSchedule
from remdm_jax.subs import NEG_INF

ApplyFn = Callable[[jax.Array, jax.Array], jax.Array]
DenoiseFn = Callable[[Any, jax.Array, jax.Array], jax.Array]


def udlm_alpha(t):
  """alpha_t = 1 - t (§M.7)."""
  return 1.0 - t


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


def udlm_loss(apply_fn: ApplyFn, x: jax.Array, key: jax.Array, *, t_eps: float = 1e-3,
              antithetic: bool = True, reconstruction: bool = True,
              times: Optional[jax.Array] = None, sigma_fn: Optional[Callable] = None):
  """UDLM NELBO estimate (nats/token), the training objective "udlm" (`losses.loss_fn`).

  t_b = t_eps + (1 - 2 t_eps) u_b (u stratified when antithetic; t <= 1 - t_eps keeps the
  1 / alpha_t factor finite in float32 - the integrand vanishes like alpha_t there);
  z_t^l = x^l w.p. alpha_t, else uniform over the N ids (which may again be x^l);
    loss = (1/(B L)) sum_{b,l} nelbo_integrand(softmax(apply_fn(z_t, sigma_t)), x, z_t, alpha_t)
           [+ (1/(B L)) sum -log softmax(apply_fn(x, 0))[x]  (reconstruction at t = 0)].
  The network's time input is sigma_fn(t), by default the log-linear schedule's
  sigma(t) = -log(1 - (1 - 1e-3) t) as in the reference (whose loss nevertheless uses
  alpha_t = 1 - t; a model without time conditioning ignores it); sigma_fn(0) = 0 at the
  reconstruction. The reconstruction term costs a second forward pass (reconstruction=False
  skips it). The reference samples t in [t_eps, 1]; the clip to 1 - t_eps is ours.

  Args: apply_fn (z int32 [B, L], sigma float32 [B]) -> logits [B, L, N]; x int [B, L] in [0, N);
    key: split as (times, noise, token); times: optional fixed t [B].
  Returns: (loss float32 scalar, aux: nats, bits, ppl_bound, t_mean, diffusion, reconstruction).
  """
  from remdm_jax.losses import _check_tokens, _report, sample_uniform
  _check_tokens(x)
  B, L = x.shape
  k_t, k_keep, k_tok = jax.random.split(key, 3)
  if times is None:
    t = t_eps + (1.0 - 2.0 * t_eps) * sample_uniform(k_t, B, antithetic)
  else:
    if jnp.shape(times) != (B,):
      raise ValueError(f"udlm_loss: times must have shape ({B},), got {jnp.shape(times)}")
    t = jnp.asarray(times, jnp.float32)
  a = udlm_alpha(t)
  keep = jax.random.uniform(k_keep, (B, L)) < a[:, None]
  N = jax.eval_shape(apply_fn, x, t).shape[-1]  # the model's vocabulary (no compute)
  if not isinstance(x, jax.core.Tracer) and int(np.max(np.asarray(x))) >= N:
    raise ValueError(f"udlm_loss: token id {int(np.max(np.asarray(x)))} >= model vocabulary "
                     f"N={N}")
  x = x.astype(jnp.int32)
  z = jnp.where(keep, x, jax.random.randint(k_tok, (B, L), 0, N, jnp.int32))
  if sigma_fn is None:
    sigma_fn = NoiseSchedule("loglinear", 1e-3).sigma
  logits = apply_fn(z, jnp.asarray(sigma_fn(t), jnp.float32))
  diff = nelbo_integrand(jax.nn.softmax(logits.astype(jnp.float32), -1), x, z, a[:, None])
  diff = jnp.sum(diff) / (B * L)
  rec = jnp.zeros((), jnp.float32)
  if reconstruction:
    lg0 = apply_fn(x, jnp.asarray(sigma_fn(jnp.zeros((B,), jnp.float32)), jnp.float32))
    lg0 = lg0.astype(jnp.float32)
    rec = -jnp.sum(jnp.take_along_axis(jax.nn.log_softmax(lg0, -1), x[..., None], -1)) / (B * L)
  loss = diff + rec
  return loss, _report(loss, t_mean=jnp.mean(t), diffusion=diff, reconstruction=rec)


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
  Attributes: num_steps, seq_len, t (grid [T + 1]), nfe, core (un-jitted)."""

  def __init__(self, core, num_steps, seq_len, grid, nfe, jit):
    self.core, self.num_steps, self.seq_len, self.t, self.nfe = core, num_steps, seq_len, grid, nfe
    self._fn = jax.jit(core, static_argnames=("batch_size",)) if jit else core

  def sample_with_info(self, params, key, batch_size: int):
    bad = isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer))
    if bad or batch_size < 1:
      raise ValueError(f"batch_size={batch_size!r} must be an int >= 1")
    return self._fn(params, key, batch_size=int(batch_size))

  def __call__(self, params, key, batch_size: int):
    return self.sample_with_info(params, key, batch_size)[0]


def make_udlm_sampler(denoise_fn: Optional[DenoiseFn], *, num_steps: int, seq_len: int,
                      eps: float = 1e-5,
                      guidance: Union[None, CFGGuidance, CBGGuidance] = None,
                      jit: bool = True) -> UDLMSampler:
  """The UDLM ancestral sampler (§M.7) as one `lax.scan` over T steps.

  Args:
    denoise_fn: (params, tokens int32 [B, L], t float32 [B]) -> logits [B, L, N] (x_theta =
      softmax); None with CFGGuidance (which carries the conditional denoiser).
    num_steps: T. seq_len: L. eps: the grid end (t_T = eps, SPEC §4.2 grid).
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
  if guidance is not None and not isinstance(guidance, (CFGGuidance, CBGGuidance)):
    raise ValueError(f"guidance={guidance!r} must be None, CFGGuidance or CBGGuidance")
  is_cfg = isinstance(guidance, CFGGuidance)
  if is_cfg and denoise_fn is not None:
    raise ValueError("make_udlm_sampler: with CFGGuidance pass denoise_fn=None (the guidance "
                     "carries cond_denoise_fn)")
  if not is_cfg and denoise_fn is None:
    raise ValueError("make_udlm_sampler: denoise_fn is required without CFGGuidance")
  grid, dt = uniform_grid(num_steps, eps)
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
    xs = {"t": jnp.asarray(grid[:-1], jnp.float32), "s": jnp.asarray(grid[:-1] - dt, jnp.float32),
          "step": jnp.arange(T, dtype=jnp.int32)}

    def body(c, x):
      z, cls_nfe = c
      t_vec = jnp.full((B,), x["t"], jnp.float32)
      a_t, a_s = udlm_alpha(x["t"]), udlm_alpha(x["s"])
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

  return UDLMSampler(core, num_steps, seq_len, grid, nfe, jit)
