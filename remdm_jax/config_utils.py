"""ml_collections ConfigDict -> the library's frozen dataclasses (`ExperimentConfig`).

Sections (all optional except model/data): model (DiTConfig; `preset` picks
`DiTConfig.preset(name)` and the other fields override it; `vocab_size` None = the tokenizer's),
data (DataConfig), loss (LossConfig; `mask_id` None = the tokenizer's), optim (OptimConfig),
train (TrainConfig), mesh (MeshConfig), checkpoint (CheckpointConfig), distributed
(DistributedConfig).

Validation, each error one line naming the field path:
  * unknown section / field -> ValueError("unknown config field 'optim.lrr'; valid fields of
    'optim': b1, b2, ...");
  * type: int / float / bool / str / tuple / optional fields are checked against the dataclass
    annotations (ints are accepted for floats, lists for tuples);
  * ranges: the dataclasses' own __post_init__ checks, prefixed with the section;
  * cross-section: objective "ar" needs a causal model (and vice versa), model vocab vs tokenizer.

`validate_experiment` runs the model/usage checks of `remdm_jax.checks` (re-exported here) for an
ExperimentConfig. `resume_mismatch` compares a run config with the one stored in a
checkpoint (used before resuming).
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Mapping

from remdm_jax.checks import (check_data_ids, check_mask_id, check_objective_model,  # noqa: F401
                              check_seq_len, check_vocab)
from remdm_jax.training.config import (CheckpointConfig, ExperimentConfig, OptimConfig,
                                       TrainConfig)

_NONE = type(None)


def _to_plain(cfg) -> Any:
  if hasattr(cfg, "to_dict"):
    return cfg.to_dict()
  return cfg


def _type_ok(value, tp) -> tuple[bool, Any]:
  """(ok, converted value) for a resolved annotation."""
  origin = typing.get_origin(tp)
  if origin in (typing.Union, types.UnionType):
    args = typing.get_args(tp)
    if value is None:
      return (_NONE in args), value
    for a in args:
      if a is _NONE:
        continue
      ok, v = _type_ok(value, a)
      if ok:
        return True, v
    return False, value
  if tp is Any:
    return True, value
  if tp is bool:
    return isinstance(value, bool), value
  if tp is int:
    ok = isinstance(value, int) and not isinstance(value, bool)
    return ok, value
  if tp is float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    return ok, (float(value) if ok else value)
  if tp is str:
    return isinstance(value, str), value
  if origin is tuple or tp is tuple:
    if isinstance(value, (list, tuple)):
      return True, tuple(tuple(v) if isinstance(v, list) else v for v in value)
    if origin is tuple and isinstance(value, Mapping):  # e.g. mesh.shape as {axis: size}
      return True, value
    return False, value
  return True, value


def _type_name(tp) -> str:
  if typing.get_origin(tp) in (typing.Union, types.UnionType):
    return " or ".join(_type_name(a) for a in typing.get_args(tp))
  return "None" if tp is _NONE else getattr(tp, "__name__", str(tp))


def dataclass_from_dict(cls, values: Mapping | None, path: str, *, factory=None):
  """Builds dataclass `cls` from a mapping; unknown / mistyped fields raise one-line ValueErrors."""
  values = dict(_to_plain(values) or {})
  fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
  hints = typing.get_type_hints(cls)
  unknown = sorted(set(values) - set(fields))
  if unknown:
    raise ValueError(f"unknown config field '{path}.{unknown[0]}'; valid fields of '{path}': "
                     f"{', '.join(sorted(fields))}")
  kwargs = {}
  for name, value in values.items():
    ok, conv = _type_ok(value, hints.get(name, Any))
    if not ok:
      raise ValueError(f"config field '{path}.{name}'={value!r} has type "
                       f"{type(value).__name__}; expected {_type_name(hints[name])}")
    kwargs[name] = conv
  try:
    return (factory or cls)(**kwargs)
  except ValueError as e:
    raise ValueError(f"config '{path}': {e}") from None
  except TypeError as e:
    raise ValueError(f"config '{path}': {e}") from None


SECTIONS = ("model", "data", "loss", "optim", "train", "mesh", "checkpoint", "distributed")


def experiment_from_config(config) -> ExperimentConfig:
  """ConfigDict / nested dict -> ExperimentConfig (see the module docstring)."""
  from remdm_jax.data import DataConfig
  from remdm_jax.distributed import DistributedConfig
  from remdm_jax.diffusion.losses import LossConfig
  from remdm_jax.models.dit import DiTConfig
  from remdm_jax.tokenizers import get_tokenizer
  from remdm_jax.sharding import MeshConfig

  raw = dict(_to_plain(config) or {})
  unknown = sorted(set(raw) - set(SECTIONS))
  if unknown:
    raise ValueError(f"unknown config section '{unknown[0]}'; valid sections: "
                     f"{', '.join(SECTIONS)}")
  for sec in ("model", "data"):
    if sec not in raw:
      raise ValueError(f"config has no '{sec}' section")

  data = dataclass_from_dict(DataConfig, raw["data"], "data")
  tokenizer = get_tokenizer(data.tokenizer)

  model_raw = dict(_to_plain(raw["model"]))
  preset = model_raw.pop("preset", None)
  if model_raw.get("vocab_size") is None:
    model_raw["vocab_size"] = tokenizer.vocab_size

  def model_factory(**kw):
    return DiTConfig.preset(preset, **kw) if preset else DiTConfig(**kw)
  model = dataclass_from_dict(DiTConfig, model_raw, "model", factory=model_factory)

  loss_raw = dict(_to_plain(raw.get("loss")) or {})
  if loss_raw.get("mask_id") is None and loss_raw.get("objective", "mdlm") != "ar":
    loss_raw["mask_id"] = tokenizer.mask_id
  loss = dataclass_from_dict(LossConfig, loss_raw, "loss")

  out = ExperimentConfig(
      model=model, data=data, loss=loss,
      optim=dataclass_from_dict(OptimConfig, raw.get("optim"), "optim"),
      train=dataclass_from_dict(TrainConfig, raw.get("train"), "train"),
      mesh=dataclass_from_dict(MeshConfig, raw.get("mesh"), "mesh"),
      checkpoint=dataclass_from_dict(CheckpointConfig, raw.get("checkpoint"), "checkpoint"),
      distributed=dataclass_from_dict(DistributedConfig, raw.get("distributed"), "distributed"))
  validate_experiment(out, tokenizer)
  return out


def validate_experiment(cfg, tokenizer) -> None:
  """Cross-section checks of an ExperimentConfig (one-line ValueErrors)."""
  check_objective_model(cfg.loss.objective, cfg.model.causal)
  check_vocab(cfg.model.vocab_size, tokenizer.vocab_size, cfg.data.tokenizer)
  if cfg.loss.objective != "ar":
    check_mask_id(cfg.loss.mask_id, cfg.model.vocab_size)
  check_seq_len(cfg.data.seq_len, cfg.model.max_seq_len)
  # class labels (SPEC_DOMAINS §M.3): model, loss and data must agree.
  head = getattr(cfg.model, "head", "lm")
  if (cfg.loss.objective == "classifier") != (head == "classifier"):
    raise ValueError(f"loss.objective={cfg.loss.objective!r} and model.head={head!r} do not match"
                     " (the classifier objective needs head='classifier' and vice versa)")
  if cfg.loss.num_classes != getattr(cfg.model, "num_classes", 0):
    raise ValueError(f"loss.num_classes={cfg.loss.num_classes} must equal model.num_classes="
                     f"{getattr(cfg.model, 'num_classes', 0)}")
  label = getattr(cfg.data, "label", None)
  if (label is not None) != (cfg.loss.num_classes > 0):
    raise ValueError(f"data.label={label!r} and loss.num_classes={cfg.loss.num_classes}: labelled "
                     "data needs a class-conditional model / classifier and vice versa")


# Fields that must agree between a workdir's checkpoint and the config resuming it. Run-time model
# fields (dropout, compute_dtype, attention_impl, vocab_pad_multiple, remat, scan_blocks, ...) may
# change between runs: they do not change the parameters or what they mean.
RESUME_FIELDS = (
    "model.causal", "model.time_conditioning", "model.vocab_size", "model.hidden_size",
    "model.num_heads", "model.num_blocks", "model.cond_dim", "model.mlp_ratio",
    "model.num_classes", "model.head", "loss.objective", "loss.mask_id", "data.seq_len",
    "data.tokenizer", "data.label")


def resume_mismatch(new: Mapping, stored: Mapping) -> list[str]:
  """The RESUME_FIELDS on which two `ExperimentConfig.to_dict()`s differ, as
  "field: stored -> new" strings (empty when resuming is safe). Fields absent from `stored`
  (older checkpoints) are not compared."""
  out = []
  for f in RESUME_FIELDS:
    sec, name = f.split(".")
    old_sec, new_sec = stored.get(sec) or {}, new.get(sec) or {}
    if name not in old_sec:
      continue
    if old_sec.get(name) != new_sec.get(name):
      out.append(f"{f}: checkpoint {old_sec.get(name)!r} vs config {new_sec.get(name)!r}")
  return out
