"""FID and Inception Score from user-supplied Inception outputs (SPEC_DOMAINS §I.1, issue 11).

No Inception weights ship offline, so these functions take what an Inception network produced:
  * FID: two sets of pool features [N, D] (D = 2048 for Inception-v3 pool3), or their Gaussian
    statistics (mu [D], sigma [D, D]) -- e.g. the `mu` / `sigma` arrays of the ADM evaluator's
    ImageNet 256 reference batch `VIRTUAL_imagenet256_labeled.npz`.
    FID = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^{1/2})   (Heusel et al. 2017, eq. 6)
    with `scipy.linalg.sqrtm`; as in pytorch-fid / the TTUR code, if the product is singular the
    square root is retried on (S1 + eps I)(S2 + eps I), and a complex result with a negligible
    imaginary part is reduced to its real part.
  * IS: softmax class probabilities [N, 1000]; the improved-GAN rule (Salimans et al. 2016):
    split the N rows into `splits` consecutive parts (part i = rows [i N // s, (i+1) N // s)),
    IS_i = exp(mean_n KL(p(y|x_n) || mean_n p(y|x_n))), return (mean, std) over the parts.

CLI: `python -m remdm_jax.images.fid A B` prints the FID between A and B, each a .npz holding
`mu` and `sigma`, or features (`.npy` [N, D], or a .npz key `features` / `pool` / `arr_0` [N, D]).
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np


def gaussian_stats(features) -> tuple[np.ndarray, np.ndarray]:
  """features [N, D] (N >= 2) -> (mu [D] float64, sigma [D, D] float64, unbiased covariance)."""
  f = np.asarray(features, np.float64)
  if f.ndim != 2 or f.shape[0] < 2:
    raise ValueError(f"features must be [N, D] with N >= 2, got shape {f.shape}")
  if not np.all(np.isfinite(f)):
    raise ValueError("features contain NaN or inf")
  return f.mean(axis=0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
  """The Frechet distance between N(mu1, sigma1) and N(mu2, sigma2) (float64).

  Raises ValueError on mismatched shapes, or if sqrtm leaves an imaginary part > 1e-3 (the
  covariances are then not PSD)."""
  from scipy import linalg

  mu1 = np.atleast_1d(np.asarray(mu1, np.float64))
  mu2 = np.atleast_1d(np.asarray(mu2, np.float64))
  s1 = np.atleast_2d(np.asarray(sigma1, np.float64))
  s2 = np.atleast_2d(np.asarray(sigma2, np.float64))
  d = mu1.shape[0]
  if mu1.shape != (d,) or mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
    raise ValueError(f"shapes do not match: mu1 {mu1.shape}, sigma1 {s1.shape}, mu2 {mu2.shape}, "
                     f"sigma2 {s2.shape}")
  diff = mu1 - mu2
  covmean = linalg.sqrtm(s1 @ s2)
  if not np.isfinite(covmean).all():
    offset = np.eye(d) * eps
    covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
  if np.iscomplexobj(covmean):
    if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
      raise ValueError(f"sqrtm has an imaginary component {np.max(np.abs(covmean.imag)):.3g}: "
                       "the covariances are not positive semi-definite")
    covmean = covmean.real
  return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


def fid_from_features(features1, features2) -> float:
  """FID between two feature sets [N1, D], [N2, D]."""
  return frechet_distance(*gaussian_stats(features1), *gaussian_stats(features2))


def load_stats(path: str) -> tuple[np.ndarray, np.ndarray]:
  """(mu, sigma) from a .npz with `mu` and `sigma`, or from features (.npy [N, D]; .npz key
  `features`, `pool` or `arr_0` holding a 2-D float array). Raises FileNotFoundError /
  ValueError naming the file."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"statistics file not found: {path}")
  data = np.load(path)
  if isinstance(data, np.ndarray):
    return gaussian_stats(data)
  with data:
    keys = set(data.files)
    if {"mu", "sigma"} <= keys:
      return np.asarray(data["mu"], np.float64), np.asarray(data["sigma"], np.float64)
    for k in ("features", "pool", "arr_0"):
      if k in keys and data[k].ndim == 2 and np.issubdtype(data[k].dtype, np.floating):
        return gaussian_stats(data[k])
  raise ValueError(f"{path}: holds neither mu/sigma nor 2-D float features (keys {sorted(keys)})")


def inception_score(probs, splits: int = 10) -> tuple[float, float]:
  """probs [N, C] rows of softmax probabilities -> (mean, std) of exp(E KL(p(y|x) || p(y)))
  over `splits` consecutive parts (improved-GAN rule; float64).

  Raises ValueError if a row is negative / does not sum to 1 (1e-3), or N < splits."""
  p = np.asarray(probs, np.float64)
  if p.ndim != 2:
    raise ValueError(f"probs must be [N, C], got shape {p.shape}")
  if not isinstance(splits, (int, np.integer)) or splits < 1 or p.shape[0] < splits:
    raise ValueError(f"splits={splits!r} must be an int in [1, N={p.shape[0]}]")
  if (p < 0).any() or not np.allclose(p.sum(axis=1), 1.0, atol=1e-3):
    raise ValueError("probs rows must be non-negative and sum to 1 (softmax outputs)")
  n = p.shape[0]
  scores = []
  for i in range(splits):
    part = p[i * n // splits:(i + 1) * n // splits]
    marginal = part.mean(axis=0, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
      kl = np.where(part > 0, part * (np.log(part) - np.log(marginal)), 0.0)
    scores.append(np.exp(kl.sum(axis=1).mean()))
  return float(np.mean(scores)), float(np.std(scores))


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m remdm_jax.images.fid",
                                   description="FID between two Inception feature/stat files.")
  parser.add_argument("a")
  parser.add_argument("b")
  args = parser.parse_args(argv)
  try:
    value = frechet_distance(*load_stats(args.a), *load_stats(args.b))
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"FID {value:.4f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
