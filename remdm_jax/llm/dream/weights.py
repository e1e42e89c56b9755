"""Loading Dream checkpoints in the Hugging Face layout (the keys of transformers'
`Qwen2ForCausalLM`, which Dream's `DreamModel` shares), offline.

Key mapping (torch Linear weights [out, in] are transposed to kernels [in, out]):
  model.embed_tokens.weight                         -> embed_tokens.embedding      [V, d]
  model.layers.{i}.self_attn.{q,k,v}_proj.weight    -> layers.{i}.self_attn.{..}.kernel (T)
  model.layers.{i}.self_attn.{q,k,v}_proj.bias      -> layers.{i}.self_attn.{..}.bias
  model.layers.{i}.self_attn.o_proj.weight          -> layers.{i}.self_attn.o_proj.kernel (T)
  model.layers.{i}.mlp.{gate,up,down}_proj.weight   -> layers.{i}.mlp.{..}.kernel (T)
  model.layers.{i}.{input,post_attention}_layernorm.weight -> layers.{i}.{..}.weight
  model.norm.weight                                 -> norm.weight
  lm_head.weight                                    -> lm_head.kernel (T)         [d, V]
(absent when tie_word_embeddings). Rotary `inv_freq` buffers are not stored (non-persistent).
Streaming, sharding and error reporting are those of `remdm_jax.llm.weights.stream_params`.
"""
from __future__ import annotations

import json
import os
import re

import numpy as np
from flax import nnx

from remdm_jax.fileio import atomic_open
from remdm_jax.llm.dream.model import DreamConfig, abstract_model
from remdm_jax.llm.weights import _path_key, stream_params

_LAYER_RE = re.compile(r"model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+_proj)\.(weight|bias)")
_NORM_RE = re.compile(r"model\.layers\.(\d+)\.(input_layernorm|post_attention_layernorm)\.weight")
_ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
_MLP = ("gate_proj", "up_proj", "down_proj")


def hf_key_to_path(key: str, scan_layers: bool = False):
  """HF key -> (param path tuple, layer index or None, transpose?) or None if unknown."""
  if key == "model.embed_tokens.weight":
    return ("embed_tokens", "embedding"), None, False
  if key == "model.norm.weight":
    return ("norm", "weight"), None, False
  if key == "lm_head.weight":
    return ("lm_head", "kernel"), None, True
  m = _LAYER_RE.fullmatch(key)
  if m is not None:
    i, grp, mod, kind = int(m.group(1)), m.group(2), m.group(3), m.group(4)
    ok = mod in _ATTN if grp == "self_attn" else mod in _MLP
    if not ok or (kind == "bias" and mod not in ("q_proj", "k_proj", "v_proj")):
      return None
    leaf, tr = ("kernel", True) if kind == "weight" else ("bias", False)
    sub = (grp, mod, leaf)
  else:
    m = _NORM_RE.fullmatch(key)
    if m is None:
      return None
    i, sub, tr = int(m.group(1)), (m.group(2), "weight"), False
  if scan_layers:
    return ("layers",) + sub, i, tr
  return ("layers", i) + sub, None, tr


def hf_name(tpath, layer) -> str:
  """Our parameter path (+ layer of a stacked parameter) -> HF key."""
  if tpath[0] == "layers":
    if layer is None:
      i, sub = tpath[1], tpath[2:]
    else:
      i, sub = layer, tpath[1:]
    kind = "bias" if sub[-1] == "bias" else "weight"
    return f"model.layers.{i}." + ".".join(sub[:-1]) + f".{kind}"
  return {("embed_tokens", "embedding"): "model.embed_tokens.weight",
          ("norm", "weight"): "model.norm.weight",
          ("lm_head", "kernel"): "lm_head.weight"}[tuple(tpath)]


def load_params(model_dir: str, cfg: DreamConfig, mesh=None, rules=None):
  """Streams a Dream folder's safetensors into `DreamModel(cfg)` parameters -> (graphdef, params).
  ValueError names every missing / unexpected / mis-shaped key before any tensor is read."""
  gd, abstract = abstract_model(cfg)
  state = stream_params(model_dir, abstract, lambda k: hf_key_to_path(k, cfg.scan_layers),
                        hf_name, param_dtype=cfg.param_dtype, scan_layers=cfg.scan_layers,
                        mesh=mesh, rules=rules, arch="Dream")
  return gd, state


def load_dream(model_dir: str, mesh=None, rules=None, **cfg_overrides):
  """config.json + weights of a local Dream folder -> (cfg, graphdef, params). Nothing is
  downloaded; cfg_overrides: DreamConfig fields (param_dtype, ..., mask_token_id, ...)."""
  if not os.path.isdir(model_dir):
    raise ValueError(f"model_dir={model_dir!r} is not a folder")
  cfg_overrides = {k: v for k, v in cfg_overrides.items() if v is not None}
  cfg = DreamConfig.from_hf_config(model_dir, **cfg_overrides)
  gd, params = load_params(model_dir, cfg, mesh=mesh, rules=rules)
  return cfg, gd, params


def save_hf_checkpoint(model_dir: str, cfg: DreamConfig, params, dtype=np.float32) -> None:
  """Writes `params` as a Dream-layout `model.safetensors` + `config.json` (fixtures / export)."""
  from safetensors.numpy import save as st_bytes
  tensors = {}
  for p, v in nnx.to_flat_state(params):
    tpath = _path_key(p)
    arr = np.asarray(v[...], dtype)
    stacked = cfg.scan_layers and tpath[0] == "layers"
    for i in (range(arr.shape[0]) if stacked else [None]):
      a = arr[i] if stacked else arr
      tensors[hf_name(tpath, i)] = np.ascontiguousarray(a.T if tpath[-1] == "kernel" else a)
  os.makedirs(model_dir, exist_ok=True)
  with atomic_open(os.path.join(model_dir, "model.safetensors"), "wb") as f:
    f.write(st_bytes(tensors))
  hf = {"architectures": ["DreamModel"], "model_type": "Dream",
        "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads, "vocab_size": cfg.vocab_size,
        "rms_norm_eps": cfg.rms_norm_eps, "rope_theta": cfg.rope_theta, "rope_scaling": None,
        "max_position_embeddings": cfg.max_position_embeddings, "hidden_act": "silu",
        "tie_word_embeddings": cfg.tie_word_embeddings, "use_sliding_window": False,
        "mask_token_id": cfg.mask_token_id, "pad_token_id": cfg.pad_token_id,
        "bos_token_id": cfg.eos_token_id, "eos_token_id": cfg.eos_token_id}
  with atomic_open(os.path.join(model_dir, "config.json")) as f:
    json.dump(hf, f, indent=1)
