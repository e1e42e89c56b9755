"""Quality cost and adaptive speed of the KV cache modes and commit rules on the tiny trained
Countdown LLaDA (issue 16, "Benchmark"): pass@1, NFE per sample and tokens/s of every
(cache mode, rule) next to the no-cache fixed-step loop, on the held-out problems of the slow
test (tests/test_llm_countdown_train.py: numbers 1..6, four ops, targets <= 99; 235 held-out
inputs never trained on).

The model: `llm.countdown_train` at the slow test's settings (d 96, 2 layers, 4000 AdamW steps of
batch 64, seed 0) with the answer slot G = 16 (so blocks of 8 fit). Pass --params to load saved
parameters (an .npz of the nnx State leaves, as this script writes with --save_params), else it
trains (~4 CPU minutes on a quiet core).

Decoding: prompt slot P = 9 (left-padded), G = 16, block 8 (2 blocks), steps 16, temperature 0
(llada), all problems in one batch. Timing: process CPU and wall seconds of the generation call
after a compile run (median of --repeats); tokens/s = problems * G / seconds. NFE per sample =
the mean per-row NFE (`info["row_nfe"]`).

  python benchmarks/countdown_cache_bench.py --params /tmp/countdown_g16.npz \\
      --out benchmarks/results/countdown_cache.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time


CONFIGS = [  # (label, GenConfig overrides)
    ("none / llada fixed, 1 block (G=16)", dict(block_length=16)),
    ("none / llada fixed", dict()),
    ("prefix / llada fixed", dict(cache="prefix")),
    ("dual / llada fixed", dict(cache="dual")),
    ("dual every 4 / llada fixed", dict(cache="dual", refresh_every=4)),
    ("none / llada_conf fixed", dict(rule="llada_conf")),
    ("dual / llada_conf fixed", dict(rule="llada_conf", cache="dual")),
    ("none / remdm_llada (r=1)", dict(rule="remdm_llada")),
    ("dual / remdm_llada (r=1)", dict(rule="remdm_llada", cache="dual")),
    ("none / threshold 0.9", dict(commit="threshold", threshold=0.9)),
    ("prefix / threshold 0.9", dict(cache="prefix", commit="threshold", threshold=0.9)),
    ("dual / threshold 0.9", dict(cache="dual", commit="threshold", threshold=0.9)),
    ("dual / threshold 0.7", dict(cache="dual", commit="threshold", threshold=0.7)),
    ("none / factor 1.0", dict(commit="factor", factor=1.0)),
    ("dual / factor 1.0", dict(cache="dual", commit="factor", factor=1.0)),
    ("none / eb 0.1", dict(commit="eb", eb_gamma=0.1)),
    ("dual / eb 0.1", dict(cache="dual", commit="eb", eb_gamma=0.1)),
    ("dual / eb 1.0", dict(cache="dual", commit="eb", eb_gamma=1.0)),
]

TASK = dict(max_number=6, ops="+-*/", max_target=99)
MODEL = dict(d_model=96, n_heads=4, n_layers=2, mlp_hidden_size=256)
P_LEN, G_LEN = 9, 16


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--params", default=None, help="saved parameters (.npz of State leaves)")
  ap.add_argument("--save_params", default=None, help="write the trained parameters here")
  ap.add_argument("--train_steps", type=int, default=4000)
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--threads", type=int, default=1)
  ap.add_argument("--out", default=None)
  a = ap.parse_args(argv)
  if a.threads > 0:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen="
                               f"false intra_op_parallelism_threads={a.threads}").strip()
  import jax
  import numpy as np
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from remdm_jax.fileio import atomic_open
  from remdm_jax.llm import countdown as cd
  from remdm_jax.llm import countdown_train as T
  from remdm_jax.llm import generate as G
  from remdm_jax.llm import model as M

  held = T.held_out(cd.generate_problems(256, seed=7, **TASK), [])
  cfg = T.model_config(**MODEL)
  gd, params0 = M.init_model(cfg, jax.random.key(0))
  if a.params:
    if not os.path.isfile(a.params):
      raise ValueError(f"--params={a.params!r} does not exist")
    z = np.load(a.params)
    leaves = [z[f"arr_{i}"] for i in range(len(z.files))]
    params = jax.tree.unflatten(jax.tree.structure(params0), leaves)
    source = a.params
  else:
    train = T.without_inputs(cd.generate_problems(30000, seed=1000, **TASK), held)
    tr = T.train(train, steps=a.train_steps, seed=0, p_len=P_LEN, g_len=G_LEN, batch_size=64,
                 lr=3e-3, warmup=100, model=MODEL)
    params = tr.params
    source = f"trained here ({a.train_steps} steps)"
    if a.save_params:
      with atomic_open(a.save_params, "wb") as f:
        np.savez(f, *[np.asarray(x) for x in jax.tree.leaves(jax.device_get(params))])
  lf = M.make_logits_fn(gd)
  pf, wf = M.make_cache_fns(gd)
  x, am = T.make_batch([{"input": p["input"]} for p in held], P_LEN, G_LEN)
  prompt, am = x[:, :P_LEN], am[:, :P_LEN]
  keys = jax.random.split(jax.random.key(0), len(held))
  rows, ref_tokens = [], None
  for label, over in CONFIGS:
    kw = dict(rule="llada", gen_length=G_LEN, block_length=8, steps=G_LEN, mask_id=T.MASK,
              eos_id=T.EOS, eot_id=T.EOT, pad_id=T.PAD)
    kw.update(over)
    gcfg = G.GenConfig(**kw)
    gen = G.make_generate(lf, gcfg, prefill_fn=pf, window_fn=wf)
    run = lambda: jax.block_until_ready(gen(params, prompt, am, keys))
    run()  # compile
    ts = []
    for _ in range(a.repeats):
      t0, c0 = time.perf_counter(), time.process_time()
      out, info = run()
      ts.append((time.perf_counter() - t0, time.process_time() - c0))
    out = np.asarray(out)
    answers = [T.decode(o) for o in out]
    score = float(np.mean([cd.score_answer(p, s) for p, s in zip(held, answers)]))
    wall = statistics.median(t[0] for t in ts)
    cpu = statistics.median(t[1] for t in ts)
    n = len(held) * G_LEN
    if ref_tokens is None and label.startswith("none / llada fixed") and "1 block" not in label:
      ref_tokens = out
    rows.append({"config": label, "gen_config": {k: v for k, v in over.items()},
                 "pass@1": score, "nfe_per_sample": float(np.mean(np.asarray(info["row_nfe"]))),
                 "batch_nfe": int(info["nfe"]), "wall_s": wall, "cpu_s": cpu,
                 "tok_per_s_wall": n / wall, "tok_per_cpu_s": n / cpu,
                 "agree_with_none_fixed": None if ref_tokens is None else
                 float(np.mean(out == ref_tokens)), "times": ts})
    r = rows[-1]
    print(f"{label:36s} pass@1 {score:.3f} NFE/sample {r['nfe_per_sample']:5.2f} "
          f"tok/cpu-s {r['tok_per_cpu_s']:8.0f} tok/s wall {r['tok_per_s_wall']:8.0f}", flush=True)
  base = next(r for r in rows if r["config"] == "none / llada fixed")
  for r in rows:
    r["speedup_cpu_vs_none_fixed"] = r["tok_per_cpu_s"] / base["tok_per_cpu_s"]
  res = {"model": source, "problems": len(held), "P": P_LEN, "G": G_LEN, "block": 8,
         "jax": jax.__version__, "threads": a.threads, "rows": rows,
         "random_attempt_pass@1": T.random_pass_at_1(held, TASK["ops"])}
  md = markdown(res)
  if a.out:
    with atomic_open(a.out) as f:
      json.dump(res, f, indent=1)
    with atomic_open(os.path.splitext(a.out)[0] + ".md") as f:
      f.write(md)
  print(md)
  return 0


def markdown(res):
  lines = [f"Tiny Countdown LLaDA ({res['model']}), {res['problems']} held-out problems, P "
           f"{res['P']}, G {res['G']}, block {res['block']}, steps 16, temperature 0, one batch, "
           f"{res['threads']} CPU thread; speed-up = tokens per CPU second / none-fixed's; "
           f"random attempt pass@1 {res['random_attempt_pass@1']:.3f}.", "",
           "| cache / rule | pass@1 | NFE / sample | tok / CPU s | tok / s (wall) | speed-up |",
           "|---|---|---|---|---|---|"]
  for r in res["rows"]:
    lines.append(f"| {r['config']} | {r['pass@1']:.3f} | {r['nfe_per_sample']:.2f} | "
                 f"{r['tok_per_cpu_s']:.0f} | {r['tok_per_s_wall']:.0f} | "
                 f"{r['speedup_cpu_vs_none_fixed']:.2f}x |")
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  try:
    sys.exit(main())
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
