"""Benchmark: image-token decoding with the MaskGIT transformer (issue 11, SPEC_DOMAINS §I.3 GPU).

Random-init MaskGIT transformer (imagenet256: 24 x 768, 16 heads, L = 257, V = 2025; or --tiny),
batch B (64), for T in --num-iter (16, 32, 64) and every decoding strategy: the time to compile the
whole decode (one XLA program per (strategy, T): AOT `jit(...).lower(...).compile()`, then the
compiled executable is called directly, so no retracing and no host round-trip inside a decode),
and the median decode time over --repeats runs -> images/s and NFE/s (B * T forward passes).
Also reports one bare forward pass, and `forward_scan`, a lower bound: T forward passes in a
`lax.fori_loop` with an argmax write-back (no sampling work), so the strategies' overhead over the
network shows. Strategies of `remdm_jax.images.decode` that are not installed are reported as
unavailable. Rows go to --out (.json, atomic).

  CPU:  python benchmarks/maskgit_bench.py --tiny --batch 8 --num-iter 4,8 --out /tmp/mg.json
  GPU:  python benchmarks/maskgit_bench.py --batch 64 --num-iter 16,32,64 \
          --out benchmarks/results/maskgit_h200_b64.json [--compute-dtype bfloat16]
"""
from __future__ import annotations

import argparse
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
from remdm_jax.images import imagenet  # noqa: E402
from remdm_jax.images import maskgit as mg  # noqa: E402


def forward_scan_sampler(tokens_to_logits, num_iter, mask_id):
  """Lower bound: T forwards in a fori_loop; each writes argmax codes into the masked slots."""

  def sample(params, input_tokens, key):
    del key
    masked = input_tokens == mask_id

    def body(i, tokens):
      best = jnp.argmax(tokens_to_logits(params, tokens), axis=-1).astype(jnp.int32)
      return jnp.where(masked, best, tokens)

    return jax.lax.fori_loop(0, num_iter, body, input_tokens)

  return sample


def _block(x):
  return jax.tree.map(lambda a: a.block_until_ready(), x)


def bench(args):
  preset = "tiny" if args.tiny else "imagenet256"
  cfg = mg.MaskGITConfig.preset(preset, compute_dtype=args.compute_dtype)
  graphdef, params = mg.init_params(cfg, jax.random.PRNGKey(0))
  t2l = mg.make_tokens_to_logits(graphdef, cfg)
  b = args.batch
  rng = np.random.default_rng(0)
  tokens = np.full((b, cfg.seq_len), cfg.mask_token_id, np.int32)
  tokens[:, 0] = cfg.codebook_size + rng.integers(0, cfg.num_classes, b)
  tokens = jnp.asarray(tokens)
  key = jax.random.PRNGKey(1)
  rows = []
  common = dict(device=str(jax.devices()[0].device_kind), preset=preset, batch=b,
                compute_dtype=args.compute_dtype, params=mg.count_params(cfg))

  fwd = jax.jit(t2l).lower(params, tokens).compile()
  _block(fwd(params, tokens))
  times = []
  for _ in range(args.repeats):
    t0 = time.perf_counter()
    _block(fwd(params, tokens))
    times.append(time.perf_counter() - t0)
  fwd_s = statistics.median(times)
  flops = mg.flops_per_forward(cfg, b)
  rows.append(dict(common, strategy="forward", num_iter=1, seconds=fwd_s,
                   tflops=flops / fwd_s / 1e12))
  print(f"forward B={b}: {fwd_s * 1e3:.2f} ms ({flops / fwd_s / 1e12:.1f} TFLOP/s)", flush=True)

  for t in args.num_iter:
    for strategy in args.strategies:
      row = dict(common, strategy=strategy, num_iter=t)
      try:
        if strategy == "forward_scan":
          sample = forward_scan_sampler(t2l, t, cfg.mask_token_id)
        else:
          opts = imagenet.DecodeOptions(strategy=strategy, num_iter=t,
                                        sampling_temperature=args.temperature,
                                        remdm_eta=args.eta)
          sample = imagenet.build_sampler(t2l, opts, codebook_size=cfg.codebook_size,
                                          mask_id=cfg.mask_token_id, seq_len=cfg.seq_len)
      except ImportError as e:
        del e
        row["unavailable"] = "remdm_jax.images.decode not installed"
        rows.append(row)
        print(f"T={t} {strategy}: unavailable ({row['unavailable']})", flush=True)
        continue
      t0 = time.perf_counter()
      compiled = jax.jit(sample).lower(params, tokens, key).compile()
      row["compile_s"] = time.perf_counter() - t0
      out = _block(compiled(params, tokens, key))  # warm-up
      assert out.shape == tokens.shape, out.shape
      times = []
      for r in range(args.repeats):
        k = jax.random.fold_in(key, r)
        t0 = time.perf_counter()
        _block(compiled(params, tokens, k))
        times.append(time.perf_counter() - t0)
      s = statistics.median(times)
      row.update(seconds=s, images_per_s=b / s, nfe_per_s=b * t / s,
                 overhead_vs_forwards=s / (t * fwd_s))
      rows.append(row)
      print(f"T={t} {strategy}: compile {row['compile_s']:.1f}s, decode {s:.3f}s, "
            f"{b / s:.1f} img/s, x{row['overhead_vs_forwards']:.2f} of T forwards", flush=True)
  return rows


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--tiny", action="store_true", help="tiny transformer (CPU smoke run)")
  ap.add_argument("--batch", type=int, default=64)
  ap.add_argument("--num-iter", default="16,32,64")
  ap.add_argument("--strategies", default="forward_scan," + ",".join(imagenet.STRATEGIES))
  ap.add_argument("--temperature", type=float, default=0.8)
  ap.add_argument("--eta", type=float, default=0.05)
  ap.add_argument("--compute-dtype", default="float32", choices=("float32", "bfloat16"))
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--out", default=None)
  args = ap.parse_args(argv)
  args.num_iter = [int(x) for x in args.num_iter.split(",")]
  args.strategies = [s for s in args.strategies.split(",") if s]
  rows = bench(args)
  if args.out:
    with atomic_open(args.out, "w") as f:
      json.dump(rows, f, indent=1)
    print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
