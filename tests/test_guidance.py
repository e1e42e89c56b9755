"""D-CFG and D-CBG (SPEC_DOMAINS §M.4, §M.6, §M.8 items 3-4): float64 numpy references,
a transcription of the reference's D-CBG rule, the ReMDM combination, the kernel draws, NFE
accounting, and an end-to-end chi-square test with an exact denoiser and classifier."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from remdm_jax.sampling import SamplerConfig, make_sampler, transition_sample
from remdm_jax.sampling.guidance import (CBGGuidance, cfg_denoise_fn, cfg_log_probs,
                                         cfg_model_calls, classifier_term)
from remdm_jax.sampling.reference import guided_transition_probs
from remdm_jax.sampling.sampler import KernelSpec
from remdm_jax.diffusion.subs import subs_log_probs

B, L, V, M = 2, 6, 7, 2
EPS = 1e-3


def _tokens():
  # some positions unmasked (never the mask id at those), the rest masked
  return np.array([[2, 0, 2, 5, 2, 2], [3, 2, 2, 6, 5, 2]], np.int32)


def _np_subs(logits, tokens):
  """Reference SUBS (diffusion.py::_subs_parameterization): mask logit -1e6, log_softmax,
  unmasked rows -1e6 except 0 at x_t."""
  lg = logits.astype(np.float64).copy()
  lg[..., M] += -1e6
  lg = lg - lg.max(-1, keepdims=True)
  lg = lg - np.log(np.exp(lg).sum(-1, keepdims=True))
  un = tokens != M
  carry = np.full(lg.shape, -1e6)
  np.put_along_axis(carry, tokens[..., None], 0.0, axis=-1)
  return np.where(un[..., None], carry, lg)


def _np_softmax(x):
  x = x - x.max(-1, keepdims=True)
  e = np.exp(x)
  return e / e.sum(-1, keepdims=True)


def _np_race(q, u):
  e = 1e-10 - np.log(u + 1e-10)
  return np.argmax(np.where(q > 0, q / e, -np.inf), axis=-1)


def _spec(precision="float64"):
  return KernelSpec(mask_id=M, precision=precision, unmask_buffer=L)


# ---------------------------------------------------------------- D-CFG


@pytest.mark.parametrize("gamma", [0.0, 1.0, 2.5])
def test_cfg_log_probs_vs_numpy(gamma):
  rng = np.random.default_rng(0)
  lc, lu = rng.normal(size=(2, B, L, V)) * 2.0
  tok = _tokens()
  with jax.enable_x64(True):
    got = np.exp(np.asarray(cfg_log_probs(jnp.asarray(lc), jnp.asarray(lu), jnp.asarray(tok),
                                          gamma, M)))
  want = _np_softmax(gamma * _np_subs(lc, tok) + (1.0 - gamma) * _np_subs(lu, tok))
  np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
  assert np.all(got[..., M] == 0.0)
  un = tok != M
  np.testing.assert_array_equal(got[un], np.eye(V)[tok[un]])  # unmasked rows stay one-hot
  if gamma == 2.5:  # the guided row really differs from both single-model rows
    for other in (_np_softmax(_np_subs(lc, tok)), _np_softmax(_np_subs(lu, tok))):
      assert np.abs(got[~un] - other[~un]).max() > 1e-2


def _counting_model(calls):
  def cond_fn(params, tokens, t, labels):
    calls.append((tokens.shape[0], np.asarray(labels).tolist()))
    # a label-dependent table of logits: row label y uses params[y]
    return params[labels] + 0.0 * t[:, None, None]
  return cond_fn


@pytest.mark.parametrize("gamma", [0.0, 1.0, 2.5])
def test_cfg_denoise_fn_single_and_batched_calls(gamma):
  rng = np.random.default_rng(1)
  table = jnp.asarray(rng.normal(size=(3, L, V)), jnp.float32)  # classes 0, 1, null = 2
  tok = jnp.asarray(_tokens())
  calls = []
  fn = cfg_denoise_fn(_counting_model(calls), gamma, null_label=2, mask_id=M)
  params = {"model": table, "labels": jnp.array([1, 0], jnp.int32)}
  out = fn(params, tok, jnp.full((B,), 0.5, jnp.float32))
  lc = table[jnp.array([1, 0])]
  lu = table[jnp.array([2, 2])]
  np.testing.assert_allclose(np.asarray(out), np.asarray(cfg_log_probs(lc, lu, tok, gamma, M)),
                             rtol=1e-6, atol=1e-6)
  assert cfg_model_calls(gamma) == (1 if gamma in (0.0, 1.0) else 2)
  if gamma == 1.0:
    assert calls == [(B, [1, 0])]
    np.testing.assert_array_equal(np.asarray(out), np.asarray(subs_log_probs(lc, tok, M)))
  elif gamma == 0.0:
    assert calls == [(B, [2, 2])]
    np.testing.assert_array_equal(np.asarray(out), np.asarray(subs_log_probs(lu, tok, M)))
  else:
    assert calls == [(2 * B, [1, 0, 2, 2])]  # ONE batched call: labels, then null labels


def test_cfg_denoise_fn_bad_input():
  with pytest.raises(ValueError, match="gamma"):
    cfg_denoise_fn(lambda *a: None, float("nan"), 2, mask_id=M)
  with pytest.raises(ValueError, match="null_label"):
    cfg_denoise_fn(lambda *a: None, 2.0, -1, mask_id=M)
  fn = cfg_denoise_fn(lambda *a: None, 2.0, 2, mask_id=M)
  with pytest.raises(ValueError, match="'model' and 'labels'"):
    fn({"model": 0}, jnp.zeros((1, 3), jnp.int32), jnp.zeros((1,)))


@pytest.mark.parametrize("gamma", [0.0, 1.0, 2.5])
def test_cfg_mdlm_and_remdm_posterior_vs_numpy(gamma):
  """§M.4 D-CFG steps 3-4 (q = x_theta (mc_t - mc_s)/mc_t, q[mask] = mc_s/mc_t, then copy-over),
  in float64, through the kernel: the oracle rows equal numpy, the kernel's race on given
  uniforms equals the numpy race, and ReMDM with sigma = 0 equals MDLM."""
  rng = np.random.default_rng(2)
  lc, lu = rng.normal(size=(2, B, L, V)) * 2.0
  tok = _tokens()
  t, s = 0.6, 0.55
  mc_t, mc_s = (1 - EPS) * t, (1 - EPS) * s
  x = _np_softmax(gamma * _np_subs(lc, tok) + (1.0 - gamma) * _np_subs(lu, tok))
  q = x * (mc_t - mc_s) / mc_t
  q[..., M] = mc_s / mc_t
  u = rng.uniform(size=(B, L, V))
  want = np.where(tok != M, tok, _np_race(q, u))  # copy-over
  with jax.enable_x64(True):
    logp = cfg_log_probs(jnp.asarray(lc), jnp.asarray(lu), jnp.asarray(tok), gamma, M)
    a_t, a_s = 1.0 - mc_t, 1.0 - mc_s
    oracle = np.asarray(guided_transition_probs(jnp.asarray(tok), jnp.exp(logp), None,
                                                alpha_t=a_t, alpha_s=a_s, sigma=0.0, mask_id=M))
    masked = tok == M
    np.testing.assert_allclose(oracle[masked], q[masked], rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(oracle[~masked], np.eye(V)[tok[~masked]])
    p_unmask = (a_s - a_t) / (1.0 - a_t)
    for sigma in (0.0, 0.3):
      coeffs = {"sigma": sigma, "conf": 0.0, "p_unmask": p_unmask}
      z, _ = transition_sample(jax.random.PRNGKey(0), jnp.asarray(tok), logp, coeffs,
                               _spec(), uniforms=jnp.asarray(u))
      if sigma == 0.0:
        np.testing.assert_array_equal(np.asarray(z), want)
      else:  # ReMDM: no copy-over; decoded positions race (1 - sigma) e_x + sigma e_m
        qr = np.where(masked[..., None], q, (1 - sigma) * np.eye(V)[tok] + sigma * np.eye(V)[M])
        np.testing.assert_array_equal(np.asarray(z), _np_race(qr, u))


# ---------------------------------------------------------------- D-CBG

W_CLS, B_CLS, TARGET = 0.7, -0.4, 5


def toy_classifier(params, x, t):
  """logit_y = w * count(token == 5) + b (binary, not time-conditioned); one-hot or tokens."""
  del t
  w, b = params
  count = jnp.sum(x[..., TARGET], -1) if x.ndim == 3 else jnp.sum(x == TARGET, -1)
  z = w * count.astype(jnp.float32) + b
  return jnp.stack([jax.nn.log_sigmoid(-z), jax.nn.log_sigmoid(z)], -1)


def _np_toy_logp(seq):
  z = W_CLS * np.sum(np.asarray(seq) == TARGET) + B_CLS
  return -np.log1p(np.exp(-z))  # log p(y=1)


def _np_C(tok):
  C = np.zeros((B, L, V))
  for b, l, v in itertools.product(range(B), range(L), range(V)):
    seq = tok[b].copy()
    seq[l] = v
    C[b, l, v] = _np_toy_logp(seq)
  return C


TOY_PARAMS = (jnp.float32(W_CLS), jnp.float32(B_CLS))


@pytest.mark.parametrize("chunk,token_input", [(7, False), (4096, False), (5, True)])
def test_cbg_exact_enumeration_vs_bruteforce(chunk, token_input):
  tok = _tokens()
  got = classifier_term(toy_classifier, TOY_PARAMS, jnp.asarray(tok), jnp.full((B,), 0.5), 1, V,
                        chunk_size=chunk, token_input=token_input)
  assert got.shape == (B, L, V) and got.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(got), _np_C(tok), rtol=1e-5, atol=1e-6)
  g = CBGGuidance(toy_classifier, gamma=2.0, label=1, chunk_size=chunk, token_input=token_input)
  assert g.classifier_calls_per_step(L, V) == L * V
  np.testing.assert_allclose(np.asarray(g.log_weight(TOY_PARAMS, jnp.asarray(tok),
                                                     jnp.zeros((B,)), V)),
                             2.0 * _np_C(tok), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("approx", [False, True])
def test_cbg_label_beyond_the_classifier_classes_is_refused(approx):
  """Issue 19 item 7: label 2 of a 2-class classifier was clamped to class 1 by the gather."""
  tok = jnp.asarray(_tokens())
  with pytest.raises(ValueError, match=r"label=2 is outside the classifier's classes \[0, 2\)"):
    classifier_term(toy_classifier, TOY_PARAMS, tok, jnp.full((B,), 0.5), 2, V, approx=approx)
  g = CBGGuidance(toy_classifier, gamma=2.0, label=5, approx=approx)
  with pytest.raises(ValueError, match="label=5 is outside"):
    jax.jit(lambda p, x: g.log_weight(p, x, jnp.zeros((B,)), V))(TOY_PARAMS, tok)


def test_cbg_first_order_equals_taylor():
  tok = _tokens()
  got = np.asarray(classifier_term(toy_classifier, TOY_PARAMS, jnp.asarray(tok), jnp.zeros((B,)),
                                   1, V, approx=True))
  # Taylor by hand: d log sigmoid(z) / d onehot[l, v] = w (1 - sigmoid(z)) 1[v = 5]
  lp0 = np.array([_np_toy_logp(tok[b]) for b in range(B)])
  z = W_CLS * np.sum(tok == TARGET, -1) + B_CLS
  g = W_CLS * (1.0 - 1.0 / (1.0 + np.exp(-z)))
  want = (lp0[:, None, None] + g[:, None, None] *
          ((np.arange(V) == TARGET)[None, None, :].astype(float) - (tok == TARGET)[..., None]))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert np.abs(got - _np_C(tok)).max() > 1e-3  # it is an approximation (toy is nonlinear)
  assert CBGGuidance(toy_classifier, approx=True).classifier_calls_per_step(L, V) == 1
  with pytest.raises(ValueError, match="one-hot"):
    CBGGuidance(toy_classifier, approx=True, token_input=True)


def _np_reference_cbg(logits, tok, C, gamma, t, s):
  """Transcription of the reference's _cbg_denoise (SPEC_DOMAINS §M.4 D-CBG steps 1-5)."""
  ell = _np_subs(logits, tok)
  mc_t, mc_s = (1 - EPS) * t, (1 - EPS) * s
  D = ell + np.log(1.0 - mc_s / mc_t)
  D[..., M] = np.log(mc_s / mc_t)
  G = gamma * C + D
  un = tok != M
  forced = np.full(G.shape, -1e6)
  np.put_along_axis(forced, tok[..., None], 0.0, axis=-1)
  G = np.where(un[..., None], forced, G)
  return _np_softmax(G)


