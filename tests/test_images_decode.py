"""Image-token decoding (SPEC_DOMAINS §I.1, §I.3 items 2-5): MaskGIT against an independent numpy
transcription of the reference loop (google-research/maskgit parallel_decode.decode, "maskgit"
branch, written from SPEC_DOMAINS §I.1), the fork's ReMDM posteriors, vocabulary handling and
exactness with an exact denoiser (chi-square)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from remdm_jax.images import decode as dec
from remdm_jax.sampling import uniform_grid

K, N, NCLS = 8, 16, 3          # codebook, image tokens, classes
CLS0, MASK = K, K + NCLS       # class ids 8..10, mask 11
VTOT = MASK + 1
L = N + 1

_rs = np.random.RandomState(0)
POS = _rs.normal(size=(L, VTOT)).astype(np.float32) * 1.5
TOK = _rs.normal(size=(VTOT, VTOT)).astype(np.float32)


def table_np(tokens):
  """A deterministic logits table f(tokens) [B, L, VTOT]: position term + mean token embedding."""
  ctx = TOK[tokens].mean(axis=1, keepdims=True)          # [B, 1, V]
  nb = np.roll(TOK[tokens], 1, axis=1)                    # left neighbour's embedding
  return (POS[None] + ctx + nb).astype(np.float32)


def table_jax(params, tokens, t):
  del params, t
  emb = jnp.asarray(TOK)[tokens]
  return jnp.asarray(POS)[None, :tokens.shape[1]] + emb.mean(axis=1, keepdims=True) + jnp.roll(emb, 1, axis=1)


def np_schedule(r, n0, method):
  return {"uniform": 1.0 - r, "cosine": np.cos(np.pi / 2 * r)}[method].clip(1e-6, 1.0)


def np_maskgit(inputs, T, method, choice_temp, g_cat, g_choice, tau=1.0, table=None,
               allow_ties=False):
  """SPEC_DOMAINS §I.1 maskgit branch, float64 numpy. Returns (final_seqs [B,T,L], states)."""
  table = table_np if table is None else table
  cur = inputs.copy()
  B = cur.shape[0]
  n0 = (inputs == MASK).sum(-1)
  final = np.zeros((B, T, L), np.int64)
  states = np.zeros((B, T, L), np.int64)
  for step in range(T):
    logits = table(cur)[..., :K].astype(np.float64) / tau
    x = np.argmax(logits + g_cat[step], axis=-1)
    unknown = cur == MASK
    x = np.where(unknown, x, cur)
    ratio = (step + 1) / T
    m = np_schedule(np.float64(ratio), n0, method)
    final[:, step] = x
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    conf = np.take_along_axis(p, np.clip(x, 0, K - 1)[..., None], -1)[..., 0]
    conf = np.where(unknown, conf, np.inf)
    mask_len = np.floor(n0 * m)
    mask_len = np.maximum(1, np.minimum(unknown.sum(-1) - 1, mask_len)).astype(int)
    c = np.log(conf) + choice_temp * (1 - ratio) * g_choice[step]
    cut = np.take_along_axis(np.sort(c, -1), mask_len[:, None], -1)
    masking = c < cut  # strict: positions tied with the cut-off stay committed (issue 19)
    if allow_ties:
      assert np.all(masking.sum(-1) <= mask_len)
    else:  # distinct scores: the state keeps exactly mask_len masks (§I.3 item 2)
      assert np.all(masking.sum(-1) == np.minimum(mask_len, unknown.sum(-1))), (step, mask_len)
    cur = np.where(masking, MASK, x)
    states[:, step] = cur
  return final, states


def gumbels(seed, T, B):
  rs = np.random.RandomState(seed)
  return (rs.gumbel(size=(T, B, L, K)).astype(np.float32),
          rs.gumbel(size=(T, B, L)).astype(np.float32))


@pytest.mark.parametrize("T", [4, 8])
@pytest.mark.parametrize("method", ["cosine", "uniform"])
def test_maskgit_equals_numpy_reference_every_step(T, method):
  B = 6
  labels = np.arange(B) % NCLS
  g_cat, g_ch = gumbels(T * 10 + len(method), T, B)
  inputs = np.concatenate([CLS0 + labels[:, None], np.full((B, N), MASK)], 1)
  want_final, want_states = np_maskgit(inputs, T, method, 4.5, g_cat, g_ch)
  cfg = dec.ImageSamplerConfig("maskgit", num_steps=T, mask_schedule=method,
                               choice_temperature=4.5, record_steps=True)
  s = dec.make_image_sampler(table_jax, cfg, num_tokens=N, codebook_size=K, mask_id=MASK)
  out, info = s.sample_with_info(None, jax.random.PRNGKey(0), labels=labels,
                                 noise={"categorical": g_cat, "choice": g_ch})
  np.testing.assert_array_equal(np.asarray(info["final_seqs"]), want_final)
  np.testing.assert_array_equal(np.asarray(info["states"]), want_states)
  np.testing.assert_array_equal(np.asarray(out), want_final[:, -1, 1:])
  assert not np.any(np.asarray(out) == MASK)
  assert np.asarray(out).max() < K


def test_maskgit_ties_at_the_cut_off_are_committed():
  """Issue 19 item 4, the smallest case: a model confident to float32 1.0 at every position
  (identical rows) and choice temperature 0 gives every new token the score log 1 = 0; Google's
  `confidence < cut_off` then re-masks nothing, so the first step commits the whole image. The
  project re-masked exactly mask_len, and its tokens differed from the reference's."""
  def sure_np(tokens):
    out = np.zeros(tokens.shape + (VTOT,), np.float32)
    out[..., 3] = 60.0  # softmax = 1.0 in float32 at code 3
    return out

  def sure_jax(params, tokens, t):
    del params, t
    return jnp.zeros(tokens.shape + (VTOT,), jnp.float32).at[..., 3].set(60.0)

  T, B = 4, 2
  labels = np.array([0, 2])
  g_cat, g_ch = gumbels(7, T, B)
  inputs = np.concatenate([CLS0 + labels[:, None], np.full((B, N), MASK)], 1)
  want_final, want_states = np_maskgit(inputs, T, "cosine", 0.0, g_cat, g_ch, table=sure_np,
                                       allow_ties=True)
  assert not np.any(want_states[:, 0] == MASK)  # the reference commits everything at step 1
  cfg = dec.ImageSamplerConfig("maskgit", num_steps=T, mask_schedule="cosine",
                               choice_temperature=0.0, record_steps=True)
  s = dec.make_image_sampler(sure_jax, cfg, num_tokens=N, codebook_size=K, mask_id=MASK)
  out, info = s.sample_with_info(None, jax.random.PRNGKey(0), labels=labels,
                                 noise={"categorical": g_cat, "choice": g_ch})
  np.testing.assert_array_equal(np.asarray(info["states"]), want_states)
  np.testing.assert_array_equal(np.asarray(info["final_seqs"]), want_final)
  np.testing.assert_array_equal(np.asarray(out), np.full((B, N), 3))


