"""The paper's OpenWebText run (SPEC §3.3): DiT-small (169.6 M params), L = 1024, GPT-2 tokens.

Data: Hugging Face `openwebtext` saved with `datasets.load_dataset("openwebtext").save_to_disk(P)`;
the last 100,000 documents are the validation split; documents are wrapped in groups of 1,000
into [BOS] + 1022 tokens + [EOS]. The first run packs the corpus group by group into
`cache_dir` (an ~36 GB int32 .npy written in constant memory, progress on stderr, renamed into
place when complete; every host packs unless the cache is shared); later runs memory-map it.
Command (8 GPUs or a TPU pod slice; one process per host, same command on every host):
  python train.py --config=configs/owt_small.py --workdir=gs://.../owt_small \
      --config.data.path=/data/openwebtext_saved --config.data.cache_dir=/data/cache
Multi-host GPU: add --config.distributed.coordinator_address=host0:1234
  --config.distributed.num_processes=N --config.distributed.process_id=i  (TPU pods:
  --config.distributed.auto=True).
Expected: AdamW lr 3e-4 (2,500 warm-up steps, then constant), global batch 512, EMA 0.9999,
1,000,000 steps, grad clip 1.0, dropout 0.1, bf16 compute with float32 params; validation every
10k steps; the MDLM paper reports a PPL bound <= 23.21 at the end [UNCONFIRMED].
On GPUs add --config.model.attention_impl=cudnn (1.35x faster steps on an H100; with the
output vocabulary padded to 50304 columns at compute time, vocab_pad_multiple=128, one H100 reaches
45% of its measured bf16 matmul peak at batch 32 per GPU: benchmarks/train_bench.py).
Presets: `:fsdp` shards parameters and optimizer state over all devices (mesh (1, -1, 1)).
Memory / scale controls (same losses, tests/test_trainer.py): --config.train.grad_accum_steps=k
(k microbatches per step), --config.model.remat=True (recompute blocks in the backward pass),
--config.model.scan_blocks=True (one compiled block, lax.scan over the stacked block parameters),
--config.train.prefetch=n (batches put on the devices ahead). With a tensor axis that does not
divide the vocabulary (50258 on tensor=4) the trainer prints how many parameters stay replicated.
"""
import ml_collections
from ml_collections import config_dict


def get_config(preset=None):
  c = ml_collections.ConfigDict()
  c.model = ml_collections.ConfigDict(dict(
      preset="small", vocab_size=50258, max_seq_len=1024, hidden_size=768, num_heads=12,
      num_blocks=12, cond_dim=128, mlp_ratio=4, dropout=0.1, time_conditioning=False,
      causal=False, compute_dtype="bfloat16", attention_impl=config_dict.placeholder(str),
      vocab_pad_multiple=128, remat=False, scan_blocks=False))
  c.data = ml_collections.ConfigDict(dict(
      source="hf_disk", path=config_dict.placeholder(str), tokenizer="gpt2", seq_len=1024,
      batch_size=512, seed=0, val_docs=100_000, wrap=True, wrap_group=1000, text_column="text",
      hf_split="train", cache_dir=config_dict.placeholder(str)))
  c.loss = ml_collections.ConfigDict(dict(objective="mdlm", schedule="loglinear",
                                          schedule_eps=1e-3, t_eps=1e-3, antithetic=True))
  c.optim = ml_collections.ConfigDict(dict(
      lr=3e-4, warmup_steps=2500, schedule="constant", b1=0.9, b2=0.999, eps=1e-8,
      weight_decay=0.0, grad_clip=1.0, ema_decay=0.9999))
  c.train = ml_collections.ConfigDict(dict(num_steps=1_000_000, seed=0, log_every=100,
                                           eval_every=10_000, eval_batches=64,
                                           grad_accum_steps=1, prefetch=2))
  c.mesh = ml_collections.ConfigDict(dict(shape=(-1, 1, 1)))
  c.checkpoint = ml_collections.ConfigDict(dict(save_every=10_000, keep=3, async_save=True,
                                                resume=True))
  c.distributed = ml_collections.ConfigDict(dict(
      coordinator_address=config_dict.placeholder(str),
      num_processes=config_dict.placeholder(int), process_id=config_dict.placeholder(int),
      auto=False))
  if preset in (None, ""):
    pass
  elif preset == "fsdp":
    c.mesh.shape = (1, -1, 1)
  else:
    raise ValueError(f"configs/owt_small.py: unknown preset {preset!r}; valid presets: fsdp")
  return c