def _np_remdm_cbg(logits, tok, C, gamma, t, s, sigma):
  """§M.6: q_guided ∝ q_sigma exp(gamma C), q_sigma the full ReMDM row, in numpy."""
  x = _np_softmax(_np_subs(logits, tok))
  a_t, a_s = 1 - (1 - EPS) * t, 1 - (1 - EPS) * s
  u = np.clip((a_s - (1 - sigma) * a_t) / (1 - a_t), 0, 1)
  qm = u * x + (1 - u) * np.eye(V)[M]
  qd = (1 - sigma) * np.eye(V)[tok] + sigma * np.eye(V)[M]
  q = np.where((tok == M)[..., None], qm, qd)
  with np.errstate(divide="ignore"):
    return _np_softmax(np.log(q) + gamma * C)


@pytest.mark.parametrize("sigma", [0.0, 0.3])
def test_cbg_guided_rows_and_kernel_vs_numpy(sigma):
  rng = np.random.default_rng(3)
  logits = rng.normal(size=(B, L, V)) * 1.5
  tok = _tokens()
  gamma, t, s = 2.0, 0.6, 0.5
  C = _np_C(tok)
  want = _np_remdm_cbg(logits, tok, C, gamma, t, s, sigma)
  if sigma == 0.0:  # reduces exactly to the reference's rule (forced copy-over)
    ref = _np_reference_cbg(logits, tok, C, gamma, t, s)
    np.testing.assert_allclose(want, ref, rtol=1e-12, atol=1e-300)
  a_t, a_s = 1 - (1 - EPS) * t, 1 - (1 - EPS) * s
  with jax.enable_x64(True):
    x0 = jnp.exp(subs_log_probs(jnp.asarray(logits), jnp.asarray(tok), M))
    lw = gamma * jnp.asarray(C)
    got = np.asarray(guided_transition_probs(jnp.asarray(tok), x0, lw, alpha_t=a_t, alpha_s=a_s,
                                             sigma=sigma, mask_id=M))
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-300)
    un = tok != M
    if sigma == 0.0:
      np.testing.assert_array_equal(got[un], np.eye(V)[tok[un]])
    else:  # mass only on {x_t, mask}, ratio (1 - sigma) e^{gamma C_x} : sigma e^{gamma C_m}
      other = np.ones((B, L, V), bool)
      np.put_along_axis(other, tok[..., None], False, axis=-1)
      other[..., M] = False
      assert np.all(got[un][other[un]] == 0.0)
      px = np.take_along_axis(got, tok[..., None], -1)[..., 0][un]
      pm = got[..., M][un]
      cx = np.take_along_axis(C, tok[..., None], -1)[..., 0][un]
      ratio = (1 - sigma) * np.exp(gamma * cx) / (sigma * np.exp(gamma * C[..., M][un]))
      np.testing.assert_allclose(px / pm, ratio, rtol=1e-10)
      np.testing.assert_allclose(px + pm, 1.0, rtol=1e-12)
    # the kernel's float64 race on given uniforms = numpy race on the numpy guided row
    u = rng.uniform(size=(B, L, V))
    coeffs = {"sigma": sigma, "conf": 0.0, "p_unmask": np.clip((a_s - (1 - sigma) * a_t)
                                                               / (1 - a_t), 0, 1)}
    z, _ = transition_sample(jax.random.PRNGKey(0), jnp.asarray(tok), jnp.asarray(logits), coeffs,
                             _spec(), uniforms=jnp.asarray(u), log_weight=lw)
    np.testing.assert_array_equal(np.asarray(z), _np_race(want, u))


