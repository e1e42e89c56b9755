"""QM9 training pieces (SPEC_DOMAINS §M.3): labelled batches, conditional MDLM loss with condition
dropout, the noisy-classifier loss, the trainer with labels, configs/qm9.py."""
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from remdm_jax import config_utils
from remdm_jax.diffusion import losses
from remdm_jax.diffusion.losses import LossConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from configs import qm9  # noqa: E402

V, L, M = 35, 8, 2


def _batch(key, b=6, nc=2):
  toks = jax.random.randint(key, (b, L), 5, V, dtype=jnp.int32)
  labels = jnp.arange(b, dtype=jnp.int32) % nc
  return jnp.concatenate([toks, labels[:, None]], axis=1)


def _fake_apply(w):
  """logits[b, l, v] = w[v] * (1 + labels_b) + 0.1 * sigma_b * v: depends on labels and sigma."""
  def apply_fn(z, sigma, labels=None):
    lab = jnp.full((z.shape[0],), 2) if labels is None else labels
    base = w[None, None, :] * (1.0 + lab[:, None, None]) + 0.1 * sigma[:, None, None] * jnp.arange(V)
    return jnp.broadcast_to(base, z.shape + (V,)).astype(jnp.float32)
  return apply_fn


def test_split_labels_and_cond_dropout():
  cfg0 = LossConfig(mask_id=M)
  x = _batch(jax.random.PRNGKey(0))[:, :L]
  y, kw = losses.split_labels(x, None, cfg0)
  assert kw == {} and np.array_equal(np.asarray(y), np.asarray(x))
  cfg = LossConfig(mask_id=M, num_classes=2, cond_dropout=0.25)
  big = _batch(jax.random.PRNGKey(1), b=4000)
  toks, kw = losses.split_labels(big, jax.random.PRNGKey(5), cfg)
  assert toks.shape == (4000, L)
  lab = np.asarray(kw["labels"])
  orig = np.asarray(big[:, -1])
  dropped = lab == 2
  assert np.array_equal(lab[~dropped], orig[~dropped])
  # Binomial(4000, 0.25): mean 1000, sd 27.4 -> 5 sd band
  assert abs(dropped.sum() - 1000) < 137
  # the draw is fold_in(key, 2): reproduce it
  u = jax.random.uniform(jax.random.fold_in(jax.random.PRNGKey(5), 2), (4000,))
  assert np.array_equal(dropped, np.asarray(u < 0.25))
  with pytest.raises(ValueError, match="cond_dropout"):
    LossConfig(mask_id=M, cond_dropout=0.1)  # no classes
  with pytest.raises(ValueError, match="num_classes"):
    LossConfig(objective="classifier", mask_id=M, num_classes=1)


def test_conditional_mdlm_loss_forwards_labels():
  w = jax.random.normal(jax.random.PRNGKey(2), (V,))
  apply_fn = _fake_apply(w)
  batch = _batch(jax.random.PRNGKey(3))
  key = jax.random.PRNGKey(4)
  cfg = LossConfig(mask_id=M, num_classes=2)
  loss, aux = losses.diffusion_loss(apply_fn, batch, key, cfg)
  # == the unconditional loss of the model with these labels bound
  labels = batch[:, -1]
  ref, _ = losses.diffusion_loss(lambda z, s: apply_fn(z, s, labels=labels), batch[:, :L], key,
                                 LossConfig(mask_id=M))
  assert float(loss) == float(ref)
  null, _ = losses.diffusion_loss(lambda z, s: apply_fn(z, s), batch[:, :L], key, LossConfig(mask_id=M))
  assert abs(float(loss) - float(null)) > 1e-4  # labels matter
  # the AR loss with labels
  ar_cfg = LossConfig(objective="ar", num_classes=2)
  a, _ = losses.ar_loss(apply_fn, batch, ar_cfg, key)
  a_ref, _ = losses.ar_loss(lambda z, s: apply_fn(z, s, labels=labels), batch[:, :L])
  assert float(a) == float(a_ref)


