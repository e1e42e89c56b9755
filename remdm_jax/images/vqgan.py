"""The MaskGIT VQGAN decoder in Flax NNX: token ids -> RGB images (SPEC_DOMAINS §I.1).

A port of the decoding half of google-research/maskgit `maskgit/nets/vqgan_tokenizer.py`
(`VQVAE.decode_from_indices`: `VectorQuantizer.decode_ids` then `Decoder`), the tokenizer of the
public ImageNet 256 checkpoint (`configs/vqgan_config.py`: codebook 1024 x 256, filters 128,
channel multipliers (1, 1, 2, 2, 4), 2 residual blocks, GroupNorm(32 groups, eps 1e-6), swish).
Images are NHWC. With r = len(channel_multipliers), F = filters, m = channel_multipliers:

  z = codebook[ids]                                   [B, h, w, E]  (E = embedding_dim)
  x = Conv3x3(z) (F m[-1] channels, bias)
  num_res_blocks x ResBlock(F m[-1])
  for i = r-1 .. 0:
      num_res_blocks x ResBlock(F m[i])
      if i > 0: x = Conv3x3(nearest-upsample-2x(x))   (bias)
  x = Conv3x3(swish(GroupNorm(x))) -> 3 channels      [B, h 2^(r-1), w 2^(r-1), 3]

  ResBlock(F'): y = Conv3x3(swish(GN(Conv3x3(swish(GN(x))))))  (both convs without bias);
                out = y + x if x has F' channels, else y + Conv1x1(y).
  The 1x1 shortcut is applied to the block's OUTPUT y, not to its input: that is what the original
  code computes (`residual = conv_fn(...)(x)` after x was overwritten), and the published weights
  were trained with it, so the port keeps it.

All convolutions are 'SAME'-padded, stride 1, kernels HWIO (linen `Conv`). The decoder output is
unbounded; `decode_to_images` clips it to [0, 1] as the reference's image writer does
(`np.clip(img, 0, 1)` in `gen_imgs.py`), and `to_uint8` is that writer's `(x * 255).astype(uint8)`
(truncation, not rounding).

Attribute names mirror the linen tree (`decoder/Conv_j`, `decoder/ResBlock_k/{GroupNorm_0, Conv_0,
GroupNorm_1, Conv_1, Conv_2}`, `decoder/GroupNorm_0`, `quantizer/codebook`); see
`linen_decoder_names` and `remdm_jax.images.convert`.
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

GROUPNORM_EPS = 1e-6  # flax.linen.GroupNorm default
NUM_GROUPS = 32  # flax.linen.GroupNorm default, used by the original

_PRESETS: dict[str, dict[str, Any]] = {
  # The public ImageNet 256 tokenizer (vqgan_config.py): 16 x 16 tokens -> 256 x 256 images.
  "imagenet256": dict(codebook_size=1024, embedding_dim=256, filters=128, num_res_blocks=2,
                      channel_multipliers=(1, 1, 2, 2, 4)),
  # Unit tests: 16 codes; 4 x 4 tokens -> 8 x 8 images.
  "tiny": dict(codebook_size=16, embedding_dim=4, filters=32, num_res_blocks=1,
               channel_multipliers=(1, 2)),
}


@dataclasses.dataclass(frozen=True)
class VQGANConfig:
  """The VQGAN decoder's architecture (maskgit configs/vqgan_config.py `config.vqvae`).

  Attributes:
    codebook_size: K codes (1024); embedding_dim: E (256).
    filters, channel_multipliers, num_res_blocks: conv widths F * m[i] (every width must be a
      multiple of the 32 GroupNorm groups); upsampling factor 2^(len(m) - 1) (16).
    output_dim: image channels (3).
  """

  codebook_size: int = 1024
  embedding_dim: int = 256
  filters: int = 128
  num_res_blocks: int = 2
  channel_multipliers: tuple[int, ...] = (1, 1, 2, 2, 4)
  output_dim: int = 3

  def __post_init__(self):
    object.__setattr__(self, "channel_multipliers", tuple(self.channel_multipliers))
    for name in ("codebook_size", "embedding_dim", "filters", "num_res_blocks", "output_dim"):
      value = getattr(self, name)
      if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"VQGANConfig.{name}={value!r} must be a positive int")
    if not self.channel_multipliers or any(
        not isinstance(m, (int, np.integer)) or m <= 0 for m in self.channel_multipliers):
      raise ValueError(f"VQGANConfig.channel_multipliers={self.channel_multipliers!r} must be "
                       "a non-empty tuple of positive ints")
    for m in self.channel_multipliers:
      if (self.filters * m) % NUM_GROUPS:
        raise ValueError(f"VQGANConfig: width filters*multiplier={self.filters * m} is not a "
                         f"multiple of the {NUM_GROUPS} GroupNorm groups")

  @property
  def upsample_factor(self) -> int:
    """Pixels per token side (16)."""
    return 2 ** (len(self.channel_multipliers) - 1)

  @classmethod
  def preset(cls, name: str, **overrides) -> "VQGANConfig":
    """A named configuration ("imagenet256", "tiny") with field overrides."""
    if name not in _PRESETS:
      raise ValueError(f"VQGANConfig.preset name={name!r} is not one of {tuple(_PRESETS)}")
    return cls.from_dict({**_PRESETS[name], **overrides})

  def to_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d["channel_multipliers"] = list(self.channel_multipliers)
    return d

  @classmethod
  def from_dict(cls, d: dict) -> "VQGANConfig":
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
      raise ValueError(f"VQGANConfig.from_dict: unknown key(s) {unknown}; known: {sorted(known)}")
    return cls(**d)

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), sort_keys=True)


def _lecun_normal(rngs: nnx.Rngs, shape: tuple[int, ...]) -> jax.Array:
  """linen Conv's default kernel init (lecun normal over fan_in = kh * kw * in)."""
  return jax.nn.initializers.lecun_normal()(rngs.params(), shape, jnp.float32)