@pytest.mark.parametrize("sigma", [0.0, 0.3])
def test_cbg_exact32_kernel_frequencies(sigma):
  """exact32 + log_weight: the Gumbel-max draw on the full guided row has the numpy row's law
  (chi-square per position, 20000 independent rows with the same z_t)."""
  rng = np.random.default_rng(4)
  logits = rng.normal(size=(B, L, V)) * 1.5
  tok = _tokens()
  gamma, t, s = 1.5, 0.6, 0.4
  C = _np_C(tok)
  want = _np_remdm_cbg(logits, tok, C, gamma, t, s, sigma)
  a_t, a_s = 1 - (1 - EPS) * t, 1 - (1 - EPS) * s
  n = 10000
  toks = jnp.asarray(np.repeat(tok, n, axis=0))
  lg = jnp.asarray(np.repeat(logits, n, axis=0), jnp.float32)
  lw = jnp.asarray(np.repeat(gamma * C, n, axis=0), jnp.float32)
  coeffs = {"sigma": jnp.float32(sigma), "conf": jnp.float32(0.0),
            "p_unmask": jnp.float32(np.clip((a_s - (1 - sigma) * a_t) / (1 - a_t), 0, 1))}
  z, _ = jax.jit(lambda k: transition_sample(k, toks, lg, coeffs, _spec("exact32"),
                                             log_weight=lw))(jax.random.PRNGKey(7))
  z = np.asarray(z).reshape(B, n, L)
  pvals = []
  for b, l in itertools.product(range(B), range(L)):
    p = want[b, l]
    counts = np.bincount(z[b, :, l], minlength=V)
    assert np.all(counts[p == 0] == 0)
    keep = p > 0
    if keep.sum() > 1:
      pvals.append(stats.chisquare(counts[keep], n * p[keep] / p[keep].sum()).pvalue)
  assert min(pvals) > 1e-4 / len(pvals), pvals