def test_classifier_loss_vs_numpy():
  cfg = LossConfig(objective="classifier", mask_id=M, num_classes=2)
  batch = _batch(jax.random.PRNGKey(7), b=5)
  wv = np.random.default_rng(0).normal(size=(V, 2))

  def clf(z, sigma):  # closed form: logits_c = sum_l w[z_l, c] + sigma
    return jnp.asarray(wv, jnp.float32)[z].sum(axis=1) + sigma[:, None]

  key = jax.random.PRNGKey(8)
  t = jnp.array([0.1, 0.3, 0.5, 0.7, 0.95])
  loss, aux = losses.classifier_loss(clf, batch, key, cfg, times=t)
  # independent reference: the same key split and uniforms (transcribed), float64 numpy CE
  _, key_mask = jax.random.split(key)
  u = np.asarray(jax.random.uniform(key_mask, (5, L)))
  alpha = 1.0 - (1.0 - 1e-3) * np.asarray(t, np.float64)
  x = np.asarray(batch[:, :L])
  z = np.where(u < (1.0 - alpha)[:, None], M, x)
  sigma = -np.log1p(-(1.0 - 1e-3) * np.asarray(t, np.float64))
  logits = wv[z].sum(axis=1) + sigma[:, None]
  lse = np.log(np.exp(logits).sum(-1))
  y = np.asarray(batch[:, -1])
  ref = np.mean(lse - logits[np.arange(5), y])
  assert float(loss) == pytest.approx(ref, rel=1e-5)
  assert float(aux["accuracy"]) == pytest.approx(np.mean(logits.argmax(-1) == y))
  assert float(aux["mask_fraction"]) == pytest.approx(np.mean(z == M))
  with pytest.raises(ValueError, match="class logits"):
    losses.classifier_loss(lambda z, s: jnp.zeros((5, 3)), batch, key, cfg)


def test_qm9_configs_build():
  for preset in qm9.PRESETS:
    cfg = config_utils.experiment_from_config(qm9.get_config(preset))
    assert cfg.model.vocab_size == 35 and cfg.data.seq_len == 32
    assert cfg.loss.mask_id == (None if preset == "ar_cpu" else 2)
  p = config_utils.experiment_from_config(qm9.get_config("paper"))
  assert (p.model.hidden_size, p.model.num_blocks, p.model.num_heads, p.data.batch_size) == (768, 12, 12, 2048)
  assert p.loss.cond_dropout == 0.1 and p.model.num_classes == 2 and not p.model.time_conditioning
  c = config_utils.experiment_from_config(qm9.get_config("classifier_paper"))
  assert (c.model.head, c.model.hidden_size, c.model.num_blocks, c.loss.objective) == ("classifier", 512, 8, "classifier")
  bad = qm9.get_config("cpu")
  bad.loss.num_classes = 3
  with pytest.raises(ValueError, match="num_classes"):
    config_utils.experiment_from_config(bad)
  bad = qm9.get_config("cpu")
  bad.data.label = None
  with pytest.raises(ValueError, match="data.label"):
    config_utils.experiment_from_config(bad)
  bad = qm9.get_config("classifier_cpu")
  bad.model.head = "lm"
  with pytest.raises(ValueError, match="head"):
    config_utils.experiment_from_config(bad)
  with pytest.raises(ValueError, match="preset"):
    qm9.get_config("gpu")


@pytest.mark.parametrize("preset", ["cpu", pytest.param("classifier_cpu", marks=pytest.mark.slow)])
def test_trainer_step_with_labels(preset):
  """Real train / eval steps on labelled batches [B, L + 1]: finite losses; for the conditional
  model the labels reach the network through the trainer (flipping them changes the loss of the
  same state, once the zero-initialised adaLN layers have moved)."""
  from remdm_jax import sharding as mesh_lib
  from remdm_jax.training import trainer as T
  c = qm9.get_config(preset)
  c.model.update(hidden_size=32, num_heads=2, num_blocks=1, cond_dim=16)
  c.data.batch_size = 8
  c.optim.update(warmup_steps=0, schedule="constant", lr=1e-2)
  c.loss.cond_dropout = 0.0
  cfg = config_utils.experiment_from_config(c)
  tr = T.Trainer(cfg, mesh_lib.make_mesh((1, 1, 1), devices=jax.devices()[:1]))
  rng = np.random.default_rng(0)
  batch = np.concatenate([rng.integers(5, 35, (8, 32)), (np.arange(8) % 2)[:, None]], 1).astype(np.int32)
  flipped = batch.copy()
  flipped[:, -1] = 1 - flipped[:, -1]
  losses_by_batch = []
  for last in (batch, flipped):
    state = tr.init_state()
    for _ in range(3):
      state, metrics = tr.train_step(state, tr.put_batch(batch))
      assert np.isfinite(float(metrics["loss"]))
    ev = tr.evaluate(state, [last])
    state, metrics = tr.train_step(state, tr.put_batch(last))
    losses_by_batch.append((float(metrics["loss"]), ev["loss"]))
  (train_a, ev_a), (train_b, ev_b) = losses_by_batch
  assert np.isfinite(ev_a) and np.isfinite(ev_b)
  if preset == "classifier_cpu":
    assert "accuracy" in metrics
  # the labels matter (classifier: they are the targets; conditional MDLM: the conditioning)
  assert abs(train_a - train_b) > 1e-6 and abs(ev_a - ev_b) > 1e-6