class Conv(nnx.Module):
  """'SAME' stride-1 convolution, NHWC x HWIO (linen `Conv`: `kernel`, optional `bias`)."""

  def __init__(self, in_ch: int, out_ch: int, size: int, *, use_bias: bool, rngs: nnx.Rngs):
    self.kernel = _param(_lecun_normal(rngs, (size, size, in_ch, out_ch)),
                         (None, None, "embed", "mlp"))
    self.bias = _param(jnp.zeros((out_ch,), jnp.float32), ("norm",)) if use_bias else None

  def __call__(self, x: jax.Array) -> jax.Array:
    y = jax.lax.conv_general_dilated(x, self.kernel[...], window_strides=(1, 1), padding="SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    if self.bias is not None:
      y = y + self.bias[...]
    return y


class GroupNorm(nnx.Module):
  """GroupNorm with 32 groups, eps 1e-6, learned scale and bias (linen `GroupNorm` defaults):
  statistics over (H, W, C/32) per example and group."""

  def __init__(self, channels: int):
    self.scale = _param(jnp.ones((channels,), jnp.float32), ("norm",))
    self.bias = _param(jnp.zeros((channels,), jnp.float32), ("norm",))

  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    g = x.reshape(b, h, w, NUM_GROUPS, c // NUM_GROUPS)
    mean = jnp.mean(g, axis=(1, 2, 4), keepdims=True)
    var = jnp.mean(jnp.square(g - mean), axis=(1, 2, 4), keepdims=True)
    g = (g - mean) * jax.lax.rsqrt(var + GROUPNORM_EPS)
    return g.reshape(b, h, w, c) * self.scale[...] + self.bias[...]


class ResBlock(nnx.Module):
  """GN-swish-conv x2 with the original's shortcut (see the module docstring)."""

  def __init__(self, in_ch: int, out_ch: int, *, rngs: nnx.Rngs):
    self.GroupNorm_0 = GroupNorm(in_ch)
    self.Conv_0 = Conv(in_ch, out_ch, 3, use_bias=False, rngs=rngs)
    self.GroupNorm_1 = GroupNorm(out_ch)
    self.Conv_1 = Conv(out_ch, out_ch, 3, use_bias=False, rngs=rngs)
    self.Conv_2 = Conv(out_ch, out_ch, 1, use_bias=False, rngs=rngs) if in_ch != out_ch else None

  def __call__(self, x: jax.Array) -> jax.Array:
    y = self.Conv_0(jax.nn.swish(self.GroupNorm_0(x)))
    y = self.Conv_1(jax.nn.swish(self.GroupNorm_1(y)))
    residual = x if self.Conv_2 is None else self.Conv_2(y)  # the original's output shortcut
    return y + residual


def upsample_nearest(x: jax.Array, factor: int = 2) -> jax.Array:
  """[B, H, W, C] -> [B, fH, fW, C], nearest neighbour (`jax.image.resize`, as the original)."""
  b, h, w, c = x.shape
  return jax.image.resize(x, (b, h * factor, w * factor, c), method="nearest")


class Decoder(nnx.Module):
  """The conv decoder (linen `decoder`): latents [B, h, w, E] -> [B, H, W, 3] (unclipped)."""

  def __init__(self, cfg: VQGANConfig, *, rngs: nnx.Rngs):
    f, m, nrb = cfg.filters, cfg.channel_multipliers, cfg.num_res_blocks
    width = f * m[-1]
    convs = [Conv(cfg.embedding_dim, width, 3, use_bias=True, rngs=rngs)]
    blocks = [ResBlock(width, width, rngs=rngs) for _ in range(nrb)]
    # Execution order: (i, kind, index into blocks/convs) for the linen-order names.
    self._plan: list[tuple[str, int]] = [("conv", 0)] + [("res", k) for k in range(nrb)]
    for i in reversed(range(len(m))):
      out = f * m[i]
      for _ in range(nrb):
        blocks.append(ResBlock(width, out, rngs=rngs))
        width = out
        self._plan.append(("res", len(blocks) - 1))
      if i > 0:
        convs.append(Conv(width, width, 3, use_bias=True, rngs=rngs))
        self._plan.append(("up", len(convs) - 1))
    self.norm = GroupNorm(width)
    convs.append(Conv(width, cfg.output_dim, 3, use_bias=True, rngs=rngs))
    self._plan = tuple(self._plan)
    self.convs = nnx.List(convs)
    self.blocks = nnx.List(blocks)

  def __call__(self, z: jax.Array) -> jax.Array:
    x = z.astype(jnp.float32)
    for kind, k in self._plan:
      if kind == "conv":
        x = self.convs[k](x)
      elif kind == "res":
        x = self.blocks[k](x)
      else:
        x = self.convs[k](upsample_nearest(x, 2))
    return self.convs[len(self.convs) - 1](jax.nn.swish(self.norm(x)))


class VQGANDecoder(nnx.Module):
  """ids [B, h, w] int in [0, K) -> images [B, h f, w f, 3] float32, unclipped (f = 16)."""

  def __init__(self, cfg: VQGANConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.codebook = _param(
      jax.nn.initializers.variance_scaling(1.0, "fan_in", "uniform")(
        rngs.params(), (cfg.codebook_size, cfg.embedding_dim), jnp.float32), ("vocab", "embed"))
    self.decoder = Decoder(cfg, rngs=rngs)

  def __call__(self, ids: jax.Array) -> jax.Array:
    ids = jnp.asarray(ids)
    if ids.ndim != 3:
      raise ValueError(f"VQGANDecoder ids must be [B, h, w], got shape {ids.shape}")
    if not jnp.issubdtype(ids.dtype, jnp.integer):
      raise ValueError(f"VQGANDecoder ids must be integers, got dtype {ids.dtype}")
    z = jnp.take(self.codebook[...], ids.astype(jnp.int32), axis=0)
    return self.decoder(z)


def linen_decoder_names(cfg: VQGANConfig) -> list[tuple[str, str]]:
  """(linen path under `decoder/`, our path under `decoder/`) for every decoder conv/norm module,
  in the linen auto-naming order (Conv_j, ResBlock_k, GroupNorm_0)."""
  nrb, m = cfg.num_res_blocks, cfg.channel_multipliers
  num_blocks = nrb * (len(m) + 1)
  num_convs = 1 + (len(m) - 1) + 1
  names = [(f"Conv_{j}", f"convs/{j}") for j in range(num_convs)]
  names += [(f"ResBlock_{k}", f"blocks/{k}") for k in range(num_blocks)]
  names += [("GroupNorm_0", "norm")]
  return names


# ---------------------------------------------------------------------------------------------
# Functional wrappers.


def init_params(cfg: VQGANConfig, key: jax.Array) -> tuple[nnx.GraphDef, nnx.State]:
  """Random init (linen defaults). Returns (graphdef, params)."""
  return nnx.split(VQGANDecoder(cfg, rngs=nnx.Rngs(params=key)), nnx.Param)


def abstract_params(cfg: VQGANConfig) -> tuple[nnx.GraphDef, nnx.State]:
  model = nnx.eval_shape(lambda: VQGANDecoder(cfg, rngs=nnx.Rngs(params=0)))
  return nnx.split(model, nnx.Param)


def make_decode_fn(graphdef: nnx.GraphDef) -> Callable[[Any, jax.Array], jax.Array]:
  """-> decode(params, ids int [B, h, w]) -> images float32 [B, H, W, 3] in [0, 1] (clipped)."""

  def decode(params, ids):
    return jnp.clip(nnx.merge(graphdef, params)(ids), 0.0, 1.0)

  return decode


def to_uint8(images) -> np.ndarray:
  """float [.., 3] (any range) -> uint8 as the reference writer: (clip(x, 0, 1) * 255) truncated."""
  return (np.clip(np.asarray(images, np.float32), 0.0, 1.0) * 255).astype(np.uint8)
