"""MDLM / ReMDM / AR training: one code path for 1 CPU, 8 GPUs or a TPU pod (SPEC §3).

Pieces (each usable alone; `train` strings them together):
  * `make_optimizer`: AdamW (b1 0.9, b2 0.999, eps 1e-8, wd 0) after clipping the global gradient
    norm; learning rate: linear warm-up from 0 over `warmup_steps`, then constant or cosine decay
    to `min_lr` (SPEC §3.3). optax evaluates the schedule at the number of updates done so far,
    so update n (0-based) uses lr(n) and the first update uses lr(0) = 0 (as the reference's
    LambdaLR warm-up does).
  * `TrainState`: step, params (float32), opt_state, ema_params, key (raw uint32[2]).
  * EMA after every optimizer step: decay_n = min(decay_max, (1 + n)/(10 + n)), n = number of
    updates including the current one; ema <- decay_n ema + (1 - decay_n) params (SPEC §3.3).
  * `Trainer`: builds the mesh shardings, the sharded initialiser (jit with out_shardings, straight
    from abstract shapes, nothing materialised on one host first; every optimizer-state leaf,
    optax's scalar `count` included, gets an explicit NamedSharding), the jitted train step
    (in/out shardings, donated state) and the eval step (EMA params, no dropout).
    Randomness of step n: fold_in(state.key, n) -> (loss key, dropout key); so a resumed run
    draws exactly the same numbers as an uninterrupted one.
  * `train(config, workdir)`: the loop: progress line + JSONL metrics every `log_every` steps,
    validation every `eval_every` steps, orbax checkpoints every `save_every` steps (state + data
    iterator position), resume from the latest checkpoint, stop with FloatingPointError on a
    non-finite loss (the bad state is never saved: losses are checked before every save).
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding

from remdm_jax.training import mesh as mesh_lib

LR_SCHEDULES = ("constant", "cosine")


# ----------------------------------------------------------------------------------------------
# configs
# ----------------------------------------------------------------------------------------------

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
  """

  num_steps: int = 1000
  seed: int = 0
  log_every: int = 50
  eval_every: int = 1000
  eval_batches: int = 16
  eval_seed: int = 1234

  def __post_init__(self):
    s = "train"
    _check(self.num_steps >= 1, s, "num_steps", self.num_steps, "must be >= 1")
    _check(self.log_every >= 1, s, "log_every", self.log_every, "must be >= 1")
    _check(self.eval_every >= 0, s, "eval_every", self.eval_every, "must be >= 0")
    _check(0 <= self.seed < 2**32, s, "seed", self.seed, "must lie in [0, 2**32)")


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
class ExperimentConfig:
  """Everything `train` needs (built from an ml_collections config by `config_utils`)."""

  model: Any  # remdm_jax.models.dit.DiTConfig
  data: Any  # remdm_jax.data.DataConfig
  loss: Any  # remdm_jax.losses.LossConfig
  optim: OptimConfig = OptimConfig()
  train: TrainConfig = TrainConfig()
  mesh: mesh_lib.MeshConfig = mesh_lib.MeshConfig()
  checkpoint: CheckpointConfig = CheckpointConfig()
  distributed: Any = None  # remdm_jax.distributed.DistributedConfig

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------------
# optimizer, state
# ----------------------------------------------------------------------------------------------

def make_lr_schedule(cfg: OptimConfig, num_steps: int) -> optax.Schedule:
  """lr(n) for update n = 0, 1, ...: n/warmup * lr during warm-up, then constant or cosine."""
  if cfg.schedule == "constant":
    if cfg.warmup_steps == 0:
      return optax.constant_schedule(cfg.lr)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, cfg.lr, cfg.warmup_steps), optax.constant_schedule(cfg.lr)],
        [cfg.warmup_steps])
  decay_steps = cfg.decay_steps or num_steps
  if decay_steps <= cfg.warmup_steps:
    raise ValueError(f"optim.schedule='cosine' needs train.num_steps / optim.decay_steps="
                     f"{decay_steps} > optim.warmup_steps={cfg.warmup_steps}")
  return optax.warmup_cosine_decay_schedule(0.0, cfg.lr, cfg.warmup_steps, decay_steps,
                                            end_value=cfg.min_lr)


