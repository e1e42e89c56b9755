"""lm-evaluation-harness adapter (remdm_jax.llm.lm_eval) and LLaDA's Monte-Carlo likelihood
(remdm_jax.llm.likelihood), offline, on tiny random checkpoints and the local YAML tasks under
tests/data/lmeval/. The adapter tests skip when lm-eval (the `lmeval` extra) is not installed."""
import glob
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("tokenizers")
pytest.importorskip("safetensors")

from remdm_jax.llm import fixtures as F  # noqa: E402
from remdm_jax.llm import generate as G  # noqa: E402
from remdm_jax.llm.likelihood import mc_draws, mc_loglikelihood  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASKS = os.path.join(ROOT, "tests", "data", "lmeval")


# ------------------------------------------------------------------ Monte-Carlo likelihood

def test_mc_draws_match_the_reference_forward_process():
  torch = pytest.importorskip("torch")
  for T in (1, 2, 3, 7, 12):
    for b in (1, 2, 3, 8):
      is_mask, p = mc_draws(np.random.default_rng(T * 10 + b), T, b)
      k = int(np.random.default_rng(T * 10 + b).integers(1, T + 1))  # the draw mc_draws made
      # eval_llada.py: x = round(linspace(k, k + (b-1) T/b, b)); x = ((x - 1) % T) + 1
      x = torch.round(torch.linspace(float(k), k + (b - 1) * (T / b), steps=b)).long()
      x = ((x - 1) % T) + 1
      np.testing.assert_array_equal(is_mask.sum(1), x.numpy())
      np.testing.assert_allclose(p, x.numpy() / T, rtol=1e-7)


V = 13
MASK = 12


def _toy(params, tokens, am):
  """A bidirectional toy masked LM: logits_i = E[x_i] + mean over real keys of E2[x_j]."""
  e1, e2 = params
  h = e2[tokens] * am[..., None]
  ctx = jnp.sum(h, 1, keepdims=True) / jnp.maximum(jnp.sum(am, 1)[:, None, None], 1)
  return e1[tokens] + ctx