def test_maskgit_remask_counts_committed_tokens_and_class_token():
  T, B = 8, 5
  labels = np.array([0, 1, 2, 1, 0])
  cfg = dec.ImageSamplerConfig("maskgit", num_steps=T, mask_schedule="cosine", record_steps=True)
  s = dec.make_image_sampler(table_jax, cfg, num_tokens=N, codebook_size=K, mask_id=MASK)
  out, info = s.sample_with_info(None, jax.random.PRNGKey(3), labels=labels)
  states = np.asarray(info["states"])
  final = np.asarray(info["final_seqs"])
  unknown = N
  for i in range(T):
    m = np.cos(np.pi / 2 * (i + 1) / T).clip(1e-6, 1)
    want = max(1, min(unknown - 1, int(np.floor(N * np.float32(m)))))
    assert np.all((states[:, i] == MASK).sum(-1) == want), i
    unknown = want
    assert np.all(final[:, i, 0] == CLS0 + labels) and np.all(states[:, i, 0] == CLS0 + labels)
    assert not np.any(final[:, i] == MASK)
    known = states[:, i] != MASK
    for j in range(i + 1, T):   # committed tokens never change
      assert np.all(np.where(known, final[:, j] == states[:, i], True))
      assert np.all(np.where(known, states[:, j] == states[:, i], True))
  assert (states[:, -1] == MASK).sum(-1).tolist() == [1] * B   # the state keeps one mask
  np.testing.assert_array_equal(np.asarray(out), final[:, -1, 1:])