def make_optimizer(cfg: OptimConfig, num_steps: int):
  """-> (optax transformation, lr schedule)."""
  lr = make_lr_schedule(cfg, num_steps)
  parts = []
  if cfg.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(cfg.grad_clip))
  parts.append(optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay))
  return optax.chain(*parts), lr


def ema_decay(n, decay_max: float):
  """decay_n = min(decay_max, (1 + n)/(10 + n)), n = updates so far including the current one."""
  n = jnp.asarray(n, jnp.float32)
  return jnp.minimum(jnp.float32(decay_max), (1.0 + n) / (10.0 + n))


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: number of optimizer updates done
  params: Any
  opt_state: Any
  ema_params: Any
  key: jax.Array  # uint32[2] raw PRNG key (fixed; step n uses fold_in(key, n))


def _opt_state_shardings(abstract_opt_state, params_shardings, params_abstract, mesh: Mesh):
  """NamedSharding for every optimizer-state leaf: a leaf whose path ends with a parameter's path
  and has its shape gets that parameter's sharding; everything else (counts, ...) is replicated."""
  by_path = {}
  for (p, sh), (_, a) in zip(jax.tree_util.tree_flatten_with_path(params_shardings)[0],
                             jax.tree_util.tree_flatten_with_path(params_abstract)[0]):
    by_path[mesh_lib._path_str(p)] = (sh, tuple(a.shape))
  rep = mesh_lib.replicated(mesh)

  def pick(path, leaf):
    parts = mesh_lib._path_str(path).split("/")
    for i in range(len(parts)):
      hit = by_path.get("/".join(parts[i:]))
      if hit is not None and hit[1] == tuple(np.shape(leaf)):
        return hit[0]
    return rep
  return jax.tree_util.tree_map_with_path(pick, abstract_opt_state)


