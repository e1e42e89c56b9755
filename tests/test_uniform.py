"""UDLM (SPEC_DOMAINS §M.7): posterior vs Bayes' rule on the transition matrices, the NELBO vs
numpy and vs the entropy of a product distribution, the loss, and the (guided) sampler by
chi-square against exact distributions."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from remdm_jax.diffusion import losses
from remdm_jax.sampling.guidance import CBGGuidance
from remdm_jax.diffusion.losses import udlm_loss
from remdm_jax.diffusion.uniform import (forward_probs, log_posterior, nelbo_integrand,
                                         posterior_probs)
from remdm_jax.sampling.udlm import CFGGuidance, cfg_log_posterior, make_udlm_sampler

N = 5


def _Q(alpha):
  """Transition matrix q(z_t = j | x = i) = alpha 1[i=j] + (1 - alpha)/N (float64)."""
  return alpha * np.eye(N) + (1 - alpha) / N


def test_forward_probs():
  x = np.array([[0, 4, 2]])
  with jax.enable_x64(True):
    got = np.asarray(forward_probs(jnp.asarray(x), 0.3, N, jnp.float64))
  np.testing.assert_allclose(got, _Q(0.3)[x], rtol=1e-12)


@pytest.mark.parametrize("a_t,a_s", [(0.2, 0.5), (0.0, 0.3), (0.6, 0.61), (0.5, 1.0)])
def test_posterior_equals_bayes_rule(a_t, a_s):
  """q(z_s | z_t, x) = q(z_t | z_s) q(z_s | x) / q(z_t | x) from the matrices Q_s, Q_{t|s}, Q_t
  (for x_theta: the same with x summed against x_theta), in float64."""
  rng = np.random.default_rng(0)
  Qs, Qts, Qt = _Q(a_s), _Q(a_t / a_s), _Q(a_t)
  np.testing.assert_allclose(Qs @ Qts, Qt, rtol=1e-12)  # the forward process is consistent
  z_t = np.arange(N).repeat(N + 2)
  xs = np.concatenate([np.eye(N)[np.tile(np.arange(N), N)],
                       rng.dirichlet(np.ones(N), size=2 * N)])  # one-hot and soft x
  with jax.enable_x64(True):
    got = np.asarray(posterior_probs(jnp.asarray(xs), jnp.asarray(z_t), a_t, a_s))
  num = (xs @ Qs) * Qts[:, z_t].T            # sum_x x(x) Q_s[x, z_s] Q_{t|s}[z_s, z_t]
  den = (xs @ Qt)[np.arange(len(z_t)), z_t]  # sum_x x(x) Q_t[x, z_t]
  np.testing.assert_allclose(got, num / den[:, None], rtol=1e-12, atol=1e-15)
  np.testing.assert_allclose(got.sum(-1), 1.0, rtol=1e-12)


def _np_integrand(xt, x, z, a):
  xb = N * a * np.eye(N)[x] + 1 - a
  xbt = N * a * xt + 1 - a
  xz, xtz = xb[z], xbt[z]
  inner = np.sum(xb / xz * (np.log(xtz) - np.log(xbt) + np.log(xb) - np.log(xz)))
  return -1.0 / (N * a) * (N / xz - N / xtz - inner)


def test_nelbo_integrand_vs_numpy():
  rng = np.random.default_rng(1)
  xt = rng.dirichlet(np.ones(N), size=(4, 3))
  x = rng.integers(0, N, (4, 3))
  z = rng.integers(0, N, (4, 3))
  a = rng.uniform(0.05, 0.95, (4, 3))
  with jax.enable_x64(True):
    got = np.asarray(nelbo_integrand(jnp.asarray(xt), jnp.asarray(x), jnp.asarray(z),
                                     jnp.asarray(a)))
    zero = np.asarray(nelbo_integrand(jnp.asarray(np.eye(N)[x]), jnp.asarray(x), jnp.asarray(z),
                                      jnp.asarray(a)))
  want = np.vectorize(lambda b, l: _np_integrand(xt[b, l], x[b, l], z[b, l], a[b, l]))(
      *np.indices((4, 3)))
  np.testing.assert_allclose(got, want, rtol=1e-10)
  assert np.all(got > 0)
  np.testing.assert_allclose(zero, 0.0, atol=1e-12)


def _expected_integrand(p, xt_fn, alpha):
  """E_{x ~ p, z ~ q(z_t | x)} integrand(x_theta(z), x, z) for one position (float64 numpy)."""
  Qt = _Q(alpha)
  tot = 0.0
  for x, z in itertools.product(range(N), range(N)):
    tot += p[x] * Qt[x, z] * _np_integrand(xt_fn(z, alpha), x, z, alpha)
  return tot


def test_nelbo_of_exact_denoiser_is_entropy():
  """Integral over t of the NELBO with the exact x_theta of a product distribution (x_theta = p)
  equals H(p); the t-conditional posterior p(x | z_t) instead gives a strictly larger value."""
  p = np.array([0.5, 0.25, 0.15, 0.07, 0.03])
  H = -np.sum(p * np.log(p))
  nodes, weights = np.polynomial.legendre.leggauss(200)
  u = (nodes + 1) / 2  # t = u^2 grades the nodes towards the log singularity at t = 0
  ts, ws = u ** 2, 2 * u * weights / 2
  exact = sum(w * _expected_integrand(p, lambda z, a: p, 1 - t) for t, w in zip(ts, ws))
  np.testing.assert_allclose(exact, H, rtol=1e-9)

  def post(z, a):
    w = p * _Q(a)[:, z]
    return w / w.sum()

  wrong = sum(w * _expected_integrand(p, post, 1 - t) for t, w in zip(ts, ws))
  assert wrong > H + 0.05


def test_udlm_loss_monte_carlo_entropy_and_objective():
  """udlm_loss with the exact denoiser of a product distribution averages to H (per token):
  x_theta = p_l for t > 0, one-hot at t = 0 (reconstruction 0)."""
  L = 3
  rng = np.random.default_rng(2)
  p = rng.dirichlet(np.ones(N), size=L)
  H = -np.sum(p * np.log(p)) / L
  logp = jnp.asarray(np.log(p), jnp.float32)

  def apply_fn(z, sigma):
    exact = jnp.broadcast_to(logp, z.shape + (N,))
    return jnp.where((sigma == 0)[:, None, None], 30.0 * jax.nn.one_hot(z, N), exact)

  B = 4096
  x = jnp.asarray(np.stack([rng.choice(N, size=B, p=p[l]) for l in range(L)], -1), jnp.int32)
  fn = jax.jit(lambda k: udlm_loss(apply_fn, x, k))
  vals = [fn(jax.random.PRNGKey(i)) for i in range(32)]
  est = np.mean([float(v[0]) for v in vals])
  sem = np.std([float(v[0]) for v in vals]) / np.sqrt(len(vals))  # ~0.01
  assert abs(est - H) < max(4 * sem, 0.01), (est, H, sem)
  loss, aux = vals[0]
  assert loss.dtype == jnp.float32 and float(aux["reconstruction"]) < 1e-6
  assert set(aux) >= {"nats", "bits", "t_mean", "diffusion", "reconstruction"}
  # a worse denoiser has a larger loss
  bad = jax.jit(lambda k: udlm_loss(lambda z, s: jnp.zeros(z.shape + (N,)), x, k))
  assert np.mean([float(bad(jax.random.PRNGKey(i))[0]) for i in range(4)]) > est + 0.05
  # the "udlm" objective of the trainer
  cfg = losses.LossConfig(objective="udlm")
  l2, _ = losses.loss_fn(cfg)(apply_fn, x, jax.random.PRNGKey(0))
  np.testing.assert_allclose(float(l2), float(loss), rtol=1e-6)
  with pytest.raises(ValueError, match="vocabulary"):
    udlm_loss(apply_fn, x + N, jax.random.PRNGKey(0))


@pytest.mark.parametrize("gamma", [0.0, 1.0, 2.5])
def test_cfg_log_posterior_vs_numpy(gamma):
  rng = np.random.default_rng(3)
  lc, lu = rng.normal(size=(2, 2, 4, N))
  z = rng.integers(0, N, (2, 4))
  a_t, a_s = 0.3, 0.45

  def np_post(lg):
    x = np.exp(lg - lg.max(-1, keepdims=True))
    x /= x.sum(-1, keepdims=True)
    Qs, Qts, Qt = _Q(a_s), _Q(a_t / a_s), _Q(a_t)
    num = (x @ Qs) * np.moveaxis(Qts[:, z], 0, -1)
    den = np.take_along_axis(x @ Qt, z[..., None], -1)
    return num / den

  lq = gamma * np.log(np_post(lc)) + (1 - gamma) * np.log(np_post(lu))
  want = np.exp(lq) / np.exp(lq).sum(-1, keepdims=True)
  with jax.enable_x64(True):
    got = np.exp(np.asarray(cfg_log_posterior(jnp.asarray(lc), jnp.asarray(lu), jnp.asarray(z),
                                              a_t, a_s, gamma)))
    single = np.exp(np.asarray(log_posterior(jnp.asarray(lc if gamma == 1 else lu),
                                             jnp.asarray(z), a_t, a_s)))
  np.testing.assert_allclose(got, want, rtol=1e-10)
  if gamma in (0.0, 1.0):
    np.testing.assert_array_equal(got, single)


L3, N4 = 3, 4
SEQS = np.array(list(itertools.product(range(N4), repeat=L3)), np.int32)


def _chi2(samples, probs):
  n = len(samples)
  counts = np.bincount(samples, minlength=len(probs))
  keep = probs * n >= 5
  f_obs, f_exp = counts[keep], n * probs[keep]
  if (~keep).any():  # pool the rare outcomes into one cell
    f_obs, f_exp = np.append(f_obs, counts[~keep].sum()), np.append(f_exp, n * probs[~keep].sum())
  return stats.chisquare(f_obs, f_exp * f_obs.sum() / f_exp.sum()).pvalue


def test_udlm_sampler_exact_denoiser_product_distribution():
  """With the exact x_theta (= p_l, product distribution) every step is the exact reverse
  kernel, so z_eps ~ q_eps = (1 - eps) p + eps / N for any T (chi-square per position, T = 4)."""
  rng = np.random.default_rng(4)
  p = rng.dirichlet(np.ones(N) * 0.8, size=3)
  logp = jnp.asarray(np.log(p), jnp.float32)
  s = make_udlm_sampler(lambda params, z, t: jnp.broadcast_to(logp, z.shape + (N,)),
                        num_steps=4, seq_len=3)
  n = 4000
  z, info = s.sample_with_info(None, jax.random.PRNGKey(0), n)
  z = np.asarray(z)
  assert z.shape == (n, 3) and z.dtype == np.int32 and int(info["nfe"]) == 4
  for l in range(3):
    assert _chi2(z[:, l], p[l]) > 1e-3
    assert _chi2(z[:, l], np.full(N, 1.0 / N)) < 1e-6  # far from the uniform start
  # batch-size independence (per-position keys)
  np.testing.assert_array_equal(np.asarray(s(None, jax.random.PRNGKey(0), 7)), z[:7])


def _reference_udlm_replay(table, bias, key, T, B, L, eps=1e-5, noise_eps=1e-3):
  """Float64 numpy transcription of the reference's UDLM `_diffusion_sample` (guidance repo,
  diffusion.py: timesteps = linspace(1, eps, T + 1), dt = (1 - eps)/T, LogLinearNoise(1e-3):
  sigma = -log1p(-(1 - 1e-3) t), move_chance = 1 - exp(-sigma); `_ddpm_denoise` +
  `_compute_posterior` with alpha = 1 - move_chance), fed the sampler's own Gumbel noise (the
  per-position keys of `sampling.draws`) instead of torch's race."""
  from remdm_jax.sampling import draws
  V = table.shape[-1]
  rows = jnp.broadcast_to(jnp.arange(B, dtype=jnp.int32)[:, None], (B, L))
  pos = jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32), (B, L))
  z = np.asarray(draws.gumbel_argmax(draws.position_keys(jax.random.fold_in(key, T), rows, pos),
                                     jnp.zeros((B, L, V), jnp.float32)))
  timesteps = np.linspace(1.0, eps, T + 1)
  dt = (1.0 - eps) / T
  for i in range(T):
    t = timesteps[i]
    with np.errstate(divide="ignore"):  # sigma = inf at t = 1 when noise_eps = 0
      mc_t = 1.0 - np.exp(np.log1p(-(1.0 - noise_eps) * t))
      mc_s = 1.0 - np.exp(np.log1p(-(1.0 - noise_eps) * (t - dt)))
    a_t, a_s = 1.0 - mc_t, 1.0 - mc_s
    logits = table[np.arange(L), z] + t * bias  # [B, L, V]
    x = np.exp(logits - logits.max(-1, keepdims=True))
    x /= x.sum(-1, keepdims=True)
    zt = np.eye(V)[z]
    a_ts = a_t / a_s
    q = ((a_t * V * x * zt + (a_ts - a_t) * zt + (a_s - a_t) * x + (1 - a_ts) * (1 - a_s) / V)
         / (a_t * V * np.sum(x * zt, -1, keepdims=True) + 1 - a_t))
    keys = draws.position_keys(jax.random.fold_in(key, i), rows, pos)
    z = np.asarray(draws.gumbel_argmax(keys, jnp.asarray(np.log(q), jnp.float32)))
  return z


