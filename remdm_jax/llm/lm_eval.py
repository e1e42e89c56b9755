"""EleutherAI lm-evaluation-harness adapter: any remdm-jax large masked LM (LLaDA family, Dream)
with any rule or ReMDM strategy, as the harness model `remdm_jax`.

  pip install -e ".[llm,lmeval]"
  python -m remdm_jax.llm.lm_eval --model remdm_jax \\
      --model_args checkpoint=/path/LLaDA-8B-Instruct,rule=remdm_llada,steps=32,gen_length=32 \\
      --tasks gsm8k --batch_size 8 --output_path runs/lmeval

lm-eval has no plugin discovery: a model exists only once its module is imported. This module
registers `remdm_jax` when imported (use it with `lm_eval.simple_evaluate(model="remdm_jax", ...)`
after `import remdm_jax.llm.lm_eval`, or pass `RemdmLM(...)` itself), and run as a program it hands
its arguments to lm-eval's own command line (`lm_eval.__main__.cli_evaluate`), as LLaDA's
`eval_llada.py` and Dream's `eval/eval.py` do; every lm-eval flag works.

Requests:
* `generate_until` (context, {"until": [...], "max_gen_toks": n, ...}): batched `batch_size` at a
  time (left-padded; the last batch padded with copies so one program serves all), decoded with
  `llm.generate.make_generate` under the chosen rule, cut at the task's stop strings and at the
  model's EOS / end-of-turn token (LLaDA's `eval_llada.py` output processing). The generation
  length is `gen_length` from model_args, else the request's `max_gen_toks` (rounded up to a
  multiple of `block_length`); request i uses the key fold_in(key(seed), i), so an answer does not
  depend on the batch it was in. Sampling settings come from model_args only (like the
  references; the tasks' `temperature` / `do_sample` are not used).
* `loglikelihood` (context, continuation): LLaDA's Monte-Carlo estimate (`llm.likelihood`) with
  `mc_num` samples in batches of `mc_batch_size` (default: the largest divisor of mc_num that
  is <= `batch_size`), CFG `cfg`; the
  continuation's tokens are whole[len(ctx):] after moving the context's trailing spaces into it
  (`_encode_pair` of eval_llada.py). `is_greedy` is computed only with `is_check_greedy=true`:
  the official LLaDA decoder at temperature 0 with one token per step over the target
  (`suffix_greedy_prediction`), else False (LLaDA's recommended setting).
* `loglikelihood_rolling` (perplexity tasks) is not implemented (NotImplementedError), as in both
  references.
* `--apply_chat_template` renders the conversation with the checkpoint's template
  (`llm.tokenizer`); a context that already starts with the BOS text is encoded without adding
  special tokens again.

model_args (all optional except checkpoint):
  checkpoint (or pretrained / model_dir): the local model folder.   arch: llada | dream.
  rule: llada | llada_conf | remdm_llada | dream_origin | dream_maskgit_plus |
    dream_topk_margin | dream_entropy | a ReMDM strategy (mdlm, remdm_cap, remdm_rescale,
    remdm_conf, remdm_switch, remdm_loop, fb, dfm);
  steps, gen_length, block_length, temperature, remasking, cfg (guidance, generation and
    likelihood), remdm_number, eta, top_p (a strategy's or Dream's), top_k, alg_temp, eps,
    precision, logits_eos_inf, confidence_eos_eot_inf, official_eos_quirk, stop_at_eos, the KV
    cache and adaptive commits (cache=none|prefix|dual: LLaDA-architecture models; refresh_every,
    commit=fixed|threshold|factor|eb, threshold, factor, eb_gamma), and any other `GenConfig`
    field by name;
  mc_num (128), mc_batch_size, is_check_greedy (false), seed (0), max_length (model's),
  mask_id / eos_id / eot_id / pad_id, param_dtype / compute_dtype (bfloat16),
  mesh (data x fsdp x tensor, written with "x": e.g. 1x-1x1, the default: all devices fsdp).
Bad model_args are one ValueError naming the argument (the command prints `error: ...`, exit 2).
"""
from __future__ import annotations

if __name__ == "__main__":  # Ctrl-C / SIGTERM while the imports load: one line, no traceback
  from remdm_jax import interrupt as _interrupt
  _interrupt.install_handlers("llm.lm_eval")

import dataclasses
import sys
from typing import Optional

import numpy as np

try:
  from lm_eval.api.model import LM as _LMBase
  HAVE_LM_EVAL = True
except ImportError:  # the adapter needs the optional extra
  _LMBase, HAVE_LM_EVAL = object, False

from remdm_jax.llm import generate as G
from remdm_jax.llm.likelihood import mc_loglikelihood
from remdm_jax.sampling.config import STRATEGIES, SamplerConfig

