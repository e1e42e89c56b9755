"""Tests of the DiT denoiser (remdm_jax/models/dit.py) against SPEC §6 and a float64 numpy reference."""
import dataclasses
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec

from remdm_jax.models import dit
from remdm_jax.models.dit import DiTConfig
from remdm_jax.diffusion.schedules import NoiseSchedule
from remdm_jax.diffusion.subs import subs_log_probs

TINY = dict(vocab_size=37, max_seq_len=16, hidden_size=32, num_heads=4, num_blocks=2, cond_dim=16,
            compute_dtype="float32")


def _flat(params) -> dict:
  return {"/".join(str(p) for p in path): np.asarray(v[...]) for path, v in nnx.to_flat_state(params)}


def _randomize(params, key, scale=0.2):
  """Every parameter (zero-initialised adaLN / output too) replaced by N(0, scale^2) draws,
  norms by 1 + N(0, scale^2)."""
  flat = list(nnx.to_flat_state(params))
  keys = jax.random.split(key, len(flat))
  out = []
  for k, (path, v) in zip(keys, flat):
    noise = scale * jax.random.normal(k, v.shape, jnp.float32)
    out.append((path, v.replace(noise + 1.0 if "norm" in str(path) else noise)))
  return nnx.from_flat_state(out)


# ---------------------------------------------------------------------------------------------
# float64 numpy reference of SPEC §6.2, over our parameter names.


def _np_layernorm(x, w):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + 1e-5) * w


def _np_silu(x):
  return x / (1.0 + np.exp(-x))


def _np_gelu_tanh(x):
  return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def _np_rotary(x, theta):
  """x [B, L, N, D]; theta [L, D/2]; rotate-half form."""
  d = x.shape[-1] // 2
  cos, sin = np.cos(theta)[None, :, None, :], np.sin(theta)[None, :, None, :]
  x1, x2 = x[..., :d], x[..., d:]
  return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def np_dit_forward(p: dict, cfg: DiTConfig, tokens, sigma):
  """float64 forward of SPEC §6.2 with our (transposed) kernels; returns [B, L, V]."""
  p = {k: np.asarray(v, np.float64) for k, v in p.items()}
  b, l = tokens.shape
  h, n = cfg.hidden_size, cfg.num_heads
  d = h // n
  sigma = np.asarray(sigma, np.float64)
  if not cfg.time_conditioning or cfg.causal:
    sigma = np.zeros_like(sigma)
  x = p["vocab_embed/embedding"][tokens]
  k = np.arange(128)
  f = np.exp(-np.log(10000.0) * k / 128)
  emb = np.concatenate([np.cos(sigma[:, None] * f), np.sin(sigma[:, None] * f)], -1)
  c = _np_silu(emb @ p["sigma_map/mlp/0/kernel"] + p["sigma_map/mlp/0/bias"])
  c = _np_silu(c @ p["sigma_map/mlp/2/kernel"] + p["sigma_map/mlp/2/bias"])
  inv_freq = 10000.0 ** (-2.0 * np.arange(d // 2) / d)
  theta = np.arange(l)[:, None] * inv_freq[None, :]
  for i in range(cfg.num_blocks):
    q_ = f"blocks/{i}/"
    mod = c @ p[q_ + "adaLN_modulation/kernel"] + p[q_ + "adaLN_modulation/bias"]
    sh1, sc1, g1, sh2, sc2, g2 = [m[:, None, :] for m in np.split(mod, 6, -1)]
    y = _np_layernorm(x, p[q_ + "norm1/weight"]) * (1 + sc1) + sh1
    qkv = (y @ p[q_ + "attn_qkv/kernel"]).reshape(b, l, 3, n, d)
    q, kk, v = _np_rotary(qkv[:, :, 0], theta), _np_rotary(qkv[:, :, 1], theta), qkv[:, :, 2]
    s = np.einsum("bqnd,bknd->bnqk", q, kk) / np.sqrt(d)
    if cfg.causal:
      s = np.where(np.tril(np.ones((l, l), bool)), s, -np.inf)
    a = np.exp(s - s.max(-1, keepdims=True))
    a = a / a.sum(-1, keepdims=True)
    o = np.einsum("bnqk,bknd->bqnd", a, v).reshape(b, l, h) @ p[q_ + "attn_out/kernel"]
    x = x + g1 * o
    y = _np_layernorm(x, p[q_ + "norm2/weight"]) * (1 + sc2) + sh2
    y = _np_gelu_tanh(y @ p[q_ + "mlp/0/kernel"] + p[q_ + "mlp/0/bias"])
    x = x + g2 * (y @ p[q_ + "mlp/2/kernel"] + p[q_ + "mlp/2/bias"])
  mod = c @ p["output_layer/adaLN_modulation/kernel"] + p["output_layer/adaLN_modulation/bias"]
  shift, scale = [m[:, None, :] for m in np.split(mod, 2, -1)]
  y = _np_layernorm(x, p["output_layer/norm_final/weight"]) * (1 + scale) + shift
  return y @ p["output_layer/linear/kernel"] + p["output_layer/linear/bias"]


@pytest.fixture(scope="module")
def tiny():
  cfg = DiTConfig(**TINY)
  graphdef, params = dit.init_params(cfg, jax.random.key(0))
  return cfg, graphdef, _randomize(params, jax.random.key(1))


def _inputs(cfg, b=3, l=16, seed=0):
  rng = np.random.RandomState(seed)
  return (jnp.asarray(rng.randint(0, cfg.vocab_size, (b, l)), jnp.int32),
          jnp.asarray([0.0, 0.7, 4.0][:b], jnp.float32))


# ---------------------------------------------------------------------------------------------


def test_config_presets_and_json_round_trip():
  for name in ("tiny", "bible_byte", "small"):
    cfg = DiTConfig.preset(name)
    assert DiTConfig.from_dict(cfg.to_dict()) == cfg
  assert DiTConfig.preset("small").vocab_size == 50258
  assert 1e6 < dit.count_params(DiTConfig.preset("bible_byte")) < 1e7
  assert DiTConfig.preset("tiny", vocab_size=11).vocab_size == 11
  with pytest.raises(ValueError, match="bogus"):
    DiTConfig.from_dict({**DiTConfig.preset("tiny").to_dict(), "bogus": 1})
  with pytest.raises(ValueError, match="num_heads"):
    DiTConfig(vocab_size=10, hidden_size=30, num_heads=4)
  with pytest.raises(ValueError, match="compute_dtype"):
    DiTConfig(vocab_size=10, compute_dtype="float64")
  with pytest.raises(ValueError, match="nope"):
    DiTConfig.preset("nope")


def test_param_count_small():
  assert dit.count_params(DiTConfig.preset("small")) == 169_627_218
  assert dit.count_params(DiTConfig.preset("small", vocab_size=50258)) == 169_627_218
  _, abstract = dit.abstract_params(DiTConfig.preset("small"))
  assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract)) == 169_627_218


