"""Tests of remdm_jax.diffusion.losses against float64 numpy references (SPEC §3.1, §3.2)."""
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from remdm_jax.diffusion import losses
from remdm_jax.diffusion.losses import LossConfig
from remdm_jax.diffusion.schedules import NoiseSchedule

V, M = 5, 4  # tiny vocabulary, mask id = V - 1


def _np_log_softmax(a):
  a = a - a.max(-1, keepdims=True)
  return a - np.log(np.exp(a).sum(-1, keepdims=True))


def _np_subs_nll(logits, x, z, mask_id):
  """float64 -log x_theta(z)[x] under SUBS; 0 at unmasked positions."""
  logits = np.asarray(logits, np.float64).copy()
  logits[..., mask_id] = -np.inf
  logp = _np_log_softmax(logits)
  nll = -np.take_along_axis(logp, x[..., None], -1)[..., 0]
  return np.where(z == mask_id, nll, 0.0)


class _Recorder:
  """apply_fn with fixed logits [B, L, V] that records the (z, sigma) it was called with."""

  def __init__(self, logits):
    self.logits = jnp.asarray(logits, jnp.float32)
    self.calls = []

  def __call__(self, z, sigma):
    self.calls.append((np.asarray(z), np.asarray(sigma)))
    return self.logits


def _handmade():
  x = np.array([[0, 1, 2], [3, 3, 0]], np.int32)
  logits = np.array([
      [[2.0, 0.5, -1.0, 0.0, 7.0], [0.1, 0.2, 0.3, 0.4, 0.5], [-3.0, 1.0, 2.5, 0.0, 0.0]],
      [[1.0, 1.0, 1.0, 1.0, -2.0], [0.0, -1.0, 0.0, 3.0, 1.0], [5.0, -5.0, 0.0, 0.0, 9.0]],
  ], np.float32)
  return x, logits


def test_config_validation():
  with pytest.raises(ValueError, match="objective"):
    LossConfig(objective="sedd", mask_id=M)
  with pytest.raises(ValueError, match="mask_id"):
    LossConfig()
  with pytest.raises(ValueError, match="schedule="):
    LossConfig(schedule="geometric", mask_id=M)
  with pytest.raises(ValueError, match="t_eps"):
    LossConfig(t_eps=0.0, mask_id=M)
  with pytest.raises(ValueError, match="num_train_steps_T"):
    LossConfig(objective="remdm", mask_id=M)
  with pytest.raises(ValueError, match="num_train_steps_T"):
    LossConfig(objective="remdm", num_train_steps_T=0, mask_id=M)
  for bad in ("conf", "loop"):
    with pytest.raises(ValueError, match=f"sigma='{bad}'.*sampling-time"):
      LossConfig(objective="remdm", num_train_steps_T=8, sigma=bad, mask_id=M)
  with pytest.raises(ValueError, match="switch_base='conf'"):
    LossConfig(objective="remdm", num_train_steps_T=8, sigma="switch", switch_base="conf", mask_id=M)
  with pytest.raises(ValueError, match="sigma='cap'"):
    LossConfig(objective="mdlm", sigma="cap", mask_id=M)
  with pytest.raises(ValueError, match="eta"):
    LossConfig(objective="remdm", num_train_steps_T=8, sigma="rescale", eta=1.5, mask_id=M)
  with pytest.raises(ValueError, match="eta"):
    LossConfig(objective="remdm", num_train_steps_T=8, sigma="cap", eta=-0.1, mask_id=M)
  LossConfig(objective="ar")  # no mask id needed
  hash(LossConfig(mask_id=M))  # usable as a static jit argument


def test_mask_id_outside_vocab_raises():
  x, logits = _handmade()
  cfg = LossConfig(mask_id=7)
  with pytest.raises(ValueError, match="mask_id=7.*V=5"):
    losses.diffusion_loss(lambda z, s: jnp.asarray(logits), jnp.asarray(x), jax.random.key(0), cfg)