def test_transition_sample_log_weight_shape_error():
  tok = jnp.asarray(_tokens())
  with pytest.raises(ValueError, match="log_weight shape"):
    transition_sample(jax.random.PRNGKey(0), tok, jnp.zeros((B, L, V)),
                      {"sigma": 0.0, "conf": 0.0, "p_unmask": 0.5}, _spec("exact32"),
                      log_weight=jnp.zeros((B, L, V - 1)))


# ---------------------------------------------------------------- samplers, NFE, end to end

L3, N4 = 3, 4          # small joint: L = 3 positions, 4 real tokens, mask id 4
M3, V5 = N4, N4 + 1
SEQS = np.array(list(itertools.product(range(N4), repeat=L3)), np.int32)  # [64, 3]


def _joint(seed=0):
  rng = np.random.default_rng(seed)
  p = rng.dirichlet(np.full(len(SEQS), 0.7))               # not a product distribution
  py = 1.0 / (1.0 + np.exp(-3.0 * rng.normal(size=len(SEQS))))  # p(y = 1 | x)
  return p, py


def _exact_models(p, py):
  P = jnp.asarray(p, jnp.float32)
  PY = jnp.asarray(np.stack([1 - py, py], -1), jnp.float32)
  oh_seq = jax.nn.one_hot(jnp.asarray(SEQS), V5, dtype=jnp.float32)  # [64, 3, 5]

  def consistent(x):  # x one-hot [N, L, V5] -> [N, 64]: every visible token matches
    match = jnp.einsum("nlv,klv->nkl", x, oh_seq) + x[:, None, :, M3]
    return jnp.prod(match, -1)

  def denoise_fn(params, tokens, t):
    """exact x_theta: p(x_l = v | visible tokens) (the conditional marginal), log space."""
    del params, t
    w = consistent(jax.nn.one_hot(tokens, V5, dtype=jnp.float32)) * P
    post = w / jnp.sum(w, -1, keepdims=True)
    marg = jnp.einsum("nk,klv->nlv", post, oh_seq)
    return jnp.log(jnp.maximum(marg, 1e-30))

  def classifier_fn(params, x, t):
    """exact p(y | x_t) = sum_x p(y | x) p(x | visible), differentiable in the one-hot x."""
    del params, t
    w = consistent(x) * P
    return jnp.log(w @ PY) - jnp.log(jnp.sum(w, -1, keepdims=True))

  return denoise_fn, classifier_fn


