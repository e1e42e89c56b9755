"""The remasking sigma strategies of ReMDM and the unmask rate u: the one home of these formulas
(SPEC §4.1, §4.4; the training objective of §3.2 uses the same table).

Used by the sampler's schedule builder (`remdm_jax.sampling.schedule`, float64 numpy before tracing)
and by the ReMDM training objective (`remdm_jax.diffusion.losses.remdm_sigma`, jax arrays under jit). Every
function is array-library agnostic: numpy / Python scalars in give numpy out, jax arrays in give
jax out (the module never converts between them). Scalars `eta`, `t_switch` are Python floats.

| kind      | sigma when alpha_t > 0           | sigma at alpha_t = 0 |
|-----------|----------------------------------|----------------------|
| `none`    | 0                                | 0                    |
| `max`     | sigma_max = min(1, (1 - alpha_s) / alpha_t) | 1         |
| `cap`     | min(eta, sigma_max)              | eta                  |
| `rescale` | eta sigma_max                    | eta                  |
| `fb`      | (alpha_s - alpha_t) / alpha_t    | 1                    |
`switch` (SPEC §4.4 [PAPER]) applies a base kind where t < t_switch and 0 elsewhere.
"""
from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

KINDS = ("none", "max", "cap", "rescale", "fb")


def _xp(*xs: Any):
  """numpy when every input is numpy / a Python number, jax.numpy otherwise."""
  if all(isinstance(x, (np.ndarray, np.generic, float, int)) for x in xs):
    return np
  return jnp


def sigma_max(alpha_t, alpha_s):
  """min(1, (1 - alpha_s) / alpha_t), and 1 where alpha_t = 0 (SPEC §4.1). Same shape as the
  (broadcast) inputs; float64 for numpy inputs."""
  xp = _xp(alpha_t, alpha_s)
  if xp is np:
    alpha_t = np.asarray(alpha_t, np.float64)
    alpha_s = np.asarray(alpha_s, np.float64)
  pos = alpha_t > 0
  safe = xp.where(pos, alpha_t, 1.0)
  return xp.where(pos, xp.minimum(1.0, (1.0 - alpha_s) / safe), 1.0)


def remask_sigma(kind: str, alpha_t, alpha_s, eta: float = 0.0):
  """sigma of a step for `kind` in `KINDS` (table in the module docstring).

  Args:
    kind: "none" | "max" | "cap" | "rescale" | "fb".
    alpha_t, alpha_s: alpha at the step's start t and end s < t (arrays or scalars).
    eta: the ReMDM eta of cap / rescale (ignored otherwise).
  Raises:
    ValueError for an unknown kind.
  """
  if kind not in KINDS:
    raise ValueError(f"sigma kind={kind!r} must be one of {KINDS}")
  xp = _xp(alpha_t, alpha_s)
  if xp is np:
    alpha_t = np.asarray(alpha_t, np.float64)
    alpha_s = np.asarray(alpha_s, np.float64)
  pos = alpha_t > 0
  if kind == "none":
    return xp.zeros_like(alpha_t * alpha_s)
  if kind == "fb":
    safe = xp.where(pos, alpha_t, 1.0)
    return xp.where(pos, (alpha_s - alpha_t) / safe, 1.0)
  smax = sigma_max(alpha_t, alpha_s)
  if kind == "max":
    return smax
  if kind == "cap":
    return xp.where(pos, xp.minimum(eta, smax), eta)
  return xp.where(pos, eta * smax, eta)  # rescale


def switch_sigma(base, t, t_switch: float):
  """remdm_switch: the base sigma where t < t_switch, else 0 (SPEC §4.4 [PAPER])."""
  xp = _xp(base, t)
  return xp.where(t < t_switch, base, 0.0)


def unmask_rate(alpha_t, alpha_s, sigma, clip: bool = True):
  """u = (alpha_s - (1 - sigma) alpha_t) / (1 - alpha_t), the probability that a masked position
  unmasks (SPEC §4.1), 0 where alpha_t = 1. clip=True clips to [0, 1] (the sampler: FB's last step
  and the loop's phase-1 overshoot, where the reference's stay-masked weight is negative and its
  race therefore always unmasks, SPEC §4.4); clip=False is the §3.2 loss weight / T as is."""
  xp = _xp(alpha_t, alpha_s, sigma)
  denom = 1.0 - alpha_t
  pos = denom > 0
  u = xp.where(pos, (alpha_s - (1.0 - sigma) * alpha_t) / xp.where(pos, denom, 1.0), 0.0)
  return xp.clip(u, 0.0, 1.0) if clip else u
