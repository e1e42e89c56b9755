"""Block decoding with a KV cache and adaptive commit rules (issue 16): refresh-every-step cache
== no cache token for token (every rule and strategy, CFG, padding); a one-layer model, where the
cache is exact, == no cache at every refresh interval (pins the window indexing); the refresh
schedule; threshold / factor / EB counts == numpy transcriptions of Fast-dLLM's
`get_transfer_index` / `get_transfer_index_dynamic` and of the EB-sampler rule, on injected
confidences and end to end against a transcription of Fast-dLLM's `generate`; >= 1 commit per
step and every block ends within its length; batch invariance under every mode; per-row NFE ==
the counted model calls."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from remdm_jax.llm import generate as G
from remdm_jax.llm import model as M
from remdm_jax.sampling import confidence as C
from remdm_jax.sampling.config import SamplerConfig

V, MASK, EOS, EOT, PAD = 16, 15, 14, 13, 12
IDS = dict(mask_id=MASK, eos_id=EOS, eot_id=EOT, pad_id=PAD)
LA = 64  # rows of the toy's position table (gen-relative: row LA - L + l for position l)


# ------------------------------------------------------------------ an exact toy cached model

def tables(seed, sharp=1.0):
  rng = np.random.default_rng(seed)
  A = rng.integers(-24, 25, size=(LA, V)).astype(np.float32) / 8 * sharp  # dyadic: exact sums
  Q = rng.integers(-6, 7, size=(V, V)).astype(np.float32) / 8 * sharp
  return A, Q


def toy_np(A, Q, x, am):
  """logits[b, l] = A[LA - L + l] + counts(x[b] at real positions) Q (float64 transcription)."""
  L = x.shape[1]
  counts = np.zeros((x.shape[0], V))
  for b in range(x.shape[0]):
    for l in range(L):
      if am[b, l]:
        counts[b, x[b, l]] += 1
  return A[None, LA - L:].astype(np.float64) + (counts @ Q)[:, None, :]


def toy(A, Q, calls=None):
  """(logits_fn, prefill_fn, window_fn) of the toy: the cache holds the one-hot features of the
  real tokens; a window recomputes its positions' features and reads the others from the cache.
  `calls` (a list) records ("full" | "prefill" | "window", rows active) per model call."""
  A, Q = jnp.asarray(A), jnp.asarray(Q)

  def note(kind, x):
    if calls is not None:
      jax.debug.callback(lambda xx: calls.append((kind, np.asarray(xx))), x)

  def feats(x, am):
    return jax.nn.one_hot(x, V, dtype=jnp.float32) * am[..., None]

  def head(f, L, start, width):
    counts = jnp.sum(f, axis=1)
    rows = jax.lax.dynamic_slice_in_dim(A[LA - L:], start, width, axis=0)
    return rows[None] + jnp.matmul(counts, Q, precision="highest")[:, None, :]

  def logits_fn(p, x, am):
    note("full", x)
    return head(feats(x, am), x.shape[1], 0, x.shape[1])

  def prefill_fn(p, x, am, start, width):
    note("prefill", x)
    f = feats(x, am)
    return head(f, x.shape[1], start, width), {"f": f}

  def window_fn(p, xw, start, cache, am, width):
    note("window", xw)
    amw = jax.lax.dynamic_slice_in_dim(am, start, xw.shape[1], axis=1)
    f = jax.lax.dynamic_update_slice_in_dim(cache["f"], feats(xw, amw), start, axis=1)
    return head(f, f.shape[1], start, width), {"f": f}

  return logits_fn, prefill_fn, window_fn


def prompts():
  prompt = np.array([[PAD, 3, 7, 1], [2, 5, 9, 11], [PAD, PAD, 4, 4]], np.int32)
  am = (np.arange(4)[None] >= np.array([[1], [0], [2]])).astype(np.int32)
  return prompt, am


def gen(fns, cache="none", **kw):
  lf, pf, wf = fns
  base = dict(rule="llada", gen_length=16, block_length=8, steps=16, **IDS)
  base.update(kw)
  return G.make_generate(lf, G.GenConfig(cache=cache, **base), prefill_fn=pf, window_fn=wf)


# --------------------------------------------------------- numpy transcriptions (Fast-dLLM, EB)

def np_threshold(conf, masked, tau):
  """Fast-dLLM `get_transfer_index` (threshold branch) for one row."""
  c = np.where(masked, conf, -np.inf)
  k = int(masked.sum())
  sel = np.argsort(-c, kind="stable")[:k]  # torch.topk
  take = np.zeros(len(c), bool)
  take[sel] = True
  for j in range(1, k):
    if c[sel[j]] < tau:
      take[sel[j]] = False
  return take


def np_factor(conf, masked, factor):
  """Fast-dLLM `get_transfer_index_dynamic` for one row (its loop, quirk included)."""
  c = np.where(masked, conf, -np.inf)
  n = int(masked.sum())
  threshs = [1 - factor / (m + 1) for m in range(1, n + 1)]
  threshs[0] = -1
  sorted_conf = np.sort(c[masked])[::-1]
  for top_i in range(len(threshs)):
    if sorted_conf[top_i] < threshs[top_i]:
      break
  if top_i == 0 or top_i == len(threshs) - 1:
    top_i += 1
  take = np.zeros(len(c), bool)
  take[np.argsort(-c, kind="stable")[:top_i]] = True
  return take


def np_eb(conf, masked, ent, gamma):
  """EB-sampler (arXiv 2505.24857): in confidence order, the largest prefix with
  sum(H) - max(H) <= gamma, at least one."""
  err = np.where(masked, -conf, np.inf)
  ids = np.argsort(err, kind="stable")
  h = ent[ids]
  ok = (np.cumsum(h) - np.maximum.accumulate(h)) <= gamma
  k = min(int(ok.sum()), int(masked.sum()))
  k = max(k, 1) if masked.any() else 0
  take = np.zeros(len(conf), bool)
  take[ids[:k]] = True
  return take


@pytest.mark.parametrize("rule", ["threshold", "factor", "eb"])
def test_commit_counts_equal_numpy_transcriptions(rule):
  rng = np.random.default_rng({"threshold": 0, "factor": 1, "eb": 2}[rule])
  B, W = 64, 12
  for sharp in (0.5, 3.0, 12.0):
    lg = rng.normal(size=(B, W, 20)) * sharp
    p = np.exp(lg - lg.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    conf = p.max(-1)
    ent = -(p * np.log(p)).sum(-1)
    masked = rng.uniform(size=(B, W)) < rng.uniform(0.1, 1.0, size=(B, 1))
    masked[0] = False       # nothing masked: no commit
    masked[1, 1:] = False   # one masked position
    masked[1, 0] = True
    gated = jnp.asarray(np.where(masked, conf, -np.inf), jnp.float32)
    n = C.commit_count(rule, gated, tau=0.7, factor=1.0, gamma=0.1,
                       ent=jnp.asarray(ent, jnp.float32))
    _, took = C.commit(jnp.zeros((B, W), jnp.int32), jnp.ones((B, W), jnp.int32), gated, n)
    took = np.asarray(took)
    assert not took[0].any() and took[1].sum() == 1
    for b in range(1, B):
      if not masked[b].any():  # (the reference's factor loop raises IndexError on such a row)
        assert not took[b].any()
        continue
      cf = conf[b].astype(np.float32).astype(np.float64)
      want = {"threshold": lambda: np_threshold(cf, masked[b], 0.7),
              "factor": lambda: np_factor(cf, masked[b], 1.0),
              "eb": lambda: np_eb(cf, masked[b], ent[b].astype(np.float32), 0.1)}[rule]()
      np.testing.assert_array_equal(took[b], want, err_msg=f"row {b} sharp {sharp}")
      assert took[b].sum() >= min(1, masked[b].sum()) and not np.any(took[b] & ~masked[b])


def fastdllm_generate(A, Q, prompt, gen_length, block_length, rule, tau=0.9, factor=1.0,
                      gamma=1e-3):
  """Fast-dLLM `generate` (no cache; temperature 0, low-confidence) on the toy, one row, with the
  mask logit banned (as a trained LLaDA / the benchmark harness); EB rule in the same loop."""
  P = prompt.shape[1]
  x = np.full((1, P + gen_length), MASK, np.int64)
  x[:, :P] = prompt
  am = np.ones_like(x)
  nfe = 0
  for nb in range(gen_length // block_length):
    end = P + (nb + 1) * block_length
    while True:
      nfe += 1
      mask_index = x == MASK
      logits = toy_np(A, Q, x, am)
      logits[..., MASK] = -np.inf
      mask_index[:, end:] = False
      x0 = logits.argmax(-1)
      p = np.exp(logits - logits.max(-1, keepdims=True))
      p /= p.sum(-1, keepdims=True)
      x0_p = np.take_along_axis(p, x0[..., None], -1)[..., 0]
      ent = -(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0)).sum(-1)
      if rule == "threshold":
        take = np_threshold(x0_p[0], mask_index[0], tau)
      elif rule == "factor":
        take = np_factor(x0_p[0], mask_index[0], factor)
      else:
        take = np_eb(x0_p[0], mask_index[0], ent[0], gamma)
      x[0, take] = x0[0, take]
      if not (x[:, end - block_length:end] == MASK).any():
        break
  return x[:, P:], nfe


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
@pytest.mark.parametrize("rule,kw", [("threshold", dict(threshold=0.6)),
                                     ("factor", dict(factor=1.0)), ("eb", dict(eb_gamma=0.3))])
def test_adaptive_generation_equals_fastdllm_transcription(cache, rule, kw):
  A, Q = tables(3, sharp=2.0)
  prompt = np.array([[3, 7, 1, 2]], np.int32)
  want, nfe = fastdllm_generate(A, Q, prompt, 16, 8, rule, tau=kw.get("threshold", 0.9),
                                factor=kw.get("factor", 1.0), gamma=kw.get("eb_gamma", 1e-3))
  g = gen(toy(A, Q), cache, commit=rule, **kw)
  got, info = g(None, prompt, None, jax.random.key(0))
  np.testing.assert_array_equal(np.asarray(got), want)
  assert int(info["nfe"]) == nfe == int(info["row_nfe"][0])
  assert nfe < 16  # several tokens per step somewhere (the rule is not 1 token / step)


def test_at_least_one_commit_per_step_and_blocks_end_within_their_length():
  """A model that prefers MASK and is never confident: each step still commits >= 1 masked
  position (the mask is never proposed), so every block ends within block_length steps."""
  A, Q = tables(5, sharp=1 / 64)
  A[:, MASK] = 10.0
  calls = []
  prompt, am = prompts()
  for rule, kw in (("threshold", dict(threshold=0.99)), ("factor", dict(factor=0.01)),
                   ("eb", dict(eb_gamma=0.0)), ("threshold", dict(threshold=0.0))):
    calls.clear()
    got, info = gen(toy(A, Q, calls), commit=rule, **kw)(None, prompt, am, jax.random.key(0))
    got = np.asarray(got)
    assert not np.any(got == MASK)
    # masks left per row before every step, and after the last one
    left = np.array([np.sum(x[:, 4:] == MASK, axis=1) for _, x in calls]
                    + [np.sum(got == MASK, axis=1)])
    assert len(calls) == int(info["nfe"]) and np.all(np.diff(left, axis=0) <= 0)
    # every step a row takes part in commits >= 1 token: decreases == its NFE
    np.testing.assert_array_equal(np.sum(np.diff(left, axis=0) < 0, axis=0), info["row_nfe"])
    if kw.get("threshold") == 0.0:   # everything clears tau = 0: one step per block
      want = 2
    elif rule == "factor":           # one per step; the reference's quirk commits the last 2
      want = 14
    else:                            # never confident: one token per step, 8 steps per block
      want = 16
    assert int(info["nfe"]) == want and np.all(np.asarray(info["row_nfe"]) == want), rule


def test_refresh_schedule():
  """Once per block: one prefill per block, windows otherwise; every k steps: the prefill at steps
  0, k, 2k, ... of each block; the window has the block's length (dual) or reaches the end
  (prefix)."""
  A, Q = tables(6)
  prompt, am = prompts()
  for cache, k, width in (("dual", 0, 8), ("dual", 3, 8), ("prefix", 0, None),
                          ("prefix", 2, None)):
    calls = []
    gen(toy(A, Q, calls), cache, refresh_every=k)(None, prompt, am, jax.random.key(0))
    kinds = [c[0] for c in calls]
    assert len(kinds) == 16 and "full" not in kinds
    for blk in range(2):
      got = kinds[8 * blk:8 * blk + 8]
      want = ["prefill" if (i == 0 if k == 0 else i % k == 0) else "window" for i in range(8)]
      assert got == want, (cache, k, got)
    wins = [c[1].shape[1] for c in calls if c[0] == "window"]
    if cache == "dual":
      assert set(wins) == {8}
    else:  # block 1: [4, 20) -> 16, block 2: [12, 20) -> 8
      assert set(wins) == {16, 8}


CACHED_CASES = [
    ("llada", dict(temperature=0.7, cfg_scale=1.0)),
    ("llada", dict(remasking="random", temperature=1.0, stop_at_eos=True)),
    ("llada_conf", dict()),
    ("remdm_llada", dict(remdm_number=2)),
    ("llada", dict(commit="threshold", threshold=0.5, cfg_scale=0.5)),
    ("llada_conf", dict(commit="factor", factor=1.5)),
    ("llada", dict(commit="eb", eb_gamma=0.2, temperature=0.5)),
    ("strategy", dict(steps=8, sampler=SamplerConfig(strategy="remdm_conf", num_steps=4))),
    ("strategy", dict(steps=8, cfg_scale=1.0, sampler=SamplerConfig(strategy="mdlm",
                                                                     num_steps=4))),
]


def tiny_llada(n_layers, positions="absolute"):
  cfg = M.LLaDAConfig.tiny(vocab_size=V, mask_token_id=MASK, eos_token_id=EOS, eot_token_id=EOT,
                           pad_token_id=PAD, n_layers=n_layers, positions=positions,
                           d_model=32, mlp_hidden_size=64)
  gd, params = M.init_model(cfg, jax.random.key(n_layers))
  return (M.make_logits_fn(gd), *M.make_cache_fns(gd)), params


def no_mask_draws(fns):
  """The model with the mask token's logit at -1e4 (a trained LLaDA effectively never proposes
  it): no mask survives a block, so a window step's candidates (the current block) are the full
  forward's (every masked generated position not in a later block) and a one-layer cache is
  exact (an earlier-block mask committed at a refresh step would be stale in the next windows)."""
  lf, pf, wf = fns
  ban = jnp.zeros((V,), jnp.float32).at[MASK].set(-1e4)
  return (lambda *a: lf(*a) + ban,
          lambda *a: (lambda o: (o[0] + ban, o[1]))(pf(*a)),
          lambda *a: (lambda o: (o[0] + ban, o[1]))(wf(*a)))


def _cached_equals_none(fns, params, case, caches, refresh):
  rule, kw = case
  prompt, am = prompts()
  keys = jax.random.split(jax.random.key(1), 3)
  kw = dict(kw, rule=rule)
  want, winfo = gen(fns, "none", **kw)(params, prompt, am, keys)
  for cache in caches:
    got, info = gen(fns, cache, refresh_every=refresh, **kw)(params, prompt, am, keys)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=f"{case} {cache}")
    assert int(info["nfe"]) == int(winfo["nfe"])
    np.testing.assert_array_equal(np.asarray(info["row_nfe"]), np.asarray(winfo["row_nfe"]))


@pytest.mark.parametrize("case", [CACHED_CASES[4]])
def test_refresh_every_step_equals_no_cache(case):
  """Two layers (the cache is approximate between refreshes): refreshed every step, prefix and
  dual equal none token for token, with CFG and left padding."""
  fns, params = tiny_llada(2)
  _cached_equals_none(fns, params, case, ("prefix", "dual"), refresh=1)


@pytest.mark.slow
@pytest.mark.parametrize("case", CACHED_CASES)
def test_refresh_every_step_equals_no_cache_every_rule(case):
  fns, params = tiny_llada(2)
  _cached_equals_none(fns, params, case, ("prefix", "dual"), refresh=1)


def fastdllm_fixed(A, Q, prompt, am, gen_length, block_length, steps, cache, refresh=0):
  """Fast-dLLM's `generate` / `generate_with_prefix_cache` / `generate_with_dual_cache` (fixed
  counts `get_num_transfer_tokens`, temperature 0, low-confidence, the mask token NOT banned) on
  the toy, per row with left padding. A refresh step is a full forward whose candidates are
  every masked generated position before the block end (`mask_index[:, e:] = 0`: a mask that
  survived an earlier block competes again, as the official LLaDA gate); a window step sees the
  cache of the last refresh outside its window ([s, L) prefix, [s, e) dual) and only the current
  block's masks compete. refresh: 0 = once per block, k = steps 0, k, 2k, ... of each block."""
  B, P = prompt.shape
  L = P + gen_length
  x = np.full((B, L), MASK, np.int64)
  x[:, :P] = prompt
  amf = np.concatenate([am, np.ones((B, gen_length), am.dtype)], 1)
  nb = gen_length // block_length
  S = steps // nb
  for blk in range(nb):
    s = P + blk * block_length
    e = s + block_length
    n = (x[:, s:e] == MASK).sum(1)
    counts = n[:, None] // S + (np.arange(S)[None] < (n % S)[:, None])
    for i in range(S):
      full = cache == "none" or (i == 0 if refresh == 0 else i % refresh == 0)
      if full:
        ctx = x
        x_ref = x.copy()  # what the cache holds until the next refresh
      else:
        ctx = x_ref.copy()
        w = slice(s, L) if cache == "prefix" else slice(s, e)
        ctx[:, w] = x[:, w]
      logits = toy_np(A, Q, ctx, amf)
      x0 = logits.argmax(-1)
      p = np.exp(logits - logits.max(-1, keepdims=True))
      p /= p.sum(-1, keepdims=True)
      conf = np.take_along_axis(p, x0[..., None], -1)[..., 0]
      cand = x == MASK
      cand[:, :P] = False
      cand[:, e:] = False
      if not full:
        cand[:, :s] = False
      for b in range(B):
        c = np.where(cand[b], conf[b], -np.inf)
        sel = np.argsort(-c, kind="stable")[:counts[b, i]]
        sel = sel[cand[b, sel]]
        x[b, sel] = x0[b, sel]
  return x[:, P:]


