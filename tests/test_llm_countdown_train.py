"""Slow (SPEC_DOMAINS §L.6): a tiny LLaDA-architecture model trained here on generated
Countdown problems scores pass@1 clearly above random on held-out problems, with the official
LLaDA rule (low-confidence remasking, temperature 0) and with ReMDM-LLaDA.

Task: numbers 1..6, all four ops, targets <= 99 (`countdown.generate_problems(max_number=6)`;
with 1..99 a few CPU minutes of a tiny model never got off pass@1 = 0; 1..9 reached only
0.28 / 0.23 (random 0.107) after 5000 steps); prompt "a,b,c,t\n" -> answer "expr" + EOS padding,
character level (`llm.countdown_train`). Held-out: the distinct inputs among 256 problems of
seed 7; the 30000 training draws (seed 1000) with every one of those input strings removed, so
no held-out "a,b,c,t" is ever trained on (the same triple may appear with other targets).
"Random": the exact pass@1 of a uniformly chosen well-formed attempt (one of every two-op
expression over the three numbers, chosen ignoring the target;
`countdown.random_attempt_pass_rate`) averaged over the held-out problems (0.131 here); the
untrained model's pass@1 (the initial parameters) is reported too. Pass: pass@1 >
max(2 x random, random + 0.05) and > untrained + 0.05, for "llada" and "remdm_llada"
("llada_conf" is reported). Training: 4000 AdamW steps of batch 64 (d=96, 2 layers), by steps,
so the run is deterministic on one backend.
Measured on the shared 2-core box (load ~10): 4000 steps in 207-260 s wall / ~228 s CPU, whole
test 222-288 s; seed 0: pass@1 llada 0.477, remdm_llada 0.404, llada_conf 0.370 (random 0.131,
untrained 0.000; the same figures in three runs); REMDM_CD_SEED=1: 0.538, 0.479, 0.471 (random
0.128); REMDM_CD_SEED=2: 0.500, 0.413, 0.397 (random 0.121); untrained 0.000 throughout.
With REMDM_CD_STEPS=500 it fails (llada 0.026). (Figures above: the loop before issue 15. Through
the library's trainer, losses equal to float rounding, seed 0 gave 0.519 / 0.438 / 0.464 in 354 s
CPU; that model ships as remdm_jax/assets/models/countdown_llada.)
Run: pytest -m slow tests/test_llm_countdown_train.py -s
(REMDM_CD_STEPS overrides the steps, REMDM_CD_SEED shifts the data and training seeds)
"""
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from remdm_jax.llm import countdown as cd
from remdm_jax.llm import countdown_train as T

TASK = dict(max_number=6, ops="+-*/", max_target=99)
STEPS = 4000
TRAIN = dict(batch_size=64, lr=3e-3, warmup=100,
             model=dict(d_model=96, n_heads=4, n_layers=2, mlp_hidden_size=256))
RULES = ("llada", "remdm_llada", "llada_conf")


def problems(seed=0):
  held = T.held_out(cd.generate_problems(256, seed=7 + seed, **TASK), [])
  train = T.without_inputs(cd.generate_problems(30000, seed=1000 + seed, **TASK), held)
  return train, held


@pytest.mark.slow
def test_tiny_llada_learns_countdown():
  steps = int(os.environ.get("REMDM_CD_STEPS", STEPS))
  seed = int(os.environ.get("REMDM_CD_SEED", 0))
  train, held = problems(seed)
  assert not {p["input"] for p in held} & {p["input"] for p in train}
  p_len, g_len = T.slot_lengths(train + held)
  rand = T.random_pass_at_1(held, TASK["ops"])
  t0, c0 = time.time(), time.process_time()
  tr = T.train(train, steps=steps, seed=seed, p_len=p_len, g_len=g_len, **TRAIN)
  wall, cpu = time.time() - t0, time.process_time() - c0
  res = {r: T.pass_at_1(tr.logits_fn, tr.params, held, r, p_len, g_len) for r in RULES}
  params0 = T.init_untrained(seed=seed, model=TRAIN["model"])[1]  # where training started
  untrained = {r: T.pass_at_1(tr.logits_fn, params0, held, r, p_len, g_len) for r in RULES}
  print(f"\ncountdown 1..{TASK['max_number']} seed {seed} ({len(held)} held-out, "
        f"{len(train)} training draws): {steps} steps in "
        f"{wall:.0f} s wall / {cpu:.0f} s CPU, loss {tr.losses[:100].mean():.3f} -> "
        f"{tr.losses[-100:].mean():.3f}; pass@1 trained {res}; untrained {untrained}; "
        f"random attempt {rand:.3f}")
  assert tr.losses[-100:].mean() < 0.7 * tr.losses[:100].mean()
  for r in ("llada", "remdm_llada"):
    assert res[r] > max(2 * rand, rand + 0.05), (r, res, rand)
    assert res[r] > untrained[r] + 0.05, (r, res, untrained)


