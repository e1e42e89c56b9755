"""Dream's generation algorithms as rules of the block decoder (sampling.confidence Dream kernels
driven by sampling.blocks) vs the numpy transcription of Dream's generation_utils.py
(tests/dream_reference.py) fed the same injected noise; every ReMDM strategy on a Dream model."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from remdm_jax.llm import generate as G
from remdm_jax.sampling import confidence as C
from remdm_jax.sampling.config import STRATEGIES, SamplerConfig
import dream_reference as R

V, MASK, EOS, PAD = 16, 15, 14, 12
P, GEN = 4, 16


def toy(seed):
  rng = np.random.default_rng(seed)
  A = rng.normal(size=(P + GEN, V)).astype(np.float32)
  Q = (rng.normal(size=(V, V)) / 3).astype(np.float32)
  A[:, MASK] = -1e4  # the mask token is never drawn (Dream counts masks as a batch mean)
  Q[:, MASK] = 0

  def np_fn(x):
    counts = np.stack([np.bincount(r, minlength=V) for r in x]).astype(np.float32)
    return (A[None, :x.shape[1]] + (counts @ Q)[:, None, :]).astype(np.float32)

  Aj, Qj = jnp.asarray(A), jnp.asarray(Q)

  def jax_fn(params, x, am):
    counts = jnp.sum(jax.nn.one_hot(x, V, dtype=jnp.float32) * am[..., None], axis=1)
    return Aj[None, :x.shape[1]] + jnp.matmul(counts, Qj, precision="highest")[:, None, :]

  return np_fn, jax_fn


# Few steps for G = 16, so that the confidence rules commit several tokens per step and their
# ranking decides the result (with steps = G, int(M (1 - s/t)) is mostly 0 until the last step).
CASES = [
    dict(rule="dream_origin", steps=8),
    dict(rule="dream_origin", steps=5, temperature=0.7, top_p=0.8),
    dict(rule="dream_maskgit_plus", steps=4),
    dict(rule="dream_maskgit_plus", steps=5, temperature=0.7, top_k=5, alg_temp=0.5),
    dict(rule="dream_topk_margin", steps=4),
    dict(rule="dream_topk_margin", steps=3, temperature=1.0, top_p=0.9),
    dict(rule="dream_entropy", steps=4),
    dict(rule="dream_entropy", steps=6, temperature=0.2, top_p=0.95, alg_temp=0.1),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{v}" for v in c.values()))
def test_dream_rules_equal_the_transcription(case):
  case = dict(case)
  rule, steps = case.pop("rule"), case.pop("steps")
  np_fn, jax_fn = toy(hash(rule) % 1000 + steps)
  rng = np.random.default_rng(steps)
  B = 2
  prompt = rng.integers(0, 12, (B, P)).astype(np.int32)
  u_tok = rng.uniform(1e-6, 1, (steps, B, GEN, V)).astype(np.float32)
  u_pos = rng.uniform(1e-6, 1, (steps, B, GEN)).astype(np.float32)
  cfg = G.GenConfig(rule=rule, gen_length=GEN, block_length=GEN, steps=steps, mask_id=MASK,
                    eos_id=EOS, eot_id=EOS, pad_id=PAD, **case)
  got, info = G.make_generate(jax_fn, cfg)(None, prompt, None, jax.random.key(0),
                                           noise={"u": u_tok, "conf_u": u_pos})
  pad = lambda a: np.concatenate([np.zeros((steps, B, P) + a.shape[3:], a.dtype), a], 2)
  g = -np.log(-np.log(u_tok))
  noise = {"u": pad(u_pos), "g": pad(g), "h": pad(-np.log(-np.log(u_pos)))}
  alg = rule[len("dream_"):]
  x = np.concatenate([prompt, np.full((B, GEN), MASK)], 1)
  want = R.dream_sample(np_fn, x, MASK, steps=steps, alg=alg, noise=noise, **case)
  np.testing.assert_array_equal(np.asarray(got), want[:, P:])
  assert int(info["nfe"]) == steps
  if alg != "origin":
    assert not np.any(want == MASK)  # the confidence rules always finish


def test_dream_schedule_counts_follow_torch_float32():
  # t = torch.linspace(1, 1e-3, 65) in float32: the count int(64 (1 - s/t)) at step 0 is 1 and
  # the factors end with 1 (everything left at the last step)
  f = C.dream_schedule(64, 1e-3)
  t = R.torch_linspace_f32(1, 1e-3, 65)
  assert f.dtype == np.float32 and f[-1] == 1.0
  np.testing.assert_array_equal(f[:-1], np.float32(1) - t[1:-1] / t[:-2])
  n = C.dream_transfer_count(jnp.ones((1, 64), bool), f[0], False)
  assert int(n[0]) == int(np.float32(64) * f[0])


def test_dream_rule_options_are_validated():
  with pytest.raises(ValueError, match="top_k.*only to the Dream rules"):
    G.GenConfig(rule="llada", gen_length=8, block_length=8, steps=8, top_k=3)
  with pytest.raises(ValueError, match="top_p=1.5"):
    G.GenConfig(rule="dream_entropy", gen_length=8, block_length=8, steps=8, top_p=1.5)
  with pytest.raises(ValueError, match="exact32"):
    G.GenConfig(rule="dream_entropy", gen_length=8, block_length=8, steps=8, precision="float64")


def test_dream_rules_in_blocks_with_padding_keep_prompt_and_finish():
  np_fn, jax_fn = toy(3)
  prompt = np.array([[PAD, PAD, 3, 4], [1, 2, 3, 4]], np.int32)
  am = np.array([[0, 0, 1, 1], [1, 1, 1, 1]], np.int32)
  cfg = G.GenConfig(rule="dream_entropy", gen_length=GEN, block_length=8, steps=8,
                    temperature=0.5, mask_id=MASK, eos_id=EOS, eot_id=EOS, pad_id=PAD)
  gen = G.make_generate(jax_fn, cfg)
  keys = jax.random.split(jax.random.key(4), 2)
  got, _ = gen(None, prompt, am, keys)
  assert not np.any(np.asarray(got) == MASK)
  alone, _ = gen(None, prompt[1:], am[1:], keys[1:])  # a row is independent of its batch
  np.testing.assert_array_equal(np.asarray(got)[1], np.asarray(alone)[0])


@pytest.fixture(scope="module")
def tiny_dream(tmp_path_factory):
  pytest.importorskip("tokenizers")
  pytest.importorskip("safetensors")
  from remdm_jax.llm import fixtures as F
  from remdm_jax.llm.load import load_lm
  d = str(tmp_path_factory.mktemp("dream") / "tiny-dream")
  F.write_tiny_dream(d, seed=5)
  return load_lm(d)


_FAST = ("mdlm", "remdm_loop", "dfm")


@pytest.mark.parametrize("strategy", [s if s in _FAST else pytest.param(s, marks=pytest.mark.slow)
                                      for s in STRATEGIES])
def test_every_remdm_strategy_runs_on_dream(tiny_dream, strategy):
  lm = tiny_dream
  eta = {"remdm_cap": 0.05, "remdm_rescale": 0.05, "remdm_loop": 0.05}.get(strategy)
  sc = SamplerConfig(strategy=strategy, num_steps=4, eta=eta, time_independent=True)
  cfg = G.GenConfig(rule="strategy", gen_length=8, block_length=4, steps=8, sampler=sc,
                    mask_id=lm.mask_id, eos_id=lm.eos_id, eot_id=lm.eot_id, pad_id=lm.pad_id,
                    stop_at_eos=False)
  ids = lm.tokenizer.encode("Question: What is 2 + 3?\nAnswer:")
  x, am = G.left_pad([ids, ids[3:]], lm.pad_id)
  got, info = G.make_generate(lm.logits_fn, cfg)(lm.params, x, am, jax.random.key(1))
  got = np.asarray(got)
  from remdm_jax.sampling.sampler import make_sampler
  per_block = make_sampler(lambda p, t, s: None, sc, seq_len=8, mask_id=lm.mask_id).nfe
  assert got.shape == (2, 8) and int(info["nfe"]) == 2 * per_block
  assert np.all((got >= 0) & (got < lm.vocab_size))


def test_cli_dream_rule_on_dream_checkpoint(tmp_path, capsys):
  pytest.importorskip("tokenizers")
  pytest.importorskip("safetensors")
  import json
  from remdm_jax.llm import cli
  from remdm_jax.llm import fixtures as F
  d = str(tmp_path / "tiny-dream")
  F.write_tiny_dream(d, seed=1)
  base = [f"--model_dir={d}", "--chat", "--prompt=hi", "--gen_length=8", "--block_length=8",
          "--steps=4", "--param_dtype=float32", "--compute_dtype=float32"]
  assert cli.main(base + ["--sampler=dream_entropy", "--temperature=0.2", "--top_p=0.95",
                          "--alg_temp=0.1"]) == 0
  assert isinstance(json.loads(capsys.readouterr().out.splitlines()[0])["text"], str)
  assert cli.main(base + ["--sampler=llada", "--top_k=3"]) == 2
  assert "--top_k applies only to the Dream rules" in capsys.readouterr().err
  assert cli.main(base + ["--sampler=llada", "--eta=0.5"]) == 2  # a flag no rule reads
  assert "--eta=0.5 applies only to a strategy sampler" in capsys.readouterr().err
  assert cli.main(base + ["--sampler=mdlm", "--eta=0.5"]) == 2  # mdlm never reads eta
  assert "--eta=0.5 does not apply to --sampler=mdlm" in capsys.readouterr().err
  # a Dream model has no KV cache: one error line before loading the weights
  assert cli.main(base + ["--sampler=dream_entropy", "--cache=dual"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: cache='dual': the KV cache is implemented")


def test_loaded_dream_model_decodes_with_cache_none_only(tmp_path):
  """LoadedLM.make_generator on a Dream checkpoint: cache 'none' works, 'prefix' / 'dual' are
  one ValueError naming the mode and the model (no cache callables for Dream)."""
  pytest.importorskip("tokenizers")
  pytest.importorskip("safetensors")
  from remdm_jax.llm import fixtures as F
  from remdm_jax.llm.load import load_lm
  d = str(tmp_path / "tiny-dream")
  F.write_tiny_dream(d, seed=1)
  lm = load_lm(d, param_dtype="float32", compute_dtype="float32")
  ids = dict(mask_id=lm.mask_id, eos_id=lm.eos_id, eot_id=lm.eot_id, pad_id=lm.pad_id)
  cfg = G.GenConfig(rule="dream_entropy", gen_length=8, block_length=8, steps=4, **ids)
  out, info = lm.make_generator(cfg)(lm.params, np.array([[5, 6, 7]], np.int32), None,
                                     jax.random.key(0))
  assert np.asarray(out).shape == (1, 8) and int(info["nfe"]) == 4
  for mode in ("prefix", "dual"):
    with pytest.raises(ValueError, match=rf"cache='{mode}'.*dream model; use cache='none'"):
      lm.make_generator(cfg.replace(cache=mode))
  with pytest.raises(ValueError, match="dream model"):
    lm.cache_fns()
