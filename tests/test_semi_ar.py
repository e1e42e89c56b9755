"""Semi-AR generation (remdm_jax.sampling.semi_ar; MDLM `_semi_ar_sampler`): equality with a Python
transcription of the reference's window loop, frozen prefixes, an exact-distribution check across
window boundaries, and sample.py's --num_strides / --stride_length."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from remdm_jax.sampling import SamplerConfig, make_sampler
from remdm_jax.sampling.semi_ar import make_semi_ar_sampler, semi_ar_sample

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A stationary first-order Markov chain over K symbols (doubly stochastic: uniform stationary law);
# mask id M = K.
K, M, L = 4, 4, 8


def _chain():
  p = np.zeros((K, K))
  for i in range(K):
    p[i, (i + 1) % K] += 0.7
    p[i, (i + 2) % K] += 0.2
    p[i, i] += 0.05
    p[i, (i + 3) % K] += 0.05
  return p


P = _chain()
_POW = np.stack([np.linalg.matrix_power(P, d) for d in range(L + 1)])  # [L + 1, K, K]


def markov_denoiser(params, tokens, t):
  """Exact x_theta of the chain (x_1 ~ uniform): for a masked position l with nearest visible
  token a at distance d1 on the left and b at distance d2 on the right,
  p(x_l = v | visible) ∝ P^d1[a, v] P^d2[v, b] (a missing side contributes 1, i.e. the uniform
  stationary law / no constraint). Logits are log of that (mask column -inf)."""
  del t
  B, n = tokens.shape
  pw = jnp.asarray(_POW, jnp.float32) ** params["scale"]
  vis = tokens != M
  idx = jnp.arange(n)
  left = lax_cummax(jnp.where(vis, idx, -1))  # nearest visible at <= l
  left = jnp.concatenate([jnp.full((B, 1), -1), left[:, :-1]], axis=1)  # strictly left
  right = lax_cummin_rev(jnp.where(vis, idx, n))
  right = jnp.concatenate([right[:, 1:], jnp.full((B, 1), n)], axis=1)  # strictly right
  tok = jnp.where(vis, tokens, 0)
  a = jnp.take_along_axis(tok, jnp.clip(left, 0, n - 1), axis=1)
  b = jnp.take_along_axis(tok, jnp.clip(right, 0, n - 1), axis=1)
  d1, d2 = jnp.clip(idx - left, 0, L), jnp.clip(right - idx, 0, L)
  lf = jnp.where((left >= 0)[..., None], pw[d1, a], 1.0)  # [B, n, K]: P^d1[a, v]
  rf = jnp.where((right < n)[..., None], pw[d2, :, b], 1.0)  # P^d2[v, b]
  logp = jnp.log(lf * rf + 1e-30)
  return jnp.concatenate([logp, jnp.full((B, n, 1), -jnp.inf)], axis=-1)


def lax_cummax(x):
  return jax.lax.cummax(x, axis=1)


def lax_cummin_rev(x):
  return jax.lax.cummin(x, axis=1, reverse=True)


PARAMS = {"scale": jnp.float32(1.0)}
MIX = {"scale": jnp.float32(0.5)}  # a tempered (inexact) chain: still input-dependent


def _reference_loop(sampler, params, key, batch, num_strides, stride, prompt=None, pmask=None):
  """Transcription of MDLM's `_semi_ar_sampler` window loop on top of the jitted sampler: window s
  (key fold_in(key, s)) starts all-mask with its first L - stride positions set to the previous
  window's last L - stride tokens; the output is the windows' first `stride` tokens, then the last
  window's tail."""
  chunks, target = [], None
  for s in range(num_strides + 1):
    ks = jax.random.fold_in(key, s)
    if target is None:
      kw = {} if prompt is None else dict(prompt=prompt, prompt_mask=pmask)
      x = np.asarray(sampler(params, ks, batch_size=batch, **kw))
    else:
      p = np.full((batch, L), M, np.int32)
      p[:, :-stride] = target
      pm = np.zeros((batch, L), bool)
      pm[:, :-stride] = True
      x = np.asarray(sampler(params, ks, batch_size=batch, prompt=p, prompt_mask=pm))
    chunks.append(x[:, :stride])
    target = x[:, stride:]
  chunks.append(target)
  return np.concatenate(chunks, axis=1)


