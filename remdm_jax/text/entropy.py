"""Unigram entropy of generated samples (SPEC §7).

Per sample x of L token ids (special tokens included):
  H(x) = -sum_v (c_v / L) ln(c_v / L),   c_v = #{i : x_i = v},
reported in nats as the mean over samples (OWT data: 5.44). Equivalently, with c_i = c_{x_i},
  H(x) = -(1 / L) sum_i ln(c_i / L),
which is the form the jnp version uses (no de-duplication needed).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _check_samples(samples) -> np.ndarray:
  samples = np.asarray(samples)
  if samples.ndim != 2:
    raise ValueError(f"samples must be [N, L] token ids; got shape {samples.shape}")
  if samples.shape[1] == 0:
    raise ValueError(f"samples must have L >= 1 tokens; got shape {samples.shape}")
  if not np.issubdtype(samples.dtype, np.integer):
    raise ValueError(f"samples must be integer token ids; got dtype {samples.dtype}")
  return samples


def sample_entropy(samples) -> np.ndarray:
  """Unigram entropy (nats) of each row. samples: int [N, L] -> float64 [N].

  Vectorised numpy: sort each row, find the runs of equal ids, p = run length / L,
  H_n = -sum_runs p ln p (summed per row with bincount).
  """
  x = _check_samples(samples)
  n, length = x.shape
  if n == 0:
    return np.zeros((0,), np.float64)
  s = np.sort(x, axis=1)
  starts = np.ones_like(s, dtype=bool)
  starts[:, 1:] = s[:, 1:] != s[:, :-1]
  idx = np.flatnonzero(starts.ravel())  # every row starts a run, so runs never cross rows
  counts = np.diff(np.append(idx, n * length))
  rows = idx // length
  p = counts.astype(np.float64) / length
  return -np.bincount(rows, weights=p * np.log(p), minlength=n)


def mean_entropy(samples) -> float:
  """Mean over samples of the per-sample unigram entropy in nats (SPEC §7). samples: [N, L]."""
  h = sample_entropy(samples)
  if h.size == 0:
    raise ValueError("samples must contain at least one sample; got N = 0")
  return float(h.mean())


def sample_entropy_jnp(samples: jax.Array) -> jax.Array:
  """jnp version of `sample_entropy` (jit-able): int [N, L] -> float [N] (float32 unless x64).

  H_n = -(1/L) sum_i ln(c_i / L), where c_i = number of occurrences of x_{n,i} in row n,
  obtained from a row sort and two searchsorted calls.
  """
  if samples.ndim != 2:
    raise ValueError(f"samples must be [N, L] token ids; got shape {samples.shape}")
  length = samples.shape[1]
  s = jnp.sort(samples, axis=1)

  def counts(row):
    return (jnp.searchsorted(row, row, side="right") - jnp.searchsorted(row, row, side="left"))

  c = jax.vmap(counts)(s)
  dtype = jnp.promote_types(jnp.float32, jnp.result_type(float))
  p = c.astype(dtype) / length
  return -jnp.mean(jnp.log(p), axis=1)