MODEL_NAME = "remdm_jax"
_SAMPLER_ARGS = ("eta", "top_p")
_OWN_ARGS = ("checkpoint", "arch", "rule", "cfg", "mc_num", "mc_batch_size", "is_check_greedy",
             "seed", "max_length", "mask_id", "eos_id", "eot_id", "pad_id", "param_dtype",
             "compute_dtype", "mesh", "batch_size", "max_batch_size", "device") + _SAMPLER_ARGS


def _as_int(name, v, lo=None):
  if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
    raise ValueError(f"model_args {name}={v!r} must be an int")
  if lo is not None and v < lo:
    raise ValueError(f"model_args {name}={v!r} must be >= {lo}")
  return int(v)


class RemdmLM(_LMBase):
  """The harness model (module docstring). Construct with keyword model_args."""

  def __init__(self, checkpoint: Optional[str] = None, **kwargs):
    if not HAVE_LM_EVAL:
      raise ValueError("lm-eval is not installed: pip install -e '.[lmeval]'")
    super().__init__()
    for alias in ("pretrained", "model_dir"):
      if alias in kwargs:
        checkpoint = checkpoint or kwargs.pop(alias)
    if not checkpoint:
      raise ValueError("model_args checkpoint=DIR is required (a local model folder)")
    gen_fields = {f.name for f in dataclasses.fields(G.GenConfig)} - {"sampler"}
    unknown = sorted(set(kwargs) - gen_fields - set(_OWN_ARGS))
    if unknown:
      raise ValueError(f"unknown model_args {unknown} (known: {sorted(_OWN_ARGS)} and the "
                       f"GenConfig fields {sorted(gen_fields)})")
    bs = kwargs.pop("batch_size", 1)
    if isinstance(bs, str) and bs.isdigit():
      bs = int(bs)
    self.batch_size = _as_int("batch_size", bs, 1)
    kwargs.pop("max_batch_size", None)
    kwargs.pop("device", None)
    self.seed = _as_int("seed", kwargs.pop("seed", 0), 0)
    self.mc_num = _as_int("mc_num", kwargs.pop("mc_num", 128), 1)
    # default: the largest divisor of mc_num that is <= batch_size
    default_mcb = max(d for d in range(1, min(self.batch_size, self.mc_num) + 1)
                      if self.mc_num % d == 0)
    self.mc_batch_size = _as_int("mc_batch_size", kwargs.pop("mc_batch_size", default_mcb), 1)
    if self.mc_num % self.mc_batch_size:
      raise ValueError(f"model_args mc_num={self.mc_num} must be a multiple of mc_batch_size="
                       f"{self.mc_batch_size}")
    self.is_check_greedy = bool(kwargs.pop("is_check_greedy", False))
    self.cfg = float(kwargs.pop("cfg", kwargs.pop("cfg_scale", 0.0)))
    if not self.cfg >= 0:
      raise ValueError(f"model_args cfg={self.cfg} must be >= 0")
    self.rule = str(kwargs.pop("rule", "llada"))
    self.sampler_args = {k: kwargs.pop(k) for k in _SAMPLER_ARGS if k in kwargs}
    mesh_arg = str(kwargs.pop("mesh", "1x-1x1"))
    load_over = dict(arch=kwargs.pop("arch", None),
                     param_dtype=kwargs.pop("param_dtype", None),
                     compute_dtype=kwargs.pop("compute_dtype", None),
                     mask_token_id=kwargs.pop("mask_id", None),
                     eos_token_id=kwargs.pop("eos_id", None),
                     eot_token_id=kwargs.pop("eot_id", None),
                     pad_token_id=kwargs.pop("pad_id", None))
    max_length = kwargs.pop("max_length", None)
    self.gen_args = dict(kwargs)  # GenConfig fields
    self._check_rule()
    from remdm_jax import sharding as mesh_lib
    from remdm_jax.llm.load import arch_of, check_cache, load_lm
    cache = self.gen_args.get("cache", "none")
    if cache != "none":  # before loading: the KV cache needs a LLaDA-architecture model
      check_cache(arch_of(checkpoint, load_over["arch"]), cache, checkpoint)
    try:
      shape = tuple(int(s) for s in mesh_arg.split("x"))
    except ValueError:
      raise ValueError(f"model_args mesh={mesh_arg!r} must be 3 ints joined by 'x' "
                       "(data x fsdp x tensor), e.g. 1x-1x1") from None
    self.mesh = mesh_lib.make_mesh(shape)
    self.lm = load_lm(checkpoint, mesh=self.mesh, **load_over)
    if self.lm.tokenizer is None:
      raise ValueError(f"checkpoint={checkpoint!r} has no tokenizer.json")
    self.tok = self.lm.tokenizer
    self.max_length = self.lm.max_length if max_length is None else \
        _as_int("max_length", max_length, 2)
    self.checkpoint = checkpoint
    self._gens: dict = {}
    self._greedy_gens: dict = {}

  # ---------------------------------------------------------------- settings
  def _check_rule(self):
    known = G.RULES + STRATEGIES
    if self.rule not in known:
      raise ValueError(f"model_args rule={self.rule!r} must be one of {known}")
    if self.rule.startswith("dream_") and "top_p" in self.sampler_args:
      self.gen_args["top_p"] = self.sampler_args.pop("top_p")  # Dream's own nucleus
    if self.rule not in STRATEGIES and self.sampler_args:
      raise ValueError(f"model_args {sorted(self.sampler_args)} apply only to the ReMDM "
                       f"strategies {STRATEGIES}, not rule={self.rule!r}")

  def gen_config(self, max_gen_toks: int):
    """The GenConfig for a request with `max_gen_toks` (module docstring)."""
    a = dict(self.gen_args)
    G_len = a.pop("gen_length", None)
    blk = a.pop("block_length", None)
    if G_len is None:
      G_len = int(max_gen_toks)
      if blk is not None:
        G_len = -(-G_len // blk) * blk
    blk = G_len if blk is None else blk
    steps = a.pop("steps", G_len)
    lm = self.lm
    ids = dict(mask_id=lm.mask_id, eos_id=lm.eos_id, eot_id=lm.eot_id, pad_id=lm.pad_id)
    sampler = None
    rule = self.rule
    if rule in STRATEGIES:
      nb = max(G_len // max(blk, 1), 1)
      sampler = SamplerConfig(strategy=rule, num_steps=max(steps // nb, 1),
                              time_independent=True, **self.sampler_args)
      rule = "strategy"
    return G.GenConfig(rule=rule, gen_length=G_len, block_length=blk, steps=steps,
                       cfg_scale=self.cfg, sampler=sampler, **ids, **a)

  def _generator(self, cfg):
    if cfg not in self._gens:
      self._gens[cfg] = self.lm.make_generator(cfg, mesh=self.mesh)
    return self._gens[cfg]

  # ---------------------------------------------------------------- encoding
  def _encode(self, text: str) -> list[int]:
    bos = self.tok.special_tokens.get("bos_token")
    add = not (bos and text.startswith(bos))
    return self.tok.encode(text, add_special_tokens=add)

  def _encode_pair(self, context: str, continuation: str):
    """eval_llada.py `_encode_pair`: trailing spaces of the context move to the continuation;
    the continuation's tokens are those of context + continuation after the context's."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
      continuation = context[-n_spaces:] + continuation
      context = context[:-n_spaces]
    whole = self._encode(context + continuation)
    ctx = self._encode(context)
    return ctx, whole[len(ctx):]

  @property
  def tokenizer_name(self) -> str:
    return str(self.checkpoint)

  def apply_chat_template(self, chat_history, add_generation_prompt: bool = True) -> str:
    return self.tok.apply_chat_template(chat_history,
                                        add_generation_prompt=add_generation_prompt)

  def chat_template(self, chat_template=False):
    if not chat_template:
      return None
    return self.tok.get_chat_template(None if chat_template is True else chat_template)

  # ---------------------------------------------------------------- requests
  def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
    import jax
    out: list = [None] * len(requests)
    groups: dict = {}
    for i, req in enumerate(requests):
      context, kw = req.args
      kw = dict(kw or {})
      until = kw.get("until", [])
      until = [until] if isinstance(until, str) else list(until or [])
      mgt = int(kw.get("max_gen_toks", 256))
      groups.setdefault((tuple(until), mgt), []).append((i, context))
    base = jax.random.key(self.seed)
    for (until, mgt), items in groups.items():
      cfg = self.gen_config(mgt)
      gen = self._generator(cfg)
      eos_t, eot_t = self.lm.token_text(cfg.eos_id), self.lm.token_text(self.lm.eot_id)
      for s in range(0, len(items), self.batch_size):
        chunk = items[s:s + self.batch_size]
        full = chunk + [chunk[-1]] * (self.batch_size - len(chunk))
        ids = [self._truncate_prompt(self._encode(c), cfg.gen_length) for _, c in full]
        x, am = G.left_pad(ids, cfg.pad_id)
        P = x.shape[1]
        Pb = max(32, -(-P // 32) * 32)  # bucket prompt lengths: fewer compiled programs
        if Pb > P and Pb + cfg.gen_length <= self.max_length:
          x = np.concatenate([np.full((len(full), Pb - P), cfg.pad_id, np.int32), x], 1)
          am = np.concatenate([np.zeros((len(full), Pb - P), np.int32), am], 1)
        keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(
            np.asarray([i for i, _ in full], np.uint32))
        toks, _ = gen(self.lm.params, x, am, keys)
        texts = G.decode_outputs(np.asarray(toks), self.tok, stops=until, eos_token=eos_t,
                                 eot_token=eot_t)
        for (i, _), t in zip(chunk, texts):
          out[i] = t
    return out

  def _truncate_prompt(self, ids, gen_length):
    room = self.max_length - gen_length
    if room < 1:
      raise ValueError(f"gen_length={gen_length} leaves no room for a prompt in max_length="
                       f"{self.max_length}")
    return ids[-room:]

  def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
    out = []
    for i, req in enumerate(requests):
      context, continuation = req.args
      ctx, cont = self._encode_pair(context, continuation)
      if not cont:
        raise ValueError(f"request {i}: the continuation {continuation!r} encodes to no tokens")
      if len(cont) >= self.max_length:
        raise ValueError(f"request {i}: continuation of {len(cont)} tokens does not fit "
                         f"max_length={self.max_length}")
      ctx = ctx[-(self.max_length - len(cont)):] if ctx else ctx
      rng = np.random.default_rng([self.seed, i])
      ll = mc_loglikelihood(self.lm.logits_fn, self.lm.params, ctx, cont,
                            mask_id=self.lm.mask_id, mc_num=self.mc_num,
                            batch_size=self.mc_batch_size, cfg=self.cfg, rng=rng,
                            pad_id=self.lm.pad_id)
      greedy = self._is_greedy(ctx, cont) if self.is_check_greedy else False
      out.append((ll, bool(greedy)))
    return out

  def _is_greedy(self, ctx, cont) -> bool:
    """eval_llada.py `suffix_greedy_prediction`: from prefix + all-MASK target, unmask one
    position per step (the highest softmax probability of its argmax) with the argmax token;
    True iff the result is the target. That is the official `llada` rule at temperature 0,
    low-confidence remasking, steps = gen = block = len(target)."""
    import jax
    if not ctx:
      return False
    T = len(cont)
    cfg = G.GenConfig(rule="llada", gen_length=T, block_length=T, steps=T, temperature=0.0,
                      cfg_scale=self.cfg, stop_at_eos=False, mask_id=self.lm.mask_id,
                      eos_id=self.lm.eos_id, eot_id=self.lm.eos_id, pad_id=self.lm.pad_id)
    if cfg not in self._greedy_gens:
      self._greedy_gens[cfg] = G.make_generate(self.lm.logits_fn, cfg, mesh=self.mesh)
    x, am = G.left_pad([ctx], self.lm.pad_id)
    toks, _ = self._greedy_gens[cfg](self.lm.params, x, am, jax.random.key(0))
    return bool(np.array_equal(np.asarray(toks)[0], np.asarray(cont)))

  def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
    raise NotImplementedError("remdm_jax: loglikelihood_rolling (perplexity tasks) is not "
                              "implemented (neither LLaDA's nor Dream's harness adapter has it)")


def register() -> bool:
  """Registers `RemdmLM` as lm-eval's model "remdm_jax" (idempotent). False without lm-eval."""
  if not HAVE_LM_EVAL:
    return False
  from lm_eval.api.registry import register_model
  try:
    register_model(MODEL_NAME)(RemdmLM)
  except ValueError:  # already registered (e.g. this module imported under two names)
    pass
  return True


if __name__ != "__main__":
  register()


def main(argv: Optional[list] = None) -> int:
  """`python -m remdm_jax.llm.lm_eval ...`: lm-eval's command line with `remdm_jax` registered.
  A ValueError (bad model_args, a missing folder, an unknown task) is one `error:` line, exit 2;
  Ctrl-C / SIGTERM is one line, exit 130 / 143 (`interrupt.run_main`: lm-eval writes its results
  at the end, so nothing is kept)."""
  from remdm_jax.interrupt import run_main
  return run_main(_main, argv, prog="llm.lm_eval")


def _main(argv: Optional[list] = None) -> int:
  if not HAVE_LM_EVAL:
    print("error: lm-eval is not installed: pip install -e '.[lmeval]'", file=sys.stderr)
    return 2
  from lm_eval.__main__ import cli_evaluate
  if argv is not None:
    sys.argv = [sys.argv[0]] + list(argv)
  try:
    cli_evaluate()
  except ValueError as e:
    print(f"error: {e}".splitlines()[0], file=sys.stderr)
    return 2
  except SystemExit as e:
    return int(e.code or 0) if not isinstance(e.code, str) else 2
  return 0


if __name__ == "__main__":
  # Run the registered module's main (not this __main__ copy's class) so lm-eval sees one class.
  from remdm_jax.llm import lm_eval as _adapter
  sys.exit(_adapter.main())