@pytest.mark.parametrize("refresh", [0, 3])
def test_a_mask_surviving_a_block_competes_at_refresh_steps_only(refresh):
  """Issue 19 item 2 on the cache: the model often draws the mask token in block 1; cache none
  lets those positions compete at every step of block 2 (the official gate excludes only later
  blocks), prefix / dual at block 2's full forwards only (a window computes the current block's
  logits: Fast-dLLM's cached functions). Each mode equals the transcription, and the modes
  differ at this seed (the test bites)."""
  A, Q = tables(12)
  A[LA - 20 + 4:LA - 20 + 12, MASK] += 1.5  # block 1 (positions 4..11 of L = 20)
  prompt, am = prompts()
  want = {c: fastdllm_fixed(A, Q, prompt, am, 16, 8, 8, c, refresh)
          for c in ("none", "prefix", "dual")}
  assert np.any(want["none"] == MASK) and np.any(want["none"] != want["dual"])
  for c in ("none", "prefix", "dual"):
    got, info = gen(toy(A, Q), c, steps=8, refresh_every=refresh)(None, prompt, am,
                                                                   jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(got), want[c], err_msg=c)
    assert int(info["nfe"]) == 8


@pytest.mark.parametrize("case,refresh", [(CACHED_CASES[0], 0)])
def test_one_layer_cache_is_exact_at_any_refresh(case, refresh):
  """One layer: a window step's keys / values and logits are exact (test_llm_kv_cache), so every
  mode equals none at any refresh interval; this pins the window indexing (start, RoPE
  positions, key mask, write-back) through the whole driver. The mask token is never proposed
  (`no_mask_draws`): a mask that survives a block competes again at the full forwards only
  (test_a_mask_surviving_a_block_competes_at_refresh_steps_only)."""
  fns, params = tiny_llada(1)
  _cached_equals_none(no_mask_draws(fns), params, case, ("prefix", "dual"), refresh=refresh)


