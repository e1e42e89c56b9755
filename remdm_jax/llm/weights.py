"""Loading LLaDA checkpoints in the Hugging Face layout, offline (SPEC_DOMAINS §L.4).

A model folder holds `config.json`, the weights as one `model.safetensors` or shards listed in
`model.safetensors.index.json` ({"weight_map": {key: file}}), and `tokenizer.json`.

Key mapping (HF `model.transformer.*` -> our NNX path; torch Linear weights [out, in] are
transposed to kernels [in, out]):
  wte.weight                      -> wte.embedding           [V, d]
  blocks.{i}.{attn_norm,ff_norm}.weight -> blocks.{i}.{...}.weight
  blocks.{i}.{q_proj,k_proj,v_proj,attn_out,ff_proj,up_proj,ff_out}.weight -> ... .kernel (T)
  blocks.{i}.{q_proj,k_proj,v_proj}.bias -> ... .bias
  ln_f.weight                     -> ln_f.weight
  ff_out.weight                   -> ff_out.kernel (T)       [d, V]
With `scan_layers=True` the block index becomes the leading axis of the stacked parameter.

Streaming: the safetensors headers are parsed first (no tensor data) so every missing, unexpected
or mis-shaped key is reported in ONE ValueError before any tensor is read. Tensors are then read
one at a time through `numpy.memmap` (bf16 via `ml_dtypes`), transposed, cast to the target dtype
and `jax.device_put` with their `NamedSharding` (each device receives only its shard). At most one
tensor is ever held on the host, in the target dtype; the model is never materialised in float32.
"""
from __future__ import annotations

import json
import os
import re
import struct

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from remdm_jax.llm.model import LLaDAConfig, abstract_model
from remdm_jax.llm.tokenizer import HFTokenizer
from remdm_jax.models.keys import check_keys

_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64,
              "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
_PREFIX = "model.transformer."
_LINEARS = ("q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out")
_BLOCK_RE = re.compile(r"blocks\.(\d+)\.(\w+)\.(weight|bias)")
_STACKED = ("blocks", "layers")  # parameter groups stacked along a layer axis with scan_layers


def _np_dtype(code: str):
  if code == "BF16":
    import ml_dtypes
    return np.dtype(ml_dtypes.bfloat16)
  if code not in _ST_DTYPES:
    raise ValueError(f"unsupported safetensors dtype {code!r}")
  return np.dtype(_ST_DTYPES[code])


def read_safetensors_header(path: str) -> tuple[dict, int]:
  """(header dict {key: {"dtype", "shape", "data_offsets"}}, byte offset of the data section).
  ValueError naming the file when it is not a safetensors file or is shorter than its header
  says (a truncated download: "mmap length is greater than file size" named no file)."""
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    raw = f.read(8)
    if len(raw) != 8:
      raise ValueError(f"{path}: not a safetensors file (too short)")
    (n,) = struct.unpack("<Q", raw)
    if n > size - 8:
      raise ValueError(f"{path}: not a safetensors file (header length {n} > file size {size})")
    try:
      header = json.loads(f.read(n))
    except (UnicodeDecodeError, json.JSONDecodeError):
      raise ValueError(f"{path}: not a safetensors file (header is not JSON)") from None
  if not isinstance(header, dict):
    raise ValueError(f"{path}: not a safetensors file (header is not a JSON object)")
  header.pop("__metadata__", None)
  end = 0
  for key, meta in header.items():
    offs = meta.get("data_offsets") if isinstance(meta, dict) else None
    if (not isinstance(offs, list) or len(offs) != 2 or not all(isinstance(o, int) for o in offs)
        or not 0 <= offs[0] <= offs[1]):
      raise ValueError(f"{path}: not a safetensors file (entry {key!r} has no valid "
                       "data_offsets)")
    end = max(end, offs[1])
  if 8 + n + end > size:
    raise ValueError(f"{path}: truncated safetensors file (its header describes {8 + n + end} "
                     f"bytes, the file holds {size})")
  return header, 8 + n


