"""The ReMDM posterior, the nucleus filter and the fast kernel against float64 numpy references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from remdm_jax.sampling import (KernelSpec, SamplerConfig, conf_sigma, nucleus_filter,
                                step_schedule, transition_sample)
from remdm_jax.sampling.reference import transition_probs
from remdm_jax.sampling import draws

STRATS = ["mdlm", "remdm_cap", "remdm_rescale", "remdm_conf", "remdm_switch", "remdm_loop", "fb",
          "dfm"]


# ----------------------------- independent float64 numpy reference of SPEC §4 --------------------
def np_nucleus(p, top_p, rule):
  out = np.zeros_like(p)
  for idx in np.ndindex(p.shape[:-1]):
    row = p[idx]
    order = np.argsort(-row, kind="stable")
    c = np.cumsum(row[order])
    if rule == "reference":
      keep = c <= top_p
      keep[0] = True
    else:
      keep = np.concatenate([[0.0], c[:-1]]) < top_p
    kept = np.zeros_like(row)
    kept[order[keep]] = row[order[keep]]
    out[idx] = kept / kept.sum()
  return out


def np_conf_sigma(psi, decoded, smax):
  w = np.where(decoded, np.exp(-np.where(decoded, psi, 0.0)), 0.0)
  tot = w.sum(-1, keepdims=True)
  return np.where(tot > 0, w / np.where(tot > 0, tot, 1), 0) * smax


def np_posterior(z, x0, at, as_, sig, m):
  B, L, V = x0.shape
  q = np.zeros((B, L, V))
  sig = np.broadcast_to(sig, (B, L))
  for b in range(B):
    for l in range(L):
      s = sig[b, l]
      if z[b, l] == m:
        u = min(1.0, max(0.0, (as_ - (1 - s) * at) / (1 - at)))
        q[b, l] = u * x0[b, l]
        q[b, l, m] += 1 - u
      else:
        q[b, l, z[b, l]] += 1 - s
        q[b, l, m] += s
  return q


def random_case(rng, B=2, L=12, V=7):
  m = V - 1
  x0 = rng.dirichlet(np.ones(V - 1) * 0.7, size=(B, L))
  x0 = np.concatenate([x0, np.zeros((B, L, 1))], -1)
  z = np.where(rng.random((B, L)) < 0.5, m, rng.integers(0, V - 1, (B, L)))
  psi = rng.uniform(0.05, 1.0, (B, L))
  return z, x0, psi, m


def step_coeffs(strategy, i_frac):
  cfg = SamplerConfig(strategy=strategy, num_steps=16, switch_base="conf"
                      if strategy == "remdm_switch" else "cap")
  s = step_schedule(cfg)
  i = min(s.n_steps - 1, int(i_frac * s.n_steps))
  return cfg, s, i


@pytest.mark.parametrize("strategy", STRATS)
@pytest.mark.parametrize("top_p,rule", [(None, "reference"), (0.8, "reference"), (0.7, "hf")])
def test_transition_probs_matches_numpy(strategy, top_p, rule):
  rng = np.random.default_rng(hash((strategy, top_p, rule)) % 2**32)
  z, x0, psi, m = random_case(rng)
  x0f = np_nucleus(x0, top_p, rule) if top_p else x0
  with jax.enable_x64(True):
    filt = np.asarray(nucleus_filter(jnp.asarray(x0), top_p, rule, log_space=False))
    np.testing.assert_allclose(filt, x0f, atol=1e-12)
    for frac in (0.3, 0.6, 0.999):
      cfg, s, i = step_coeffs(strategy, frac)
      decoded = z != m
      if s.conf[i] > 0:
        sig_np = np_conf_sigma(psi, decoded, s.sigma[i])
        sig = conf_sigma(jnp.asarray(psi), jnp.asarray(decoded), s.sigma[i])
        np.testing.assert_allclose(np.asarray(sig), sig_np, rtol=1e-5, atol=1e-8)
        sig = sig_np
      else:
        sig = sig_np = s.sigma[i]
      q = transition_probs(jnp.asarray(z), jnp.asarray(x0f), alpha_t=s.alpha_t[i],
                           alpha_s=s.alpha_s[i], sigma=sig, mask_id=m)
      assert q.dtype == jnp.float64 and q.shape == x0.shape
      want = np_posterior(z, x0f, s.alpha_t[i], s.alpha_s[i], sig_np, m)
      np.testing.assert_allclose(np.asarray(q), want, atol=1e-12)
      np.testing.assert_allclose(np.asarray(q).sum(-1), 1.0, atol=1e-12)
      # a decoded token only stays or becomes the mask
      other = np.asarray(q).copy()
      bi, li = np.nonzero(decoded)
      other[bi, li, z[bi, li]] = 0
      other[..., m] = 0
      assert np.all(other[decoded] == 0)


@pytest.mark.parametrize("rule", ["reference", "hf"])
def test_nucleus_bisect_equals_sort(rule):
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(64, 33)) * 2
  logp = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32))
  for p in (0.1, 0.5, 0.9, 0.99):
    a = nucleus_filter(logp, p, rule, method="sort")
    b = nucleus_filter(logp, p, rule, method="bisect")
    np.testing.assert_array_equal(np.asarray(a) > -1e8, np.asarray(b) > -1e8)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
  assert nucleus_filter(logp, None) is logp


def test_bernoulli_and_gumbel_bits():
  bits = jnp.array([0, 1, 2**31, 2**32 - 1], jnp.uint32)
  np.testing.assert_array_equal(draws.bernoulli_from_bits(bits, jnp.float32(2.0**-32)),
                                [True, False, False, False])
  np.testing.assert_array_equal(draws.bernoulli_from_bits(bits, jnp.float32(0.5)),
                                [True, True, False, False])
  np.testing.assert_array_equal(draws.bernoulli_from_bits(bits, jnp.float32(1.0)), [True] * 4)
  np.testing.assert_array_equal(draws.bernoulli_from_bits(bits, jnp.float32(0.0)), [False] * 4)
  hi = np.float32(1 - 2.0**-24)  # largest float32 < 1: threshold 2^32 - 256 fits uint32
  np.testing.assert_array_equal(draws.bernoulli_from_bits(bits, hi), [True, True, True, False])
  g = draws.gumbel_from_bits(bits)
  assert np.all(np.isfinite(g)) and abs(float(g[0]) - 33 * np.log(2)) < 1e-3  # tail ~22.9


_FREQ_FNS = {}


def _kernel_freqs(spec, coeffs, z_row, x0_row, psi_row, n, key):
  """One jitted kernel per (spec, n): the coefficients are traced arguments."""
  z = jnp.broadcast_to(jnp.asarray(z_row, jnp.int32), (n,) + z_row.shape)
  logits = jnp.broadcast_to(jnp.log(jnp.asarray(x0_row) + 1e-30), (n,) + x0_row.shape)
  psi = jnp.broadcast_to(jnp.asarray(psi_row, jnp.float32), z.shape)
  fkey = (spec, n, jax.config.jax_enable_x64)
  if fkey not in _FREQ_FNS:
    _FREQ_FNS[fkey] = jax.jit(lambda k, c, z, lg, ps: transition_sample(k, z, lg, c, spec, psi=ps)[0])
  out = np.asarray(_FREQ_FNS[fkey](key, coeffs, z, logits, psi))
  V = x0_row.shape[-1]
  return np.stack([(out == v).mean(0) for v in range(V)], -1)


@pytest.mark.parametrize("precision", ["exact32", "float64"])
def test_kernel_frequencies_match_posterior(precision):
  """Empirical per-position frequencies over N = 40000 draws vs transition_probs, for a step of
  every strategy. Tolerance: |f - q| <= 5 sqrt(q (1 - q) / N) + 2e-4 per cell (5 sigma)."""
  rng = np.random.default_rng(1)
  V, L, m = 6, 8, 5
  x0 = rng.dirichlet(np.ones(V - 1), size=L)
  x0 = np.concatenate([x0, np.zeros((L, 1))], -1)
  z = np.array([m, 0, m, 3, m, m, 1, 4])
  psi = np.where(z != m, rng.uniform(0.1, 1.0, L), np.inf)
  top_p = 0.8
  spec = KernelSpec(mask_id=m, precision=precision, top_p=top_p, uses_conf=True, unmask_buffer=3)
  N = 40000
  cases = [("mdlm", 0.5), ("remdm_cap", 0.2), ("remdm_conf", 0.9), ("fb", 0.999),
           ("remdm_loop", 0.6), ("dfm", 0.5), ("remdm_rescale", 0.1)]
  for strategy, frac in cases:
    cfg, s, i = step_coeffs(strategy, frac)
    if strategy in ("remdm_cap", "remdm_loop", "remdm_rescale"):  # make remasking visible
      cfg = cfg.replace(eta=0.1)
      s = step_schedule(cfg)
    with jax.enable_x64(precision == "float64"):
      dt = np.float64 if precision == "float64" else np.float32
      coeffs = {k: jnp.asarray(v[i], dt) for k, v in s.xs(np.float64).items() if k != "t"}
      freqs = _kernel_freqs(spec, coeffs, z, x0, psi, N, jax.random.key(7))
    with jax.enable_x64(True):
      x0f = np.asarray(nucleus_filter(jnp.asarray(x0), top_p, log_space=False))
      sig = (np.asarray(conf_sigma(jnp.asarray(np.where(np.isfinite(psi), psi, 0))[None],
                                   jnp.asarray(z != m)[None], s.sigma[i]))[0]
             if s.conf[i] > 0 else s.sigma[i])
      q = np.asarray(transition_probs(jnp.asarray(z)[None], jnp.asarray(x0f)[None],
                                      alpha_t=s.alpha_t[i], alpha_s=s.alpha_s[i], sigma=sig,
                                      mask_id=m))[0]
    tol = 5 * np.sqrt(q * (1 - q) / N) + 2e-4
    assert np.all(np.abs(freqs - q) <= tol), (strategy, (np.abs(freqs - q) - tol).max())


@pytest.mark.parametrize("precision", ["exact32", "float64"])
def test_kernel_frequencies_with_temperature(precision):
  """Temperature tau = 0.5: the kernel's transition probabilities are those of logits / tau, i.e.
  x~ = nucleus(x0^(1/tau) / Z) in the float64 numpy posterior (N = 40000 draws, 5 sigma)."""
  rng = np.random.default_rng(2)
  V, L, m, tau, top_p = 6, 8, 5, 0.5, 0.8
  x0 = np.concatenate([rng.dirichlet(np.ones(V - 1), size=L), np.zeros((L, 1))], -1)
  z = np.array([m, 0, m, 3, m, m, 1, 4])
  psi = np.where(z != m, 0.5, np.inf)
  spec = KernelSpec(mask_id=m, precision=precision, top_p=top_p, unmask_buffer=3,
                    temperature=tau)
  cfg, s, i = step_coeffs("remdm_cap", 0.5)
  s = step_schedule(cfg.replace(eta=0.1))
  N = 40000
  with jax.enable_x64(precision == "float64"):
    dt = np.float64 if precision == "float64" else np.float32
    coeffs = {k: jnp.asarray(v[i], dt) for k, v in s.xs(np.float64).items() if k != "t"}
    freqs = _kernel_freqs(spec, coeffs, z, x0, psi, N, jax.random.key(8))
  xt = x0 ** (1 / tau)
  xt = np_nucleus(xt / xt.sum(-1, keepdims=True), top_p, "reference")
  q = np_posterior(z[None], xt[None], s.alpha_t[i], s.alpha_s[i], s.sigma[i], m)[0]
  tol = 5 * np.sqrt(q * (1 - q) / N) + 2e-4
  assert np.all(np.abs(freqs - q) <= tol), (np.abs(freqs - q) - tol).max()
  q1 = np_posterior(z[None], np_nucleus(x0, top_p, "reference")[None], s.alpha_t[i],
                    s.alpha_s[i], s.sigma[i], m)[0]
  assert np.any(np.abs(freqs - q1) > 5 * tol)  # the untempered posterior is rejected


def test_exact32_draw_independent_of_buffer_size():
  """The gathered draw (K positions per pass, several passes) equals the all-positions draw."""
  rng = np.random.default_rng(3)
  B, L, V, m = 4, 16, 9, 8
  logits = jnp.asarray(rng.normal(size=(B, L, V)), jnp.float32)
  z = jnp.full((B, L), m, jnp.int32)
  coeffs = {"sigma": jnp.float32(0), "conf": jnp.float32(0), "p_unmask": jnp.float32(0.6)}
  outs = []
  for K in (1, 5, 16):
    spec = KernelSpec(mask_id=m, top_p=0.9, unmask_buffer=K)
    outs.append(np.asarray(jax.jit(lambda k: transition_sample(k, z, logits, coeffs, spec)[0])(
        jax.random.key(5))))
  assert (outs[0] != m).sum() > 10
  np.testing.assert_array_equal(outs[0], outs[2])
  np.testing.assert_array_equal(outs[1], outs[2])


def test_float32_race_noise_is_truncated():
  """Mechanism of the float32 bias (SPEC §4.6): the float32 race's E = -log(U) cannot go below
  ~2^-23 (so q_k / E_k <= 8.4e6 q_k: an entry with q_k / q_max below ~5e-9 can never win), while
  the exact32 Gumbel reaches -log(2^-33) = 22.9 (e^22.9 ~ 8.6e9)."""
  u_max32 = np.float32(1 - 2.0**-23)  # the largest float32 uniform jax.random draws
  e_min32 = 1e-10 - np.log(np.float32(u_max32) + np.float32(1e-10))
  assert e_min32 > 1e-7
  assert float(draws.gumbel_from_bits(jnp.uint32(0))) > 22.8


@pytest.mark.slow
def test_float32_race_bias_statistical():
  """R = 64 rows of one token with q = 1 and 2^23 tiny ones with q = 3e-8 each (mass 0.25). The
  true probability that a tiny token wins is 0.2 (12.8 of 64 rows); a float32 race gives ~0.01
  (rare tokens under-sampled: lower entropy); float64 races and exact32 Gumbel draws stay within
  binomial 3-sigma bounds of 0.2 (fixed keys: deterministic). ~80 s on 2 CPU cores."""
  N, R, qt = 2**23, 64, 3e-8
  q = jnp.full((N,), qt, jnp.float32).at[0].set(1.0)
  p_true = (N - 1) * qt / (1 + (N - 1) * qt)
  sd = np.sqrt(R * p_true * (1 - p_true))
  lo, hi = R * p_true - 3 * sd, R * p_true + 3 * sd

  def count(draw, dtype, key):
    keys = jax.random.split(key, R)
    return int(jax.jit(lambda ks: jnp.sum(jax.lax.map(lambda k: draw(k, q.astype(dtype)), ks) != 0))(keys))

  race = draws.race_argmax
  gum = lambda k, qq: draws.gumbel_argmax(k, jnp.log(qq))
  c32 = count(race, jnp.float32, jax.random.key(0))
  with jax.enable_x64(True):
    c64 = count(race, jnp.float64, jax.random.key(0))
  cex = count(gum, jnp.float32, jax.random.key(0))
  assert lo <= c64 <= hi and lo <= cex <= hi, (c64, cex, lo, hi)
  assert c32 < lo, (c32, lo)


# ----------------------------- draw ids (row / position names of the draws) ---------------------
def _ids_case(precision, guided):
  rng = np.random.default_rng(11)
  B, L, V, m = 3, 10, 7, 6
  logits = jnp.asarray(rng.normal(size=(B, L, V)) * 2, jnp.float32)
  z = jnp.asarray(np.where(rng.random((B, L)) < 0.6, m, rng.integers(0, m, (B, L))), jnp.int32)
  psi = jnp.asarray(np.where(np.asarray(z) != m, rng.uniform(0.1, 1.0, (B, L)), np.inf),
                    jnp.float32)
  lw = jnp.asarray(rng.normal(size=(B, L, V)), jnp.float32) if guided else None
  spec = KernelSpec(mask_id=m, precision=precision, top_p=0.9, uses_conf=True, unmask_buffer=4)
  coeffs = {"sigma": jnp.float32(0.2), "conf": jnp.float32(0), "p_unmask": jnp.float32(0.5)}
  return z, logits, psi, lw, spec, coeffs


@pytest.mark.parametrize("precision,guided", [("exact32", False), ("exact32", True),
                                              ("float32", False)])
def test_draw_ids_make_a_row_follow_its_ids_not_its_index_or_offset(precision, guided):
  """With ids = (row ids, position ids), a row's step equals the same row stepped alone, placed
  at another batch index, or shifted right by padding (position ids shifted with it); and the
  ids are real inputs (other row ids give other draws). Default ids=None keeps the old scheme
  for the token draws (arange ids give the same tokens where no Bernoulli draw is involved)."""
  z, logits, psi, lw, spec, coeffs = _ids_case(precision, guided)
  B, L, V = logits.shape
  key = jax.random.key(3)
  row_ids = jnp.asarray([101, 7, 55], jnp.uint32)
  pos_ids = jnp.arange(L, dtype=jnp.uint32)

  def step(z, lg, ps, w, ids):
    return np.asarray(transition_sample(key, z, lg, coeffs, spec, psi=ps, log_weight=w,
                                        ids=ids)[0])

  full = step(z, logits, psi, lw, (row_ids, pos_ids))
  for b in range(B):  # alone
    alone = step(z[b:b + 1], logits[b:b + 1], psi[b:b + 1], None if lw is None else lw[b:b + 1],
                 (row_ids[b:b + 1], pos_ids))
    np.testing.assert_array_equal(alone[0], full[b])
  perm = jnp.asarray([2, 0, 1])  # other batch indices
  perm_out = step(z[perm], logits[perm], psi[perm], None if lw is None else lw[perm],
                  (row_ids[perm], pos_ids))
  np.testing.assert_array_equal(perm_out, full[np.asarray(perm)])
  pad = 3  # left padding: 3 frozen positions in front, the position ids shifted by 3
  zp = jnp.concatenate([jnp.zeros((B, pad), jnp.int32), z], 1)
  lgp = jnp.concatenate([jnp.zeros((B, pad, V), jnp.float32), logits], 1)
  psp = jnp.concatenate([jnp.full((B, pad), 0.5, jnp.float32), psi], 1)
  lwp = None if lw is None else jnp.concatenate([jnp.zeros((B, pad, V), jnp.float32), lw], 1)
  frozen = jnp.arange(L + pad)[None, :] < pad
  pos_p = (jnp.arange(L + pad) - pad).astype(jnp.uint32)
  padded = np.asarray(transition_sample(key, zp, lgp, coeffs, spec, psi=psp, log_weight=lwp,
                                        frozen=jnp.broadcast_to(frozen, (B, L + pad)),
                                        ids=(row_ids, pos_p))[0])
  np.testing.assert_array_equal(padded[:, pad:], full)
  other = step(z, logits, psi, lw, (row_ids + 1, pos_ids))
  assert np.any(other != full)
  with pytest.raises(ValueError, match="draw ids shapes"):
    step(z, logits, psi, lw, (row_ids[:2], pos_ids))


def test_draw_ids_frequencies_match_posterior():
  """The per-position Bernoulli bits of the ids path (exact32) keep the exact posterior: N =
  40000 rows with distinct row ids vs transition_probs (5 sigma per cell)."""
  rng = np.random.default_rng(1)
  V, L, m, N = 6, 8, 5, 40000
  x0 = np.concatenate([rng.dirichlet(np.ones(V - 1), size=L), np.zeros((L, 1))], -1)
  z = np.array([m, 0, m, 3, m, m, 1, 4])
  cfg, s, i = step_coeffs("remdm_cap", 0.3)
  s = step_schedule(cfg.replace(eta=0.1))
  coeffs = {k: jnp.asarray(v[i], np.float32) for k, v in s.xs(np.float64).items() if k != "t"}
  spec = KernelSpec(mask_id=m, top_p=None, unmask_buffer=3)
  zz = jnp.broadcast_to(jnp.asarray(z, jnp.int32), (N, L))
  lg = jnp.broadcast_to(jnp.log(jnp.asarray(x0, jnp.float32) + 1e-30), (N, L, V))
  ids = (jnp.arange(N, dtype=jnp.uint32) * 7 + 3, jnp.arange(L, dtype=jnp.uint32) + 1000)
  out = np.asarray(jax.jit(lambda k: transition_sample(k, zz, lg, coeffs, spec, ids=ids)[0])(
      jax.random.key(9)))
  freqs = np.stack([(out == v).mean(0) for v in range(V)], -1)
  with jax.enable_x64(True):
    q = np.asarray(transition_probs(jnp.asarray(z)[None], jnp.asarray(x0)[None],
                                    alpha_t=s.alpha_t[i], alpha_s=s.alpha_s[i], sigma=s.sigma[i],
                                    mask_id=m))[0]
  tol = 5 * np.sqrt(q * (1 - q) / N) + 2e-4
  assert np.all(np.abs(freqs - q) <= tol), (np.abs(freqs - q) - tol).max()
