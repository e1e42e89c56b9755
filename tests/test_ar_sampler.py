"""AR ancestral sampler with CFG and FUDGE (remdm_jax.sampling.ar): numpy transcriptions on
injected Gumbel noise, float64 CFG / FUDGE step distributions, chi-square against exact AR models
of small known distributions (plain and FUDGE with the exact prefix classifier = p(x | y))."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from remdm_jax.sampling.ar import ARCFG, FUDGEGuidance, fudge_scores, make_ar_sampler

V, L, BOS, MASK = 7, 6, 0, 2
_rng = np.random.default_rng(0)
W = _rng.normal(size=(L, V, V))      # toy causal model: logits_l = sum_{j<=l} W[l, x_j] + E[y]
E = _rng.normal(size=(4, V)) * 1.5   # class embedding (3 = null)


def _np_logits(tokens, label=None):
  """float64 [B, L, V] of the toy causal model."""
  B = tokens.shape[0]
  out = np.zeros((B, L, V))
  for l in range(L):
    for j in range(l + 1):
      out[:, l] += W[l][tokens[:, j]]
  if label is not None:
    out += E[np.broadcast_to(label, (B,))][:, None, :]
  return out


def _jax_logits(params, tokens, labels=None):
  oh = jax.nn.one_hot(tokens, V, dtype=jnp.float32)                       # [B, L, V]
  cum = jnp.cumsum(jnp.einsum("bjv,lvw->bljw", oh, params["W"]), axis=2)  # [B, l, j, V]
  out = jnp.diagonal(cum, axis1=1, axis2=2).transpose(0, 2, 1)            # sum_{j<=l}
  if labels is not None:
    out = out + params["E"][labels][:, None, :]
  return out


P = {"W": jnp.asarray(W, jnp.float32), "E": jnp.asarray(E, jnp.float32)}


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _np_sample(G, step_logq, temperature=1.0):
  """Numpy transcription: position 0 = BOS, then position i = argmax(log q_i / temp + G[i-1])."""
  B = G.shape[1]
  toks = np.full((B, L), BOS, np.int64)
  for i in range(1, L):
    logq = step_logq(toks, i)
    toks[:, i] = np.argmax(logq / temperature + G[i - 1], -1)
  return toks


def _gumbel(B, seed=1):
  return np.random.default_rng(seed).gumbel(size=(L - 1, B, V)).astype(np.float32)


def test_toy_model_is_causal():
  t = _rng.integers(0, V, size=(3, L))
  t2 = t.copy()
  t2[:, 4:] = (t2[:, 4:] + 1) % V
  a, b = np.asarray(_jax_logits(P, jnp.asarray(t))), np.asarray(_jax_logits(P, jnp.asarray(t2)))
  np.testing.assert_allclose(a[:, :4], b[:, :4], atol=1e-5)
  np.testing.assert_allclose(a, _np_logits(t), atol=1e-4)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_plain_sampler_equals_numpy_transcription(temperature):
  B = 16
  G = _gumbel(B)
  s = make_ar_sampler(lambda p, z: _jax_logits(p, z), seq_len=L, bos_id=BOS,
                      temperature=temperature)
  got, info = s.sample_with_info(P, jax.random.PRNGKey(0), B, gumbel=G)
  want = _np_sample(G, lambda toks, i: _log_softmax(_np_logits(toks)[:, i - 1]), temperature)
  np.testing.assert_array_equal(np.asarray(got), want)
  assert got.dtype == jnp.int32 and got.shape == (B, L)
  assert int(info["nfe"]) == L - 1 and int(info["classifier_nfe"]) == 0
  # keyed draws: column 0 is BOS, a row does not depend on the batch size
  a = s(P, jax.random.PRNGKey(3), 8)
  b = s(P, jax.random.PRNGKey(3), 3)
  assert np.all(np.asarray(a)[:, 0] == BOS)
  np.testing.assert_array_equal(np.asarray(a)[:3], np.asarray(b))


def _cond_fn(p, z, y):
  return _jax_logits(p, z, y)


def test_cfg_gamma_0_1_equal_single_model_and_2p5_equals_float64():
  B, key, null = 12, jax.random.PRNGKey(4), 3
  G = _gumbel(B, 2)
  calls = []

  def counted(p, z, y):
    calls.append(z.shape[0])
    return _cond_fn(p, z, y)

  params = {"model": P, "labels": jnp.full((B,), 1, jnp.int32)}
  for gamma, lab in ((0.0, null), (1.0, 1)):
    calls.clear()
    s = make_ar_sampler(None, seq_len=L, bos_id=BOS, guidance=ARCFG(counted, gamma, null))
    got, info = s.sample_with_info(params, key, B)
    single = make_ar_sampler(lambda p, z: _cond_fn(p, z, jnp.full((z.shape[0],), lab)),
                             seq_len=L, bos_id=BOS)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(single(P, key, B)))
    # at most the vocabulary probe (jax.eval_shape of B rows, cached across samplers), then
    # one call of B rows per step
    assert calls in ([B], [B, B]) and int(info["model_rows"]) == L - 1
  gamma = 2.5
  calls.clear()
  s = make_ar_sampler(None, seq_len=L, bos_id=BOS, guidance=ARCFG(counted, gamma, null),
                      temperature=0.8)
  got, info = s.sample_with_info(params, key, B, gumbel=G)
  assert calls in ([2 * B], [B, 2 * B]) and int(info["model_rows"]) == 2 * (L - 1) and int(info["nfe"]) == L - 1

  def logq(toks, i):
    lc = _log_softmax(_np_logits(toks, 1)[:, i - 1])
    lu = _log_softmax(_np_logits(toks, null)[:, i - 1])
    return _log_softmax(gamma * lc + (1 - gamma) * lu)

  np.testing.assert_array_equal(np.asarray(got), _np_sample(G, logq, 0.8))


# toy closed-form noisy classifier: logit(y=1) = w * #(token == 5) + u * #(token == MASK) + c
CW, CU, CC = 0.9, -0.3, 0.2


def _np_clf_logp1(rows):
  z = CW * np.sum(rows == 5, -1) + CU * np.sum(rows == MASK, -1) + CC
  return -np.logaddexp(0.0, -z)   # log sigmoid


def _clf_fn(params, rows, t):
  z = (CW * jnp.sum(rows == 5, -1) + CU * jnp.sum(rows == MASK, -1) + CC).astype(jnp.float32)
  lp1 = jax.nn.log_sigmoid(z)
  return jnp.stack([jnp.log1p(-jnp.exp(lp1)), lp1], -1)


def _np_fudge_row(toks, i):
  """[B, V] rows x_<i, v, MASK...: brute force over v."""
  B = toks.shape[0]
  out = np.zeros((B, V))
  for v in range(V):
    rows = toks.copy()
    rows[:, i] = v
    rows[:, i + 1:] = MASK
    out[:, v] = _np_clf_logp1(rows)
  return out


def test_fudge_scores_vs_brute_force():
  toks = _rng.integers(0, V, size=(3, L)).astype(np.int32)
  for i in (1, 3, L - 1):
    cand = np.broadcast_to(np.arange(V), (3, V)).astype(np.int32)
    got = fudge_scores(_clf_fn, None, jnp.asarray(toks), jnp.int32(i), jnp.asarray(cand), 1,
                       MASK, chunk_size=5)
    np.testing.assert_allclose(np.asarray(got), _np_fudge_row(toks, i), atol=1e-5)


@pytest.mark.parametrize("top_k", [None, 3])
def test_fudge_sampler_equals_brute_force(top_k):
  B, gamma, temp = 10, 2.0, 0.9
  G = _gumbel(B, 5)
  g = FUDGEGuidance(_clf_fn, gamma, 1, MASK, top_k=top_k, chunk_size=16)
  s = make_ar_sampler(lambda p, z: _jax_logits(p, z), seq_len=L, bos_id=BOS, temperature=temp,
                      guidance=g)
  got, info = s.sample_with_info({"model": P, "classifier": None}, jax.random.PRNGKey(0), B,
                                 gumbel=G)
  k = V if top_k is None else top_k
  assert int(info["classifier_nfe"]) == (L - 1) * k and int(info["nfe"]) == L - 1

  def logq(toks, i):
    lp = _log_softmax(_np_logits(toks)[:, i - 1])
    out = lp + gamma * _np_fudge_row(toks, i)
    if top_k is not None:  # only the LM's top-k candidates survive
      kth = -np.sort(-lp, -1)[:, top_k - 1:top_k]
      out = np.where(lp >= kth, out, -np.inf)
    return out

  want = _np_sample(G, logq, temp)
  np.testing.assert_array_equal(np.asarray(got), want)
  if top_k is not None:  # every drawn token is among the LM's top-k at its step
    for i in range(1, L):
      lp = _np_logits(want)[:, i - 1]
      rank = np.sum(lp > lp[np.arange(B), want[:, i]][:, None], -1)
      assert np.all(rank < top_k)


# exact AR model of a small known joint p(x_1..x_3, y) over 3 real tokens (ids 1..3; id 0 = BOS,
# id 4 = MASK for the classifier)
V2, L2, M2 = 5, 4, 4


def _joint():
  r = np.random.default_rng(7)
  p = r.dirichlet(np.ones(27 * 2) * 0.7).reshape(3, 3, 3, 2)
  return p


def _exact_fns(p_xy):
  """(logits_fn of p(x), classifier_fn of p(y | prefix)) as table look-ups."""
  px = p_xy.sum(-1)
  # conditionals p(x_l | x_<l) for l = 1..3, indexed by prefix (as base-3 number)
  cond = []
  for l in range(3):
    marg = px.reshape((3,) * (l + 1) + (-1,)).sum(-1).reshape(3 ** l, 3)
    cond.append(np.log(marg / marg.sum(-1, keepdims=True)))
  table = np.full((3, 9, V2), -1e9)
  for l in range(3):
    table[l, : 3 ** l, 1:4] = cond[l]
  table = jnp.asarray(table, jnp.float32)
  # p(y | x_1..x_n) for prefixes of length n = 0..3
  post = np.zeros((4, 27, 2))
  for n in range(4):
    m = p_xy.reshape((3,) * n + (-1, 2)).sum(-2).reshape(3 ** n, 2)
    post[n, : 3 ** n] = np.log(m / m.sum(-1, keepdims=True))
  post = jnp.asarray(post, jnp.float32)

  def prefix_index(tok, n):  # base-3 number of tokens 1..n (ids 1..3 -> digits 0..2)
    d = jnp.clip(tok[:, 1:] - 1, 0, 2)
    w = 3 ** jnp.arange(2, -1, -1)          # most significant first over 3 positions
    full = jnp.sum(d * w, -1)
    return full // (3 ** (3 - n))

  def logits_fn(params, tok):
    outs = [table[l][prefix_index(tok, l)] for l in range(3)]
    outs.append(jnp.zeros((tok.shape[0], V2)))  # row L-1 predicts nothing
    return jnp.stack(outs, 1)

  def classifier_fn(params, tok, t):
    n = jnp.sum(tok[:, 1:] != M2, -1)
    idx = jnp.stack([prefix_index(tok, k) for k in range(4)], -1)
    i = jnp.take_along_axis(idx, n[:, None], -1)[:, 0]
    return post[n, i]

  return logits_fn, classifier_fn


def _chi2(samples, probs):
  seqs = list(itertools.product(range(3), repeat=3))
  code = {s: k for k, s in enumerate(seqs)}
  counts = np.zeros(27)
  for row in samples:
    counts[code[tuple(int(v) - 1 for v in row[1:])]] += 1
  return stats.chisquare(counts, probs.reshape(-1) * len(samples)).pvalue


def test_chi_square_exact_ar_and_exact_fudge():
  p_xy = _joint()
  logits_fn, clf = _exact_fns(p_xy)
  n = 20000
  s = make_ar_sampler(logits_fn, seq_len=L2, bos_id=0)
  x = np.asarray(s(None, jax.random.PRNGKey(0), n))
  assert np.all(x[:, 0] == 0) and np.all((x[:, 1:] >= 1) & (x[:, 1:] <= 3))
  assert _chi2(x, p_xy.sum(-1)) > 1e-3
  # FUDGE with gamma = 1 and the exact prefix classifier samples p(x | y = 1) exactly
  g = FUDGEGuidance(clf, 1.0, 1, M2)
  s = make_ar_sampler(logits_fn, seq_len=L2, bos_id=0, guidance=g)
  xg = np.asarray(s({"model": None, "classifier": None}, jax.random.PRNGKey(1), n))
  target = p_xy[..., 1] / p_xy[..., 1].sum()
  assert _chi2(xg, target) > 1e-3
  assert _chi2(xg, p_xy.sum(-1)) < 1e-6  # and not the unconditional one


def test_bad_input():
  f = lambda p, z: _jax_logits(p, z)
  with pytest.raises(ValueError, match="seq_len"):
    make_ar_sampler(f, seq_len=1, bos_id=0)
  with pytest.raises(ValueError, match="temperature"):
    make_ar_sampler(f, seq_len=L, bos_id=0, temperature=0.0)
  with pytest.raises(ValueError, match="logits_fn=None"):
    make_ar_sampler(f, seq_len=L, bos_id=0, guidance=ARCFG(_cond_fn, 2.0, 3))
  with pytest.raises(ValueError, match="guidance"):
    make_ar_sampler(f, seq_len=L, bos_id=0, guidance="cfg")
  with pytest.raises(ValueError, match="gamma"):
    FUDGEGuidance(_clf_fn, float("nan"), 1, MASK)
  with pytest.raises(ValueError, match="top_k"):
    FUDGEGuidance(_clf_fn, 1.0, 1, MASK, top_k=0)
  s = make_ar_sampler(f, seq_len=L, bos_id=0, guidance=FUDGEGuidance(_clf_fn, 1.0, 1, MASK))
  with pytest.raises(ValueError, match="classifier"):
    s(P, jax.random.PRNGKey(0), 2)
  with pytest.raises(ValueError, match="batch_size"):
    s({"model": P, "classifier": None}, jax.random.PRNGKey(0), 0)
  with pytest.raises(ValueError, match="gumbel"):
    make_ar_sampler(f, seq_len=L, bos_id=0).sample_with_info(P, jax.random.PRNGKey(0), 2,
                                                            gumbel=np.zeros((L, 2, V)))
  # ids outside the vocabulary (V from the logits shape) fail on the first call, before sampling
  with pytest.raises(ValueError, match=f"bos_id={V + 93}.*V={V}"):
    make_ar_sampler(f, seq_len=L, bos_id=V + 93)(P, jax.random.PRNGKey(0), 2)
  with pytest.raises(ValueError, match=f"fill_id={V}"):
    make_ar_sampler(f, seq_len=L, bos_id=0, fill_id=V, jit=False)(P, jax.random.PRNGKey(0), 2)
  with pytest.raises(ValueError, match=f"bos_id={V}"):
    make_ar_sampler(None, seq_len=L, bos_id=V, guidance=ARCFG(_cond_fn, 2.0, 3))(
        {"model": P, "labels": 1}, jax.random.PRNGKey(0), 2)
  assert make_ar_sampler(f, seq_len=L, bos_id=V - 1)(P, jax.random.PRNGKey(0), 2)[0, 0] == V - 1