def checkpoint_files(model_dir: str) -> list[str]:
  """Safetensors files of a folder: those of `model.safetensors.index.json`, else
  `model.safetensors`, else every `*.safetensors` (sorted). ValueError if none."""
  index = os.path.join(model_dir, "model.safetensors.index.json")
  if os.path.isfile(index):
    with open(index) as f:
      wm = json.load(f).get("weight_map")
    if not isinstance(wm, dict) or not wm:
      raise ValueError(f"{index}: no 'weight_map'")
    files = sorted(set(wm.values()))
    missing = [x for x in files if not os.path.isfile(os.path.join(model_dir, x))]
    if missing:
      raise ValueError(f"{index} names missing shard file(s) {missing}")
    return [os.path.join(model_dir, x) for x in files]
  single = os.path.join(model_dir, "model.safetensors")
  if os.path.isfile(single):
    return [single]
  files = sorted(x for x in os.listdir(model_dir) if x.endswith(".safetensors")) \
      if os.path.isdir(model_dir) else []
  if not files:
    raise ValueError(f"no safetensors weights in {model_dir!r} (expected model.safetensors or "
                     "model.safetensors.index.json)")
  return [os.path.join(model_dir, x) for x in files]


def hf_key_to_path(key: str, scan_layers: bool = False):
  """HF key -> (param path tuple, layer index or None, transpose?) or None if unknown."""
  if not key.startswith(_PREFIX):
    return None
  k = key[len(_PREFIX):]
  if k == "wte.weight":
    return ("wte", "embedding"), None, False
  if k == "ln_f.weight":
    return ("ln_f", "weight"), None, False
  if k == "ff_out.weight":
    return ("ff_out", "kernel"), None, True
  m = _BLOCK_RE.fullmatch(k)
  if m is None:
    return None
  i, mod, kind = int(m.group(1)), m.group(2), m.group(3)
  if mod in ("attn_norm", "ff_norm") and kind == "weight":
    leaf, tr = "weight", False
  elif mod in _LINEARS and kind == "weight":
    leaf, tr = "kernel", True
  elif mod in ("q_proj", "k_proj", "v_proj") and kind == "bias":
    leaf, tr = "bias", False
  else:
    return None
  if scan_layers:
    return ("blocks", mod, leaf), i, tr
  return ("blocks", i, mod, leaf), None, tr


def _path_key(path) -> tuple:
  return tuple(getattr(p, "key", getattr(p, "idx", p)) for p in path)


def load_params(model_dir: str, cfg: LLaDAConfig, mesh=None, rules=None):
  """Streams the safetensors of `model_dir` into the parameters of `LLaDAModel(cfg)`.

  Args:
    model_dir: folder with model.safetensors(.index.json).
    cfg: the model config (param_dtype = stored dtype on device).
    mesh: optional `jax.sharding.Mesh` ("data", "fsdp", "tensor"); parameters are placed sharded by
      the logical-axis `rules` (default `remdm_jax.sharding.DEFAULT_RULES`). None = default
      device.
  Returns:
    (graphdef, params nnx.State).
  Raises:
    ValueError naming every missing / unexpected / mis-shaped key (checked before any tensor read).
  """
  gd, abstract = abstract_model(cfg)
  state = stream_params(model_dir, abstract, lambda k: hf_key_to_path(k, cfg.scan_layers),
                        _hf_name, param_dtype=cfg.param_dtype, scan_layers=cfg.scan_layers,
                        mesh=mesh, rules=rules, arch="LLaDA")
  return gd, state


