"""Training objectives: the MDLM NELBO (SPEC §3.1), the discrete-time ReMDM NELBO (§3.2) and the
autoregressive cross-entropy baseline.

All losses take a network `apply_fn(z_t int32 [B, L], sigma float32 [B]) -> logits [B, L, V]`
(sigma = schedule.sigma(t) = -log alpha(t); a model without time conditioning zeroes it itself,
SPEC §1, §10.4), clean tokens `x` int32 [B, L] and return `(loss, aux)` with `loss` a float32
scalar (nats per token, the denominator counts ALL B*L tokens) and `aux` a dict of float32 scalars:

  nats, bits (= nats / ln 2), ppl_bound (= exp(nats)), mask_fraction, t_mean,
  masked_nll (unweighted mean -log x_theta[x] over masked tokens), and sigma_mean for "remdm".

Class labels (SPEC_DOMAINS §M.3, QM9): with `LossConfig.num_classes = C > 0` the batch is int32
[B, L + 1] with the label in the last column; the loss splits it, replaces each label by the null
class C with probability `cond_dropout` (key `fold_in(key, 2)`, training-time condition dropout
of D-CFG) and calls `apply_fn(z, sigma, labels=labels)`. Objective "classifier" trains the noisy
classifier of D-CBG on such batches: z_t from the same absorbing process and time sampling as
"mdlm", loss = cross-entropy of the class logits apply_fn(z_t, sigma) [B, C] (no dropout of labels).

Everything is traceable (no host sync); `cfg` is a hashable frozen dataclass, so it can be closed
over or passed as a static argument to `jax.jit`. Batch statistics (the antithetic time grid) are
over the batch the function sees: call it on the GLOBAL batch (a sharded array under jit) to get
low-discrepancy times over the global batch (SPEC §3.1 [LIB]).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from remdm_jax.diffusion.schedules import SCHEDULES, NoiseSchedule
from remdm_jax.diffusion.sigmas import remask_sigma, switch_sigma, unmask_rate
from remdm_jax.diffusion.subs import NEG_INF
from remdm_jax.diffusion.uniform import nelbo_integrand, udlm_alpha
from remdm_jax.types import ApplyFn

OBJECTIVES = ("mdlm", "remdm", "ar", "udlm", "classifier")
SIGMAS = ("none", "cap", "rescale", "fb", "switch")
SWITCH_BASES = ("cap", "rescale")
_LN2 = math.log(2.0)



@dataclasses.dataclass(frozen=True)
class LossConfig:
  """Configuration of the training objective.

  Attributes:
    objective: "mdlm" (continuous-time NELBO, SPEC §3.1), "remdm" (discrete-time ReMDM NELBO,
      §3.2 [LIB]), "ar" (next-token cross-entropy) or "udlm" (uniform-noise NELBO,
      SPEC_DOMAINS §M.7, `udlm_loss`: alpha_t = 1 - t always; `schedule`
      only gives the network's time input sigma(t)).
    schedule: `remdm_jax.diffusion.schedules.NoiseSchedule` name used to mask and weight.
    schedule_eps: the schedule's eps (alpha_1 = eps for loglinear / cosine).
    t_eps: eps_train, the smallest training time (mdlm): t = t_eps + (1 - t_eps) u.
    antithetic: low-discrepancy u_i = (i + U_i)/B over the batch (else u_i = U_i).
    num_train_steps_T: T_train, the number of discrete steps (objective "remdm" only).
    sigma: remasking schedule of the "remdm" objective: none | cap | rescale | fb | switch
      (conf and loop are sampling-time only and are rejected).
    eta: eta of cap (sigma = min(eta, sigma_max)) and rescale (sigma = eta * sigma_max).
    t_switch: switch uses the base sigma where t < t_switch and 0 elsewhere.
    switch_base: "cap" or "rescale".
    mask_id: the mask id m; required for "mdlm" / "remdm" / "classifier".
    num_classes: C; > 0 means labelled batches [B, L + 1] (module docstring); "classifier" needs
      C >= 2. Must equal the model's num_classes.
    cond_dropout: probability of replacing a label by the null class C in the conditional
      mdlm / remdm / ar / udlm losses (the reference: 0.1).
  """

  objective: str = "mdlm"
  schedule: str = "loglinear"
  schedule_eps: float = 1e-3
  t_eps: float = 1e-3
  antithetic: bool = True
  num_train_steps_T: int | None = None
  sigma: str = "none"
  eta: float = 0.0
  t_switch: float = 0.0
  switch_base: str = "cap"
  mask_id: int | None = None
  num_classes: int = 0
  cond_dropout: float = 0.0

  def __post_init__(self):
    def bad(field, why):
      raise ValueError(f"LossConfig.{field}={getattr(self, field)!r}: {why}")

    if self.objective not in OBJECTIVES:
      bad("objective", f"must be one of {OBJECTIVES}")
    if self.schedule not in SCHEDULES:
      bad("schedule", f"must be one of {SCHEDULES}")
    if not (isinstance(self.schedule_eps, (int, float)) and 0.0 <= self.schedule_eps < 1.0):
      bad("schedule_eps", "must lie in [0, 1)")
    if not (isinstance(self.t_eps, (int, float)) and 0.0 < self.t_eps < 1.0):
      bad("t_eps", "must lie in (0, 1) (the loss weight w(t) ~ 1/t diverges at t = 0)")
    if not isinstance(self.antithetic, bool):
      bad("antithetic", "must be a bool")
    if self.sigma in ("conf", "loop"):
      bad("sigma", "is a sampling-time strategy and has no training objective: conf depends on "
          "the sampling trajectory and loop reparameterises alpha at sampling time (SPEC §3.2)")
    if self.sigma not in SIGMAS:
      bad("sigma", f"must be one of {SIGMAS}")
    if self.objective != "remdm" and self.sigma != "none":
      bad("sigma", f"only objective='remdm' uses a remasking sigma (objective={self.objective!r})")
    if self.objective == "remdm":
      T = self.num_train_steps_T
      if isinstance(T, bool) or not isinstance(T, (int, np.integer)) or T < 1:
        bad("num_train_steps_T", "objective='remdm' needs an integer T_train >= 1")
    elif self.num_train_steps_T is not None:
      T = self.num_train_steps_T
      if isinstance(T, bool) or not isinstance(T, (int, np.integer)) or T < 1:
        bad("num_train_steps_T", "must be None or an integer >= 1")
    if not (isinstance(self.eta, (int, float)) and math.isfinite(self.eta) and self.eta >= 0):
      bad("eta", "must be a finite number >= 0")
    base = self.switch_base if self.sigma == "switch" else self.sigma
    if base == "rescale" and self.eta > 1.0:
      bad("eta", "rescale needs eta <= 1 (sigma = eta * sigma_max must not exceed sigma_max)")
    if self.switch_base in ("conf", "loop"):
      bad("switch_base", "conf/loop have no training objective (SPEC §3.2)")
    if self.switch_base not in SWITCH_BASES:
      bad("switch_base", f"must be one of {SWITCH_BASES}")
    if not (isinstance(self.t_switch, (int, float)) and 0.0 <= self.t_switch <= 1.0):
      bad("t_switch", "must lie in [0, 1]")
    nc = self.num_classes
    if isinstance(nc, bool) or not isinstance(nc, (int, np.integer)) or nc < 0:
      bad("num_classes", "must be an integer >= 0")
    if self.objective == "classifier" and nc < 2:
      bad("num_classes", "objective='classifier' needs num_classes >= 2")
    if not (isinstance(self.cond_dropout, (int, float)) and 0.0 <= self.cond_dropout < 1.0):
      bad("cond_dropout", "must lie in [0, 1)")
    if self.cond_dropout > 0 and (nc == 0 or self.objective == "classifier"):
      bad("cond_dropout", "needs a class-conditional objective (num_classes > 0, not 'classifier')")
    if self.objective in ("mdlm", "remdm", "classifier"):
      m = self.mask_id
      if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 0:
        bad("mask_id", f"objective={self.objective!r} needs an integer mask id >= 0")
    for field in ("mask_id", "num_train_steps_T", "num_classes"):  # normalise numpy ints to Python ints
      if getattr(self, field) is not None:
        object.__setattr__(self, field, int(getattr(self, field)))

  @property
  def noise_schedule(self) -> NoiseSchedule:
    return NoiseSchedule(name=self.schedule, eps=float(self.schedule_eps))


def sample_uniform(key: jax.Array, batch: int, antithetic: bool) -> jax.Array:
  """u [batch] float32 in [0, 1): (i + U_i)/n (stratified, one per stratum) or U_i."""
  u = jax.random.uniform(key, (batch,), dtype=jnp.float32)
  if antithetic:
    u = (jnp.arange(batch, dtype=jnp.float32) + u) / batch
  return jnp.minimum(u, jnp.float32(1.0 - 2.0**-24))  # (i + U)/n can round up to 1.0


def sample_times(key: jax.Array, batch: int, cfg: LossConfig) -> jax.Array:
  """t [batch] float32: t = t_eps + (1 - t_eps) u with u from `sample_uniform` (SPEC §3.1 step 1)."""
  u = sample_uniform(key, batch, cfg.antithetic)
  return cfg.t_eps + (1.0 - cfg.t_eps) * u


def remdm_sigma(alpha_t: jax.Array, alpha_s: jax.Array, t: jax.Array, cfg: LossConfig) -> jax.Array:
  """sigma_t of the ReMDM objective (SPEC §3.2 table, formulas of §4.4; `remdm_jax.diffusion.sigmas`, shared
  with the sampler).

  sigma_max = min(1, (1 - alpha_s)/alpha_t) (1 where alpha_t = 0); none: 0; cap: min(eta, sigma_max);
  rescale: eta * sigma_max; fb: (alpha_s - alpha_t)/alpha_t (1 where alpha_t = 0);
  switch: the base sigma where t < t_switch, else 0. At alpha_t = 0 cap/rescale give eta (the
  value is irrelevant there: the weight is T alpha_s either way).

  fb can exceed sigma_max (on the training grid: where alpha_s - alpha_t > 1 - alpha_s, e.g. the
  first step i = 1, where the weight is 2T); the loss uses the §3.2 formula as is, unclipped (the
  sampler clips its unmask probability instead, SPEC §4.4), so there it is not a valid bound.
  """
  if cfg.sigma == "switch":
    return switch_sigma(remask_sigma(cfg.switch_base, alpha_t, alpha_s, cfg.eta), t, cfg.t_switch)
  return remask_sigma(cfg.sigma, alpha_t, alpha_s, cfg.eta)


def _lse_and_target(logits: jax.Array, x: jax.Array, exclude_id: int | None):
  """(logsumexp over V [..], target logit [..]) in float32 (float64 for float64 logits); column
  `exclude_id` (if not None) is left out of the logsumexp (set to NEG_INF). No [.., V] output."""
  dtype = jnp.promote_types(logits.dtype, jnp.float32)
  lf = logits.astype(dtype)
  if exclude_id is not None:
    ids = jax.lax.broadcasted_iota(jnp.int32, lf.shape, lf.ndim - 1)
    lf_red = jnp.where(ids == exclude_id, jnp.asarray(NEG_INF, dtype), lf)
  else:
    lf_red = lf
  mx = jax.lax.stop_gradient(jnp.max(lf_red, axis=-1))
  lse = mx + jnp.log(jnp.sum(jnp.exp(lf_red - mx[..., None]), axis=-1))
  target = jnp.take_along_axis(lf, x[..., None].astype(jnp.int32), axis=-1,
                               mode="promise_in_bounds")[..., 0]
  return lse, target


def _softmax_minus_onehot(logits, lse, x, exclude_id, scale):
  """scale[..., None] * (softmax(logits without column exclude_id) - onehot(x)) in logits.dtype:
  the gradient of scale * (lse - logit_x), fused in one pass over [.., V]."""
  dtype = lse.dtype
  ids = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
  p = jnp.exp(logits.astype(dtype) - lse[..., None])
  if exclude_id is not None:
    p = jnp.where(ids == exclude_id, 0.0, p)
  onehot = (ids == x[..., None]).astype(dtype)
  return (scale[..., None] * (p - onehot)).astype(logits.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _subs_target_nll(logits, z_t, x, mask_id):
  return _subs_target_nll_fwd(logits, z_t, x, mask_id)[0]


def _subs_target_nll_fwd(logits, z_t, x, mask_id):
  lse, target = _lse_and_target(logits, x, mask_id)
  dtype = lse.dtype
  big = jnp.asarray(-NEG_INF, dtype)
  # -log x_theta[x] at masked positions: lse - logit_x (x = m: log 0 = NEG_INF, as in SUBS).
  nll_masked = jnp.where(x == mask_id, lse + big, lse - target)
  # carry-over at unmasked positions: 0 at z_t, -NEG_INF elsewhere.
  nll_carry = jnp.where(z_t == x, jnp.asarray(0.0, dtype), big)
  masked = z_t == mask_id
  return jnp.where(masked, nll_masked, nll_carry), (logits, lse, x, masked)


def _subs_target_nll_bwd(mask_id, res, g):
  logits, lse, x, masked = res
  # d/dlogits (lse - logit_x) = softmax_{v != m} - onehot(x) (onehot(m) is cut by the `where`);
  # the carry-over branch does not depend on the logits.
  x_eff = jnp.where(x == mask_id, -1, x)
  scale = jnp.where(masked, g.astype(lse.dtype), 0.0)
  grad = _softmax_minus_onehot(logits, lse, x_eff, mask_id, scale)
  return grad, None, None


_subs_target_nll.defvjp(_subs_target_nll_fwd, _subs_target_nll_bwd)


def subs_target_nll(logits: jax.Array, z_t: jax.Array, x: jax.Array, mask_id: int) -> jax.Array:
  """-log x_theta(z_t)[x] under SUBS without building [.., V] log-probs (SPEC §1, §3.1).

  Equals `-take_along_axis(subs_log_probs(logits, z_t, mask_id), x)` (within float rounding):
    masked (z_t = m):   logsumexp_{v != m} logits_v - logits_x      (-NEG_INF - ... if x = m)
    unmasked:           0 if z_t = x else -NEG_INF                   (carry-over)
  computed with one logsumexp reduction and one gather; the custom VJP returns the gradient
  g (softmax_{v != m} - onehot(x)) at masked positions and 0 elsewhere in one fused pass.

  Args:
    logits: [..., V] raw network outputs (any float dtype; computed in at least float32).
    z_t: [...] int tokens, `mask_id` where masked.
    x: [...] int targets in [0, V).
    mask_id: the mask id m in [0, V) (a static Python int).
  Returns:
    [...] float32 (float64 for float64 logits).
  """
  return _subs_target_nll(logits, z_t.astype(jnp.int32), x.astype(jnp.int32), int(mask_id))


@jax.custom_vjp
def _target_nll(logits, x):
  return _target_nll_fwd(logits, x)[0]


def _target_nll_fwd(logits, x):
  lse, target = _lse_and_target(logits, x, None)
  return lse - target, (logits, lse, x)


def _target_nll_bwd(res, g):
  logits, lse, x = res
  return _softmax_minus_onehot(logits, lse, x, None, g.astype(lse.dtype)), None


_target_nll.defvjp(_target_nll_fwd, _target_nll_bwd)


def target_nll(logits: jax.Array, x: jax.Array) -> jax.Array:
  """-log softmax(logits)[x] = logsumexp(logits) - logits[x]: [..., V], [...] -> [...] float32
  (float64 for float64 logits), without building [.., V] log-probs (the cross-entropy)."""
  return _target_nll(logits, x.astype(jnp.int32))


def _masked_nll(apply_fn: ApplyFn, x: jax.Array, z: jax.Array, sigma_in: jax.Array, mask_id: int):
  """(-log x_theta(z)[x]) [B, L] float32 under SUBS, and the mask indicator [B, L] float32."""
  logits = apply_fn(z, sigma_in)
  if logits.ndim != 3 or logits.shape[:2] != x.shape:
    raise ValueError(f"apply_fn returned logits of shape {logits.shape}; expected {x.shape + ('V',)}")
  if mask_id >= logits.shape[-1]:
    raise ValueError(f"LossConfig.mask_id={mask_id} is outside the model vocabulary "
                     f"V={logits.shape[-1]} (vocab mismatch between data and model)")
  nll = subs_target_nll(logits, z, x, mask_id).astype(jnp.float32)
  masked = (z == mask_id).astype(jnp.float32)
  return nll * masked, masked


def _check_tokens(x: jax.Array):
  if x.ndim != 2:
    raise ValueError(f"tokens x must be int [B, L], got shape {x.shape}")
  if not jnp.issubdtype(x.dtype, jnp.integer):
    raise ValueError(f"tokens x must be an integer array, got dtype {x.dtype}")


def _report(nats: jax.Array, **extra) -> dict[str, jax.Array]:
  aux = {"nats": nats, "bits": nats / _LN2, "ppl_bound": jnp.exp(nats)}
  aux.update({k: jnp.asarray(v, jnp.float32) for k, v in extra.items()})
  return aux


def split_labels(batch: jax.Array, key: jax.Array | None, cfg: LossConfig):
  """(tokens int32 [B, L], {"labels": int32 [B]} or {}) from a batch (module docstring).

  num_classes = 0: the batch is the tokens, no labels. Otherwise the last column holds labels in
  [0, C); with cond_dropout > 0 each label becomes the null class C with that probability,
  drawn with `jax.random.fold_in(key, 2)` (condition dropout, SPEC_DOMAINS §M.3)."""
  batch = batch.astype(jnp.int32)
  if cfg.num_classes == 0:
    return batch, {}
  if batch.shape[1] < 2:
    raise ValueError(f"labelled batch must be [B, L + 1], got shape {batch.shape}")
  x, labels = batch[:, :-1], batch[:, -1]
  if cfg.cond_dropout > 0:
    if key is None:
      raise ValueError("cond_dropout > 0 needs a PRNG key")
    drop = jax.random.uniform(jax.random.fold_in(key, 2), labels.shape) < cfg.cond_dropout
    labels = jnp.where(drop, jnp.int32(cfg.num_classes), labels)
  return x, {"labels": labels}


def diffusion_loss(apply_fn: ApplyFn, x: jax.Array, key: jax.Array, cfg: LossConfig,
                   times: jax.Array | None = None):
  """Masked-diffusion NELBO estimate (nats/token) for objective "mdlm" or "remdm".

  mdlm (SPEC §3.1): t_b from `sample_times`; z_t^l = m with prob. 1 - alpha(t_b) independently
  for every token (BOS/EOS included);
    loss = (1/(B L)) sum_b sum_l w(t_b) 1[z_t^l = m] (-log x_theta^l(z_t)[x^l]),
  w(t) = -alpha'(t)/(1 - alpha(t)) (= 1/t for loglinear).

  remdm (SPEC §3.2): i_b = floor(u_b T) + 1 in {1..T} (u stratified when antithetic),
  t = i/T, s = (i-1)/T, alpha_t = alpha(t), alpha_s = alpha(s), mask w.p. 1 - alpha_t;
    loss = (1/(B L)) sum_b T (alpha_s - (1 - sigma_t) alpha_t)/(1 - alpha_t) sum_l 1[masked] (-log p).
  With sigma = "none" this is exactly the discrete-time MDLM diffusion term.

  Args:
    apply_fn: (z_t int32 [B, L], sigma float32 [B]) -> logits [B, L, V].
    x: int [B, L] clean tokens (must not contain mask_id); [B, L + 1] with labels in the last
      column when cfg.num_classes > 0.
    key: PRNG key, split as (key_times, key_mask) = jax.random.split(key).
    cfg: LossConfig with objective "mdlm" or "remdm".
    times: optional fixed times instead of random ones (tests, NELBO-vs-t curves): float t [B] in
      (0, 1] for "mdlm", integer step indices i [B] in {1..T_train} for "remdm".
  Returns:
    (loss float32 scalar, aux dict of float32 scalars).
  """
  if cfg.objective not in ("mdlm", "remdm"):
    raise ValueError(f"diffusion_loss: LossConfig.objective={cfg.objective!r} is not a diffusion "
                     "objective; use ar_loss or loss_fn(cfg)")
  _check_tokens(x)
  x, label_kw = split_labels(x, key, cfg)
  if label_kw:
    apply_fn = functools.partial(apply_fn, **label_kw)
  batch, length = x.shape
  sched = cfg.noise_schedule
  key_t, key_mask = jax.random.split(key)
  if times is not None and jnp.shape(times) != (batch,):
    raise ValueError(f"diffusion_loss: times must have shape ({batch},), got {jnp.shape(times)}")

  if cfg.objective == "mdlm":
    t = sample_times(key_t, batch, cfg) if times is None else jnp.asarray(times, jnp.float32)
    alpha_t = sched.alpha(t)
    weight = sched.loss_weight(t)
    extra = {}
  else:
    T = cfg.num_train_steps_T
    if times is None:
      u = sample_uniform(key_t, batch, cfg.antithetic)
      i = jnp.clip(jnp.floor(u * T).astype(jnp.int32) + 1, 1, T)
    else:
      i = jnp.asarray(times, jnp.int32)
    t = i.astype(jnp.float32) / T
    s = (i - 1).astype(jnp.float32) / T
    alpha_t, alpha_s = sched.alpha(t), sched.alpha(s)
    sig = remdm_sigma(alpha_t, alpha_s, t, cfg)
    weight = T * unmask_rate(alpha_t, alpha_s, sig, clip=False)  # SPEC §3.2: T u, unclipped
    extra = {"sigma_mean": jnp.mean(sig)}

  move = jax.random.uniform(key_mask, (batch, length), dtype=jnp.float32) < (1.0 - alpha_t)[:, None]
  z = jnp.where(move, jnp.int32(cfg.mask_id), x)
  nll, masked = _masked_nll(apply_fn, x, z, sched.sigma(t).astype(jnp.float32), cfg.mask_id)
  loss = jnp.sum(weight[:, None] * nll) / (batch * length)
  n_masked = jnp.sum(masked)
  masked_nll = jnp.sum(nll) / jnp.maximum(n_masked, 1.0)
  return loss, _report(loss, mask_fraction=n_masked / (batch * length), t_mean=jnp.mean(t),
                       masked_nll=masked_nll, **extra)


def ar_loss(apply_fn: ApplyFn, x: jax.Array, cfg: LossConfig | None = None,
            key: jax.Array | None = None):
  """Next-token cross-entropy: (1/(B (L-1))) sum_b sum_{l<L-1} -log softmax(f(x)_l)[x_{l+1}].

  `apply_fn(x, zeros[B])` must be a causal model (position l sees x_{<=l}). `cfg` is only used for
  class labels (cfg.num_classes > 0: labelled batch [B, L + 1], condition dropout with `key`, the
  class-conditional AR baseline of SPEC_DOMAINS §M). Returns (loss, aux) with nats/bits/ppl_bound.
  """
  _check_tokens(x)
  if cfg is not None and cfg.num_classes > 0:
    x, label_kw = split_labels(x, key, cfg)
    apply_fn = functools.partial(apply_fn, **label_kw)
  x = x.astype(jnp.int32)
  batch, length = x.shape
  if length < 2:
    raise ValueError(f"ar_loss needs sequences of length >= 2, got L={length}")
  logits = apply_fn(x, jnp.zeros((batch,), jnp.float32))
  if logits.ndim != 3 or logits.shape[:2] != x.shape:
    raise ValueError(f"apply_fn returned logits of shape {logits.shape}; expected {x.shape + ('V',)}")
  nll = target_nll(logits[:, :-1], x[:, 1:]).astype(jnp.float32)
  loss = jnp.mean(nll)
  return loss, _report(loss)


def classifier_loss(apply_fn: ApplyFn, batch: jax.Array, key: jax.Array, cfg: LossConfig,
                    times: jax.Array | None = None):
  """Noisy-classifier cross-entropy for D-CBG (SPEC_DOMAINS §M.3).

  t_b from `sample_times` (as "mdlm"); z_t^l = m with probability 1 - alpha(t_b) (the same
  absorbing process and schedule, keys split as in `diffusion_loss`);
    loss = (1/B) sum_b -log softmax(apply_fn(z_t, sigma(t)))_b[y_b].

  Args:
    apply_fn: (z_t int32 [B, L], sigma float32 [B]) -> class logits [B, C].
    batch: int [B, L + 1], labels in [0, C) in the last column.
    key: PRNG key. cfg: LossConfig with objective "classifier". times: optional fixed t [B].
  Returns:
    (loss float32 scalar (nats per example), aux: nats, bits, ppl_bound, accuracy, mask_fraction,
    t_mean).
  """
  if cfg.objective != "classifier":
    raise ValueError(f"classifier_loss: LossConfig.objective={cfg.objective!r} is not 'classifier'")
  _check_tokens(batch)
  x, label_kw = split_labels(batch, None, cfg)
  labels = label_kw["labels"]
  bsz, length = x.shape
  sched = cfg.noise_schedule
  key_t, key_mask = jax.random.split(key)
  t = sample_times(key_t, bsz, cfg) if times is None else jnp.asarray(times, jnp.float32)
  alpha_t = sched.alpha(t)
  move = jax.random.uniform(key_mask, (bsz, length), dtype=jnp.float32) < (1.0 - alpha_t)[:, None]
  z = jnp.where(move, jnp.int32(cfg.mask_id), x)
  logits = apply_fn(z, sched.sigma(t).astype(jnp.float32))
  if logits.shape != (bsz, cfg.num_classes):
    raise ValueError(f"apply_fn returned class logits of shape {logits.shape}; expected "
                     f"({bsz}, {cfg.num_classes}) (model.head='classifier')")
  nll = target_nll(logits, labels).astype(jnp.float32)
  loss = jnp.mean(nll)
  acc = jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32))
  return loss, _report(loss, accuracy=acc, mask_fraction=jnp.mean(move.astype(jnp.float32)),
                       t_mean=jnp.mean(t))


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


def udlm_labelled_loss(apply_fn: ApplyFn, x: jax.Array, key: jax.Array, cfg: LossConfig):
  """The "udlm" objective (`udlm_loss`) with class labels handled like the
  other objectives: with cfg.num_classes > 0 the batch is [B, L + 1], `split_labels` takes the
  last column (condition dropout to the null class with `fold_in(key, 2)`) and the model is called
  with `labels=` (the class-conditional UDLM of the QM9 D-CFG baseline, SPEC_DOMAINS §M.3/§M.7).
  Returns (loss float32 scalar, aux) as `udlm_loss`."""
  _check_tokens(x)
  x, label_kw = split_labels(x, key, cfg)
  if label_kw:
    apply_fn = functools.partial(apply_fn, **label_kw)
  return udlm_loss(apply_fn, x, key, t_eps=cfg.t_eps, antithetic=cfg.antithetic,
                   sigma_fn=cfg.noise_schedule.sigma)


def loss_fn(cfg: LossConfig) -> Callable[[ApplyFn, jax.Array, jax.Array], tuple[jax.Array, Any]]:
  """The objective as `(apply_fn, x, key) -> (loss, aux)` for a uniform trainer (key unused by an
  unconditional ar)."""
  if cfg.objective == "ar":
    return lambda apply_fn, x, key: ar_loss(apply_fn, x, cfg, key)
  if cfg.objective == "classifier":
    return lambda apply_fn, x, key: classifier_loss(apply_fn, x, key, cfg)
  if cfg.objective == "udlm":
    return lambda apply_fn, x, key: udlm_labelled_loss(apply_fn, x, key, cfg)
  return lambda apply_fn, x, key: diffusion_loss(apply_fn, x, key, cfg)