@pytest.mark.slow
@pytest.mark.parametrize("case", CACHED_CASES)
@pytest.mark.parametrize("refresh", [0, 3])
def test_one_layer_cache_is_exact_every_rule(case, refresh):
  fns, params = tiny_llada(1)
  _cached_equals_none(no_mask_draws(fns), params, case, ("prefix", "dual"), refresh=refresh)


def _batch_invariance(fns, params, cache, kw):
  prompt, am = prompts()
  keys = jax.random.split(jax.random.key(7), 3)
  g = gen(fns, cache, **kw)
  out, info = g(params, prompt, am, keys)
  out = np.asarray(out)
  for b in (0, 2):  # the padded rows, alone without padding and in a batch of another size
    real = prompt[b][am[b] == 1][None]
    alone, ainfo = g(params, real, None, keys[b:b + 1])
    np.testing.assert_array_equal(out[b], np.asarray(alone)[0], err_msg=f"{cache} {kw} row {b}")
    assert int(ainfo["row_nfe"][0]) == int(info["row_nfe"][b])
  pair, _ = g(params, prompt[[2, 1]], am[[2, 1]], keys[np.array([2, 1])])
  np.testing.assert_array_equal(np.asarray(pair), out[[2, 1]])


BATCH_CASES = [("dual", dict(commit="threshold", threshold=0.5, cfg_scale=1.0,
                             stop_at_eos=True)),
               ("prefix", dict(commit="eb", eb_gamma=0.3, temperature=1.0)),
               ("none", dict(rule="llada_conf", commit="factor", factor=1.0))]


