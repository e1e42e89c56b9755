"""The MDLM diffusion transformer (DiT) denoiser in Flax NNX (SPEC §6).

Forward pass (SPEC §6.2), B = batch, L = length, H = hidden, N = heads, D = H / N, C = cond dim:

  x   = E[z]                                                        [B, L, H]  float32 residual
  emb = [cos(sigma f_k), sin(sigma f_k)], f_k = exp(-ln(1e4) k / 128) [B, 256]
  c   = SiLU(W2 SiLU(W1 emb + b1) + b2)                             [B, C]     (outer SiLU)
  per block:  (sh1, sc1, g1, sh2, sc2, g2) = adaLN(c)                 6 x [B, 1, H]
              h = LN(x) w1 (1 + sc1) + sh1
              q, k, v = h W_qkv ; rotary(q), rotary(k) ; o = softmax(q k^T / sqrt(D)) v
              x = x + g1 dropout(o W_out)
              h = LN(x) w2 (1 + sc2) + sh2
              x = x + g2 dropout(GELU_tanh(h W1 + b1) W2 + b2)
  output:     (shift, scale) = adaLN_out(c) ; logits = (LN(x) w (1 + scale) + shift) W_lin + b_lin

LN is a float32 LayerNorm without affine part (eps 1e-5) times a learned weight, without bias.
Attention is bidirectional (no mask), or causal for the autoregressive variant (`causal=True`, which
also ignores sigma). Module attribute names mirror the PyTorch names of SPEC §6.3 (`vocab_embed`,
`sigma_map.mlp.{0,2}`, `blocks.{i}.norm1/attn_qkv/attn_out/norm2/mlp.{0,2}/adaLN_modulation`,
`output_layer.norm_final/linear/adaLN_modulation`), so `convert.py` is a readable table.
Linear kernels are stored [in, out] (the transpose of torch's weight).

Precision [LIB]: parameters are float32. Per-token matmuls (qkv, attention, attn_out, MLP, output
linear) run in `compute_dtype` with float32 accumulation and float32 outputs; the residual stream,
LayerNorm, rotary, softmax (inside `jax.nn.dot_product_attention`), GELU and the per-example
conditioning path (sigma map, adaLN) run in float32; logits are float32.

Options (SPEC_DOMAINS §M.3, QM9; both default off, and then the model is bit-for-bit the one above):
  * class conditioning, `num_classes = C > 0` with `head="lm"`: a label table E_y [C + 1, cond_dim]
    (row C = the null class, used for unconditional / CFG calls) and c <- c + SiLU(E_y[y]) before
    the blocks (the reference's `LabelEmbedder(num_classes + 1)`). The same option on the causal
    variant gives the class-conditional AR baseline.
  * `head="classifier"` (noisy classifier for D-CBG): the same trunk (embedding, sigma map, blocks;
    not class-conditioned), then `norm_final` (LN times weight), mean over the L positions and a
    linear class head [H, C] -> class logits [B, C]. [LIB] pooling after the final norm.

Sharding: every `nnx.Param` carries logical axis names (metadata `out_sharding`, with
`eager_sharding=False` so models can be built outside a mesh); see `LOGICAL_AXES` and
`logical_partition_specs`.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import PartitionSpec

from remdm_jax.diffusion.schedules import NoiseSchedule

# Logical axis names carried by the parameters (the trainer maps them to mesh axes with its rules):
#   vocab  - vocabulary (embedding rows, output-linear columns)
#   embed  - hidden size H (residual stream features)
#   mlp    - MLP hidden features (mlp_ratio * H)
#   qkv    - the 3H output features of attn_qkv
#   heads  - the H input features of attn_out (merged heads)
#   cond   - conditioning features C (input of every adaLN, output of the sigma map)
#   adaln  - the 6H / 2H outputs of the adaLN modulations
#   freq   - the 256-d sinusoidal time embedding (input of sigma_map.mlp.0)
#   norm   - 1-d LayerNorm weights (normally replicated)
# `None` is used for the output dim of sigma_map.mlp.2 (its [C, C] kernel is ("cond", None): one
# PartitionSpec cannot name an axis twice); its bias is ("cond",).
#   classes - class labels (label-embedding rows, classifier-head outputs; normally replicated)
LOGICAL_AXES = ("vocab", "embed", "mlp", "qkv", "heads", "cond", "adaln", "freq", "norm", "classes")

FREQ_DIM = 256  # size of the sinusoidal time embedding (SPEC §6.2 step 2)
MAX_PERIOD = 10000.0  # time embedding and rotary base
LN_EPS = 1e-5

_COMPUTE_DTYPES = ("float32", "bfloat16", "float16")
_ATTENTION_IMPLS = (None, "xla", "cudnn")
HEADS = ("lm", "classifier")

_PRESETS: dict[str, dict[str, Any]] = {
  # Unit tests: ~0.1 M parameters at byte vocab.
  "tiny": dict(vocab_size=257, max_seq_len=128, hidden_size=64, num_heads=4, num_blocks=2,
               cond_dim=32),
  # CPU quick start on King James Bible bytes: ~4.2 M parameters.
  "bible_byte": dict(vocab_size=257, max_seq_len=256, hidden_size=256, num_heads=4, num_blocks=4,
                     cond_dim=128),
  # MDLM "small" (SPEC §6.1): 169,627,218 parameters at V = 50258.
  "small": dict(vocab_size=50258, max_seq_len=1024, hidden_size=768, num_heads=12, num_blocks=12,
                cond_dim=128),
}


@dataclasses.dataclass(frozen=True)
class DiTConfig:
  """Architecture of the DiT denoiser (SPEC §6.1).

  Attributes:
    vocab_size: model vocabulary V including the mask token (GPT-2: 50258; bytes: 257).
    max_seq_len: longest sequence accepted (rotary positions need no table; this is a check).
    hidden_size, num_heads, num_blocks, cond_dim, mlp_ratio: sizes (head dim = hidden / heads).
    dropout: residual-branch dropout rate, used only when a dropout key is passed; the exact keep
      probability is t/2^16 with t = round((1 - dropout) 2^16) (`dropout_keep_threshold`).
    time_conditioning: if False the noise level is zeroed before the network (SPEC §6.2, §10.4).
    causal: autoregressive variant: causal attention, sigma ignored (same parameters).
    compute_dtype: dtype of the per-token matmuls and attention ("float32"/"bfloat16"/"float16").
    attention_impl: `implementation=` of `jax.nn.dot_product_attention` (None, "xla", "cudnn").
    vocab_pad_multiple: None, or compute the output linear with its kernel/bias zero-padded (at
      compute time only; stored parameters keep shape [H, V]) to a multiple of this many columns
      and slice the logits back to V (e.g. 128: 50258 -> 50304, faster GEMM tiles). Same logits.
    backward_in_compute_dtype: mixed-precision backward of the per-token matmuls (as torch
      autocast): the output cotangent is rounded to `compute_dtype` and both backward matmuls run
      in it with float32 accumulation (kernel gradients float32). False: JAX's default transpose,
      which upcasts the bf16 operand and runs the backward matmuls in float32 (slow on GPUs).
      No effect when compute_dtype is float32 or on the forward pass.
    remat: rematerialise every block in the backward pass (`jax.checkpoint` / `nnx.remat`): only
      the block inputs are kept, activations are recomputed (less memory, ~1/3 more compute).
      Same values and gradients.
    scan_blocks: run the blocks as one `lax.scan` over their parameters stacked inside the forward
      pass (one compiled block instead of num_blocks copies: faster compiles for deep models). The
      stored parameters keep their per-block layout (`blocks/{i}/...`); same values (float
      rounding aside) and gradients.
    num_classes: C. head "lm": 0 = unconditional, C > 0 = class-conditional with a null class C
      (SPEC_DOMAINS §M.3). head "classifier": the number of output classes (>= 2).
    head: "lm" (token logits [B, L, V]) or "classifier" (class logits [B, C], mean pooling).
  """

  vocab_size: int
  max_seq_len: int = 1024
  hidden_size: int = 768
  num_heads: int = 12
  num_blocks: int = 12
  cond_dim: int = 128
  mlp_ratio: int = 4
  dropout: float = 0.1
  time_conditioning: bool = False
  causal: bool = False
  compute_dtype: str = "bfloat16"
  attention_impl: str | None = None
  vocab_pad_multiple: int | None = None
  backward_in_compute_dtype: bool = True
  remat: bool = False
  scan_blocks: bool = False
  num_classes: int = 0
  head: str = "lm"

  def __post_init__(self):
    for name in ("vocab_size", "max_seq_len", "hidden_size", "num_heads", "num_blocks", "cond_dim",
                 "mlp_ratio"):
      value = getattr(self, name)
      if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"DiTConfig.{name}={value!r} must be a positive int")
    if self.vocab_size < 2:
      raise ValueError(f"DiTConfig.vocab_size={self.vocab_size!r} must be >= 2 (tokens + mask)")
    if self.hidden_size % self.num_heads:
      raise ValueError(f"DiTConfig.hidden_size={self.hidden_size} is not divisible by "
                       f"num_heads={self.num_heads}")
    if (self.hidden_size // self.num_heads) % 2:
      raise ValueError(f"DiTConfig head dim hidden_size/num_heads="
                       f"{self.hidden_size // self.num_heads} must be even (rotary)")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"DiTConfig.dropout={self.dropout!r} must lie in [0, 1)")
    if self.compute_dtype not in _COMPUTE_DTYPES:
      raise ValueError(f"DiTConfig.compute_dtype={self.compute_dtype!r} is not one of "
                       f"{_COMPUTE_DTYPES}")
    if self.attention_impl not in _ATTENTION_IMPLS:
      raise ValueError(f"DiTConfig.attention_impl={self.attention_impl!r} is not one of "
                       f"{_ATTENTION_IMPLS}")
    p = self.vocab_pad_multiple
    if p is not None and (not isinstance(p, (int, np.integer)) or isinstance(p, bool) or p <= 0):
      raise ValueError(f"DiTConfig.vocab_pad_multiple={p!r} must be None or a positive int")
    for name in ("backward_in_compute_dtype", "remat", "scan_blocks"):
      if not isinstance(getattr(self, name), bool):
        raise ValueError(f"DiTConfig.{name}={getattr(self, name)!r} must be a bool")
    nc = self.num_classes
    if isinstance(nc, bool) or not isinstance(nc, (int, np.integer)) or nc < 0:
      raise ValueError(f"DiTConfig.num_classes={nc!r} must be an int >= 0")
    if self.head not in HEADS:
      raise ValueError(f"DiTConfig.head={self.head!r} is not one of {HEADS}")
    if self.head == "classifier" and (nc < 2 or self.causal):
      raise ValueError(f"DiTConfig.head='classifier' needs num_classes >= 2 (got {nc}) and "
                       f"causal=False (got {self.causal})")
    if self.attention_impl == "cudnn" and self.compute_dtype == "float32":
      raise ValueError("DiTConfig.attention_impl='cudnn' needs compute_dtype bfloat16/float16, "
                       f"got compute_dtype={self.compute_dtype!r}")

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def mlp_dim(self) -> int:
    return self.mlp_ratio * self.hidden_size

  @classmethod
  def preset(cls, name: str, **overrides) -> "DiTConfig":
    """A named configuration ("tiny", "bible_byte", "small") with field overrides."""
    if name not in _PRESETS:
      raise ValueError(f"DiTConfig.preset name={name!r} is not one of {tuple(_PRESETS)}")
    return cls.from_dict({**_PRESETS[name], **overrides})

  def to_dict(self) -> dict:
    """JSON-serialisable dict of every field."""
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict) -> "DiTConfig":
    """Inverse of `to_dict`; an unknown key raises ValueError naming it."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
      raise ValueError(f"DiTConfig.from_dict: unknown key(s) {unknown}; known: {sorted(known)}")
    return cls(**d)

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), sort_keys=True)