@pytest.mark.parametrize("schedule", ["loglinear", "cosine"])
def test_mdlm_loss_handmade_matches_numpy(schedule):
  x, logits = _handmade()
  t = np.array([0.3, 0.85], np.float32)
  cfg = LossConfig(mask_id=M, schedule=schedule)
  rec = _Recorder(logits)
  loss, aux = losses.diffusion_loss(rec, jnp.asarray(x), jax.random.key(3), cfg, times=t)
  z, sigma_in = rec.calls[-1]
  # Masking: only mask ids appear, and where not masked z = x.
  assert np.all((z == M) | (z == x))
  sched = NoiseSchedule(schedule, eps=1e-3)
  t64 = t.astype(np.float64)
  np.testing.assert_allclose(sigma_in, -np.log(sched.alpha(t64)), rtol=1e-5)
  w = sched.loss_weight(t64)
  ref = (w[:, None] * _np_subs_nll(logits, x, z, M)).sum() / x.size
  chex.assert_shape(loss, ())
  assert loss.dtype == jnp.float32
  np.testing.assert_allclose(float(loss), ref, rtol=1e-5)
  np.testing.assert_allclose(float(aux["bits"]), ref / math.log(2), rtol=1e-5)
  np.testing.assert_allclose(float(aux["ppl_bound"]), math.exp(ref), rtol=1e-5)
  np.testing.assert_allclose(float(aux["mask_fraction"]), (z == M).mean(), rtol=1e-6)


def test_mdlm_loss_all_masked_exact_value():
  """linear schedule at t = 1: everything masked, w = 1 -> loss = mean CE over non-mask vocab."""
  x, logits = _handmade()
  cfg = LossConfig(mask_id=M, schedule="linear")
  rec = _Recorder(logits)
  loss, aux = losses.diffusion_loss(rec, jnp.asarray(x), jax.random.key(0), cfg,
                                    times=np.ones(2, np.float32))
  assert np.all(rec.calls[-1][0] == M)
  ref = _np_subs_nll(logits, x, np.full_like(x, M), M).mean()
  np.testing.assert_allclose(float(loss), ref, rtol=1e-6)
  assert float(aux["mask_fraction"]) == 1.0


class LossJitTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_random_times_match_fixed_times(self):
    """With random times, the loss equals the loss at the times sample_times draws from the
    first half of the key split (documents the key protocol); shapes/dtypes of aux."""
    x, logits = _handmade()
    cfg = LossConfig(mask_id=M)
    fn = self.variant(lambda x, key: losses.diffusion_loss(lambda z, s: jnp.asarray(logits) + 0 * s[:, None, None], x, key, cfg))
    key = jax.random.key(11)
    loss, aux = fn(jnp.asarray(x), key)
    t = losses.sample_times(jax.random.split(key)[0], 2, cfg)
    loss2, _ = losses.diffusion_loss(lambda z, s: jnp.asarray(logits), jnp.asarray(x), key, cfg, times=t)
    np.testing.assert_allclose(float(loss), float(loss2), rtol=1e-6)
    for k in ("nats", "bits", "ppl_bound", "mask_fraction", "t_mean", "masked_nll"):
      chex.assert_shape(aux[k], ())
      assert aux[k].dtype == jnp.float32, k

  @chex.variants(with_jit=True, without_jit=True)
  def test_ar_loss_matches_numpy(self):
    x, logits = _handmade()
    cfg = LossConfig(objective="ar")
    fn = self.variant(lambda x: losses.loss_fn(cfg)(lambda z, s: jnp.asarray(logits), x, None))
    loss, aux = fn(jnp.asarray(x))
    logp = _np_log_softmax(logits.astype(np.float64))
    ref = -np.take_along_axis(logp[:, :-1], x[:, 1:, None], -1).mean()
    np.testing.assert_allclose(float(loss), ref, rtol=1e-6)
    np.testing.assert_allclose(float(aux["bits"]), ref / math.log(2), rtol=1e-6)


@pytest.mark.parametrize("antithetic", [True, False])
def test_sample_times(antithetic):
  n, t_eps = 64, 1e-3
  cfg = LossConfig(mask_id=M, t_eps=t_eps, antithetic=antithetic)
  t = np.asarray(losses.sample_times(jax.random.key(5), n, cfg))
  assert t.shape == (n,) and t.dtype == np.float32
  assert np.all(t >= t_eps) and np.all(t < 1.0)
  u = (t.astype(np.float64) - t_eps) / (1 - t_eps)
  strata = np.floor(u * n).astype(int)
  if antithetic:
    # exactly one time per stratum [i/n, (i+1)/n), in order
    np.testing.assert_array_equal(strata, np.arange(n))
  else:
    assert len(np.unique(strata)) < n  # plain uniforms collide (prob. of no collision ~ 1e-27)


