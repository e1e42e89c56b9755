"""Sampler edge cases (issue 8 items 4-6): degenerate denoisers never produce the mask, the nucleus
filter always keeps the most likely token (both rules, every method, against float64 numpy),
temperature, remdm_loop at small T, loop_sigma="conf"."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from remdm_jax.sampling import (KernelSpec, SamplerConfig, final_step, make_sampler,
                                nucleus_filter, step_schedule, transition_sample)
from remdm_jax.sampling import draws
from remdm_jax.sampling.nucleus import keep_mask_bisect, keep_mask_select, keep_mask_sort
from remdm_jax.sampling.sampler import _draw_rows
from remdm_jax.diffusion.subs import NEG_INF, masked_log_probs, subs_log_probs

V, L = 7, 6
PRECISIONS = ["exact32", "float32", "float64"]


# ----------------------------- float64 numpy references ------------------------------------------
def np_keep_sorted(p, top, rule):
  """The SPEC §4.3 sorted rule on a stable descending sort, float64, sequential cumsum."""
  out = np.zeros(p.shape, bool)
  for idx in np.ndindex(p.shape[:-1]):
    row = np.asarray(p[idx], np.float64)
    order = np.argsort(-row, kind="stable")
    c = np.cumsum(row[order])
    prev = np.concatenate([[0.0], c[:-1]])
    keep = (c <= top) if rule == "reference" else (prev < top)
    keep[0] = True
    out[idx][order[keep]] = True
  return out


def np_keep_threshold(p, top, rule):
  """The threshold form (ties together) plus the argmax, float64."""
  out = np.zeros(p.shape, bool)
  for idx in np.ndindex(p.shape[:-1]):
    row = np.asarray(p[idx], np.float64)
    for v in range(row.shape[0]):
      if rule == "reference":
        out[idx][v] = row[row >= row[v]].sum() <= top
      else:
        out[idx][v] = row[row > row[v]].sum() < top
    out[idx][np.argmax(row)] = True
  return out


def np_masked_probs(logits, m, tau=1.0):
  lg = np.asarray(logits, np.float64) / tau
  lg[..., m] = -np.inf
  lg = lg - lg.max(-1, keepdims=True)
  e = np.exp(lg)
  return e / e.sum(-1, keepdims=True)


# ----------------------------- 1. the output never holds the mask --------------------------------
def degenerate_tables(m):
  """[3, L, V] logit tables that favour the mask (mask logit 0 or 50): every non-mask entry -inf,
  every non-mask entry -1e30, and -inf except one token per position (`picks`)."""
  ids = np.arange(V)
  picks = (np.arange(L) * 3 + 1) % V
  picks = np.where(picks == m, (m + 1) % V, picks)
  inf = np.broadcast_to(np.where(ids == m, 0.0, -np.inf), (L, V))
  huge = np.broadcast_to(np.where(ids == m, 0.0, -1e30), (L, V))
  one = np.where(ids[None] == picks[:, None], 2.0, -np.inf)
  one[:, m] = 50.0
  return np.stack([inf, huge, one]).astype(np.float32), picks


def table_denoiser(params, tokens, t):
  return jnp.broadcast_to(params, tokens.shape + (V,))


@pytest.mark.parametrize("precision,m", [("exact32", 0), ("exact32", V - 1), ("float32", V - 1),
                                         ("float64", 0)])
def test_degenerate_denoiser_never_outputs_mask(precision, m):
  """A denoiser giving -inf (or -1e30) to every non-mask token, or -inf to all but one: no output
  is the mask, tokens are decoded during the steps (not only by the final argmax), and the one
  allowed token is drawn. Before the fix SUBS put all mass on the mask (its -1e9 beat -inf and
  -1e30): the outputs were m."""
  tables, picks = degenerate_tables(m)
  for strategy, top_p, tau in (("remdm_cap", 0.9, 0.5), ("remdm_conf", None, 1.0)):
    cfg = SamplerConfig(strategy=strategy, num_steps=4, precision=precision, top_p=top_p,
                        temperature=tau, eta=0.3 if strategy == "remdm_cap" else None)
    with jax.enable_x64(precision == "float64"):
      s = make_sampler(table_denoiser, cfg, seq_len=L, mask_id=m, trajectory_every=1)
      for kind, table in zip(("inf", "huge", "one"), tables):
        out, info = s.sample_with_info(jnp.asarray(table), jax.random.key(1), batch_size=16)
        out, traj = np.asarray(out), np.asarray(info["trajectory"])
        assert out.dtype == np.int32 and not np.any(out == m), (strategy, kind, out)
        assert np.all((out >= 0) & (out < V))
        assert np.any(traj[-1] != m), (strategy, kind)
        if kind == "one":
          np.testing.assert_array_equal(out, np.broadcast_to(picks, out.shape))


def test_all_inf_row_is_uniform_over_non_mask():
  """Defined fallback: x_theta uniform over the non-mask tokens (chi-square over exact32 draws
  from all-masked rows), and the final argmax takes the first non-mask id."""
  m = 2
  lg = jnp.where(jnp.arange(V) == m, 0.0, -jnp.inf)
  n = 20000
  keys = draws.position_keys(jax.random.key(0), jnp.zeros((n,), jnp.int32),
                             jnp.arange(n, dtype=jnp.int32))
  tok, psi = jax.jit(lambda k: _draw_rows(k, jnp.broadcast_to(lg, (n, V)),
                                          KernelSpec(mask_id=m)))(keys)
  counts = np.bincount(np.asarray(tok), minlength=V)
  assert counts[m] == 0
  assert stats.chisquare(np.delete(counts, m)).pvalue > 1e-3
  np.testing.assert_allclose(np.asarray(psi), 1.0 / (V - 1), rtol=1e-6)
  z = jnp.full((1, L), m, jnp.int32)
  out = final_step(z, jnp.broadcast_to(lg, (1, L, V)), m)
  np.testing.assert_array_equal(np.asarray(out), 0)  # the first non-mask id
  lg0 = jnp.where(jnp.arange(V) == 0, 0.0, -jnp.inf)
  out = final_step(jnp.zeros((1, L), jnp.int32), jnp.broadcast_to(lg0, (1, L, V)), 0)  # m = 0
  np.testing.assert_array_equal(np.asarray(out), 1)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float64])
def test_masked_log_probs_degenerate_rows_against_numpy(dtype):
  m = 3
  rows = np.array([
      [1.0, -2.0, 0.5, 9.0, 0.0, -1.0, 3.0],                  # ordinary
      [-np.inf] * 3 + [0.0] + [-np.inf] * 3,                   # all non-mask -inf
      [-1e30] * 3 + [0.0] + [-1e30] * 3,                       # huge negative: uniform
      [-np.inf, 2.0, -np.inf, 80.0, -1e30, -np.inf, -np.inf],  # one finite
      [np.inf, 0.0, np.inf, 1.0, -np.inf, 3.0, 1.0],           # +inf: uniform over them
  ])
  want = np.zeros_like(rows)
  want[0] = np_masked_probs(rows[0], m)
  want[1] = np.where(np.arange(V) == m, 0.0, 1.0 / (V - 1))
  want[2] = want[1]
  want[3] = np.eye(V)[1]
  want[4] = np.array([0.5, 0, 0.5, 0, 0, 0, 0])
  with jax.enable_x64(dtype == jnp.float64):
    lp = masked_log_probs(jnp.asarray(rows, dtype), m)
    assert lp.dtype == (jnp.float64 if dtype == jnp.float64 else jnp.float32)
    lp = np.asarray(lp)
  assert np.all(lp[:, m] == NEG_INF) and not np.any(np.isnan(lp))
  tol = 2e-2 if dtype == jnp.bfloat16 else 1e-6
  np.testing.assert_allclose(np.exp(lp), want, atol=tol)
  # SUBS keeps carry-over rows exact and uses the same masked rows
  z = jnp.asarray([m, 0, m, m, m])
  lp2 = np.asarray(subs_log_probs(jnp.asarray(rows, jnp.float32), z, m))
  np.testing.assert_array_equal(np.exp(lp2[1]), np.eye(V)[0])
  np.testing.assert_allclose(np.exp(lp2[[0, 2, 3, 4]]), want[[0, 2, 3, 4]], atol=1e-6)


def test_subs_gradients_finite_with_inf_logits():
  m = 3
  z = jnp.asarray([[m, m, 1]])
  x = jnp.asarray([[0, 2, 1]])

  def loss(lg):
    lp = subs_log_probs(lg, z, m)
    return -jnp.take_along_axis(lp, x[..., None], -1).sum()

  lg = jnp.zeros((1, 3, V)).at[0, 0, 5].set(-jnp.inf).at[0, 1, 6].set(-1e30)
  g = np.asarray(jax.grad(loss)(lg))
  assert np.all(np.isfinite(g))


# ----------------------------- 2. nucleus: the most likely token is always kept ------------------
def nucleus_rows():
  rng = np.random.default_rng(0)
  rows = [np.array([0.25, 0.25, 0.25, 0.125, 0.125, 0.0, 0.0]),  # ties, exact dyadics, zeros
          np.array([0.0, 0.125, 0.25, 0.125, 0.25, 0.25, 0.0]),   # ties after zeros
          np.array([1 / 7] * 7),                                  # all equal
          np.array([0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0])]          # one-hot
  for _ in range(40):
    lg = rng.normal(size=V) * rng.uniform(0.2, 4.0)
    lg[rng.random(V) < 0.3] = -np.inf                             # -inf entries
    lg[np.argmax(rng.random(V))] = 0.0
    rows.append(np_masked_probs_nomask(lg))
  counts = rng.integers(0, 4, size=(20, V)).astype(np.float64)    # many exact ties
  counts[:, 0] += 1
  counts[:, 1] += counts.sum(-1) % 2 == 0   # odd totals S: no k / S equals 0.25 or 0.5
  rows += list(counts / counts.sum(-1, keepdims=True))
  return np.stack(rows)


def np_masked_probs_nomask(lg):
  e = np.exp(lg - lg.max())
  return e / e.sum()


# top_p values away from the ties' cumulative boundaries (multiples of 1/8 and of 1/S) except the
# exact dyadic 0.5 / 0.25 that the first rows hit exactly (exact float sums on both sides).
TOPS = [1e-50, 1e-8, 0.013, 0.25, 0.5, 0.4371, 0.8123, 0.9871]


@pytest.mark.parametrize("rule", ["reference", "hf"])
def test_nucleus_keeps_top_token_sort_and_select_equal_sorted_rule(rule):
  """float64 sort and select methods against the float64 numpy stable sorted rule: the same kept
  set (ties by index order), the most likely token always kept (tiny top_p: the argmax only)."""
  p = nucleus_rows()
  with jax.enable_x64(True):
    pj = jnp.asarray(p)
    fns = [jax.jit(lambda q, top, fn=fn: fn(q, top, rule)) for fn in (keep_mask_sort,
                                                                        keep_mask_select)]
    for fn in fns:
      fn.__name__ = "keep"
    for top in TOPS:
      want = np_keep_sorted(p, top, rule)
      for fn in fns:
        got = np.asarray(fn(pj, top))
        np.testing.assert_array_equal(got, want, err_msg=f"{rule} top_p={top}")
      if top < 1e-6:
        np.testing.assert_array_equal(want, np.eye(V, dtype=bool)[np.argmax(p, -1)])


def test_nucleus_tie_cases_by_hand():
  """[.25, .25, .25, .125, .125]: reference p = 0.5 keeps indices {0, 1} (C_2 = 0.5), hf keeps
  {0, 1} too (C_1 < 0.5, C_2 = 0.5 not < 0.5); the tie-agnostic threshold form keeps {0} /
  {0, 1, 2}."""
  p = jnp.asarray([[0.25, 0.25, 0.25, 0.125, 0.125, 0.0, 0.0]], jnp.float32)
  k = lambda fn, rule: np.nonzero(np.asarray(fn(p, 0.5, rule))[0])[0].tolist()
  assert k(keep_mask_sort, "reference") == [0, 1] == k(keep_mask_select, "reference")
  assert k(keep_mask_sort, "hf") == [0, 1] == k(keep_mask_select, "hf")
  assert k(keep_mask_bisect, "reference") == [0]
  assert k(keep_mask_bisect, "hf") == [0, 1, 2]


@pytest.mark.parametrize("rule", ["reference", "hf"])
def test_nucleus_bisect_equals_threshold_rule(rule):
  """float32 bisection against the float64 numpy threshold form on the float32 rows (ties kept or
  dropped together; argmax always kept)."""
  p32 = nucleus_rows().astype(np.float32)
  fn = jax.jit(lambda q, top: keep_mask_bisect(q, top, rule))
  for top in TOPS:
    got = np.asarray(fn(jnp.asarray(p32), np.float32(top)))
    want = np_keep_threshold(p32.astype(np.float64), float(np.float32(top)), rule)
    np.testing.assert_array_equal(got, want, err_msg=f"bisect {rule} top_p={top}")


@pytest.mark.parametrize("method", ["sort", "select", "bisect"])
@pytest.mark.parametrize("rule", ["reference", "hf"])
def test_nucleus_filter_log_space_tiny_top_p(method, rule):
  """In log space with -inf entries: a tiny top_p (1e-50 rounds to 0 in float32) leaves exactly
  the argmax with log-prob 0 (before the fix, hf returned an all-NEG_INF row: id 0 everywhere)."""
  rng = np.random.default_rng(3)
  lg = rng.normal(size=(5, 9, V)) * 2
  lg[..., 2] = -np.inf
  logp = jax.nn.log_softmax(jnp.asarray(lg, jnp.float32))
  for top in (1e-50, 1e-8):
    out = np.asarray(nucleus_filter(logp, top, rule, method=method))
    best = np.argmax(lg, -1)
    np.testing.assert_array_equal(np.argmax(out, -1), best)
    np.testing.assert_array_equal(np.take_along_axis(out, best[..., None], -1), 0.0)
    assert np.all(np.sum(out > NEG_INF / 2, -1) == 1)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_sampler_tiny_top_p_hf_gives_argmax(precision):
  """The sampler with top_p = 1e-50 (0 in float32) and either rule draws the argmax token."""
  rng = np.random.default_rng(4)
  table = jnp.asarray(rng.normal(size=(L, V)) * 2, jnp.float32)
  m = V - 1
  best = np.argmax(np.asarray(table)[:, :m], -1)

  def den(params, tokens, t):
    return jnp.broadcast_to(table, tokens.shape + (V,))

  for rule in ("reference", "hf"):
    cfg = SamplerConfig(num_steps=4, precision=precision, top_p=1e-50, nucleus_rule=rule)
    with jax.enable_x64(precision == "float64"):
      out = np.asarray(make_sampler(den, cfg, seq_len=L, mask_id=m)(None, jax.random.key(0),
                                                                    batch_size=8))
    np.testing.assert_array_equal(out, np.broadcast_to(best, out.shape), err_msg=rule)


def test_select_equals_sort_large_vocab_float64():
  """float64, V = 2000, peaked and flat rows: select's kept set is the sorted rule's, for any
  row blocking."""
  rng = np.random.default_rng(9)
  lg = rng.normal(size=(12, 2000)) * np.array([0.3, 1, 3, 8] * 3)[:, None]
  lg[:, ::7] = np.round(lg[:, ::7], 1)  # some exact ties
  with jax.enable_x64(True):
    p = jax.nn.softmax(jnp.asarray(lg), -1)
    for rule in ("reference", "hf"):
      srt = jax.jit(lambda q, top: keep_mask_sort(q, top, rule))
      sels = [jax.jit(lambda q, top, b=b: keep_mask_select(q, top, rule, row_block=b))
              for b in (None, 5)]  # 5 pads the 12 rows to 15
      for top in (0.3, 0.9, 0.99):
        a = np.asarray(srt(p, top))
        for sel in sels:
          np.testing.assert_array_equal(a, np.asarray(sel(p, top)))


# ----------------------------- 3. remdm_loop at every T ------------------------------------------
@pytest.mark.parametrize("T", range(1, 9))
def test_loop_runs_every_small_T(T):
  """Every T runs, as the reference does: where the last phase-1 step overshoots (alpha_s > 1, the
  reference's stay-masked weight 1 - alpha_s is negative, T = 1, 3, 5, 7 here) u is clipped to 1.
  Before the fix T = 3 raised with the internal alpha value. Bitwise agreement with the reference
  on the same uniforms: tests/test_replay.py::test_replay_loop_small_T."""
  cfg = SamplerConfig(strategy="remdm_loop", num_steps=T)
  s = step_schedule(cfg)
  assert s.n_steps == T and sum(s.phases) == T
  over = s.alpha_s > 1
  assert bool(over.any()) == (T in (1, 3, 5, 7))
  np.testing.assert_array_equal(s.p_unmask[over], 1.0)
  assert np.all((s.p_unmask >= 0) & (s.p_unmask <= 1))

  def den(params, tokens, t):
    return jnp.broadcast_to(jnp.log(jnp.asarray([.4, .3, .2, .1, 1e-9, 1.0])), tokens.shape + (6,))

  for precision in ("exact32", "float32") if T in (1, 3) else ("exact32",):
    out = np.asarray(make_sampler(den, cfg.replace(precision=precision), seq_len=L, mask_id=5)(
        None, jax.random.key(T), batch_size=4))
    assert not np.any(out == 5)


def test_loop_sigma_conf_rejected():
  with pytest.raises(ValueError, match="loop_sigma"):
    SamplerConfig(strategy="remdm_loop", loop_sigma="conf")
  for ls in ("const", "cap", "rescale"):  # the others stay valid and differ
    step_schedule(SamplerConfig(strategy="remdm_loop", loop_sigma=ls, eta=0.05, num_steps=32))


# ----------------------------- 5. temperature -----------------------------------------------------
@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), True, "1"])
def test_temperature_validation(bad):
  with pytest.raises(ValueError, match="temperature"):
    SamplerConfig(temperature=bad)


def test_temperature_default_and_int():
  assert SamplerConfig().temperature == 1.0
  assert SamplerConfig(temperature=2).temperature == 2.0


@pytest.mark.parametrize("precision,tau", [("exact32", 0.5), ("float32", 1.7), ("float64", 1.7)])
def test_temperature_equals_scaled_logits_bitwise(precision, tau):
  """transition_sample at temperature tau on logits == at tau = 1 on logits / tau (same dtype):
  the same tokens bitwise and the same conf state (to 1 ulp); and differs from tau = 1 on the raw
  logits."""
  rng = np.random.default_rng(5)
  B, Lx, Vx, m = 4, 12, 9, 8
  dt = jnp.float64 if precision == "float64" else jnp.float32
  with jax.enable_x64(precision == "float64"):
    logits = jnp.asarray(rng.normal(size=(B, Lx, Vx)) * 2, dt)
    z = jnp.asarray(np.where(rng.random((B, Lx)) < 0.7, m, rng.integers(0, m, (B, Lx))),
                    jnp.int32)
    psi = jnp.where(z == m, jnp.inf, 0.5).astype(jnp.float32)
    coeffs = {"sigma": jnp.asarray(0.1, dt), "conf": jnp.asarray(0.0, dt),
              "p_unmask": jnp.asarray(0.7, dt)}
    scaled = jax.jit(lambda lg: lg / jnp.asarray(tau, dt))(logits)
    fns = {t: jax.jit(lambda k, lg, spec=KernelSpec(
        mask_id=m, precision=precision, top_p=0.8, uses_conf=True, unmask_buffer=5,
        temperature=t): transition_sample(k, z, lg, coeffs, spec, psi=psi)) for t in (tau, 1.0)}
    outs = []
    for t, lg in ((tau, logits), (1.0, scaled), (1.0, logits)):
      zs, ps = fns[t](jax.random.key(11), lg)
      outs.append((np.asarray(zs), np.asarray(ps)))
  np.testing.assert_array_equal(outs[0][0], outs[1][0])
  # psi = x~(token): XLA may fuse the division into the softmax differently (1 ulp in float32)
  np.testing.assert_allclose(outs[0][1], outs[1][1], rtol=3e-7)
  assert not np.array_equal(outs[0][0], outs[2][0])


def test_temperature_one_is_the_untempered_exact32_draw():
  """tau = 1 is bitwise the pre-temperature exact32 token draw (transcribed: mask logit -1e9,
  log_softmax, float32 bisection nucleus, Gumbel-max on the per-position keys)."""
  rng = np.random.default_rng(6)
  m = V - 1
  lg = jnp.asarray(rng.normal(size=(64, V)) * 3, jnp.float32)
  keys = draws.position_keys(jax.random.key(2), jnp.zeros((64,), jnp.int32),
                             jnp.arange(64, dtype=jnp.int32))
  old = jax.nn.log_softmax(jnp.where(jnp.arange(V) == m, -1e9, lg), -1)
  old = nucleus_filter(old, 0.9, "reference", method="bisect")
  want = draws.gumbel_argmax(keys, old)
  got, psi = _draw_rows(keys, lg, KernelSpec(mask_id=m, top_p=0.9, temperature=1.0))
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  np.testing.assert_allclose(np.asarray(psi), np.exp(np.take_along_axis(
      np.asarray(old), np.asarray(want)[:, None], -1)[:, 0]), rtol=1e-6)


@pytest.mark.parametrize("tau", [0.5, 2.0])
def test_tempered_x_tilde_against_numpy(tau):
  """x~ = nucleus(softmax over non-mask of logits / tau) in float64 (select) and float32 (bisect)
  against numpy float64."""
  rng = np.random.default_rng(7)
  m = 0
  lg = rng.normal(size=(30, V)) * 2
  for top in (None, 0.7):
    want = np_masked_probs(lg, m, tau)
    if top is not None:
      keep = np_keep_sorted(want, top, "reference")
      want = np.where(keep, want, 0.0)
      want = want / want.sum(-1, keepdims=True)
    with jax.enable_x64(True):
      lp = masked_log_probs(jnp.asarray(lg), m, tau)
      got64 = np.exp(np.asarray(nucleus_filter(lp, top, method="select")))
    np.testing.assert_allclose(got64, want, atol=1e-12)
    lp32 = masked_log_probs(jnp.asarray(lg, jnp.float32), m, tau)
    got32 = np.exp(np.asarray(nucleus_filter(lp32, top, method="bisect")))
    np.testing.assert_allclose(got32, want, atol=1e-5)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_sampler_temperature_equals_scaled_denoiser(precision):
  """make_sampler wires temperature through every step: the sampler at tau on f equals the
  sampler at 1 on f / tau, bitwise (final argmax unaffected)."""
  rng = np.random.default_rng(8)
  tab_np = rng.normal(size=(V, V))
  tau = 0.6
  dt = jnp.float64 if precision == "float64" else jnp.float32

  def den(params, tokens, t):
    return (tab[tokens] + jnp.roll(tab[tokens], 1, axis=1)) / params

  base = SamplerConfig(strategy="remdm_cap", eta=0.2, num_steps=6, precision=precision,
                       top_p=0.9)
  with jax.enable_x64(precision == "float64"):
    tab = jnp.asarray(tab_np, dt)
    a = make_sampler(den, base.replace(temperature=tau), seq_len=L, mask_id=V - 1)(
        jnp.asarray(1.0, dt), jax.random.key(4), batch_size=8)
    plain = make_sampler(den, base, seq_len=L, mask_id=V - 1)
    b = plain(jnp.asarray(tau, dt), jax.random.key(4), batch_size=8)
    c = plain(jnp.asarray(1.0, dt), jax.random.key(4), batch_size=8)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert not np.array_equal(np.asarray(a), np.asarray(c))