# ---------------------------------------------------------------------------------------------
# Parameters with logical axis names.


def _param(value: jax.Array, axes: tuple[str | None, ...]) -> nnx.Param:
  """A float32 `nnx.Param` whose metadata names its logical axes (never eagerly sharded)."""
  if len(axes) != value.ndim:
    raise ValueError(f"logical axes {axes} do not match parameter shape {value.shape}")
  return nnx.Param(value, out_sharding=tuple(axes), eager_sharding=False)


def _uniform(key: jax.Array, shape: tuple[int, ...], bound: float) -> jax.Array:
  return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


class Linear(nnx.Module):
  """y = x K + b with kernel K [in, out] (torch weight transposed). Torch default init
  U(+-1/sqrt(in)) for kernel and bias, or all zeros (`zero_init`, the adaLN / output layers)."""

  def __init__(self, in_features: int, out_features: int, axes: tuple[str | None, str | None], *,
               use_bias: bool = True, zero_init: bool = False, bias_axis: str | None = None,
               rngs: nnx.Rngs):
    bound = 1.0 / math.sqrt(in_features)
    if zero_init:
      kernel = jnp.zeros((in_features, out_features), jnp.float32)
    else:
      kernel = _uniform(rngs.params(), (in_features, out_features), bound)
    self.kernel = _param(kernel, axes)
    if use_bias:
      bias = (jnp.zeros((out_features,), jnp.float32) if zero_init
              else _uniform(rngs.params(), (out_features,), bound))
      self.bias = _param(bias, (bias_axis or axes[1],))
    else:
      self.bias = None

  def __call__(self, x: jax.Array, dtype: Any = jnp.float32, mixed_backward: bool = False,
               pad_to: int | None = None) -> jax.Array:
    """x [..., in] -> [..., out] float32: matmul in `dtype` with float32 accumulation.

    mixed_backward: backward matmuls in `dtype` too (`mixed_matmul`). pad_to: compute with the
    kernel / bias zero-padded to `pad_to` >= out columns, then slice back to `out` (same values).
    """
    kernel = self.kernel[...]
    bias = None if self.bias is None else self.bias[...].astype(jnp.float32)
    out = kernel.shape[-1]
    if pad_to is not None and pad_to > out:
      # Pad in the stored dtype (float32): padding a compute-dtype copy would make the kernel's
      # gradient pass through that dtype (bf16-rounded gradients). The cast happens in the matmul.
      kernel = jnp.pad(kernel, ((0, 0), (0, pad_to - out)))
      bias = None if bias is None else jnp.pad(bias, (0, pad_to - out))
    if mixed_backward and jnp.dtype(dtype) != jnp.float32:
      y = mixed_matmul(x.astype(dtype), kernel)
    else:
      y = jnp.matmul(x.astype(dtype), kernel.astype(dtype), preferred_element_type=jnp.float32)
    if bias is not None:
      y = y + bias
    if y.shape[-1] != out:
      y = y[..., :out]
    return y


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _mixed_matmul(x, kernel, kernel_dtype):
  return jnp.matmul(x, kernel.astype(x.dtype), preferred_element_type=jnp.float32)


