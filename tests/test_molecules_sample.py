"""QM9 sampling entry points and the sweep driver, on a tiny random conditional model."""
import csv
import os

import jax
import numpy as np
import pytest

from remdm_jax import checkpoint
from remdm_jax.models import dit
from remdm_jax.molecules import sample as S
from remdm_jax.molecules import sweep
from remdm_jax.sampling import SamplerConfig

CFG = dit.DiTConfig(vocab_size=35, max_seq_len=32, hidden_size=32, num_heads=2, num_blocks=1,
                    cond_dim=16, dropout=0.0, compute_dtype="float32", num_classes=2)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
  _, params = dit.init_params(CFG, jax.random.PRNGKey(0))
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
  params = jax.tree.unflatten(tree, [v + 0.3 * jax.random.normal(k, v.shape) for k, v in zip(keys, leaves)])
  path = str(tmp_path_factory.mktemp("m") / "qm9_tiny")
  checkpoint.save_params(path, params, model_config=CFG.to_dict(), extra_metadata={"tokenizer": "smiles"})
  return S.load_qm9_model(path)


def test_sample_molecules_labels(model):
  cfg = SamplerConfig(strategy="mdlm", num_steps=8)
  t1, st = S.sample_molecules(model, cfg, num_samples=6, batch_size=4, seed=3, label=1)
  assert t1.shape == (6, 32) and t1.dtype == np.int32 and not np.any(t1 == 2)
  assert st["nfe"] >= 8
  again, _ = S.sample_molecules(model, cfg, num_samples=6, batch_size=4, seed=3, label=1)
  np.testing.assert_array_equal(t1, again)
  t0, _ = S.sample_molecules(model, cfg, num_samples=6, batch_size=4, seed=3, label=0)
  assert not np.array_equal(t1, t0)  # the label reaches the model
  assert len(model.tokenizer.decode_batch(t1)) == 6


def test_guided_denoise_errors(model):
  with pytest.raises(ValueError, match="label"):
    S.guided_denoise(model, None, 2, 4)
  if S.guidance_available():
    with pytest.raises(ValueError, match="guidance"):
      S.guided_denoise(model, "cfg", 1, 4)
  else:
    with pytest.raises(ImportError, match="sampling.guidance"):
      S.guided_denoise(model, S.CFG(2.0), 1, 4)
  assert S.main(["--model", "/nonexistent/x", "--num_samples", "2"]) == 2


def test_sweep_points_csv_and_plot(model, tmp_path):
  pytest.importorskip("rdkit")
  ctx = dict(model=model, reference={"CCO"}, num_samples=8, batch_size=8, seed=1,
             property="ring_count", canonical=False, approx=False, remdm_strategy="remdm_cap",
             eta=0.05)
  r = sweep.run_point(ctx, "ReMDM", "D-CFG", 1.0, 8)
  assert r["num_samples"] == 8 and 0 <= r["valid_frac"] <= 1 and r["nfe"] >= 8
  with pytest.raises(sweep.Unavailable, match="UDLM"):
    sweep.run_point(ctx, "UDLM", "D-CFG", 1.0, 8)
  if not S.guidance_available():
    with pytest.raises(sweep.Unavailable, match="guidance"):
      sweep.run_point(ctx, "MDLM", "D-CBG", 2.0, 8)
  rows = [dict(method="MDLM", guidance="D-CFG", gamma=g, T=32, status="ok", kept=True,
               num_novel=100 * g, novel_mean=1.0 + g) for g in (1, 2)]
  rows.append(dict(method="AR", guidance="D-CBG", gamma=1, T=32, status="skipped: x", kept=False))
  sweep.write_csv(str(tmp_path / "s.csv"), rows)
  with open(tmp_path / "s.csv") as f:
    got = list(csv.DictReader(f))
  assert [g["status"] for g in got] == ["ok", "ok", "skipped: x"] and got[1]["num_novel"] == "200"
  pytest.importorskip("matplotlib")
  out = sweep.plot_pareto(rows, str(tmp_path / "p.png"), "ring_count")
  assert os.path.getsize(out) > 1000
  assert sweep.main(["--out_dir", str(tmp_path), "--methods", "GPT"]) == 2
  assert sweep.main(["--out_dir", str(tmp_path), "--gammas", "-1"]) == 2
