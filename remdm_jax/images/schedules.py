"""MaskGIT mask schedules (SPEC_DOMAINS §I.1; google-research/maskgit `libml/mask_schedule.py`).

`mask_ratio(r, n0, method)` is the *masked fraction* at decoding progress r in [0, 1], clipped to
[1e-6, 1]:

| method                  | masked fraction                    |
|-------------------------|------------------------------------|
| `uniform`               | 1 - r                              |
| `cosine`                | cos(pi r / 2)                      |
| `powK` (e.g. `pow2.5`)  | 1 - r^K                            |
| `log`                   | -log2(r) / log2(n0)                |
| `exp`                   | 1 - 2^(-log2(n0) (1 - r))          |
| `cubic_alpha-A_a-a_b-b` | A (1 - r)^a r^b                    |

n0 is the number of masked tokens at the start (only `log` and `exp` use it). The reference's
MDLM / ReMDM branches feed the *time* t = (T - step) / T into the same function and call the result
alpha_t (`alpha(t, n0, method)`): alpha_1 = 1e-6 (the clip) and alpha_0 = 1 for `uniform` /
`cosine`. Works on numpy and jax arrays alike, in the input's float dtype (the reference computes in
float32); never raises on traced values. The method string is parsed once (`parse_method`), which
raises `ValueError` naming a bad method.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

CLIP_MIN = 1e-6
METHODS = ("uniform", "cosine", "powK", "log", "exp", "cubic_alpha-A_a-a_b-b")


class Method(NamedTuple):
  kind: str             # uniform | cosine | pow | log | exp | cubic
  params: tuple = ()    # pow: (K,); cubic: (A, a, b)


def parse_method(method: str) -> Method:
  """'cosine' -> Method('cosine'); 'pow2.5' -> Method('pow', (2.5,));
  'cubic_alpha-12_a-2_b-0.25' -> Method('cubic', (12., 2., .25)). ValueError on anything else."""
  if not isinstance(method, str):
    raise ValueError(f"mask schedule method={method!r} must be a string, one of {METHODS}")
  if method in ("uniform", "cosine", "log", "exp"):
    return Method(method)
  try:
    if method.startswith("pow"):
      k = float(method[3:])
      if not math.isfinite(k) or k <= 0:
        raise ValueError
      return Method("pow", (k,))
    if method.startswith("cubic"):
      parts = method.split("_")
      if (len(parts) != 4 or not parts[1].startswith("alpha-") or not parts[2].startswith("a-")
          or not parts[3].startswith("b-")):
        raise ValueError
      vals = (float(parts[1][6:]), float(parts[2][2:]), float(parts[3][2:]))
      if not all(math.isfinite(v) for v in vals):
        raise ValueError
      return Method("cubic", vals)
  except ValueError:
    pass
  raise ValueError(f"mask schedule method={method!r} is not one of {METHODS} "
                   "(e.g. 'pow2.5', 'cubic_alpha-12_a-2_b-0.25')")


def _xp(x):
  return np if isinstance(x, (np.ndarray, np.generic, float, int)) else jnp


def mask_ratio(r: Any, n0: Any, method: str | Method) -> Any:
  """The masked fraction at progress r (scalar or array, float), clipped to [1e-6, 1].

  Args:
    r: progress in [0, 1] (numpy / jax; python floats are treated as float64 numpy).
    n0: number of initially masked tokens (int, scalar or array broadcasting with r); `log`/`exp`.
    method: a name of `METHODS` or a parsed `Method`.
  Returns: the schedule value, dtype of r (float32 stays float32).
  """
  m = method if isinstance(method, Method) else parse_method(method)
  xp = _xp(r)
  if xp is np:
    with np.errstate(divide="ignore", invalid="ignore"):
      return _mask_ratio(np, r, n0, m)
  return _mask_ratio(xp, r, n0, m)


def _mask_ratio(xp, r, n0, m: Method):
  r = xp.asarray(r)
  if not xp.issubdtype(r.dtype, xp.floating):
    r = r.astype(np.float64 if xp is np else xp.float32)
  dt = r.dtype
  one = xp.asarray(1.0, dt)
  if m.kind == "uniform":
    out = one - r
  elif m.kind == "cosine":
    out = xp.cos(xp.asarray(math.pi / 2.0, dt) * r)
  elif m.kind == "pow":
    out = one - r ** xp.asarray(m.params[0], dt)
  elif m.kind in ("log", "exp"):
    log2n = xp.log2(xp.asarray(n0).astype(dt))
    if m.kind == "log":
      out = -xp.log2(r) / log2n
    else:
      out = one - xp.exp2(-log2n * (one - r))
  else:  # cubic
    a_, a, b = (xp.asarray(v, dt) for v in m.params)
    out = a_ * (one - r) ** a * r ** b
  return xp.clip(out, xp.asarray(CLIP_MIN, dt), one).astype(dt)


def alpha(t: Any, n0: Any, method: str | Method) -> Any:
  """The reference's alpha_t of the MDLM / ReMDM image branches: `mask_ratio(t, n0, method)` at
  time t = (T - step) / T (so alpha_1 = 1e-6, alpha_0 = 1 for uniform / cosine)."""
  return mask_ratio(t, n0, method)