def _mixed_matmul_fwd(x, kernel, kernel_dtype):
  kc = kernel.astype(x.dtype)
  return jnp.matmul(x, kc, preferred_element_type=jnp.float32), (x, kc)


def _mixed_matmul_bwd(kernel_dtype, res, g):
  x, kc = res
  gc = g.astype(x.dtype)
  dx = jnp.matmul(gc, kc.T, preferred_element_type=jnp.float32).astype(x.dtype)
  batch = tuple(range(x.ndim - 1))
  dk = jax.lax.dot_general(x, gc, ((batch, batch), ((), ())), preferred_element_type=jnp.float32)
  return dx, dk.astype(kernel_dtype)


_mixed_matmul.defvjp(_mixed_matmul_fwd, _mixed_matmul_bwd)


def mixed_matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """y = x K, x [..., in] in the compute dtype, K [in, out] (any float dtype, cast to x.dtype):
  float32 output with float32 accumulation. Backward (mixed precision, as torch autocast): the
  cotangent g is rounded to x.dtype; dx = g K^T (x.dtype, float32 accumulation) and
  dK = x^T g (float32 accumulation, returned in K's dtype) -- both matmuls in x.dtype instead of
  the float32 matmuls of JAX's default transpose of a bf16 x bf16 -> f32 dot."""
  return _mixed_matmul(x, kernel, jnp.dtype(kernel.dtype).name)


