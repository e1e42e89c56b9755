"""Countdown (cd3) evaluation of a local LLaDA-architecture model with any sampler (SPEC_DOMAINS
§L.1-§L.2): 4-shot prompt, `repeats` samples per problem (10), stop at "Question:", the
reference scorer, pass@1 (c/10 estimator) and pass@10.

  python -m remdm_jax.llm.countdown_eval --model_dir=/path/LLaDA-8B-Instruct \\
      --sampler=remdm_llada --remdm_number=1 --gen_length=32 --block_length=32 --steps=32 \\
      --num_problems=256 --seed=0 --out_dir=runs/countdown_remdm

Problems: `--data=cd3_test.json` (user-supplied, {"input": "a,b,c,t", ...} records; the paper's
256 = `--limit=256`) or, without it, `--num_problems` generated offline with `--problem_seed`.
The shipped tiny model (`--model_dir=remdm_jax/assets/models/countdown_llada`, trained from
scratch by `llm.countdown_train`) gets its own format: zero-shot "a,b,c,t\n" prompts left-padded
to its prompt slot, generated problems from its task (numbers 1..6); use gen = block = steps = 15:

  python -m remdm_jax.llm.countdown_eval --model_dir=remdm_jax/assets/models/countdown_llada \\
      --sampler=remdm_llada --gen_length=15 --block_length=15 --steps=15 --repeats=1 \\
      --num_problems=64 --problem_seed=7 --out_dir=runs/countdown_tiny

(problem seed 7 = the held-out problems of its training.)
Writes (atomically) `<out_dir>/samples.jsonl` (one line per problem: input, prompt, completions,
correct, pass@1) and `<out_dir>/summary.json` (mean pass@1 / pass@10, settings, NFE, seconds).
Rows are batched `--batch_size` at a time (left-padded); row r of problem p, repeat j uses key
fold_in(fold_in(key(seed), p), j), so results do not depend on the batch size.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Optional

from remdm_jax.checks import check_seed
from remdm_jax.llm import cli
from remdm_jax.llm import countdown as cd


def evaluate(gen, params, tok, cfg, problems, *, repeats=10, batch_size=8, seed=0,
             progress=None) -> tuple[list[dict], dict]:
  """Runs `gen` (from `generate.make_generate`) on every (problem, repeat); returns (per-problem
  records, summary). Ctrl-C stops within a fraction of a second (`interrupt.call_interruptibly`):
  the records then hold the problems whose every repeat had finished, and summary["interrupted"]
  is True."""
  from remdm_jax.interrupt import call_interruptibly, deferred
  import jax
  import numpy as np
  from remdm_jax.llm import generate as G
  if repeats < 1 or batch_size < 1:
    raise ValueError(f"repeats={repeats} and batch_size={batch_size} must be >= 1")
  build = getattr(tok, "build_prompt", cd.build_prompt)  # the tiny model: zero-shot "a,b,c,t\n"
  prompts = [build(p) for p in problems]
  ids = [tok.encode(p) for p in prompts]
  rows = [(i, j) for i in range(len(problems)) for j in range(repeats)]
  base = jax.random.key(seed)
  texts: dict = {}
  nfe = 0
  row_nfe: dict = {}  # (problem, repeat) -> the model calls that row took part in
  interrupted = False
  eos_tok = cli.token_string(tok, cfg.eos_id)
  with deferred():  # a signal between two batches stops the next one (interrupt docstring)
    for s in range(0, len(rows), batch_size):
      chunk = rows[s:s + batch_size]
      pad = batch_size - len(chunk)  # keep one compiled shape: pad with copies of the last row
      chunk_full = chunk + [chunk[-1]] * pad
      x, am = G.left_pad([ids[i] for i, _ in chunk_full], cfg.pad_id)
      x, am = cli.pad_prompts_to(x, am, getattr(tok, "prompt_length", 0), cfg.pad_id)
      keys = jax.vmap(lambda i, j: jax.random.fold_in(jax.random.fold_in(base, i), j))(
          jnp_arr([i for i, _ in chunk_full]), jnp_arr([j for _, j in chunk_full]))
      try:
        out, info = call_interruptibly(lambda: jax.device_get(gen(params, x, am, keys)))
      except KeyboardInterrupt:
        interrupted = True
        break
      nfe += int(info["nfe"])
      dec = G.decode_outputs(np.asarray(out), tok, stops=cd.STOP, eos_token=eos_tok)
      # per-row model calls (a generator without row_nfe: every row took part in every call)
      rn = np.asarray(info.get("row_nfe", np.full(len(chunk_full), int(info["nfe"]))))
      for (i, j), t, r in zip(chunk, dec[:len(chunk)], rn):
        texts[(i, j)] = t
        row_nfe[(i, j)] = int(r)
      if progress:
        progress(min(s + batch_size, len(rows)), len(rows))
  records = []
  for i, p in enumerate(problems):
    if any((i, j) not in texts for j in range(repeats)):
      break  # interrupted: rows run problem by problem, so the finished ones come first
    comps = [texts[(i, j)] for j in range(repeats)]
    sc = cd.score_candidates(p, comps)
    records.append({"input": p["input"], "prompt": prompts[i], "completions": comps,
                    "nfe": [row_nfe[(i, j)] for j in range(repeats)],
                    "correct": sc["correct"], "pass@1": sc["pass@1"],
                    f"pass@{repeats}": sc[f"pass@{repeats}"]})
  n = max(len(records), 1)
  summary = {"num_problems": len(records), "repeats": repeats,
             "pass@1": sum(r["pass@1"] for r in records) / n, "interrupted": interrupted,
             f"pass@{repeats}": sum(r[f"pass@{repeats}"] for r in records) / n,
             "nfe_total": nfe,  # compiled-batch model calls, summed over batches
             # model calls per sample (info["row_nfe"]): independent of --batch_size
             "nfe_per_sample": (sum(sum(r["nfe"]) for r in records) / (n * repeats))
             if records else 0.0}
  return records, summary


def jnp_arr(v):
  import jax.numpy as jnp
  return jnp.asarray(v, jnp.uint32)


def write_outputs(out_dir: str, records: list[dict], summary: dict) -> None:
  from remdm_jax.fileio import atomic_open
  with atomic_open(os.path.join(out_dir, "samples.jsonl")) as f:
    for r in records:
      f.write(json.dumps(r) + "\n")
  with atomic_open(os.path.join(out_dir, "summary.json")) as f:
    json.dump(summary, f, indent=1, sort_keys=True)


def _model_task(model_dir: str) -> dict:
  with open(os.path.join(model_dir, "metadata.json")) as f:
    return dict(json.load(f).get("task") or {})


def check_outputs(out_dir: str, overwrite: bool) -> tuple[str, str]:
  """The two output files under --out_dir, checked BEFORE any work (the evaluation used to run
  to the end and then fail to write): ValueError (one line) if --out_dir is a file, cannot be
  created or written, or already holds results without --overwrite."""
  from remdm_jax.fileio import check_writable_folder
  if not out_dir:
    raise ValueError("--out_dir is required")
  out_dir = os.path.abspath(os.path.expanduser(out_dir))
  if os.path.lexists(out_dir) and not os.path.isdir(out_dir):
    raise ValueError(f"--out_dir={out_dir} exists and is not a folder")
  paths = []
  for name in ("samples.jsonl", "summary.json"):
    path = os.path.join(out_dir, name)
    if os.path.isdir(path):
      raise ValueError(f"--out_dir={out_dir} holds a folder named {name}; choose another "
                       "--out_dir")
    if os.path.lexists(path) and not overwrite:
      raise ValueError(f"--out_dir={out_dir}: {name} exists; pass --overwrite to replace the "
                       "results there, or choose another --out_dir")
    check_writable_folder(out_dir, "--out_dir", out_dir)
    paths.append(path)
  return tuple(paths)


def _main(args):
  if args.repeats < 1:
    raise ValueError(f"--repeats={args.repeats} must be >= 1")
  if args.limit is not None and not args.data:
    raise ValueError(f"--limit={args.limit} applies only to --data (use --num_problems for the "
                     "generated problems)")
  if args.limit is not None and args.limit < 1:
    raise ValueError(f"--limit={args.limit} must be >= 1 (omit it for every problem)")
  check_seed(args.problem_seed, "--problem_seed")
  check_outputs(args.out_dir, args.overwrite)
  if args.data:
    if not os.path.isfile(args.data):
      raise ValueError(f"--data={args.data!r} does not exist")
    problems = cd.load_problems(args.data, args.limit)
  else:
    if args.num_problems < 1:
      raise ValueError(f"--num_problems={args.num_problems} must be >= 1")
    from remdm_jax.llm import countdown_train
    task = {}
    if countdown_train.is_model_folder(args.model_dir):  # its own task (numbers 1..6)
      task = _model_task(args.model_dir)
    problems = cd.generate_problems(args.num_problems, args.problem_seed, **task)
  lm, mesh = cli.load_model(args)
  params, tok = lm.params, lm.tokenizer
  cfg = cli.gen_config_from_args(args, lm.cfg)
  gen = lm.make_generator(cfg, mesh=mesh)
  t0 = time.time()
  records, summary = evaluate(
      gen, params, tok, cfg, problems, repeats=args.repeats, batch_size=args.batch_size,
      seed=args.seed,
      progress=lambda a, b: print(f"\r{a}/{b} samples", end="", file=sys.stderr))
  print(file=sys.stderr)
  summary.update({"seconds": time.time() - t0, "model_dir": os.path.abspath(args.model_dir),
                  "sampler": args.sampler, "gen_config": {
                      k: v for k, v in vars(cfg).items() if k != "sampler"},
                  "sampler_config": None if cfg.sampler is None else vars(cfg.sampler),
                  "data": args.data or f"generated(n={args.num_problems}, "
                                       f"seed={args.problem_seed})", "seed": args.seed})
  write_outputs(args.out_dir, records, summary)
  from remdm_jax.interrupt import note_saved
  note_saved(f"the results of {len(records)} problems are in {args.out_dir}")
  if summary["interrupted"]:
    from remdm_jax.interrupt import Interrupted
    raise Interrupted(records, f"interrupted: the {len(records)} problems with every repeat "
                               f"finished are in {args.out_dir} (summary.json says "
                               "interrupted: true)")
  print(json.dumps({k: summary[k] for k in ("num_problems", "pass@1", f"pass@{args.repeats}",
                                            "nfe_per_sample", "seconds")}))


def main(argv: Optional[list] = None) -> int:
  from remdm_jax.cliargs import ArgumentParser
  from remdm_jax.interrupt import run_main
  p = ArgumentParser(prog="python -m remdm_jax.llm.countdown_eval", description=__doc__,
                     formatter_class=argparse.RawTextHelpFormatter)
  cli.add_generation_flags(p)
  p.add_argument("--data", default=None, help="cd3 JSON / JSONL file (user-supplied)")
  p.add_argument("--limit", type=int, default=None)
  p.add_argument("--num_problems", type=int, default=256)
  p.add_argument("--problem_seed", type=int, default=0)
  p.add_argument("--repeats", type=int, default=10)
  p.add_argument("--out_dir", default=None,
                 help="results folder (samples.jsonl, summary.json); required")
  p.add_argument("--overwrite", action="store_true",
                 help="replace samples.jsonl / summary.json already in --out_dir")
  # Ctrl-C / SIGTERM anywhere: one line, the finished problems written (interrupt.run_main)
  return run_main(cli.run_cli, _main, p, argv, prog="llm.countdown_eval")


if __name__ == "__main__":
  sys.exit(main())