def _toy_np(params, tokens, am):
  e1, e2 = (np.asarray(p, np.float64) for p in params)
  h = e2[tokens] * am[..., None]
  return e1[tokens] + h.sum(1, keepdims=True) / np.maximum(am.sum(1)[:, None, None], 1)


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _reference_ll(params, prefix, target, mc_num, b, cfg, rng):
  """eval_llada.py get_loglikelihood in float64 numpy on the same draws (no padding)."""
  seq = np.asarray(prefix + target)[None].repeat(b, 0)
  P, T = len(prefix), len(target)
  acc = []
  for _ in range(mc_num // b):
    is_mask, p_mask = mc_draws(rng, T, b)
    mask = np.concatenate([np.zeros((b, P), bool), is_mask], 1)
    noisy = np.where(mask, MASK, seq)
    am = np.ones_like(seq)
    logits = _toy_np(params, noisy, am)
    if cfg > 0:
      un = noisy.copy()
      un[:, :P] = MASK
      ul = _toy_np(params, un, am)
      logits = ul + (cfg + 1) * (logits - ul)
    lp = _log_softmax(logits)
    ce = -np.take_along_axis(lp, seq[..., None], -1)[..., 0]
    acc.append((ce / np.repeat(p_mask[:, None], P + T, 1))[mask].sum() / b)
  return -np.mean(acc)


@pytest.mark.parametrize("cfg", [0.0, 1.5])
def test_mc_loglikelihood_equals_reference_transcription(cfg):
  rng = np.random.default_rng(0)
  params = (jnp.asarray(rng.normal(size=(V, V)), jnp.float32),
            jnp.asarray(rng.normal(size=(V, V)), jnp.float32))
  prefix, target = [1, 5, 7], [2, 9, 4, 4, 11]
  with jax.default_matmul_precision("highest"):
    got = mc_loglikelihood(_toy, params, prefix, target, mask_id=MASK, mc_num=12,
                           batch_size=4, cfg=cfg, rng=np.random.default_rng(7), pad_id=0)
  want = _reference_ll(params, prefix, target, 12, 4, cfg, np.random.default_rng(7))
  np.testing.assert_allclose(got, want, rtol=2e-5)
  # one target token: exact log p(target | prefix) (k = 1, the only subset)
  got1 = mc_loglikelihood(_toy, params, prefix, [9], mask_id=MASK, mc_num=1, batch_size=1,
                          cfg=0.0, seed=3)
  lp = _log_softmax(_toy_np(params, np.asarray([prefix + [MASK]]), np.ones((1, 4), int)))
  np.testing.assert_allclose(got1, lp[0, 3, 9], rtol=1e-5)
  with pytest.raises(ValueError, match="multiple of batch_size"):
    mc_loglikelihood(_toy, params, prefix, target, mask_id=MASK, mc_num=5, batch_size=2)
  with pytest.raises(ValueError, match="target"):
    mc_loglikelihood(_toy, params, prefix, [], mask_id=MASK)


# ------------------------------------------------------------------ the harness adapter

@pytest.fixture(scope="module")
def tiny_llada(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("lmeval") / "tiny-llada")
  F.write_tiny_llada(d, seed=0)
  return d


class _Req:
  def __init__(self, *args):
    self.args = args


def _adapter(path, **kw):
  pytest.importorskip("lm_eval")
  from remdm_jax.llm.lm_eval import RemdmLM
  return RemdmLM(checkpoint=path, **kw)


CONTEXTS = ["Question: What is 2 + 3?\nAnswer:", "Question: What is 10 - 4?\nAnswer:",
            "Question: What is 3 * 3?\nAnswer:"]
UNTIL = {"until": ["\n", "Question:"], "max_gen_toks": 8}


def test_generate_until_is_the_library_generation_cut_at_stops(tiny_llada):
  lm = _adapter(tiny_llada, rule="remdm_llada", steps=8, gen_length=8, batch_size=2, seed=3)
  out = lm.generate_until([_Req(c, dict(UNTIL)) for c in CONTEXTS])
  # the same thing by hand: GenConfig, key fold_in(key(seed), i), decode, cut at stops / EOS
  from remdm_jax.llm.load import load_lm
  m = load_lm(tiny_llada)
  cfg = G.GenConfig(rule="remdm_llada", gen_length=8, block_length=8, steps=8,
                    mask_id=m.mask_id, eos_id=m.eos_id, eot_id=m.eot_id, pad_id=m.pad_id)
  gen = G.make_generate(m.logits_fn, cfg)
  for i, c in enumerate(CONTEXTS):
    x, am = G.left_pad([m.tokenizer.encode(c)], m.pad_id)
    toks, _ = gen(m.params, x, am, jax.random.fold_in(jax.random.key(3), i)[None])
    raw = m.tokenizer.decode(np.asarray(toks)[0].tolist())
    want = G.decode_outputs(np.asarray(toks), m.tokenizer, stops=UNTIL["until"],
                            eos_token="<|endoftext|>", eot_token="<|eot_id|>")[0]
    assert out[i] == want
    assert "\n" not in out[i] and "Question:" not in out[i]
    assert raw.startswith(out[i]) or "<|" in raw  # a prefix of the raw text (special tokens cut)
  # batch-size invariance: each request keeps its own key
  lm3 = _adapter(tiny_llada, rule="remdm_llada", steps=8, gen_length=8, batch_size=3, seed=3)
  assert lm3.generate_until([_Req(c, dict(UNTIL)) for c in CONTEXTS]) == out


def test_generate_until_strategy_on_dream_and_gen_length_from_request(tmp_path):
  d = str(tmp_path / "tiny-dream")
  F.write_tiny_dream(d, seed=2)
  lm = _adapter(d, rule="remdm_loop", eta=0.02, steps=4, block_length=4, batch_size=2)
  cfg = lm.gen_config(6)  # max_gen_toks 6 -> gen_length 8 (a multiple of block_length 4)
  assert (cfg.gen_length, cfg.block_length, cfg.rule, cfg.sampler.num_steps) == \
      (8, 4, "strategy", 2)
  out = lm.generate_until([_Req(c, {"until": ["\n"], "max_gen_toks": 6}) for c in CONTEXTS[:2]])
  assert len(out) == 2 and all(isinstance(t, str) and "\n" not in t for t in out)
  lm = _adapter(d, rule="dream_entropy", temperature=0.2, top_p=0.9, alg_temp=0.1, steps=4,
                batch_size=2)
  cfg = lm.gen_config(8)
  assert (cfg.rule, cfg.top_p, cfg.alg_temp, cfg.sampler) == ("dream_entropy", 0.9, 0.1, None)
  out = lm.generate_until([_Req(c, {"until": ["\n"], "max_gen_toks": 8}) for c in CONTEXTS[:2]])
  assert len(out) == 2 and all(isinstance(t, str) and "\n" not in t for t in out)


def test_generate_until_with_dual_cache_and_threshold_commits(tiny_llada, tmp_path):
  # float32: the adapter pads prompts to 32-token buckets, and in bf16 the cached keys / values
  # of a random-weight model can flip near-tied tokens between paddings
  f32 = dict(param_dtype="float32", compute_dtype="float32")
  lm = _adapter(tiny_llada, rule="llada", steps=8, gen_length=8, block_length=4, batch_size=2,
                seed=3, cache="dual", commit="threshold", threshold=0.5, **f32)
  cfg = lm.gen_config(8)
  assert (cfg.cache, cfg.commit, cfg.threshold, cfg.block_length) == ("dual", "threshold", 0.5, 4)
  out = lm.generate_until([_Req(c, dict(UNTIL)) for c in CONTEXTS])
  # by hand: the model's own prefill / window callables, each request with its own key
  from remdm_jax.llm import model as M
  from remdm_jax.llm.load import load_lm
  m = load_lm(tiny_llada, **f32)
  pf, wf = M.make_cache_fns(m.graphdef)
  gen = G.make_generate(m.logits_fn, cfg, prefill_fn=pf, window_fn=wf)
  gen_none = G.make_generate(m.logits_fn, cfg.replace(cache="none", refresh_every=1))
  gen_every = G.make_generate(m.logits_fn, cfg.replace(refresh_every=1), prefill_fn=pf,
                              window_fn=wf)
  for i, c in enumerate(CONTEXTS):
    x, am = G.left_pad([m.tokenizer.encode(c)], m.pad_id)
    key = jax.random.fold_in(jax.random.key(3), i)[None]
    toks, info = gen(m.params, x, am, key)
    want = G.decode_outputs(np.asarray(toks), m.tokenizer, stops=UNTIL["until"],
                            eos_token="<|endoftext|>", eot_token="<|eot_id|>")[0]
    assert out[i] == want
    assert 2 <= int(info["row_nfe"][0]) <= 8  # adaptive: 1..4 steps in each of the 2 blocks
    # refreshed every step the dual cache is the no-cache decoder, token for token
    np.testing.assert_array_equal(np.asarray(gen_every(m.params, x, am, key)[0]),
                                  np.asarray(gen_none(m.params, x, am, key)[0]))
  # a Dream model has no KV cache: one clear error before loading anything
  d = str(tmp_path / "tiny-dream")
  F.write_tiny_dream(d, seed=2)
  with pytest.raises(ValueError, match=r"cache='dual'.*dream model; use cache='none'"):
    _adapter(d, rule="dream_entropy", cache="dual", steps=4)


def test_generate_until_dual_threshold_tokens_equal_make_block_generate(tiny_llada):
  """The adapter under cache="dual", commit="threshold" at a tau this random model passes at some
  positions (several commits per step): the tokens it decodes (prompts padded to its 32-token
  bucket, batched in 2s, the last batch filled with a copy) equal `make_block_generate` on each
  unpadded prompt alone with the same config and key fold_in(key(seed), i), per-row NFE too, and
  the threshold made steps commit several tokens (NFE < the 8 of one token per step)."""
  from remdm_jax.llm import model as M
  from remdm_jax.llm.load import load_lm
  from remdm_jax.sampling.blocks import make_block_generate
  f32 = dict(param_dtype="float32", compute_dtype="float32")
  lm = _adapter(tiny_llada, rule="llada", steps=8, gen_length=8, block_length=4, batch_size=2,
                seed=3, cache="dual", commit="threshold", threshold=0.045, **f32)
  seen = []
  own = lm._generator

  def spy(cfg):
    g = own(cfg)

    def run(*a, **k):
      toks, info = g(*a, **k)
      seen.append((np.asarray(toks), np.asarray(info["row_nfe"])))
      return toks, info
    return run

  lm._generator = spy
  texts = lm.generate_until([_Req(c, {"until": [], "max_gen_toks": 8}) for c in CONTEXTS])
  toks = np.concatenate([t for t, _ in seen])[:3]  # rows 0, 1 | 2, copy of 2
  nfe = np.concatenate([n for _, n in seen])[:3]
  m = load_lm(tiny_llada, **f32)
  cfg = lm.gen_config(8)
  assert (cfg.cache, cfg.commit, cfg.threshold) == ("dual", "threshold", 0.045)
  pf, wf = M.make_cache_fns(m.graphdef)
  gen = make_block_generate(m.logits_fn, cfg, prefill_fn=pf, window_fn=wf)
  for i, c in enumerate(CONTEXTS):
    x, am = G.left_pad([m.tokenizer.encode(c)], m.pad_id)
    want, info = gen(m.params, x, am, jax.random.fold_in(jax.random.key(3), i)[None])
    np.testing.assert_array_equal(toks[i], np.asarray(want)[0], err_msg=f"request {i}")
    assert nfe[i] == int(info["row_nfe"][0])
    assert texts[i] == G.decode_outputs(np.asarray(want), m.tokenizer, stops=(),
                                        eos_token="<|endoftext|>", eot_token="<|eot_id|>")[0]
  assert np.all(nfe >= 2) and np.any(nfe < 8), nfe  # >= 1 step per block; several commits


def test_loglikelihood_and_greedy_check(tiny_llada):
  lm = _adapter(tiny_llada, mc_num=4, batch_size=2, seed=5, is_check_greedy=True)
  reqs = [_Req(CONTEXTS[0] + " ", "5"), _Req(CONTEXTS[1], " 6")]
  out = lm.loglikelihood(reqs)
  tok = lm.tok
  for i, (ctx, cont) in enumerate([(CONTEXTS[0], " 5"), (CONTEXTS[1], " 6")]):
    whole = tok.encode(ctx + cont)
    c = tok.encode(ctx)
    want = mc_loglikelihood(lm.lm.logits_fn, lm.lm.params, c, whole[len(c):],
                            mask_id=lm.lm.mask_id, mc_num=4, batch_size=2,
                            rng=np.random.default_rng([5, i]), pad_id=lm.lm.pad_id)
    assert out[i][0] == pytest.approx(want, rel=1e-6) and out[i][0] < 0
  # the greedy check: the official decoder's own greedy answer is greedy, a changed token is not
  ctx = tok.encode(CONTEXTS[2])
  cfg = G.GenConfig(rule="llada", gen_length=3, block_length=3, steps=3, mask_id=lm.lm.mask_id,
                    eos_id=lm.lm.eos_id, eot_id=lm.lm.eos_id, pad_id=lm.lm.pad_id)
  x, am = G.left_pad([ctx], lm.lm.pad_id)
  greedy = np.asarray(G.make_generate(lm.lm.logits_fn, cfg)(lm.lm.params, x, am,
                                                            jax.random.key(0))[0])[0].tolist()
  assert lm._is_greedy(ctx, greedy)
  assert not lm._is_greedy(ctx, greedy[:2] + [(greedy[2] + 1) % 256])


def test_bad_model_args_are_one_clear_error(tiny_llada):
  with pytest.raises(ValueError, match=r"unknown model_args \['stepz'\]"):
    _adapter(tiny_llada, stepz=3)
  with pytest.raises(ValueError, match="rule='nope' must be one of"):
    _adapter(tiny_llada, rule="nope")
  with pytest.raises(ValueError, match="mc_num=5 must be a multiple of mc_batch_size=2"):
    _adapter(tiny_llada, mc_num=5, mc_batch_size=2)
  with pytest.raises(ValueError, match=r"\['eta'\] apply only to the ReMDM strategies"):
    _adapter(tiny_llada, rule="llada", eta=0.1)
  with pytest.raises(ValueError, match="checkpoint=DIR is required"):
    _adapter(None)
  lm = _adapter(tiny_llada)
  with pytest.raises(NotImplementedError):
    lm.loglikelihood_rolling([_Req("x")])


def _run_cli(args, cwd):
  env = dict(os.environ, JAX_PLATFORMS="cpu", HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1",
             HF_DATASETS_CACHE=os.path.join(cwd, "hf_cache"),
             PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
  return subprocess.run([sys.executable, "-m", "remdm_jax.llm.lm_eval"] + args, cwd=cwd,
                        capture_output=True, text=True, env=env, timeout=900)


def test_cli_runs_local_yaml_tasks_and_matches_the_adapter(tiny_llada, tmp_path):
  pytest.importorskip("lm_eval")
  # The shipped YAML files name their data relative to the repository root: run from a copy of
  # that layout so the test does not depend on the working directory.
  shutil.copytree(TASKS, tmp_path / "tests" / "data" / "lmeval")
  out = tmp_path / "out"
  r = _run_cli(["--model", "remdm_jax", "--model_args",
                f"checkpoint={tiny_llada},rule=llada,steps=8,gen_length=8,mc_num=2,seed=1",
                "--tasks", "toy_gen", "toy_mc", "--include_path", "tests/data/lmeval",
                "--batch_size", "2", "--output_path", str(out), "--log_samples"], str(tmp_path))
  assert r.returncode == 0, r.stderr[-3000:]
  res = json.load(open(glob.glob(str(out / "**" / "results_*.json"), recursive=True)[0]))
  assert set(res["results"]) == {"toy_gen", "toy_mc"}
  gen_samples = [json.loads(line) for line in open(glob.glob(
      str(out / "**" / "samples_toy_gen_*.jsonl"), recursive=True)[0])]
  mc_samples = [json.loads(line) for line in open(glob.glob(
      str(out / "**" / "samples_toy_mc_*.jsonl"), recursive=True)[0])]
  lm = _adapter(tiny_llada, rule="llada", steps=8, gen_length=8, mc_num=2, seed=1, batch_size=2)
  gen_samples.sort(key=lambda s: s["doc_id"])
  resps = lm.generate_until([_Req(CONTEXTS[s["doc_id"]], dict(UNTIL)) for s in gen_samples])
  # the YAML's max_gen_toks is 8 = gen_length: same config; order of requests may differ, but
  # each answer depends only on its request index, so compare as multisets
  assert sorted(s["resps"][0][0] for s in gen_samples) == sorted(resps)
  # acc is the argmax of the logged log-likelihoods
  lls = [[float(r[0][0]) for r in s["resps"]] for s in mc_samples]  # logged as strings
  accs = [float(np.argmax(ll) == int(s["target"])) for ll, s in zip(lls, mc_samples)]
  assert res["results"]["toy_mc"]["acc,none"] == pytest.approx(np.mean(accs))
  assert [s["acc"] for s in mc_samples] == accs
  assert all(v < 0 for ll in lls for v in ll)


def test_cli_bad_model_args_exit_2(tiny_llada, tmp_path):
  pytest.importorskip("lm_eval")
  r = _run_cli(["--model", "remdm_jax", "--model_args", f"checkpoint={tiny_llada},stepz=1",
                "--tasks", "toy_gen", "--include_path", TASKS], str(tmp_path))
  assert r.returncode == 2
  assert r.stderr.strip().splitlines()[-1].startswith("error: unknown model_args ['stepz']")