def test_udlm_sampler_alpha_has_the_reference_eps():
  """Issue 19 item 6: the reference sampler's alpha_t = 1 - (1 - 1e-3) t (first step 1e-3, not
  0); tokens equal a float64 transcription of the reference loop on the same noise, and differ
  from the alpha_t = 1 - t loop (so the test sees the eps)."""
  T, B, L, V = 4, 1024, 8, 7
  rng = np.random.default_rng(11)
  table = rng.normal(size=(L, V, V)) * 1.5  # x_theta depends on z_t and t
  bias = rng.normal(size=(V,))

  def denoise(params, z, t):
    return (jnp.asarray(table, jnp.float32)[jnp.arange(L), z]
            + t[:, None, None] * jnp.asarray(bias, jnp.float32))

  s = make_udlm_sampler(denoise, num_steps=T, seq_len=L)
  grid = np.linspace(1.0, 1e-5, T + 1)
  np.testing.assert_allclose(s.alpha_t, 1 - (1 - 1e-3) * grid[:-1], rtol=0, atol=1e-15)
  assert s.alpha_t[0] == pytest.approx(1e-3, abs=1e-15)
  np.testing.assert_allclose(s.alpha_s, 1 - (1 - 1e-3) * grid[1:], rtol=0, atol=1e-12)
  key = jax.random.PRNGKey(7)
  got = np.asarray(s(None, key, B))
  np.testing.assert_array_equal(got, _reference_udlm_replay(table, bias, key, T, B, L))
  without_eps = _reference_udlm_replay(table, bias, key, T, B, L, noise_eps=0.0)
  assert np.sum(got != without_eps) >= 10  # 21 of 8192 tokens at this seed
  s0 = make_udlm_sampler(denoise, num_steps=T, seq_len=L, noise_eps=0.0)
  np.testing.assert_array_equal(np.asarray(s0(None, key, B)), without_eps)