def stream_params(model_dir: str, abstract, key_fn, name_fn, *, param_dtype: str,
                  scan_layers: bool, mesh=None, rules=None, arch: str = "model"):
  """The architecture-independent streaming loader (module docstring).

  Args:
    model_dir: folder with the safetensors.
    abstract: nnx.State of ShapeDtypeStruct parameters (`nnx.eval_shape` of the model).
    key_fn: HF key -> (param path tuple, layer index or None, transpose?) or None (unknown key).
    name_fn: (param path, layer or None) -> HF key (names the missing keys).
    param_dtype: dtype the parameters are stored in on device.
    scan_layers: parameters under "blocks" / "layers" are stacked along a leading layer axis.
    mesh, rules: as in `load_params`.
    arch: model name used in the error message.
  Returns:
    params nnx.State with the structure of `abstract`.
  Raises:
    ValueError naming every missing / unexpected / mis-shaped key before any tensor is read, or
    naming the file of a truncated tensor.
  """
  from remdm_jax import sharding as mesh_lib
  flat = {_path_key(p): v for p, v in nnx.to_flat_state(abstract)}
  if mesh is not None:
    rules = mesh_lib.DEFAULT_RULES if rules is None else rules
    shard_tree = mesh_lib.param_shardings(abstract, mesh, rules)
    shardings = {_path_key(p): (s.value if isinstance(s, nnx.Variable) else s)
                 for p, s in nnx.to_flat_state(shard_tree)}
  else:
    dev = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    shardings = {k: dev for k in flat}
  # Pass 1: headers only.
  entries, unexpected, bad_shape = {}, [], []
  for path in checkpoint_files(model_dir):
    header, start = read_safetensors_header(path)
    for key, meta in header.items():
      target = key_fn(key)
      if target is None or target[0] not in flat:
        unexpected.append(key)
        continue
      tpath, layer, tr = target
      want = tuple(flat[tpath].shape)
      if layer is not None:
        if layer >= want[0]:
          unexpected.append(key)
          continue
        want = want[1:]
      shape = tuple(meta["shape"])
      got = shape[::-1] if tr and len(shape) == 2 else shape
      if got != want:
        exp = want[::-1] if tr else want
        bad_shape.append(f"{key}: shape {shape}, expected {exp}")
        continue
      entries[(tpath, layer)] = (path, start, meta, tr, key)
  missing = []
  for tpath, v in flat.items():
    layers = range(v.shape[0]) if (scan_layers and tpath[0] in _STACKED) else [None]
    for layer in layers:
      if (tpath, layer) not in entries:
        missing.append(name_fn(tpath, layer))
  check_keys(f"checkpoint {model_dir!r} does not match the {arch} config", sorted(missing),
             sorted(unexpected), bad_shape)
  # Pass 2: stream tensor by tensor (file order, so each shard file is read once, sequentially).
  dtype = np.dtype(jnp.dtype(param_dtype))
  values: dict = {}
  setter = jax.jit(lambda a, x, i: a.at[i].set(x), donate_argnums=(0,))
  for (tpath, layer), (path, start, meta, tr, key) in sorted(
      entries.items(), key=lambda kv: (kv[1][0], kv[1][2]["data_offsets"][0])):
    a, b = meta["data_offsets"]
    arr = np.memmap(path, dtype=_np_dtype(meta["dtype"]), mode="r", offset=start + a,
                    shape=tuple(meta["shape"]))
    if arr.nbytes != b - a:
      raise ValueError(f"{path}: key {key} has {b - a} bytes, shape/dtype need {arr.nbytes}")
    host = np.ascontiguousarray(arr.T if tr else arr).astype(dtype, copy=False)
    if layer is None:
      values[tpath] = mesh_lib.put_global(host, shardings[tpath])  # multi-process too
    else:
      if tpath not in values:
        v = flat[tpath]
        values[tpath] = jax.jit(lambda: jnp.zeros(v.shape, dtype),
                                out_shardings=shardings[tpath])()
      sub = shardings[tpath]
      sub = NamedSharding(sub.mesh, P(*tuple(sub.spec)[1:])) if isinstance(sub, NamedSharding) \
          else sub
      values[tpath] = setter(values[tpath], mesh_lib.put_global(host, sub), layer)
    del host, arr
  return nnx.from_flat_state([(p, v.replace(values[_path_key(p)]))
                              for p, v in nnx.to_flat_state(abstract)])