def test_maskgit_mask_len_rule():
  n0 = jnp.array([16, 16, 16, 16, 256])
  unknown = jnp.array([16, 3, 1, 0, 200])
  got = dec.maskgit_mask_len(n0, unknown, jnp.float32(0.5))
  assert got.tolist() == [8, 2, 1, 1, 128]


def test_maskgit_default_keys_follow_the_reference_chain():
  """Without injected noise, step i uses rng, k = split(rng); categorical(k); rng, c = split(rng);
  gumbel(c): the same as injecting those Gumbels."""
  T, B = 4, 3
  key = jax.random.PRNGKey(7)
  g_cat, g_ch, rng = [], [], key
  for _ in range(T):
    rng, k = jax.random.split(rng)
    g_cat.append(np.asarray(jax.random.gumbel(k, (B, L, K))))
    rng, c = jax.random.split(rng)
    g_ch.append(np.asarray(jax.random.gumbel(c, (B, L))))
  cfg = dec.ImageSamplerConfig("maskgit", num_steps=T, record_steps=True)
  s = dec.make_image_sampler(table_jax, cfg, num_tokens=N, codebook_size=K, mask_id=MASK)
  labels = np.array([0, 1, 2])
  a = s.sample_with_info(None, key, labels=labels)[1]["final_seqs"]
  b = s.sample_with_info(None, key, labels=labels, noise={"categorical": np.stack(g_cat),
                                                          "choice": np.stack(g_ch)})[1]["final_seqs"]
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ---------------------------------------------------------------------------------------------
# the fork's posteriors
# ---------------------------------------------------------------------------------------------

def _posterior_inputs(seed=0, B=3):
  rs = np.random.RandomState(seed)
  tokens = rs.randint(0, K - 1, size=(B, L))
  tokens[rs.rand(B, L) < 0.5] = MASK
  tokens[:, 0] = CLS0
  return jnp.asarray(tokens), jnp.asarray(rs.normal(size=(B, L, K)).astype(np.float32))


@pytest.mark.parametrize("strategy", ["remdm_cap", "remdm_rescale", "remdm_conf", "fb", "mdlm"])
def test_fork_posterior_rows_sum_to_one_and_nonnegative(strategy):
  tokens, logits = _posterior_inputs()
  T = 8
  for step in range(T - 1 if strategy == "fb" else T):   # fb's last step has a negative weight
    t, s = (T - step) / T, (T - step - 1) / T
    a_t, a_s = np.clip(1 - t, 1e-6, 1), np.clip(1 - s, 1e-6, 1)
    sig = float(dec.fork_sigma(strategy, jnp.float32(a_t), jnp.float32(a_s), 0.05))
    if strategy == "remdm_conf":
      sig = np.random.RandomState(step).rand(*tokens.shape) * sig
    q, _ = dec.fork_posterior(tokens, logits, jnp.float32(a_t), jnp.float32(a_s), sig, MASK,
                              strategy)
    q = np.asarray(q, np.float64)
    # position 0 (class token, onehot(id >= K) = 0) is forced back by the loop, not sampled
    rows = q[:, 1:] if strategy != "mdlm" else q[np.asarray(tokens) == MASK]
    np.testing.assert_allclose(rows.sum(-1), 1.0, atol=1e-6)
    assert rows.min() >= -1e-7


def test_fork_sigmas_match_spec():
  a_t, a_s = jnp.float32(0.3), jnp.float32(0.45)
  smax = (1 - 0.45) / 0.3
  assert float(dec.fork_sigma("remdm_cap", a_t, a_s, 0.05)) == pytest.approx(min(smax, 0.05))
  assert float(dec.fork_sigma("remdm_rescale", a_t, a_s, 0.05)) == pytest.approx(0.05 * min(smax, 1))
  assert float(dec.fork_sigma("remdm_conf", a_t, a_s, 0.05)) == pytest.approx(min(smax, 1))
  assert float(dec.fork_sigma("fb", a_t, a_s, 0.05)) == pytest.approx(min((0.45 - 0.3) / 0.3, 1))


