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

CLI: `python -m remdm_jax.models.convert --input PATH --output DIR [--no-ema]` writes our
parameter checkpoint with `remdm_jax.checkpoint.save_params`.
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
  if missing or extra:
    raise ValueError(f"checkpoint does not match DiTConfig(hidden={cfg.hidden_size}, "
                     f"blocks={cfg.num_blocks}, vocab={cfg.vocab_size}): missing keys {missing}, "
                     f"unexpected keys {extra}")
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


def infer_config(named_arrays: Mapping[str, Any], *, num_heads: int | None = None,
                 **overrides) -> DiTConfig:
  """DiTConfig from parameter shapes. Heads cannot be read from shapes: `num_heads`, else
  hidden/64 (head dim 64, as in every MDLM model). `overrides` set the other fields (e.g.
  max_seq_len, time_conditioning)."""
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
  if num_heads is None:
    num_heads = max(1, hidden // 64)
  fields = dict(vocab_size=int(vocab), hidden_size=int(hidden), cond_dim=int(cond),
                num_blocks=int(blocks), num_heads=int(num_heads), mlp_ratio=int(mlp // hidden),
                dropout=0.1)
  fields.update({k: v for k, v in overrides.items() if v is not None})
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


def _torch_load(path: str):
  """torch.load with weights_only=True. Non-tensor objects the file pickles (e.g. the omegaconf
  hyper-parameters of a Lightning checkpoint) are loaded as inert stand-ins, never executed."""
  torch = _require_torch()
  try:
    return torch.load(path, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError:
    unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)

  def stub(full_name: str):
    module, _, name = full_name.rpartition(".")

    class _Stub:  # accepts any construction / state, does nothing

      def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs

      def __setstate__(self, state):
        self.state = state

    _Stub.__name__ = _Stub.__qualname__ = name
    _Stub.__module__ = module
    return (_Stub, full_name)

  with torch.serialization.safe_globals([stub(n) for n in unsafe]):
    try:
      return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
      raise ValueError(f"{path}: cannot read the checkpoint with weights_only=True (unsupported "
                       f"pickled objects {unsafe}): {e}") from e


def _check_exists(path: str) -> str:
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"checkpoint not found: {path}")
  return path


def load_lightning_ckpt(path, use_ema: bool = True, *, num_heads: int | None = None,
                        **config_overrides) -> tuple[DiTConfig, dict[str, np.ndarray]]:
  """Reads a Lightning `mdlm.ckpt` -> (DiTConfig, {official name: float32 array}).

  The config is inferred from the `state_dict` shapes (`num_heads` default hidden/64). With
  `use_ema` the weights are `checkpoint["ema"]["shadow_params"]`, a list in `named_parameters()`
  order, zipped with the official names and shape-checked; else `state_dict` (`backbone.` keys).
  """
  path = _check_exists(path)
  ckpt = _torch_load(path)
  if not isinstance(ckpt, Mapping) or "state_dict" not in ckpt:
    raise ValueError(f"{path}: not a Lightning checkpoint (no 'state_dict' key)")
  state_dict = dict(ckpt["state_dict"])
  if any(k.startswith(_BACKBONE) for k in state_dict):  # drop non-network entries (noise, ...)
    state_dict = {k: v for k, v in state_dict.items() if k.startswith(_BACKBONE)}
  state_dict = {k: _to_numpy(v) for k, v in state_dict.items()}
  cfg = infer_config(state_dict, num_heads=num_heads, **config_overrides)
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
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    return {k: np.asarray(v, np.float32) for k, v in load_file(file).items()}
  except (TypeError, ValueError):  # e.g. bfloat16 tensors: numpy has no bf16, go through torch
    from safetensors.torch import load_file as load_torch  # pylint: disable=g-import-not-at-top
    return {k: _to_numpy(v) for k, v in load_torch(file).items()}


def load_hf_safetensors(dir_or_file, *, num_heads: int | None = None,
                        **config_overrides) -> tuple[DiTConfig, dict[str, np.ndarray]]:
  """`model.safetensors` (+ optional `config.json` beside it) -> (DiTConfig, named arrays).

  Shapes are the truth: a config.json size that disagrees with them raises ValueError naming the
  field. Without config.json the config is inferred from shapes (heads: hidden/64 or `num_heads`).
  """
  path = _check_exists(dir_or_file)
  file = os.path.join(path, "model.safetensors") if os.path.isdir(path) else path
  _check_exists(file)
  named = strip_backbone(_read_safetensors(file))
  config_json = os.path.join(os.path.dirname(file), "config.json")
  fields: dict[str, Any] = {}
  if os.path.exists(config_json):
    with open(config_json) as f:
      hf = json.load(f)
    for ours, keys in _HF_CONFIG_KEYS.items():
      for key in keys:
        if key in hf:
          fields[ours] = hf[key]
          break
  fields.update({k: v for k, v in config_overrides.items() if v is not None})
  if num_heads is not None:
    fields["num_heads"] = num_heads
  cfg = infer_config(named, num_heads=fields.pop("num_heads", None),
                     **{k: v for k, v in fields.items()
                        if k not in ("hidden_size", "num_blocks", "cond_dim", "vocab_size")})
  for key in ("hidden_size", "num_blocks", "cond_dim", "vocab_size"):
    if key in fields and fields[key] != getattr(cfg, key):
      raise ValueError(f"{config_json}: {key}={fields[key]!r} disagrees with the weights "
                       f"({key}={getattr(cfg, key)})")
  return cfg, named


def load_official(path, use_ema: bool = True, **kwargs) -> tuple[DiTConfig, nnx.State]:
  """Any official checkpoint (`.ckpt`, `.safetensors`, or a folder holding model.safetensors)
  -> (DiTConfig, params)."""
  path = _check_exists(path)
  if os.path.isdir(path) or path.endswith(".safetensors"):
    cfg, named = load_hf_safetensors(path, **kwargs)
  else:
    cfg, named = load_lightning_ckpt(path, use_ema=use_ema, **kwargs)
  return cfg, torch_names_to_params(named, cfg)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m remdm_jax.models.convert",
    description="Convert an official MDLM checkpoint (Lightning .ckpt or HF safetensors) into a "
                "remdm-jax parameter checkpoint.")
  parser.add_argument("--input", required=True, help="mdlm.ckpt, model.safetensors or its folder")
  parser.add_argument("--output", required=True, help="output checkpoint folder")
  parser.add_argument("--no-ema", action="store_true",
                      help="use the raw state_dict of a .ckpt instead of the EMA weights")
  parser.add_argument("--num-heads", type=int, default=None, help="default: hidden / 64")
  parser.add_argument("--max-seq-len", type=int, default=None, help="default 1024 or config.json")
  parser.add_argument("--time-conditioning", action="store_true",
                      help="the model was trained with time conditioning (OWT checkpoint: no)")
  args = parser.parse_args(argv)

  overrides = dict(num_heads=args.num_heads, max_seq_len=args.max_seq_len,
                   time_conditioning=True if args.time_conditioning else None)
  cfg, params = load_official(args.input, use_ema=not args.no_ema, **overrides)

  from remdm_jax.checkpoint import save_params  # pylint: disable=g-import-not-at-top
  out = save_params(args.output, params, model_config=cfg.to_dict(), extra_metadata={
    "source": os.path.abspath(args.input),
    "converted_by": "remdm_jax.models.convert",
    "weights": "state_dict" if args.no_ema else "ema",
  })
  n = sum(int(np.prod(v.shape)) for _, v in nnx.to_flat_state(params))
  print(f"wrote {out}: {n:,} parameters, config {cfg.to_json()}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