def _seq_index(z):
  return (z * (N4 ** np.arange(L3)[::-1])).sum(-1)


def test_cbg_end_to_end_samples_conditional():
  """MDLM + exact D-CBG (gamma = 1) with an exact denoiser and the exact p(y | x_t) of a small
  non-product joint samples p(x | y = 1) (chi-square), which differs clearly from p(x)."""
  p, py = _joint()
  denoise_fn, classifier_fn = _exact_models(p, py)
  target = p * py / np.sum(p * py)
  # exact as dt -> 0; at n = 3000, T = 128 passes and gamma = 0.8 is rejected (p ~ 1e-6)
  cfg = SamplerConfig(strategy="mdlm", num_steps=128)
  g = CBGGuidance(classifier_fn, gamma=1.0, label=1)
  sampler = make_sampler(denoise_fn, cfg, seq_len=L3, mask_id=M3, guidance=g)
  n = 3000
  z, info = sampler.sample_with_info({"model": None, "classifier": None}, jax.random.PRNGKey(0),
                                     batch_size=n)
  z = np.asarray(z)
  assert z.shape == (n, L3) and np.all(z < N4)
  assert int(info["nfe"]) == cfg.num_steps + 1
  assert int(info["classifier_nfe"]) == cfg.num_steps * L3 * V5
  counts = np.bincount(_seq_index(z), minlength=len(SEQS))
  keep = target * n >= 5
  f_obs = np.append(counts[keep], counts[~keep].sum())
  f_exp = np.append(n * target[keep], n * target[~keep].sum())
  assert stats.chisquare(f_obs, f_exp).pvalue > 1e-3
  # guidance has an effect: the unconditional p(x) is rejected
  pk = p * n >= 5
  f_exp0 = np.append(n * p[pk], n * p[~pk].sum())
  f_obs0 = np.append(counts[pk], counts[~pk].sum())
  assert stats.chisquare(f_obs0, f_exp0).pvalue < 1e-6


