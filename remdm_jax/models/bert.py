"""Plain-JAX BERT encoder (post-LN; the all-MiniLM-L6-v2 shape: 6 layers, 384 hidden, 12 heads,
exact-erf GELU, LayerNorm eps 1e-12) loading a Hugging Face `model.safetensors`:
  x = LN(word[ids] + pos[0..L-1] + type[0])
  per layer: x = LN(x + Wo attn(x, mask));  x = LN(x + W2 gelu(W1 x))
and sentence-transformers' Pooling(mean over attention mask) + Normalize (`mean_pool_normalize`):
  e = sum_i m_i x_i / max(sum_i m_i, 1e-9),   e / max(||e||_2, 1e-12).
The featuriser built on it is `remdm_jax.text.minilm`.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from remdm_jax.models.hf_weights import layer_norm, safetensors_reader, stack_layers

HIGHEST = jax.lax.Precision.HIGHEST
NAME = "all-MiniLM-L6-v2"


@dataclasses.dataclass(frozen=True)
class BertConfig:
  vocab_size: int = 30522
  hidden_size: int = 384
  num_hidden_layers: int = 6
  num_attention_heads: int = 12
  intermediate_size: int = 1536
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  hidden_act: str = "gelu"

  @classmethod
  def from_json(cls, path: str) -> "BertConfig":
    if not os.path.isfile(path):
      raise FileNotFoundError(f"BERT config.json not found: {path}")
    with open(path) as f:
      d = json.load(f)
    cfg = cls(**{k: d[k] for k in (f.name for f in dataclasses.fields(cls)) if k in d})
    if cfg.hidden_act not in ("gelu", "gelu_new"):
      raise ValueError(f"unsupported hidden_act={cfg.hidden_act!r} in {path}")
    if d.get("position_embedding_type", "absolute") != "absolute":
      raise ValueError(f"unsupported position_embedding_type in {path}")
    return cfg


_LAYER_KEYS = {
    "q_w": "attention.self.query.weight", "q_b": "attention.self.query.bias",
    "k_w": "attention.self.key.weight", "k_b": "attention.self.key.bias",
    "v_w": "attention.self.value.weight", "v_b": "attention.self.value.bias",
    "o_w": "attention.output.dense.weight", "o_b": "attention.output.dense.bias",
    "ln1_g": "attention.output.LayerNorm.weight", "ln1_b": "attention.output.LayerNorm.bias",
    "i_w": "intermediate.dense.weight", "i_b": "intermediate.dense.bias",
    "out_w": "output.dense.weight", "out_b": "output.dense.bias",
    "ln2_g": "output.LayerNorm.weight", "ln2_b": "output.LayerNorm.bias",
}


def load_bert_params(model_dir: str) -> tuple[BertConfig, dict]:
  """config.json + model.safetensors (HF BertModel layout, optional "bert." prefix) ->
  (config, params); torch Linear weights [out, in] are transposed to [in, out] and layers are
  stacked along a leading axis."""
  if not os.path.isdir(model_dir):
    raise FileNotFoundError(f"BERT model folder not found: {model_dir}")
  cfg = BertConfig.from_json(os.path.join(model_dir, "config.json"))
  st_path = os.path.join(model_dir, "model.safetensors")
  if not os.path.isfile(st_path):
    raise FileNotFoundError(f"BERT model.safetensors not found: {st_path}")
  with safetensors_reader(st_path, "bert.") as get:
    params = {
        "word": get("embeddings.word_embeddings.weight"),
        "pos": get("embeddings.position_embeddings.weight"),
        "type": get("embeddings.token_type_embeddings.weight"),
        "emb_ln_g": get("embeddings.LayerNorm.weight"),
        "emb_ln_b": get("embeddings.LayerNorm.bias"),
    }
    layers = stack_layers(get, "encoder.layer.{}", _LAYER_KEYS, cfg.num_hidden_layers)
    params["layers"] = {k: np.swapaxes(v, 1, 2) if k.endswith("_w") else v
                        for k, v in layers.items()}
  if params["word"].shape != (cfg.vocab_size, cfg.hidden_size):
    raise ValueError(f"{st_path}: word embeddings {params['word'].shape} do not match config")
  return cfg, params


def bert_encode(params: dict, ids: jax.Array, mask: jax.Array, cfg: BertConfig,
                precision=HIGHEST) -> jax.Array:
  """Last hidden states. ids int [B, L], mask {0,1} [B, L] -> float32 [B, L, H]."""
  b, length = ids.shape
  nh = cfg.num_attention_heads
  dh = cfg.hidden_size // nh
  eps = cfg.layer_norm_eps
  dot = functools.partial(jnp.einsum, precision=precision)
  x = (jnp.take(params["word"], ids, axis=0) + params["pos"][:length][None]
       + params["type"][0][None, None])
  x = layer_norm(x, params["emb_ln_g"], params["emb_ln_b"], eps)
  bias = jnp.where(mask[:, None, None, :] > 0, 0.0, jnp.finfo(jnp.float32).min)
  approx = cfg.hidden_act == "gelu_new"

  def layer(x, p):
    def proj(name):
      return (dot("bld,de->ble", x, p[name + "_w"]) + p[name + "_b"]).reshape(b, length, nh, dh)

    q, k, v = proj("q"), proj("k"), proj("v")
    s = dot("bqhd,bkhd->bhqk", q, k) / np.float32(np.sqrt(dh)) + bias
    a = jax.nn.softmax(s, axis=-1)
    o = dot("bhqk,bkhd->bqhd", a, v).reshape(b, length, nh * dh)
    x = layer_norm(x + dot("bld,de->ble", o, p["o_w"]) + p["o_b"], p["ln1_g"], p["ln1_b"], eps)
    h = jax.nn.gelu(dot("bld,de->ble", x, p["i_w"]) + p["i_b"], approximate=approx)
    x = layer_norm(x + dot("bld,de->ble", h, p["out_w"]) + p["out_b"], p["ln2_g"], p["ln2_b"],
                    eps)
    return x, None

  x, _ = jax.lax.scan(layer, x, params["layers"])
  return x


def mean_pool_normalize(h: jax.Array, mask: jax.Array) -> jax.Array:
  """sentence-transformers Pooling(mean) + Normalize: [B, L, H], [B, L] -> [B, H] unit rows."""
  m = mask.astype(h.dtype)[..., None]
  e = jnp.sum(h * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1e-9)
  return e / jnp.maximum(jnp.linalg.norm(e, axis=-1, keepdims=True), 1e-12)