@pytest.mark.parametrize("overrides", [dict(), dict(mlp_ratio=2, cond_dim=8, num_blocks=3)])
def test_param_count_matches_initialised_tree(overrides):
  cfg = DiTConfig(**{**TINY, **overrides})
  _, params = dit.init_params(cfg, jax.random.key(0))
  leaves = jax.tree.leaves(params)
  assert all(x.dtype == jnp.float32 for x in leaves)
  assert sum(x.size for x in leaves) == dit.count_params(cfg)


def test_init_statistics_and_zero_logits():
  cfg = DiTConfig(**TINY)
  graphdef, params = dit.init_params(cfg, jax.random.key(0))
  p = _flat(params)
  for name, v in p.items():
    if "adaLN_modulation" in name or name.startswith("output_layer/linear"):
      assert np.all(v == 0), name
    elif "norm" in name:
      assert np.all(v == 1), name
  assert np.abs(p["vocab_embed/embedding"]).max() <= 1 / math.sqrt(cfg.hidden_size)
  assert np.abs(p["blocks/0/mlp/2/kernel"]).max() <= 1 / math.sqrt(cfg.mlp_dim)
  assert np.abs(p["blocks/0/mlp/2/kernel"]).max() > 0.5 / math.sqrt(cfg.mlp_dim)
  tokens, sigma = _inputs(cfg)
  out = dit.make_apply_fn(graphdef)(params, tokens, sigma)
  chex.assert_shape(out, (3, 16, cfg.vocab_size))
  chex.assert_type(out, jnp.float32)
  np.testing.assert_array_equal(np.asarray(out), 0.0)


