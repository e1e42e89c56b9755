"""Benchmark: LLaDA block generation (official rule and ReMDM-LLaDA), one compiled program each.

Random bf16 weights are initialised on device, sharded over all devices (fsdp) by the logical-axis
rules (abstract shapes + sharded random init; never materialised on the host). For each rule and
batch size (left-padded prompts: row b has b * pad_step pads), reports compile time (AOT
lower + compile), generation time, generated tokens/s, NFE/s (denoiser calls per second; one call
= one forward of the whole batch), and the device's peak memory.

  GPU (LLaDA-8B shape):  python benchmarks/llm_bench.py --out benchmarks/results/llm_h200.json
  CPU (tiny shape):      python benchmarks/llm_bench.py --tiny --out /tmp/llm_cpu.json
  CPU, 8B shape compile-only on 8 fake devices (no weights allocated):
    XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu \
      python benchmarks/llm_bench.py --abstract --out /tmp/llm_8b_compile.json

Defaults: gen 256, block 32, steps 256 (1 token per step; ReMDM-LLaDA: 2S = 64 calls per block),
prompt length 64, batch 1 and 8.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from remdm_jax.fileio import atomic_open  # noqa: E402
from remdm_jax.llm import generate as G  # noqa: E402
from remdm_jax.llm import model as M  # noqa: E402
from remdm_jax import sharding as mesh_lib  # noqa: E402


def peak_bytes():
  try:
    stats = jax.devices()[0].memory_stats() or {}
  except Exception:  # CPU backends may not report
    stats = {}
  return stats.get("peak_bytes_in_use")


def run(args):
  if args.tiny:
    mcfg = M.LLaDAConfig.tiny(d_model=128, n_heads=4, mlp_hidden_size=256, vocab_size=1024,
                              mask_token_id=1023, eos_token_id=1022, eot_token_id=1021,
                              pad_token_id=0, param_dtype="float32", compute_dtype="float32",
                              scan_layers=args.scan_layers, max_sequence_length=4096)
  else:
    mcfg = M.LLaDAConfig.llada_8b(scan_layers=args.scan_layers)
  mesh = mesh_lib.make_mesh((1, -1, 1))
  t0 = time.perf_counter()
  if args.abstract:  # shapes only: compile the full program, run nothing
    gd, abstract = M.abstract_model(mcfg)
    shard = mesh_lib.param_shardings(abstract, mesh)
    params = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract, shard)
  else:
    gd, params = M.init_sharded(mcfg, jax.random.key(0), mesh)
    jax.block_until_ready(params)
  init_s = time.perf_counter() - t0
  logits_fn = M.make_logits_fn(gd)
  rows = []
  rng = np.random.default_rng(0)
  for rule in args.rules.split(","):
    for B in [int(b) for b in args.batch.split(",")]:
      cfg = G.GenConfig(rule=rule, gen_length=args.gen_length, block_length=args.block_length,
                        steps=args.steps, temperature=args.temperature, stop_at_eos=False,
                        mask_id=mcfg.mask_token_id, eos_id=mcfg.eos_token_id,
                        eot_id=mcfg.eot_token_id, pad_id=mcfg.pad_token_id)
      P = args.prompt_length
      prompt = rng.integers(1, mcfg.vocab_size - 8, size=(B, P)).astype(np.int32)
      am = np.ones((B, P), np.int32)
      for b in range(B):
        npad = min(b * args.pad_step, P - 1)
        prompt[b, :npad] = mcfg.pad_token_id
        am[b, :npad] = 0
      keys = jax.random.split(jax.random.key(1), B)
      gen = G.make_generate(logits_fn, cfg)
      fn = jax.jit(gen.core)
      bs = jax.sharding.NamedSharding(
          mesh, jax.sharding.PartitionSpec(("data", "fsdp")) if B % jax.device_count() == 0
          else jax.sharding.PartitionSpec())
      prompt, am, keys = (jax.device_put(jnp.asarray(a), bs) for a in (prompt, am, keys))
      t0 = time.perf_counter()
      compiled = fn.lower(params, prompt, am, keys, None).compile()
      compile_s = time.perf_counter() - t0
      if args.abstract:
        mem = compiled.memory_analysis()
        row = {"rule": rule, "batch": B, "prompt_length": P, "gen_length": args.gen_length,
               "block_length": args.block_length, "steps": args.steps,
               "compile_s": round(compile_s, 3),
               "temp_bytes_per_device": getattr(mem, "temp_size_in_bytes", None),
               "argument_bytes_per_device": getattr(mem, "argument_size_in_bytes", None)}
        print(json.dumps(row), flush=True)
        rows.append(row)
        continue
      times = []
      for _ in range(args.iters):
        t0 = time.perf_counter()
        out, info = compiled(params, prompt, am, keys, None)
        jax.block_until_ready(out)
        times.append(time.perf_counter() - t0)
      t = min(times)
      nfe = int(info["nfe"])
      out = np.asarray(out)
      assert out.shape == (B, args.gen_length)
      row = {"rule": rule, "batch": B, "prompt_length": P, "gen_length": args.gen_length,
             "block_length": args.block_length, "steps": args.steps, "nfe": nfe,
             "compile_s": round(compile_s, 3), "generate_s": round(t, 4),
             "tokens_per_s": round(B * args.gen_length / t, 2), "nfe_per_s": round(nfe / t, 2),
             "peak_bytes": peak_bytes(), "masks_left": int(np.sum(out == cfg.mask_id))}
      print(json.dumps(row), flush=True)
      rows.append(row)
  meta = {"device": str(jax.devices()[0].device_kind), "num_devices": jax.device_count(),
          "shape": "tiny" if args.tiny else "llada_8b", "params": M.count_params(mcfg),
          "init_s": round(init_s, 2), "scan_layers": args.scan_layers,
          "param_dtype": mcfg.param_dtype, "compute_dtype": mcfg.compute_dtype}
  print(json.dumps(meta))
  if args.out:
    with atomic_open(args.out) as f:
      json.dump({"meta": meta, "rows": rows}, f, indent=1)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--tiny", action="store_true", help="CPU-sized model instead of LLaDA-8B")
  p.add_argument("--abstract", action="store_true",
                 help="compile only, from abstract sharded parameters (no weights allocated): "
                      "checks the full-shape program and reports XLA's memory analysis")
  p.add_argument("--rules", default="llada,remdm_llada")
  p.add_argument("--batch", default="1,8")
  p.add_argument("--gen_length", type=int, default=256)
  p.add_argument("--block_length", type=int, default=32)
  p.add_argument("--steps", type=int, default=256)
  p.add_argument("--prompt_length", type=int, default=64)
  p.add_argument("--pad_step", type=int, default=4, help="row b gets b * pad_step left pads")
  p.add_argument("--temperature", type=float, default=0.0)
  p.add_argument("--iters", type=int, default=1)
  p.add_argument("--scan_layers", type=int, default=1)
  p.add_argument("--out", default=None)
  args = p.parse_args(argv)
  args.scan_layers = bool(args.scan_layers)
  run(args)


if __name__ == "__main__":
  main()