class Trainer:
  """Jitted, sharded init / train step / eval step for one ExperimentConfig on one mesh.

  Args:
    cfg: ExperimentConfig (model, loss, optim, train, mesh sections are used here).
    mesh: a ("data", "fsdp", "tensor") mesh (`mesh_lib.make_mesh`).
  Attributes:
    state_shardings: TrainState of NamedShardings; abstract_state: TrainState of ShapeDtypeStructs
    (with .sharding) -- the restore target; param_shardings; batch_sharding.
  """

  def __init__(self, cfg: ExperimentConfig, mesh: Mesh):
    from remdm_jax import losses
    from remdm_jax.models import dit
    self.cfg, self.mesh = cfg, mesh
    self.tx, self.lr_fn = make_optimizer(cfg.optim, cfg.train.num_steps)
    self.graphdef, abstract_params = dit.abstract_params(cfg.model)
    self.apply = dit.make_apply_fn(self.graphdef)
    self.loss = losses.loss_fn(cfg.loss)
    rules = cfg.mesh.rules
    self.param_shardings = mesh_lib.param_shardings(abstract_params, mesh, rules)
    self.batch_sharding = mesh_lib.batch_sharding(mesh)
    rep = mesh_lib.replicated(mesh)
    self.replicated = rep

    model_cfg, tx = cfg.model, self.tx

    def init(seed):
      key = jax.random.PRNGKey(seed)
      k_params, k_train = jax.random.split(key)
      _, params = dit.init_params(model_cfg, k_params)
      return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                        ema_params=jax.tree.map(jnp.copy, params), key=k_train)

    abstract = jax.eval_shape(init, 0)
    opt_sh = _opt_state_shardings(abstract.opt_state, self.param_shardings, abstract.params, mesh)
    self.state_shardings = TrainState(step=rep, params=self.param_shardings, opt_state=opt_sh,
                                      ema_params=self.param_shardings, key=rep)
    self.abstract_state = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract,
        self.state_shardings)
    self._init = jax.jit(init, static_argnums=0, out_shardings=self.state_shardings)
    self.train_step = jax.jit(self._train_step, in_shardings=(self.state_shardings,
                                                             self.batch_sharding),
                              out_shardings=(self.state_shardings, rep), donate_argnums=0)
    self.eval_step = jax.jit(self._eval_step, in_shardings=(self.param_shardings,
                                                           self.batch_sharding, rep),
                             out_shardings=rep)

  # -- pure functions ----------------------------------------------------------------------------
  def _train_step(self, state: TrainState, batch: jax.Array):
    """One AdamW update + EMA. batch: int32 [B, L] global ([B, L + 1] with the class label in the
    last column when loss.num_classes > 0; the loss splits it and passes `labels=` to the model).
    Returns (state, metrics)."""
    step_key = jax.random.fold_in(state.key, state.step)
    loss_key, drop_key = jax.random.split(step_key)
    drop_key = drop_key if self.cfg.model.dropout > 0 else None

    def objective(params):
      apply_fn = lambda z, sigma, **kw: self.apply(params, z, sigma, dropout_key=drop_key, **kw)
      return self.loss(apply_fn, batch, loss_key)

    (loss, aux), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    n = state.step + 1
    d = ema_decay(n, self.cfg.optim.ema_decay)
    ema = jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, state.ema_params, params)
    metrics = dict(aux)
    metrics.update(loss=loss, grad_norm=optax.global_norm(grads), lr=self.lr_fn(state.step),
                   ema_decay=d)
    return TrainState(step=n, params=params, opt_state=opt_state, ema_params=ema,
                      key=state.key), metrics

  def _eval_step(self, params, batch: jax.Array, key: jax.Array):
    """NELBO of a batch under `params` (the EMA params), no dropout. Returns aux + loss."""
    loss, aux = self.loss(lambda z, sigma, **kw: self.apply(params, z, sigma, **kw), batch, key)
    return dict(aux, loss=loss)

  # -- helpers -----------------------------------------------------------------------------------
  def init_state(self, seed: int | None = None) -> TrainState:
    """Sharded initial state, created directly on the devices (seed default: train.seed)."""
    seed = self.cfg.train.seed if seed is None else seed
    return self._init(int(seed))

  def put_batch(self, local_batch: np.ndarray) -> jax.Array:
    """This process's rows [B/P, L] -> the global [B, L] array sharded over ("data", "fsdp")."""
    return jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(local_batch))

  def evaluate(self, state: TrainState, batches) -> dict[str, float]:
    """Mean of the eval metrics over `batches` (iterable of local numpy batches)."""
    base = jax.random.PRNGKey(self.cfg.train.eval_seed)
    sums: dict[str, float] = {}
    count = 0
    for i, b in enumerate(batches):
      out = jax.device_get(self.eval_step(state.ema_params, self.put_batch(b),
                                          jax.random.fold_in(base, i)))
      for k, v in out.items():
        sums[k] = sums.get(k, 0.0) + float(v)
      count += 1
    if count == 0:
      return {}
    mean = {k: v / count for k, v in sums.items()}
    mean["bits"] = mean["loss"] / math.log(2.0)
    mean["nats"] = mean["loss"]
    mean["ppl_bound"] = math.exp(min(mean["loss"], 700.0))
    mean["batches"] = count
    return mean


# ----------------------------------------------------------------------------------------------
# the loop
# ----------------------------------------------------------------------------------------------