@pytest.mark.parametrize("time_conditioning,causal", [(False, False), (True, False), (False, True)])
def test_forward_matches_float64_numpy(time_conditioning, causal):
  cfg = DiTConfig(**{**TINY, "time_conditioning": time_conditioning, "causal": causal})
  graphdef, params = dit.init_params(cfg, jax.random.key(0))
  params = _randomize(params, jax.random.key(3))
  tokens, sigma = _inputs(cfg)
  ref = np_dit_forward(_flat(params), cfg, np.asarray(tokens), np.asarray(sigma))
  with jax.default_matmul_precision("highest"):
    out = jax.jit(dit.make_apply_fn(graphdef))(params, tokens, sigma)
  chex.assert_type(out, jnp.float32)
  assert np.abs(ref).max() > 0.5  # non-trivial logits
  np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-5)


def test_rotary_and_time_embedding_formulas():
  cos, sin = dit.rotary_cos_sin(5, 8)
  theta = np.arange(5)[:, None] * 10000.0 ** (-np.arange(0, 8, 2) / 8)[None, :]
  np.testing.assert_allclose(np.asarray(cos[:, :4]), np.cos(theta), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(sin[:, 4:]), np.sin(theta), rtol=1e-6, atol=1e-7)
  x = jax.random.normal(jax.random.key(0), (1, 5, 2, 8))
  rot = np.asarray(dit.apply_rotary(x, cos, sin))
  np.testing.assert_allclose(rot, _np_rotary(np.asarray(x, np.float64), theta), atol=1e-6)
  emb = np.asarray(dit.timestep_embedding(jnp.zeros((2,))))
  np.testing.assert_array_equal(emb[:, :128], 1.0)
  np.testing.assert_array_equal(emb[:, 128:], 0.0)


def test_time_conditioning_off_ignores_sigma_on_depends(tiny):
  cfg, graphdef, params = tiny
  tokens, _ = _inputs(cfg, b=2)
  apply = jax.jit(dit.make_apply_fn(graphdef))
  a = apply(params, tokens, jnp.array([0.0, 0.0]))
  b = apply(params, tokens, jnp.array([1.5, 7.0]))
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  cfg_t = DiTConfig(**{**TINY, "time_conditioning": True})
  graphdef_t, _ = dit.init_params(cfg_t, jax.random.key(0))
  apply_t = jax.jit(dit.make_apply_fn(graphdef_t))
  a = apply_t(params, tokens, jnp.array([0.0, 0.0]))
  b = apply_t(params, tokens, jnp.array([1.5, 7.0]))
  assert np.abs(np.asarray(a) - np.asarray(b)).min(axis=-1).max() > 1e-3
  # sigma = 0 with time conditioning reproduces the unconditioned network.
  np.testing.assert_allclose(np.asarray(a), np.asarray(apply(params, tokens, jnp.zeros(2))),
                             atol=1e-6)


def test_bidirectional_vs_causal():
  tokens, sigma = _inputs(DiTConfig(**TINY), b=2)
  changed = tokens.at[:, 10:].set((tokens[:, 10:] + 1) % TINY["vocab_size"])
  for causal in (False, True):
    cfg = DiTConfig(**{**TINY, "causal": causal})
    graphdef, params = dit.init_params(cfg, jax.random.key(0))
    params = _randomize(params, jax.random.key(2))
    apply = jax.jit(dit.make_apply_fn(graphdef))
    a, b = np.asarray(apply(params, tokens, sigma)), np.asarray(apply(params, changed, sigma))
    prefix_diff = np.abs(a[:, :10] - b[:, :10]).max()
    if causal:
      assert prefix_diff == 0.0
      assert np.abs(a[:, 10:] - b[:, 10:]).max() > 1e-3
    else:
      assert prefix_diff > 1e-3


