"""Tiny config for tests and smoke runs: 2 blocks, hidden 64, byte vocab (257), L = 32, batch 8.

Command:
  python train.py --config=configs/tiny.py --workdir=/tmp/remdm_tiny
Expected: finishes in well under a minute on a CPU; writes /tmp/remdm_tiny/metrics.jsonl (train
records every 2 steps, a validation record at step 4 and 8) and checkpoints/8; the loss is finite
(about 5-6 nats/token at the start, it barely moves in 8 steps).
Presets: `configs/tiny.py:ar` (autoregressive objective, causal model).
"""
import ml_collections
from ml_collections import config_dict


def get_config(preset=None):
  c = ml_collections.ConfigDict()
  c.model = ml_collections.ConfigDict(dict(
      preset="tiny", vocab_size=config_dict.placeholder(int), max_seq_len=32, hidden_size=64,
      num_heads=4, num_blocks=2, cond_dim=32, dropout=0.0, compute_dtype="float32",
      causal=False, remat=False, scan_blocks=False))
  c.data = ml_collections.ConfigDict(dict(
      source="bible", path=config_dict.placeholder(str), tokenizer="byte", seq_len=32,
      batch_size=8, seed=0, val_fraction=0.01, val_docs=config_dict.placeholder(int), wrap=True, wrap_group=1000,
      doc_per_line=False, text_column="text", hf_split="train",
      cache_dir=config_dict.placeholder(str)))
  c.loss = ml_collections.ConfigDict(dict(objective="mdlm", schedule="loglinear", t_eps=1e-3,
                                          antithetic=True))
  c.optim = ml_collections.ConfigDict(dict(lr=1e-3, warmup_steps=2, schedule="constant",
                                           grad_clip=1.0, ema_decay=0.999))
  c.train = ml_collections.ConfigDict(dict(num_steps=8, seed=0, log_every=2, eval_every=4,
                                           eval_batches=2, grad_accum_steps=1, prefetch=2))
  c.mesh = ml_collections.ConfigDict(dict(shape=(-1, 1, 1)))
  c.checkpoint = ml_collections.ConfigDict(dict(save_every=4, keep=2, async_save=True,
                                                resume=True))
  if preset in (None, ""):
    pass
  elif preset == "ar":
    c.model.causal = True
    c.loss.objective = "ar"
  else:
    raise ValueError(f"configs/tiny.py: unknown preset {preset!r}; valid presets: ar")
  return c
