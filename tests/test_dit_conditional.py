"""DiT options for QM9 (SPEC_DOMAINS §M.3): class conditioning with a null class, classifier head."""
import zlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from remdm_jax.models import dit
from remdm_jax.models.dit import DiTConfig

BASE = dict(vocab_size=35, max_seq_len=32, hidden_size=32, num_heads=2, num_blocks=2, cond_dim=16,
            dropout=0.0, compute_dtype="float32")


def _toks(key, b=3, l=12):
  return jax.random.randint(key, (b, l), 0, 35, dtype=jnp.int32)


def _perturb(params, seed):
  """Random offsets on every parameter (the zero-initialised adaLN / output layers would make all
  logits 0 and every comparison trivial)."""
  def f(path, v):  # the offset depends on the parameter's path only
    k = jax.random.fold_in(jax.random.PRNGKey(seed), zlib.crc32(jax.tree_util.keystr(path).encode()))
    return v + 0.05 * jax.random.normal(k, v.shape)
  return jax.tree_util.tree_map_with_path(f, params)


def _leaves_by_path(state):
  return {jax.tree_util.keystr(p): np.asarray(v) for p, v in
          jax.tree_util.tree_flatten_with_path(state)[0]}


def test_unconditional_unchanged_and_zero_label_table():
  key = jax.random.PRNGKey(0)
  g0, p0 = dit.init_params(DiTConfig(**BASE), key)
  g2, p2 = dit.init_params(DiTConfig(**BASE, num_classes=2), key)
  a, b = _leaves_by_path(p0), _leaves_by_path(p2)
  extra = sorted(set(b) - set(a))
  assert set(a) <= set(b) and len(extra) == 1 and "label_embed" in extra[0]
  for k in a:  # the label table is drawn after the trunk: the shared params are identical
    np.testing.assert_array_equal(a[k], b[k])
  assert b[extra[0]].shape == (3, 16)
  p0, p2 = _perturb(p0, 9), _perturb(p2, 9)  # same offsets on the shared leaves
  for k, v in _leaves_by_path(p0).items():
    np.testing.assert_array_equal(v, _leaves_by_path(p2)[k])
  toks, sigma = _toks(jax.random.PRNGKey(1)), jnp.array([0.0, 0.5, 2.0])
  out0 = dit.make_apply_fn(g0)(p0, toks, sigma)
  assert float(jnp.abs(out0).max()) > 1e-3
  # SiLU(0) = 0: with a zero label table the conditional model is bitwise the unconditional one.
  p2z = jax.tree_util.tree_map_with_path(
      lambda path, v: jnp.zeros_like(v) if "label_embed" in jax.tree_util.keystr(path) else v, p2)
  out2 = dit.make_apply_fn(g2)(p2z, toks, sigma, labels=jnp.array([0, 1, 2]))
  np.testing.assert_array_equal(np.asarray(out0), np.asarray(out2))
  chex.assert_shape(out0, (3, 12, 35))
  chex.assert_type(out0, jnp.float32)
  assert dit.count_params(DiTConfig(**BASE, num_classes=2)) == sum(x.size for x in jax.tree.leaves(p2))


def test_label_conditioning_matches_manual_forward():
  cfg = DiTConfig(**BASE, num_classes=2, time_conditioning=True)
  g, p = dit.init_params(cfg, jax.random.PRNGKey(2))
  p = _perturb(p, 3)
  toks, sigma = _toks(jax.random.PRNGKey(3)), jnp.array([0.1, 0.7, 1.5])
  labels = jnp.array([1, 0, 2], jnp.int32)
  out = dit.make_apply_fn(g)(p, toks, sigma, labels=labels)
  m = nnx.merge(g, p)
  table = np.asarray(m.label_embed.embedding_table[...])
  c = m.sigma_map(sigma) + jax.nn.silu(jnp.asarray(table[np.asarray(labels)]))
  x = m.vocab_embed(toks)
  cos, sin = dit.rotary_cos_sin(12, cfg.head_dim)
  for blk in m.blocks:
    x = blk(x, c, cos, sin, None)
  ref = m.output_layer(x, c, jnp.float32)
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-6, atol=1e-6)
  # null class: labels=None == labels=C; a real label changes the logits.
  null = dit.make_apply_fn(g)(p, toks, sigma)
  np.testing.assert_array_equal(
      np.asarray(null), np.asarray(dit.make_apply_fn(g)(p, toks, sigma, labels=jnp.full((3,), 2))))
  assert not np.allclose(np.asarray(null[0]), np.asarray(out[0]))
  # make_cond_denoise_fn: t -> sigma via the loglinear schedule, labels forwarded.
  from remdm_jax.diffusion.schedules import NoiseSchedule
  t = jnp.array([0.2, 0.5, 0.9])
  den = dit.make_cond_denoise_fn(g)(p, toks, t, labels)
  ref2 = dit.make_apply_fn(g)(p, toks, NoiseSchedule("loglinear").sigma(t), labels=labels)
  np.testing.assert_array_equal(np.asarray(den), np.asarray(ref2))