def test_dropout(tiny):
  cfg, graphdef, params = tiny
  tokens, sigma = _inputs(cfg)
  apply = jax.jit(dit.make_apply_fn(graphdef))
  det1, det2 = apply(params, tokens, sigma), apply(params, tokens, sigma, None)
  np.testing.assert_array_equal(np.asarray(det1), np.asarray(det2))
  d1 = apply(params, tokens, sigma, jax.random.key(5))
  d2 = apply(params, tokens, sigma, jax.random.key(5))
  d3 = apply(params, tokens, sigma, jax.random.key(6))
  np.testing.assert_array_equal(np.asarray(d1), np.asarray(d2))
  assert np.abs(np.asarray(d1) - np.asarray(det1)).max() > 1e-3
  assert np.abs(np.asarray(d1) - np.asarray(d3)).max() > 1e-3
  # Dropout also flows through a gradient.
  grads = jax.grad(lambda p: apply(p, tokens, sigma, jax.random.key(5)).sum())(params)
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
  # The module holds only Params: no RNG state.
  model = nnx.merge(graphdef, params)
  assert all(isinstance(v, nnx.Param) for _, v in nnx.to_flat_state(nnx.state(model)))


def test_logical_axis_names(tiny):
  cfg, _, params = tiny
  specs = dit.logical_partition_specs(params)
  flat = dict(nnx.to_flat_state(specs))
  assert len(flat) == len(list(nnx.to_flat_state(params)))
  for path, v in nnx.to_flat_state(params):
    names = v.get_metadata()["out_sharding"]
    assert len(names) == v.ndim, path
    assert all(n is None or n in dit.LOGICAL_AXES for n in names), (path, names)
    assert any(n is not None for n in names), path
    assert flat[path].get_value() == PartitionSpec(*names)
  get = lambda *p: flat[p].get_value()
  assert get("vocab_embed", "embedding") == PartitionSpec("vocab", "embed")
  assert get("blocks", 0, "attn_qkv", "kernel") == PartitionSpec("embed", "qkv")
  assert get("blocks", 1, "attn_out", "kernel") == PartitionSpec("heads", "embed")
  assert get("blocks", 0, "mlp", "0", "kernel") == PartitionSpec("embed", "mlp")
  assert get("blocks", 0, "adaLN_modulation", "kernel") == PartitionSpec("cond", "adaln")
  assert get("sigma_map", "mlp", "0", "kernel") == PartitionSpec("freq", "cond")
  assert get("output_layer", "linear", "kernel") == PartitionSpec("embed", "vocab")
  # The names map to a mesh: shard the params over 8 fake devices and run the model.
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("data", "model"))
  rules = {"mlp": "model", "qkv": "model", "heads": "model"}
  shardings = jax.tree.map(
    lambda s: jax.sharding.NamedSharding(mesh, PartitionSpec(*(rules.get(n) for n in s))), specs)
  sharded = jax.device_put(params, shardings)
  assert sharded["blocks"][0]["mlp"]["0"]["kernel"][...].sharding.spec == PartitionSpec(None, "model")
  graphdef, _ = dit.init_params(cfg, jax.random.key(0))
  tokens, sigma = _inputs(cfg, b=2)
  apply = jax.jit(dit.make_apply_fn(graphdef))
  np.testing.assert_allclose(np.asarray(apply(sharded, tokens, sigma)),
                             np.asarray(apply(params, tokens, sigma)), rtol=1e-5, atol=1e-5)


def test_denoise_fn_with_subs(tiny):
  cfg, graphdef, params = tiny
  mask_id = cfg.vocab_size - 1
  tokens, _ = _inputs(cfg, b=2)
  tokens = tokens.at[:, ::2].set(mask_id)
  t = jnp.array([0.3, 0.9])
  denoise = dit.make_denoise_fn(graphdef, NoiseSchedule("loglinear"))
  logits = jax.jit(denoise)(params, tokens, t)
  chex.assert_shape(logits, (2, 16, cfg.vocab_size))
  direct = dit.make_apply_fn(graphdef)(params, tokens, NoiseSchedule("loglinear").sigma(t))
  np.testing.assert_allclose(np.asarray(logits), np.asarray(direct), rtol=1e-5, atol=1e-5)
  logp = subs_log_probs(logits, tokens, mask_id)
  probs = np.exp(np.asarray(logp))
  np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
  assert np.all(probs[:, ::2, mask_id] == 0)
  np.testing.assert_array_equal(probs[:, 1::2].argmax(-1), np.asarray(tokens[:, 1::2]))


class CastForComputeTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_cast_for_compute_bf16(self):
    cfg = DiTConfig(**TINY)
    graphdef, params = dit.init_params(cfg, jax.random.key(0))
    params = _randomize(params, jax.random.key(1))
    cfg16 = DiTConfig(**{**TINY, "compute_dtype": "bfloat16"})
    graphdef16, _ = dit.init_params(cfg16, jax.random.key(0))
    cast = dit.cast_for_compute(params, cfg16)
    dtypes = {"/".join(map(str, p)): v.dtype for p, v in nnx.to_flat_state(cast)}
    assert dtypes["blocks/0/attn_qkv/kernel"] == jnp.bfloat16
    assert dtypes["blocks/1/mlp/2/kernel"] == jnp.bfloat16
    assert dtypes["output_layer/linear/kernel"] == jnp.bfloat16
    assert dtypes["sigma_map/mlp/0/kernel"] == jnp.float32
    assert dtypes["blocks/0/adaLN_modulation/kernel"] == jnp.float32
    assert dtypes["vocab_embed/embedding"] == jnp.float32
    tokens, sigma = _inputs(cfg)
    apply16 = self.variant(dit.make_apply_fn(graphdef16))
    a = apply16(params, tokens, sigma)
    b = apply16(cast, tokens, sigma)
    chex.assert_type(a, jnp.float32)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)
    ref = dit.make_apply_fn(graphdef)(params, tokens, sigma)
    scale = np.abs(np.asarray(ref)).max()
    err = np.abs(np.asarray(a) - np.asarray(ref)).max()
    assert 0 < err < 0.05 * scale  # bf16 matmuls: close to, but not equal to, float32


def test_bad_inputs(tiny):
  cfg, graphdef, params = tiny
  apply = dit.make_apply_fn(graphdef)
  with pytest.raises(ValueError, match="max_seq_len"):
    apply(params, jnp.zeros((1, 17), jnp.int32), jnp.zeros(1))
  with pytest.raises(ValueError, match="sigma"):
    apply(params, jnp.zeros((2, 4), jnp.int32), jnp.zeros(3))
  with pytest.raises(ValueError, match="tokens"):
    apply(params, jnp.zeros((2, 4), jnp.float32), jnp.zeros(2))
  with pytest.raises(ValueError, match="tokens"):
    apply(params, jnp.zeros((4,), jnp.int32), jnp.zeros(2))


def test_flops_per_token_hand_count():
  cfg = DiTConfig(vocab_size=10, hidden_size=8, num_heads=2, num_blocks=1, cond_dim=4,
                  mlp_ratio=2)
  seq = 4
  # Per token: qkv 8*24, out 8*8, mlp 8*16 + 16*8, q k^T 4*8, a v 4*8, output 8*10 (MACs).
  macs = 8 * 24 + 8 * 8 + 8 * 16 + 16 * 8 + 4 * 8 + 4 * 8 + 8 * 10
  # Per sequence: sigma map 256*4 + 4*4, adaLN 4*48 + 4*16, spread over 4 tokens.
  macs += (256 * 4 + 4 * 4 + 4 * 48 + 4 * 16) / seq
  assert dit.flops_per_token(cfg, seq, training=False) == pytest.approx(2 * macs)
  assert dit.flops_per_token(cfg, seq) == pytest.approx(6 * macs)
  small = DiTConfig.preset("small")
  f = dit.flops_per_token(small, 1024)
  # Close to the 6N + 12 n_layer H L rule, N = per-token matmul weights (12 H^2 per block + H V).
  n = 12 * 12 * 768**2 + 768 * small.vocab_size
  assert abs(f / (6 * n + 12 * 12 * 768 * 1024) - 1) < 1e-3


# ---------------------------------------------------------------------------------------------
# Training-speed features: 16-bit dropout, vocab padding at compute time, mixed-precision backward.


