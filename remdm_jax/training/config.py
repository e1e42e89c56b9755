"""Config dataclasses of a training run: `OptimConfig`, `TrainConfig`, `CheckpointConfig`, the
`RunConfig` that bundles them with the mesh (any model kind) and the `ExperimentConfig` that
bundles them with the DiT's model / data / loss / mesh / distributed sections.

This module imports no trainer code (only `remdm_jax.sharding` for `MeshConfig`), so `config_utils`,
the trainer and tools can all import it without a cycle. `remdm_jax.training.trainer` re-exports
every name defined here for compatibility. Each `__post_init__` raises one-line ValueErrors
"section.field=value: why".
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

from remdm_jax.sharding import MeshConfig

LR_SCHEDULES = ("constant", "cosine")


def _check(cond: bool, section: str, field: str, value, why: str):
  if not cond:
    raise ValueError(f"{section}.{field}={value!r}: {why}")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  """AdamW + schedule + clipping + EMA (defaults: SPEC §3.3).

  Attributes:
    lr: peak learning rate.
    warmup_steps: linear warm-up from 0 to lr over this many updates.
    schedule: "constant" (after warm-up) or "cosine" (decay to min_lr at decay_steps).
    min_lr: final lr of the cosine schedule.
    decay_steps: end of the cosine decay (counted from step 0); None = train.num_steps.
    b1, b2, eps, weight_decay: AdamW.
    grad_clip: max global gradient norm; <= 0 disables clipping.
    ema_decay: decay_max of the EMA; 0 disables it (ema = params).
  """

  lr: float = 3e-4
  warmup_steps: int = 2500
  schedule: str = "constant"
  min_lr: float = 0.0
  decay_steps: int | None = None
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  weight_decay: float = 0.0
  grad_clip: float = 1.0
  ema_decay: float = 0.9999

  def __post_init__(self):
    s = "optim"
    _check(self.lr > 0 and math.isfinite(self.lr), s, "lr", self.lr, "must be a finite number > 0")
    _check(self.warmup_steps >= 0, s, "warmup_steps", self.warmup_steps, "must be >= 0")
    _check(self.schedule in LR_SCHEDULES, s, "schedule", self.schedule,
           f"must be one of {LR_SCHEDULES}")
    _check(0 <= self.min_lr <= self.lr, s, "min_lr", self.min_lr, "must lie in [0, lr]")
    _check(self.decay_steps is None or self.decay_steps > self.warmup_steps, s, "decay_steps",
           self.decay_steps, "must be None or > warmup_steps")
    _check(0 <= self.b1 < 1, s, "b1", self.b1, "must lie in [0, 1)")
    _check(0 <= self.b2 < 1, s, "b2", self.b2, "must lie in [0, 1)")
    _check(self.eps > 0, s, "eps", self.eps, "must be > 0")
    _check(self.weight_decay >= 0, s, "weight_decay", self.weight_decay, "must be >= 0")
    _check(0 <= self.ema_decay < 1, s, "ema_decay", self.ema_decay, "must lie in [0, 1)")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Loop settings.

  Attributes:
    num_steps: total optimizer steps.
    seed: seeds the parameter init and the training randomness (masking, times, dropout).
    log_every: progress line + train metrics every this many steps (also the NaN-check period).
    eval_every: validation every this many steps (and at the end); 0 disables validation.
    eval_batches: validation batches per evaluation (<= 0: the whole validation split).
    eval_seed: seed of the validation noise (same t / masks at every evaluation).
    grad_accum_steps: k >= 1: the model runs on k microbatches of B/k rows one after another
      (row i in microbatch i % k; a rematerialised `lax.scan`, so the backward pass also goes one
      microbatch at a time and the parameter gradient is accumulated over the scan) and one
      optimizer update is applied. The noise (t, masks) is drawn once for the whole batch and the
      loss is the full-batch formula, so loss and gradient equal the k = 1 ones up to float
      summation order (tests/test_trainer.py). Saves the transformer's activation memory ~k-fold;
      the [B, L, V] logits of the whole batch are still formed by the loss. With dropout each
      microbatch draws its own dropout bits. B must be divisible by k x data x fsdp.
    prefetch: number of batches placed on the devices ahead of the step that uses them (a
      background thread; 0 = none). Does not change any number.
  """

  num_steps: int = 1000
  seed: int = 0
  log_every: int = 50
  eval_every: int = 1000
  eval_batches: int = 16
  eval_seed: int = 1234
  grad_accum_steps: int = 1
  prefetch: int = 2

  def __post_init__(self):
    s = "train"
    _check(self.num_steps >= 1, s, "num_steps", self.num_steps, "must be >= 1")
    _check(self.log_every >= 1, s, "log_every", self.log_every, "must be >= 1")
    _check(self.eval_every >= 0, s, "eval_every", self.eval_every, "must be >= 0")
    _check(0 <= self.seed < 2**32, s, "seed", self.seed, "must lie in [0, 2**32)")
    _check(0 <= self.eval_seed < 2**32, s, "eval_seed", self.eval_seed, "must lie in [0, 2**32)")
    _check(self.grad_accum_steps >= 1, s, "grad_accum_steps", self.grad_accum_steps,
           "must be >= 1")
    _check(self.prefetch >= 0, s, "prefetch", self.prefetch, "must be >= 0")


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  """Checkpointing.

  Attributes:
    save_every: save every this many steps (and at the end).
    keep: keep the newest `keep` checkpoints.
    async_save: write checkpoints in the background.
    resume: continue from the latest checkpoint in `<workdir>/checkpoints` if there is one.
  """

  save_every: int = 1000
  keep: int = 3
  async_save: bool = True
  resume: bool = True

  def __post_init__(self):
    _check(self.save_every >= 1, "checkpoint", "save_every", self.save_every, "must be >= 1")
    _check(self.keep >= 1, "checkpoint", "keep", self.keep, "must be >= 1")


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """The sections of a training run that do not describe the model or its data: what
  `trainer.run` needs besides a `ModelSpec` and a batch pipeline (`ExperimentConfig` has the same
  sections and can be used in its place).

  Attributes:
    optim, train, mesh, checkpoint: as in `ExperimentConfig`.
    batch_size: global rows per step (None: not checked); must be divisible by the mesh's
      data x fsdp size and by the number of processes.
  """

  optim: OptimConfig = OptimConfig()
  train: TrainConfig = TrainConfig()
  mesh: MeshConfig = MeshConfig()
  checkpoint: CheckpointConfig = CheckpointConfig()
  batch_size: int | None = None

  def __post_init__(self):
    _check(self.batch_size is None or self.batch_size >= 1, "run", "batch_size",
           self.batch_size, "must be None or >= 1")

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  """Everything `train` needs (built from an ml_collections config by `config_utils`)."""

  model: Any  # remdm_jax.models.dit.DiTConfig
  data: Any  # remdm_jax.data.DataConfig
  loss: Any  # remdm_jax.diffusion.losses.LossConfig
  optim: OptimConfig = OptimConfig()
  train: TrainConfig = TrainConfig()
  mesh: MeshConfig = MeshConfig()
  checkpoint: CheckpointConfig = CheckpointConfig()
  distributed: Any = None  # remdm_jax.distributed.DistributedConfig

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)