_SLOW = pytest.mark.slow


@pytest.mark.parametrize("strategy,stride,strides", [
    ("remdm_conf", 5, 2), pytest.param("mdlm", 3, 3, marks=_SLOW),
    pytest.param("remdm_loop", 1, 2, marks=_SLOW), pytest.param("fb", 7, 1, marks=_SLOW),
    pytest.param("dfm", 4, 2, marks=_SLOW), pytest.param("remdm_cap", 2, 2, marks=_SLOW),
    pytest.param("remdm_rescale", 6, 1, marks=_SLOW),
    pytest.param("remdm_switch", 4, 1, marks=_SLOW)])
def test_scan_equals_reference_window_loop(strategy, stride, strides):
  """Every strategy: the scanned windows equal the Python window loop bitwise (same keys)."""
  eta = 0.05 if strategy in ("remdm_loop", "remdm_cap", "remdm_switch", "remdm_rescale") else None
  cfg = SamplerConfig(strategy=strategy, num_steps=6, eta=eta, top_p=0.9)
  smp = make_sampler(markov_denoiser, cfg, seq_len=L, mask_id=M)
  semi = make_semi_ar_sampler(smp, num_strides=strides, stride_length=stride)
  key = jax.random.key(5)
  out, info = semi(MIX, key, batch_size=4)
  out = np.asarray(out)
  assert out.shape == (4, L + strides * stride) == (4, semi.length) and out.dtype == np.int32
  assert not np.any(out == M)
  np.testing.assert_array_equal(out, _reference_loop(smp, MIX, key, 4, strides, stride))
  assert int(info["nfe"]) == semi.nfe == (strides + 1) * smp.nfe
  # The test can fail: a different key changes the samples.
  assert np.any(np.asarray(semi(MIX, jax.random.key(6), batch_size=4)[0]) != out)


def test_user_prompt_and_frozen_prefixes():
  """A user prompt freezes the first window's positions; each window's frozen prefix is the tail of
  the previous one (checked through a no-jit run and the Python loop with the same keys)."""
  cfg = SamplerConfig(strategy="remdm_cap", num_steps=8, eta=0.5)
  smp = make_sampler(markov_denoiser, cfg, seq_len=L, mask_id=M)
  S, k, B = 3, 2, 5
  prompt = np.full((B, L), M, np.int32)
  prompt[:, :3] = [[1, 2, 3]] * B
  pmask = prompt != M
  semi = make_semi_ar_sampler(smp, num_strides=S, stride_length=k, jit=False)
  key = jax.random.key(9)
  out, _ = semi(MIX, key, prompt=prompt)
  out = np.asarray(out)
  assert out.shape == (B, L + S * k)
  np.testing.assert_array_equal(out[:, :3], prompt[:, :3])
  np.testing.assert_array_equal(out, _reference_loop(smp, MIX, key, B, S, k, prompt, pmask))
  # Window s is out[:, s k : s k + L]; its first L - k tokens are window s - 1's last L - k.
  # Rerunning the sampler on that frozen prefix with key fold_in(key, s) gives window s again.
  for s in range(1, S + 1):
    win = out[:, s * k:s * k + L]
    p = np.full((B, L), M, np.int32)
    p[:, :L - k] = win[:, :L - k]
    again = smp(MIX, jax.random.fold_in(key, s), prompt=p, prompt_mask=p != M)
    np.testing.assert_array_equal(np.asarray(again), win)


