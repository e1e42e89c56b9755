"""Importer of the official MaskGIT Flax checkpoints into our NNX ports (SPEC_DOMAINS §I.1).

File format: the public checkpoints (`maskgit_imagenet256_checkpoint`,
`tokenizer_imagenet256_checkpoint` from storage.googleapis.com/maskgit-public) are single files of
flax msgpack bytes, read by the reference with `flax.serialization.from_bytes(None, bytes)`
(`maskgit/utils.py::restore_from_path`), giving the linen variables `{"params": {...}}`. We read
them with `flax.serialization.msgpack_restore` (the same decoder). A directory written by
`flax.training.checkpoints.save_checkpoint` (files `checkpoint_<step>`, same msgpack encoding) is
also accepted: its highest step is read. A tree without a top-level "params" is taken as the params.

Transformer name table (linen path under `params/` -> our nnx path), i = 0 .. layers-1,
A = TransformerLayer_i/Attention_0, M = TransformerLayer_i/Mlp_0:

  Embed_0/word_embeddings/embedding [V, H]       -> embed/word_embeddings
  Embed_0/position_embeddings/embedding [L, H]   -> embed/position_embeddings
  Embed_0/embeddings_ln/{scale,bias} [H]         -> embed/embeddings_ln/{scale,bias}
  A/self_attention/{query,key,value}/kernel [H, N, D], bias [N, D]
                                                 -> layers/i/attention/{query,key,value}/...
  A/self_attention/out/kernel [N, D, H], bias [H] -> layers/i/attention/out/...
  A/attention_output_ln/{scale,bias}             -> layers/i/attention/attention_output_ln/...
  M/{intermediate_output,layer_output}/{kernel,bias}, M/layer_output_ln/{scale,bias}
                                                 -> layers/i/mlp/...
  MlmLayer_0/mlm_dense/{kernel,bias}, MlmLayer_0/mlm_ln/{scale,bias}
                                                 -> mlm/mlm_dense/..., mlm/mlm_ln/...
  MlmLayer_0/mlm_bias/bias [V]                   -> mlm/mlm_bias

VQGAN (tokenizer) table: `quantizer/codebook [K, E]` -> `codebook`; `decoder/Conv_j/{kernel,bias}`
-> `decoder/convs/j/...`; `decoder/ResBlock_k/{GroupNorm_0,Conv_0,GroupNorm_1,Conv_1,Conv_2}/...`
-> `decoder/blocks/k/...`; `decoder/GroupNorm_0/{scale,bias}` -> `decoder/norm/...`. The
`encoder/...` subtree (encoding images is not needed for generation) is skipped.

Every missing, unexpected or mis-shaped key is named in one ValueError; a missing file raises
FileNotFoundError. No name is copied from the weights without being in the table.
"""
from __future__ import annotations

import math
import os
import re
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx, serialization

from remdm_jax.fileio import atomic_open
from remdm_jax.images import maskgit as mg
from remdm_jax.images import vqgan as vq
from remdm_jax.models.keys import check_keys

_ATTN = ("query", "key", "value", "out")


# ---------------------------------------------------------------------------------------------
# Name tables.


def transformer_name_table(cfg: mg.MaskGITConfig) -> list[tuple[str, str]]:
  """(linen path under params/, our nnx path) for every transformer parameter."""
  t = [("Embed_0/word_embeddings/embedding", "embed/word_embeddings"),
       ("Embed_0/position_embeddings/embedding", "embed/position_embeddings"),
       ("Embed_0/embeddings_ln/scale", "embed/embeddings_ln/scale"),
       ("Embed_0/embeddings_ln/bias", "embed/embeddings_ln/bias")]
  for i in range(cfg.num_layers):
    src, dst = f"TransformerLayer_{i}/", f"layers/{i}/"
    for p in _ATTN:
      for leaf in ("kernel", "bias"):
        t.append((f"{src}Attention_0/self_attention/{p}/{leaf}", f"{dst}attention/{p}/{leaf}"))
    for leaf in ("scale", "bias"):
      t.append((f"{src}Attention_0/attention_output_ln/{leaf}",
                f"{dst}attention/attention_output_ln/{leaf}"))
    for p in ("intermediate_output", "layer_output"):
      for leaf in ("kernel", "bias"):
        t.append((f"{src}Mlp_0/{p}/{leaf}", f"{dst}mlp/{p}/{leaf}"))
    for leaf in ("scale", "bias"):
      t.append((f"{src}Mlp_0/layer_output_ln/{leaf}", f"{dst}mlp/layer_output_ln/{leaf}"))
  t += [("MlmLayer_0/mlm_dense/kernel", "mlm/mlm_dense/kernel"),
        ("MlmLayer_0/mlm_dense/bias", "mlm/mlm_dense/bias"),
        ("MlmLayer_0/mlm_ln/scale", "mlm/mlm_ln/scale"),
        ("MlmLayer_0/mlm_ln/bias", "mlm/mlm_ln/bias"),
        ("MlmLayer_0/mlm_bias/bias", "mlm/mlm_bias")]
  return t