def test_dropout_keep_threshold_and_statistics():
  """keep iff 16 random bits < t = round(0.9 * 2^16): P(keep) = t/2^16, kept values x 2^16/t."""
  assert dit.dropout_keep_threshold(0.1) == 58982
  assert dit.dropout_keep_threshold(0.5) == 32768
  assert dit.dropout_keep_threshold(0.0) == 65536
  assert dit.dropout_keep_threshold(1.0 - 1e-9) == 1
  t = dit.dropout_keep_threshold(0.1)
  x = jnp.ones((64, 64, 64), jnp.float32)
  bits = dit._dropout_bits(jax.random.key(0), 0.1, x.shape)
  chex.assert_type(bits, jnp.uint32)
  outs = [np.asarray(dit._dropout(x, 0.1, bits, b)) for b in (0, 1)]
  n = x.size
  for out in outs:
    kept = out != 0
    np.testing.assert_allclose(out[kept], 2**16 / t, rtol=1e-7)
    # keep fraction within 5 standard deviations of t / 2^16
    p = t / 2**16
    assert abs(kept.mean() - p) < 5 * math.sqrt(p * (1 - p) / n)
  # the two branches use independent halves of the same bits
  a, b = outs[0] != 0, outs[1] != 0
  assert abs((a & b).mean() - p * p) < 5 * math.sqrt(p * p * (1 - p * p) / n)
  assert dit._dropout(x, 0.1, None, 0) is x
  assert dit._dropout_bits(None, 0.1, x.shape) is None
  assert dit._dropout_bits(jax.random.key(0), 0.0, x.shape) is None


def test_vocab_pad_multiple_same_logits_and_shapes(tiny):
  cfg, graphdef, params = tiny
  tokens, sigma = _inputs(cfg)
  cfg_pad = DiTConfig(**{**TINY, "vocab_pad_multiple": 16})  # 37 -> 48 columns
  gd_pad, params_pad = dit.init_params(cfg_pad, jax.random.key(0))
  shapes = lambda p: {"/".join(map(str, k)): v.shape for k, v in nnx.to_flat_state(p)}
  assert shapes(params_pad) == shapes(params)  # stored parameters keep the official shapes
  for dtype in ("float32", "bfloat16"):
    gd = dit.init_params(DiTConfig(**{**TINY, "compute_dtype": dtype}), jax.random.key(0))[0]
    gdp = dit.init_params(DiTConfig(**{**TINY, "compute_dtype": dtype, "vocab_pad_multiple": 16}),
                          jax.random.key(0))[0]
    a = jax.jit(dit.make_apply_fn(gd))(params, tokens, sigma)
    b = jax.jit(dit.make_apply_fn(gdp))(params, tokens, sigma)
    chex.assert_shape(b, (3, 16, cfg.vocab_size))
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match="vocab_pad_multiple"):
    DiTConfig(**{**TINY, "vocab_pad_multiple": 0})


class MixedMatmulTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_mixed_matmul_value_and_grads(self):
    """Forward = bf16 matmul with f32 output; grads = bf16-rounded cotangent matmuls (float64 ref)."""
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(k1, (2, 5, 8), jnp.float32).astype(jnp.bfloat16)
    w = jax.random.normal(k2, (8, 6), jnp.float32)
    g = jax.random.normal(k3, (2, 5, 6), jnp.float32)
    f = self.variant(lambda x, w: jnp.sum(dit.mixed_matmul(x, w) * g))
    y = self.variant(dit.mixed_matmul)(x, w)
    chex.assert_type(y, jnp.float32)
    dx, dw = jax.grad(f, argnums=(0, 1))(x, w)
    chex.assert_type(dx, jnp.bfloat16)
    chex.assert_type(dw, jnp.float32)
    xn = np.asarray(x.astype(jnp.float32), np.float64)
    wn = np.asarray(w.astype(jnp.bfloat16).astype(jnp.float32), np.float64)
    gn = np.asarray(g.astype(jnp.bfloat16).astype(jnp.float32), np.float64)
    np.testing.assert_allclose(np.asarray(y), xn @ wn, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(dw), np.einsum("bli,blo->io", xn, gn), rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(np.asarray(dx.astype(jnp.float32)), gn @ wn.T, rtol=1e-2,
                               atol=1e-2)  # dx is rounded to bf16

  def test_model_grads_close_to_float32_backward(self):
    """backward_in_compute_dtype only changes gradients at bf16 rounding level, not the forward."""
    cfg = DiTConfig(**{**TINY, "compute_dtype": "bfloat16"})
    cfg_f32 = DiTConfig(**{**TINY, "compute_dtype": "bfloat16", "backward_in_compute_dtype": False})
    gd, params = dit.init_params(cfg, jax.random.key(0))
    params = _randomize(params, jax.random.key(1))
    gd32 = dit.init_params(cfg_f32, jax.random.key(0))[0]
    tokens, sigma = _inputs(cfg)
    loss = lambda gdef: jax.jit(jax.value_and_grad(
        lambda p: jnp.sum(dit.make_apply_fn(gdef)(p, tokens, sigma, jax.random.key(2)) ** 2)))
    (va, ga), (vb, gb) = loss(gd)(params), loss(gd32)(params)
    assert float(va) == float(vb)
    for (path, a), (_, b) in zip(nnx.to_flat_state(ga), nnx.to_flat_state(gb)):
      chex.assert_type(a[...], jnp.float32)
      a, b = np.asarray(a[...]), np.asarray(b[...])
      assert np.abs(a - b).max() <= 0.03 * np.abs(b).max() + 1e-6, path


# ---------------------------------------------------------------------------------------------
# Issue 8 items 7 and 10: padded output vocabulary keeps float32 gradients; remat / scan_blocks.


def _loss_grads(cfg, params, tokens, sigma, key=None):
  apply = dit.make_apply_fn(dit.abstract_params(cfg)[0])

  def f(p):
    logits = apply(p, tokens, sigma, dropout_key=key)
    return jnp.mean(jax.nn.log_softmax(logits)[..., 7]) + 1e-3 * jnp.mean(logits**2), logits
  (loss, out), g = jax.jit(jax.value_and_grad(f, has_aux=True))(params)
  return loss, g, out


def test_vocab_padding_keeps_float32_output_kernel_gradient():
  """bf16 compute, V = 300 padded to 384: the kernel gradient equals the unpadded one exactly
  (it used to come back rounded to bf16: relative error ~3e-3, every value on the bf16 grid)."""
  cfg = DiTConfig.preset("tiny", vocab_size=300, dropout=0.0, compute_dtype="bfloat16")
  _, params = dit.init_params(cfg, jax.random.PRNGKey(0))
  params = _randomize(params, jax.random.PRNGKey(1), 0.05)
  tokens = jax.random.randint(jax.random.PRNGKey(2), (2, 16), 0, 300)
  sigma = jnp.zeros((2,))
  _, g0, o0 = _loss_grads(cfg, params, tokens, sigma)
  _, g1, o1 = _loss_grads(dataclasses.replace(cfg, vocab_pad_multiple=128), params, tokens, sigma)
  np.testing.assert_array_equal(np.asarray(o0), np.asarray(o1))
  k0 = np.asarray(g0["output_layer"]["linear"]["kernel"][...])
  k1 = np.asarray(g1["output_layer"]["linear"]["kernel"][...])
  assert k1.dtype == np.float32
  np.testing.assert_allclose(k1, k0, rtol=1e-6, atol=1e-9 * np.abs(k0).max())
  assert not np.array_equal(k1.astype(jnp.bfloat16).astype(np.float32), k1)  # not bf16-rounded
  for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("with_dropout", [pytest.param(False, marks=pytest.mark.slow), True])
def test_remat_and_scan_blocks_same_outputs_and_grads(with_dropout):
  """Same stored parameters (tree unchanged), same logits (bitwise), same gradients."""
  cfg = DiTConfig.preset("tiny", dropout=0.1, compute_dtype="float32", time_conditioning=True)
  _, params = dit.init_params(cfg, jax.random.PRNGKey(0))
  params = _randomize(params, jax.random.PRNGKey(1), 0.05)
  tokens = jax.random.randint(jax.random.PRNGKey(2), (2, 16), 0, 257)
  sigma = jnp.array([0.5, 2.0])
  key = jax.random.PRNGKey(3) if with_dropout else None
  l0, g0, o0 = _loss_grads(cfg, params, tokens, sigma, key)
  for kw in (dict(remat=True), dict(scan_blocks=True), dict(remat=True, scan_blocks=True)):
    c = dataclasses.replace(cfg, **kw)
    assert jax.tree.structure(dit.abstract_params(c)[1]) == jax.tree.structure(params)
    l1, g1, o1 = _loss_grads(c, params, tokens, sigma, key)
    np.testing.assert_allclose(np.asarray(o1), np.asarray(o0), rtol=0, atol=1e-6, err_msg=str(kw))
    np.testing.assert_allclose(float(l1), float(l0), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
      np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-6,
                                 err_msg=str(kw))
  with pytest.raises(ValueError, match="DiTConfig.remat=1 must be a bool"):
    DiTConfig.preset("tiny", remat=1)