@pytest.mark.parametrize("cache,kw", BATCH_CASES)
def test_batch_invariance(cache, kw):
  A, Q = tables(8, sharp=2.0)
  _batch_invariance(toy(A, Q), None, cache, kw)


STRATEGY_BATCH_CASES = [
    ("none", dict(sampler=SamplerConfig(strategy="remdm_cap", num_steps=4, eta=0.2))),
    ("dual", dict(cfg_scale=1.0, stop_at_eos=True,
                  sampler=SamplerConfig(strategy="remdm_conf", num_steps=4, top_p=0.9))),
    ("prefix", dict(sampler=SamplerConfig(strategy="mdlm", num_steps=4, precision="float32")))]


@pytest.mark.parametrize("cache,kw", STRATEGY_BATCH_CASES)
def test_strategy_batch_invariance(cache, kw):
  """The strategy path names its draws per row (row key, generated position): a left-padded row
  equals the same prompt alone and in a batch of another size / order, with CFG and EOS stop, on
  every cache mode."""
  A, Q = tables(8, sharp=2.0)
  _batch_invariance(toy(A, Q), None, cache, dict(rule="strategy", steps=8, **kw))


def test_strategy_rows_follow_their_keys():
  """The strategy path's row keys are real inputs: the same prompt in every row with different
  per-row keys gives different rows, equal keys give equal rows."""
  A, Q = tables(8, sharp=2.0)
  g = gen(toy(A, Q), "none", rule="strategy", steps=8,
          sampler=SamplerConfig(strategy="mdlm", num_steps=4))
  prompt = np.array([[2, 5, 9, 11]] * 3, np.int32)
  k = jax.random.split(jax.random.key(3), 2)
  out = np.asarray(g(params=None, prompt=prompt, attention_mask=None,
                     key=jnp.stack([k[0], k[1], k[0]]))[0])
  np.testing.assert_array_equal(out[0], out[2])
  assert np.any(out[0] != out[1])