def _remdm_reference(logits, x, z, i, T, sched, sigma_name, eta=0.0, t_switch=0.0, base="cap"):
  """float64 numpy version of the SPEC §3.2 loss at fixed step indices i [B]."""
  t, s = i / T, (i - 1) / T
  at, as_ = sched.alpha(t), sched.alpha(s)
  smax = np.where(at > 0, np.minimum(1.0, (1 - as_) / np.where(at > 0, at, 1)), 1.0)

  def sig(name):
    return {"none": np.zeros_like(at), "cap": np.minimum(eta, smax), "rescale": eta * smax,
            "fb": (as_ - at) / at}[name]

  sigma = np.where(t < t_switch, sig(base), 0.0) if sigma_name == "switch" else sig(sigma_name)
  w = T * (as_ - (1 - sigma) * at) / (1 - at)
  return (w[:, None] * _np_subs_nll(logits, x, z, M)).sum() / x.size, sigma


@pytest.mark.parametrize("sigma,eta,t_switch,base", [
    ("none", 0.0, 0.0, "cap"), ("cap", 0.02, 0.0, "cap"), ("cap", 0.9, 0.0, "cap"),
    ("rescale", 0.5, 0.0, "cap"), ("fb", 0.0, 0.0, "cap"), ("switch", 0.3, 0.5, "rescale")])
def test_remdm_loss_matches_spec_formula(sigma, eta, t_switch, base):
  T = 4
  rng = np.random.default_rng(0)
  B, L = 4, 6
  x = rng.integers(0, V - 1, (B, L)).astype(np.int32)
  logits = rng.normal(size=(B, L, V)).astype(np.float32)
  i = np.array([1, 2, 3, 4], np.int32)
  sched = NoiseSchedule("loglinear", eps=1e-3)
  cfg = LossConfig(objective="remdm", num_train_steps_T=T, sigma=sigma, eta=eta,
                   t_switch=t_switch, switch_base=base, mask_id=M)
  rec = _Recorder(logits)
  loss, aux = losses.diffusion_loss(rec, jnp.asarray(x), jax.random.key(2), cfg, times=i)
  z, sigma_in = rec.calls[-1]
  with np.errstate(divide="ignore", invalid="ignore"):
    ref, sig = _remdm_reference(logits, x, z, i.astype(np.float64), T, sched, sigma, eta, t_switch, base)
  np.testing.assert_allclose(sigma_in, -np.log(sched.alpha(i / T)), rtol=1e-5)
  np.testing.assert_allclose(float(loss), ref, rtol=2e-5)
  np.testing.assert_allclose(float(aux["sigma_mean"]), sig.mean(), rtol=5e-5, atol=1e-7)
  # masking probability 1 - alpha_t: with i = T nearly everything is masked (alpha ~ 1e-3)
  assert (z[3] == M).all()


