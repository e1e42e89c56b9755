"""Class-conditional MDLM on the scikit-learn 8x8 digits (SPEC_DOMAINS §I.3 "digits"; issue 11).

Tokens: [class token 17 + label, 64 pixels in 0..16 (17 grey levels)], mask id 27, V = 28, L = 65.
The existing DiT (no time conditioning) and MDLM loss; position 0 is masked in training like any
other token, and frozen (the class prompt) when sampling.

Command (CPU; checkpoints every 100 steps in <out>.train, re-run the command to resume):
  python -m remdm_jax.images.digits train-model --config=configs/digits.py --out=/tmp/digits1
  python -m remdm_jax.images.digits train-model --config=configs/digits.py:continue \
      --init=/tmp/digits1 --out=/tmp/digits2
Measured (2 CPU cores shared with other jobs, 1-2 s/step): stage 1, 600 steps, 17 min;
`continue`, 450 steps, 7 min. The shipped model (remdm_jax/assets/models/digits_mdlm) was made in
three stages (600 / 700 / 450 steps, the first two with the class token masked like a pixel):
held-out NELBO 1.377 nats/token; see the model card in remdm_jax/assets/models/README.md.
Presets: `continue` (450 steps from --init, lr 1e-3), `tiny` (40 steps, tests / smoke runs).
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
  c.checkpoint = ml_collections.ConfigDict(dict(save_every=100, keep=2))
  # class_visible: the denoiser always sees the class token (trainer.dit_spec visible_prefix=1;
  # see digits.train_model).
  c.digits = ml_collections.ConfigDict(dict(batch_size=64, test_fraction=0.2, split_seed=0,
                                            class_visible=True))
  if preset in (None, ""):
    pass
  elif preset == "continue":   # the shipped model's second stage (with --init=<stage-1 folder>)
    c.optim.update(lr=1e-3, warmup_steps=20, schedule="cosine", min_lr=1e-4, ema_decay=0.99)
    # (stage 2 of the shipped model used num_steps=700, ema_decay=0.995 and class_visible=False)
    c.train.update(num_steps=450, eval_every=450)
  elif preset == "tiny":
    c.model.update(hidden_size=32, num_blocks=1, cond_dim=16, num_heads=2)
    c.train.update(num_steps=40, log_every=20, eval_every=40)
    c.optim.warmup_steps = 10
  else:
    raise ValueError(f"configs/digits.py: unknown preset {preset!r}; valid presets: continue, tiny")
  return c