@pytest.mark.slow
@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
@pytest.mark.parametrize("commit", ["fixed", "threshold", "factor", "eb"])
@pytest.mark.parametrize("cfg_scale", [0.0, 1.0])
def test_batch_invariance_every_mode(cache, commit, cfg_scale):
  A, Q = tables(8, sharp=2.0)
  for rule in ("llada", "llada_conf"):
    kw = dict(rule=rule, commit=commit, cfg_scale=cfg_scale, stop_at_eos=True,
              temperature=0.8, threshold=0.5, eb_gamma=0.3)
    _batch_invariance(toy(A, Q), None, cache, kw)


@pytest.mark.slow
def test_batch_invariance_real_model_dual_threshold():
  """The tiny LLaDA (positions from the first real token): a left-padded row's tokens equal the
  same prompt alone, under the dual cache with a threshold rule and CFG."""
  fns, params = tiny_llada(2, positions="from_first_token")
  _batch_invariance(fns, params, "dual", dict(commit="threshold", threshold=0.1, cfg_scale=0.5))


@pytest.mark.parametrize("cache,kw", [("dual", dict(commit="threshold", threshold=0.7)),
                                      ("prefix", dict(commit="factor", stop_at_eos=True)),
                                      ("none", dict(rule="remdm_llada"))])
