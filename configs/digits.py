"""Class-conditional MDLM on the scikit-learn 8x8 digits (SPEC_DOMAINS §I.3 "digits"; issue 11).

Tokens: [class token 17 + label, 64 pixels in 0..16 (17 grey levels)], mask id 27, V = 28, L = 65.
The existing DiT (no time conditioning) and MDLM loss; position 0 is masked in training like any
other token, and frozen (the class prompt) when sampling.

Command (CPU; the shipped model, remdm_jax/assets/models/digits_mdlm):
  python -m remdm_jax.images.digits train-model --config=configs/digits.py \
      --out=remdm_jax/assets/models/digits_mdlm
Expected: 1,500 steps x batch 64 at ~0.1 s/step on 2 busy CPU cores (a few minutes); the held-out
NELBO falls from ~3.3 to ~1.2 nats/token (see the model card in remdm_jax/assets/models/README.md).
Presets: `configs/digits.py:tiny` (40 steps, for tests / smoke runs).
"""
import ml_collections


def get_config(preset=None):
  c = ml_collections.ConfigDict()
  c.model = ml_collections.ConfigDict(dict(
      vocab_size=28, max_seq_len=65, hidden_size=128, num_heads=4, num_blocks=4, cond_dim=64,
      mlp_ratio=4, dropout=0.1, time_conditioning=False, causal=False, compute_dtype="float32"))
  c.loss = ml_collections.ConfigDict(dict(objective="mdlm", schedule="loglinear", t_eps=1e-3,
                                          antithetic=True, mask_id=27))
  c.optim = ml_collections.ConfigDict(dict(lr=2e-3, warmup_steps=100, schedule="cosine",
                                           min_lr=1e-4, grad_clip=1.0, ema_decay=0.999))
  c.train = ml_collections.ConfigDict(dict(num_steps=600, seed=0, log_every=100, eval_every=300,
                                           eval_batches=0))
  c.digits = ml_collections.ConfigDict(dict(batch_size=64, test_fraction=0.2, split_seed=0))
  if preset in (None, ""):
    pass
  elif preset == "continue":   # the shipped model's second stage (with --init=<stage-1 folder>)
    c.optim.update(lr=1e-3, warmup_steps=20, schedule="cosine", min_lr=1e-4, ema_decay=0.995)
    c.train.update(num_steps=700, eval_every=350)
  elif preset == "tiny":
    c.model.update(hidden_size=32, num_blocks=1, cond_dim=16, num_heads=2)
    c.train.update(num_steps=40, log_every=20, eval_every=40)
    c.optim.warmup_steps = 10
  else:
    raise ValueError(f"configs/digits.py: unknown preset {preset!r}; valid presets: continue, tiny")
  return c