class LayerNorm(nnx.Module):
  """LN(x) * weight: float32 normalisation, eps 1e-5, no affine bias (SPEC §6.2)."""

  def __init__(self, dim: int):
    self.weight = _param(jnp.ones((dim,), jnp.float32), ("norm",))

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + LN_EPS) * self.weight[...]


class EmbeddingLayer(nnx.Module):
  """E [V, H], init U(+-1/sqrt(H)) (SPEC §6.2); torch name `vocab_embed.embedding`."""

  def __init__(self, vocab_size: int, dim: int, *, rngs: nnx.Rngs):
    self.embedding = _param(_uniform(rngs.params(), (vocab_size, dim), 1.0 / math.sqrt(dim)),
                            ("vocab", "embed"))

  def __call__(self, tokens: jax.Array) -> jax.Array:
    """int [B, L] ids -> rows of E; float [B, L, V] one-hot (or soft) rows -> x @ E (float32).
    The float form is what D-CBG's first-order approximation differentiates (SPEC_DOMAINS §M.4)."""
    if jnp.issubdtype(tokens.dtype, jnp.floating):
      return jnp.einsum("blv,vh->blh", tokens.astype(jnp.float32),
                        self.embedding[...].astype(jnp.float32))
    return jnp.take(self.embedding[...], tokens, axis=0)


def timestep_embedding(sigma: jax.Array, dim: int = FREQ_DIM) -> jax.Array:
  """[B] -> [B, dim] float32: [cos(sigma f_k), sin(sigma f_k)], f_k = exp(-ln(1e4) k / (dim/2))."""
  half = dim // 2
  freqs = jnp.exp(-math.log(MAX_PERIOD) * jnp.arange(half, dtype=jnp.float32) / half)
  args = sigma.astype(jnp.float32)[:, None] * freqs[None, :]
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


class TimestepEmbedder(nnx.Module):
  """c = SiLU(mlp.2(SiLU(mlp.0(emb(sigma))))), the outer SiLU included (torch `sigma_map`)."""

  def __init__(self, cond_dim: int, *, rngs: nnx.Rngs):
    self.mlp = nnx.Dict({
      "0": Linear(FREQ_DIM, cond_dim, ("freq", "cond"), rngs=rngs),
      "2": Linear(cond_dim, cond_dim, ("cond", None), bias_axis="cond", rngs=rngs),
    })

  def __call__(self, sigma: jax.Array) -> jax.Array:
    h = jax.nn.silu(self.mlp["0"](timestep_embedding(sigma)))
    return jax.nn.silu(self.mlp["2"](h))