def test_row_nfe_equals_counted_model_calls(cache, kw):
  A, Q = tables(9, sharp=1.0)
  prompt, am = prompts()
  keys = jax.random.split(jax.random.key(3), 3)
  calls = []
  out, info = gen(toy(A, Q, calls), cache, **kw)(None, prompt, am, keys)
  assert len(calls) == int(info["nfe"])
  row_nfe = np.asarray(info["row_nfe"])
  for b in range(3):
    calls.clear()
    real = prompt[b][am[b] == 1][None]
    gen(toy(A, Q, calls), cache, **kw)(None, real, None, keys[b:b + 1])
    assert len(calls) == row_nfe[b], (b, len(calls), row_nfe)
  if cache != "none":
    assert len(set(row_nfe.tolist())) > 1  # rows differ: the counts are per row


# Dream's rules are kernels of the same block loop: on a LLaDA-architecture model they run on
# every cache mode (a Dream model itself has no cache: tests/test_llm_dream_rules.py).
DREAM_CASES = [
    ("dream_entropy", dict(temperature=0.3, top_p=0.9, alg_temp=0.2, cfg_scale=1.0)),
    ("dream_origin", dict(temperature=0.7, stop_at_eos=True)),
    ("dream_topk_margin", dict(top_k=5)),
    ("dream_maskgit_plus", dict(temperature=1.0, alg_temp=0.5)),
]