def test_countdown_harness_with_an_oracle_denoiser():
  """Fast check of the slow test's harness: a denoiser that knows each row's answer (logits =
  10 onehot(answer)) scores pass@1 = 1 with all three rules (EOS padding, decoding, scorer);
  the other rows' answers score low; the held-out split and the random baseline are sound."""
  train, held = problems()
  assert len(held) > 200 and len(train) > 20000
  assert not {p["input"] for p in held} & {p["input"] for p in train}
  probs = held[:8]
  p_len, g_len = T.slot_lengths(train + held)
  x, _ = T.make_batch(probs, p_len, g_len)
  assert [T.decode(r[p_len:]) for r in x] == [p["output"] for p in probs]
  oracle = lambda p, tok, m: 10.0 * jax.nn.one_hot(p, T.VOCAB)
  for rule in RULES:
    assert T.pass_at_1(oracle, jnp.asarray(x), probs, rule, p_len, g_len) == 1.0
  wrong = jnp.asarray(np.roll(x, 1, axis=0))  # answers of other problems
  assert T.pass_at_1(oracle, wrong, probs, "llada", p_len, g_len) < 0.5
  rand = T.random_pass_at_1(held, TASK["ops"])
  assert 0.05 < rand < 0.2, rand
  with pytest.raises(ValueError, match="alphabet"):
    T.encode("1,2,x")
  with pytest.raises(ValueError, match="does not fit"):
    T.make_batch([{"input": "1,2,3,4", "output": "1+2=3,3+1=4"}], 8, 5)


def test_sft_loss_weightings():
  """Constant logits (uniform over V): the uniform-weighted loss is exactly log V; the
  1/t-weighted (ELBO) loss has expectation log V (E[1{masked}/t] = 1), checked on 4096 rows
  (relative std ~0.04); oracle logits give ~0; only answer positions are ever masked."""
  P, G = 9, 15
  x = jnp.asarray(np.random.default_rng(0).integers(0, 17, (4096, P + G)), jnp.int32)
  am = jnp.ones_like(x)
  zeros = lambda p, tok, m: jnp.zeros(tok.shape + (T.VOCAB,))
  key = jax.random.key(3)
  assert abs(float(T.sft_loss(zeros, None, x, am, key, P, weighting="uniform"))
             - np.log(T.VOCAB)) < 1e-5
  elbo = float(T.sft_loss(zeros, None, x, am, key, P, weighting="elbo"))
  assert abs(elbo / np.log(T.VOCAB) - 1) < 0.15, elbo
  seen = []

  def oracle(p, tok, m):
    seen.append(tok)
    return 30.0 * jax.nn.one_hot(x, T.VOCAB)

  assert float(T.sft_loss(oracle, None, x, am, key, P, weighting="elbo")) < 1e-6
  assert bool(jnp.all(seen[0][:, :P] == x[:, :P])) and bool(jnp.any(seen[0][:, P:] == T.MASK))
  with pytest.raises(ValueError, match="weighting"):
    T.sft_loss(zeros, None, x, am, key, P, weighting="nope")


def test_train_runs_by_steps():
  probs = cd.generate_problems(40, seed=5, **TASK)
  tr = T.train(probs, steps=3, batch_size=8,
               model=dict(d_model=32, n_heads=2, n_layers=1, mlp_hidden_size=64))
  assert tr.losses.shape == (3,) and np.all(np.isfinite(tr.losses)) and tr.losses[0] > 0
  assert (tr.p_len, tr.g_len) == T.slot_lengths(probs)
  for bad, match in (({"steps": 0}, "steps"), ({"steps": 1, "weighting": "x"}, "weighting")):
    with pytest.raises(ValueError, match=match):
      T.train(probs, **bad)