STRATS = ["mdlm", "remdm_conf"] + [pytest.param(s_, marks=pytest.mark.slow) for s_ in
                                   ("remdm_cap", "remdm_rescale", "remdm_loop", "fb", "dfm")]


def _mean_py(sampler, params, py, n, seed):
  z, info = sampler.sample_with_info(params, jax.random.PRNGKey(seed), batch_size=n)
  z = np.asarray(z)
  assert z.shape == (n, L3) and np.all(z < N4)
  return py[_seq_index(z)].mean(), info


@pytest.mark.parametrize("strategy", STRATS)
def test_guided_sampler_every_strategy(strategy):
  """D-CFG (gamma = 2.5, one batched call of 2B rows) and exact D-CBG (gamma = 3) run under every
  strategy with NFE accounting; CBG raises the mean p(y = 1 | x) of the samples well above its
  exact unconditional value sum_x p(x) p(y = 1 | x)."""
  p, py = _joint(1)
  denoise_fn, classifier_fn = _exact_models(p, py)
  eta = {"remdm_cap": 0.05, "remdm_rescale": 0.5, "remdm_loop": 0.05}.get(strategy)
  cfg = SamplerConfig(strategy=strategy, num_steps=16, eta=eta)
  n = 256
  rows = []

  def cond_fn(params, tokens, t, labels):
    rows.append(tokens.shape[0])
    return denoise_fn(None, tokens, t) + 0.3 * labels[:, None, None].astype(jnp.float32)

  s_cfg = make_sampler(cfg_denoise_fn(cond_fn, 2.5, null_label=2, mask_id=M3), cfg, seq_len=L3,
                       mask_id=M3)
  _, info = _mean_py(s_cfg, {"model": None, "labels": jnp.ones((n,), jnp.int32)}, py, n, 1)
  assert set(rows) == {2 * n} and int(info["nfe"]) == s_cfg.nfe
  s = make_sampler(denoise_fn, cfg, seq_len=L3, mask_id=M3,
                   guidance=CBGGuidance(classifier_fn, gamma=3.0, label=1))
  mean, info = _mean_py(s, {"model": None, "classifier": None}, py, n, 2)
  assert int(info["classifier_nfe"]) == s.schedule.n_steps * L3 * V5
  assert mean > float(np.sum(p * py)) + 0.1, (mean, np.sum(p * py))


