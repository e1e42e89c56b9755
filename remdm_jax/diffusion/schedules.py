"""Noise schedules alpha(t) for masked diffusion (SPEC §2).

Forward process: q(z_t | x) = alpha_t onehot(x) + (1 - alpha_t) onehot(m), time t in [0, 1], alpha
decreasing from alpha_0 = 1. Every function here is array-library agnostic: numpy in gives numpy out
(the samplers build their per-step arrays in float64 numpy before tracing), jax in gives jax out
(the training losses).

| name        | alpha(t)                         | w(t) = -alpha'(t) / (1 - alpha(t))       |
|-------------|----------------------------------|------------------------------------------|
| `loglinear` | 1 - (1 - eps) t                  | exactly 1 / t                            |
| `linear`    | 1 - t                            | 1 / t                                    |
| `cosine`    | eps + (1 - eps) cos(pi t / 2)    | (1 - eps)(pi/2) sin(pi t / 2) / (1 - a)  |
| `poly`      | 1 - t^k                          | k / t                                    |

`loglinear` (eps = 1e-3) is the schedule the public MDLM OWT checkpoint was trained with; its
network time input (when time conditioning is on) is sigma(t) = -log alpha(t). The samplers use
`linear` (alpha_t = 1 - t) on their grid, as the reference code does (SPEC §4.2, §10.4).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import numpy as np

SCHEDULES = ("loglinear", "linear", "cosine", "poly")


def _xp(t: Any):
  """numpy for numpy/python inputs, jax.numpy otherwise."""
  return np if isinstance(t, (np.ndarray, np.generic, float, int)) else jnp


@dataclasses.dataclass(frozen=True)
class NoiseSchedule:
  """alpha(t) and the quantities derived from it.

  Attributes:
    name: one of `SCHEDULES`.
    eps: the floor of `loglinear` / `cosine` (alpha_1 = eps); ignored by `linear` and `poly`.
    power: the exponent k of `poly`.
  """

  name: str = "loglinear"
  eps: float = 1e-3
  power: float = 2.0

  def __post_init__(self):
    if self.name not in SCHEDULES:
      raise ValueError(f"NoiseSchedule.name={self.name!r} is not one of {SCHEDULES}")
    if not 0.0 <= self.eps < 1.0:
      raise ValueError(f"NoiseSchedule.eps={self.eps!r} must lie in [0, 1)")
    if self.power <= 0:
      raise ValueError(f"NoiseSchedule.power={self.power!r} must be > 0")

  def alpha(self, t):
    """alpha(t): probability that a token is still clean at time t. Same shape as t."""
    xp = _xp(t)
    if self.name == "loglinear":
      return 1.0 - (1.0 - self.eps) * t
    if self.name == "linear":
      return 1.0 - t
    if self.name == "cosine":
      return self.eps + (1.0 - self.eps) * xp.cos(0.5 * np.pi * t)
    return 1.0 - t**self.power  # poly

  def dalpha(self, t):
    """d alpha / dt (non-positive)."""
    xp = _xp(t)
    if self.name == "loglinear":
      return -(1.0 - self.eps) * xp.ones_like(t)
    if self.name == "linear":
      return -xp.ones_like(t)
    if self.name == "cosine":
      return -(1.0 - self.eps) * 0.5 * np.pi * xp.sin(0.5 * np.pi * t)
    return -self.power * t ** (self.power - 1.0)

  def loss_weight(self, t):
    """w(t) = -alpha'(t) / (1 - alpha(t)), the continuous-time NELBO weight (SPEC §2, §3.1).

    Closed forms are used where they exist so that loglinear gives exactly 1/t.
    """
    if self.name in ("loglinear", "linear"):
      return 1.0 / t
    if self.name == "poly":
      return self.power / t
    return -self.dalpha(t) / (1.0 - self.alpha(t))

  def sigma(self, t):
    """sigma(t) = -log alpha(t): the network's time input when time conditioning is on."""
    xp = _xp(t)
    return -xp.log(self.alpha(t))


def get_schedule(name: str = "loglinear", **kwargs) -> NoiseSchedule:
  """Builds a `NoiseSchedule` by name, e.g. `get_schedule("cosine", eps=1e-3)`."""
  return NoiseSchedule(name=name, **kwargs)