def _validate_setup(cfg: ExperimentConfig, mesh: Mesh, tokenizer) -> None:
  div = mesh_lib.batch_divisor(mesh)
  if cfg.data.batch_size % div:
    raise ValueError(f"data.batch_size={cfg.data.batch_size} is not divisible by the mesh's "
                     f"data x fsdp = {div} (mesh.shape={tuple(mesh.shape.values())})")
  if cfg.data.batch_size % jax.process_count():
    raise ValueError(f"data.batch_size={cfg.data.batch_size} is not divisible by the "
                     f"{jax.process_count()} processes")
  from remdm_jax.config_utils import validate_experiment  # objective/causal, vocab, mask id
  validate_experiment(cfg, tokenizer)
  if cfg.data.seq_len > cfg.model.max_seq_len:
    raise ValueError(f"data.seq_len={cfg.data.seq_len} exceeds model.max_seq_len="
                     f"{cfg.model.max_seq_len}")


def _load_split(cfg: ExperimentConfig, split: str, tokenizer) -> np.ndarray:
  from remdm_jax import data as data_lib
  packed = data_lib.packed_split(cfg.data, split, tokenizer)
  if len(packed):
    head = np.asarray(packed[: min(len(packed), 4096)])
    data_lib.validate_vocab(int(head.max()), cfg.model.vocab_size,
                            cfg.loss.mask_id if cfg.loss.objective != "ar" else None)
  return packed


