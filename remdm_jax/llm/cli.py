"""Command-line helpers shared by the large-LM commands, and a plain generation command:

  python -m remdm_jax.llm.cli --model_dir=/path/LLaDA-8B-Instruct --sampler=remdm_llada \\
      --gen_length=32 --block_length=32 --steps=32 --prompt="Question: ... Answer: "
  python -m remdm_jax.llm.cli --model_dir=/path/LLaDA-8B-Instruct --chat \\
      --prompt="What is 2 + 3?" --gen_length=64 --block_length=32 --steps=64
  python -m remdm_jax.llm.cli --model_dir=remdm_jax/assets/models/countdown_llada \\
      --sampler=llada --gen_length=15 --block_length=15 --steps=15 --prompt=3,5,2,13

`--model_dir` is a LLaDA-family or Dream folder (`remdm_jax.llm.load.load_lm` tells them apart).
`--chat` renders each prompt as one user turn (plus `--system`) with the folder's chat template,
exactly as transformers' `apply_chat_template(..., add_generation_prompt=True)`, and encodes it
without extra special tokens; without `--chat` the prompt is encoded as plain text (the
tokenizer's post-processor adds BOS where the model's tokenizer does).

`--sampler` is `llada` (official generate), `llada_conf`, `remdm_llada`, Dream's
`dream_origin` / `dream_maskgit_plus` / `dream_topk_margin` / `dream_entropy` (with
--temperature, --top_p, --top_k, --alg_temp, --eps), or a `SamplerConfig` strategy (mdlm,
remdm_cap, remdm_rescale, remdm_conf, remdm_loop, remdm_switch, fb, dfm). Bad flags exit with
status 2 and one line naming the flag.

Speed (`sampling.blocks`, `sampling.kvcache`): `--cache none|prefix|dual` (KV cache, Fast-dLLM's
prefix / dual cache; LLaDA-architecture models, every sampler), `--refresh_every k` (0 = refresh
once per block, k = every k steps) and `--commit fixed|threshold|factor|eb` (adaptive commits for
llada / llada_conf: `--threshold`, `--factor`, `--eb_gamma`), e.g.

  python -m remdm_jax.llm.cli --model_dir=/path/LLaDA-8B-Instruct --gen_length=256 \\
      --block_length=32 --steps=256 --cache=dual --commit=threshold --threshold=0.9 --prompt=...
"""
from __future__ import annotations

if __name__ == "__main__":  # Ctrl-C / SIGTERM while the imports load: one line, no traceback
  from remdm_jax import interrupt as _interrupt
  _interrupt.install_handlers("llm.cli")

import argparse
import json
import sys
from typing import Optional

from remdm_jax.llm.generate import RULES, GenConfig
from remdm_jax.sampling.config import STRATEGIES, SamplerConfig


def add_generation_flags(p: argparse.ArgumentParser) -> None:
  p.add_argument("--model_dir", required=True, help="local HF LLaDA or Dream folder "
                 "(config.json, safetensors, tokenizer.json), or the shipped tiny Countdown "
                 "model remdm_jax/assets/models/countdown_llada")
  p.add_argument("--arch", default=None, choices=[None, "llada", "dream"],
                 help="default: from config.json")
  p.add_argument("--sampler", default="llada", help=f"one of {RULES + STRATEGIES}")
  p.add_argument("--gen_length", type=int, default=32)
  p.add_argument("--block_length", type=int, default=32)
  p.add_argument("--steps", type=int, default=32)
  p.add_argument("--temperature", type=float, default=0.0)
  p.add_argument("--remasking", default="low_confidence")
  p.add_argument("--cfg_scale", type=float, default=0.0)
  p.add_argument("--remdm_number", type=int, default=1)
  p.add_argument("--eta", type=float, default=None, help="ReMDM eta of a strategy sampler")
  p.add_argument("--top_p", type=float, default=None, help="nucleus of a strategy sampler or "
                 "of the Dream rules")
  p.add_argument("--top_k", type=int, default=None, help="top-k of the Dream rules")
  p.add_argument("--alg_temp", type=float, default=None, help="commit temperature of the Dream "
                 "confidence rules (None / 0 = top-n)")
  p.add_argument("--eps", type=float, default=1e-3, help="schedule end of the Dream rules")
  p.add_argument("--precision", default="exact32", help="exact32 | float64 (enables x64)")
  p.add_argument("--logits_eos_inf", action="store_true")
  p.add_argument("--confidence_eos_eot_inf", action="store_true")
  p.add_argument("--official_eos_quirk", action="store_true")
  p.add_argument("--stop_at_eos", default=None, choices=[None, "true", "false"])
  p.add_argument("--mask_id", type=int, default=None, help="default: config.json "
                 "mask_token_id, else the tokenizer's mask token")
  p.add_argument("--eos_id", type=int, default=None, help="default: config.json / tokenizer")
  p.add_argument("--eot_id", type=int, default=None, help="end of turn; default: config.json "
                 "eot_token_id, else the tokenizer's <|eot_id|> (LLaDA) / <|im_end|> (Dream)")
  p.add_argument("--pad_id", type=int, default=None, help="default: config.json / tokenizer / EOS")
  p.add_argument("--param_dtype", default=None, help="default: bfloat16")
  p.add_argument("--compute_dtype", default=None, help="default: bfloat16")
  p.add_argument("--mesh", default="1,-1,1", help="data,fsdp,tensor sizes (default all fsdp)")
  p.add_argument("--batch_size", type=int, default=8)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--cache", default="none", help="KV cache mode: none | prefix | dual")
  p.add_argument("--refresh_every", type=int, default=None,
                 help="refresh the cache every k steps (default 0 = once per block)")
  p.add_argument("--commit", default="fixed",
                 help="commit rule: fixed | threshold | factor | eb (adaptive: llada, llada_conf)")
  p.add_argument("--threshold", type=float, default=None,
                 help="tau of --commit=threshold (default 0.9)")
  p.add_argument("--factor", type=float, default=None, help="of --commit=factor (default 1.0)")
  p.add_argument("--eb_gamma", type=float, default=None,
                 help="entropy bound of --commit=eb (default 1e-3)")