def rotary_cos_sin(seq_len: int, head_dim: int) -> tuple[jax.Array, jax.Array]:
  """cos, sin [L, D] float32 of theta_{n,j} = n 10000^(-2j/D), repeated over both halves."""
  inv_freq = 1.0 / (MAX_PERIOD ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  theta = jnp.arange(seq_len, dtype=jnp.float32)[:, None] * inv_freq[None, :]
  theta = jnp.concatenate([theta, theta], axis=-1)
  return jnp.cos(theta), jnp.sin(theta)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """Rotate-half rotary on x [B, L, N, D] (float32): x1' = x1 cos - x2 sin, x2' = x2 cos + x1 sin."""
  x1, x2 = jnp.split(x, 2, axis=-1)
  rotated = jnp.concatenate([-x2, x1], axis=-1)
  return x * cos[None, :, None, :] + rotated * sin[None, :, None, :]


def _modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
  """x (1 + scale) + shift with per-example shift/scale [B, H] broadcast over L."""
  return x * (1.0 + scale[:, None, :]) + shift[:, None, :]


_DROPOUT_BITS = 16  # each residual branch uses 16 of the 32 random bits drawn per element


def dropout_keep_threshold(rate: float) -> int:
  """t = round((1 - rate) 2^16) clipped to [1, 2^16]: an element is kept iff its 16 random bits
  are < t, so the exact keep probability is t / 2^16 (rate 0.1: 58982/65536 = 0.8999939) and kept
  values are scaled by 2^16 / t (E[dropout(x)] = x exactly)."""
  return int(min(max(round((1.0 - rate) * 2**_DROPOUT_BITS), 1), 2**_DROPOUT_BITS))


def _dropout_bits(key: jax.Array | None, rate: float, shape) -> jax.Array | None:
  """One uint32 per element [B, L, H] for BOTH residual branches of a block (threefry drawn once)."""
  if key is None or rate == 0.0:
    return None
  return jax.random.bits(key, shape, jnp.uint32)


def _dropout(x: jax.Array, rate: float, bits: jax.Array | None, branch: int) -> jax.Array:
  """Inverted dropout with the 16-bit half `branch` (0: low, 1: high) of `bits`: keep iff the
  half is < t = `dropout_keep_threshold(rate)` (keep probability t/2^16), kept values scaled by
  2^16/t. Identity when bits is None (no key or rate 0)."""
  if bits is None:
    return x
  t = dropout_keep_threshold(rate)
  half = (bits >> (_DROPOUT_BITS * branch)) & jnp.uint32(2**_DROPOUT_BITS - 1)
  keep = half < jnp.uint32(t)
  scale = np.float32(2**_DROPOUT_BITS / t)
  return jnp.where(keep, x * scale, 0.0).astype(x.dtype)


class DDiTBlock(nnx.Module):
  """One transformer block with adaLN-zero modulation (SPEC §6.2 step 4)."""

  def __init__(self, cfg: "DiTConfig", *, rngs: nnx.Rngs):
    h = cfg.hidden_size
    self.cfg = cfg
    self.norm1 = LayerNorm(h)
    self.attn_qkv = Linear(h, 3 * h, ("embed", "qkv"), use_bias=False, rngs=rngs)
    self.attn_out = Linear(h, h, ("heads", "embed"), use_bias=False, rngs=rngs)
    self.norm2 = LayerNorm(h)
    self.mlp = nnx.Dict({
      "0": Linear(h, cfg.mlp_dim, ("embed", "mlp"), rngs=rngs),
      "2": Linear(cfg.mlp_dim, h, ("mlp", "embed"), rngs=rngs),
    })
    self.adaLN_modulation = Linear(cfg.cond_dim, 6 * h, ("cond", "adaln"), zero_init=True,
                                   rngs=rngs)

  def __call__(self, x: jax.Array, c: jax.Array, cos: jax.Array, sin: jax.Array,
               dropout_key: jax.Array | None) -> jax.Array:
    """x [B, L, H] float32, c [B, C] float32 -> [B, L, H] float32."""
    cfg = self.cfg
    dtype = jnp.dtype(cfg.compute_dtype)
    bsz, seq_len, hidden = x.shape
    mixed = cfg.backward_in_compute_dtype
    bits = _dropout_bits(dropout_key, cfg.dropout, x.shape)
    (shift_msa, scale_msa, gate_msa,
     shift_mlp, scale_mlp, gate_mlp) = jnp.split(self.adaLN_modulation(c), 6, axis=-1)

    # Attention branch.
    h = _modulate(self.norm1(x), shift_msa, scale_msa)
    qkv = self.attn_qkv(h, dtype, mixed).reshape(bsz, seq_len, 3, cfg.num_heads, cfg.head_dim)
    q = apply_rotary(qkv[:, :, 0], cos, sin).astype(dtype)
    k = apply_rotary(qkv[:, :, 1], cos, sin).astype(dtype)
    v = qkv[:, :, 2].astype(dtype)
    attn = jax.nn.dot_product_attention(q, k, v, is_causal=cfg.causal,
                                        implementation=cfg.attention_impl)
    o = self.attn_out(attn.reshape(bsz, seq_len, hidden), dtype, mixed)
    x = x + gate_msa[:, None, :] * _dropout(o, cfg.dropout, bits, 0)

    # MLP branch.
    h = _modulate(self.norm2(x), shift_mlp, scale_mlp)
    h = jax.nn.gelu(self.mlp["0"](h, dtype, mixed), approximate=True)
    h = self.mlp["2"](h, dtype, mixed)
    return x + gate_mlp[:, None, :] * _dropout(h, cfg.dropout, bits, 1)


@nnx.remat
def _remat_block(block, x, c, cos, sin, key):
  return block(x, c, cos, sin, key)


class DDitFinalLayer(nnx.Module):
  """logits = (LN(x) w (1 + scale) + shift) W_lin + b_lin, (shift, scale) = adaLN(c), shift first."""

  def __init__(self, cfg: "DiTConfig", *, rngs: nnx.Rngs):
    h = cfg.hidden_size
    self.cfg = cfg
    self.norm_final = LayerNorm(h)
    self.linear = Linear(h, cfg.vocab_size, ("embed", "vocab"), zero_init=True, rngs=rngs)
    self.adaLN_modulation = Linear(cfg.cond_dim, 2 * h, ("cond", "adaln"), zero_init=True,
                                   rngs=rngs)

  def __call__(self, x: jax.Array, c: jax.Array, dtype: Any) -> jax.Array:
    cfg = self.cfg
    shift, scale = jnp.split(self.adaLN_modulation(c), 2, axis=-1)
    pad_to = None
    if cfg.vocab_pad_multiple is not None:
      pad_to = -(-cfg.vocab_size // cfg.vocab_pad_multiple) * cfg.vocab_pad_multiple
    return self.linear(_modulate(self.norm_final(x), shift, scale), dtype,
                       cfg.backward_in_compute_dtype, pad_to)


class LabelEmbedder(nnx.Module):
  """E_y [num_classes + 1, cond_dim] ~ N(0, 1) (torch nn.Embedding init); row num_classes is the
  null class (SPEC_DOMAINS §M.3); torch name `label_embed.embedding_table`."""

  def __init__(self, num_classes: int, cond_dim: int, *, rngs: nnx.Rngs):
    self.embedding_table = _param(
        jax.random.normal(rngs.params(), (num_classes + 1, cond_dim), jnp.float32),
        ("classes", "cond"))

  def __call__(self, labels: jax.Array) -> jax.Array:
    return jnp.take(self.embedding_table[...], labels, axis=0)


class ClassifierHead(nnx.Module):
  """logits [B, C] = mean_l(LN(x)_l w) W + b (mean pooling over positions, SPEC_DOMAINS §M.3)."""

  def __init__(self, cfg: "DiTConfig", *, rngs: nnx.Rngs):
    self.norm_final = LayerNorm(cfg.hidden_size)
    self.linear = Linear(cfg.hidden_size, cfg.num_classes, ("embed", "classes"), rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.linear(jnp.mean(self.norm_final(x), axis=1))


class DiT(nnx.Module):
  """The MDLM DiT: tokens [B, L] int, sigma [B] -> raw logits [B, L, V] float32 (SPEC §6.2).

  Options (module docstring): class conditioning (`num_classes > 0`) and the classifier head.
  Holds only `nnx.Param` variables; dropout randomness comes from the explicit `dropout_key`.
  """

  def __init__(self, cfg: DiTConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.vocab_embed = EmbeddingLayer(cfg.vocab_size, cfg.hidden_size, rngs=rngs)
    self.sigma_map = TimestepEmbedder(cfg.cond_dim, rngs=rngs)
    self.blocks = nnx.List([DDiTBlock(cfg, rngs=rngs) for _ in range(cfg.num_blocks)])
    if cfg.head == "classifier":
      self.classifier_head = ClassifierHead(cfg, rngs=rngs)
    else:
      if cfg.num_classes > 0:
        self.label_embed = LabelEmbedder(cfg.num_classes, cfg.cond_dim, rngs=rngs)
      self.output_layer = DDitFinalLayer(cfg, rngs=rngs)

  def __call__(self, tokens: jax.Array, sigma: jax.Array, *,
               dropout_key: jax.Array | None = None,
               labels: jax.Array | None = None) -> jax.Array:
    """Raw logits (SUBS is applied by callers, `remdm_jax.diffusion.subs`).

    Args:
      tokens: int [B, L], ids in [0, V); or float [B, L, V] one-hot (or soft) rows, embedded as
        x @ E (used by D-CBG's first-order approximation, SPEC_DOMAINS §M.4).
      sigma: float [B] (or a scalar) noise level sigma(t). Zeroed when `time_conditioning` is
        False or `causal` is True, so c is then the constant embedding of sigma = 0.
      dropout_key: None = deterministic; a PRNG key = dropout `cfg.dropout` on both residual
        branches of every block.
      labels: class-conditional models only (num_classes = C > 0, head "lm"): int [B] in [0, C],
        C = the null class; None = the null class for every row. Must be None otherwise.

    Returns:
      float32 [B, L, V]; head "classifier": class logits float32 [B, C].
    """
    cfg = self.cfg
    tokens = jnp.asarray(tokens)
    if jnp.issubdtype(tokens.dtype, jnp.floating):
      if tokens.ndim != 3 or tokens.shape[-1] != cfg.vocab_size:
        raise ValueError(f"DiT tokens: float (one-hot) input must be [B, L, V="
                         f"{cfg.vocab_size}], got shape {tokens.shape}")
    elif tokens.ndim != 2:
      raise ValueError(f"DiT tokens must be [B, L], got shape {tokens.shape}")
    elif not jnp.issubdtype(tokens.dtype, jnp.integer):
      raise ValueError(f"DiT tokens must be integers, got dtype {tokens.dtype}")
    bsz, seq_len = tokens.shape[:2]
    if seq_len > cfg.max_seq_len:
      raise ValueError(f"DiT sequence length {seq_len} exceeds max_seq_len={cfg.max_seq_len}")
    sigma = jnp.asarray(sigma, jnp.float32)
    if sigma.ndim == 0:
      sigma = jnp.broadcast_to(sigma, (bsz,))
    if sigma.shape != (bsz,):
      raise ValueError(f"DiT sigma must have shape [B]=({bsz},), got {sigma.shape}")
    if not cfg.time_conditioning or cfg.causal:
      sigma = jnp.zeros_like(sigma)  # SPEC §6.2 / §10.4: sigma computed, then zeroed.
    dtype = jnp.dtype(cfg.compute_dtype)
    conditional = cfg.head == "lm" and cfg.num_classes > 0
    if labels is not None and not conditional:
      raise ValueError(f"DiT labels were given but the model is not class-conditional "
                       f"(num_classes={cfg.num_classes}, head={cfg.head!r})")

    x = self.vocab_embed(tokens).astype(jnp.float32)
    c = self.sigma_map(sigma)
    if conditional:
      if labels is None:
        labels = jnp.full((bsz,), cfg.num_classes, jnp.int32)
      labels = jnp.asarray(labels)
      if labels.shape != (bsz,) or not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"DiT labels must be int [B]=({bsz},), got {labels.dtype} {labels.shape}")
      c = c + jax.nn.silu(self.label_embed(labels))
    cos, sin = rotary_cos_sin(seq_len, cfg.head_dim)
    if cfg.scan_blocks:
      x = self._scan_blocks(x, c, cos, sin, dropout_key)
    else:
      for i, block in enumerate(self.blocks):
        key_i = None if dropout_key is None else jax.random.fold_in(dropout_key, i)
        if cfg.remat:
          x = _remat_block(block, x, c, cos, sin, key_i)
        else:
          x = block(x, c, cos, sin, key_i)
    if cfg.head == "classifier":
      return self.classifier_head(x)
    return self.output_layer(x, c, dtype)

  def _scan_blocks(self, x, c, cos, sin, dropout_key):
    """The blocks as one lax.scan over their stacked parameters (stacked here, not stored)."""
    cfg = self.cfg
    graphdef, first = nnx.split(self.blocks[0])
    states = [first] + [nnx.split(b)[1] for b in list(self.blocks)[1:]]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *states)
    n = cfg.num_blocks
    if dropout_key is None:
      keys = jnp.zeros((n,), jnp.int32)  # unused placeholder
    else:
      keys = jax.vmap(lambda i: jax.random.fold_in(dropout_key, i))(jnp.arange(n))

    def body(h, xs):
      state, key_i = xs
      block = nnx.merge(graphdef, state)
      return block(h, c, cos, sin, None if dropout_key is None else key_i), None
    if cfg.remat:
      body = jax.checkpoint(body)
    x, _ = jax.lax.scan(body, x, (stacked, keys))
    return x


# ---------------------------------------------------------------------------------------------
# Functional wrappers: (graphdef, params) pairs and pure apply functions.


def init_params(cfg: DiTConfig, key: jax.Array) -> tuple[nnx.GraphDef, nnx.State]:
  """Initialises the model (SPEC §6.2 init). Returns (graphdef, params): float32 `nnx.Param`s."""
  model = DiT(cfg, rngs=nnx.Rngs(params=key))
  graphdef, params = nnx.split(model, nnx.Param)
  return graphdef, params


def abstract_params(cfg: DiTConfig) -> tuple[nnx.GraphDef, nnx.State]:
  """(graphdef, state of ShapeDtypeStruct params) via `nnx.eval_shape`; nothing materialised."""
  model = nnx.eval_shape(lambda: DiT(cfg, rngs=nnx.Rngs(params=0)))
  graphdef, params = nnx.split(model, nnx.Param)
  return graphdef, params


def make_apply_fn(graphdef: nnx.GraphDef) -> Callable[..., jax.Array]:
  """-> apply(params, tokens [B, L], sigma [B], dropout_key=None, labels=None) -> logits
  [B, L, V] float32 (class logits [B, C] for the classifier head; `labels` int [B] only for
  class-conditional models)."""

  def apply(params, tokens, sigma, dropout_key=None, labels=None):
    model = nnx.merge(graphdef, params)
    if labels is None:
      return model(tokens, sigma, dropout_key=dropout_key)
    return model(tokens, sigma, dropout_key=dropout_key, labels=labels)

  return apply


def make_denoise_fn(graphdef: nnx.GraphDef,
                    schedule: NoiseSchedule | None = None) -> Callable[..., jax.Array]:
  """-> denoise_fn(params, tokens [B, L], t [B]) -> raw logits [B, L, V] float32.

  sigma = schedule.sigma(t) (default `NoiseSchedule('loglinear')`); the model zeroes it when
  `time_conditioning` is False (SPEC §10.4).
  """
  schedule = NoiseSchedule("loglinear") if schedule is None else schedule
  apply = make_apply_fn(graphdef)

  def denoise_fn(params, tokens, t):
    sigma = schedule.sigma(jnp.asarray(t, jnp.float32))
    return apply(params, tokens, sigma)

  return denoise_fn


def make_cond_denoise_fn(graphdef: nnx.GraphDef,
                         schedule: NoiseSchedule | None = None) -> Callable[..., jax.Array]:
  """Class-conditional denoiser (SPEC_DOMAINS §M.3):
  -> fn(params, tokens int [B, L], t float [B], labels int [B]) -> raw logits [B, L, V] float32.

  labels in [0, C]; C (= num_classes) is the null class (the unconditional model of D-CFG).
  sigma = schedule.sigma(t) as in `make_denoise_fn`.
  """
  schedule = NoiseSchedule("loglinear") if schedule is None else schedule
  apply = make_apply_fn(graphdef)

  def cond_denoise_fn(params, tokens, t, labels):
    sigma = schedule.sigma(jnp.asarray(t, jnp.float32))
    return apply(params, tokens, sigma, labels=jnp.asarray(labels, jnp.int32))

  return cond_denoise_fn


def make_classifier_fn(graphdef: nnx.GraphDef) -> Callable[..., jax.Array]:
  """Noisy classifier of D-CBG (head "classifier", SPEC_DOMAINS §M.3):
  -> fn(params, x, t float [B]) -> log p(y | x_t) float32 [B, C] (log_softmax), with x int
  tokens [B, L] or float one-hot rows [B, L, V] (embedded as x @ E; the input form of
  `sampling.guidance.CBGGuidance`, which the first-order approximation differentiates).

  The classifier is not time-conditioned (sigma is zeroed inside unless the config sets
  time_conditioning), so `t` only has to broadcast to [B]."""
  apply = make_apply_fn(graphdef)

  def classifier_fn(params, tokens, t):
    sigma = NoiseSchedule("loglinear").sigma(jnp.asarray(t, jnp.float32))
    return jax.nn.log_softmax(apply(params, tokens, sigma), axis=-1)

  return classifier_fn


# Kernels of the per-token matmuls: the only parameters `cast_for_compute` casts.
_PER_TOKEN_KERNELS = re.compile(
  r"blocks/\d+/(attn_qkv|attn_out|mlp/0|mlp/2)/kernel|output_layer/linear/kernel")


def cast_for_compute(params: nnx.State, cfg: DiTConfig) -> nnx.State:
  """Casts the per-token matmul kernels to `cfg.compute_dtype` (once, e.g. outside a sampler
  scan); the model's own casts then are no-ops. Embedding, norms, biases, sigma map and adaLN stay
  float32 (they run in float32)."""
  dtype = jnp.dtype(cfg.compute_dtype)

  def cast(path, v):
    name = "/".join(str(getattr(p, "key", getattr(p, "idx", p))) for p in path)
    if _PER_TOKEN_KERNELS.fullmatch(name):
      return v.replace(v[...].astype(dtype))
    return v

  return jax.tree_util.tree_map_with_path(cast, params,
                                          is_leaf=lambda x: isinstance(x, nnx.Variable))


def logical_partition_specs(state: nnx.State) -> nnx.State:
  """Same tree as `state` with each Param replaced by a `PartitionSpec` of logical axis names.

  Equivalent to `nnx.get_partition_spec(state)` outside any logical-axis-rules context. Map the
  names to mesh axes with the trainer's rules (e.g. `flax.linen.logical_to_mesh_axes`).
  """

  def spec(v):
    names = v.get_metadata().get("out_sharding", None)
    if names is None:
      raise ValueError(f"parameter of shape {v.shape} has no logical axis names")
    return v.replace(PartitionSpec(*names))

  return jax.tree.map(spec, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


# ---------------------------------------------------------------------------------------------
# Analytic size and cost.


def count_params(cfg: DiTConfig) -> int:
  """Number of parameters (rotary has none). DiT-small at V = 50258: 169,627,218."""
  h, v, c, m = cfg.hidden_size, cfg.vocab_size, cfg.cond_dim, cfg.mlp_dim
  embed = v * h
  sigma_map = (FREQ_DIM * c + c) + (c * c + c)
  block = (h  # norm1
           + h * 3 * h  # attn_qkv (no bias)
           + h * h  # attn_out (no bias)
           + h  # norm2
           + (h * m + m) + (m * h + h)  # mlp
           + (c * 6 * h + 6 * h))  # adaLN_modulation
  output = h + (h * v + v) + (c * 2 * h + 2 * h)
  if cfg.head == "classifier":
    output = h + (h * cfg.num_classes + cfg.num_classes)
  elif cfg.num_classes > 0:
    output += (cfg.num_classes + 1) * c  # label embedding table
  return int(embed + sigma_map + cfg.num_blocks * block + output)


def flops_per_token(cfg: DiTConfig, seq_len: int, training: bool = True) -> float:
  """Model FLOPs per token (2 per multiply-add), from the architecture.

  Per token: 2 x (qkv + attn_out + MLP kernels) per block, 2 x 2 L H per block for q k^T and
  attn v (full L x L, also for the causal variant), 2 x H V for the output linear, plus the
  per-sequence conditioning (sigma map and adaLN matmuls) divided by L. Embedding lookups,
  norms and element-wise ops are not counted. x3 (forward + backward) when `training`.
  """
  if seq_len <= 0:
    raise ValueError(f"flops_per_token seq_len={seq_len!r} must be > 0")
  h, v, c, m = cfg.hidden_size, cfg.vocab_size, cfg.cond_dim, cfg.mlp_dim
  per_block = 2 * (h * 3 * h + h * h + 2 * h * m) + 2 * 2 * seq_len * h
  per_seq_cond = 2 * (FREQ_DIM * c + c * c + cfg.num_blocks * c * 6 * h + c * 2 * h)
  fwd = cfg.num_blocks * per_block + 2 * h * v + per_seq_cond / seq_len
  return float(3 * fwd if training else fwd)