@pytest.mark.parametrize("strategy", ["mdlm", "remdm_cap"])
def test_guided_sampler_first_order(strategy):
  """approx=True: one classifier forward + backward per step; gamma = 3 raises mean p(y | x)
  over gamma = 0 on the same seed."""
  p, py = _joint(1)
  denoise_fn, classifier_fn = _exact_models(p, py)
  cfg = SamplerConfig(strategy=strategy, num_steps=16, eta=0.05 if strategy != "mdlm" else None)
  means = {}
  for gamma in (0.0, 3.0):
    s = make_sampler(denoise_fn, cfg, seq_len=L3, mask_id=M3,
                     guidance=CBGGuidance(classifier_fn, gamma=gamma, approx=True))
    means[gamma], info = _mean_py(s, {"model": None, "classifier": None}, py, 256, 2)
    assert int(info["classifier_nfe"]) == 16
  assert means[3.0] > means[0.0] + 0.1, means


def test_guided_sampler_bad_params_and_guidance():
  p, py = _joint()
  denoise_fn, classifier_fn = _exact_models(p, py)
  cfg = SamplerConfig(strategy="mdlm", num_steps=4)
  s = make_sampler(denoise_fn, cfg, seq_len=L3, mask_id=M3,
                   guidance=CBGGuidance(classifier_fn))
  with pytest.raises(ValueError, match="'model' and 'classifier'"):
    s({"model": None}, jax.random.PRNGKey(0), batch_size=2)
  with pytest.raises(ValueError, match="CBGGuidance"):
    make_sampler(denoise_fn, cfg, seq_len=L3, mask_id=M3, guidance="cfg")
  with pytest.raises(ValueError, match="gamma"):
    CBGGuidance(classifier_fn, gamma=float("inf"))


def test_cbg_cache_reuses_classifier_term():
  """cache_unchanged with D-CBG: C is cached with the logits; classifier_nfe counts only the
  steps that called it, and samples equal the uncached run."""
  p, py = _joint()
  denoise_fn, classifier_fn = _exact_models(p, py)
  g = CBGGuidance(classifier_fn, gamma=2.0)
  out = {}
  for cache in (False, True):
    cfg = SamplerConfig(strategy="mdlm", num_steps=64, cache_unchanged=cache,
                        time_independent=True)
    s = make_sampler(denoise_fn, cfg, seq_len=L3, mask_id=M3, guidance=g)
    out[cache] = s.sample_with_info({"model": None, "classifier": None}, jax.random.PRNGKey(3),
                                    batch_size=8)
  np.testing.assert_array_equal(np.asarray(out[False][0]), np.asarray(out[True][0]))
  nfe_c = int(out[True][1]["nfe"])
  cls_steps, rem = divmod(int(out[True][1]["classifier_nfe"]), L3 * V5)
  assert rem == 0 and nfe_c < 65 and nfe_c - 1 <= cls_steps <= nfe_c  # final step: no classifier
  assert int(out[False][1]["classifier_nfe"]) == 64 * L3 * V5


def test_no_noise_removal_option():
  """noise_removal=False (the QM9 reference, §M.4) skips the final argmax: nfe = n_steps, and
  with few steps some positions stay masked; the default removes them."""
  p, py = _joint()
  denoise_fn, _ = _exact_models(p, py)
  cfg = SamplerConfig(strategy="mdlm", num_steps=2, eps=0.4)  # the grid ends at t = 0.4
  out = {}
  for nr in (True, False):
    s = make_sampler(denoise_fn, cfg, seq_len=L3, mask_id=M3, noise_removal=nr)
    z, info = s.sample_with_info(None, jax.random.PRNGKey(0), batch_size=256)
    assert int(info["nfe"]) == s.nfe == (3 if nr else 2)
    out[nr] = np.asarray(z)
  assert not np.any(out[True] == M3) and np.any(out[False] == M3)
  kept = out[False] != M3
  np.testing.assert_array_equal(out[True][kept], out[False][kept])


def test_cbg_sampler_float64_race():
  """The float64 race path of the kernel with log_weight inside make_sampler (x64 on)."""
  p, py = _joint(1)
  denoise_fn, classifier_fn = _exact_models(p, py)
  with jax.enable_x64(True):
    cfg = SamplerConfig(strategy="remdm_cap", num_steps=16, eta=0.05, precision="float64")
    s = make_sampler(denoise_fn, cfg, seq_len=L3, mask_id=M3,
                     guidance=CBGGuidance(classifier_fn, gamma=3.0))
    mean, info = _mean_py(s, {"model": None, "classifier": None}, py, 256, 3)
  assert int(info["classifier_nfe"]) == 16 * L3 * V5
  assert mean > float(np.sum(p * py)) + 0.1
