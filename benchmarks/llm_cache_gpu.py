"""GPU benchmark at the LLaDA-8B shape: KV-cache modes and commit rules of the block decoder
(issue 16, "Benchmark", third item). Random bf16 weights (sharded init on device, scanned layers),
prompt 512 + gen 256, block 32; {none, prefix, dual} x {fixed steps (256, one token per step),
threshold 0.9}, batch 1 / 8 / 32. Reports per configuration: compile seconds (AOT), generation
seconds (median of --repeats after the compile), generated tokens/s, NFE, ms per step and peak
device memory; results are written after every configuration, so a run cut short keeps what it
measured.

Random weights are never confident, so threshold decoding commits one token per step there (the
same NFE as fixed); --logit_scale multiplies the LM head (as the Fast-dLLM CPU harness does) to
give the threshold rule something to do. The whole run is kept under --budget_s (default 450 s):
a configuration is started only while the elapsed time plus the last configuration's time fits;
the order puts the headline configurations first.

  python benchmarks/llm_cache_gpu.py --out benchmarks/results/llm_cache_h200.json
  CPU smoke test of the script:  python benchmarks/llm_cache_gpu.py --tiny --out /tmp/x.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

ORDER = [  # (batch, cache, rule): headline first
    (1, "none", "fixed"), (1, "dual", "fixed"), (1, "dual", "threshold"), (8, "none", "fixed"),
    (8, "dual", "fixed"), (8, "dual", "threshold"), (1, "prefix", "fixed"),
    (8, "prefix", "fixed"), (32, "dual", "threshold"), (32, "dual", "fixed"),
    (1, "none", "threshold"), (1, "prefix", "threshold"), (8, "none", "threshold"),
    (8, "prefix", "threshold"), (32, "prefix", "threshold"), (32, "prefix", "fixed"),
    (32, "none", "fixed"), (32, "none", "threshold"),
]


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--tiny", action="store_true", help="a tiny float32 model (CPU smoke test)")
  ap.add_argument("--prompt_len", type=int, default=512)
  ap.add_argument("--gen", type=int, default=256)
  ap.add_argument("--block", type=int, default=32)
  ap.add_argument("--threshold", type=float, default=0.9)
  ap.add_argument("--logit_scale", type=float, default=1.0)
  ap.add_argument("--repeats", type=int, default=1)
  ap.add_argument("--budget_s", type=float, default=450.0)
  ap.add_argument("--batches", default="1,8,32")
  ap.add_argument("--out", default=None)
  a = ap.parse_args(argv)
  t_start = time.perf_counter()
  import jax
  import numpy as np
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from remdm_jax import sharding as mesh_lib
  from remdm_jax.fileio import atomic_open
  from remdm_jax.llm import generate as G
  from remdm_jax.llm import model as M

  if a.tiny:
    mcfg = M.LLaDAConfig.tiny(d_model=128, n_heads=4, mlp_hidden_size=256, vocab_size=1024,
                              mask_token_id=1023, eos_token_id=1022, eot_token_id=1021,
                              pad_token_id=0, scan_layers=True, max_sequence_length=4096)
  else:
    mcfg = M.LLaDAConfig.llada_8b(scan_layers=True)
  mesh = mesh_lib.make_mesh((1, -1, 1))
  t0 = time.perf_counter()
  gd, params = M.init_sharded(mcfg, jax.random.key(0), mesh)
  if a.logit_scale != 1.0:
    head = params["ff_out"]["kernel"]
    head[...] = (head[...].astype(np.float32) * a.logit_scale).astype(head[...].dtype)
  jax.block_until_ready(params)
  init_s = time.perf_counter() - t0
  lf = M.make_logits_fn(gd)
  pf, wf = M.make_cache_fns(gd, mesh=mesh)
  batches = {int(b) for b in a.batches.split(",")}
  rng = np.random.default_rng(0)
  V = mcfg.vocab_size
  prompts = rng.integers(0, V - 500, size=(max(batches), a.prompt_len)).astype(np.int32)
  results = {"device": str(jax.devices()[0].device_kind), "n_devices": jax.device_count(),
             "jax": jax.__version__, "model": "tiny" if a.tiny else "llada-8b (random bf16)",
             "args": vars(a), "init_s": init_s, "rows": []}

  def peak():
    try:
      return (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use")
    except Exception:
      return None

  def save():
    if a.out:
      with atomic_open(a.out) as f:
        json.dump(results, f, indent=1)

  last = 0.0
  for B, cache, rule in ORDER:
    if B not in batches:
      continue
    elapsed = time.perf_counter() - t_start
    if elapsed + last > a.budget_s:
      results["rows"].append({"batch": B, "cache": cache, "rule": rule,
                              "skipped": f"budget ({elapsed:.0f} s elapsed)"})
      print(f"skip B={B} {cache} {rule}: budget", flush=True)
      continue
    c0 = time.perf_counter()
    kw = dict(rule="llada", gen_length=a.gen, block_length=a.block, steps=a.gen, cache=cache,
              mask_id=mcfg.mask_token_id, eos_id=mcfg.eos_token_id, eot_id=mcfg.eot_token_id,
              pad_id=mcfg.pad_token_id)
    if rule == "threshold":
      kw.update(commit="threshold", threshold=a.threshold)
    cfg = G.GenConfig(**kw)
    gen = G.make_generate(lf, cfg, mesh=mesh, jit=False, prefill_fn=pf, window_fn=wf)
    x = prompts[:B]
    am = np.ones_like(x)
    keys = jax.random.split(jax.random.key(1), B)
    fn = jax.jit(gen.core)
    lowered = fn.lower(params, x, am, keys, None)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - c0
    ts = []
    for r in range(a.repeats + 1):  # the first call warms up
      t1 = time.perf_counter()
      out, info = compiled(params, x, am, keys, None)
      jax.block_until_ready(out)
      if r:
        ts.append(time.perf_counter() - t1)
    gen_s = statistics.median(ts)
    nfe = int(info["nfe"])
    row = {"batch": B, "cache": cache, "rule": rule, "compile_s": compile_s, "gen_s": gen_s,
           "tokens_per_s": B * a.gen / gen_s, "nfe": nfe, "ms_per_step": 1e3 * gen_s / nfe,
           "masks_left": int(np.sum(np.asarray(out) == mcfg.mask_token_id)),
           "peak_bytes": peak()}
    results["rows"].append(row)
    save()
    last = time.perf_counter() - c0
    print(f"B={B:2d} {cache:6s} {rule:9s} compile {compile_s:6.1f}s gen {gen_s:7.3f}s "
          f"tok/s {row['tokens_per_s']:8.1f} NFE {nfe:4d} ms/step {row['ms_per_step']:7.2f}",
          flush=True)
  results["total_s"] = time.perf_counter() - t_start
  save()
  print(f"total {results['total_s']:.0f} s")
  return 0


if __name__ == "__main__":
  sys.exit(main())
