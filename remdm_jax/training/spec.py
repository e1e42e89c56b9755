"""What the one trainer is given: a model kind (`ModelSpec`), and a whole training job (`TrainJob`).

A `ModelSpec` is the trainer's whole view of a model:
  init(key) -> params: a pytree of float arrays. An nnx.State (the DiT, LLaDA) carries the logical
    axis names of every parameter on its Variables, and the trainer places each leaf on the mesh
    by the rules of `remdm_jax.sharding` (from abstract shapes: `jax.eval_shape(init)`, nothing
    materialised on one host); leaves without names (a plain dict) are replicated.
  loss(params, batch, key, train) -> (loss float32 scalar, aux dict of float32 scalars): `batch`
    is the global batch (an int32 [B, L] array, or a pytree of arrays with B leading), `key` a raw
    uint32[2] PRNG key (step n of a run gets fold_in(state key, n)); `train` is True in the train
    step (dropout, the model's training-only options) and False in the eval step.
  keys(seed) -> (parameter key, training key) (optional; default `jax.random.split(PRNGKey(seed))`).
  model_config: the JSON dict of the model's config, stored in every checkpoint (and compared
    before resuming).

`dit_spec(cfg, mesh)` is the spec of the library's DiT (`remdm_jax.models.dit`) with one of the
losses of `remdm_jax.diffusion.losses` (MDLM, ReMDM, AR, UDLM, noisy classifier; class labels as
an extra last column). The LLaDA Countdown SFT (`llm.countdown_train`) and the digits judge
(`images.digits`) build their own specs in their domains.

A `TrainJob` adds the batch pipeline and what is stored / checked around the loop; `trainer.run`
trains it.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Iterator, Mapping

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from remdm_jax import sharding as mesh_lib

LossFn = Callable[[Any, Any, jax.Array, bool], "tuple[jax.Array, Mapping[str, jax.Array]]"]


def default_keys(seed: int) -> tuple[jax.Array, jax.Array]:
  """(parameter key, training key) = split(PRNGKey(seed)) (raw uint32[2] keys)."""
  k_params, k_train = jax.random.split(jax.random.PRNGKey(seed))
  return k_params, k_train


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """A model kind as the trainer sees it (module docstring).

  Attributes:
    name: the kind ("dit", "llada", "mlp", ...); stored with checkpoints, compared on resume.
    init: key -> params pytree (float32 leaves; nnx.State with logical axis names, or a dict).
    loss: (params, batch, key, train: bool) -> (loss scalar, aux dict of scalars).
    model_config: JSON-serialisable model config dict (checkpoint meta; `save_params`).
    keys: optional seed -> (parameter key, training key); default `default_keys`.
  """

  name: str
  init: Callable[[jax.Array], Any]
  loss: LossFn
  model_config: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  keys: Callable[[int], tuple[jax.Array, jax.Array]] | None = None


@dataclasses.dataclass(frozen=True)
class TrainJob:
  """A training run for `trainer.run`.

  Attributes:
    spec: the model kind.
    config: a `RunConfig` (or an `ExperimentConfig`): sections optim, train, mesh, checkpoint.
    data: () -> (training batch iterator, eval batches factory or None). Called once, after the
      workdir checks and the resume check (so bad resumes fail before any data is loaded). The
      iterator yields this process's rows of each global batch (numpy, or a pytree of numpy
      arrays) and has `get_state() -> dict` / `set_state(dict)` (JSON; saved with checkpoints).
      The eval factory returns a fresh iterable of batches for one validation pass.
    tokens_per_step: tokens (or other units) per global batch, for the throughput and the ETA.
    meta: extra JSON stored with every checkpoint.
    config_dict: JSON written to `<workdir>/config.json` (None: nothing written).
    resume_diffs: stored checkpoint meta -> list of "field: checkpoint x vs config y" strings
      (empty = compatible); default: compares the spec's name and model_config.
    init_params: optional params pytree to start a fresh run from (instead of `spec.init`); the
      EMA starts there too. Ignored when resuming.
  """

  spec: ModelSpec
  config: Any
  data: Callable[[], "tuple[Iterator, Callable[[], Iterable] | None]"]
  tokens_per_step: int = 0
  meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  config_dict: Mapping[str, Any] | None = None
  resume_diffs: Callable[[Mapping[str, Any]], list] | None = None
  init_params: Any = None


def default_resume_diffs(spec: ModelSpec, stored: Mapping[str, Any]) -> list[str]:
  """Differences between a spec and a checkpoint's meta: the model kind and every model_config
  field (fields absent from the checkpoint are not compared)."""
  out = []
  if "kind" in stored and stored["kind"] != spec.name:
    out.append(f"model kind: checkpoint {stored['kind']!r} vs config {spec.name!r}")
  old = dict(stored.get("model_config") or {})
  new = _json_round_trip(dict(spec.model_config))
  for k in sorted(old):
    if k in new and old[k] != new[k]:
      out.append(f"model.{k}: checkpoint {old[k]!r} vs config {new[k]!r}")
  return out


def _json_round_trip(obj):
  import json
  from remdm_jax.checkpoint import json_default
  return json.loads(json.dumps(obj, default=json_default))


# ----------------------------------------------------------------------------------------------
# the DiT family
# ----------------------------------------------------------------------------------------------

def dit_spec(cfg, mesh: Mesh | None = None, *, visible_prefix: int = 0) -> ModelSpec:
  """The spec of the DiT of an `ExperimentConfig` (`cfg.model`, `cfg.loss`, `cfg.train`).

  loss(params, batch, key, train): `diffusion.losses.loss_fn(cfg.loss)` of batch int32 [B, L]
  ([B, L + 1] with the class label in the last column when loss.num_classes > 0). train=True:
  key -> (loss key, dropout key) (no dropout when model.dropout == 0), and with
  `train.grad_accum_steps` k > 1 the model runs as k microbatches (`_microbatched_apply`);
  train=False: the loss key is `key`, no dropout, one batch.

  Args:
    cfg: ExperimentConfig.
    mesh: the mesh (needed for k > 1: the microbatches are sharded like the batch).
    visible_prefix: n >= 0: the denoiser always sees the clean tokens batch[:, :n] at positions
      0..n-1 (a prompt or class token kept visible at every noise level; the loss may still mask
      them in z_t, the model input gets them back, so their NELBO terms are ~0).
  Raises:
    ValueError for visible_prefix < 0 or >= seq_len, or k > 1 without a mesh.
  """
  from remdm_jax.diffusion import losses
  from remdm_jax.models import dit
  model_cfg = cfg.model
  graphdef, _ = dit.abstract_params(model_cfg)
  apply = dit.make_apply_fn(graphdef)
  objective = losses.loss_fn(cfg.loss)
  accum = int(cfg.train.grad_accum_steps)
  dropout = model_cfg.dropout > 0
  n_vis = int(visible_prefix)
  if not 0 <= n_vis < model_cfg.max_seq_len:
    raise ValueError(f"visible_prefix={visible_prefix} must lie in [0, model.max_seq_len="
                     f"{model_cfg.max_seq_len})")
  if accum > 1 and mesh is None:
    raise ValueError(f"train.grad_accum_steps={accum} needs the mesh (dit_spec(cfg, mesh))")

  def init(key):
    return dit.init_params(model_cfg, key)[1]

  def loss(params, batch, key, train: bool):
    if train:
      loss_key, drop_key = jax.random.split(key)
      drop_key = drop_key if dropout else None
      if accum > 1:
        apply_fn = _microbatched_apply(apply, params, drop_key, accum, mesh)
      else:
        apply_fn = lambda z, sigma, **kw: apply(params, z, sigma, dropout_key=drop_key, **kw)
    else:
      loss_key = key
      apply_fn = lambda z, sigma, **kw: apply(params, z, sigma, **kw)
    if n_vis:
      inner, prefix = apply_fn, batch[:, :n_vis]
      apply_fn = lambda z, sigma, **kw: inner(z.at[:, :n_vis].set(prefix), sigma, **kw)
    return objective(apply_fn, batch, loss_key)

  return ModelSpec(name="dit", init=init, loss=loss, model_config=model_cfg.to_dict())


def _microbatched_apply(apply, params, drop_key, k: int, mesh: Mesh):
  """apply_fn(z [B, L], sigma [B]) -> logits [B, L, V] run as k microbatches.

  Microbatch j holds rows i with i % k == j (so every device's rows are spread over all
  microbatches and each microbatch is sharded like the batch). The microbatches run one after
  another in a `lax.scan` whose body is rematerialised, so the backward pass recomputes one
  microbatch's forward at a time and accumulates the parameter gradient over the scan: the
  transformer's activation memory is that of B/k rows; the loss and its gradient are exactly
  those of the full batch (same noise, same formula), up to float summation order. The logits
  of the whole batch are still formed (the loss needs them). With dropout the k microbatches
  draw their own dropout bits (fold_in(dropout key, j)): same distribution, other masks.
  """
  spec = PartitionSpec(None, mesh_lib.BATCH_AXES, None)
  micro_sh = NamedSharding(mesh, spec)

  @jax.checkpoint
  def one(z_j, sigma_j, j, kw_j):
    key_j = None if drop_key is None else jax.random.fold_in(drop_key, j)
    return apply(params, z_j, sigma_j, dropout_key=key_j, **kw_j)

  def split_rows(a):  # [B, ...] -> [k, B/k, ...], microbatch j = rows i with i % k == j
    return jnp.swapaxes(a.reshape(a.shape[0] // k, k, *a.shape[1:]), 0, 1)

  def apply_fn(z, sigma, **kw):  # kw: per-row model inputs, e.g. labels [B] (SPEC_DOMAINS §M.3)
    b, length = z.shape
    zs = jax.lax.with_sharding_constraint(split_rows(z), micro_sh)  # [k, B/k, L]
    kws = {name: split_rows(v) for name, v in kw.items()}
    _, logits = jax.lax.scan(lambda c, xs: (c, one(*xs)), None,
                             (zs, split_rows(sigma), jnp.arange(k, dtype=jnp.int32), kws))
    v = logits.shape[-1]
    return jnp.swapaxes(logits, 0, 1).reshape(b, length, v)
  return apply_fn