def _udlm_joint_models():
  """Product p(x) over L=3, N=4 and a non-factorising p(y = 1 | x); the exact x_theta (= p_l) and
  the exact p(y | z_t) under uniform noise with the sampler's alpha_t = 1 - (1 - 1e-3) t
  (classifier on one-hot input)."""
  rng = np.random.default_rng(5)
  p = rng.dirichlet(np.ones(N4), size=L3)
  px = np.prod(p[np.arange(L3), SEQS], -1)
  py = 1.0 / (1.0 + np.exp(-3.0 * rng.normal(size=len(SEQS))))
  logp = jnp.asarray(np.log(p), jnp.float32)
  PX = jnp.asarray(px, jnp.float32)
  PY = jnp.asarray(np.stack([1 - py, py], -1), jnp.float32)
  oh_seq = jax.nn.one_hot(jnp.asarray(SEQS), N4, dtype=jnp.float32)

  def denoise_fn(params, z, t):
    return jnp.broadcast_to(logp, z.shape + (N4,))

  def classifier_fn(params, x, t):
    a = (1.0 - (1.0 - 1e-3) * t)[:, None, None]  # q(z^l | x_k^l) = a 1[z^l = x_k^l] + (1 - a)/N
    lik = a * jnp.einsum("nlv,klv->nkl", x, oh_seq) + (1 - a) / N4 * jnp.sum(x, -1)[:, None, :]
    w = jnp.prod(lik, -1) * PX
    return jnp.log(w @ PY) - jnp.log(jnp.sum(w, -1, keepdims=True))

  return px, py, denoise_fn, classifier_fn