def train(config, workdir: str, *, step_wrapper: Callable | None = None,
          log: Callable[[str], None] = print) -> dict:
  """Trains (or resumes) the experiment described by `config` in `workdir`.

  Args:
    config: ExperimentConfig or an ml_collections ConfigDict (converted by config_utils).
    workdir: output folder: metrics.jsonl, checkpoints/, config.json.
    step_wrapper: optional f(train_step) -> train_step (instrumentation / fault-injection tests).
    log: where progress lines go (process 0 only).
  Returns:
    {"step": final step, "train": last train metrics, "validation": last eval metrics}.
  Raises:
    FloatingPointError naming the step when a loss is not finite (the last good checkpoint stays).
  """
  from remdm_jax import checkpoint as ckpt_lib
  from remdm_jax import config_utils
  from remdm_jax import data as data_lib
  from remdm_jax import distributed
  from remdm_jax.tokenizers import get_tokenizer
  from remdm_jax.training.metrics import MetricsWriter, format_progress

  cfg = config if isinstance(config, ExperimentConfig) else config_utils.experiment_from_config(
      config)
  distributed.maybe_initialize(cfg.distributed)
  primary = jax.process_index() == 0
  log = log if primary else (lambda _: None)
  mesh = mesh_lib.make_mesh(cfg.mesh.shape)
  tokenizer = get_tokenizer(cfg.data.tokenizer)
  _validate_setup(cfg, mesh, tokenizer)

  workdir = os.path.abspath(os.fspath(workdir))
  os.makedirs(workdir, exist_ok=True)
  if primary:
    ckpt_lib._write_json(os.path.join(workdir, "config.json"), cfg.to_dict())

  pi, pc = jax.process_index(), jax.process_count()
  train_packed = _load_split(cfg, "train", tokenizer)
  train_it = data_lib.make_dataset(cfg.data, "train", packed=train_packed, process_index=pi,
                                   process_count=pc)
  val_packed = None
  if cfg.train.eval_every > 0:
    val_packed = _load_split(cfg, "validation", tokenizer)
    if len(val_packed) < cfg.data.batch_size:
      log(f"warning: validation split has {len(val_packed)} sequences < batch "
          f"{cfg.data.batch_size}; validation disabled")
      val_packed = None

  trainer = Trainer(cfg, mesh)
  step_fn = trainer.train_step if step_wrapper is None else step_wrapper(trainer.train_step)
  writer = MetricsWriter(workdir, enabled=primary)
  ckptr = ckpt_lib.TrainCheckpointer(
      os.path.join(workdir, ckpt_lib.CHECKPOINTS_SUBDIR), save_every=cfg.checkpoint.save_every, keep=cfg.checkpoint.keep,
      async_save=cfg.checkpoint.async_save)
  meta = {"model_config": cfg.model.to_dict(), "config": cfg.to_dict()}

  latest = ckptr.latest_step() if cfg.checkpoint.resume else None
  if latest is not None:
    state, data_state, _ = ckptr.restore(trainer.abstract_state, latest)
    train_it.set_state(data_state)
    writer.truncate_after(latest)
    log(f"resumed from step {latest} ({ckptr.directory})")
  else:
    state = trainer.init_state()
  start = int(jax.device_get(state.step))
  num_steps = cfg.train.num_steps
  tokens_per_step = cfg.data.batch_size * cfg.data.seq_len

  def run_eval(step):
    it = data_lib.make_dataset(cfg.data, "validation", packed=val_packed, process_index=pi,
                               process_count=pc)
    n = len(it) if cfg.train.eval_batches <= 0 else min(len(it), cfg.train.eval_batches)
    res = trainer.evaluate(state, (next(it) for _ in range(n)))
    writer.write(step, "validation", res)
    log(f"step {step}/{num_steps} | validation nats/tok {res['nats']:.4f} | bits/tok "
        f"{res['bits']:.4f} | ppl bound {res['ppl_bound']:.2f}")
    return res

  pending: list[tuple[int, dict]] = []
  last_train, last_val = {}, {}
  t_mark, step_mark, paused = time.perf_counter(), start, 0.0

  def flush(step):
    """Fetches pending metrics, raises on a non-finite loss, logs the newest ones."""
    nonlocal pending, last_train, t_mark, step_mark, paused
    if not pending:
      return
    fetched = jax.device_get([m for _, m in pending])
    steps = [s for s, _ in pending]
    pending = []
    for s, m in zip(steps, fetched):
      if not np.isfinite(m["loss"]):
        ckptr.wait_until_finished()
        good = ckptr.latest_step()
        where = (f"last good checkpoint: step {good} in {ckptr.directory}" if good is not None
                 else "no checkpoint was saved")
        raise FloatingPointError(f"training stopped: loss is {float(m['loss'])} at step {s} "
                                 f"(update {s - 1} -> {s}); {where}")
    now = time.perf_counter()
    rate = ((step - step_mark) * tokens_per_step / max(now - t_mark - paused, 1e-9)
            if step > step_mark else float("nan"))
    t_mark, step_mark, paused = now, step, 0.0
    eta = (num_steps - step) * tokens_per_step / max(rate, 1e-9)
    last_train = {k: float(v) for k, v in fetched[-1].items()}
    writer.write(step, "train", dict(last_train, tokens_per_s=rate))
    log(format_progress(step, num_steps, last_train, tokens_per_s=rate, eta_s=eta))

  saved_step = latest
  try:
    for step in range(start + 1, num_steps + 1):
      batch = trainer.put_batch(next(train_it))
      state, metrics = step_fn(state, batch)
      pending.append((step, metrics))
      if step == start + 1:  # exclude compilation from the throughput
        jax.block_until_ready(metrics)
        t_mark, step_mark = time.perf_counter(), step
      last = step == num_steps
      if step % cfg.train.log_every == 0 or last:
        flush(step)
      if val_packed is not None and (step % cfg.train.eval_every == 0 or last):
        flush(step)
        t0 = time.perf_counter()
        last_val = run_eval(step)
        paused += time.perf_counter() - t0
      if ckptr.should_save(step) or last:
        flush(step)  # never save a state whose loss history is not finite
        t0 = time.perf_counter()
        ckptr.save(step, state, data_state=train_it.get_state(), meta=meta)
        paused += time.perf_counter() - t0
        saved_step = step
    ckptr.wait_until_finished()
  finally:
    ckptr.close()
    writer.close()
  return {"step": num_steps, "train": last_train, "validation": last_val,
          "checkpoint_step": saved_step, "workdir": workdir}
