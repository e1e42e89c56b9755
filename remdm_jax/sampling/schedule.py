"""Per-step schedule arrays of every strategy (SPEC §4.2, §4.4, §4.7).

All strategies compile to the same arrays, built in float64 numpy before tracing:
  t, s          [n] times of step i (t -> s < t); the denoiser is called at t.
  alpha_t, alpha_s  [n] the step's alphas.
  sigma         [n] remask probability of decoded tokens (for conf steps: the base sigma that the
                per-token confidence weights multiply, e.g. sigma_max).
  conf          [n] 1.0 where sigma is per token (sigma^l = w_l * sigma, masked positions use 0).
  p_unmask      [n] u = clip((alpha_s - (1 - sigma_m) alpha_t) / (1 - alpha_t), 0, 1), the unmask
                probability of a masked position, with sigma_m = sigma * (1 - conf) (SPEC §4.1).
The sampler feeds them (as float32, or float64 in float64 mode) as the `xs` of one `lax.scan`.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from remdm_jax.sampling.config import SamplerConfig
from remdm_jax.diffusion.schedules import NoiseSchedule
from remdm_jax.diffusion.sigmas import remask_sigma, switch_sigma, unmask_rate
from remdm_jax.diffusion.sigmas import sigma_max  # noqa: F401  (re-exported, formerly defined here)

_TOL = 1e-12  # float64 slack of the validity checks (equality cases, e.g. rescale with eta = 1)


@dataclasses.dataclass(frozen=True)
class StepSchedule:
  """The per-step arrays (float64 numpy, length n_steps) and the final-step time."""

  strategy: str
  t: np.ndarray
  s: np.ndarray
  alpha_t: np.ndarray
  alpha_s: np.ndarray
  sigma: np.ndarray
  conf: np.ndarray
  p_unmask: np.ndarray
  min_t: float
  phases: Optional[tuple] = None  # loop: (n1, n2, n3)

  @property
  def n_steps(self) -> int:
    return int(self.t.shape[0])

  @property
  def nfe(self) -> int:
    """Static denoiser calls: one per step plus the final step (SPEC §4.5)."""
    return self.n_steps + 1

  def xs(self, dtype=np.float32) -> dict:
    """The scan inputs, cast to `dtype` (float32 by default)."""
    return {k: np.asarray(getattr(self, k), dtype) for k in ("t", "sigma", "conf", "p_unmask")}


def uniform_grid(num_steps: int, eps: float = 1e-5):
  """t_i = 1 - i dt, dt = (1 - eps) / T, i = 0..T (float64, SPEC §4.2)."""
  dt = (1.0 - eps) / num_steps
  return 1.0 - np.arange(num_steps + 1, dtype=np.float64) * dt, dt


def dfm_grid(num_steps: int, eps: float = 1e-5):
  """DFM's own float64 time grid (SPEC §4.4): t_0 = 1; h = 1/T at t = 1, otherwise
  h = min(1/T, 1/(a/t + b/(1-t))) with a = 10 t^1/4 (1-t)^1/4 + 1, b = a - 1; continues while
  t > (1 - eps)/T. Returns (t [n], s [n], b(t) [n], min_t)."""
  ts, ss, bs = [], [], []
  t = 1.0
  stop = (1.0 - eps) / num_steps
  while t > stop:
    a = 10.0 * t**0.25 * (1.0 - t)**0.25 + 1.0
    b = a - 1.0
    h = 1.0 / num_steps if t == 1.0 else min(1.0 / num_steps, 1.0 / (a / t + b / (1.0 - t)))
    ts.append(t), ss.append(t - h), bs.append(b)
    t = t - h
  return np.array(ts), np.array(ss), np.array(bs), float(t)


def loop_phase_counts(cfg: SamplerConfig, t: np.ndarray):
  """(phase 1, phase 2, phase 3) masks of the loop on grid times t (SPEC §4.4)."""
  p1 = t > cfg.t_on
  p3 = t <= cfg.t_off
  return p1, ~p1 & ~p3, p3


def step_schedule(cfg: SamplerConfig, grid: Optional[np.ndarray] = None) -> StepSchedule:
  """Builds and validates the per-step arrays of `cfg` (float64).

  Args:
    cfg: the sampler config.
    grid: optional externally given time grid t_0..t_T (e.g. the reference's float32
      `torch.linspace(1, eps, T + 1)`), for replay. Step i then runs from t_i to
      s_i = t_i - (1 - eps)/T computed in float64 from the given values, min_t = grid[T].
      Not for DFM, which builds its own grid.

  Raises:
    ValueError naming the strategy, the step and the value when a step is invalid, i.e. not
    (1 - sigma) alpha_t <= alpha_s and sigma alpha_t <= 1 - alpha_s (SPEC §4.1); FB may violate
    it on its last step only, and `remdm_loop` on its last phase-1 step when that step overshoots
    to alpha_s > 1 (small T, e.g. T = 1, 3, 5, 7 at the script settings); u is clipped to 1
    there (every masked position unmasks, which is what the reference's race does with the negative
    stay weight, SPEC §4.4). So every num_steps >= 1 runs, as the reference does.
  """
  T = cfg.num_steps
  phases = None
  if cfg.strategy == "dfm":
    if grid is not None:
      raise ValueError("step_schedule(grid=...) is not supported for strategy='dfm' (own grid)")
    t, s, b, min_t = dfm_grid(T, cfg.eps)
    alpha_t, alpha_s = 1.0 - t, 1.0 - s
    sigma = np.where(alpha_t > 0, b * remask_sigma("fb", alpha_t, alpha_s), 0.0)
    conf = np.zeros_like(t)
  else:
    if grid is None:
      full, dt = uniform_grid(T, cfg.eps)
    else:
      full = np.asarray(grid).astype(np.float64)
      if full.shape != (T + 1,):
        raise ValueError(f"grid shape {full.shape} must be (num_steps + 1,) = ({T + 1},)")
      dt = (1.0 - cfg.eps) / T
    t, min_t = full[:-1], float(full[-1])
    s = t - dt
    if cfg.strategy == "remdm_loop":
      p1, p2, p3 = loop_phase_counts(cfg, t)
      phases = (int(p1.sum()), int(p2.sum()), int(p3.sum()))
      a_on = cfg.alpha_on

      def alpha(x, ph1, ph3):
        return np.where(ph1, (1.0 - x) * a_on / (1.0 - cfg.t_on),
                        np.where(ph3, 1.0 - x * (1.0 - a_on) / cfg.t_off, a_on))

      alpha_t = alpha(t, p1, p3)
      alpha_s = alpha(s, p1, p3)
      ls = cfg.loop_sigma  # "conf" is rejected by SamplerConfig (it would never unmask here)
      sig2 = cfg.eta if ls == "const" else float(remask_sigma(ls, a_on, a_on, cfg.eta))
      sigma = np.where(p2, sig2, 0.0)
      conf = np.zeros_like(t)
    else:
      sched = NoiseSchedule(cfg.alpha_schedule)
      alpha_t, alpha_s = sched.alpha(t), sched.alpha(s)
      st = cfg.strategy
      if st == "mdlm":
        sigma, conf = np.zeros_like(t), np.zeros_like(t)
      elif st in ("remdm_cap", "remdm_rescale"):
        sigma = remask_sigma(st[6:], alpha_t, alpha_s, cfg.eta)
        conf = np.zeros_like(t)
      elif st == "remdm_conf":
        sigma = remask_sigma(cfg.conf_base, alpha_t, alpha_s, cfg.eta)
        conf = np.ones_like(t)
      elif st == "fb":
        sigma = remask_sigma("fb", alpha_t, alpha_s)
        conf = np.zeros_like(t)
      elif st == "remdm_switch":
        base = cfg.conf_base if cfg.switch_base == "conf" else cfg.switch_base
        sigma = switch_sigma(remask_sigma(base, alpha_t, alpha_s, cfg.eta), t, cfg.t_switch)
        conf = switch_sigma(np.full_like(t, 1.0 if cfg.switch_base == "conf" else 0.0), t,
                            cfg.t_switch)
      else:  # pragma: no cover - config validation rejects it first
        raise ValueError(f"strategy={st!r}")
  sigma = np.asarray(sigma, np.float64)
  conf = np.asarray(conf, np.float64)
  sigma_m = sigma * (1.0 - conf)
  _validate(cfg.strategy, alpha_t, alpha_s, sigma, sigma_m)
  p_unmask = unmask_rate(np.asarray(alpha_t, np.float64), np.asarray(alpha_s, np.float64), sigma_m)
  return StepSchedule(cfg.strategy, t, s, np.asarray(alpha_t, np.float64),
                      np.asarray(alpha_s, np.float64), sigma, conf, p_unmask, min_t, phases)


def _validate(strategy, alpha_t, alpha_s, sigma, sigma_m):
  """Raises on the first invalid step. Allowed exceptions, where u is clipped to 1 (the reference's
  stay-masked weight 1 - alpha_s - sigma alpha_t is negative there and its race never picks it, so
  every masked position unmasks, SPEC §4.4): FB's last step, and the loop's phase-1 overshoot
  (alpha_s > 1 on the last phase-1 step, at small T, e.g. T = 1, 3, 5, 7 at the script settings)."""
  n = len(alpha_t)
  for name, sig in (("sigma", sigma), ("sigma(masked)", sigma_m)):
    c1 = (1.0 - sig) * alpha_t - alpha_s          # <= 0 : u >= 0
    c2 = sig * alpha_t - (1.0 - alpha_s)          # <= 0 : u <= 1
    bad = (c1 > _TOL) | (c2 > _TOL) | (sig < -_TOL) | (sig > 1 + _TOL) | ~np.isfinite(sig)
    clipped = (sig <= 1 + _TOL) & (sig >= -_TOL) & (c1 <= _TOL) & np.isfinite(sig)
    if strategy == "fb" and n > 0:
      bad[n - 1] = bad[n - 1] and not clipped[n - 1]
    if strategy == "remdm_loop":
      bad = bad & ~(clipped & (alpha_s > 1.0) & (alpha_t <= 1.0))
    if bad.any():
      i = int(np.argmax(bad))
      raise ValueError(
          f"strategy={strategy!r}: step {i} is invalid: {name}={float(sig[i])!r}, alpha_t={float(alpha_t[i])!r}, "
          f"alpha_s={float(alpha_s[i])!r} (need (1 - sigma) alpha_t <= alpha_s and "
          f"sigma alpha_t <= 1 - alpha_s, SPEC §4.1)")


def expected_unmask_buffer(sched: StepSchedule, seq_len: int, uses_conf: bool) -> int:
  """A static K for the exact32 draw: max over steps of the expected unmasks per row,
  L (1 - alpha_t) u (the marginal masked fraction times the unmask rate), plus 6 standard
  deviations and 8, rounded up to a multiple of 8 and capped at L. Only a speed knob."""
  lam = float(np.max((1.0 - sched.alpha_t) * sched.p_unmask)) * seq_len if sched.n_steps else 0.0
  if uses_conf:
    lam += 2.0  # conf keeps ~1 extra masked token per step per sequence (marginals not preserved)
  k = int(np.ceil(lam + 6.0 * np.sqrt(lam) + 8.0))
  k = -(-k // 8) * 8
  return max(1, min(seq_len, k))


def torch_linspace_f32(start: float, end: float, n: int) -> np.ndarray:
  """float32 [n]: CPU `torch.linspace(start, end, n)` (default float32) bit for bit, for the
  references that build schedules with it (Dream's `timesteps = linspace(1, eps, steps + 1)`,
  LLaDA's `_forward_process` mask counts). torch computes step = f32((e - s) / f32(n - 1)) and
  rounds s + step i (first half) or e - step (n - 1 - i) (second half) once; `np.linspace` then a
  float32 cast differs from it in most step counts (checked against torch for n <= 2049)."""
  n = int(n)
  if n < 1:
    raise ValueError(f"n={n} must be >= 1")
  s, e = np.float32(start), np.float32(end)
  if n == 1:
    return np.array([s], np.float32)
  step = np.float64(np.float32((e - s) / np.float32(n - 1)))
  idx = np.arange(n, dtype=np.float64)
  lo = np.float64(s) + step * idx
  hi = np.float64(e) - step * (n - 1 - idx)
  return np.where(np.arange(n) < n // 2, lo, hi).astype(np.float32)
