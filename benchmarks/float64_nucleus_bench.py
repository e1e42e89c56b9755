"""Benchmark: the float64 sampler step at a GPT-2 vocabulary, sorted vs sort-free top-p.

Times (median of --iters, after compilation) at B, L, V with a cheap stand-in denoiser
(logits = a fixed [L, V] table plus a per-token bias, so the forward is ~a broadcast):
  forward           the denoiser alone;
  step              one float64 sampler step (denoiser + `transition_sample`, remdm_cap, top-p),
                    i.e. what the sampler now runs (nucleus method "select");
  nucleus sort      the top-p keep mask of that step's rows by the sorted rule (argsort + cumsum +
                    inverse argsort: what the float paths ran before);
  nucleus select    the same kept set without sorting (bisection over float64 bit patterns);
and checks that both kept sets are identical. Writes the numbers to --out (.json, atomic).

  python benchmarks/float64_nucleus_bench.py --batch 2 --seq-len 128 --vocab 50258 \
      --out /tmp/f64_nucleus.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from remdm_jax.fileio import atomic_open  # noqa: E402
from remdm_jax.sampling import SamplerConfig, make_sampler  # noqa: E402
from remdm_jax.sampling.nucleus import keep_mask_select, keep_mask_sort  # noqa: E402
from remdm_jax.sampling.sampler import KernelSpec, transition_sample  # noqa: E402
from remdm_jax.diffusion.subs import subs_log_probs  # noqa: E402


def median_time(fn, *args, iters):
  jax.block_until_ready(fn(*args))
  ts = []
  for _ in range(iters):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    ts.append(time.perf_counter() - t0)
  return statistics.median(ts)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--batch", type=int, default=2)
  ap.add_argument("--seq-len", type=int, default=128)
  ap.add_argument("--vocab", type=int, default=50258)
  ap.add_argument("--top-p", type=float, default=0.9)
  ap.add_argument("--scale", type=float, default=3.0, help="std of the stand-in logits")
  ap.add_argument("--iters", type=int, default=5)
  ap.add_argument("--out", required=True)
  a = ap.parse_args(argv)
  B, L, V, m = a.batch, a.seq_len, a.vocab, a.vocab - 1
  rng = np.random.default_rng(0)
  params = {"table": jnp.asarray(rng.normal(size=(L, V)) * a.scale, jnp.float32),
            "bias": jnp.asarray(rng.normal(size=(V,)) * 0.1, jnp.float32)}

  def denoise(p, tokens, t):
    return p["table"][None] + (tokens[..., None] == 0) * p["bias"]

  cfg = SamplerConfig(strategy="remdm_cap", num_steps=128, top_p=a.top_p, precision="float64")
  sampler = make_sampler(denoise, cfg, seq_len=L, mask_id=m)
  sched = sampler.schedule
  i = sched.n_steps // 2
  z = np.where(rng.random((B, L)) < 1.0 - sched.alpha_t[i], m, rng.integers(0, m, (B, L)))
  z = jnp.asarray(z, jnp.int32)
  spec = KernelSpec.from_config(cfg, m, sampler.unmask_buffer)
  coeffs = {k: jnp.asarray(v[i]) for k, v in sched.xs(np.float64).items()}
  tv = jnp.full((B,), sched.t[i], jnp.float32)

  fwd = jax.jit(denoise)
  step = jax.jit(lambda p, k, z: transition_sample(k, z, denoise(p, z, tv), coeffs, spec)[0])
  probs = jnp.exp(subs_log_probs(denoise(params, z, tv).astype(jnp.float64), z, m))
  ksort = jax.jit(lambda q: keep_mask_sort(q, a.top_p))
  ksel = jax.jit(lambda q: keep_mask_select(q, a.top_p))
  same = bool(jnp.all(ksort(probs) == ksel(probs)))
  res = dict(batch=B, seq_len=L, vocab=V, top_p=a.top_p, iters=a.iters,
             device=str(jax.devices()[0].device_kind), kept_sets_equal=same,
             mean_kept=float(jnp.mean(jnp.sum(ksel(probs), -1))))
  res["forward_ms"] = median_time(fwd, params, z, tv, iters=a.iters) * 1e3
  res["step_ms"] = median_time(step, params, jax.random.key(0), z, iters=a.iters) * 1e3
  res["nucleus_sort_ms"] = median_time(ksort, probs, iters=a.iters) * 1e3
  res["nucleus_select_ms"] = median_time(ksel, probs, iters=a.iters) * 1e3
  for k, v in res.items():
    print(f"{k:20s} {v:.2f}" if isinstance(v, float) else f"{k:20s} {v}")
  with atomic_open(a.out, "w") as f:
    json.dump(res, f, indent=1)
  if not same:
    raise SystemExit("kept sets differ")


if __name__ == "__main__":
  main()
