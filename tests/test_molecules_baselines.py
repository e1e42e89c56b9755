"""The QM9 baselines UDLM and AR through `molecules.sample` and the sweep's `run_point` (tiny random
class-conditional models saved and loaded like the shipped ones): kind detection, D-CFG gamma 0 / 1
equal the single-model paths, NFE accounting, D-CBG (UDLM) / FUDGE (AR) wiring, the sweep grid."""
import jax
import numpy as np
import pytest

from remdm_jax import checkpoint
from remdm_jax.models import dit
from remdm_jax.molecules import sample as S
from remdm_jax.molecules import sweep
from remdm_jax.sampling import SamplerConfig

BASE = dict(vocab_size=35, max_seq_len=32, hidden_size=32, num_heads=2, num_blocks=1, cond_dim=16,
            dropout=0.0, compute_dtype="float32", num_classes=2)


def _save_random(cfg, path, seed, objective=None):
  _, params = dit.init_params(cfg, jax.random.PRNGKey(seed))
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
  params = jax.tree.unflatten(tree, [v + 0.3 * jax.random.normal(k, v.shape)
                                     for k, v in zip(keys, leaves)])
  meta = {"tokenizer": "smiles"}
  if objective:  # as checkpoint.export_params writes it
    meta["train_config"] = {"loss": {"objective": objective}}
  checkpoint.save_params(path, params, model_config=cfg.to_dict(), extra_metadata=meta)
  return S.load_qm9_model(path)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  d = tmp_path_factory.mktemp("baselines")
  udlm = _save_random(dit.DiTConfig(**BASE, time_conditioning=True), str(d / "udlm"), 1, "udlm")
  ar = _save_random(dit.DiTConfig(**BASE, causal=True), str(d / "ar"), 2, "ar")
  clf = _save_random(dit.DiTConfig(**dict(BASE, head="classifier")), str(d / "clf"), 3)
  mdlm = _save_random(dit.DiTConfig(**BASE), str(d / "mdlm"), 4)
  return dict(udlm=udlm, ar=ar, clf=clf, mdlm=mdlm)


def test_model_kind(models):
  assert [S.model_kind(models[k]) for k in ("udlm", "ar", "mdlm")] == ["udlm", "ar", "mdlm"]


@pytest.mark.parametrize("kind", ["udlm", "ar"])
def test_cfg_wiring_and_nfe(models, kind):
  model = models[kind]
  T = 3
  cfg = SamplerConfig(strategy="mdlm", num_steps=T)
  kw = dict(num_samples=5, batch_size=3, seed=2)
  plain1, st = S.sample_molecules(model, cfg, label=1, **kw)
  plain0, _ = S.sample_molecules(model, cfg, label=None, **kw)
  cfg1, _ = S.sample_molecules(model, cfg, label=1, guidance=S.CFG(1.0), **kw)
  cfg0, _ = S.sample_molecules(model, cfg, label=1, guidance=S.CFG(0.0), **kw)
  np.testing.assert_array_equal(cfg1, plain1)
  np.testing.assert_array_equal(cfg0, plain0)
  assert not np.array_equal(plain1, plain0)  # the label reaches the model
  cfg2, st2 = S.sample_molecules(model, cfg, label=1, guidance=S.CFG(2.5), **kw)
  assert cfg2.shape == (5, 32) and cfg2.dtype == np.int32 and cfg2.min() >= 0 and cfg2.max() < 35
  assert not np.array_equal(cfg2, plain1)
  n = T if kind == "udlm" else 31  # UDLM: T steps; AR: L - 1 positions
  assert st["nfe"] == n and st2["nfe"] == 2 * n
  if kind == "ar":
    assert np.all(plain1[:, 0] == 0)  # <bos> first, as the data
  remdm = SamplerConfig(strategy="remdm_cap", num_steps=T, eta=0.1)
  with pytest.raises(ValueError, match="strategy"):
    S.sample_molecules(model, remdm, label=1, **kw)
  with pytest.raises(ValueError, match="noise_removal"):
    S.sample_molecules(model, cfg, label=1, noise_removal=True, **kw)


