"""MAUVE (Pillutla et al. 2021) via `mauve-text` 0.4.0 on precomputed features (SPEC §7).

The reference calls `mauve.compute_mauve(p_text=references, q_text=samples,
max_text_length=1024)` with library defaults: featuriser gpt2-large (final token, last layer),
num_buckets 'auto' = max(2, round(min(N_p, N_q) / 10)), PCA on all data, k-means at 0.9
explained variance with 5 redos and 500 iterations, 25 divergence-curve points, scaling 5,
seed 25. Here features come from our own JAX featuriser (`GPT2Scorer.features` for the
paper's number, `MiniLMFeaturizer.features` as a light [LIB] alternative) and are handed to
mauve-text as p_features / q_features with those same defaults.

MAUVE is comparable only at identical N, reference set and featuriser: every result carries
`n_p`, `n_q`, `reference` and `featurizer`.
"""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np

DEFAULTS = dict(num_buckets="auto", pca_max_data=-1, kmeans_explained_var=0.9,
                kmeans_num_redo=5, kmeans_max_iter=500, divergence_curve_discretization_size=25,
                mauve_scaling_factor=5, seed=25)

# Below this many samples per set MAUVE is dominated by its k-means quantisation (measured with
# these DEFAULTS on 32-d Gaussian features: N = 8 or 16 -> 2 buckets and a set scores 0.75 against
# ITSELF; N = 50 -> two draws of one distribution score 0.83). The paper uses N = 5000.
MIN_RELIABLE_SAMPLES = 100


def _features(x, name: str) -> np.ndarray:
  x = np.asarray(x)
  if x.ndim != 2 or x.shape[0] == 0:
    raise ValueError(f"{name} must be a non-empty [N, D] array; got shape {x.shape}")
  if not np.all(np.isfinite(x)):
    raise ValueError(f"{name} contains non-finite values")
  return x.astype(np.float32)


def compute_mauve(p_features, q_features, *, reference: str = "unspecified",
                  featurizer: str = "unspecified", verbose: bool = False, **kw) -> dict:
  """MAUVE between reference features P [N_p, D] and sample features Q [N_q, D].

  Keyword overrides (**kw) go to `mauve.compute_mauve` on top of `DEFAULTS` (SPEC §7).
  Warns (UserWarning) when a set has fewer than `MIN_RELIABLE_SAMPLES` rows.
  Returns dict(mauve, mauve_star, frontier_integral, num_buckets, n_p, n_q, reference,
  featurizer, settings).
  """
  unknown = set(kw) - set(DEFAULTS)
  if unknown:
    raise ValueError(f"unknown MAUVE settings {sorted(unknown)}; allowed: {sorted(DEFAULTS)}")
  p = _features(p_features, "p_features")
  q = _features(q_features, "q_features")
  if p.shape[1] != q.shape[1]:
    raise ValueError(f"p_features dim {p.shape[1]} != q_features dim {q.shape[1]}")
  settings = {**DEFAULTS, **kw}
  n = min(p.shape[0], q.shape[0])
  if n < MIN_RELIABLE_SAMPLES:
    warnings.warn(f"MAUVE with {n} samples per set (fewer than {MIN_RELIABLE_SAMPLES}) is not "
                  f"reliable: its clustering has too few points (at N = 8 a set scores 0.75 "
                  f"against itself); use >= {MIN_RELIABLE_SAMPLES} (the paper: 5000)",
                  UserWarning, stacklevel=2)
  import mauve as mauve_lib  # optional dependency (mauve-text; needs faiss + scikit-learn)

  out = mauve_lib.compute_mauve(p_features=p, q_features=q, verbose=verbose, **settings)
  return dict(mauve=float(out.mauve), mauve_star=float(out.mauve_star),
              frontier_integral=float(out.frontier_integral), num_buckets=int(out.num_buckets),
              n_p=int(p.shape[0]), n_q=int(q.shape[0]), reference=reference,
              featurizer=featurizer, settings=settings)


def mauve_from_texts(p_texts: Sequence[str], q_texts: Sequence[str], featurizer, *,
                     reference: str = "unspecified", batch_size: int = 8, **kw) -> dict:
  """MAUVE of sample texts Q against reference texts P with `featurizer.features(texts,
  batch_size=...)` (GPT2Scorer or MiniLMFeaturizer); the featuriser's `name` is recorded."""
  for nm, t in (("p_texts", p_texts), ("q_texts", q_texts)):
    if isinstance(t, str) or len(t) == 0:
      raise ValueError(f"{nm} must be a non-empty sequence of strings")
  name = getattr(featurizer, "name", type(featurizer).__name__)
  p = featurizer.features(list(p_texts), batch_size=batch_size)
  q = featurizer.features(list(q_texts), batch_size=batch_size)
  return compute_mauve(p, q, reference=reference, featurizer=name, **kw)
