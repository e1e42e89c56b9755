"""A tiny LLaDA-architecture model trained from scratch on generated Countdown problems
(SPEC_DOMAINS §L.6 slow test): a character-level codec, a minimal optax loop with the LLaDA SFT
masked-diffusion loss, and pass@1 of the official / ReMDM block samplers on held-out problems.

Encoding (one row = prompt slot P + answer slot G, positions absolute):
  prompt "a,b,c,t\\n" right-aligned in P (left padding PAD, attention mask 0 there);
  answer "expr" left-aligned in G, the rest EOS (as LLaDA's SFT pads answers with EOS).
Characters "0123456789+-*/=,\\n" are ids 0..16; PAD 17, EOS 18, EOT 19, MASK 20 (V = 21).

Loss (LLaDA SFT, Nie et al. 2025 eq. (5), the prompt never masked): t ~ U(eps, 1) per row, each
answer position masked with probability t; weighting "elbo" = sum over masked answer positions
of -log p_theta(x_0 | x_t) / t divided by B * G (the bound); "uniform" (the default here) = the
mean of -log p_theta over the masked positions. Both are minimised by the true conditionals; the
uniform one avoids the 1/t weights (up to 1/eps = 1000) and their gradient variance.
Training runs through the library's one trainer (`remdm_jax.training.trainer.run`) with the
`sft_spec` model spec and the resumable `sft_batches` pipeline.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from remdm_jax.llm import countdown as cd
from remdm_jax.llm import generate as G
from remdm_jax.llm import model as M

CHARS = "0123456789+-*/=,\n"
PAD, EOS, EOT, MASK = 17, 18, 19, 20
VOCAB = 21


def encode(s: str) -> list[int]:
  """Characters -> ids; ValueError naming a character outside CHARS."""
  try:
    return [CHARS.index(c) for c in s]
  except ValueError:
    bad = next(c for c in s if c not in CHARS)
    raise ValueError(f"character {bad!r} of {s!r} is not in the countdown alphabet") from None


def decode(ids: Sequence[int]) -> str:
  """Ids -> text up to the first EOS; special ids other than EOS (PAD, EOT, MASK) become '?'."""
  out = []
  for i in ids:
    i = int(i)
    if i == EOS:
      break
    out.append(CHARS[i] if 0 <= i < len(CHARS) else "?")
  return "".join(out)


def slot_lengths(problems: Sequence[dict]) -> tuple[int, int]:
  """(P, G): the longest "input\\n" and the longest "output" + 1 (room for one EOS)."""
  if not problems:
    raise ValueError("no problems")
  return (max(len(p["input"]) + 1 for p in problems),
          max(len(p["output"]) for p in problems) + 1)


def make_batch(problems: Sequence[dict], p_len: int, g_len: int):
  """-> (tokens int32 [N, P + G], attention_mask int32 [N, P + G]) (module docstring).
  Raises ValueError when an input does not fit P or an output does not fit G - 1."""
  x = np.full((len(problems), p_len + g_len), PAD, np.int32)
  am = np.zeros_like(x)
  for r, p in enumerate(problems):
    q, a = encode(p["input"] + "\n"), encode(p.get("output", ""))
    if len(q) > p_len or len(a) >= g_len:
      raise ValueError(f"problem {p!r} does not fit the slots P={p_len}, G={g_len}")
    x[r, p_len - len(q):p_len] = q
    am[r, p_len - len(q):] = 1
    x[r, p_len:] = EOS
    x[r, p_len:p_len + len(a)] = a
  return x, am


def model_config(**overrides) -> M.LLaDAConfig:
  """The tiny float32 LLaDA of the slow test (d=96, 4 heads, 2 layers, MLP 256, V=21, absolute
  positions, RoPE base 1e4); `overrides` replace any LLaDAConfig field."""
  kw = dict(d_model=96, n_heads=4, n_layers=2, mlp_hidden_size=256, vocab_size=VOCAB,
            mask_token_id=MASK, eos_token_id=EOS, eot_token_id=EOT, pad_token_id=PAD,
            max_sequence_length=64, rope_theta=10000.0)
  kw.update(overrides)
  return M.LLaDAConfig.tiny(**kw)


@dataclasses.dataclass
class Trained:
  cfg: M.LLaDAConfig
  logits_fn: Callable[..., jax.Array]
  params: Any
  losses: np.ndarray     # float32 [steps], the training loss of every step
  p_len: int
  g_len: int


def sft_loss(logits_fn, params, x, am, key, p_len: int, t_min: float = 1e-3,
             weighting: str = "elbo"):
  """The masked-diffusion SFT loss (module docstring): scalar float32. weighting "elbo" (1/t,
  the bound) or "uniform" (weight 1: the mean cross-entropy over masked answer positions; the
  same minimiser, the true conditionals, with far lower gradient variance). Raises ValueError on
  another weighting."""
  k1, k2 = jax.random.split(key)
  B, L = x.shape
  t = jax.random.uniform(k1, (B, 1), minval=t_min, maxval=1.0)
  answer = jnp.arange(L)[None] >= p_len
  masked = answer & (jax.random.uniform(k2, x.shape) < t)
  logits = logits_fn(params, jnp.where(masked, MASK, x), am)
  ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), x[..., None], -1)[..., 0]
  if weighting == "elbo":
    return jnp.sum(jnp.where(masked, ce / t, 0.0)) / (B * (L - p_len))
  if weighting == "uniform":
    return jnp.sum(jnp.where(masked, ce, 0.0)) / jnp.maximum(jnp.sum(masked), 1)
  raise ValueError(f"weighting={weighting!r} must be 'elbo' or 'uniform'")


def sft_spec(cfg: M.LLaDAConfig, p_len: int, weighting: str = "uniform"):
  """The trainer's `ModelSpec` of the LLaDA SFT on the Countdown codec: init = `M.init_model`,
  loss(params, (tokens [B, P + G], attention_mask [B, P + G]), key, train) = `sft_loss` with the
  second half of split(key) (the first half draws the batch rows in `sft_batches`); parameter
  key `jax.random.key(seed)`, training key `jax.random.key(seed + 1)`."""
  from remdm_jax.training.spec import ModelSpec
  if weighting not in ("elbo", "uniform"):
    raise ValueError(f"weighting={weighting!r} must be 'elbo' or 'uniform'")
  gd, _ = M.abstract_model(cfg)
  f = M.make_logits_fn(gd)

  def init(key):
    return M.init_model(cfg, key)[1]

  def loss(params, batch, key, train: bool):
    del train  # no dropout in LLaDA
    x, am = batch
    _, kl = jax.random.split(key)
    return sft_loss(f, params, x, am, kl, p_len, weighting=weighting), {}

  return ModelSpec(name="llada_countdown", init=init, loss=loss,
                   model_config=dict(dataclasses.asdict(cfg), codec=codec_info(p_len)),
                   keys=lambda seed: (jax.random.key(seed), jax.random.key(seed + 1)))


def codec_info(p_len: int) -> dict:
  """The character codec and slot layout (stored with the model)."""
  return {"chars": CHARS, "pad": PAD, "eos": EOS, "eot": EOT, "mask": MASK, "p_len": int(p_len)}


def sft_batches(x: np.ndarray, am: np.ndarray, batch_size: int, seed: int):
  """The resumable batch pipeline of the SFT: batch i = rows idx of (x, am) with idx =
  randint(split(fold_in(key(seed + 1), i))[0], (batch_size,), 0, N) (uniform with replacement;
  the same draws as the training key of `sft_spec`)."""
  from remdm_jax.data import StepBatches
  n = int(x.shape[0])
  base = jax.random.key(seed + 1)
  draw = jax.jit(lambda i: jax.random.randint(
      jax.random.split(jax.random.fold_in(base, i))[0], (batch_size,), 0, n))

  def make(i):
    idx = np.asarray(draw(np.int32(i)))
    return x[idx], am[idx]

  return StepBatches(make, {"seed": int(seed), "rows": n, "batch_size": int(batch_size),
                            "width": int(x.shape[1])})


def train(problems: Sequence[dict], *, steps: int, batch_size: int = 64, lr: float = 3e-3,
          warmup: int = 100, seed: int = 0, p_len: int | None = None,
          g_len: int | None = None, model: dict | None = None,
          callback: Callable[[int, Any, float], None] | None = None,
          callback_every: int = 0, weighting: str = "uniform", workdir: str | None = None,
          save_every: int = 500, log: Callable[[str], None] | None = None) -> Trained:
  """Trains `model_config(**model)` for exactly `steps` AdamW steps (warmup + cosine decay to
  lr/20, b2 0.99, weight decay 0.01, no clipping, no EMA) on minibatches drawn uniformly with
  replacement from `problems` (the draws and masks follow `seed`; deterministic for a seed on one
  backend), through the library's trainer (`remdm_jax.training.trainer.run`, one device).
  `callback(step, params, loss)` runs after every `callback_every`-th step (0 = never).
  workdir: None (in memory) or a folder for checkpoints every `save_every` steps, metrics.jsonl
  and resume (re-running with the same arguments continues from the latest checkpoint).
  The defaults are the slow test's settings. Raises ValueError on steps or batch_size < 1, an
  unknown weighting, no problems, or a problem that does not fit the slots."""
  from remdm_jax import sharding as mesh_lib
  from remdm_jax.training import trainer as TR
  from remdm_jax.training.config import (CheckpointConfig, OptimConfig, RunConfig,
                                         TrainConfig)
  if steps < 1 or batch_size < 1:
    raise ValueError(f"steps={steps} and batch_size={batch_size} must be >= 1")
  if weighting not in ("elbo", "uniform"):
    raise ValueError(f"weighting={weighting!r} must be 'elbo' or 'uniform'")
  P0, G0 = slot_lengths(problems)
  p_len, g_len = p_len or P0, g_len or G0
  cfg = model_config(**(model or {}))
  x, am = make_batch(problems, p_len, g_len)
  spec = sft_spec(cfg, p_len, weighting)
  run_cfg = RunConfig(
      optim=OptimConfig(lr=lr, warmup_steps=min(warmup, steps - 1), schedule="cosine",
                        min_lr=lr / 20, b2=0.99, weight_decay=0.01, grad_clip=0.0,
                        ema_decay=0.0),
      train=TrainConfig(num_steps=steps, seed=seed, log_every=min(100, steps), eval_every=0),
      checkpoint=CheckpointConfig(save_every=save_every, keep=2),
      mesh=mesh_lib.MeshConfig(shape=(1, 1, 1)), batch_size=batch_size)
  job = TR.TrainJob(spec=spec, config=run_cfg,
                    data=lambda: (sft_batches(x, am, batch_size, seed), None),
                    tokens_per_step=batch_size * (p_len + g_len),
                    meta={"train": {"steps": steps, "batch_size": batch_size, "lr": lr,
                                    "warmup": warmup, "seed": seed, "weighting": weighting,
                                    "problems": len(problems)}})
  cb = None
  if callback is not None and callback_every:
    cb = lambda step, state, m: callback(step, state.params, m["loss"])
  out = TR.run(job, workdir, mesh=mesh_lib.make_mesh((1, 1, 1), devices=jax.devices()[:1]),
               log=log or (lambda _: None), callback=cb, callback_every=callback_every)
  gd, _ = M.abstract_model(cfg)
  return Trained(cfg, M.make_logits_fn(gd), out["state"].params, out["losses"], p_len, g_len)


def init_untrained(seed: int = 0, model: dict | None = None):
  """(logits_fn, params) of a freshly initialised model: the parameters `train` starts from
  with the same seed and model (the untrained baseline)."""
  gd, params = M.init_model(model_config(**(model or {})), jax.random.key(seed))
  return M.make_logits_fn(gd), params


@functools.lru_cache(maxsize=16)
def _generator(logits_fn, rule: str, g_len: int):
  """One compiled generator per (logits_fn, rule, G), reused across parameter sets."""
  gcfg = G.GenConfig(rule=rule, gen_length=g_len, block_length=g_len, steps=g_len,
                     remdm_number=1, mask_id=MASK, eos_id=EOS, eot_id=EOT, pad_id=PAD)
  return G.make_generate(logits_fn, gcfg)


def generate_answers(logits_fn, params, problems: Sequence[dict], rule: str, p_len: int,
                     g_len: int, seed: int = 0) -> list[str]:
  """One answer per problem from rule "llada" (official low-confidence, temperature 0),
  "llada_conf" or "remdm_llada" (r = 1): one block of G, G steps."""
  x, am = make_batch([{"input": p["input"]} for p in problems], p_len, g_len)
  gen = _generator(logits_fn, rule, g_len)
  keys = jax.random.split(jax.random.key(seed), len(problems))
  out = np.asarray(gen(params, x[:, :p_len], am[:, :p_len], keys)[0])
  return [decode(o) for o in out]


def pass_at_1(logits_fn, params, problems: Sequence[dict], rule: str, p_len: int, g_len: int,
              seed: int = 0) -> float:
  """Mean over problems of the reference scorer on one sample (pass@1 with n = 1)."""
  answers = generate_answers(logits_fn, params, problems, rule, p_len, g_len, seed)
  return float(np.mean([cd.score_answer(p, a) for p, a in zip(problems, answers)]))


def random_pass_at_1(problems: Sequence[dict], ops: str = cd.OPS) -> float:
  """Exact pass@1 of the uniformly random well-formed attempt
  (`countdown.random_attempt_pass_rate`), averaged over the problems."""
  return float(np.mean([cd.random_attempt_pass_rate(p, ops) for p in problems]))


def held_out(problems: Sequence[dict], train_problems: Sequence[dict]) -> list[dict]:
  """The problems whose input string ("a,b,c,t") occurs nowhere in `train_problems`, each input
  once (first occurrence)."""
  seen = {p["input"] for p in train_problems}
  out = []
  for p in problems:
    if p["input"] not in seen:
      seen.add(p["input"])
      out.append(p)
  return out


def without_inputs(problems: Sequence[dict], exclude: Sequence[dict]) -> list[dict]:
  """`problems` minus every problem whose input string occurs in `exclude` (duplicates and
  order kept: the training draws stay distributed as the generator's)."""
  bad = {p["input"] for p in exclude}
  return [p for p in problems if p["input"] not in bad]