@pytest.mark.slow  # ~55 s on 2 loaded CPU cores (FUDGE scores 31 * 35 rows per sample)
def test_cbg_wiring(models):
  """UDLM D-CBG (first order; exact in test_run_point_udlm_and_ar) and AR FUDGE (all V or top-k
  candidates)."""
  cfg = SamplerConfig(strategy="mdlm", num_steps=2)
  kw = dict(num_samples=2, batch_size=2, seed=1, label=1, classifier=models["clf"])
  t, st = S.sample_molecules(models["udlm"], cfg, guidance=S.CBG(3.0, True), **kw)
  assert t.shape == (2, 32) and st["nfe"] == 2 and st["classifier_nfe"] == 2
  base, _ = S.sample_molecules(models["ar"], cfg, guidance=S.CFG(0.0), **kw)
  f0, st = S.sample_molecules(models["ar"], cfg, guidance=S.CBG(0.0), **kw)
  np.testing.assert_array_equal(f0, base)  # FUDGE gamma = 0 is the null-class LM
  assert st["classifier_nfe"] == 31 * 35 and st["nfe"] == 31
  f5, st = S.sample_molecules(models["ar"], cfg, guidance=S.CBG(5.0), top_k=4, **kw)
  assert st["classifier_nfe"] == 31 * 4 and not np.array_equal(f5, base)
  with pytest.raises(ValueError, match="approx"):
    S.sample_molecules(models["ar"], cfg, guidance=S.CBG(1.0, True), **kw)
  with pytest.raises(ValueError, match="classifier model"):
    S.sample_molecules(models["ar"], cfg, guidance=S.CBG(1.0), num_samples=2, label=1)


def test_run_point_udlm_and_ar(models):
  pytest.importorskip("rdkit")
  ctx = dict(model=models["mdlm"], udlm_model=models["udlm"], ar_model=models["ar"],
             classifier=models["clf"], reference={"CCO"}, num_samples=2, batch_size=2, seed=1,
             property="ring_count", canonical=False, approx=False, remdm_strategy="remdm_cap",
             eta=0.05)
  for method, guidance, gamma, nfe in (("UDLM", "D-CFG", 2.0, 4), ("UDLM", "D-CBG", 2.0, 2),
                                       ("AR", "D-CFG", 1.0, 31), ("AR", "D-CBG", 2.0, 31)):
    r = sweep.run_point(ctx, method, guidance, gamma, 2)
    assert r["num_samples"] == 2 and 0 <= r["valid_frac"] <= 1 and r["nfe"] == nfe, (method, r)
  with pytest.raises(sweep.Unavailable, match="no shipped"):
    sweep.run_point(dict(ctx, ar_model="no shipped QM9 qm9_ar model"), "AR", "D-CFG", 2.0, 2)
  pts = sweep.grid_points(["MDLM", "AR"], ["D-CFG"], [1.0, 2.0], [32, 64])
  assert pts == [("MDLM", "D-CFG", 1.0, 32), ("MDLM", "D-CFG", 1.0, 64),
                 ("MDLM", "D-CFG", 2.0, 32), ("MDLM", "D-CFG", 2.0, 64),
                 ("AR", "D-CFG", 1.0, 32), ("AR", "D-CFG", 2.0, 32)]


def _ring_closures(tokens):
  """Ring-closure digit tokens ('1'..'5' = ids 9..13) per sample, over ALL samples."""
  return float(np.isin(tokens, np.arange(9, 14)).sum(axis=1).mean())


@pytest.mark.parametrize("kind", ["ar", "udlm"])
def test_shipped_baselines_cfg_raises_ring_closures(kind):
  """Shipped qm9_ar / qm9_udlm, fixed seed, 64 samples: D-CFG gamma = 2 (label 1 = many rings)
  raises the ring-closure count per sample over gamma = 0 (the null class). First run: see the
  model card numbers in the report / assets README."""
  model = S.load_qm9_model(kind)
  cfg = SamplerConfig(strategy="mdlm", num_steps=16)
  kw = dict(num_samples=64, batch_size=64, seed=1, label=1)
  base, _ = S.sample_molecules(model, cfg, guidance=S.CFG(0.0), **kw)
  cfg2, _ = S.sample_molecules(model, cfg, guidance=S.CFG(2.0), **kw)
  r0, r2 = _ring_closures(base), _ring_closures(cfg2)
  print(f"{kind}: ring closures per sample cfg0 {r0:.2f} cfg2 {r2:.2f}")
  assert r2 > r0 + 2.0