@pytest.mark.parametrize("case", DREAM_CASES[:1])
def test_dream_rules_on_the_cache_refreshed_every_step_equal_no_cache(case):
  fns, params = tiny_llada(2)
  _cached_equals_none(fns, params, case, ("prefix", "dual"), refresh=1)


@pytest.mark.slow
@pytest.mark.parametrize("case", DREAM_CASES[1:])
def test_dream_rules_on_the_cache_refreshed_every_step_equal_no_cache_all(case):
  fns, params = tiny_llada(2)
  _cached_equals_none(fns, params, case, ("prefix", "dual"), refresh=1)


@pytest.mark.slow
@pytest.mark.parametrize("case", DREAM_CASES)
def test_dream_rules_one_layer_cache_is_exact(case):
  fns, params = tiny_llada(1)
  _cached_equals_none(no_mask_draws(fns), params, case, ("prefix", "dual"), refresh=3)


def test_dream_rule_runs_on_the_cache_and_is_batch_invariant():
  """The Dream step takes its logits from the cache kernel (prefill at the block's first step,
  windows after) and a row's tokens do not depend on its batch (each row its own mask count)."""
  A, Q = tables(8, sharp=2.0)
  calls = []
  prompt, am = prompts()
  kw = dict(rule="dream_maskgit_plus", temperature=0.8, alg_temp=0.3)
  out, info = gen(toy(A, Q, calls), "dual", **kw)(None, prompt, am, jax.random.key(0))
  kinds = [c[0] for c in calls]
  assert kinds == (["prefill"] + ["window"] * 7) * 2 and int(info["nfe"]) == 16
  assert not np.any(np.asarray(out) == MASK)  # the last step of a block commits every mask
  _batch_invariance(toy(A, Q), None, "dual", dict(kw, stop_at_eos=True))


