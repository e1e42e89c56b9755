"""The LLaDA KV cache (llm/model.py prefill / window, issue 16 item 1): prefill = the forward pass
plus every layer's keys / values; a window over unchanged tokens reproduces the prefill; after a
window step the recomputed positions equal a fresh prefill of the new sequence where the
architecture makes that exact (layer 0 always, every layer for a one-layer model) and nothing
outside the window moves; the cache is sharded by the logical-axis rules."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from remdm_jax import sharding as mesh_lib
from remdm_jax.llm import model as M

V = 64


def tiny(**kw):
  base = dict(vocab_size=V, mask_token_id=63, eos_token_id=62, eot_token_id=61)
  base.update(kw)
  return M.LLaDAConfig.tiny(**base)


def batch(L=20, seed=1):
  x = jax.random.randint(jax.random.key(seed), (3, L), 0, 60)
  am = jnp.ones((3, L), jnp.int32).at[0, :3].set(0).at[2, :1].set(0)  # left padding
  return x, am


@pytest.mark.parametrize("kw", [dict(), dict(scan_layers=True, n_kv_heads=1),
                                dict(positions="from_first_token", n_kv_heads=1)])
def test_prefill_is_the_forward_and_a_window_reproduces_it(kw):
  cfg = tiny(**kw)
  gd, params = M.init_model(cfg, jax.random.key(0))
  prefill, window = M.make_cache_fns(gd)
  x, am = batch()
  full = M.make_logits_fn(gd)(params, x, am)
  lg, cache = prefill(params, x, am, 0, 20)
  assert cache["k"].shape == (cfg.n_layers, 3, 20, cfg.n_kv_heads, cfg.head_dim)
  assert cache["k"].dtype == jnp.float32 and set(cache) == {"k", "v"}
  np.testing.assert_allclose(lg, full, atol=2e-5)
  lg8, _ = prefill(params, x, am, 8, 4)                                    # logits of 8..11 only
  np.testing.assert_allclose(lg8, full[:, 8:12], atol=2e-5)
  for start, W, width in ((8, 4, 4), (8, 12, 4), (0, 20, 20), (16, 4, 2)):  # dual / prefix shapes
    lw, c2 = window(params, x[:, start:start + W], jnp.int32(start), cache, am, width)
    np.testing.assert_allclose(lw, full[:, start:start + width], atol=2e-5)
    for n in ("k", "v"):
      np.testing.assert_allclose(c2[n], cache[n], atol=2e-5)


@pytest.mark.parametrize("n_layers", [1, 2])
def test_window_step_equals_fresh_prefill_at_the_recomputed_positions(n_layers):
  cfg = tiny(n_layers=n_layers, positions="from_first_token")
  gd, params = M.init_model(cfg, jax.random.key(4))
  prefill, window = M.make_cache_fns(gd)
  old, am = batch(seed=2)
  new = old.at[:, 10:14].set(jax.random.randint(jax.random.key(9), (3, 4), 0, 60))
  _, c_old = prefill(params, old, am, 0, 20)
  lg_new, c_new = prefill(params, new, am, 10, 4)
  lw, c = window(params, new[:, 10:14], jnp.int32(10), c_old, am, 4)
  for n in ("k", "v"):
    got, fresh, stale = (np.asarray(a[n]) for a in (c, c_new, c_old))
    # the window's keys / values of layers 0 and 1 are exact: layer 0 depends only on the token
    # and position, layer 1 on layer-0 states that attend to exact layer-0 keys / values
    np.testing.assert_allclose(got[:, :, 10:14], fresh[:, :, 10:14], atol=2e-5)
    np.testing.assert_array_equal(np.delete(got, range(10, 14), axis=2),
                                  np.delete(stale, range(10, 14), axis=2))  # nothing else moved
  if n_layers == 1:  # every key / value and the window's logits are exact
    for n in ("k", "v"):
      np.testing.assert_allclose(c[n], c_new[n], atol=2e-5)
    np.testing.assert_allclose(lw, lg_new, atol=2e-5)
  else:  # layer 1 attends to stale entries outside the window: an approximation
    assert np.max(np.abs(np.asarray(lw) - np.asarray(lg_new))) > 1e-4


def test_cache_sharding_follows_the_logical_axis_rules():
  mesh = mesh_lib.make_mesh((1, 4, 2))
  cfg = tiny(n_heads=4, n_kv_heads=2, d_model=64)
  sh = M.cache_sharding(mesh, (cfg.n_layers, 4, 24, 2, cfg.head_dim))
  assert sh.spec == jax.sharding.PartitionSpec(None, ("data", "fsdp"), None, "tensor")
  sh3 = M.cache_sharding(mesh, (cfg.n_layers, 3, 24, 2, cfg.head_dim))   # 3 rows: replicated
  assert sh3.spec == jax.sharding.PartitionSpec(None, None, None, "tensor")
  gd, params = M.init_model(cfg, jax.random.key(0))
  _, sharded = M.init_sharded(cfg, jax.random.key(0), mesh)
  x = jax.random.randint(jax.random.key(1), (4, 24), 0, 60)
  am = jnp.ones((4, 24), jnp.int32)
  lg1, c1 = M.make_cache_fns(gd)[0](params, x, am, 0, 24)
  lg8, c8 = jax.jit(M.make_cache_fns(gd, mesh=mesh)[0], static_argnums=(4,))(
      sharded, x, am, 0, 24)
  assert c8["k"].sharding.is_equivalent_to(sh, 5)
  np.testing.assert_allclose(lg8, lg1, atol=1e-4)
  np.testing.assert_allclose(c8["v"], c1["v"], atol=1e-4)