def vqgan_name_table(cfg: vq.VQGANConfig) -> list[tuple[str, str]]:
  """(linen path under params/, our nnx path) for the codebook and every decoder parameter."""
  _, abstract = vq.abstract_params(cfg)
  ours = {"/".join(str(p) for p in path) for path, _ in nnx.to_flat_state(abstract)}
  t = [("quantizer/codebook", "codebook")]
  for linen, our in vq.linen_decoder_names(cfg):
    for name in sorted(ours):
      if name.startswith(f"decoder/{our}/"):
        t.append((f"decoder/{linen}/{name[len(f'decoder/{our}/'):]}", name))
  return t


def _our_shapes(abstract: nnx.State) -> dict[str, tuple[int, ...]]:
  return {"/".join(str(p) for p in path): tuple(v.shape) for path, v in nnx.to_flat_state(abstract)}


def official_transformer_shapes(cfg: mg.MaskGITConfig) -> dict[str, tuple[int, ...]]:
  """{linen path: shape} of the official transformer params for `cfg`."""
  shapes = _our_shapes(mg.abstract_params(cfg)[1])
  return {linen: shapes[our] for linen, our in transformer_name_table(cfg)}


def official_vqgan_decoder_shapes(cfg: vq.VQGANConfig) -> dict[str, tuple[int, ...]]:
  """{linen path: shape} of the official codebook + decoder params for `cfg` (no encoder)."""
  shapes = _our_shapes(vq.abstract_params(cfg)[1])
  return {linen: shapes[our] for linen, our in vqgan_name_table(cfg)}


# ---------------------------------------------------------------------------------------------
# Reading and writing the file format.


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """Nested dict -> {"a/b/c": leaf}."""
  out = {}
  for k, v in tree.items():
    name = f"{prefix}{k}"
    if isinstance(v, Mapping):
      out.update(flatten(v, name + "/"))
    else:
      out[name] = v
  return out


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
  """{"a/b/c": leaf} -> nested dict."""
  tree: dict[str, Any] = {}
  for name, v in flat.items():
    node = tree
    *parents, last = name.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[last] = v
  return tree


def _resolve_file(path: str) -> str:
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"checkpoint not found: {path}")
  if os.path.isdir(path):
    steps = [(int(m.group(1)), f) for f in os.listdir(path)
             if (m := re.fullmatch(r"checkpoint_(\d+)", f))]
    if not steps:
      raise FileNotFoundError(f"checkpoint directory {path} holds no checkpoint_<step> file")
    path = os.path.join(path, max(steps)[1])
  return path


def read_flax_checkpoint(path) -> dict[str, np.ndarray]:
  """Reads an official MaskGIT checkpoint file (flax msgpack) -> {linen path: float32 array}
  of its params (the "params" collection if present, else the whole tree).

  Raises FileNotFoundError (missing file) or ValueError (not a flax msgpack tree)."""
  file = _resolve_file(path)
  with open(file, "rb") as f:
    data = f.read()
  try:
    tree = serialization.msgpack_restore(data)
  except Exception as e:  # msgpack raises several exception types
    raise ValueError(f"{file}: not a flax msgpack checkpoint ({type(e).__name__}: {e})") from None
  if not isinstance(tree, Mapping):
    raise ValueError(f"{file}: the checkpoint holds a {type(tree).__name__}, not a parameter tree")
  if "params" in tree and isinstance(tree["params"], Mapping):
    tree = tree["params"]
  return {k: np.asarray(v) for k, v in flatten(tree).items()}


def write_flax_checkpoint(params: Mapping[str, Any], path) -> None:
  """Writes {linen path: array} (or a nested dict) as the official format: msgpack bytes of
  `{"params": tree}` (`flax.serialization.msgpack_serialize`), atomically. For tests and for
  exporting converted weights."""
  flat = flatten(params) if any(isinstance(v, Mapping) for v in params.values()) else dict(params)
  tree = {"params": unflatten({k: np.asarray(v) for k, v in flat.items()})}
  with atomic_open(path, "wb") as f:
    f.write(serialization.msgpack_serialize(tree))


# ---------------------------------------------------------------------------------------------
# Conversion.