def test_udlm_cbg_end_to_end_samples_conditional():
  """UDLM + exact D-CBG (gamma = 1), exact denoiser and exact p(y | z_t): samples p(x | y = 1)."""
  px, py, denoise_fn, classifier_fn = _udlm_joint_models()
  target = px * py / np.sum(px * py)
  g = CBGGuidance(classifier_fn, gamma=1.0, label=1)
  T = 128  # the guided step is exact as dt -> 0 (O(1/T) error: T = 32 is rejected at n = 3000)
  s = make_udlm_sampler(denoise_fn, num_steps=T, seq_len=L3, guidance=g)
  n = 2000
  z, info = s.sample_with_info({"model": None, "classifier": None}, jax.random.PRNGKey(1), n)
  idx = (np.asarray(z) * N4 ** np.arange(L3)[::-1]).sum(-1)
  assert int(info["classifier_nfe"]) == T * L3 * N4 and int(info["nfe"]) == T
  assert _chi2(idx, target) > 1e-3
  assert _chi2(idx, px) < 1e-6


def test_udlm_cfg_sampler_calls_and_effect():
  """D-CFG: one batched call of 2B rows per step (nfe 2T); gamma = 0 / 1 one call of B rows;
  gamma = 3 with a label-dependent model moves mass towards the label's preferred token."""
  rows = []

  def cond_fn(params, z, t, labels):
    rows.append(z.shape[0])
    base = jnp.zeros(z.shape + (N,))
    return base + 1.5 * (labels == 1)[:, None, None] * jax.nn.one_hot(0, N)

  n = 512
  frac = {}
  for gamma in (0.0, 1.0, 3.0):
    rows.clear()
    s = make_udlm_sampler(None, num_steps=8, seq_len=4,
                          guidance=CFGGuidance(cond_fn, gamma=gamma, null_label=2))
    z, info = s.sample_with_info({"model": None, "labels": jnp.ones((n,), jnp.int32)},
                                 jax.random.PRNGKey(2), n)
    want_rows = n if gamma in (0.0, 1.0) else 2 * n
    assert set(rows) == {want_rows} and int(info["nfe"]) == 8 * want_rows // n
    frac[gamma] = float(np.mean(np.asarray(z) == 0))
  assert abs(frac[0.0] - 1.0 / N) < 0.05
  assert frac[3.0] > frac[1.0] + 0.1 > frac[0.0] + 0.2