def test_boundary_bigrams_follow_the_chain():
  """MDLM with the exact denoiser: the token right after each window's frozen prefix is drawn from
  exactly P[a, .] given the last prefix token a (it is always the nearest visible token to the
  right of a, and the unmask times do not depend on token values), for any T. Chi-square of the
  boundary transition counts against n_a P[a, .] (12 dof, fixed keys, p > 1e-3).
  L = 8 is a multiple of stride k = 4, so in the output layout (heads window_s[:k], then the last
  window's tail) every such pair straddles two windows' heads: a prefix that is not frozen, or
  frozen at the wrong offset, makes these pairs ~independent or repeated (p ~ 0)."""
  S, k, B = 4, 4, 512
  smp = make_sampler(markov_denoiser, SamplerConfig(strategy="mdlm", num_steps=16), seq_len=L,
                     mask_id=M)
  out = np.asarray(semi_ar_sample(smp, PARAMS, jax.random.key(0), num_strides=S, stride_length=k,
                                  batch_size=B)[0])
  j = L + np.arange(S) * k  # first new position of windows 1..S
  a, v = out[:, j - 1].ravel(), out[:, j].ravel()
  counts = np.zeros((K, K))
  np.add.at(counts, (a, v), 1)
  want = counts.sum(1, keepdims=True) * P
  chi2 = float(np.sum((counts - want) ** 2 / want))
  p = stats.chi2.sf(chi2, K * (K - 1))
  assert p > 1e-3, (counts, want, p)
  # Negative control: pairs across a wrong offset (j - 2, j) follow P^2, not P.
  c2 = np.zeros((K, K))
  np.add.at(c2, (out[:, j - 2].ravel(), v), 1)
  chi2_bad = float(np.sum((c2 - c2.sum(1, keepdims=True) * P) ** 2 / (c2.sum(1, keepdims=True) * P)))
  assert stats.chi2.sf(chi2_bad, K * (K - 1)) < 1e-6


@pytest.mark.slow
def test_zero_strides_is_the_plain_sampler():
  smp = make_sampler(markov_denoiser, SamplerConfig(strategy="remdm_cap", num_steps=8, eta=0.5),
                     seq_len=L, mask_id=M)
  prompt = np.full((5, L), M, np.int32)
  prompt[:, :3] = [1, 2, 3]
  z = make_semi_ar_sampler(smp, num_strides=0, stride_length=3)
  key = jax.random.key(9)
  np.testing.assert_array_equal(
      np.asarray(z(MIX, key, prompt=prompt)[0]),
      np.asarray(smp(MIX, jax.random.fold_in(key, 0), prompt=prompt, prompt_mask=prompt != M)))


@pytest.mark.slow
def test_cache_unchanged_counts_spent_calls_per_window():
  """info["nfe"] sums the calls each window actually made (cache_unchanged skips some)."""
  cfg = SamplerConfig(strategy="remdm_cap", num_steps=24, eta=0.02, cache_unchanged=True,
                      time_independent=True)
  smp = make_sampler(markov_denoiser, cfg, seq_len=L, mask_id=M)
  key = jax.random.key(4)
  out, info = semi_ar_sample(smp, MIX, key, num_strides=2, stride_length=3, batch_size=1)
  spent, x = 0, None
  for s in range(3):
    kw = {}
    if x is not None:
      p = np.full((1, L), M, np.int32)
      p[:, :L - 3] = x[:, 3:]
      kw = dict(prompt=p, prompt_mask=p != M)
    x, i = smp.sample_with_info(MIX, jax.random.fold_in(key, s), batch_size=1, **kw)
    x, spent = np.asarray(x), spent + int(i["nfe"])
  np.testing.assert_array_equal(np.asarray(out)[:, -L:], x)
  assert int(info["nfe"]) == spent < 3 * smp.nfe


def test_bad_arguments_raise_before_work():
  smp = make_sampler(markov_denoiser, SamplerConfig(num_steps=2), seq_len=L, mask_id=M)
  for kw, needle in [(dict(num_strides=-1, stride_length=2), "num_strides=-1"),
                     (dict(num_strides=1, stride_length=0), "stride_length=0"),
                     (dict(num_strides=1, stride_length=L), f"stride_length={L}"),
                     (dict(num_strides=1.5, stride_length=2), "num_strides=1.5")]:
    with pytest.raises(ValueError, match=needle.replace(".", r"\.")):
      make_semi_ar_sampler(smp, **kw)
  for not_a_sampler in (markov_denoiser, smp.core):
    with pytest.raises(ValueError, match="needs a `Sampler` from `make_sampler`"):
      make_semi_ar_sampler(not_a_sampler, num_strides=1, stride_length=2)
  semi = make_semi_ar_sampler(smp, num_strides=1, stride_length=2)
  with pytest.raises(ValueError, match="must be \\[B, seq_len=8\\]"):
    semi(PARAMS, jax.random.key(0), prompt=np.zeros((2, L + 1), np.int32))
  with pytest.raises(ValueError, match="prompt batch 2 != batch_size=3"):
    semi(PARAMS, jax.random.key(0), batch_size=3, prompt=np.zeros((2, L), np.int32))
  with pytest.raises(ValueError, match="mask_id"):
    semi(PARAMS, jax.random.key(0), prompt=np.full((2, L), M, np.int32),
         prompt_mask=np.ones((2, L), bool))
  with pytest.raises(ValueError, match="prompt_mask given without prompt"):
    semi(PARAMS, jax.random.key(0), batch_size=2, prompt_mask=np.ones((2, L), bool))
  with pytest.raises(ValueError, match="batch_size=None"):
    semi(PARAMS, jax.random.key(0))