# The parameter flags of the cache and of each adaptive commit rule: (flag, when it applies).
_CACHE_COMMIT_PARAMS = (("refresh_every", lambda a: a.cache != "none"),
                        ("threshold", lambda a: a.commit == "threshold"),
                        ("factor", lambda a: a.commit == "factor"),
                        ("eb_gamma", lambda a: a.commit == "eb"))


def _cache_commit_values(args) -> dict:
  """The refresh_every / threshold / factor / eb_gamma flags given (the others keep GenConfig's
  defaults); a flag given where it does nothing (e.g. --threshold with --commit=fixed) is a
  ValueError naming it."""
  out = {}
  for name, applies in _CACHE_COMMIT_PARAMS:
    v = getattr(args, name, None)
    if v is None:
      continue
    if not applies(args):
      when = "--cache=prefix|dual" if name == "refresh_every" else f"--commit={name.split('_')[0]}"
      raise ValueError(f"--{name}={v:g} applies only with {when} (got --cache={args.cache}, "
                       f"--commit={args.commit})")
    out[name] = v
  return out


def gen_config_from_args(args, mcfg) -> GenConfig:
  """GenConfig from parsed flags and the model config (ids default to the model's)."""
  strategy = args.sampler in STRATEGIES
  if not strategy and args.sampler not in RULES:
    raise ValueError(f"--sampler={args.sampler!r} is not one of {RULES + STRATEGIES}")
  dream = args.sampler.startswith("dream_")
  for flag in ("top_k", "alg_temp"):
    if getattr(args, flag) is not None and not dream:
      raise ValueError(f"--{flag} applies only to the Dream rules (--sampler=dream_*)")
  if args.top_p is not None and not (dream or strategy):
    raise ValueError("--top_p applies to a strategy sampler or the Dream rules")
  if args.commit != "fixed" and args.sampler not in ("llada", "llada_conf"):
    raise ValueError(f"--commit={args.commit} (an adaptive commit rule) applies to --sampler "
                     f"llada and llada_conf, not --sampler={args.sampler}")
  if args.eta is not None and not strategy:
    raise ValueError(f"--eta={args.eta:g} applies only to a strategy sampler (--sampler in "
                     f"{STRATEGIES}), not the rule --sampler={args.sampler}")
  nb = args.gen_length // max(args.block_length, 1)
  sampler = None
  if strategy:
    sampler = SamplerConfig(strategy=args.sampler, num_steps=max(args.steps // max(nb, 1), 1),
                            eta=args.eta, top_p=args.top_p,
                            precision="float64" if args.precision == "float64" else "exact32",
                            time_independent=True)
    if args.eta is not None and "eta" in sampler.ignored_fields():
      raise ValueError(f"--eta={args.eta:g} does not apply to --sampler={args.sampler}: "
                       f"{sampler.ignored_fields()['eta']}")
  stop = None if args.stop_at_eos is None else args.stop_at_eos == "true"
  pick = lambda v, d: d if v is None else v
  eot = pick(args.eot_id, mcfg.eot_token_id)
  if eot is None and args.confidence_eos_eot_inf:
    raise ValueError("--confidence_eos_eot_inf needs an end-of-turn id: config.json has no "
                     "eot_token_id and the tokenizer no end-of-turn token; pass --eot_id")
  extra = dict(top_p=args.top_p, top_k=args.top_k, alg_temp=args.alg_temp,
               eps=args.eps) if dream else {}
  return GenConfig(
      rule="strategy" if strategy else args.sampler, gen_length=args.gen_length,
      block_length=args.block_length, steps=args.steps, temperature=args.temperature,
      remasking=args.remasking, cfg_scale=args.cfg_scale, remdm_number=args.remdm_number,
      logits_eos_inf=args.logits_eos_inf, confidence_eos_eot_inf=args.confidence_eos_eot_inf,
      official_eos_quirk=args.official_eos_quirk, stop_at_eos=stop, precision=args.precision,
      mask_id=pick(args.mask_id, mcfg.mask_token_id), eos_id=pick(args.eos_id, mcfg.eos_token_id),
      eot_id=eot, pad_id=pick(args.pad_id, mcfg.pad_token_id), sampler=sampler,
      cache=args.cache, commit=args.commit, **_cache_commit_values(args), **extra)


def load_model(args):
  """-> (LoadedLM, mesh): weights stream into the mesh, which spans every process of a
  multi-process job (`remdm_jax.launch`, README "Multi-host"); --mask_id / --eos_id / --eot_id /
  --pad_id override the ids of config.json and the tokenizer files (validated against the
  vocabulary, `remdm_jax.llm.model.resolve_ids`)."""
  from remdm_jax import distributed
  from remdm_jax.llm.load import arch_of, check_cache, load_lm
  from remdm_jax import sharding as mesh_lib
  distributed.initialize_from_env()  # before anything creates the JAX backend
  try:
    shape = tuple(int(s) for s in args.mesh.split(","))
  except ValueError:
    raise ValueError(f"--mesh={args.mesh!r} must be 3 comma-separated ints") from None
  _check_not_a_dit_folder(args.model_dir)
  cache = getattr(args, "cache", "none")
  if cache != "none":  # before loading: the KV cache needs a LLaDA-architecture model
    check_cache(arch_of(args.model_dir, getattr(args, "arch", None)), cache, args.model_dir)
  mesh = mesh_lib.make_mesh(shape)
  over = dict(param_dtype=args.param_dtype, compute_dtype=args.compute_dtype,
              mask_token_id=args.mask_id, eos_token_id=args.eos_id,
              eot_token_id=args.eot_id, pad_token_id=args.pad_id)
  lm = load_lm(args.model_dir, mesh=mesh, arch=getattr(args, "arch", None), **over)
  if lm.tokenizer is None:
    raise ValueError(f"--model_dir={args.model_dir!r} has no tokenizer.json")
  return lm, mesh


def _check_not_a_dit_folder(model_dir: str) -> None:
  """A remdm-jax DiT params folder (sample.py's, the QM9 or digits models) given as --model_dir
  is named as such (it failed with "config.json not found")."""
  import os
  from remdm_jax.checkpoint import is_model_folder
  from remdm_jax.llm import countdown_train
  if (is_model_folder(model_dir) and not countdown_train.is_model_folder(model_dir)
      and not os.path.isfile(os.path.join(model_dir, "config.json"))):
    raise ValueError(f"--model_dir={model_dir} is a remdm-jax DiT model folder, not a LLaDA "
                     "model; sample it with sample.py (text), remdm_jax.molecules.sample or "
                     "remdm_jax.images.sample_digits")


def load_for_generation(args):
  """-> (model cfg, graphdef, params, tokenizer, mesh) (`load_model`, older form)."""
  lm, mesh = load_model(args)
  return lm.cfg, lm.graphdef, lm.params, lm.tokenizer, mesh


def encode_prompts(tok, prompts, chat: bool = False, system: Optional[str] = None):
  """Prompt strings -> token lists: plain `tok.encode(p)`, or with `chat` one user turn (after
  `system`) rendered by the folder's chat template and encoded without special tokens."""
  if not chat:
    if system:
      raise ValueError("--system needs --chat")
    return [tok.encode(p) for p in prompts]
  from remdm_jax.llm.tokenizer import chat_prompt
  return [chat_prompt(tok, p, system) for p in prompts]


def token_string(tok, token_id: int):
  """The string of a special id for `generate.decode_outputs` (HF tokenizers: tok.tok)."""
  return (tok.tok if hasattr(tok, "tok") else tok).id_to_token(token_id)


def pad_prompts_to(x, am, width: int, pad_id: int):
  """Left-pads prompts (int32 [B, P], mask [B, P]) to `width` columns (a model trained with a
  fixed prompt slot, e.g. the Countdown one); ValueError when P > width > 0."""
  import numpy as np
  if width <= 0 or x.shape[1] == width:
    return x, am
  if x.shape[1] > width:
    raise ValueError(f"a prompt has {x.shape[1]} tokens; this model's prompt slot holds {width}")
  extra = width - x.shape[1]
  return (np.concatenate([np.full((x.shape[0], extra), pad_id, x.dtype), x], 1),
          np.concatenate([np.zeros((x.shape[0], extra), am.dtype), am], 1))


def check_common_flags(args) -> None:
  """The flags every LLaDA command shares, before any work: --seed in [0, 2^32) (a negative seed
  was silently folded, 2^64 overflowed with a traceback), --batch_size >= 1."""
  from remdm_jax.checks import check_seed
  if hasattr(args, "seed"):
    check_seed(args.seed, "--seed")
  if hasattr(args, "batch_size") and args.batch_size < 1:
    raise ValueError(f"--batch_size={args.batch_size} must be >= 1")


def run_cli(main_fn, parser: argparse.ArgumentParser, argv=None) -> int:
  """Parses, checks the shared flags, runs main_fn(args); a ValueError (or a missing file, a
  missing extra, an OSError) becomes one line on stderr and exit status 2."""
  args = parser.parse_args(argv)
  if getattr(args, "precision", None) == "float64":
    import jax
    jax.config.update("jax_enable_x64", True)
  try:
    check_common_flags(args)
    main_fn(args)
  except (ValueError, FileNotFoundError, ImportError, OSError) as e:
    text = " ".join(str(e).split()) or type(e).__name__
    print(f"error: {text}", file=sys.stderr)
    return 2
  except KeyboardInterrupt as e:  # Ctrl-C: what was finished is written by main_fn (130)
    from remdm_jax.interrupt import EXIT_INTERRUPTED, hard_exit
    from remdm_jax.interrupt import program_line
    print(program_line(str(e) or "interrupted"), file=sys.stderr)
    hard_exit(EXIT_INTERRUPTED)
  return 0


def prompt_keys(seed: int, n: int):
  """[n] typed keys: prompt i uses fold_in(key(seed), i), so a prompt's output does not depend
  on how many prompts follow it (per-row keys: `sampling.blocks` batch invariance)."""
  import jax
  import jax.numpy as jnp
  return jax.vmap(lambda i: jax.random.fold_in(jax.random.key(seed), i))(
      jnp.arange(n, dtype=jnp.uint32))


def _gen_to_host(gen, params, x, am, keys, to_host):
  """gen(...) with its tokens and per-row NFE gathered to every host (several processes: a
  collective)."""
  out, info = gen(params, x, am, keys)
  out, row_nfe = to_host((out, info["row_nfe"]))
  return out, dict(info, row_nfe=row_nfe)


def _generate_main(args):
  import jax
  from remdm_jax.llm import generate as G
  if not args.prompt:
    raise ValueError("--prompt is required (repeat it for a batch)")
  lm, mesh = load_model(args)
  cfg = gen_config_from_args(args, lm.cfg)
  prompts = encode_prompts(lm.tokenizer, args.prompt, args.chat, args.system)
  x, am = G.left_pad(prompts, cfg.pad_id)
  x, am = pad_prompts_to(x, am, getattr(lm.tokenizer, "prompt_length", 0), cfg.pad_id)
  gen = lm.make_generator(cfg, mesh=mesh)
  keys = prompt_keys(args.seed, len(prompts))
  from remdm_jax.interrupt import call_interruptibly
  from remdm_jax.sharding import to_host
  out, info = call_interruptibly(lambda: _gen_to_host(gen, lm.params, x, am, keys, to_host))
  if jax.process_index() != 0:  # process 0 prints
    return
  texts = G.decode_outputs(out, lm.tokenizer, stops=args.stop or (),
                           eos_token=lm.token_text(cfg.eos_id),
                           eot_token=lm.token_text(lm.eot_id))
  for t in texts:
    print(json.dumps({"text": t}))
  print(json.dumps({"nfe": int(info["nfe"]),
                    "row_nfe": info["row_nfe"].tolist()}), file=sys.stderr)


def main(argv: Optional[list] = None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  add_generation_flags(p)
  p.add_argument("--prompt", action="append", default=[])
  p.add_argument("--stop", action="append", default=[])
  p.add_argument("--chat", action="store_true", help="apply the folder's chat template")
  p.add_argument("--system", default=None, help="system message (with --chat)")
  from remdm_jax.interrupt import run_main
  return run_main(run_cli, _generate_main, p, argv, prog="llm.cli")


if __name__ == "__main__":
  sys.exit(main())
