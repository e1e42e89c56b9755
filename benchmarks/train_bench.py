"""Training-step throughput and model FLOP utilisation (MFU).

  python benchmarks/train_bench.py                                  # tiny model, CPU
  python benchmarks/train_bench.py --preset small --seq_len 1024 --batch 16 \
      --nominal_tflops 989 --out /tmp/train_bench.json               # DiT-small on one H100

Measures, in the same run:
  * tokens/s of the jitted, sharded train step (AdamW + EMA, bf16 compute, float32 params) on
    random tokens, averaged over `--steps` steps after `--warmup` steps (compilation excluded);
  * model FLOPs/s = tokens/s x `models.dit.flops_per_token(cfg, L, training=True)`;
  * the machine's bf16 matmul peak: a loop of big `jnp.dot`s (`--matmul_size`) per device;
  * MFU against that measured peak and against `--nominal_tflops` (per device) if given.
Writes a JSON record to `--out` (temp file + rename) and prints it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def measure_matmul_peak(size: int, iters: int, dtype="bfloat16") -> float:
  """Sustained FLOP/s of a chain of [size, size] matmuls on EVERY local device (sum)."""
  import jax
  import jax.numpy as jnp

  def chain(a, b):
    def body(_, x):
      return jnp.dot(x, b, preferred_element_type=jnp.float32).astype(a.dtype) * 0.5
    return jax.lax.fori_loop(0, iters, body, a)

  devs = jax.local_devices()
  f = jax.pmap(chain) if len(devs) > 1 else jax.jit(chain)
  key = jax.random.PRNGKey(0)
  shape = (len(devs), size, size) if len(devs) > 1 else (size, size)
  a = jax.random.normal(key, shape, jnp.float32).astype(dtype)
  b = (jax.random.normal(jax.random.fold_in(key, 1), shape, jnp.float32) / size**0.5).astype(dtype)
  jax.block_until_ready(f(a, b))  # compile
  best = float("inf")
  for _ in range(3):
    t = time.perf_counter()
    jax.block_until_ready(f(a, b))
    best = min(best, time.perf_counter() - t)
  return 2.0 * size**3 * iters * len(devs) / best


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--preset", default="tiny", help="DiTConfig preset: tiny | bible_byte | small")
  p.add_argument("--seq_len", type=int, default=None, help="L (default: 32 tiny, 1024 small)")
  p.add_argument("--batch", type=int, default=None, help="global batch (default: 8 x devices)")
  p.add_argument("--compute_dtype", default="bfloat16")
  p.add_argument("--attention_impl", default=None, help="None | xla | cudnn")
  p.add_argument("--dropout", type=float, default=0.1)
  p.add_argument("--vocab_pad_multiple", type=int, default=None,
                 help="pad the output linear to a multiple of this many columns at compute time "
                      "(e.g. 128: 50258 -> 50304); parameters keep their shapes")
  p.add_argument("--f32_backward", action="store_true",
                 help="JAX's default float32 backward matmuls (backward_in_compute_dtype=False)")
  p.add_argument("--mesh", default="-1,1,1", help="data,fsdp,tensor sizes")
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--matmul_size", type=int, default=None, help="default 8192 on GPU/TPU, 512 CPU")
  p.add_argument("--matmul_iters", type=int, default=None)
  p.add_argument("--nominal_tflops", type=float, default=None,
                 help="nominal bf16 peak per device in TFLOP/s (H100 SXM dense: 989)")
  p.add_argument("--out", default=None, help="JSON output path")
  args = p.parse_args(argv)

  import jax
  import numpy as np

  from remdm_jax.data import DataConfig
  from remdm_jax.diffusion.losses import LossConfig
  from remdm_jax.models import dit
  from remdm_jax import sharding as mesh_lib
  from remdm_jax.training import trainer as T

  platform = jax.devices()[0].platform
  n_dev = jax.device_count()
  seq_len = args.seq_len or (1024 if args.preset == "small" else 32 if args.preset == "tiny"
                             else 128)
  batch = args.batch or 8 * n_dev
  model = dit.DiTConfig.preset(args.preset, max_seq_len=max(seq_len, 32),
                               compute_dtype=args.compute_dtype, dropout=args.dropout,
                               attention_impl=args.attention_impl,
                               vocab_pad_multiple=args.vocab_pad_multiple,
                               backward_in_compute_dtype=not args.f32_backward)
  cfg = T.ExperimentConfig(
      model=model, data=DataConfig(seq_len=seq_len, batch_size=batch),
      loss=LossConfig(mask_id=model.vocab_size - 1),
      optim=T.OptimConfig(warmup_steps=0), train=T.TrainConfig(num_steps=args.steps + args.warmup))
  mesh = mesh_lib.make_mesh(tuple(int(s) for s in args.mesh.split(",")))
  tr = T.Trainer(cfg, mesh)
  state = tr.init_state()
  rng = np.random.default_rng(0)
  batches = [tr.put_batch(rng.integers(0, model.vocab_size - 1, (batch, seq_len), dtype=np.int32))
             for _ in range(2)]
  t0 = time.perf_counter()
  for i in range(args.warmup):
    state, m = tr.train_step(state, batches[i % 2])
  jax.block_until_ready(m)
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  for i in range(args.steps):
    state, m = tr.train_step(state, batches[i % 2])
  jax.block_until_ready(m)
  dt = (time.perf_counter() - t0) / args.steps
  tokens_per_s = batch * seq_len / dt
  fpt = dit.flops_per_token(model, seq_len, training=True)
  model_flops = tokens_per_s * fpt

  accel = platform in ("gpu", "tpu", "cuda", "rocm")
  size = args.matmul_size or (8192 if accel else 512)
  iters = args.matmul_iters or (50 if accel else 10)
  peak = measure_matmul_peak(size, iters)
  rec = {
      "device": str(jax.devices()[0].device_kind), "platform": platform, "num_devices": n_dev,
      "preset": args.preset, "params": dit.count_params(model), "seq_len": seq_len,
      "batch": batch, "compute_dtype": args.compute_dtype, "attention_impl": args.attention_impl,
      "vocab_pad_multiple": args.vocab_pad_multiple,
      "backward_in_compute_dtype": not args.f32_backward,
      "mesh": dict(mesh.shape), "step_ms": dt * 1e3, "tokens_per_s": tokens_per_s,
      "first_steps_s (compile)": compile_s, "flops_per_token": fpt,
      "model_tflops": model_flops / 1e12, "measured_bf16_matmul_tflops": peak / 1e12,
      "matmul_size": size, "mfu_vs_measured": model_flops / peak,
      "loss": float(m["loss"]),
  }
  if args.nominal_tflops:
    rec["nominal_tflops_per_device"] = args.nominal_tflops
    rec["mfu_vs_nominal"] = model_flops / (args.nominal_tflops * 1e12 * n_dev)
  text = json.dumps(rec, indent=2)
  print(text)
  if args.out:
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
      f.write(text + "\n")
    os.replace(tmp, args.out)
  return rec


if __name__ == "__main__":
  main()
