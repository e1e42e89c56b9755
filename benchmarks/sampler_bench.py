"""Benchmark: one full sampler step (denoiser + transition kernel) vs one bare denoiser forward.

For each batch size and strategy, prints the median time of a forward, a sampler step at the middle
of the schedule (from the marginal state: a fraction 1 - alpha_t of positions masked), and the final
step, with the ratio step / forward (target on an H100: <= 1.25). Writes all rows to --out (.json
or .csv, written atomically).

  CPU:  python benchmarks/sampler_bench.py --seq-len 64 --vocab 257 --batch 1,4 --out /tmp/b.json
  GPU:  python benchmarks/sampler_bench.py --seq-len 1024 --vocab 50258 --batch 1,16,64 \
          --num-steps 1024 --top-p 0.9 --out results/sampler_bench.json [--denoiser dit]
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from remdm_jax.fileio import atomic_open  # noqa: E402
from remdm_jax.sampling import STRATEGIES, SamplerConfig, make_sampler  # noqa: E402
from remdm_jax.sampling.sampler import KernelSpec, final_step, transition_sample  # noqa: E402


def standin_denoiser(vocab, hidden, layers, dtype, key):
  """Embedding + `layers` dense GELU layers + output projection to V: [B, L, V] logits."""
  ks = jax.random.split(key, layers + 2)
  params = {"emb": jax.random.normal(ks[0], (vocab, hidden), jnp.float32) * 0.02,
            "out": (jax.random.normal(ks[1], (hidden, vocab)) / np.sqrt(hidden)).astype(dtype),
            "layers": [(jax.random.normal(k, (hidden, hidden)) / np.sqrt(hidden)).astype(dtype)
                       for k in ks[2:]]}

  def denoise(params, tokens, t):
    h = params["emb"][tokens].astype(dtype)
    for w in params["layers"]:
      h = h + jax.nn.gelu(h @ w)
    return h @ params["out"]

  return params, denoise


def dit_denoiser(vocab, seq_len, dtype, attention_impl=None):
  try:
    from flax import nnx
    from remdm_jax.models import dit
  except ImportError as e:  # pragma: no cover
    raise SystemExit(f"--denoiser dit needs remdm_jax.models.dit and flax: {e}")
  kw = dict(vocab_size=vocab, hidden_size=768, num_heads=12, num_blocks=12, cond_dim=128,
            attention_impl=attention_impl)
  cfg = dit.DiTConfig(**kw, max_seq_len=seq_len)
  model = dit.DiT(cfg, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model)
  if hasattr(dit, "cast_for_compute"):
    params = dit.cast_for_compute(params, cfg)
  return params, dit.make_denoise_fn(graphdef)


def median_time(fn, *args, iters):
  jax.block_until_ready(fn(*args))  # compile + warm up
  ts = []
  for _ in range(iters):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    ts.append(time.perf_counter() - t0)
  return statistics.median(ts)


def bench(args):
  dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[args.dtype]
  if args.denoiser == "dit":
    params, denoise = dit_denoiser(args.vocab, args.seq_len, dtype, args.attention_impl)
  else:
    params, denoise = standin_denoiser(args.vocab, args.hidden, args.layers, dtype,
                                       jax.random.key(0))
  mask_id = args.vocab - 1
  strategies = STRATEGIES if args.strategies == "all" else args.strategies.split(",")
  rows = []
  fwd = jax.jit(denoise)
  for B in [int(b) for b in args.batch.split(",")]:
    L = args.seq_len
    rng = np.random.default_rng(0)
    t_fwd = median_time(fwd, params, jnp.full((B, L), mask_id, jnp.int32),
                        jnp.ones((B,), jnp.float32), iters=args.iters)
    print(f"B={B} forward {t_fwd * 1e3:.2f} ms", flush=True)
    for strategy in strategies:
      cfg = SamplerConfig(strategy=strategy, num_steps=args.num_steps, top_p=args.top_p,
                          precision=args.precision)
      sampler = make_sampler(denoise, cfg, seq_len=L, mask_id=mask_id)
      sched = sampler.schedule
      i = sched.n_steps // 2
      frac = 1.0 - sched.alpha_t[i]
      z = np.where(rng.random((B, L)) < frac, mask_id, rng.integers(0, mask_id, (B, L)))
      z = jnp.asarray(z, jnp.int32)
      psi = jnp.where(z == mask_id, jnp.inf, 0.5).astype(jnp.float32)
      spec = KernelSpec.from_config(cfg, mask_id, sampler.unmask_buffer)
      xdt = np.float64 if args.precision == "float64" else np.float32
      coeffs = {k: jnp.asarray(v[i]) for k, v in sched.xs(xdt).items()}
      tv = jnp.full((B,), sched.t[i], jnp.float32)

      @jax.jit
      def step(params, key, z, psi):
        logits = denoise(params, z, tv)
        return transition_sample(key, z, logits, coeffs, spec,
                                 psi=psi if spec.uses_conf else None)

      @jax.jit
      def last(params, z):
        return final_step(z, denoise(params, z, tv), mask_id)

      t_step = median_time(step, params, jax.random.key(1), z, psi, iters=args.iters)
      t_final = median_time(last, params, z, iters=args.iters)
      row = dict(batch=B, seq_len=L, vocab=args.vocab, strategy=strategy,
                 num_steps=args.num_steps, n_steps=sched.n_steps, step_index=i,
                 masked_frac=float(frac), top_p=args.top_p, precision=args.precision,
                 denoiser=args.denoiser, dtype=args.dtype, unmask_buffer=sampler.unmask_buffer,
                 forward_ms=t_fwd * 1e3, step_ms=t_step * 1e3, final_ms=t_final * 1e3,
                 ratio=t_step / t_fwd, final_ratio=t_final / t_fwd,
                 device=str(jax.devices()[0].device_kind))
      if args.full:
        t_full = median_time(lambda p, k: sampler(p, k, batch_size=B), params,
                             jax.random.key(2), iters=max(1, args.iters // 5))
        row["sample_s"] = t_full
      rows.append(row)
      print(f"B={B} {strategy:14s} step {t_step * 1e3:8.2f} ms  ratio {t_step / t_fwd:5.2f}  "
            f"final {t_final * 1e3:8.2f} ms  K={sampler.unmask_buffer}"
            + (f"  sample {row['sample_s']:.2f} s" if args.full else ""), flush=True)
  return rows


def write_atomic(path, rows):
  with atomic_open(path, "w", newline="") as f:
    if path.endswith(".csv"):
      w = csv.DictWriter(f, fieldnames=sorted({k for r in rows for k in r}))
      w.writeheader()
      w.writerows(rows)
    else:
      json.dump(rows, f, indent=1)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--batch", default="1,4")
  ap.add_argument("--seq-len", type=int, default=64)
  ap.add_argument("--vocab", type=int, default=257)
  ap.add_argument("--hidden", type=int, default=256)
  ap.add_argument("--layers", type=int, default=2)
  ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  ap.add_argument("--denoiser", default="standin", choices=["standin", "dit"])
  ap.add_argument("--attention-impl", default=None, choices=[None, "xla", "cudnn"],
                  help="DiT attention kernel (GPU: cudnn)")
  ap.add_argument("--strategies", default="all")
  ap.add_argument("--num-steps", type=int, default=128)
  ap.add_argument("--top-p", type=float, default=0.9)
  ap.add_argument("--precision", default="exact32", choices=["exact32", "float64", "float32"])
  ap.add_argument("--iters", type=int, default=10)
  ap.add_argument("--full", action="store_true", help="also time a whole sample")
  ap.add_argument("--out", required=True, help="results path (.json or .csv)")
  args = ap.parse_args(argv)
  if args.precision == "float64":
    jax.config.update("jax_enable_x64", True)
  rows = bench(args)
  write_atomic(args.out, rows)
  print(f"wrote {len(rows)} rows to {args.out}")


if __name__ == "__main__":
  main()