def _to_state(arrays: Mapping[str, np.ndarray], table: list[tuple[str, str]],
              abstract: nnx.State, what: str, ignore_prefixes: tuple[str, ...] = ()) -> nnx.State:
  """Maps {linen path: array} through `table` into `abstract`'s tree; one ValueError naming every
  missing, unexpected and mis-shaped key."""
  shapes = _our_shapes(abstract)
  expected = {linen: shapes[our] for linen, our in table}
  present = {k for k in arrays if not k.startswith(ignore_prefixes)}
  missing = [k for k, _ in table if k not in arrays]
  unexpected = sorted(present - set(expected))
  misshaped = [f"{k}: expected {expected[k]}, got {tuple(np.shape(arrays[k]))}"
               for k, _ in table if k in arrays and tuple(np.shape(arrays[k])) != expected[k]]
  check_keys(f"{what} checkpoint does not match the model", missing, unexpected, misshaped)
  converted = {our: np.asarray(arrays[linen], np.float32) for linen, our in table}
  flat = []
  for path, var in nnx.to_flat_state(abstract):
    name = "/".join(str(p) for p in path)
    flat.append((path, var.replace(jnp.asarray(converted.pop(name)))))
  if converted:  # the table names a path the model lacks: a bug here, not in the file
    raise AssertionError(f"name table paths not in the model: {sorted(converted)}")
  return nnx.from_flat_state(flat)


def infer_transformer_config(arrays: Mapping[str, np.ndarray], *, codebook_size: int = 1024,
                             **overrides) -> mg.MaskGITConfig:
  """MaskGITConfig from the official param shapes: V, L, H, layers, heads (query kernel
  [H, N, D]) and MLP width are read; V = codebook_size + classes + 1 splits V (the codebook size
  is not in the transformer's shapes: 1024 for the public model)."""
  need = ("Embed_0/word_embeddings/embedding", "Embed_0/position_embeddings/embedding",
          "TransformerLayer_0/Attention_0/self_attention/query/kernel",
          "TransformerLayer_0/Mlp_0/intermediate_output/kernel")
  for k in need:
    if k not in arrays:
      raise ValueError(f"cannot infer the MaskGIT transformer config: key {k!r} is missing")
  vocab, hidden = np.shape(arrays[need[0]])
  seq_len = np.shape(arrays[need[1]])[0]
  heads = np.shape(arrays[need[2]])[1]
  mlp = np.shape(arrays[need[3]])[1]
  layers = 1 + max(int(m.group(1)) for k in arrays
                   if (m := re.match(r"TransformerLayer_(\d+)/", k)))
  classes = int(vocab) - int(codebook_size) - 1
  if classes <= 0:
    raise ValueError(f"vocabulary {vocab} is too small for codebook_size={codebook_size} + "
                     "classes + 1 mask")
  fields = dict(codebook_size=int(codebook_size), num_classes=classes,
                num_image_tokens=int(seq_len) - 1, hidden_size=int(hidden), num_layers=int(layers),
                num_heads=int(heads), intermediate_size=int(mlp))
  fields.update(overrides)
  return mg.MaskGITConfig.from_dict(fields)