def test_remdm_sigma_none_equals_discrete_mdlm():
  """sigma = none is exactly the discrete-time MDLM loss T (a_s - a_t)/(1 - a_t) * CE, written
  directly in jnp, including the stratified draw of i (SPEC §3.2)."""
  T, B, L = 8, 16, 5
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.integers(0, V - 1, (B, L)), jnp.int32)
  logits = jnp.asarray(rng.normal(size=(B, L, V)), jnp.float32)
  cfg = LossConfig(objective="remdm", num_train_steps_T=T, sigma="none", mask_id=M)
  key = jax.random.key(4)
  loss, _ = jax.jit(lambda x, key: losses.diffusion_loss(lambda z, s: logits, x, key, cfg))(x, key)

  # direct discrete-time MDLM
  k_t, k_m = jax.random.split(key)
  u = (jnp.arange(B) + jax.random.uniform(k_t, (B,))) / B
  i = jnp.floor(u * T) + 1
  a = lambda t: 1 - (1 - 1e-3) * t
  at, as_ = a(i / T), a((i - 1) / T)
  z = jnp.where(jax.random.uniform(k_m, (B, L)) < (1 - at)[:, None], M, x)
  lp = jax.nn.log_softmax(jnp.where(jnp.arange(V) == M, -1e9, logits), -1)
  ce = -jnp.take_along_axis(lp, x[..., None], -1)[..., 0] * (z == M)
  direct = jnp.sum(T * (as_ - at) / (1 - at) * ce.sum(-1)) / (B * L)
  np.testing.assert_allclose(float(loss), float(direct), rtol=1e-6)
  # stratified steps: each i in 1..T drawn exactly B/T times
  np.testing.assert_array_equal(np.bincount(np.asarray(i, int), minlength=T + 1)[1:], B // T)


def test_gradient_finite_through_linear_model():
  """A tiny linear 'model' (embedding @ W + b * sigma): finite, non-zero grads."""
  Vb, L, B = 7, 6, 8
  mask_id = Vb - 1
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  params = {"W": 0.1 * jax.random.normal(k1, (Vb, Vb)), "b": jax.random.normal(k2, (Vb,))}
  x = jax.random.randint(k3, (B, L), 0, Vb - 1)
  cfgs = [LossConfig(mask_id=mask_id),
          LossConfig(objective="remdm", num_train_steps_T=3, sigma="fb", mask_id=mask_id),
          LossConfig(objective="ar")]
  for cfg in cfgs:
    def objective(p):
      apply_fn = lambda z, s: jax.nn.one_hot(z, Vb) @ p["W"] + s[:, None, None] * p["b"]
      return losses.loss_fn(cfg)(apply_fn, x, jax.random.key(1))[0]

    g = jax.jit(jax.grad(objective))(params)
    for leaf in jax.tree.leaves(g):
      assert np.all(np.isfinite(np.asarray(leaf))), cfg
    assert float(jnp.abs(g["W"]).sum()) > 0, cfg


@pytest.mark.parametrize("schedule,factor", [("linear", 1.0), ("loglinear", 1 - 1e-3)])
def test_nelbo_with_true_conditional_equals_entropy(schedule, factor):
  """For a factorized p(x) = prod_l p_l(x_l) the true conditional is x_theta^l = p_l whatever z.
  Then E[loss] = E_t[w(t)(1 - alpha(t))] * H with H the mean per-token entropy: exactly H for
  linear, (1 - eps) H for loglinear (t ~ U[t_eps, 1], w(1 - alpha) = 1 - eps). Tolerance: 5
  standard errors of the per-example estimate (SE ~ 0.9% of H here)."""
  Vf, L, B, draws = 6, 16, 512, 8
  rng = np.random.default_rng(7)
  probs = rng.dirichlet(np.ones(Vf - 1) * 0.7, size=L)  # [L, Vf-1]
  H = float(-(probs * np.log(probs)).sum(-1).mean())
  logits = jnp.asarray(np.concatenate([np.log(probs), np.zeros((L, 1))], -1), jnp.float32)
  cfg = LossConfig(mask_id=Vf - 1, schedule=schedule)

  @jax.jit
  def per_example(key):
    kx, kl = jax.random.split(key)
    x = jax.random.categorical(kx, jnp.log(jnp.asarray(probs, jnp.float32)), shape=(B, L))
    def one(xb, k):
      return losses.diffusion_loss(lambda z, s: jnp.broadcast_to(logits, z.shape + (Vf,)),
                                   xb[None], k, cfg)[0]
    # antithetic over the batch: evaluate the batch loss, and also per-example via a B=1 vmap
    batch_loss = losses.diffusion_loss(lambda z, s: jnp.broadcast_to(logits, z.shape + (Vf,)),
                                       x, kl, cfg)[0]
    return batch_loss, jax.vmap(one)(x, jax.random.split(kl, B))

  keys = jax.random.split(jax.random.key(0), draws)
  out = [per_example(k) for k in keys]
  batch_losses = np.array([float(b) for b, _ in out])
  singles = np.concatenate([np.asarray(s) for _, s in out]).astype(np.float64)
  se = singles.std() / np.sqrt(singles.size)
  assert abs(singles.mean() - factor * H) < 5 * se, (singles.mean(), factor * H, se)
  # antithetic batch estimate: lower variance, same mean
  assert abs(batch_losses.mean() - factor * H) < 5 * se, (batch_losses.mean(), factor * H, se)


def test_sharded_global_batch_matches_single_device():
  """Under jit with the batch sharded over 8 devices, times are stratified over the GLOBAL batch:
  the loss equals the unsharded one."""
  from jax.sharding import NamedSharding, PartitionSpec as P
  n = len(jax.devices())
  mesh = jax.make_mesh((n,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  Vb, B, L = 7, 2 * n, 8
  W = jax.random.normal(jax.random.key(0), (Vb, Vb))
  x = jax.random.randint(jax.random.key(1), (B, L), 0, Vb - 1)
  cfg = LossConfig(mask_id=Vb - 1)
  f = jax.jit(lambda W, x, k: losses.loss_fn(cfg)(lambda z, s: jax.nn.one_hot(z, Vb) @ W, x, k))
  sharded = f(W, jax.device_put(x, NamedSharding(mesh, P("data"))), jax.random.key(2))
  single = f(W, x, jax.random.key(2))
  np.testing.assert_allclose(float(sharded[0]), float(single[0]), rtol=1e-6)
  np.testing.assert_allclose(float(sharded[1]["t_mean"]), float(single[1]["t_mean"]), rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Fused target NLL (no [B, L, V] log-probs) against subs_log_probs + gather and float64 numpy.


def _np_nll_grad(logits, x, z, mask_id, w):
  """float64 d/dlogits sum(w * nll) at masked positions: w (softmax_{v != m} - onehot(x))."""
  lg = np.asarray(logits, np.float64).copy()
  lg[..., mask_id] = -np.inf
  p = np.exp(_np_log_softmax(lg))
  onehot = np.eye(lg.shape[-1])[x]
  onehot[..., mask_id] = 0.0
  return np.where((z == mask_id)[..., None], w[..., None] * (p - onehot), 0.0)


class SubsTargetNllTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_matches_subs_log_probs_and_numpy(self):
    from remdm_jax.diffusion.subs import subs_log_probs
    for seed, (B, L, Vr) in enumerate([(2, 7, 6), (3, 5, 33)]):
      m = Vr - 1
      k = jax.random.split(jax.random.key(seed), 4)
      logits = 3.0 * jax.random.normal(k[0], (B, L, Vr), jnp.float32)
      x = jax.random.randint(k[1], (B, L), 0, Vr - 1)
      z = jnp.where(jax.random.bernoulli(k[2], 0.6, (B, L)), m, x)
      w = jax.random.normal(k[3], (B, L), jnp.float32)
      fused = self.variant(lambda lg: losses.subs_target_nll(lg, z, x, m))
      ref = lambda lg: -jnp.take_along_axis(subs_log_probs(lg, z, m), x[..., None], -1)[..., 0]
      out = fused(logits)
      chex.assert_shape(out, (B, L))
      chex.assert_type(out, jnp.float32)
      np.testing.assert_allclose(np.asarray(out), np.asarray(ref(logits)), rtol=1e-6, atol=1e-5)
      np.testing.assert_allclose(np.asarray(out), _np_subs_nll(logits, np.asarray(x),
                                                               np.asarray(z), m),
                                 rtol=1e-5, atol=1e-5)
      g = jax.grad(lambda lg: jnp.sum(w * fused(lg)))(logits)
      g_ref = jax.grad(lambda lg: jnp.sum(w * ref(lg)))(logits)
      np.testing.assert_allclose(np.asarray(g), np.asarray(g_ref), atol=1e-6)
      np.testing.assert_allclose(np.asarray(g), _np_nll_grad(logits, np.asarray(x), np.asarray(z),
                                                             m, np.asarray(w)), atol=1e-6)

  def test_edge_cases_and_float64(self):
    from remdm_jax.diffusion.subs import NEG_INF, subs_log_probs
    logits = jnp.asarray([[[1.0, 2.0, 0.5, 9.0], [0.0, 0.0, 0.0, 0.0], [3.0, 1.0, 2.0, 5.0]]])
    m = 3
    x = jnp.asarray([[3, 1, 2]])  # target = mask id (log 0) at a masked position
    z = jnp.asarray([[3, 0, 2]])  # carry-over mismatch (z != x), carry-over match
    out = np.asarray(losses.subs_target_nll(logits, z, x, m))
    ref = -np.asarray(jnp.take_along_axis(subs_log_probs(logits, z, m), x[..., None], -1)[..., 0])
    np.testing.assert_allclose(out, ref, rtol=1e-6)
    assert out[0, 1] == -NEG_INF and out[0, 2] == 0.0
    g = jax.grad(lambda lg: jnp.sum(losses.subs_target_nll(lg, z, x, m)))(logits)
    np.testing.assert_allclose(np.asarray(g[0, 0]), np.exp(_np_log_softmax(
        np.array([1.0, 2.0, 0.5, -np.inf]))), atol=1e-7)  # softmax, no onehot(m) term
    assert np.all(np.asarray(g[0, 1:]) == 0.0)
    with jax.enable_x64(True):
      lg64 = jnp.asarray(np.random.RandomState(0).randn(2, 3, 5), jnp.float64)
      x64 = jnp.asarray([[0, 1, 2], [3, 0, 1]])
      z64 = jnp.asarray([[4, 1, 4], [4, 4, 1]])
      out64 = losses.subs_target_nll(lg64, z64, x64, 4)
      assert out64.dtype == jnp.float64
      np.testing.assert_allclose(np.asarray(out64), _np_subs_nll(np.asarray(lg64), np.asarray(x64),
                                                                 np.asarray(z64), 4), rtol=1e-12)

  @chex.variants(with_jit=True, without_jit=True)
  def test_target_nll_is_cross_entropy(self):
    logits = 2.0 * jax.random.normal(jax.random.key(3), (2, 4, 9), jnp.float32)
    x = jax.random.randint(jax.random.key(4), (2, 4), 0, 9)
    w = jax.random.normal(jax.random.key(5), (2, 4), jnp.float32)
    f = self.variant(losses.target_nll)
    ln = np.asarray(logits, np.float64)
    ref = -np.take_along_axis(_np_log_softmax(ln), np.asarray(x)[..., None], -1)[..., 0]
    np.testing.assert_allclose(np.asarray(f(logits, x)), ref, rtol=1e-6, atol=1e-6)
    g = jax.grad(lambda lg: jnp.sum(w * f(lg, x)))(logits)
    g_ref = np.asarray(w)[..., None] * (np.exp(_np_log_softmax(ln)) - np.eye(9)[np.asarray(x)])
    np.testing.assert_allclose(np.asarray(g), g_ref, atol=1e-6)


@pytest.mark.parametrize("kind,eta,t_switch", [("cap", 0.05, 0.0), ("rescale", 0.3, 0.0),
                                               ("fb", 0.0, 0.0), ("switch", 0.05, 0.5)])
def test_remdm_sigma_shared_with_sampler_schedule(kind, eta, t_switch):
  """One home (remdm_jax.diffusion.sigmas): the loss's sigma (jax, float32) and the sampler schedule's
  (numpy, float64) on the same linear-alpha grid agree, and both match an inline numpy table."""
  from remdm_jax.sampling import SamplerConfig, step_schedule
  T = 16
  sc = SamplerConfig(strategy={"cap": "remdm_cap", "rescale": "remdm_rescale", "fb": "fb",
                               "switch": "remdm_switch"}[kind], num_steps=T, eta=eta,
                     t_switch=t_switch or 0.5, switch_base="cap", eps=1e-5)
  s = step_schedule(sc)
  a_t, a_s, t = s.alpha_t, s.alpha_s, s.t
  cfg = LossConfig(objective="remdm", schedule="linear", num_train_steps_T=T, sigma=kind,
                   eta=eta, t_switch=t_switch, switch_base="cap", mask_id=0)
  got = np.asarray(losses.remdm_sigma(jnp.asarray(a_t, jnp.float32), jnp.asarray(a_s, jnp.float32),
                                      jnp.asarray(t, jnp.float32), cfg))
  smax = np.where(a_t > 0, np.minimum(1, (1 - a_s) / np.where(a_t > 0, a_t, 1)), 1.0)
  base = "cap" if kind == "switch" else kind
  want = {"cap": np.where(a_t > 0, np.minimum(eta, smax), eta),
          "rescale": np.where(a_t > 0, eta * smax, eta),
          "fb": np.where(a_t > 0, (a_s - a_t) / np.where(a_t > 0, a_t, 1), 1.0)}[base]
  if kind == "switch":
    want = np.where(t < t_switch, want, 0.0)
  np.testing.assert_allclose(s.sigma, want, rtol=1e-12)
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-7)  # float32 alphas
