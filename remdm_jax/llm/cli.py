"""Command-line helpers shared by the LLaDA commands, and a plain generation command:

  python -m remdm_jax.llm.cli --model_dir=/path/LLaDA-8B-Instruct --sampler=remdm_llada \\
      --gen_length=32 --block_length=32 --steps=32 --prompt="Question: ... Answer: "

`--sampler` is `llada` (official generate), `llada_conf`, `remdm_llada`, or a `SamplerConfig`
strategy (mdlm, remdm_cap, remdm_rescale, remdm_conf, remdm_loop, remdm_switch, fb, dfm). Bad
flags exit with status 2 and one line naming the flag.

Speed (`sampling.blocks`, `sampling.kvcache`): `--cache none|prefix|dual` (KV cache, Fast-dLLM's
prefix / dual cache), `--refresh_every k` (0 = refresh once per block, k = every k steps) and
`--commit fixed|threshold|factor|eb` (adaptive commits for llada / llada_conf: `--threshold`,
`--factor`, `--eb_gamma`), e.g.

  python -m remdm_jax.llm.cli --model_dir=/path/LLaDA-8B-Instruct --gen_length=256 \
      --block_length=32 --steps=256 --cache=dual --commit=threshold --threshold=0.9 --prompt=...
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Optional

from remdm_jax.llm.generate import RULES, GenConfig
from remdm_jax.sampling.config import STRATEGIES, SamplerConfig


def add_generation_flags(p: argparse.ArgumentParser) -> None:
  p.add_argument("--model_dir", required=True, help="local HF LLaDA folder (config.json, "
                 "safetensors, tokenizer.json)")
  p.add_argument("--sampler", default="llada", help=f"one of {RULES + STRATEGIES}")
  p.add_argument("--gen_length", type=int, default=32)
  p.add_argument("--block_length", type=int, default=32)
  p.add_argument("--steps", type=int, default=32)
  p.add_argument("--temperature", type=float, default=0.0)
  p.add_argument("--remasking", default="low_confidence")
  p.add_argument("--cfg_scale", type=float, default=0.0)
  p.add_argument("--remdm_number", type=int, default=1)
  p.add_argument("--eta", type=float, default=None, help="ReMDM eta of a strategy sampler")
  p.add_argument("--top_p", type=float, default=None)
  p.add_argument("--precision", default="exact32", help="exact32 | float64 (enables x64)")
  p.add_argument("--logits_eos_inf", action="store_true")
  p.add_argument("--confidence_eos_eot_inf", action="store_true")
  p.add_argument("--official_eos_quirk", action="store_true")
  p.add_argument("--stop_at_eos", default=None, choices=[None, "true", "false"])
  p.add_argument("--mask_id", type=int, default=None, help="default: config.json mask_token_id")
  p.add_argument("--eos_id", type=int, default=None)
  p.add_argument("--eot_id", type=int, default=None)
  p.add_argument("--pad_id", type=int, default=None)
  p.add_argument("--param_dtype", default=None, help="default: bfloat16")
  p.add_argument("--compute_dtype", default=None, help="default: bfloat16")
  p.add_argument("--mesh", default="1,-1,1", help="data,fsdp,tensor sizes (default all fsdp)")
  p.add_argument("--batch_size", type=int, default=8)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--cache", default="none", help="KV cache mode: none | prefix | dual")
  p.add_argument("--refresh_every", type=int, default=0,
                 help="refresh the cache every k steps (0 = once per block)")
  p.add_argument("--commit", default="fixed",
                 help="commit rule: fixed | threshold | factor | eb (adaptive: llada, llada_conf)")
  p.add_argument("--threshold", type=float, default=0.9, help="tau of --commit=threshold")
  p.add_argument("--factor", type=float, default=1.0, help="factor of --commit=factor")
  p.add_argument("--eb_gamma", type=float, default=1e-3, help="entropy bound of --commit=eb")


def gen_config_from_args(args, mcfg) -> GenConfig:
  """GenConfig from parsed flags and the model config (ids default to the model's)."""
  strategy = args.sampler in STRATEGIES
  if not strategy and args.sampler not in RULES:
    raise ValueError(f"--sampler={args.sampler!r} is not one of {RULES + STRATEGIES}")
  nb = args.gen_length // max(args.block_length, 1)
  sampler = None
  if strategy:
    sampler = SamplerConfig(strategy=args.sampler, num_steps=max(args.steps // max(nb, 1), 1),
                            eta=args.eta, top_p=args.top_p,
                            precision="float64" if args.precision == "float64" else "exact32",
                            time_independent=True)
  stop = None if args.stop_at_eos is None else args.stop_at_eos == "true"
  pick = lambda v, d: d if v is None else v
  return GenConfig(
      rule="strategy" if strategy else args.sampler, gen_length=args.gen_length,
      block_length=args.block_length, steps=args.steps, temperature=args.temperature,
      remasking=args.remasking, cfg_scale=args.cfg_scale, remdm_number=args.remdm_number,
      logits_eos_inf=args.logits_eos_inf, confidence_eos_eot_inf=args.confidence_eos_eot_inf,
      official_eos_quirk=args.official_eos_quirk, stop_at_eos=stop, precision=args.precision,
      mask_id=pick(args.mask_id, mcfg.mask_token_id), eos_id=pick(args.eos_id, mcfg.eos_token_id),
      eot_id=pick(args.eot_id, mcfg.eot_token_id), pad_id=pick(args.pad_id, mcfg.pad_token_id),
      sampler=sampler, cache=args.cache, refresh_every=args.refresh_every, commit=args.commit,
      threshold=args.threshold, factor=args.factor, eb_gamma=args.eb_gamma)


def make_generator(graphdef, cfg: GenConfig, mesh=None):
  """The block generator of `cfg` for a LLaDA graphdef (its cache callables when cfg.cache is
  prefix / dual)."""
  from remdm_jax.llm import generate as G
  from remdm_jax.llm.model import make_cache_fns, make_logits_fn
  pf, wf = make_cache_fns(graphdef, mesh=mesh) if cfg.cache != "none" else (None, None)
  return G.make_generate(make_logits_fn(graphdef), cfg, mesh=mesh, prefill_fn=pf, window_fn=wf)


def load_for_generation(args):
  """-> (model cfg, graphdef, params, tokenizer, mesh). Weights stream into the mesh."""
  import jax
  from remdm_jax.llm import weights
  from remdm_jax import sharding as mesh_lib
  try:
    shape = tuple(int(s) for s in args.mesh.split(","))
  except ValueError:
    raise ValueError(f"--mesh={args.mesh!r} must be 3 comma-separated ints") from None
  mesh = mesh_lib.make_mesh(shape)
  over = {}
  if args.param_dtype:
    over["param_dtype"] = args.param_dtype
  if args.compute_dtype:
    over["compute_dtype"] = args.compute_dtype
  mcfg, gd, params = weights.load_llada(args.model_dir, mesh=mesh, **over)
  tok = weights.Tokenizer(args.model_dir)
  del jax
  return mcfg, gd, params, tok, mesh


def run_cli(main_fn, parser: argparse.ArgumentParser, argv=None) -> int:
  """Parses, runs main_fn(args); a ValueError becomes one line on stderr and exit status 2."""
  args = parser.parse_args(argv)
  if getattr(args, "precision", None) == "float64":
    import jax
    jax.config.update("jax_enable_x64", True)
  try:
    main_fn(args)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


def _generate_main(args):
  import jax
  import numpy as np
  from remdm_jax.llm import generate as G
  if not args.prompt:
    raise ValueError("--prompt is required (repeat it for a batch)")
  mcfg, gd, params, tok, mesh = load_for_generation(args)
  cfg = gen_config_from_args(args, mcfg)
  prompts = [tok.encode(p) for p in args.prompt]
  x, am = G.left_pad(prompts, cfg.pad_id)
  gen = make_generator(gd, cfg, mesh)
  keys = jax.random.split(jax.random.key(args.seed), len(prompts))
  out, info = gen(params, x, am, keys)
  texts = G.decode_outputs(np.asarray(out), tok, stops=args.stop or (),
                           eos_token=tok.tok.id_to_token(cfg.eos_id))
  for t in texts:
    print(json.dumps({"text": t}))
  print(json.dumps({"nfe": int(info["nfe"]),
                    "row_nfe": np.asarray(info["row_nfe"]).tolist()}), file=sys.stderr)


def main(argv: Optional[list] = None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  add_generation_flags(p)
  p.add_argument("--prompt", action="append", default=[])
  p.add_argument("--stop", action="append", default=[])
  return run_cli(_generate_main, p, argv)


if __name__ == "__main__":
  sys.exit(main())