def infer_vqgan_config(arrays: Mapping[str, np.ndarray], **overrides) -> vq.VQGANConfig:
  """VQGANConfig from the official codebook + decoder shapes (levels from the Conv_j count,
  residual blocks per level from the ResBlock_k count, widths from the block outputs)."""
  if "quantizer/codebook" not in arrays:
    raise ValueError("cannot infer the VQGAN config: key 'quantizer/codebook' is missing")
  k, e = np.shape(arrays["quantizer/codebook"])
  convs = {int(m.group(1)) for n in arrays if (m := re.match(r"decoder/Conv_(\d+)/", n))}
  blocks = {int(m.group(1)) for n in arrays if (m := re.match(r"decoder/ResBlock_(\d+)/", n))}
  if not convs or not blocks:
    raise ValueError("cannot infer the VQGAN config: no decoder/Conv_j or decoder/ResBlock_k keys")
  levels = len(convs) - 1
  if levels < 1 or len(blocks) % (levels + 1):
    raise ValueError(f"cannot infer the VQGAN config from {len(convs)} convs and {len(blocks)} "
                     "residual blocks")
  nrb = len(blocks) // (levels + 1)
  widths = []  # output width of each level, from the last block of the level (i = levels-1..0)
  for j in range(levels):
    key = f"decoder/ResBlock_{nrb * (j + 2) - 1}/Conv_1/kernel"
    if key not in arrays:
      raise ValueError(f"cannot infer the VQGAN config: key {key!r} is missing")
    widths.append(int(np.shape(arrays[key])[-1]))
  widths = widths[::-1]  # level 0 first
  filters = math.gcd(*widths)
  fields = dict(codebook_size=int(k), embedding_dim=int(e), filters=filters, num_res_blocks=nrb,
                channel_multipliers=tuple(w // filters for w in widths))
  fields.update(overrides)
  return vq.VQGANConfig.from_dict(fields)


def transformer_params_from_arrays(arrays: Mapping[str, np.ndarray],
                                   cfg: mg.MaskGITConfig) -> nnx.State:
  """{linen path: array} -> our MaskGITTransformer params (nnx.State); ValueError on mismatch."""
  return _to_state(arrays, transformer_name_table(cfg), mg.abstract_params(cfg)[1],
                   "MaskGIT transformer")


def vqgan_params_from_arrays(arrays: Mapping[str, np.ndarray], cfg: vq.VQGANConfig) -> nnx.State:
  """{linen path: array} -> our VQGANDecoder params; `encoder/...` keys are skipped."""
  return _to_state(arrays, vqgan_name_table(cfg), vq.abstract_params(cfg)[1], "VQGAN tokenizer",
                   ignore_prefixes=("encoder/",))


def load_maskgit_transformer(path, cfg: mg.MaskGITConfig | None = None, *,
                             codebook_size: int = 1024, compute_dtype: str | None = None
                             ) -> tuple[mg.MaskGITConfig, nnx.GraphDef, nnx.State]:
  """Reads the official transformer checkpoint -> (config, graphdef, params).

  cfg: the expected architecture (e.g. `MaskGITConfig.preset("imagenet256")`); None infers it
  from the shapes. compute_dtype: overrides cfg.compute_dtype ("float32" / "bfloat16").
  Raises FileNotFoundError / ValueError (naming every bad key)."""
  arrays = read_flax_checkpoint(path)
  cfg = infer_transformer_config(arrays, codebook_size=codebook_size) if cfg is None else cfg
  if compute_dtype is not None:
    cfg = mg.MaskGITConfig.from_dict({**cfg.to_dict(), "compute_dtype": compute_dtype})
  params = transformer_params_from_arrays(arrays, cfg)
  return cfg, mg.abstract_params(cfg)[0], params


def load_vqgan_decoder(path, cfg: vq.VQGANConfig | None = None
                       ) -> tuple[vq.VQGANConfig, nnx.GraphDef, nnx.State]:
  """Reads the official tokenizer checkpoint -> (config, graphdef, decoder params).
  cfg None infers it. Raises FileNotFoundError / ValueError (naming every bad key)."""
  arrays = read_flax_checkpoint(path)
  cfg = infer_vqgan_config(arrays) if cfg is None else cfg
  params = vqgan_params_from_arrays(arrays, cfg)
  return cfg, vq.abstract_params(cfg)[0], params


def main(argv=None) -> int:
  """`python -m remdm_jax.images.convert --transformer_ckpt F [--vqgan_ckpt F]`: reads the
  official checkpoints into our ports (every name and shape checked) and prints what they hold,
  without converting anything to disk (`images.imagenet` loads them directly). With no checkpoint
  named it is an error (it used to do nothing and exit 0). Bad input: one `error:` line, exit 2."""
  import argparse
  import json
  import sys
  ap = argparse.ArgumentParser(prog="python -m remdm_jax.images.convert",
                               description=main.__doc__.split("\n\n")[0])
  ap.add_argument("--transformer_ckpt", default=None,
                  help="maskgit_imagenet256_checkpoint (flax msgpack file or checkpoint folder)")
  ap.add_argument("--vqgan_ckpt", default=None, help="tokenizer_imagenet256_checkpoint")
  ap.add_argument("--codebook_size", type=int, default=1024)
  args = ap.parse_args(argv)
  out = {}
  try:
    if not (args.transformer_ckpt or args.vqgan_ckpt):
      raise ValueError("name a checkpoint to read: --transformer_ckpt and / or --vqgan_ckpt")
    if args.transformer_ckpt:
      cfg, _, params = load_maskgit_transformer(args.transformer_ckpt,
                                                codebook_size=args.codebook_size)
      out["transformer"] = {"config": cfg.to_dict(), "parameters": _count(params)}
    if args.vqgan_ckpt:
      vcfg, _, vparams = load_vqgan_decoder(args.vqgan_ckpt)
      out["vqgan_decoder"] = {"config": vcfg.to_dict() if hasattr(vcfg, "to_dict")
                              else str(vcfg), "parameters": _count(vparams)}
  except (ValueError, FileNotFoundError, OSError) as e:
    text = " ".join(str(e).split()) or type(e).__name__
    print(f"error: {text}", file=sys.stderr)
    return 2
  print(json.dumps(out, default=str))
  return 0


def _count(params) -> int:
  import jax
  return int(sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params)))


if __name__ == "__main__":
  import sys
  sys.exit(main())