def test_bad_configs_raise():
  with pytest.raises(ValueError, match="cache"):
    G.GenConfig(cache="full", **IDS)
  with pytest.raises(ValueError, match="commit"):
    G.GenConfig(rule="remdm_llada", commit="threshold", gen_length=32, block_length=32,
                steps=32, **IDS)
  with pytest.raises(ValueError, match="refresh_every"):
    G.GenConfig(refresh_every=-1, **IDS)
  with pytest.raises(ValueError, match="threshold"):
    G.GenConfig(commit="threshold", threshold=1.5, **IDS)
  A, Q = tables(0)
  with pytest.raises(ValueError, match="prefill_fn"):
    G.make_generate(toy(A, Q)[0], G.GenConfig(cache="dual", gen_length=16, block_length=8,
                                              steps=16, **IDS))


def test_cli_cache_and_commit_flags(tmp_path, capsys):
  from test_llm_countdown import tiny_model_dir
  from remdm_jax.llm import cli
  d = str(tmp_path / "model")
  tiny_model_dir(d)
  common = [f"--model_dir={d}", "--gen_length=8", "--block_length=4", "--steps=8",
            "--param_dtype=float32", "--compute_dtype=float32", "--prompt=1+1=", "--prompt=22"]
  assert cli.main(common + ["--cache=dual", "--commit=threshold", "--threshold=0.5",
                            "--refresh_every=2"]) == 0
  out, err = capsys.readouterr()
  assert len(out.strip().splitlines()) == 2
  stats = json.loads(err.strip().splitlines()[-1])
  assert len(stats["row_nfe"]) == 2 and 2 <= stats["nfe"] <= 8
  assert cli.main(common + ["--cache=full"]) == 2
  assert "error: " in capsys.readouterr().err
  assert cli.main(common + ["--sampler=remdm_llada", "--commit=eb"]) == 2
  assert "--commit=eb (an adaptive commit rule) applies" in capsys.readouterr().err
  assert cli.main(common + ["--sampler=remdm_cap", "--commit=eb"]) == 2  # named, not "strategy"
  assert "not --sampler=remdm_cap" in capsys.readouterr().err
  # a parameter flag where it does nothing is refused, naming it
  for flags, name in ((["--threshold=0.5"], "--threshold=0.5"),
                      (["--commit=threshold", "--factor=2"], "--factor=2"),
                      (["--cache=dual", "--eb_gamma=0.5"], "--eb_gamma=0.5"),
                      (["--refresh_every=2"], "--refresh_every=2")):
    assert cli.main(common + flags) == 2, flags
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {name} applies only with"), err


def test_cli_prompt_keys_do_not_depend_on_the_other_prompts(tmp_path, capsys):
  """Prompt i uses fold_in(key(seed), i): at temperature 1 the first prompt's text is the same
  alone and followed by other prompts (before: split(key, n) changed with n)."""
  from test_llm_countdown import tiny_model_dir
  from remdm_jax.llm import cli
  d = str(tmp_path / "model")
  tiny_model_dir(d)
  common = [f"--model_dir={d}", "--gen_length=8", "--block_length=4", "--steps=8",
            "--temperature=1.0", "--param_dtype=float32", "--compute_dtype=float32",
            "--prompt=1+1="]
  texts = []
  for extra in ([], ["--prompt=22", "--prompt=345"]):
    assert cli.main(common + extra) == 0
    texts.append([json.loads(ln)["text"] for ln in capsys.readouterr().out.strip().splitlines()])
  assert texts[0][0] == texts[1][0]
  assert len(texts[1]) == 3
  one, three = cli.prompt_keys(5, 1), cli.prompt_keys(5, 3)
  np.testing.assert_array_equal(jax.random.key_data(one[0]), jax.random.key_data(three[0]))
  assert not np.array_equal(jax.random.key_data(three[0]), jax.random.key_data(three[1]))
