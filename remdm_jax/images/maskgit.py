"""The MaskGIT bidirectional transformer (BERT-style) in Flax NNX (SPEC_DOMAINS §I.1).

A port of google-research/maskgit `maskgit/nets/maskgit_transformer.py` (class `Transformer`), the
network behind the public class-conditional ImageNet 256 checkpoint. B = batch, L = length (257),
H = hidden (768), N = heads (16), D = H / N, M = MLP width (3072), V = vocabulary (2025):

  x = LN_emb(W_word[ids] + W_pos[0..L-1])                          [B, L, H]  (dropout: inference
                                                                               only, so none)
  per layer (post-LN, as BERT):
      q, k, v = x W_{q,k,v} + b_{q,k,v}                            [B, L, N, D]
      a = softmax(q k^T / sqrt(D)) v W_out + b_out                 [B, L, H]  (no mask, no causal)
      x = LN_att(a + x)
      x = LN_mlp(GELU(x W_1 + b_1) W_2 + b_2 + x)
  MLM head:
      h = LN_mlm(GELU(x W_mlm + b_mlm))
      logits = h W_word^T + b_vocab                                [B, L, V]  (tied embedding)

GELU is JAX's default `jax.nn.gelu` (tanh approximation), as in the original; every LayerNorm has
eps 1e-12 and learned scale and bias. Vocabulary layout: ids [0, 1024) are VQ codes, 1024 + c the
class token of ImageNet class c, the last id (2024) the mask; the reference writes the mask as -1,
which the original reaches by JAX negative indexing, and so does `MaskGITTransformer` (any id in
[-V, 0) is wrapped to id + V).

Module attributes mirror the linen parameter names (`embed.word_embeddings`, `layers[i].attention.
query` ...), so `remdm_jax.images.convert` is a readable table. Every `nnx.Param` carries logical
axis names as `remdm_jax.models.dit` does (`vocab`, `embed`, `mlp`, `heads`, `norm`, None).
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from remdm_jax.models.dit import _param

LAYERNORM_EPS = 1e-12  # BERT's LayerNorm epsilon (maskgit_transformer.LAYERNORM_EPSILON)
INIT_STDDEV = 0.02  # truncated normal in [-2, 2] stddevs, times 0.02 (the original initializer)

_COMPUTE_DTYPES = ("float32", "bfloat16", "float16")

_PRESETS: dict[str, dict[str, Any]] = {
  # The public ImageNet 256 model: 172 M parameters (maskgit_class_cond_config + inference.py).
  "imagenet256": dict(codebook_size=1024, num_classes=1000, num_image_tokens=256, hidden_size=768,
                      num_layers=24, num_heads=16, intermediate_size=3072),
  # Unit tests: 16 codes, 4 classes, 4x4 tokens.
  "tiny": dict(codebook_size=16, num_classes=4, num_image_tokens=16, hidden_size=32, num_layers=2,
               num_heads=4, intermediate_size=64),
}


@dataclasses.dataclass(frozen=True)
class MaskGITConfig:
  """Architecture of the MaskGIT transformer (SPEC_DOMAINS §I.1; maskgit_class_cond_config.py).

  Attributes:
    codebook_size: number of VQ codes K (1024); ids [0, K).
    num_classes: class tokens C (1000); ids [K, K + C).
    num_image_tokens: image tokens per sequence (16 x 16 = 256); the sequence length is this + 1
      (the class token first), which is also the number of position embeddings.
    hidden_size, num_layers, num_heads, intermediate_size: sizes (head dim = hidden / heads).
    compute_dtype: dtype of the matmuls and attention (float32 accumulation); LayerNorm, softmax
      and GELU run in float32. "float32" reproduces the original.
  """

  codebook_size: int = 1024
  num_classes: int = 1000
  num_image_tokens: int = 256
  hidden_size: int = 768
  num_layers: int = 24
  num_heads: int = 16
  intermediate_size: int = 3072
  compute_dtype: str = "float32"

  def __post_init__(self):
    for name in ("codebook_size", "num_classes", "num_image_tokens", "hidden_size", "num_layers",
                 "num_heads", "intermediate_size"):
      value = getattr(self, name)
      if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"MaskGITConfig.{name}={value!r} must be a positive int")
    if self.hidden_size % self.num_heads:
      raise ValueError(f"MaskGITConfig.hidden_size={self.hidden_size} is not divisible by "
                       f"num_heads={self.num_heads}")
    if self.compute_dtype not in _COMPUTE_DTYPES:
      raise ValueError(f"MaskGITConfig.compute_dtype={self.compute_dtype!r} is not one of "
                       f"{_COMPUTE_DTYPES}")

  @property
  def vocab_size(self) -> int:
    """V = codes + classes + 1 mask (2025)."""
    return self.codebook_size + self.num_classes + 1

  @property
  def mask_token_id(self) -> int:
    """The mask id V - 1 (2024; the reference's -1 wraps to it)."""
    return self.vocab_size - 1

  @property
  def seq_len(self) -> int:
    """L = 1 class token + image tokens (257): the number of position embeddings."""
    return self.num_image_tokens + 1

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @classmethod
  def preset(cls, name: str, **overrides) -> "MaskGITConfig":
    """A named configuration ("imagenet256", "tiny") with field overrides."""
    if name not in _PRESETS:
      raise ValueError(f"MaskGITConfig.preset name={name!r} is not one of {tuple(_PRESETS)}")
    return cls.from_dict({**_PRESETS[name], **overrides})

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict) -> "MaskGITConfig":
    """Inverse of `to_dict`; an unknown key raises ValueError naming it."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
      raise ValueError(f"MaskGITConfig.from_dict: unknown key(s) {unknown}; known: "
                       f"{sorted(known)}")
    return cls(**d)

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), sort_keys=True)


def _trunc_normal(rngs: nnx.Rngs, shape: tuple[int, ...]) -> jax.Array:
  """The original initializer: truncated_normal(-2, 2) * 0.02."""
  return jax.random.truncated_normal(rngs.params(), -2.0, 2.0, shape, jnp.float32) * INIT_STDDEV


def _matmul(x: jax.Array, kernel: jax.Array, dtype) -> jax.Array:
  """x [..., in] @ kernel [in, ...] in `dtype` with float32 accumulation, float32 result."""
  return jnp.tensordot(x.astype(dtype), kernel.astype(dtype), axes=((x.ndim - 1,), (0,)),
                       preferred_element_type=jnp.float32)


class LayerNorm(nnx.Module):
  """(x - mean) / sqrt(var + eps) * scale + bias over the last dim, float32 (linen `LayerNorm`
  names: `scale`, `bias`)."""

  def __init__(self, dim: int, eps: float = LAYERNORM_EPS):
    self.eps = eps
    self.scale = _param(jnp.ones((dim,), jnp.float32), ("norm",))
    self.bias = _param(jnp.zeros((dim,), jnp.float32), ("norm",))

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...] + self.bias[...]


class Dense(nnx.Module):
  """y = x K + b, K [in, out] (linen `Dense` names: `kernel`, `bias`)."""

  def __init__(self, in_features: int, out_features: int, axes: tuple[str | None, str | None], *,
               rngs: nnx.Rngs):
    self.kernel = _param(_trunc_normal(rngs, (in_features, out_features)), axes)
    self.bias = _param(jnp.zeros((out_features,), jnp.float32), (axes[1] or "norm",))

  def __call__(self, x: jax.Array, dtype=jnp.float32) -> jax.Array:
    return _matmul(x, self.kernel[...], dtype) + self.bias[...]


class HeadsDense(nnx.Module):
  """Per-head projection x [B, L, H] -> [B, L, N, D] (linen `DenseGeneral` query/key/value:
  kernel [H, N, D], bias [N, D])."""

  def __init__(self, hidden: int, heads: int, head_dim: int, *, rngs: nnx.Rngs):
    self.kernel = _param(_trunc_normal(rngs, (hidden, heads, head_dim)), ("embed", "heads", None))
    self.bias = _param(jnp.zeros((heads, head_dim), jnp.float32), ("heads", None))

  def __call__(self, x: jax.Array, dtype=jnp.float32) -> jax.Array:
    return _matmul(x, self.kernel[...], dtype) + self.bias[...]


class OutDense(nnx.Module):
  """Merge heads [B, L, N, D] -> [B, L, H] (linen `DenseGeneral` out: kernel [N, D, H],
  bias [H])."""

  def __init__(self, heads: int, head_dim: int, hidden: int, *, rngs: nnx.Rngs):
    self.kernel = _param(_trunc_normal(rngs, (heads, head_dim, hidden)), ("heads", None, "embed"))
    self.bias = _param(jnp.zeros((hidden,), jnp.float32), ("norm",))

  def __call__(self, x: jax.Array, dtype=jnp.float32) -> jax.Array:
    y = jnp.tensordot(x.astype(dtype), self.kernel[...].astype(dtype), axes=((2, 3), (0, 1)),
                      preferred_element_type=jnp.float32)
    return y + self.bias[...]


class Embed(nnx.Module):
  """Word + position embeddings, then LayerNorm (linen `Embed_0`)."""

  def __init__(self, cfg: MaskGITConfig, *, rngs: nnx.Rngs):
    self.word_embeddings = _param(_trunc_normal(rngs, (cfg.vocab_size, cfg.hidden_size)),
                                  ("vocab", "embed"))
    self.position_embeddings = _param(_trunc_normal(rngs, (cfg.seq_len, cfg.hidden_size)),
                                      (None, "embed"))
    self.embeddings_ln = LayerNorm(cfg.hidden_size)

  def __call__(self, ids: jax.Array) -> jax.Array:
    seq_len = ids.shape[-1]
    x = jnp.take(self.word_embeddings[...], ids, axis=0)
    x = x + self.position_embeddings[...][None, :seq_len]
    return self.embeddings_ln(x)


class Attention(nnx.Module):
  """Bidirectional multi-head self-attention + residual + post-LN (linen `Attention_0`)."""

  def __init__(self, cfg: MaskGITConfig, *, rngs: nnx.Rngs):
    h, n, d = cfg.hidden_size, cfg.num_heads, cfg.head_dim
    self.query = HeadsDense(h, n, d, rngs=rngs)
    self.key = HeadsDense(h, n, d, rngs=rngs)
    self.value = HeadsDense(h, n, d, rngs=rngs)
    self.out = OutDense(n, d, h, rngs=rngs)
    self.attention_output_ln = LayerNorm(h)

  def __call__(self, x: jax.Array, dtype) -> jax.Array:
    q = self.query(x, dtype).astype(dtype)
    k = self.key(x, dtype).astype(dtype)
    v = self.value(x, dtype).astype(dtype)
    # softmax(q k^T / sqrt(D)) v; the softmax runs in float32 inside dot_product_attention.
    a = jax.nn.dot_product_attention(q, k, v)
    return self.attention_output_ln(self.out(a, dtype) + x)


class Mlp(nnx.Module):
  """GELU MLP + residual + post-LN (linen `Mlp_0`)."""

  def __init__(self, cfg: MaskGITConfig, *, rngs: nnx.Rngs):
    self.intermediate_output = Dense(cfg.hidden_size, cfg.intermediate_size, ("embed", "mlp"),
                                     rngs=rngs)
    self.layer_output = Dense(cfg.intermediate_size, cfg.hidden_size, ("mlp", "embed"), rngs=rngs)
    self.layer_output_ln = LayerNorm(cfg.hidden_size)

  def __call__(self, x: jax.Array, dtype) -> jax.Array:
    h = jax.nn.gelu(self.intermediate_output(x, dtype))  # tanh approximation, as the original
    return self.layer_output_ln(self.layer_output(h, dtype) + x)


class TransformerLayer(nnx.Module):
  """One post-LN BERT layer (linen `TransformerLayer_i`)."""

  def __init__(self, cfg: MaskGITConfig, *, rngs: nnx.Rngs):
    self.attention = Attention(cfg, rngs=rngs)
    self.mlp = Mlp(cfg, rngs=rngs)

  def __call__(self, x: jax.Array, dtype) -> jax.Array:
    return self.mlp(self.attention(x, dtype), dtype)


class MlmLayer(nnx.Module):
  """h = LN(GELU(x W + b)); logits = h E^T + bias with the tied word embedding E (linen
  `MlmLayer_0`: `mlm_dense`, `mlm_ln`, `mlm_bias/bias`)."""

  def __init__(self, cfg: MaskGITConfig, *, rngs: nnx.Rngs):
    self.mlm_dense = Dense(cfg.hidden_size, cfg.hidden_size, ("embed", None), rngs=rngs)
    self.mlm_ln = LayerNorm(cfg.hidden_size)
    self.mlm_bias = _param(jnp.zeros((cfg.vocab_size,), jnp.float32), ("vocab",))

  def __call__(self, x: jax.Array, embedding: jax.Array, dtype) -> jax.Array:
    h = self.mlm_ln(jax.nn.gelu(self.mlm_dense(x, dtype)))
    return _matmul(h, embedding.T, dtype) + self.mlm_bias[...]


class MaskGITTransformer(nnx.Module):
  """ids [B, L] int -> logits [B, L, V] float32 (the whole vocabulary, class and mask ids
  included; `make_tokens_to_logits` slices to the codebook as the reference does)."""

  def __init__(self, cfg: MaskGITConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.embed = Embed(cfg, rngs=rngs)
    self.layers = nnx.List([TransformerLayer(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
    self.mlm = MlmLayer(cfg, rngs=rngs)

  def __call__(self, ids: jax.Array) -> jax.Array:
    """Args: ids int [B, L'] with L' <= cfg.seq_len, values in [-V, V) (negative ids wrap, so
    the reference's mask id -1 is V - 1). Returns float32 [B, L', V]. Raises ValueError on a wrong
    rank, dtype or length (the values are not checked: they may be traced)."""
    cfg = self.cfg
    ids = jnp.asarray(ids)
    if ids.ndim != 2:
      raise ValueError(f"MaskGITTransformer ids must be [B, L], got shape {ids.shape}")
    if not jnp.issubdtype(ids.dtype, jnp.integer):
      raise ValueError(f"MaskGITTransformer ids must be integers, got dtype {ids.dtype}")
    if ids.shape[1] > cfg.seq_len:
      raise ValueError(f"MaskGITTransformer sequence length {ids.shape[1]} exceeds "
                       f"seq_len={cfg.seq_len}")
    ids = ids.astype(jnp.int32)
    ids = jnp.where(ids < 0, ids + cfg.vocab_size, ids)
    dtype = jnp.dtype(cfg.compute_dtype)
    x = self.embed(ids)
    for layer in self.layers:
      x = layer(x, dtype)
    return self.mlm(x, self.embed.word_embeddings[...], dtype)


# ---------------------------------------------------------------------------------------------
# Functional wrappers.


def init_params(cfg: MaskGITConfig, key: jax.Array) -> tuple[nnx.GraphDef, nnx.State]:
  """Random init as the original (truncated normal * 0.02, zero biases, unit LN scales).
  Returns (graphdef, params)."""
  model = MaskGITTransformer(cfg, rngs=nnx.Rngs(params=key))
  return nnx.split(model, nnx.Param)


def abstract_params(cfg: MaskGITConfig) -> tuple[nnx.GraphDef, nnx.State]:
  """(graphdef, state of ShapeDtypeStruct params); nothing materialised."""
  model = nnx.eval_shape(lambda: MaskGITTransformer(cfg, rngs=nnx.Rngs(params=0)))
  return nnx.split(model, nnx.Param)


def make_apply_fn(graphdef: nnx.GraphDef) -> Callable[[Any, jax.Array], jax.Array]:
  """-> apply(params, ids [B, L]) -> logits [B, L, V] float32 (full vocabulary)."""

  def apply(params, ids):
    return nnx.merge(graphdef, params)(ids)

  return apply


def make_tokens_to_logits(graphdef: nnx.GraphDef, cfg: MaskGITConfig
                          ) -> Callable[[Any, jax.Array], jax.Array]:
  """The reference's `tokens_to_logits` (maskgit/inference.py): the logits sliced to the codebook.

  -> tokens_to_logits(params, ids int32 [B, L]) -> float32 [B, L, codebook_size].
  """
  apply = make_apply_fn(graphdef)
  k = cfg.codebook_size

  def tokens_to_logits(params, ids):
    return apply(params, ids)[..., :k]

  return tokens_to_logits


def make_denoise_fn(graphdef: nnx.GraphDef, cfg: MaskGITConfig
                    ) -> Callable[[Any, jax.Array, jax.Array], jax.Array]:
  """The project's denoiser signature: denoise_fn(params, ids [B, L], t [B]) -> codebook logits
  [B, L, codebook_size] float32. MaskGIT is not time-conditioned: t is ignored."""
  tokens_to_logits = make_tokens_to_logits(graphdef, cfg)

  def denoise_fn(params, ids, t):
    del t
    return tokens_to_logits(params, ids)

  return denoise_fn


def count_params(cfg: MaskGITConfig) -> int:
  """Number of parameters (imagenet256: 172,457,193)."""
  h, v, l, m = cfg.hidden_size, cfg.vocab_size, cfg.seq_len, cfg.intermediate_size
  embed = v * h + l * h + 2 * h
  layer = 4 * (h * h + h) + 2 * h + (h * m + m) + (m * h + h) + 2 * h
  mlm = h * h + h + 2 * h + v
  return int(embed + cfg.num_layers * layer + mlm)


def flops_per_forward(cfg: MaskGITConfig, batch: int) -> float:
  """Matmul FLOPs (2 per multiply-add) of one forward pass on [batch, seq_len] ids."""
  h, v, l, m = cfg.hidden_size, cfg.vocab_size, cfg.seq_len, cfg.intermediate_size
  per_token_layer = 2 * (4 * h * h + 2 * h * m) + 2 * 2 * l * h
  per_token = cfg.num_layers * per_token_layer + 2 * h * h + 2 * h * v
  return float(batch * l * per_token)
