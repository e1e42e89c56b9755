"""A tiny LLaDA-architecture model trained from scratch on generated Countdown problems
(SPEC_DOMAINS §L.6 slow test): a character-level codec, the LLaDA SFT masked-diffusion loss as a
model spec of the library's trainer, pass@1 of the official / ReMDM block samplers on held-out
problems, and the saved model (`save_model` / `load_model`; the shipped
remdm_jax/assets/models/countdown_llada, which `llm.cli` and `llm.countdown_eval` run offline).

  python -m remdm_jax.llm.countdown_train --out=DIR      # ~4-5 min on 2 CPU cores

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


# ------------------------------------------------------------------------------------------------
# the saved model: params folder, tokenizer, command
# ------------------------------------------------------------------------------------------------

TASK = dict(max_number=6, ops="+-*/", max_target=99)   # the slow test's task (numbers 1..6)
MODEL_KIND = "llada_countdown"
SPECIAL_TOKENS = {PAD: "<|pad|>", EOS: "<|eos|>", EOT: "<|eot_id|>", MASK: "<|mdm_mask|>"}


def split_problems(seed: int = 0, n_train: int = 30000, n_held: int = 256):
  """(training draws, held-out problems) of the slow test: held-out = the distinct inputs among
  `n_held` problems of seed 7 + seed; training = `n_train` draws of seed 1000 + seed with every
  held-out input string removed (`TASK`)."""
  held = held_out(cd.generate_problems(n_held, seed=7 + seed, **TASK), [])
  train_p = without_inputs(cd.generate_problems(n_train, seed=1000 + seed, **TASK), held)
  return train_p, held


class CharTokenizer:
  """The Countdown codec as the tokenizer the LLaDA commands use (`llm.cli`, `countdown_eval`):
  encode / decode / id_to_token / token_id / vocab_size like `weights.Tokenizer`, the special
  ids written as SPECIAL_TOKENS strings (decode with skip_special_tokens drops them; encode
  parses them back). A prompt is one Countdown input line "a,b,c,t": `encode` appends the "\\n"
  that ends it when missing (with add_special_tokens). `prompt_length` = P, the prompt slot the
  model was trained with (prompts are left-padded to it); `task`: the problem generator's
  settings; `build_prompt(doc)` = doc["input"] + "\\n" (zero-shot, the training format).
  Raises ValueError naming a character outside the alphabet."""

  def __init__(self, prompt_length: int, task: dict | None = None):
    self.prompt_length = int(prompt_length)
    self.task = dict(task or TASK)
    self._special = {v: k for k, v in SPECIAL_TOKENS.items()}

  def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
    import re
    ids = []
    parts = re.split("(" + "|".join(re.escape(s) for s in self._special) + ")", text)
    for part in parts:
      if part in self._special:
        ids.append(self._special[part])
      elif part:
        ids.extend(encode(part))
    if add_special_tokens and text and not text.endswith("\n"):
      ids.append(CHARS.index("\n"))
    return ids

  def decode(self, ids, skip_special_tokens: bool = False) -> str:
    out = []
    for i in ids:
      i = int(i)
      if 0 <= i < len(CHARS):
        out.append(CHARS[i])
      elif i in SPECIAL_TOKENS and not skip_special_tokens:
        out.append(SPECIAL_TOKENS[i])
      elif i not in SPECIAL_TOKENS:
        raise ValueError(f"token id {i} is outside the countdown vocabulary (V = {VOCAB})")
    return "".join(out)

  def id_to_token(self, i: int) -> str | None:
    i = int(i)
    return CHARS[i] if 0 <= i < len(CHARS) else SPECIAL_TOKENS.get(i)

  def token_id(self, token: str) -> int | None:
    if token in self._special:
      return self._special[token]
    return CHARS.index(token) if len(token) == 1 and token in CHARS else None

  @property
  def vocab_size(self) -> int:
    return VOCAB

  def build_prompt(self, doc: dict) -> str:
    return doc["input"] + "\n"


def is_model_folder(path: str) -> bool:
  """True for a folder written by `save_model` (metadata.json kind "llada_countdown")."""
  import json
  import os
  try:
    with open(os.path.join(path, "metadata.json")) as f:
      meta = json.load(f)
  except (OSError, ValueError):
    return False
  return isinstance(meta, dict) and meta.get("kind") == MODEL_KIND


def save_model(path: str, trained: "Trained", metadata: dict | None = None,
               overwrite: bool = False) -> str:
  """Writes `trained` as a params folder (`checkpoint.save_params`: params/, model_config.json =
  the LLaDAConfig fields + "codec", metadata.json with kind "llada_countdown", the slot lengths
  and `metadata`; an existing folder needs overwrite=True and must be a model folder remdm-jax
  wrote). Returns the absolute path."""
  from remdm_jax.checkpoint import save_params
  return save_params(path, jax.device_get(trained.params), overwrite=overwrite,
                     model_config=dict(dataclasses.asdict(trained.cfg),
                                       codec=codec_info(trained.p_len)),
                     extra_metadata={"kind": MODEL_KIND, "p_len": trained.p_len,
                                     "g_len": trained.g_len, "task": dict(TASK),
                                     **dict(metadata or {})})


def load_model(path: str, mesh=None, **cfg_overrides):
  """A `save_model` folder -> (LLaDAConfig, graphdef, params, CharTokenizer, metadata).
  mesh: None (first device) or a Mesh (parameters placed by the logical-axis rules).
  cfg_overrides: LLaDAConfig fields (param_dtype, compute_dtype, ...). Raises ValueError when
  the folder is not such a model (naming it)."""
  from remdm_jax import checkpoint as ckpt
  from remdm_jax import sharding as mesh_lib
  if not is_model_folder(path):
    raise ValueError(f"{path} is not a Countdown LLaDA folder (metadata.json kind "
                     f"{MODEL_KIND!r})")
  nested, mc, meta = ckpt.load_params(path)
  codec = mc.pop("codec", {})
  if codec.get("chars", CHARS) != CHARS:
    raise ValueError(f"{path}: its codec {codec.get('chars')!r} is not this module's {CHARS!r}")
  cfg = M.LLaDAConfig(**dict(mc, **cfg_overrides))
  gd, abstract = M.abstract_model(cfg)
  if mesh is not None:
    by_path = {mesh_lib.path_str(p): s for p, s in jax.tree_util.tree_flatten_with_path(
        mesh_lib.param_shardings(abstract, mesh))[0]}
    nested = ckpt.load_params(path, sharding=lambda p, shape: by_path[p])[0]
  params = ckpt.nested_to_tree(nested, abstract)
  for (kp, a), ref in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                          jax.tree.leaves(abstract)):
    name = mesh_lib.path_str(kp)
    if tuple(a.shape) != tuple(ref.shape):
      raise ValueError(f"{path}: parameter {name!r} is stored with shape {tuple(a.shape)} but "
                       f"model_config.json implies {tuple(ref.shape)}")
    if not bool(jax.numpy.isfinite(a).all()):
      raise ValueError(f"{path}: parameter {name!r} holds non-finite values (damaged file?)")
  dt = jax.numpy.dtype(cfg.param_dtype)
  params = jax.tree.map(lambda a: a.astype(dt), params)
  return cfg, gd, params, CharTokenizer(meta["p_len"], meta.get("task")), meta


def main(argv=None) -> int:
  """`python -m remdm_jax.llm.countdown_train --out DIR`: trains the slow test's model (task
  `TASK`, `split_problems(seed)`, 4000 steps of batch 64, d=96, 2 layers) through the library's
  trainer, scores held-out pass@1 with the three LLaDA rules and saves it (`save_model`).
  Checkpoints go to --workdir (default DIR.train): a killed run resumes when the same command is
  run again. --out must be new, or --overwrite a folder this command wrote. Exit 0; 2 on bad
  input (one `error:` line, before any work); 130 / 143 after Ctrl-C / SIGTERM."""
  import argparse
  import json
  import os
  import sys
  import time
  from remdm_jax.fileio import check_output_dir
  from remdm_jax.training.trainer import TrainingInterrupted
  ap = argparse.ArgumentParser(prog="python -m remdm_jax.llm.countdown_train",
                               description=main.__doc__.split("\n")[0])
  ap.add_argument("--out", default=None, help="output model folder (required)")
  ap.add_argument("--workdir", default=None, help="checkpoints (default: <out>.train)")
  ap.add_argument("--overwrite", action="store_true")
  ap.add_argument("--steps", type=int, default=4000)
  ap.add_argument("--seed", type=int, default=0, help="shifts the data and training seeds")
  ap.add_argument("--save-every", type=int, default=500)
  args = ap.parse_args(argv)
  try:
    if not args.out:
      raise ValueError("--out is required (a new folder for the trained model)")
    if args.steps < 1 or args.save_every < 1:
      raise ValueError(f"--steps={args.steps} and --save-every={args.save_every} must be >= 1")
    if not 0 <= args.seed < 2**31:
      raise ValueError(f"--seed={args.seed} must lie in [0, 2**31)")
    out = check_output_dir(args.out, args.overwrite, flag="--out", is_ours=is_model_folder,
                           what="Countdown LLaDA")
    workdir = os.path.abspath(args.workdir or out + ".train")
    if os.path.isdir(workdir) and os.listdir(workdir) and not os.path.isdir(
        os.path.join(workdir, "checkpoints")):
      raise ValueError(f"--workdir={workdir} is a folder that no training run wrote")
    train_p, held = split_problems(args.seed)
    p_len, g_len = slot_lengths(train_p + held)
    settings = dict(batch_size=64, lr=3e-3, warmup=100,
                    model=dict(d_model=96, n_heads=4, n_layers=2, mlp_hidden_size=256))
    t0, c0 = time.time(), time.process_time()
    tr = train(train_p, steps=args.steps, seed=args.seed, p_len=p_len, g_len=g_len,
               workdir=workdir, save_every=args.save_every, log=print, **settings)
    wall, cpu = time.time() - t0, time.process_time() - c0
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except TrainingInterrupted as e:
    how = (f"checkpoint of step {e.checkpoint_step} in {e.directory}; re-run the same command "
           "to resume" if e.checkpoint_step is not None else "no checkpoint was saved")
    print(f"interrupted by {e.signal_name} after step {e.step}; {how}", file=sys.stderr)
    return 143 if e.signal_name == "SIGTERM" else 130
  rules = ("llada", "remdm_llada", "llada_conf")
  scores = {r: pass_at_1(tr.logits_fn, tr.params, held, r, p_len, g_len) for r in rules}
  rand = random_pass_at_1(held, TASK["ops"])
  print(f"held-out pass@1 ({len(held)} problems): {scores}; random attempt {rand:.3f}")
  meta = {"dataset": f"countdown.generate_problems(30000, seed={1000 + args.seed}, **TASK) "
                     f"minus the held-out inputs ({len(train_p)} draws)",
          "held_out": f"distinct inputs of generate_problems(256, seed={7 + args.seed}, **TASK)"
                      f" ({len(held)} problems)",
          "held_out_pass_at_1": scores, "random_attempt_pass_at_1": rand,
          "steps": args.steps, "seed": args.seed, "train": settings,
          "train_seconds_wall": round(wall, 1), "train_seconds_cpu": round(cpu, 1),
          "final_loss_mean_last_100": (float(np.mean(tr.losses[-100:]))
                                       if len(tr.losses) else None)}
  save_model(out, tr, meta, overwrite=args.overwrite)
  print(json.dumps({"out": out, "workdir": workdir, "held_out_pass_at_1": scores}))
  return 0


if __name__ == "__main__":
  import sys
  sys.exit(main())
