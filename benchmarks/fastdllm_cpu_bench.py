"""CPU side by side, in one run: our compiled block decoder (JAX, `sampling.blocks`) vs
NVlabs/Fast-dLLM's PyTorch functions (`generate`, `generate_with_prefix_cache`,
`generate_with_dual_cache`) on the SAME random LLaDA weights, {none, prefix, dual} x {fixed steps,
threshold}, batch 1 and 8 (issue 16, "Benchmark").

Their code is never committed: copy a Fast-dLLM checkout's `generate.py` and `model/` into a
scratch folder (see /work/notes/run_fastdllm_cpu.py or docs: upstream `v1/llada/`, e.g.
`git show a9b81e4:v1/llada/<file>`) and pass it as --fastdllm_src. Without it only our side runs.

Setup (as the Fast-dLLM CPU harness): their `LLaDAModelLM` with torch's default init at the small
LLaDA shape (d_model 256, 4 layers, 8 heads, MLP 768, vocabulary 32000, RoPE base 5e5, float32),
the LM head scaled by --logit_scale (a random model is otherwise never confident) and the mask
logit set to -inf on both sides (a real LLaDA never proposes it). Our model loads the same
weights (`llm.weights`). Prompt: random ids, the same on both sides. Fixed: steps = gen (one token
per step); threshold: tau = --threshold, steps = gen (Fast-dLLM's dual bound). Temperature 0.
Caches refreshed once per block on both sides.

Timing: one thread per side (torch.set_num_threads(1); XLA single-threaded Eigen), sides
alternated per configuration; reported: process CPU seconds (robust on a shared machine) and wall
seconds, medians over --repeats; tokens/s = B * gen / seconds; per-step = seconds / NFE. Our
compile time (first call) is reported separately and excluded. Agreement: the fraction of
generated tokens equal to the same side's `none` output and to the other side's output.

  python benchmarks/fastdllm_cpu_bench.py --fastdllm_src /tmp/fdllm_head \\
      --out benchmarks/results/fastdllm_cpu_side_by_side.json
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import sys
import tempfile
import time
import types


def parse(argv=None):
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--fastdllm_src", default=None,
                  help="folder with Fast-dLLM's generate.py and model/ (never committed)")
  ap.add_argument("--gen", type=int, default=256)
  ap.add_argument("--block", type=int, default=32)
  ap.add_argument("--prompt_len", type=int, default=64)
  ap.add_argument("--batches", default="1,8")
  ap.add_argument("--modes", default="none,prefix,dual")
  ap.add_argument("--rules", default="fixed,threshold")
  ap.add_argument("--threshold", type=float, default=0.9)
  ap.add_argument("--repeats", type=int, default=1)
  ap.add_argument("--threads", type=int, default=1)
  ap.add_argument("--d_model", type=int, default=256)
  ap.add_argument("--layers", type=int, default=4)
  ap.add_argument("--heads", type=int, default=8)
  ap.add_argument("--mlp", type=int, default=768)
  ap.add_argument("--vocab", type=int, default=32000)
  ap.add_argument("--logit_scale", type=float, default=12.0)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--out", default=None, help="JSON results (a .md table is written beside it)")
  return ap.parse_args(argv)


def import_fastdllm(src):
  src = os.path.abspath(src)
  if not os.path.isfile(os.path.join(src, "generate.py")):
    raise ValueError(f"--fastdllm_src={src!r} has no generate.py")
  sys.path.insert(0, src)
  try:
    import einops  # noqa: F401
  except ImportError:  # the June-2025 modeling file imports einops without using it
    stub = types.ModuleType("einops")
    stub.rearrange = None
    sys.modules["einops"] = stub
  text = open(os.path.join(src, "generate.py")).read()
  if "from .model" in text:  # HEAD uses a package-relative import: load it as a package
    pkg = types.ModuleType("fdllm")
    pkg.__path__ = [src]
    sys.modules["fdllm"] = pkg
    gen = importlib.import_module("fdllm.generate")
    mod = importlib.import_module("fdllm.model.modeling_llada")
    cfgm = importlib.import_module("fdllm.model.configuration_llada")
  else:
    gen = importlib.import_module("generate")
    mod = importlib.import_module("model.modeling_llada")
    cfgm = importlib.import_module("model.configuration_llada")
  return gen, cfgm.LLaDAConfig, mod.LLaDAModelLM


def torch_model(a, torch, LLaDAConfig, LLaDAModelLM, mask_id):
  cfg = LLaDAConfig(
      d_model=a.d_model, n_heads=a.heads, n_kv_heads=a.heads, n_layers=a.layers,
      mlp_hidden_size=a.mlp, mlp_ratio=max(1, a.mlp // a.d_model), vocab_size=a.vocab,
      embedding_size=a.vocab, max_sequence_length=max(1024, a.prompt_len + a.gen + 64),
      rope=True, rope_theta=500000.0, rope_full_precision=True, block_type="llama",
      layer_norm_type="rms", rms_norm_eps=1e-5, activation_type="silu", weight_tying=False,
      include_bias=False, include_qkv_bias=False, attention_dropout=0.0, residual_dropout=0.0,
      embedding_dropout=0.0, flash_attention=False, init_device="cpu", use_cache=False,
      mask_token_id=mask_id, eos_token_id=None, pad_token_id=None)
  cfg.use_cache = False  # transformers 5.x drops it from the kwargs
  torch.manual_seed(a.seed)
  model = LLaDAModelLM(cfg).eval()
  with torch.no_grad():
    model.model.transformer.ff_out.weight.mul_(a.logit_scale)

  def ban_mask(_m, _inp, out):
    out.logits[..., mask_id] = float("-inf")
    return out

  model.register_forward_hook(ban_mask)
  return model


def our_model(a, mask_id, state_dict=None):
  """(graphdef, params) of our LLaDA; with a torch state_dict, its weights (HF names)."""
  import jax
  import numpy as np
  from remdm_jax.llm import model as M
  from remdm_jax.llm import weights as W
  cfg = M.LLaDAConfig(d_model=a.d_model, n_heads=a.heads, n_layers=a.layers,
                      mlp_hidden_size=a.mlp, vocab_size=a.vocab, rope_theta=500000.0,
                      rms_norm_eps=1e-5, max_sequence_length=max(1024, a.prompt_len + a.gen + 64),
                      mask_token_id=mask_id, eos_token_id=mask_id - 1, eot_token_id=mask_id - 2,
                      pad_token_id=0, param_dtype="float32", compute_dtype="float32")
  if state_dict is None:
    gd, params = M.init_model(cfg, jax.random.key(a.seed))
    head = params["ff_out"]["kernel"]
    head[...] = head[...] * a.logit_scale
    return cfg, gd, params
  from safetensors.numpy import save_file
  tensors = {k: np.ascontiguousarray(v.detach().float().numpy()) for k, v in state_dict.items()
             if W.hf_key_to_path(k) is not None}
  with tempfile.TemporaryDirectory() as d:
    save_file(tensors, os.path.join(d, "model.safetensors"))
    gd, params = W.load_params(d, cfg)
  return cfg, gd, params


def main(argv=None):
  a = parse(argv)
  if a.threads > 0:  # before jax initialises its backend
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen="
                               f"false intra_op_parallelism_threads={a.threads}").strip()
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from remdm_jax.fileio import atomic_open
  from remdm_jax.llm import generate as G
  from remdm_jax.llm import model as M
  if a.threads > 0:
    torch.set_num_threads(a.threads)
  mask_id = a.vocab - 1
  fd = None
  if a.fastdllm_src:
    fgen, LCfg, LModel = import_fastdllm(a.fastdllm_src)
    tmodel = torch_model(a, torch, LCfg, LModel, mask_id)
    mcfg, gd, params = our_model(a, mask_id, tmodel.state_dict())
    fd = {"none": fgen.generate, "prefix": fgen.generate_with_prefix_cache,
          "dual": fgen.generate_with_dual_cache}
  else:
    mcfg, gd, params = our_model(a, mask_id)

  base_lf = M.make_logits_fn(gd)
  base_pf, base_wf = M.make_cache_fns(gd)

  def lf(p, x, am):
    return base_lf(p, x, am).at[..., mask_id].set(-jnp.inf)

  def pf(p, x, am, s, w):
    lg, c = base_pf(p, x, am, s, w)
    return lg.at[..., mask_id].set(-jnp.inf), c

  def wf(p, x, s, c, am, w):
    lg, c = base_wf(p, x, s, c, am, w)
    return lg.at[..., mask_id].set(-jnp.inf), c

  g = torch.Generator().manual_seed(a.seed + 1)
  batches = [int(b) for b in a.batches.split(",")]
  prompt_all = torch.randint(0, mask_id - 2, (max(batches), a.prompt_len), generator=g)
  G_, Bk = a.gen, a.block
  results, none_out = [], {}

  def timed(fn):
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0

  print(f"jax {jax.__version__} torch {torch.__version__} threads {a.threads} shape d={a.d_model}"
        f" L={a.layers} H={a.heads} V={a.vocab} prompt={a.prompt_len} gen={G_} block={Bk}",
        flush=True)
  for B in batches:
    prompt_t = prompt_all[:B].clone()
    prompt_np = prompt_t.numpy().astype(np.int32)
    for rule in a.rules.split(","):
      for mode in a.modes.split(","):
        kw = dict(rule="llada", gen_length=G_, block_length=Bk, steps=G_, cache=mode,
                  mask_id=mask_id, eos_id=mask_id - 1, eot_id=mask_id - 2, pad_id=0)
        if rule == "threshold":
          kw.update(commit="threshold", threshold=a.threshold)
        gcfg = G.GenConfig(**kw)
        gen = G.make_generate(lf, gcfg, prefill_fn=pf, window_fn=wf)
        key = jax.random.key(0)
        run_ours = lambda: jax.block_until_ready(gen(params, prompt_np, None, key))
        (_, _), c_wall, _ = timed(run_ours)  # compile + first run
        run_theirs = None
        if fd is not None:
          fkw = dict(steps=G_, gen_length=G_, block_length=Bk, temperature=0.0,
                     remasking="low_confidence", mask_id=mask_id,
                     threshold=a.threshold if rule == "threshold" else None)

          def run_theirs(fn=fd[mode], fkw=fkw):
            with torch.no_grad():
              return fn(tmodel, prompt_t.clone(), **fkw)

          with torch.no_grad():  # warm-up: one short block, not timed
            fd[mode](tmodel, prompt_t.clone(), **dict(fkw, steps=Bk, gen_length=Bk))
        ours_t, theirs_t = [], []
        for _ in range(a.repeats):  # alternate the sides
          (tok, info), w, c = timed(run_ours)
          ours_t.append((w, c))
          if run_theirs is not None:
            (x_t, nfe_t), w2, c2 = timed(run_theirs)
            theirs_t.append((w2, c2))
        tok = np.asarray(tok)
        rec = {"batch": B, "rule": rule, "mode": mode}
        sides = [("ours", tok, int(info["nfe"]), ours_t)]
        if run_theirs is not None:
          sides.append(("fastdllm", x_t[:, a.prompt_len:].numpy(), int(nfe_t), theirs_t))
        for side, t, nfe, ts in sides:
          wall = statistics.median(x[0] for x in ts)
          cpu = statistics.median(x[1] for x in ts)
          if mode == "none":
            none_out[(B, rule, side)] = t
          ref = none_out.get((B, rule, side))
          rec[side] = {"nfe": nfe, "wall_s": wall, "cpu_s": cpu, "tok_per_s_wall": B * G_ / wall,
                       "tok_per_cpu_s": B * G_ / cpu, "ms_per_step_cpu": 1e3 * cpu / nfe,
                       "masks_left": int(np.sum(t == mask_id)),
                       "agree_with_none": None if ref is None else float(np.mean(t == ref)),
                       "times": ts}
        rec["ours"]["compile_and_first_run_s"] = c_wall
        if len(sides) == 2:
          rec["agree_ours_fastdllm"] = float(np.mean(sides[0][1] == sides[1][1]))
        results.append(rec)
        line = (f"B={B} {rule:9s} {mode:6s} ours nfe {rec['ours']['nfe']:4d} cpu "
                f"{rec['ours']['cpu_s']:7.2f}s tok/cpu-s {rec['ours']['tok_per_cpu_s']:7.1f}")
        if "fastdllm" in rec:
          f = rec["fastdllm"]
          line += (f" | fastdllm nfe {f['nfe']:4d} cpu {f['cpu_s']:7.2f}s tok/cpu-s "
                   f"{f['tok_per_cpu_s']:7.1f} | ours/theirs "
                   f"{f['cpu_s'] / rec['ours']['cpu_s']:.2f}x"
                   f" agree {rec['agree_ours_fastdllm']:.3f}")
        print(line, flush=True)
  out = {"args": vars(a), "jax": jax.__version__, "torch": torch.__version__,
         "cpu": _cpu_name(), "results": results}
  if a.out:
    with atomic_open(a.out) as f:
      json.dump(out, f, indent=1)
    with atomic_open(os.path.splitext(a.out)[0] + ".md") as f:
      f.write(markdown(out))
  print(markdown(out))
  return 0


def _cpu_name():
  try:
    for line in open("/proc/cpuinfo"):
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return "unknown"


def markdown(out):
  a = out["args"]
  rows = [f"CPU {out['cpu']}, {a['threads']} thread per side, d_model {a['d_model']}, "
          f"{a['layers']} layers, V {a['vocab']}, prompt {a['prompt_len']}, gen {a['gen']}, "
          f"block {a['block']}, threshold {a['threshold']}; medians of {a['repeats']} run(s); "
          "tok/cpu-s = B * gen / process CPU seconds.", "",
          "| B | rule | cache | ours NFE | ours tok/cpu-s | ours ms/step | Fast-dLLM NFE | "
          "Fast-dLLM tok/cpu-s | Fast-dLLM ms/step | ours / Fast-dLLM | agree (ours vs FD) |",
          "|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in out["results"]:
    o, f = r["ours"], r.get("fastdllm")
    fcols = (f"{f['nfe']} | {f['tok_per_cpu_s']:.1f} | {f['ms_per_step_cpu']:.1f} | "
             f"{o['tok_per_cpu_s'] / f['tok_per_cpu_s']:.2f}x | {r['agree_ours_fastdllm']:.3f}"
             if f else "- | - | - | - | -")
    rows.append(f"| {r['batch']} | {r['rule']} | {r['mode']} | {o['nfe']} | "
                f"{o['tok_per_cpu_s']:.1f} | {o['ms_per_step_cpu']:.1f} | {fcols} |")
  return "\n".join(rows) + "\n"


if __name__ == "__main__":
  try:
    sys.exit(main())
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