def test_udlm_sampler_bad_input():
  f = lambda params, z, t: jnp.zeros(z.shape + (N,))
  with pytest.raises(ValueError, match="num_steps"):
    make_udlm_sampler(f, num_steps=0, seq_len=3)
  with pytest.raises(ValueError, match="denoise_fn=None"):
    make_udlm_sampler(f, num_steps=2, seq_len=3, guidance=CFGGuidance(f, 2.0, 2))
  with pytest.raises(ValueError, match="guidance"):
    make_udlm_sampler(f, num_steps=2, seq_len=3, guidance="cbg")
  s = make_udlm_sampler(f, num_steps=2, seq_len=3, guidance=CBGGuidance(lambda *a: None))
  with pytest.raises(ValueError, match="'classifier'"):
    s({"model": None}, jax.random.PRNGKey(0), 2)
  with pytest.raises(ValueError, match="batch_size"):
    make_udlm_sampler(f, num_steps=2, seq_len=3)(None, jax.random.PRNGKey(0), 0)


def test_udlm_objective_class_labels():
  """With num_classes > 0 the "udlm" objective splits the label column (split_labels, condition
  dropout to the null class with fold_in(key, 2)) and calls the model with labels= on [B, L]
  tokens, like mdlm / ar. The old objective passed the [B, L + 1] batch (label as a token) and no
  labels."""
  C, L, B = 2, 4, 64
  rng = np.random.default_rng(5)
  table = jnp.asarray(rng.normal(size=(C + 1, L, N)), jnp.float32)
  emb = jnp.asarray(rng.normal(size=(N, N)), jnp.float32)

  def apply_fn(z, sigma, labels=None):
    if labels is None:
      raise ValueError("no labels")
    return table[labels] + emb[z] + sigma[:, None, None]

  x = rng.integers(0, N, size=(B, L))
  y = rng.integers(0, C, size=(B,))
  batch = jnp.asarray(np.concatenate([x, y[:, None]], 1), jnp.int32)
  key = jax.random.PRNGKey(3)
  for drop in (0.0, 0.5):
    cfg = losses.LossConfig(objective="udlm", num_classes=C, cond_dropout=drop)
    got, aux = jax.jit(lambda b, k: losses.loss_fn(cfg)(apply_fn, b, k))(batch, key)
    # independent label draw: null class C where U(fold_in(key, 2)) < drop
    u = np.asarray(jax.random.uniform(jax.random.fold_in(key, 2), (B,)))
    want_y = np.where(u < drop, C, y) if drop > 0 else y
    if drop > 0:
      assert 0 < np.sum(want_y == C) < B
    want, _ = udlm_loss(lambda z, s: apply_fn(z, s, labels=jnp.asarray(want_y, jnp.int32)),
                        jnp.asarray(x, jnp.int32), key, sigma_fn=cfg.noise_schedule.sigma)
    np.testing.assert_allclose(float(got), float(want), rtol=1e-5)
    # the labels matter: a different label column gives a different loss
    other = batch.at[:, -1].set(1 - batch[:, -1])
    got2, _ = losses.loss_fn(cfg)(apply_fn, other, key)
    assert abs(float(got2) - float(got)) > 1e-3
  with pytest.raises(ValueError, match=r"\[B, L \+ 1\]"):
    losses.loss_fn(losses.LossConfig(objective="udlm", num_classes=C))(
        apply_fn, batch[:, :1], key)