def test_fork_conf_weights_stale_and_clean():
  rs = np.random.RandomState(1)
  neg = rs.exponential(size=(2, L)).astype(np.float32)
  neg[:, 0] = -np.inf
  tokens = rs.randint(0, K, size=(2, L))
  tokens[:, 0] = CLS0
  tokens[rs.rand(2, L) < 0.4] = MASK
  masked = tokens == MASK
  e = np.exp(neg.astype(np.float64))
  stale = np.where(masked, 0.0, e / e.sum(-1, keepdims=True))                 # stale denominators
  clean = np.where(masked, 0.0, e / np.where(masked, 0, e).sum(-1, keepdims=True))
  got_s = np.asarray(dec.fork_conf_weights(jnp.asarray(neg), jnp.asarray(tokens), MASK, True))
  got_c = np.asarray(dec.fork_conf_weights(jnp.asarray(neg), jnp.asarray(tokens), MASK, False))
  np.testing.assert_allclose(got_s, stale, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(got_c, clean, rtol=1e-5, atol=1e-7)
  assert np.all(got_s.sum(-1) < got_c.sum(-1) - 1e-3)     # the quirk loses mass
  np.testing.assert_allclose(got_c.sum(-1), 1.0, rtol=1e-5)
  # all masked -> NaN softmax -> 0 (nan_to_num)
  w = dec.fork_conf_weights(jnp.full((1, L), -jnp.inf), jnp.full((1, L), MASK), MASK, True)
  assert np.all(np.asarray(w) == 0)


def _uniforms(T, B, V, seed):
  return np.random.RandomState(seed).rand(T, B, L, V).astype(np.float32)


@pytest.mark.parametrize("fork", [True, False])
def test_sigma_zero_equals_mdlm_bitwise(fork):
  T, B = 8, 16
  labels = np.arange(B) % NCLS
  extra = {} if fork else {"precision": "float32"}
  V = K if fork else MASK + 1
  U = _uniforms(T, B, V, 5)
  outs = []
  for st in ("mdlm", "remdm_cap", "remdm_rescale"):
    cfg = dec.ImageSamplerConfig(st, num_steps=T, eta=0.0, fork_compat=fork, extra=extra)
    s = dec.make_image_sampler(table_jax, cfg, num_tokens=N, codebook_size=K, mask_id=MASK)
    outs.append(np.asarray(s(None, jax.random.PRNGKey(0), labels=labels, noise={"uniforms": U})))
  np.testing.assert_array_equal(outs[0], outs[1])
  np.testing.assert_array_equal(outs[0], outs[2])
  # and eta > 0 does change something (the comparison can fail)
  cfg = dec.ImageSamplerConfig("remdm_cap", num_steps=T, eta=0.5, fork_compat=fork, extra=extra)
  s = dec.make_image_sampler(table_jax, cfg, num_tokens=N, codebook_size=K, mask_id=MASK)
  assert np.any(np.asarray(s(None, jax.random.PRNGKey(0), labels=labels,
                             noise={"uniforms": U})) != outs[0])


def test_fork_mode_equals_numpy_transcription_mdlm_and_rescale():
  """Fork mode == a numpy transcription of §I.1 (mdlm / remdm_rescale), same uniforms."""
  T, B, eta = 8, 4, 0.3
  labels = np.arange(B) % NCLS
  U = _uniforms(T, B, K, 9)
  for st in ("mdlm", "remdm_rescale"):
    cur = np.concatenate([CLS0 + labels[:, None], np.full((B, N), MASK)], 1)
    finals = []
    for step in range(T):
      lg = table_np(cur)[..., :K].astype(np.float64)
      lg[..., K - 1] = -np.inf
      x = np.exp(lg - lg.max(-1, keepdims=True))
      x /= x.sum(-1, keepdims=True)
      a_t = np.clip(1 - (T - step) / T, 1e-6, 1)
      a_s = np.clip(1 - (T - step - 1) / T, 1e-6, 1)
      em = np.eye(K)[K - 1]
      if st == "mdlm":
        q = x * ((1 - a_t) - (1 - a_s)) / (1 - a_t)
        q[..., K - 1] = (1 - a_s) / (1 - a_t)
      else:
        sg = eta * min((1 - a_s) / a_t, 1)
        q1 = (a_s - a_t * (1 - sg)) / (1 - a_t) * x + (1 - a_s - a_t * sg) / (1 - a_t) * em
        oh = np.where((cur[..., None] == np.arange(K)), 1.0, 0.0)
        q2 = (1 - sg) * oh + sg * em
        q = np.where((cur == MASK)[..., None], q1, q2)
      xs = np.argmax(q / (1e-10 - np.log(U[step].astype(np.float64) + 1e-10)), -1)
      xs = np.where(xs == K - 1, MASK, xs)
      if st == "mdlm":
        xs = np.where(cur == MASK, xs, cur)
      xs[:, 0] = cur[:, 0]
      finals.append(xs)
      cur = xs
    cfg = dec.ImageSamplerConfig(st, num_steps=T, eta=eta, fork_compat=True, record_steps=True)
    s = dec.make_image_sampler(table_jax, cfg, num_tokens=N, codebook_size=K, mask_id=MASK)
    out, info = s.sample_with_info(None, jax.random.PRNGKey(0), labels=labels,
                                   noise={"uniforms": U})
    np.testing.assert_array_equal(np.asarray(info["final_seqs"]), np.stack(finals, 1))
    assert not np.any(np.asarray(out) == MASK)            # the last step leaves no mask


# ---------------------------------------------------------------------------------------------
# vocabulary handling and exactness
# ---------------------------------------------------------------------------------------------

def _factorised(LL=8, V=5, seed=0):
  rs = np.random.RandomState(seed)
  p = rs.dirichlet(np.ones(V) * 2.0, size=LL)
  return p


def _exact_denoiser(p, VT):
  logp = np.log(np.concatenate([p, np.full((p.shape[0], VT - p.shape[1]), 1e-30)], 1))
  logp = np.concatenate([np.zeros((1, VT)), logp], 0).astype(np.float32)   # class position

  def f(params, tokens, t):
    del params, t
    return jnp.broadcast_to(jnp.asarray(logp), tokens.shape + (VT,))
  return f


def _chi2_pvalue(samples, p):
  pv = []
  for l in range(p.shape[0]):
    counts = np.bincount(samples[:, l], minlength=p.shape[1])
    pv.append(stats.chisquare(counts, p[l] * len(samples)).pvalue)
  return min(pv) * len(pv)   # Bonferroni


EXACT = [("mdlm", {}), ("remdm_cap", {"eta": 0.05}), ("remdm_rescale", {"eta": 0.5}),
         # loop: phase boundaries on the T = 8 grid (t_on = t_4, t_off = t_7). With the defaults
         # (0.55, 0.05) the last grid time 0.125 is still in phase 2 (the final argmax step then
         # decides ~10% of the tokens) and the phase-1 step crossing t_on jumps alpha.
         ("remdm_loop", {"extra": {"t_on": float(uniform_grid(8)[0][4]),
                                   "t_off": float(uniform_grid(8)[0][7])}}),
         ]
# fb and dfm are not here: their correctors' sigma can exceed sigma_max (dfm: b (a_s - a_t) / a_t);
# fb's sigma = (alpha_s - alpha_t) / alpha_t exceeds sigma_max late in the run and
# its last step re-masks every decoded token (SPEC §4.4), so the final argmax decides all tokens.


@pytest.mark.parametrize("strategy,kw", EXACT)
def test_exact_denoiser_marginals_chi_square(strategy, kw):
  LL, V, T, n = 8, 5, 8, 4000
  p = _factorised(LL, V)
  f = _exact_denoiser(p, V + 2)
  cfg = dec.ImageSamplerConfig(strategy, num_steps=T, **kw)
  s = dec.make_image_sampler(f, cfg, num_tokens=LL, codebook_size=V, mask_id=V + 1)
  out = np.asarray(s(None, jax.random.PRNGKey(11), labels=np.zeros(n, np.int32)))
  assert out.shape == (n, LL) and out.max() < V
  assert _chi2_pvalue(out, p) > 1e-3
  # every code, the last one included, is emitted (the mask is its own id)
  assert set(np.unique(out)) == set(range(V))


@pytest.mark.parametrize("strategy", ["mdlm", "remdm_rescale"])
def test_fork_mode_exact_without_last_code_and_never_emits_it(strategy):
  """fork_compat reproduces the slot quirk: code K-1 is the mask slot and never emitted; with a
  data distribution that has no mass on it, the marginals are still exact."""
  LL, V, T, n = 8, 5, 8, 4000
  p = _factorised(LL, V - 1, seed=3)
  pf = np.concatenate([p, np.zeros((LL, 1))], 1)
  f = _exact_denoiser(p, V + 2)
  cfg = dec.ImageSamplerConfig(strategy, num_steps=T, eta=0.5, fork_compat=True)
  s = dec.make_image_sampler(f, cfg, num_tokens=LL, codebook_size=V, mask_id=V + 1)
  out = np.asarray(s(None, jax.random.PRNGKey(2), labels=np.zeros(n, np.int32)))
  assert out.max() < V - 1
  assert _chi2_pvalue(out, p) > 1e-3
  # the same denoiser with mass on the last code: the clean mode emits it, the fork cannot
  f2 = _exact_denoiser(_factorised(LL, V), V + 2)
  out_fork = np.asarray(dec.make_image_sampler(f2, cfg, num_tokens=LL, codebook_size=V,
                                               mask_id=V + 1)(None, jax.random.PRNGKey(2),
                                                              labels=np.zeros(500, np.int32)))
  clean = dec.ImageSamplerConfig(strategy, num_steps=T, eta=0.5)
  out_clean = np.asarray(dec.make_image_sampler(f2, clean, num_tokens=LL, codebook_size=V,
                                                mask_id=V + 1)(None, jax.random.PRNGKey(2),
                                                               labels=np.zeros(500, np.int32)))
  assert not np.any(out_fork == V - 1) and np.any(out_clean == V - 1)
  del pf


def test_maskgit_is_biased_towards_confident_tokens_but_exact_with_random_ranking():
  """Sanity of the ranking: with a huge choice temperature the re-mask choice is uniform, so the
  marginals are exact; at choice temperature 0 the kept tokens are the most confident ones and
  the marginals are visibly sharpened (the chi-square test then fails)."""
  LL, V, T, n = 8, 5, 8, 4000
  p = _factorised(LL, V)
  f = _exact_denoiser(p, V + 2)
  outs = {}
  for ct in (1e6, 0.0):
    cfg = dec.ImageSamplerConfig("maskgit", num_steps=T, choice_temperature=ct)
    s = dec.make_image_sampler(f, cfg, num_tokens=LL, codebook_size=V, mask_id=V + 1)
    outs[ct] = np.asarray(s(None, jax.random.PRNGKey(4), labels=np.zeros(n, np.int32)))
  assert _chi2_pvalue(outs[1e6], p) > 1e-3
  assert _chi2_pvalue(outs[0.0], p) < 1e-6


def test_temperature_is_applied():
  LL, V, T, n = 8, 5, 8, 3000
  p = _factorised(LL, V)
  f = _exact_denoiser(p, V + 2)
  tau = 0.5
  pt = p ** (1 / tau)
  pt /= pt.sum(-1, keepdims=True)
  cfg = dec.ImageSamplerConfig("mdlm", num_steps=T, temperature=tau)
  out = np.asarray(dec.make_image_sampler(f, cfg, num_tokens=LL, codebook_size=V, mask_id=V + 1)(
      None, jax.random.PRNGKey(5), labels=np.zeros(n, np.int32)))
  assert _chi2_pvalue(out, pt) > 1e-3
  assert _chi2_pvalue(out, p) < 1e-6


@pytest.mark.parametrize("strategy", ["maskgit", "mdlm"])
def test_call_time_temperature_equals_config_temperature(strategy):
  """`temperature=` at call time (traced, one program for all) == the config's temperature."""
  labels = np.arange(6) % NCLS
  a = dec.make_image_sampler(table_jax, dec.ImageSamplerConfig(strategy, num_steps=4),
                             num_tokens=N, codebook_size=K, mask_id=MASK)
  b = dec.make_image_sampler(table_jax, dec.ImageSamplerConfig(strategy, num_steps=4,
                                                               temperature=0.6),
                             num_tokens=N, codebook_size=K, mask_id=MASK)
  key = jax.random.PRNGKey(1)
  np.testing.assert_array_equal(np.asarray(a(None, key, labels=labels, temperature=0.6)),
                                np.asarray(b(None, key, labels=labels)))
  assert np.any(np.asarray(a(None, key, labels=labels)) != np.asarray(b(None, key, labels=labels)))
  with pytest.raises(ValueError, match="temperature"):
    a(None, key, labels=labels, temperature=0.0)


def test_bad_input_raises_valueerror():
  with pytest.raises(ValueError, match="strategy"):
    dec.ImageSamplerConfig("beam")
  with pytest.raises(ValueError, match="mask_schedule"):
    dec.ImageSamplerConfig("mdlm", mask_schedule="log")
  with pytest.raises(ValueError, match="fork_compat"):
    dec.ImageSamplerConfig("maskgit", fork_compat=True)
  with pytest.raises(ValueError, match="temperature"):
    dec.ImageSamplerConfig("maskgit", temperature=0.0)
  cfg = dec.ImageSamplerConfig("maskgit", num_steps=2)
  with pytest.raises(ValueError, match="mask_id"):
    dec.make_image_sampler(table_jax, cfg, num_tokens=N, codebook_size=K, mask_id=K - 1)
  s = dec.make_image_sampler(table_jax, cfg, num_tokens=N, codebook_size=K, mask_id=MASK)
  with pytest.raises(ValueError, match="labels"):
    s(None, jax.random.PRNGKey(0), batch_size=2)
  with pytest.raises(ValueError, match="labels"):
    s(None, jax.random.PRNGKey(0), labels=[-1, 0])
  with pytest.raises(ValueError, match="noise"):
    s(None, jax.random.PRNGKey(0), labels=[0, 1], noise={"uniforms": np.zeros(3)})


@pytest.mark.parametrize("strategy", ["maskgit", "mdlm", "remdm_rescale"])
def test_known_image_tokens_are_kept(strategy):
  """Partially known images (inpainting): known codes never change; also without class token."""
  rs = np.random.RandomState(2)
  img = rs.randint(0, K, size=(4, N))
  img[rs.rand(4, N) < 0.6] = MASK
  for class_token in (True, False):
    cfg = dec.ImageSamplerConfig(strategy, num_steps=4, eta=0.05 if "remdm" in strategy else None)
    s = dec.make_image_sampler(table_jax, cfg, num_tokens=N, codebook_size=K, mask_id=MASK,
                               class_token=class_token)
    kw = {"labels": np.array([0, 1, 2, 0])} if class_token else {}
    out = np.asarray(s(None, jax.random.PRNGKey(0), image_tokens=img, **kw))
    known = img != MASK
    np.testing.assert_array_equal(out[known], img[known])
    assert out.max() < K and out.shape == (4, N)


def test_labels_outside_the_classes_are_refused():
  """Issue 19 item 7: a label past the model's classes was clamped by the embedding gather
  (digits labels 11 or 500 gave all-zero images, exit 0)."""
  cfg = dec.ImageSamplerConfig("maskgit", num_steps=2)
  s = dec.make_image_sampler(table_jax, cfg, num_tokens=N, codebook_size=K, mask_id=MASK,
                             num_classes=NCLS)
  for bad in (NCLS, 500, -1):
    with pytest.raises(ValueError, match=f"label {bad} is outside \\[0, num_classes=3\\)"):
      s(None, jax.random.PRNGKey(0), labels=np.array([0, bad]))
  # without num_classes: the class token must lie inside the model vocabulary V = 12 (and is
  # not the mask id 11): labels 0..2 only
  s2 = dec.make_image_sampler(table_jax, cfg, num_tokens=N, codebook_size=K, mask_id=MASK)
  for bad in (3, 4, 500):
    with pytest.raises(ValueError, match=f"label {bad} is outside"):
      s2(None, jax.random.PRNGKey(0), labels=np.array([bad]))
  assert s2(None, jax.random.PRNGKey(0), labels=np.array([0, 2])).shape == (2, N)
