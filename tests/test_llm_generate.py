"""Block generation vs independent numpy transcriptions of the reference samplers
(SPEC_DOMAINS §L.1 `llada_conf_sample` / `llada_remdm_sample`, §L.3 ML-GSAI `generate`), fed the
same injected noise, on a small deterministic denoiser whose float32 logits are exact."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from remdm_jax.llm import generate as G
from remdm_jax.sampling.config import SamplerConfig

V, MASK, EOS, EOT, PAD = 16, 15, 14, 13, 12
P, GEN = 4, 16


def toy_tables(seed=0, L=P + GEN):
  rng = np.random.default_rng(seed)
  A = rng.integers(-24, 25, size=(L, V)).astype(np.float32) / 8     # dyadic: sums are exact
  Q = rng.integers(-6, 7, size=(V, V)).astype(np.float32) / 8
  A[:, MASK] -= 16  # the reference samplers draw over the full vocabulary, mask included
  Q[:, MASK] = 0
  return A, Q


def toy_np(A, Q, x, am):
  """logits[b, l] = A[l] + counts(x[b] at real positions) Q."""
  counts = np.zeros((x.shape[0], V), np.float32)
  for b in range(x.shape[0]):
    for l in range(x.shape[1]):
      if am[b, l]:
        counts[b, x[b, l]] += 1
  return (A[None, :x.shape[1]] + (counts @ Q)[:, None, :]).astype(np.float32)


def toy_jax(A, Q):
  A, Q = jnp.asarray(A), jnp.asarray(Q)

  def logits_fn(params, x, am):
    counts = jnp.sum(jax.nn.one_hot(x, V, dtype=jnp.float32) * am[..., None], axis=1)
    return A[None, :x.shape[1]] + jnp.matmul(counts, Q, precision="highest")[:, None, :]
  return logits_fn


def softmax(z):
  z = z - z.max(-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(-1, keepdims=True)


def topk(conf_row, k):
  """torch.topk with ties to the lower index (stable)."""
  return np.argsort(-conf_row, kind="stable")[:k]


# ---------------------------------------------------------------- reference transcriptions

def ref_official(model, prompt, am, steps, gen_length, block_length, temperature, cfg_scale,
                 remasking, logits_eos_inf, confidence_eos_eot_inf, u, conf_u, quirk=True):
  """ML-GSAI/LLaDA generate.py (SPEC_DOMAINS §L.3), chained-assignment EOS quirk included.
  u: [n_steps, B, G, V] uniforms of add_gumbel_noise (gen positions); conf_u: [n_steps, B, G]."""
  B, Pn = prompt.shape
  x = np.full((B, Pn + gen_length), MASK, np.int64)
  x[:, :Pn] = prompt
  am = np.concatenate([am, np.ones((B, gen_length), am.dtype)], 1)
  prompt_index = x != MASK
  nb = gen_length // block_length
  steps = steps // nb
  it = 0
  for nblk in range(nb):
    bmask = x[:, Pn + nblk * block_length: Pn + (nblk + 1) * block_length] == MASK
    cnt = bmask.sum(1)
    ntt = np.zeros((B, steps), np.int64) + (cnt // steps)[:, None]
    for i in range(B):
      ntt[i, :cnt[i] % steps] += 1
    for i in range(steps):
      mask_index = x == MASK
      if cfg_scale > 0:
        un_x = x.copy()
        un_x[prompt_index] = MASK
        lg = model(np.concatenate([x, un_x]), np.concatenate([am, am]))
        c, un = lg[:B], lg[B:]
        logits = un + (cfg_scale + 1) * (c - un)
      else:
        logits = model(x, am)
      logits = logits.copy()
      if logits_eos_inf:
        logits[:, :, EOS] = -np.inf
      if temperature == 0:
        noisy = logits
      else:
        noise = np.full(logits.shape, 0.5)
        noise[:, Pn:] = u[it]
        noisy = np.exp(logits.astype(np.float64)) / (-np.log(noise)) ** temperature
      x0 = np.argmax(noisy, -1)
      if confidence_eos_eot_inf and quirk:  # `logits_with_noise[.., EOS] = logits[.., EOT] = -inf`
        noisy[:, :, EOS] = -np.inf  # at temperature 0 `noisy` IS `logits` (add_gumbel_noise
        logits[:, :, EOT] = -np.inf  # returns its input): both reach the confidence softmax
      elif confidence_eos_eot_inf:  # bonsai: both on logits
        logits[:, :, EOS] = -np.inf
        logits[:, :, EOT] = -np.inf
      if remasking == "low_confidence":
        p = softmax(logits.astype(np.float32))
        x0_p = np.take_along_axis(p, x0[..., None], -1)[..., 0].astype(np.float64)
      else:
        x0_p = np.full(x0.shape, 0.5)
        x0_p[:, Pn:] = conf_u[it]
      x0_p[:, Pn + (nblk + 1) * block_length:] = -np.inf
      x0 = np.where(mask_index, x0, x)
      conf = np.where(mask_index, x0_p, -np.inf)
      for j in range(B):
        sel = topk(conf[j], ntt[j, i])
        x[j, sel] = x0[j, sel]
      it += 1
  return x[:, Pn:]


def ref_conf_remdm(model, prompt, mask_length, sampling_steps, block_size, remdm_number, u,
                   remdm, stop_at_eos=True):
  """guanghanwang/ReMDM-LLaDA eval_llada.py llada_conf_sample / llada_remdm_sample (§L.1),
  batch 1, EOS early exit; u: [iterations, 1, G, V] uniforms of `_sample_categorical`."""
  Pn = prompt.shape[1]
  xt = np.full((1, Pn + mask_length), MASK, np.int64)
  xt[:, :Pn] = prompt
  prompt_len = int((xt != MASK).sum())
  nb = mask_length // block_size
  steps = sampling_steps // nb
  am = np.ones_like(xt)
  it, nfe = 0, 0
  for nblk in range(nb):
    cache = np.full(xt.shape, np.inf)
    thr = int(block_size / 8 * 7)
    for i in range(2 * steps if remdm else steps):
      win = remdm and thr <= i < thr + steps
      if win:
        idx = np.argsort(cache[0], kind="stable")[:remdm_number]
        cache[0, idx] = np.inf
        xt[0, idx] = MASK
      mask_index = xt == MASK
      logits = model(xt, am)
      nfe += 1
      p = softmax(logits.astype(np.float64))
      uu = np.full(p.shape, 0.5)
      uu[:, Pn:] = u[it]
      x0 = np.argmax(p / (1e-10 - np.log(uu + 1e-10)), -1)
      x0_p = np.take_along_axis(p, x0[..., None], -1)[..., 0]
      x0_p[:, prompt_len + (nblk + 1) * block_size:] = -np.inf
      x0 = np.where(mask_index, x0, xt)
      conf = np.where(mask_index, x0_p, -np.inf)
      n = remdm_number if win else mask_length // sampling_steps
      sel = topk(conf[0], n)
      xt[0, sel] = x0[0, sel]
      cache[0, sel] = conf[0, sel]
      it += 1
    if stop_at_eos and np.sum(xt[:, Pn:] == EOS) > 0:
      return xt[:, Pn:], nfe
  return xt[:, Pn:], nfe


# ---------------------------------------------------------------- helpers

def _prompts():
  prompt = np.array([[PAD, 3, 7, 1], [2, 5, 9, 11], [PAD, PAD, 4, 4]], np.int32)
  am = (np.arange(P)[None] >= np.array([[1], [0], [2]])).astype(np.int32)
  return prompt, am


OFFICIAL_CASES = [
    # block, steps, remasking, cfg, temperature, logits_eos_inf, conf_eos_eot_inf
    (16, 16, "low_confidence", 0.0, 0.0, False, False),
    (16, 8, "random", 1.5, 1.0, True, False),
    (8, 16, "low_confidence", 1.5, 1.0, False, True),
    (8, 8, "random", 0.0, 0.0, True, True),
    (4, 16, "low_confidence", 0.0, 1.0, True, True),
    (4, 8, "low_confidence", 1.5, 0.0, False, True),
    (8, 8, "low_confidence", 0.0, 0.7, False, False),
    (4, 16, "random", 1.5, 1.0, False, False),
]


@pytest.mark.parametrize("precision", ["float64", "exact32"])
@pytest.mark.parametrize("case", OFFICIAL_CASES)
def test_official_generate_matches_reference(case, precision):
  blk, steps, remasking, cfg_scale, temp, leos, ceos = case
  A, Q = toy_tables(1)
  prompt, am = _prompts()
  B = prompt.shape[0]
  rng = np.random.default_rng(hash(case) % 2**32)
  u = rng.uniform(1e-6, 1, size=(steps, B, GEN, V))
  conf_u = rng.uniform(size=(steps, B, GEN)).astype(np.float32)
  want = ref_official(lambda x, m: toy_np(A, Q, x, m), prompt, am, steps, GEN, blk, temp,
                      cfg_scale, remasking, leos, ceos, u, conf_u)
  cfg = G.GenConfig(rule="llada", gen_length=GEN, block_length=blk, steps=steps,
                    temperature=temp, remasking=remasking, cfg_scale=cfg_scale,
                    logits_eos_inf=leos, confidence_eos_eot_inf=ceos, official_eos_quirk=True,
                    precision=precision, mask_id=MASK, eos_id=EOS, eot_id=EOT, pad_id=PAD)
  with jax.enable_x64(precision == "float64"):
    dt = np.float64 if precision == "float64" else np.float32
    gen = G.make_generate(toy_jax(A, Q), cfg)
    got, info = gen(None, prompt, am, jax.random.key(0),
                    noise={"u": u.astype(dt), "conf_u": conf_u})
  np.testing.assert_array_equal(np.asarray(got), want)
  assert int(info["nfe"]) == steps
  assert not np.any(np.asarray(got) == MASK)


def test_eos_quirk_flag_changes_only_what_it_should():
  """official_eos_quirk=True: the chained assignment - at temperature > 0 only EOT's confidence
  logit is -inf; at temperature 0 the noisy logits alias the logits, so EOS and EOT both are, as
  in the default (bonsai: EOS and EOT at every temperature). With EOS likely, quirk and default
  differ at temperature 1 and agree at 0, each equal to its transcription."""
  A, Q = toy_tables(2)
  A[:, EOS] += 1.0
  prompt, am = _prompts()
  base = dict(rule="llada", gen_length=GEN, block_length=8, steps=8, confidence_eos_eot_inf=True,
              mask_id=MASK, eos_id=EOS, eot_id=EOT, pad_id=PAD)
  key = jax.random.key(0)
  u = np.random.default_rng(3).uniform(1e-6, 1, size=(8, prompt.shape[0], GEN, V))
  for temp in (1.0, 0.0):
    outs = []
    for quirk in (True, False):
      gen = G.make_generate(toy_jax(A, Q), G.GenConfig(**base, official_eos_quirk=quirk,
                                                       temperature=temp))
      got = np.asarray(gen(None, prompt, am, key, noise={"u": u.astype(np.float32)})[0])
      want = ref_official(lambda x, m: toy_np(A, Q, x, m), prompt, am, 8, GEN, 8, temp, 0.0,
                          "low_confidence", False, True, u, None, quirk=quirk)
      np.testing.assert_array_equal(got, want)
      outs.append(got)
    assert np.any(outs[0] == EOS)
    assert np.array_equal(outs[0], outs[1]) == (temp == 0.0), temp


def test_eos_quirk_at_temperature_0_masks_eos_and_eot_smallest_case():
  """Issue 19 item 1, the smallest case: gen = block = steps = 2, a one-token prompt, temperature
  0. Position 0 prefers EOS, position 1 a plain token with lower probability. The official code
  zeroes EOS's confidence too (aliasing), so position 1 commits first and then position 0 sees a
  different context; masking EoT alone (the old quirk mode) committed position 0 first."""
  A = np.zeros((3, V), np.float32)
  A[:, MASK] = -16
  A[1, EOS] = 3.0          # gen position 0: EOS, p ~ 0.6
  A[2, 5] = 1.5            # gen position 1: token 5, p ~ 0.25
  Q = np.zeros((V, V), np.float32)
  Q[5, 7] = 8.0            # once token 5 is in the context, position 0 prefers token 7
  prompt, am = np.array([[2]], np.int32), np.ones((1, 1), np.int32)
  cfg = G.GenConfig(rule="llada", gen_length=2, block_length=2, steps=2, temperature=0.0,
                    confidence_eos_eot_inf=True, official_eos_quirk=True, mask_id=MASK,
                    eos_id=EOS, eot_id=EOT, pad_id=PAD)
  got = np.asarray(G.make_generate(toy_jax(A, Q), cfg)(None, prompt, am, jax.random.key(0))[0])
  want = ref_official(lambda x, m: toy_np(A, Q, x, m), prompt, am, 2, 2, 2, 0.0, 0.0,
                      "low_confidence", False, True, None, None, quirk=True)
  np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(got, [[7, 5]])


def test_a_mask_committed_in_an_earlier_block_keeps_competing_smallest_case():
  """Issue 19 item 2: the official gate `x0_p[:, prompt_len + (num_block + 1) * block_length:] =
  -inf` excludes only later blocks. gen 4, blocks of 2, one step each, a one-token prompt: in
  block 1 position 0 draws the mask token (committed, it stays masked) and position 1 token 4;
  then position 0 prefers token 6 with confidence ~1 and takes one of block 2's two commits, so
  position 3 stays masked: [6, 4, 6, MASK]. Gating every position outside the current block
  gave [MASK, 4, 6, 6]."""
  A = np.zeros((5, V), np.float32)
  A[1, MASK], A[1, 6] = 4.0, 2.0   # gen position 0: the mask token first
  A[2, 4] = 3.0                    # gen position 1: token 4
  A[3, 8], A[4, 9] = 9.5, 9.8      # block 2: less confident once token 4 pushes token 6
  Q = np.zeros((V, V), np.float32)
  Q[4, 6] = 10.0
  prompt, am = np.array([[2]], np.int32), np.ones((1, 1), np.int32)
  cfg = G.GenConfig(rule="llada", gen_length=4, block_length=2, steps=2, mask_id=MASK,
                    eos_id=EOS, eot_id=EOT, pad_id=PAD)
  got = np.asarray(G.make_generate(toy_jax(A, Q), cfg)(None, prompt, am, jax.random.key(0))[0])
  want = ref_official(lambda x, m: toy_np(A, Q, x, m), prompt, am, 2, 4, 2, 0.0, 0.0,
                      "low_confidence", False, False, None, None)
  np.testing.assert_array_equal(want, [[6, 4, 6, MASK]])
  np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("remdm", [False, True])
def test_conf_and_remdm_llada_with_mask_draws_match_reference(remdm):
  """The ReMDM-LLaDA samplers share the gate: with a model that often draws the mask token in
  the first block, later blocks commit those positions as the transcription does."""
  gen_len, blk, steps = 16, 8, 16
  A, Q = toy_tables(4, L=4 + gen_len)
  Q[MASK, :] = 0         # masks in the context do not shift the logits
  A[4:12, MASK] += 17.0  # the first block draws the mask token often (gating earlier blocks out
                         # too changed 4 / 2 of the 16 tokens at this seed)
  prompt = np.array([[3, 7, 1, 2]], np.int32)
  cfg = G.GenConfig(rule="remdm_llada" if remdm else "llada_conf", gen_length=gen_len,
                    block_length=blk, steps=steps, remdm_number=1, precision="float64",
                    mask_id=MASK, eos_id=EOS, eot_id=EOT, pad_id=PAD, stop_at_eos=False)
  n_it = (gen_len // blk) * cfg.iters_per_block
  u = np.random.default_rng(5).uniform(size=(n_it, 1, gen_len, V))
  want, _ = ref_conf_remdm(lambda x, m: toy_np(A, Q, x, m), prompt, gen_len, steps, blk, 1, u,
                           remdm, stop_at_eos=False)
  with jax.enable_x64(True):
    got, _ = G.make_generate(toy_jax(A, Q), cfg)(None, prompt, None, jax.random.key(0),
                                                 noise={"u": u})
  np.testing.assert_array_equal(np.asarray(got), want)


@pytest.mark.parametrize("blk,steps,r", [(32, 32, 1), (32, 32, 4), (16, 32, 1), (8, 32, 2)])
@pytest.mark.parametrize("remdm", [False, True])
def test_conf_and_remdm_llada_match_reference(blk, steps, r, remdm):
  gen_len = 32
  A, Q = toy_tables(3, L=4 + gen_len)
  prompt = np.array([[3, 7, 1, 2]], np.int32)
  rule = "remdm_llada" if remdm else "llada_conf"
  cfg = G.GenConfig(rule=rule, gen_length=gen_len, block_length=blk, steps=steps,
                    remdm_number=r, precision="float64", mask_id=MASK, eos_id=EOS, eot_id=EOT,
                    pad_id=PAD)
  nb = gen_len // blk
  n_it = nb * cfg.iters_per_block
  u = np.random.default_rng(blk * 10 + r).uniform(size=(n_it, 1, gen_len, V))
  want, nfe = ref_conf_remdm(lambda x, m: toy_np(A, Q, x, m), prompt, gen_len, steps, blk, r, u,
                             remdm)
  with jax.enable_x64(True):
    got, info = G.make_generate(toy_jax(A, Q), cfg)(None, prompt, None, jax.random.key(0),
                                                    noise={"u": u})
  np.testing.assert_array_equal(np.asarray(got), want)
  assert int(info["nfe"]) == nfe
  if not np.any(want == EOS):
    assert nfe == nb * (2 if remdm else 1) * (steps // nb)


def test_remdm_llada_eos_early_exit_and_cache():
  """EOS made likely in block 1: the reference returns after that block; same tokens, NFE, and
  the second block is never run (stays masked)."""
  A, Q = toy_tables(4, L=36)
  Q = Q / 16
  A[4:20, EOS] = A[4:20].max(-1) + 3.0
  prompt = np.array([[3, 7, 1, 2]], np.int32)
  cfg = G.GenConfig(rule="remdm_llada", gen_length=32, block_length=16, steps=32,
                    remdm_number=2, precision="float64", mask_id=MASK, eos_id=EOS, eot_id=EOT,
                    pad_id=PAD)
  u = np.random.default_rng(0).uniform(size=(2 * 32, 1, 32, V))
  want, nfe = ref_conf_remdm(lambda x, m: toy_np(A, Q, x, m), prompt, 32, 32, 16, 2, u, True)
  assert np.any(want[0, :16] == EOS) and nfe == 32   # stopped after the first block
  with jax.enable_x64(True):
    got, info = G.make_generate(toy_jax(A, Q), cfg)(None, prompt, None, jax.random.key(0),
                                                    noise={"u": u})
  np.testing.assert_array_equal(np.asarray(got), want)
  assert int(info["nfe"]) == 32 and bool(info["done"][0])
  assert np.all(np.asarray(got)[0, 16:] == MASK)  # block 2 never ran


def test_size_errors():
  kw = dict(mask_id=MASK, eos_id=EOS, eot_id=EOT, pad_id=PAD)
  with pytest.raises(ValueError, match="block_length"):
    G.GenConfig(gen_length=16, block_length=6, steps=8, **kw)
  with pytest.raises(ValueError, match="steps=6"):
    G.GenConfig(gen_length=16, block_length=4, steps=6, **kw)
  with pytest.raises(ValueError, match="tau"):
    G.GenConfig(rule="remdm_llada", gen_length=32, block_length=32, steps=16, **kw)
  with pytest.raises(ValueError, match="pad_id"):
    G.GenConfig(mask_id=3, pad_id=3)
  with pytest.raises(ValueError, match="sampler.num_steps"):
    G.GenConfig(rule="strategy", gen_length=16, block_length=8, steps=8,
                sampler=SamplerConfig(num_steps=8), **kw)
  cfg = G.GenConfig(gen_length=16, block_length=8, steps=8, **kw)
  gen = G.make_generate(toy_jax(*toy_tables()), cfg)
  with pytest.raises(ValueError, match="LEFT-padded"):
    gen(None, np.array([[1, 2, PAD]]), np.array([[1, 1, 0]]), jax.random.key(0))
  with pytest.raises(ValueError, match="mask id"):
    gen(None, np.array([[1, MASK]]), None, jax.random.key(0))


def test_left_padded_batch_rows_equal_alone_runs():
  """Per-row keys and gen-relative noise: each row of a padded batch = that prompt alone (the toy
  denoiser only sees real tokens and gen-relative positions)."""
  L = P + GEN
  A, Q = toy_tables(5, L=L)

  def logits_fn(params, x, am):  # position = offset from the END (gen-relative), pads invisible
    counts = jnp.sum(jax.nn.one_hot(x, V, dtype=jnp.float32) * am[..., None], axis=1)
    Ar = jnp.asarray(A)[L - x.shape[1]:]
    return Ar[None] + jnp.matmul(counts, jnp.asarray(Q), precision="highest")[:, None, :]

  prompt, am = _prompts()
  keys = jax.random.split(jax.random.key(7), 3)
  for rule, extra in (("llada", dict(temperature=1.0, remasking="random", cfg_scale=0.5)),
                      ("remdm_llada", dict(steps=16, remdm_number=2))):
    kw = dict(rule=rule, gen_length=GEN, block_length=8, steps=8, mask_id=MASK, eos_id=EOS,
              eot_id=EOT, pad_id=PAD)
    kw.update(extra)
    gen = G.make_generate(logits_fn, G.GenConfig(**kw))
    batch = np.asarray(gen(None, prompt, am, keys)[0])
    for b in ((0, 2) if rule == "llada" else (2,)):  # the padded rows
      real = prompt[b][am[b] == 1][None]
      alone = np.asarray(gen(None, real, None, keys[b:b + 1])[0])
      np.testing.assert_array_equal(batch[b], alone[0])


@pytest.mark.parametrize("strategy", ["mdlm", "remdm_cap", "remdm_conf"])
def test_strategy_blocks_decode_block_by_block(strategy):
  A, Q = toy_tables(6)
  prompt, am = _prompts()
  sc = SamplerConfig(strategy=strategy, num_steps=4, eta=0.05 if strategy == "remdm_cap" else None)
  cfg = G.GenConfig(rule="strategy", gen_length=GEN, block_length=8, steps=8, sampler=sc,
                    stop_at_eos=False, mask_id=MASK, eos_id=EOS, eot_id=EOT, pad_id=PAD)
  seen = []

  def logits_fn(params, x, m):
    jax.debug.callback(lambda xx: seen.append(np.asarray(xx)), x)
    return toy_jax(A, Q)(params, x, m)

  got, info = G.make_generate(logits_fn, cfg)(None, prompt, am, jax.random.key(1))
  got = np.asarray(got)
  assert got.shape == (3, GEN) and not np.any(got == MASK)
  assert int(info["nfe"]) == 2 * (4 + 1)
  seen = np.stack(seen)  # [NFE, B, L]
  assert np.all(seen[:, :, :P] == prompt[None])            # the prompt (and pads) never change
  assert np.all(seen[:5, :, P + 8:] == MASK)               # block 2 masked during block 1
  assert np.all(seen[5:, :, P:P + 8] == got[None, :, :8])  # block 1 frozen during block 2


def test_truncate_and_left_pad():
  assert G.truncate_at_stops("1+2=3\nQuestion: x<|eot_id|>", ["Question:", "<|eot_id|>"]) == \
      "1+2=3\n"
  p, m = G.left_pad([[1, 2], [3]], pad_id=0)
  np.testing.assert_array_equal(p, [[1, 2], [0, 3]])
  np.testing.assert_array_equal(m, [[1, 1], [0, 1]])
  n = G.num_transfer_tokens(jnp.array([5, 8, 0]), 3)
  np.testing.assert_array_equal(np.asarray(n), [[2, 2, 1], [3, 3, 2], [0, 0, 0]])


def test_tiny_llada_mesh_and_padding():
  """The real model: fsdp x tensor sharded parameters (8 fake devices) give the same tokens as one
  device; with positions='from_first_token' each left-padded row equals its prompt alone."""
  from remdm_jax.llm import model as M
  from remdm_jax import sharding as mesh_lib
  mcfg = M.LLaDAConfig.tiny(positions="from_first_token", vocab_size=64, mask_token_id=63,
                            eos_token_id=62, eot_token_id=61)
  key = jax.random.key(3)
  gd, params = M.init_model(mcfg, key)
  mesh = mesh_lib.make_mesh((1, 4, 2))
  _, sharded = M.init_sharded(mcfg, key, mesh)
  q = sharded["blocks"][0]["q_proj"]["kernel"][...]
  assert q.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
  np.testing.assert_array_equal(np.asarray(q), np.asarray(params["blocks"][0]["q_proj"]["kernel"][...]))
  fn = M.make_logits_fn(gd)
  prompt = np.array([[0, 0, 5, 9], [4, 8, 15, 16]], np.int32)
  am = np.array([[0, 0, 1, 1], [1, 1, 1, 1]], np.int32)
  keys = jax.random.split(jax.random.key(0), 2)
  for rule, kw in (("llada", dict(temperature=1.0, steps=8)),):
    cfg = G.GenConfig(rule=rule, gen_length=8, block_length=4, mask_id=63, eos_id=62, eot_id=61,
                      pad_id=0, **kw)
    gen = G.make_generate(fn, cfg)
    one = np.asarray(gen(params, prompt, am, keys)[0])
    eight = np.asarray(gen(sharded, prompt, am, keys)[0])
    np.testing.assert_array_equal(one, eight)
    # batch split over the fsdp axis too (B = 4 rows: the two prompts twice, new keys)
    p4, a4, k4 = np.tile(prompt, (2, 1)), np.tile(am, (2, 1)), jax.random.split(key, 4)
    ref4 = np.asarray(gen(params, p4, a4, k4)[0])
    split = np.asarray(G.make_generate(fn, cfg, mesh=mesh)(sharded, p4, a4, k4)[0])
    np.testing.assert_array_equal(ref4, split)
    alone = np.asarray(gen(params, prompt[:1, 2:], None, keys[:1])[0])
    np.testing.assert_array_equal(one[0], alone[0])


def test_cfg_is_one_batched_call_with_the_prompt_masked():
  A, Q = toy_tables(8)
  prompt, am = _prompts()
  seen = []

  def logits_fn(params, x, m):
    jax.debug.callback(lambda xx, mm: seen.append((np.asarray(xx), np.asarray(mm))), x, m)
    return toy_jax(A, Q)(params, x, m)

  cfg = G.GenConfig(rule="llada", gen_length=8, block_length=8, steps=4, cfg_scale=2.0,
                    mask_id=MASK, eos_id=EOS, eot_id=EOT, pad_id=PAD)
  G.make_generate(logits_fn, cfg)(None, prompt, am, jax.random.key(0))
  assert len(seen) == 4
  for x, m in seen:
    assert x.shape == (6, P + 8)                      # one call of 2B rows
    cond, un = x[:3], x[3:]
    np.testing.assert_array_equal(m[:3], m[3:])
    real = am.astype(bool)
    assert np.all(un[:, :P][real] == MASK)            # prompt masked in the unconditional half
    np.testing.assert_array_equal(un[:, :P][~real], prompt[~real])  # pads untouched
    np.testing.assert_array_equal(cond[:, :P], prompt)
    np.testing.assert_array_equal(un[:, P:], cond[:, P:])


@pytest.mark.slow
def test_block_generation_drives_the_text_dit():
  """The strategy path works for any Flax-free denoiser, e.g. the MDLM DiT (time-independent,
  no padding mask): prompt kept, two blocks of a ReMDM strategy, no mask left."""
  from remdm_jax.models import dit
  dcfg = dit.DiTConfig.preset("tiny", max_seq_len=32, compute_dtype="float32")
  gd, params = dit.init_params(dcfg, jax.random.key(0))
  denoise = dit.make_denoise_fn(gd)
  logits_fn = lambda p, x, am: denoise(p, x, jnp.zeros((x.shape[0],), jnp.float32))
  m = dcfg.vocab_size - 1
  cfg = G.GenConfig(rule="strategy", gen_length=16, block_length=8, steps=8, mask_id=m,
                    eos_id=m - 1, eot_id=m - 1, pad_id=0, stop_at_eos=False,
                    sampler=SamplerConfig(strategy="remdm_cap", num_steps=4, eta=0.02))
  prompt = np.array([[5, 6, 7, 8], [0, 0, 9, 10]], np.int32)
  am = (prompt != 0).astype(np.int32)
  out, info = G.make_generate(logits_fn, cfg)(params, prompt, am, jax.random.key(1))
  out = np.asarray(out)
  assert out.shape == (2, 16) and not np.any(out == m) and int(info["nfe"]) == 10


@pytest.mark.parametrize("what,kw,prompt,needle", [
    ("mask id >= V", dict(mask_id=V + 4), [[1, 2]], "GenConfig.mask_id=20 is outside the model "
                                                    "vocabulary [0, 16)"),
    ("EOS id >= V", dict(eos_id=99), [[1, 2]], "GenConfig.eos_id=99 is outside"),
    ("prompt id >= V", {}, [[1, V]], "prompt token id 16 is outside the model vocabulary"),
    ("negative prompt id", {}, [[1, -3]], "prompt token id -3 is outside"),
    ("float prompt", {}, [[1.5, 2.0]], "prompt must hold integer token ids, got dtype float64"),
])
def test_ids_outside_the_vocabulary_are_refused(what, kw, prompt, needle):
  """Issue 19 item 7: make_generate accepted these silently (ids clamped by the gathers)."""
  A, Q = toy_tables(0)
  ids = dict(mask_id=MASK, eos_id=EOS, eot_id=EOT, pad_id=PAD)
  cfg = G.GenConfig(rule="llada", gen_length=4, block_length=4, steps=4, **dict(ids, **kw))
  with pytest.raises(ValueError) as e:
    G.make_generate(toy_jax(A, Q), cfg)(None, np.array(prompt), None, jax.random.key(0))
  assert needle in str(e.value), (what, str(e.value))