def test_causal_conditional_is_causal():
  cfg = DiTConfig(**BASE, num_classes=2, causal=True)
  g, p = dit.init_params(cfg, jax.random.PRNGKey(4))
  p = _perturb(p, 4)
  toks = _toks(jax.random.PRNGKey(5), b=2)
  labels = jnp.array([1, 1])
  f = dit.make_apply_fn(g)
  a = f(p, toks, jnp.zeros(2), labels=labels)
  b = f(p, toks.at[:, 8:].set(7), jnp.zeros(2), labels=labels)
  np.testing.assert_allclose(np.asarray(a[:, :8]), np.asarray(b[:, :8]), atol=1e-5)
  assert not np.allclose(np.asarray(a), np.asarray(f(p, toks, jnp.zeros(2), labels=jnp.array([0, 0]))))


def test_classifier_head():
  cfg = DiTConfig(**BASE, num_classes=3, head="classifier")
  g, p = dit.init_params(cfg, jax.random.PRNGKey(6))
  p = _perturb(p, 6)
  names = _leaves_by_path(p)
  assert not any("output_layer" in k or "label_embed" in k for k in names)
  assert sum(v.size for v in names.values()) == dit.count_params(cfg)
  toks = _toks(jax.random.PRNGKey(7), b=4)
  clf = dit.make_classifier_fn(g)
  logp = clf(p, toks, jnp.array([0.1, 0.5, 0.9, 1.0]))
  chex.assert_shape(logp, (4, 3))
  chex.assert_type(logp, jnp.float32)
  np.testing.assert_allclose(np.asarray(jax.nn.logsumexp(logp, axis=-1)), 0.0, atol=1e-6)
  # not time-conditioned: t does not matter
  np.testing.assert_array_equal(np.asarray(logp), np.asarray(clf(p, toks, jnp.zeros(4))))
  # manual: mean over positions of LN(x) w, then the linear head
  m = nnx.merge(g, p)
  c = m.sigma_map(jnp.zeros(4))
  x = m.vocab_embed(toks)
  cos, sin = dit.rotary_cos_sin(12, cfg.head_dim)
  for blk in m.blocks:
    x = blk(x, c, cos, sin, None)
  h = np.asarray(m.classifier_head.norm_final(x)).mean(axis=1)
  ref = h @ np.asarray(m.classifier_head.linear.kernel[...]) + np.asarray(m.classifier_head.linear.bias[...])
  ref = ref - np.log(np.exp(ref).sum(-1, keepdims=True))
  np.testing.assert_allclose(np.asarray(logp), ref, rtol=1e-5, atol=1e-5)
  # gradient reaches the trunk
  grads = jax.grad(lambda q: clf(q, toks, jnp.zeros(4))[:, 1].sum())(p)
  assert float(jnp.abs(grads["blocks"][0]["mlp"]["0"]["kernel"][...]).sum()) > 0


def test_config_errors():
  with pytest.raises(ValueError, match="num_classes"):
    DiTConfig(**BASE, num_classes=-1)
  with pytest.raises(ValueError, match="head"):
    DiTConfig(**BASE, head="pool")
  with pytest.raises(ValueError, match="classifier"):
    DiTConfig(**BASE, head="classifier", num_classes=1)
  with pytest.raises(ValueError, match="classifier"):
    DiTConfig(**BASE, head="classifier", num_classes=2, causal=True)
  g, p = dit.init_params(DiTConfig(**BASE), jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match="not class-conditional"):
    dit.make_apply_fn(g)(p, _toks(jax.random.PRNGKey(0)), jnp.zeros(3), labels=jnp.zeros(3, jnp.int32))
  g2, p2 = dit.init_params(DiTConfig(**BASE, num_classes=2), jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match="labels must be int"):
    dit.make_apply_fn(g2)(p2, _toks(jax.random.PRNGKey(0)), jnp.zeros(3), labels=jnp.zeros(2, jnp.int32))
  cfg = DiTConfig(**BASE, num_classes=2, head="classifier")
  assert DiTConfig.from_dict(cfg.to_dict()) == cfg