def _hf_name(tpath, layer) -> str:
  if tpath[0] == "blocks":
    i, mod, leaf = (tpath[1], tpath[2], tpath[3]) if layer is None else (layer,) + tpath[1:]
    kind = "bias" if leaf == "bias" else "weight"
    return f"{_PREFIX}blocks.{i}.{mod}.{kind}"
  if tpath == ("wte", "embedding"):
    return _PREFIX + "wte.weight"
  return _PREFIX + f"{tpath[0]}.weight"


def load_llada(model_dir: str, mesh=None, rules=None, **cfg_overrides):
  """config.json + weights of a local HF LLaDA folder -> (cfg, graphdef, params). Nothing is
  downloaded. cfg_overrides: LLaDAConfig fields (e.g. param_dtype, compute_dtype, scan_layers,
  mask_token_id, eot_token_id); special ids config.json lacks come from the folder's tokenizer
  files (`LLaDAConfig.from_hf_config`, `model.resolve_ids`)."""
  if not os.path.isdir(model_dir):
    raise ValueError(f"model_dir={model_dir!r} is not a folder")
  cfg_overrides = {k: v for k, v in cfg_overrides.items() if v is not None}
  cfg = LLaDAConfig.from_hf_config(model_dir, **cfg_overrides)
  gd, params = load_params(model_dir, cfg, mesh=mesh, rules=rules)
  return cfg, gd, params


# The tokenizer of a model folder (tokenizer.json + its config files and chat template).
Tokenizer = HFTokenizer


def save_hf_checkpoint(model_dir: str, cfg: LLaDAConfig, params, *, shards: int = 1,
                       dtype=np.float32) -> None:
  """Writes `params` (our layout) as HF-layout safetensors + config.json (test / export helper).
  shards > 1 writes `model-0000i-of-0000n.safetensors` and the index."""
  from safetensors.numpy import save as st_bytes
  from remdm_jax.fileio import atomic_open

  def save_file(t, path):
    with atomic_open(path, "wb") as f:
      f.write(st_bytes(t))

  tensors = {}
  for p, v in nnx.to_flat_state(params):
    tpath = _path_key(p)
    arr = np.asarray(v[...], dtype)
    if cfg.scan_layers and tpath[0] == "blocks":
      for i in range(arr.shape[0]):
        name = _hf_name(tpath, i)
        tensors[name] = arr[i].T if tpath[-1] == "kernel" else arr[i]
    else:
      name = _hf_name(tpath, None)
      tensors[name] = arr.T if tpath[-1] in ("kernel",) else arr
  tensors = {k: np.ascontiguousarray(t) for k, t in tensors.items()}
  os.makedirs(model_dir, exist_ok=True)
  keys = sorted(tensors)
  if shards <= 1:
    save_file(tensors, os.path.join(model_dir, "model.safetensors"))
  else:
    wm = {}
    for s in range(shards):
      fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
      part = {k: tensors[k] for k in keys[s::shards]}
      save_file(part, os.path.join(model_dir, fname))
      wm.update({k: fname for k in part})
    with atomic_open(os.path.join(model_dir, "model.safetensors.index.json")) as f:
      json.dump({"metadata": {}, "weight_map": wm}, f)
  hf = {"d_model": cfg.d_model, "n_heads": cfg.n_heads, "n_kv_heads": cfg.n_kv_heads,
        "n_layers": cfg.n_layers, "mlp_hidden_size": cfg.mlp_hidden_size,
        "vocab_size": cfg.vocab_size, "embedding_size": cfg.embedding_size,
        "rope_theta": cfg.rope_theta, "rms_norm_eps": cfg.rms_norm_eps,
        "include_qkv_bias": cfg.include_qkv_bias, "max_sequence_length": cfg.max_sequence_length,
        "mask_token_id": cfg.mask_token_id, "eos_token_id": cfg.eos_token_id,
        "pad_token_id": cfg.pad_token_id, "model_type": "llada"}
  if cfg.eot_token_id is not None:
    hf["eot_token_id"] = cfg.eot_token_id
  with atomic_open(os.path.join(model_dir, "config.json")) as f:
    json.dump(hf, f, indent=1)
