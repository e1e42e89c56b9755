"""Token parity with NVlabs/Fast-dLLM on a trained model: our cached block decoder vs Fast-dLLM's
`generate` / `generate_with_prefix_cache` / `generate_with_dual_cache` (fixed steps, threshold,
factor) on the tiny trained Countdown LLaDA, the same weights loaded into their PyTorch model,
one held-out problem at a time (B = 1, unpadded: their functions take no attention mask).
Reports token agreement, identical rows, pass@1 and total NFE of both sides per configuration.

Fast-dLLM's code is never committed: pass a scratch copy of its `generate.py` + `model/`
(--fastdllm_src, see benchmarks/fastdllm_cpu_bench.py) and the saved Countdown parameters
(--params, written by benchmarks/countdown_cache_bench.py --save_params).

  python benchmarks/fastdllm_parity.py --fastdllm_src /tmp/fdllm_head \\
      --params /tmp/countdown_g16.npz --problems 60 --out benchmarks/results/fastdllm_parity.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--fastdllm_src", required=True)
  ap.add_argument("--params", required=True)
  ap.add_argument("--problems", type=int, default=60)
  ap.add_argument("--threshold", type=float, default=0.9)
  ap.add_argument("--factor", type=float, default=1.0)
  ap.add_argument("--out", default=None)
  a = ap.parse_args(argv)
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen="
                             "false intra_op_parallelism_threads=1").strip()
  here = os.path.dirname(os.path.abspath(__file__))
  sys.path.insert(0, os.path.dirname(here))
  sys.path.insert(0, here)
  import inspect
  import jax
  import numpy as np
  import torch
  import fastdllm_cpu_bench as FB
  from remdm_jax.fileio import atomic_open
  from remdm_jax.llm import countdown as cd
  from remdm_jax.llm import countdown_train as T
  from remdm_jax.llm import generate as G
  from remdm_jax.llm import model as M
  from remdm_jax.llm import weights as W
  from safetensors.torch import load_file
  import countdown_cache_bench as CB
  torch.set_num_threads(1)
  if not os.path.isfile(a.params):
    raise ValueError(f"--params={a.params!r} does not exist")
  fgen, LCfg, LModel = FB.import_fastdllm(a.fastdllm_src)
  held = T.held_out(cd.generate_problems(256, seed=7, **CB.TASK), [])[:a.problems]
  cfg = T.model_config(**CB.MODEL)
  gd, p0 = M.init_model(cfg, jax.random.key(0))
  z = np.load(a.params)
  params = jax.tree.unflatten(jax.tree.structure(p0), [z[f"arr_{i}"] for i in range(len(z.files))])
  with tempfile.TemporaryDirectory() as d:
    W.save_hf_checkpoint(d, cfg, params)
    sd = load_file(os.path.join(d, "model.safetensors"))
  tc = LCfg(d_model=cfg.d_model, n_heads=cfg.n_heads, n_kv_heads=cfg.n_kv_heads,
            n_layers=cfg.n_layers, mlp_hidden_size=cfg.mlp_hidden_size, mlp_ratio=2,
            vocab_size=cfg.vocab_size, embedding_size=cfg.embedding_size,
            max_sequence_length=cfg.max_sequence_length, rope=True, rope_theta=cfg.rope_theta,
            rope_full_precision=True, block_type="llama", layer_norm_type="rms",
            rms_norm_eps=cfg.rms_norm_eps, activation_type="silu", weight_tying=False,
            include_bias=False, include_qkv_bias=False, attention_dropout=0.0,
            residual_dropout=0.0, embedding_dropout=0.0, flash_attention=False,
            init_device="cpu", use_cache=False, mask_token_id=T.MASK, eos_token_id=None,
            pad_token_id=None)
  tc.use_cache = False
  tm = LModel(tc).eval()
  tm.load_state_dict(sd, strict=True)
  lf = M.make_logits_fn(gd)
  pf, wf = M.make_cache_fns(gd)
  fns = {"none": fgen.generate, "prefix": fgen.generate_with_prefix_cache,
         "dual": fgen.generate_with_dual_cache}
  rules = ["fixed", "threshold"]
  if "factor" in inspect.signature(fgen.generate).parameters:
    rules.append("factor")
  rows = []
  for rule in rules:
    for mode in ("none", "prefix", "dual"):
      kw = dict(rule="llada", gen_length=CB.G_LEN, block_length=8, steps=CB.G_LEN, cache=mode,
                mask_id=T.MASK, eos_id=T.EOS, eot_id=T.EOT, pad_id=T.PAD, stop_at_eos=False)
      fkw = dict(steps=CB.G_LEN, gen_length=CB.G_LEN, block_length=8, temperature=0.0,
                 remasking="low_confidence", mask_id=T.MASK)
      if rule == "threshold":
        kw.update(commit="threshold", threshold=a.threshold)
        fkw["threshold"] = a.threshold
      elif rule == "factor":
        kw.update(commit="factor", factor=a.factor)
        fkw["factor"] = a.factor
      gen = G.make_generate(lf, G.GenConfig(**kw), prefill_fn=pf, window_fn=wf)
      agree, same, s_o, s_t, n_o, n_t = [], 0, [], [], 0, 0
      for p in held:
        ids = np.array([T.encode(p["input"] + "\n")], np.int32)
        out, info = gen(params, ids, None, jax.random.key(0))
        with torch.no_grad():
          xt, nt = fns[mode](tm, torch.tensor(ids, dtype=torch.long), **fkw)
        o, t = np.asarray(out)[0], xt[0, ids.shape[1]:].numpy()
        agree.append(float(np.mean(o == t)))
        same += int(np.array_equal(o, t))
        s_o.append(cd.score_answer(p, T.decode(o)))
        s_t.append(cd.score_answer(p, T.decode(t)))
        n_o += int(info["nfe"])
        n_t += int(nt)
      rows.append({"rule": rule, "cache": mode, "token_agreement": float(np.mean(agree)),
                   "identical_rows": same, "problems": len(held),
                   "pass@1_ours": float(np.mean(s_o)), "pass@1_fastdllm": float(np.mean(s_t)),
                   "nfe_ours": n_o, "nfe_fastdllm": n_t})
      r = rows[-1]
      print(f"{rule:9s} {mode:6s} agree {r['token_agreement']:.4f} identical {same}/{len(held)} "
            f"pass@1 {r['pass@1_ours']:.3f} / {r['pass@1_fastdllm']:.3f} NFE {n_o} / {n_t}",
            flush=True)
  lines = [f"Tiny trained Countdown LLaDA, {len(held)} held-out problems one at a time (B = 1), "
           "G 16, block 8, steps 16, temperature 0; threshold "
           f"{a.threshold}, factor {a.factor}; ours vs Fast-dLLM ({a.fastdllm_src}).", "",
           "| rule | cache | token agreement | identical rows | pass@1 ours | pass@1 Fast-dLLM | "
           "NFE ours | NFE Fast-dLLM |", "|---|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['rule']} | {r['cache']} | {r['token_agreement']:.4f} | "
                 f"{r['identical_rows']}/{r['problems']} | {r['pass@1_ours']:.3f} | "
                 f"{r['pass@1_fastdllm']:.3f} | {r['nfe_ours']} | {r['nfe_fastdllm']} |")
  md = "\n".join(lines) + "\n"
  if a.out:
    with atomic_open(a.out) as f:
      json.dump({"args": vars(a), "rows": rows}, f, indent=1)
    with atomic_open(os.path.splitext(a.out)[0] + ".md") as f:
      f.write(md)
  print(md)
  return 0


if __name__ == "__main__":
  try:
    sys.exit(main())
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
