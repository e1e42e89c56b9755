"""QM9 SMILES (SPEC_DOMAINS §M): the class-conditional MDLM, the noisy classifier, the AR baseline.

Data: qm9pack via RDKit (`remdm_jax.molecules.data`; pip install 'remdm-jax[chem]'), 124,289
training / 6,542 held-out molecules, L = 32, V = 35 (mask id 2, pads modelled as tokens), label =
ring count strictly above its 90th percentile (`--config.data.label=qed` for QED). The first run
processes QM9 with RDKit (~1.5 CPU minutes) and caches it in ~/.cache/remdm_jax/qm9.

Command (CPU quick start, the shipped model `remdm_jax/assets/models/qm9_cond_mdlm`):
  python train.py --config=configs/qm9.py:cpu --workdir=/tmp/qm9_cond
Expected: see the model card in remdm_jax/assets/models/README.md (held-out NELBO and validity at
T = 32 of the shipped run). Re-running the same command resumes.

Presets:
  cpu               class-conditional MDLM (d = 128, 4 blocks, 4 heads, cond_dim 64, cond dropout
                    0.1, batch 128, 4000 steps = 4 epochs), ~15 minutes on 2 idle CPU cores
                    (~19k tokens/s).
  paper             the paper's size (SPEC_DOMAINS §M.3): DiT-small 768/12/12, cond_dim 128,
                    dropout 0.1, batch 2048, 25k steps, AdamW 3e-4, cosine (1k warm-up) to 3e-6,
                    bf16, EMA 0.9999. GPU.
  classifier_cpu    the noisy classifier for D-CBG (head "classifier", mean pooling, not
                    time-conditioned) trained on masked x_t, same trunk size, 400 steps (shipped
                    as `qm9_classifier`).
  classifier_paper  the reference's "tiny" classifier: 512 hidden, 8 blocks, 8 heads, 25k steps.
  ar_cpu            the class-conditional autoregressive baseline (causal DiT, cond dropout 0.1
                    for CFG), 3000 steps planned; the shipped `qm9_ar` is this run stopped at step
                    1093 (held-out NLL 0.419 nats per predicted token, validity 0.69 at label 1).
  uncond_cpu        an unconditional MDLM on the same data (no labels).
  udlm_cpu          the class-conditional UDLM baseline (uniform noise, SPEC_DOMAINS §M.7; same
                    trunk as cpu, cond dropout 0.1 for D-CFG), time-conditioned as the reference's
                    QM9 UDLM (`time_conditioning=True`, unlike its MDLM); the reconstruction term
                    is kept (the reference trains with zero_recon_loss=True); 2000 steps, ~65
                    minutes on 2 shared CPU cores (shipped as `qm9_udlm`; expected: validation
                    NELBO ~0.57 nats/token, validity ~5% at T = 32 with label 1).
                    python train.py --config=configs/qm9.py:udlm_cpu --workdir=/tmp/qm9_udlm
  udlm_paper        the UDLM at the paper's size and optimisation (as paper). GPU.
"""
import ml_collections
from ml_collections import config_dict

PRESETS = ("cpu", "paper", "classifier_cpu", "classifier_paper", "ar_cpu", "uncond_cpu",
           "udlm_cpu", "udlm_paper")


def get_config(preset=None):
  preset = preset or "cpu"
  if preset not in PRESETS:
    raise ValueError(f"configs/qm9.py: unknown preset {preset!r}; valid presets: "
                     f"{', '.join(PRESETS)}")
  c = ml_collections.ConfigDict()
  c.model = ml_collections.ConfigDict(dict(
      vocab_size=35, max_seq_len=32, hidden_size=128, num_heads=4, num_blocks=4, cond_dim=64,
      mlp_ratio=4, dropout=0.0, time_conditioning=False, causal=False, compute_dtype="float32",
      num_classes=2, head="lm"))
  c.data = ml_collections.ConfigDict(dict(
      source="qm9", tokenizer="smiles", seq_len=32, batch_size=128, seed=0,
      cache_dir=config_dict.placeholder(str), label="ring_count"))
  c.loss = ml_collections.ConfigDict(dict(
      objective="mdlm", schedule="loglinear", schedule_eps=1e-3, t_eps=1e-3, antithetic=True,
      num_classes=2, cond_dropout=0.1))
  c.optim = ml_collections.ConfigDict(dict(
      lr=1e-3, warmup_steps=200, schedule="cosine", min_lr=1e-4, grad_clip=1.0, ema_decay=0.999))
  c.train = ml_collections.ConfigDict(dict(num_steps=4000, seed=0, log_every=100, eval_every=1000,
                                           eval_batches=16))
  c.mesh = ml_collections.ConfigDict(dict(shape=(-1, 1, 1)))
  c.checkpoint = ml_collections.ConfigDict(dict(save_every=500, keep=2, async_save=True,
                                                resume=True))
  paper_optim = dict(lr=3e-4, warmup_steps=1000, schedule="cosine", min_lr=3e-6, grad_clip=1.0,
                     ema_decay=0.9999)
  if preset in ("udlm_cpu", "udlm_paper"):
    c.model.time_conditioning = True  # the reference's QM9 UDLM (its MDLM is not time-conditioned)
    c.loss.objective = "udlm"
    c.train.num_steps = 2000
    c.train.eval_every = 500
    c.optim.warmup_steps = 50  # the shipped qm9_udlm run
    c.checkpoint.save_every = 250
  if preset in ("paper", "udlm_paper"):
    c.model.update(hidden_size=768, num_heads=12, num_blocks=12, cond_dim=128, dropout=0.1,
                   compute_dtype="bfloat16")
    c.data.batch_size = 2048
    c.optim.update(paper_optim)
    c.train.update(num_steps=25000, log_every=100, eval_every=2500)
    c.checkpoint.update(save_every=2500)
  elif preset in ("classifier_cpu", "classifier_paper"):
    c.model.head = "classifier"
    c.loss.objective = "classifier"
    c.loss.cond_dropout = 0.0
    if preset == "classifier_cpu":  # the shipped classifier's recipe
      c.train.update(num_steps=400, log_every=50, eval_every=400)
      c.optim.warmup_steps = 50
      c.checkpoint.save_every = 400
    else:
      c.model.update(hidden_size=512, num_heads=8, num_blocks=8, cond_dim=128, dropout=0.1,
                     compute_dtype="bfloat16")
      c.data.batch_size = 2048
      c.optim.update(paper_optim)
      c.train.update(num_steps=25000, log_every=100, eval_every=2500)
      c.checkpoint.update(save_every=2500)
  elif preset == "ar_cpu":  # shipped qm9_ar: this run stopped (SIGINT) at step 1093
    c.model.causal = True
    c.loss.objective = "ar"
    c.train.update(num_steps=3000, eval_every=1500)
    c.optim.warmup_steps = 100
  elif preset == "uncond_cpu":
    c.model.num_classes = 0
    c.loss.num_classes = 0
    c.loss.cond_dropout = 0.0
    c.data.label = None
  return c
