"""Importer of the official MDLM PyTorch checkpoints (SPEC §6.3) into our DiT parameters.

Name table (torch `named_parameters()` name -> our nnx path; "T" = Linear weight transposed to a
[in, out] kernel):

| torch name                                  | our path                                     |   |
|---------------------------------------------|----------------------------------------------|---|
| vocab_embed.embedding            [V, H]     | vocab_embed/embedding             [V, H]     |   |
| sigma_map.mlp.{0,2}.weight / .bias          | sigma_map/mlp/{0,2}/kernel / bias            | T |
| blocks.{i}.norm1.weight / norm2.weight      | blocks/{i}/norm1/weight / norm2/weight       |   |
| blocks.{i}.attn_qkv.weight       [3H, H]    | blocks/{i}/attn_qkv/kernel        [H, 3H]    | T |
| blocks.{i}.attn_out.weight       [H, H]     | blocks/{i}/attn_out/kernel        [H, H]     | T |
| blocks.{i}.mlp.{0,2}.weight / .bias         | blocks/{i}/mlp/{0,2}/kernel / bias           | T |
| blocks.{i}.adaLN_modulation.weight / .bias  | blocks/{i}/adaLN_modulation/kernel / bias    | T |
| output_layer.norm_final.weight              | output_layer/norm_final/weight               |   |
| output_layer.linear.weight / .bias          | output_layer/linear/kernel / bias            | T |
| output_layer.adaLN_modulation.weight / .bias| output_layer/adaLN_modulation/kernel / bias  | T |
| rotary_emb.inv_freq (buffer)                | - (ignored; recomputed)                      |   |

Sources:
- Lightning `mdlm.ckpt`: `state_dict` (keys `backbone.<name>`) or, by default, the EMA weights
  `ema.shadow_params`, a list of 130 tensors in `named_parameters()` order (1 + 4 + 10 per block + 5).
- Hugging Face `model.safetensors` (+ optional `config.json`), keys with or without `backbone.`.

Config: sizes (vocab, hidden, cond dim, blocks, MLP ratio) are read from the weights' shapes;
what shapes cannot tell (heads, training length, time conditioning, backbone dit/ar, dropout) is
read from the checkpoint's own config: the Lightning `hyper_parameters["config"]` (the official
Hydra config: `model.n_heads`, `model.length`, `time_conditioning`, `backbone`, ...; a plain dict or
a pickled omegaconf DictConfig, read as inert stand-ins) or HF `config.json`. Nothing is guessed: a
field that is neither stored nor passed raises ValueError naming it, and a passed value that
contradicts the stored one raises ValueError naming both (`resolve_config`).

CLI: `python -m remdm_jax.models.convert --input PATH --output DIR [--overwrite] [--no-ema]
[--num-heads N] [--max-seq-len L] [--[no-]time-conditioning] [--[no-]causal]` writes our parameter
checkpoint with `remdm_jax.checkpoint.save_params`. DIR must be new, or with `--overwrite` a model
folder remdm-jax wrote (checked before any work; no other file or folder is ever replaced); bad
input is one `convert: error: ...` line, exit status 2.
Needs the `torch` extra (torch + safetensors).
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import sys
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from remdm_jax.models.dit import FREQ_DIM, DiTConfig, abstract_params
from remdm_jax.models.keys import check_keys

_BACKBONE = "backbone."
_IGNORED = ("rotary_emb.inv_freq",)

# (torch suffix, our suffix, transpose) for the parts outside the blocks, in official order.
_HEAD_TABLE = (
  ("vocab_embed.embedding", "vocab_embed/embedding", False),
  ("sigma_map.mlp.0.weight", "sigma_map/mlp/0/kernel", True),
  ("sigma_map.mlp.0.bias", "sigma_map/mlp/0/bias", False),
  ("sigma_map.mlp.2.weight", "sigma_map/mlp/2/kernel", True),
  ("sigma_map.mlp.2.bias", "sigma_map/mlp/2/bias", False),
)
# Per block i: "blocks.{i}." + torch suffix <-> "blocks/{i}/" + our suffix, in official order.
_BLOCK_TABLE = (
  ("norm1.weight", "norm1/weight", False),
  ("attn_qkv.weight", "attn_qkv/kernel", True),
  ("attn_out.weight", "attn_out/kernel", True),
  ("norm2.weight", "norm2/weight", False),
  ("mlp.0.weight", "mlp/0/kernel", True),
  ("mlp.0.bias", "mlp/0/bias", False),
  ("mlp.2.weight", "mlp/2/kernel", True),
  ("mlp.2.bias", "mlp/2/bias", False),
  ("adaLN_modulation.weight", "adaLN_modulation/kernel", True),
  ("adaLN_modulation.bias", "adaLN_modulation/bias", False),
)
_TAIL_TABLE = (
  ("output_layer.norm_final.weight", "output_layer/norm_final/weight", False),
  ("output_layer.linear.weight", "output_layer/linear/kernel", True),
  ("output_layer.linear.bias", "output_layer/linear/bias", False),
  ("output_layer.adaLN_modulation.weight", "output_layer/adaLN_modulation/kernel", True),
  ("output_layer.adaLN_modulation.bias", "output_layer/adaLN_modulation/bias", False),
)


def name_table(num_blocks: int) -> list[tuple[str, str, bool]]:
  """[(torch name, our path "a/b/c", transpose)] in official `named_parameters()` order."""
  table = list(_HEAD_TABLE)
  for i in range(num_blocks):
    table += [(f"blocks.{i}.{t}", f"blocks/{i}/{o}", tr) for t, o, tr in _BLOCK_TABLE]
  return table + list(_TAIL_TABLE)


def official_param_names(num_blocks: int) -> list[str]:
  """Torch parameter names in `named_parameters()` order (130 for 12 blocks; SPEC §6.3)."""
  return [t for t, _, _ in name_table(num_blocks)]


def official_param_shapes(cfg: DiTConfig) -> dict[str, tuple[int, ...]]:
  """Torch name -> torch shape (Linear weights are [out, in]) for `cfg`."""
  h, c, v, m = cfg.hidden_size, cfg.cond_dim, cfg.vocab_size, cfg.mlp_dim
  shapes = {
    "vocab_embed.embedding": (v, h),
    "sigma_map.mlp.0.weight": (c, FREQ_DIM), "sigma_map.mlp.0.bias": (c,),
    "sigma_map.mlp.2.weight": (c, c), "sigma_map.mlp.2.bias": (c,),
  }
  for i in range(cfg.num_blocks):
    p = f"blocks.{i}."
    shapes.update({
      p + "norm1.weight": (h,), p + "attn_qkv.weight": (3 * h, h), p + "attn_out.weight": (h, h),
      p + "norm2.weight": (h,), p + "mlp.0.weight": (m, h), p + "mlp.0.bias": (m,),
      p + "mlp.2.weight": (h, m), p + "mlp.2.bias": (h,),
      p + "adaLN_modulation.weight": (6 * h, c), p + "adaLN_modulation.bias": (6 * h,),
    })
  shapes.update({
    "output_layer.norm_final.weight": (h,),
    "output_layer.linear.weight": (v, h), "output_layer.linear.bias": (v,),
    "output_layer.adaLN_modulation.weight": (2 * h, c),
    "output_layer.adaLN_modulation.bias": (2 * h,),
  })
  return shapes


def strip_backbone(named_arrays: Mapping[str, Any]) -> dict[str, Any]:
  """Drops a leading `backbone.` from every key and the rotary buffer."""
  out = {}
  for key, value in named_arrays.items():
    name = key[len(_BACKBONE):] if key.startswith(_BACKBONE) else key
    if name in _IGNORED:
      continue
    if name in out:
      raise ValueError(f"duplicate parameter {name!r} (with and without {_BACKBONE!r} prefix)")
    out[name] = value
  return out


def _to_numpy(x) -> np.ndarray:
  """numpy / torch tensor -> float32 numpy array."""
  if hasattr(x, "detach"):  # torch.Tensor (bf16 has no numpy dtype: go through float32)
    x = x.detach().cpu().float().numpy()
  return np.asarray(x, dtype=np.float32)


def torch_names_to_params(named_arrays: Mapping[str, Any], cfg: DiTConfig) -> nnx.State:
  """Official names -> our params (an `nnx.State` of float32 `nnx.Param`s with axis names).

  Strips `backbone.`, ignores `rotary_emb.inv_freq`, transposes Linear weights. Raises ValueError
  naming the key on anything missing, extra or mis-shaped.
  """
  arrays = strip_backbone(named_arrays)
  expected = official_param_shapes(cfg)
  table = name_table(cfg.num_blocks)
  missing = [t for t, _, _ in table if t not in arrays]
  extra = sorted(set(arrays) - set(expected))
  check_keys(f"checkpoint does not match DiTConfig(hidden={cfg.hidden_size}, "
             f"blocks={cfg.num_blocks}, vocab={cfg.vocab_size})", missing, extra)
  converted = {}
  for torch_name, our_path, transpose in table:
    value = _to_numpy(arrays[torch_name])
    if value.shape != expected[torch_name]:
      raise ValueError(f"checkpoint key {torch_name!r}: expected shape {expected[torch_name]}, "
                       f"got {value.shape}")
    converted[our_path] = value.T if transpose else value

  _, abstract = abstract_params(cfg)
  flat = []
  for path, var in nnx.to_flat_state(abstract):
    name = "/".join(str(p) for p in path)
    value = converted.pop(name)
    if value.shape != var.shape:  # table and model disagree: a bug here, not in the file
      raise AssertionError(f"{name}: table shape {value.shape} != model shape {var.shape}")
    flat.append((path, var.replace(jnp.asarray(value))))
  if converted:
    raise AssertionError(f"name table paths not in the model: {sorted(converted)}")
  return nnx.from_flat_state(flat)


def shape_fields(named_arrays: Mapping[str, Any]) -> dict[str, int]:
  """The DiTConfig fields that parameter shapes determine: vocab_size, hidden_size, cond_dim,
  num_blocks, mlp_ratio. Raises ValueError naming a missing key."""
  arrays = strip_backbone(named_arrays)
  for key in ("vocab_embed.embedding", "sigma_map.mlp.0.weight", "blocks.0.mlp.0.weight"):
    if key not in arrays:
      raise ValueError(f"cannot infer the model config: key {key!r} is missing")
  vocab, hidden = np.shape(arrays["vocab_embed.embedding"])
  cond = np.shape(arrays["sigma_map.mlp.0.weight"])[0]
  mlp = np.shape(arrays["blocks.0.mlp.0.weight"])[0]
  blocks = 1 + max(int(m.group(1)) for k in arrays if (m := re.match(r"blocks\.(\d+)\.", k)))
  if mlp % hidden:
    raise ValueError(f"blocks.0.mlp.0.weight rows {mlp} are not a multiple of hidden {hidden}")
  return dict(vocab_size=int(vocab), hidden_size=int(hidden), cond_dim=int(cond),
              num_blocks=int(blocks), mlp_ratio=int(mlp // hidden))


# Fields no shape reveals; each must come from the checkpoint's config or the caller.
_NOT_INFERABLE = {
  "num_heads": "number of attention heads",
  "time_conditioning": "whether the network sees the noise level",
  "max_seq_len": "the training sequence length",
}
_CLI_FLAG = {"num_heads": "--num-heads", "time_conditioning": "--time-conditioning / "
             "--no-time-conditioning", "max_seq_len": "--max-seq-len", "causal": "--causal"}


def resolve_config(named_arrays: Mapping[str, Any], stored: Mapping[str, Any] | None = None, *,
                   source: str = "checkpoint", stored_names: Mapping[str, str] | None = None,
                   **overrides) -> DiTConfig:
  """DiTConfig of an official checkpoint from (weights, the checkpoint's own config, overrides).

  Args:
    named_arrays: {official name: array}; their shapes fix vocab_size, hidden_size, cond_dim,
      num_blocks and mlp_ratio (a stored or overriding value that disagrees raises ValueError).
    stored: our field -> value read from the checkpoint's config (Lightning `hyper_parameters`,
      HF `config.json`); `stored_names` gives each field's name there (for messages).
    overrides: caller's values (None = not given). For num_heads / time_conditioning /
      max_seq_len / causal an override that differs from a stored value raises ValueError; other
      fields (compute_dtype, attention_impl, ...) are run-time settings and simply apply.
  Raises:
    ValueError naming the field when num_heads, time_conditioning or max_seq_len is neither stored
    nor given (they cannot be read from shapes), or when two sources disagree.
  """
  stored = {k: v for k, v in dict(stored or {}).items() if v is not None}
  names = dict(stored_names or {})
  overrides = {k: v for k, v in overrides.items() if v is not None}
  fields = shape_fields(named_arrays)
  for key, value in fields.items():
    for origin, given in ((f"{source} {names.get(key, key)}", stored.get(key)),
                          (f"{key} override", overrides.get(key))):
      if given is not None and given != value:
        raise ValueError(f"{origin}={given!r} disagrees with the weights ({key}={value})")
  for key in (*_NOT_INFERABLE, "causal", "dropout"):
    if key in stored and key in overrides and stored[key] != overrides[key]:
      raise ValueError(f"{_CLI_FLAG.get(key, key)}={overrides[key]!r} disagrees with "
                       f"{source} {names.get(key, key)}={stored[key]!r}")
    if key in overrides or key in stored:
      fields[key] = overrides.get(key, stored.get(key))
  missing = [k for k in _NOT_INFERABLE if k not in fields]
  if missing:
    k = missing[0]
    raise ValueError(f"{source} does not record {names.get(k, k)} ({_NOT_INFERABLE[k]}; it cannot "
                     f"be read from the weights): pass {_CLI_FLAG[k]}")
  fields.update({k: v for k, v in overrides.items() if k not in fields})
  return DiTConfig.from_dict(fields)


# ---------------------------------------------------------------------------------------------
# File formats.


def _require_torch():
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("reading a PyTorch .ckpt needs torch: pip install 'remdm-jax[torch]' "
                      "(or `pip install torch`)") from e
  return torch


class _Stub:
  """Inert stand-in for a class pickled in a checkpoint (e.g. omegaconf.DictConfig): keeps the
  constructor arguments and the pickled state, runs nothing."""

  def __init__(self, *args, **kwargs):
    self.args, self.kwargs = args, kwargs

  def __setstate__(self, state):
    self.state = state


def _stub(full_name: str):
  module, _, name = full_name.rpartition(".")
  cls = type(name, (_Stub,), {"__module__": module, "__qualname__": name})
  return (cls, full_name)


def _torch_load(path: str):
  """torch.load with weights_only=True. Non-tensor objects the file pickles (e.g. the omegaconf
  hyper-parameters of a Lightning checkpoint) are loaded as inert `_Stub`s, never executed.
  Raises ValueError (one line) for a file torch cannot read."""
  torch = _require_torch()

  def load():
    try:
      return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
      raise
    except Exception as e:  # zip / pickle format errors of a file that is not a checkpoint
      raise ValueError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: "
                       f"{_first_line(e)})") from e

  try:
    return load()
  except pickle.UnpicklingError:
    pass
  try:
    unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
  except Exception as e:
    raise ValueError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: "
                     f"{_first_line(e)})") from e
  with torch.serialization.safe_globals([_stub(n) for n in unsafe]):
    try:
      return load()
    except pickle.UnpicklingError as e:
      raise ValueError(f"{path}: cannot read the checkpoint with weights_only=True (unsupported "
                       f"pickled objects {unsafe}): {_first_line(e)}") from e


def _first_line(e: BaseException) -> str:
  text = str(e).strip()
  return text.splitlines()[0] if text else type(e).__name__


def _check_exists(path: str) -> str:
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"checkpoint not found: {path}")
  return path


def _unwrap(node):
  """A pickled omegaconf node (loaded as a `_Stub`) -> its content: DictConfig/ListConfig ->
  `_content`, value nodes -> `_val`; plain containers and values pass through."""
  for _ in range(64):
    if not isinstance(node, _Stub):
      return node
    state = getattr(node, "state", None)
    if isinstance(state, tuple) and state and isinstance(state[0], Mapping):
      state = state[0]  # (dict state, slot state)
    if not isinstance(state, Mapping):
      return node
    if "_content" in state:
      node = state["_content"]
    elif "_val" in state:
      node = state["_val"]
    else:
      return state
  return node


_MISSING = object()


def config_get(config, dotted: str):
  """`config_get(cfg, "model.n_heads")` on a plain dict or a pickled omegaconf DictConfig (loaded
  as stand-ins); returns `_MISSING` when any part of the path is absent or holds an unresolved
  omegaconf value (an interpolation "${...}" or the "???" placeholder)."""
  node = _unwrap(config)
  for part in dotted.split("."):
    if not isinstance(node, Mapping) or part not in node:
      return _MISSING
    node = _unwrap(node[part])
  if _unresolved(node):
    return _MISSING
  return node


def _unresolved(value) -> bool:
  return isinstance(value, str) and (value.startswith("${") or value == "???")


# our DiTConfig field -> field of the official MDLM Hydra config (configs/config.yaml,
# configs/model/*.yaml) saved by Lightning in ckpt["hyper_parameters"]["config"].
LIGHTNING_CONFIG_FIELDS = {
  "hidden_size": "model.hidden_size",
  "num_heads": "model.n_heads",
  "num_blocks": "model.n_blocks",
  "cond_dim": "model.cond_dim",
  "max_seq_len": "model.length",
  "dropout": "model.dropout",
  "time_conditioning": "time_conditioning",
}
_BACKBONE_TO_CAUSAL = {"dit": False, "ar": True}
_PARAMETERIZATIONS = ("subs", "ar")


def lightning_config(ckpt: Mapping) -> tuple[dict, dict] | None:
  """(our fields, their config names) from a Lightning checkpoint's `hyper_parameters` (the MDLM
  Hydra config, a plain dict or a pickled omegaconf DictConfig, under "config" or at the top), or
  None when the checkpoint has no hyper_parameters. Raises ValueError naming a field whose value
  is of the wrong type or whose backbone / parameterization this DiT cannot represent."""
  hp = _unwrap(ckpt.get("hyper_parameters"))
  if not isinstance(hp, Mapping):
    return None
  config = _unwrap(hp.get("config", hp))
  if not isinstance(config, Mapping):
    return None
  fields, names = {}, {}
  for ours, theirs in LIGHTNING_CONFIG_FIELDS.items():
    value = config_get(config, theirs)
    names[ours] = f"hyper_parameters.config.{theirs}"
    if value is _MISSING:
      raw = config_get(config, theirs.rpartition(".")[0]) if "." in theirs else config
      raw = _unwrap(raw.get(theirs.rpartition(".")[2])) if isinstance(raw, Mapping) else None
      if _unresolved(raw):
        names[ours] += f" (unresolved {raw!r})"
      continue
    want = float if ours == "dropout" else bool if ours == "time_conditioning" else int
    if want is float and isinstance(value, int) and not isinstance(value, bool):
      value = float(value)
    if not isinstance(value, want) or (want is int and isinstance(value, bool)):
      raise ValueError(f"{names[ours]}={value!r} must be {want.__name__}")
    fields[ours] = value
  backbone = config_get(config, "backbone")
  names["causal"] = "hyper_parameters.config.backbone"
  if backbone is not _MISSING:
    if backbone not in _BACKBONE_TO_CAUSAL:
      raise ValueError(f"hyper_parameters.config.backbone={backbone!r}: only "
                       f"{tuple(_BACKBONE_TO_CAUSAL)} checkpoints convert to this DiT")
    fields["causal"] = _BACKBONE_TO_CAUSAL[backbone]
  param = config_get(config, "parameterization")
  if param is not _MISSING and param not in _PARAMETERIZATIONS:
    raise ValueError(f"hyper_parameters.config.parameterization={param!r}: only "
                     f"{_PARAMETERIZATIONS} models are MDLM denoisers / AR scorers")
  if config_get(config, "model.tie_word_embeddings") is True:
    raise ValueError("hyper_parameters.config.model.tie_word_embeddings=True is not supported "
                     "(this DiT has untied embeddings, SPEC §6.1)")
  return fields, names


def load_lightning_ckpt(path, use_ema: bool = True,
                        **config_overrides) -> tuple[DiTConfig, dict[str, np.ndarray]]:
  """Reads a Lightning `mdlm.ckpt` -> (DiTConfig, {official name: float32 array}).

  The config comes from the checkpoint itself: sizes from the `state_dict` shapes, and heads,
  length, time conditioning, dropout and backbone (dit / ar -> causal) from
  `hyper_parameters["config"]` (`LIGHTNING_CONFIG_FIELDS`; SPEC §6.3). `config_overrides`
  (num_heads, max_seq_len, time_conditioning, causal, compute_dtype, ...) fill fields the file
  lacks; one that contradicts the file raises ValueError (`resolve_config`). With `use_ema` the
  weights are `checkpoint["ema"]["shadow_params"]`, a list in `named_parameters()` order, zipped
  with the official names and shape-checked; else `state_dict` (`backbone.` keys).
  """
  path = _check_exists(path)
  if os.path.isdir(path):
    raise ValueError(f"{path} is a folder, not a Lightning .ckpt file")
  ckpt = _torch_load(path)
  if not isinstance(ckpt, Mapping) or "state_dict" not in ckpt:
    raise ValueError(f"{path}: not a Lightning checkpoint (no 'state_dict' key)")
  state_dict = dict(ckpt["state_dict"])
  if any(k.startswith(_BACKBONE) for k in state_dict):  # drop non-network entries (noise, ...)
    state_dict = {k: v for k, v in state_dict.items() if k.startswith(_BACKBONE)}
  state_dict = {k: _to_numpy(v) for k, v in state_dict.items()}
  stored, names = lightning_config(ckpt) or ({}, {})
  if not stored:
    names = {k: f"hyper_parameters.config.{v}" for k, v in LIGHTNING_CONFIG_FIELDS.items()}
  cfg = resolve_config(state_dict, stored, source=path, stored_names=names, **config_overrides)
  if not use_ema:
    return cfg, strip_backbone(state_dict)
  ema = ckpt.get("ema")
  if not isinstance(ema, Mapping) or "shadow_params" not in ema:
    raise ValueError(f"{path}: no 'ema.shadow_params' in the checkpoint (use use_ema=False)")
  shadow = list(ema["shadow_params"])
  names = official_param_names(cfg.num_blocks)
  if len(shadow) != len(names):
    raise ValueError(f"{path}: ema.shadow_params has {len(shadow)} tensors, expected "
                     f"{len(names)} for {cfg.num_blocks} blocks")
  shapes = official_param_shapes(cfg)
  named = {}
  for i, (name, tensor) in enumerate(zip(names, shadow)):
    value = _to_numpy(tensor)
    if value.shape != shapes[name]:
      raise ValueError(f"{path}: ema.shadow_params[{i}] ({name!r}): expected shape "
                       f"{shapes[name]}, got {value.shape}")
    named[name] = value
  return cfg, named


_HF_CONFIG_KEYS = {  # our field -> accepted config.json keys
  "hidden_size": ("hidden_size", "hidden_dim", "d_model"),
  "num_heads": ("num_heads", "n_heads", "num_attention_heads"),
  "num_blocks": ("num_blocks", "n_blocks", "num_hidden_layers"),
  "cond_dim": ("cond_dim",),
  "vocab_size": ("vocab_size",),
  "max_seq_len": ("max_seq_len", "model_length", "length", "max_position_embeddings"),
  "time_conditioning": ("time_conditioning",),
  "dropout": ("dropout",),
}


def _read_safetensors(file: str) -> dict[str, np.ndarray]:
  try:
    from safetensors import SafetensorError  # pylint: disable=g-import-not-at-top
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("reading model.safetensors needs safetensors: pip install "
                      "'remdm-jax[torch]' (or `pip install safetensors`)") from e
  try:
    return {k: np.asarray(v, np.float32) for k, v in load_file(file).items()}
  except (TypeError, ValueError):  # e.g. bfloat16 tensors: numpy has no bf16, go through torch
    _require_torch()
    from safetensors.torch import load_file as load_torch  # pylint: disable=g-import-not-at-top
    return {k: _to_numpy(v) for k, v in load_torch(file).items()}
  except SafetensorError as e:
    raise ValueError(f"{file}: not a readable safetensors file ({_first_line(e)})") from e


def load_hf_safetensors(dir_or_file, **config_overrides) -> tuple[DiTConfig, dict[str, np.ndarray]]:
  """`model.safetensors` (+ `config.json` beside it) -> (DiTConfig, named arrays).

  Shapes are the truth: a config.json size that disagrees with them raises ValueError naming the
  field. num_heads, max_seq_len and time_conditioning come from config.json (`_HF_CONFIG_KEYS`) or
  `config_overrides`; neither -> ValueError naming the field (`resolve_config`).
  """
  path = _check_exists(dir_or_file)
  file = os.path.join(path, "model.safetensors") if os.path.isdir(path) else path
  if not os.path.isfile(file):
    raise FileNotFoundError(f"{path}: no model.safetensors in this folder")
  named = strip_backbone(_read_safetensors(file))
  config_json = os.path.join(os.path.dirname(file), "config.json")
  fields: dict[str, Any] = {}
  names: dict[str, str] = {}
  if os.path.exists(config_json):
    try:
      with open(config_json) as f:
        hf = json.load(f)
    except (OSError, ValueError) as e:
      raise ValueError(f"{config_json}: not readable JSON ({_first_line(e)})") from e
    for ours, keys in _HF_CONFIG_KEYS.items():
      for key in keys:
        if key in hf:
          fields[ours], names[ours] = hf[key], key
          break
  source = config_json if os.path.exists(config_json) else file
  return resolve_config(named, fields, source=source, stored_names=names,
                        **config_overrides), named


def _our_checkpoint(path: str) -> bool:
  """True for a remdm-jax params checkpoint or training workdir (not an official checkpoint)."""
  if not os.path.isdir(path):
    return False
  names = set(os.listdir(path))
  return ("model_config.json" in names or "params" in names or "checkpoints" in names
          or any(n.isdigit() for n in names))


def load_official(path, use_ema: bool = True, **kwargs) -> tuple[DiTConfig, nnx.State]:
  """Any official checkpoint (`.ckpt`, `.safetensors`, or a folder holding model.safetensors)
  -> (DiTConfig, params). Raises FileNotFoundError for a missing path and ValueError (one line)
  for a file that is not an official checkpoint (garbage, or a remdm-jax checkpoint)."""
  path = _check_exists(path)
  if _our_checkpoint(path) and not os.path.isfile(os.path.join(path, "model.safetensors")):
    raise ValueError(f"{path} is a remdm-jax checkpoint already, not an official MDLM one: load "
                     "it directly (generation.load_model / sample.py --checkpoint)")
  if os.path.isdir(path) or path.endswith(".safetensors"):
    cfg, named = load_hf_safetensors(path, **kwargs)
  else:
    cfg, named = load_lightning_ckpt(path, use_ema=use_ema, **kwargs)
  return cfg, torch_names_to_params(named, cfg)


def main(argv: list[str] | None = None) -> int:
  """CLI; returns 0, or 2 after one `convert: error: ...` line on stderr for bad input."""
  parser = argparse.ArgumentParser(
    prog="python -m remdm_jax.models.convert",
    description="Convert an official MDLM checkpoint (Lightning .ckpt or HF safetensors) into a "
                "remdm-jax parameter checkpoint. Sizes come from the weights; heads, length, time "
                "conditioning and backbone from the checkpoint's own config (.ckpt "
                "hyper_parameters or config.json). The flags below fill fields the file lacks "
                "and must agree with the file when it has them.")
  parser.add_argument("--input", required=True, help="mdlm.ckpt, model.safetensors or its folder")
  parser.add_argument("--output", required=True,
                      help="output checkpoint folder: a new path, or with --overwrite a model "
                           "folder remdm-jax wrote (nothing else is ever replaced)")
  parser.add_argument("--overwrite", action="store_true",
                      help="replace an existing remdm-jax model folder at --output")
  parser.add_argument("--no-ema", action="store_true",
                      help="use the raw state_dict of a .ckpt instead of the EMA weights")
  parser.add_argument("--num-heads", type=int, default=None,
                      help="attention heads (default: the checkpoint's config)")
  parser.add_argument("--max-seq-len", type=int, default=None,
                      help="training length L (default: the checkpoint's config)")
  parser.add_argument("--time-conditioning", action=argparse.BooleanOptionalAction, default=None,
                      help="whether the model sees the noise level (default: the checkpoint's "
                           "config; the OWT MDLM checkpoint: no)")
  parser.add_argument("--causal", action=argparse.BooleanOptionalAction, default=None,
                      help="autoregressive model (default: the checkpoint's backbone, else no)")
  args = parser.parse_args(argv)

  overrides = dict(num_heads=args.num_heads, max_seq_len=args.max_seq_len,
                   time_conditioning=args.time_conditioning, causal=args.causal)
  from remdm_jax.checkpoint import check_model_output, save_params  # pylint: disable=C0415
  try:
    output = check_model_output(args.output, args.overwrite)  # before any work
    if os.path.abspath(args.input) == output:
      raise ValueError(f"--output={output} is the --input itself")
    cfg, params = load_official(args.input, use_ema=not args.no_ema, **overrides)
    out = save_params(output, params, model_config=cfg.to_dict(), overwrite=args.overwrite,
                      extra_metadata={
                          "source": os.path.abspath(args.input),
                          "converted_by": "remdm_jax.models.convert",
                          "weights": "state_dict" if args.no_ema else "ema"})
  except (ValueError, FileNotFoundError, ImportError, OSError) as e:
    print(f"convert: error: {_first_line(e)}", file=sys.stderr)
    return 2
  n = sum(int(np.prod(v.shape)) for _, v in nnx.to_flat_state(params))
  print(f"wrote {out}: {n:,} parameters, config {cfg.to_json()}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