def test_gen_ppl_of_long_samples_uses_scorer_windows():
  """sample_metrics scores samples longer than the scorer's length in non-overlapping chunks of
  that length (first token of each chunk = context only), against a numpy transcription."""
  import types
  from remdm_jax.text.sample_metrics import sample_metrics
  V, n = 5, 4
  seen = []

  def log_probs(toks):  # next token = current token w.p. e^2 / (e^2 + V - 1)
    seen.append(toks.shape[1])
    return 2.0 * jax.nn.one_hot(toks, V)

  scorer = types.SimpleNamespace(
      seq_len=n, path="stub", log_probs_fn=lambda: log_probs,
      tokenizer=types.SimpleNamespace(eos_id=None, mask_id=V - 1))
  toks = np.random.default_rng(0).integers(0, V - 1, (3, 10)).astype(np.int32)
  res = sample_metrics(toks, scorer=scorer)
  assert max(seen) == n and "4 tokens" in res["gen_ppl_context"]
  lp_same, lp_other = 2.0 - np.log(np.e ** 2 + V - 1), -np.log(np.e ** 2 + V - 1)
  nll = [-(lp_same if c[j] == c[j - 1] else lp_other)
         for row in toks for c in (row[0:4], row[4:8], row[8:10]) for j in range(1, len(c))]
  np.testing.assert_allclose(res["gen_ppl"], np.exp(np.mean(nll)), rtol=1e-5)
  assert len(nll) == 3 * (3 + 3 + 1)


def _run(args, cwd):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="", PYTHONPATH=ROOT)
  return subprocess.run([sys.executable, os.path.join(ROOT, "sample.py"), *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=300)


def test_sample_py_semi_ar_on_the_shipped_model(tmp_path):
  out = tmp_path / "long.jsonl"
  r = _run(["--num_strides=2", "--stride_length=64", "--steps=3", "--num_samples=2",
            "--batch_size=2", "--preset=remdm_cap", "--prompt=And God said", f"--output={out}",
            "--show=1", "--noprogress"], tmp_path)
  assert r.returncode == 0, r.stderr
  recs = [json.loads(line) for line in out.read_text().splitlines()]
  assert len(recs) == 2
  for rec in recs:
    toks = rec["tokens"]
    assert len(toks) == 128 + 2 * 64 and max(toks) < 256
    assert rec["text"] == bytes(toks).decode("utf-8", errors="replace")
    assert rec["text"].startswith("And God said")
    assert rec["num_strides"] == 2 and rec["stride_length"] == 64 and rec["length"] == 256
  assert "denoiser calls per sample: 12" in r.stdout  # 3 windows x (3 steps + final)
  assert "gen_ppl:" in r.stdout and "scorer windows of 128" in r.stdout


@pytest.mark.parametrize("args,needle", [
    (["--num_strides=-1"], "--num_strides=-1 must be >= 0"),
    (["--num_strides=1", "--stride_length=0"], "--stride_length=0 must be an int in [1, L - 1]"),
    (["--num_strides=1", "--stride_length=128"], "stride_length=128 must be an int in [1, L - 1"),
    (["--stride_length=8"], "--stride_length=8 needs --num_strides >= 1"),
    (["--num_strides=1", "--prompt=" + "a" * 130], "must be shorter than seq_len=128"),
])
def test_sample_py_semi_ar_bad_values(tmp_path, args, needle):
  out = tmp_path / "never.jsonl"
  r = _run(args + ["--steps=2", "--scorer=none", f"--output={out}"], tmp_path)
  assert r.returncode == 2, r.stderr
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("sample.py: error: ") and needle in lines[0], (
      r.stderr)
  assert not out.exists()
