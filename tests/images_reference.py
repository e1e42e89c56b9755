"""Independent float64 numpy references of the MaskGIT transformer and VQGAN decoder (the math of
google-research/maskgit nets/maskgit_transformer.py and nets/vqgan_tokenizer.py), written from the
equations, plus random official-layout parameter trees. Shared by the image tests."""
import math
import re

import numpy as np


def random_official_tree(shapes, seed):
  """{linen path: float32 array}: kernels ~ N(0, 1/fan_in), biases/embeddings N(0, 0.3^2),
  norm scales 1 + N(0, 0.1^2) (nothing at its init value, so a wrong mapping shows)."""
  rng = np.random.default_rng(seed)
  out = {}
  for name, shape in shapes.items():
    if name.endswith("/scale"):
      v = 1.0 + 0.1 * rng.standard_normal(shape)
    elif name.endswith("/kernel"):
      # [in, out], conv [kh, kw, in, out], out-projection [N, D, H]: all but the last dim;
      # query/key/value [H, N, D]: the first dim.
      qkv = re.search(r"/(query|key|value)/kernel$", name)
      fan_in = shape[0] if qkv else math.prod(shape[:-1])
      v = rng.standard_normal(shape) / math.sqrt(fan_in)
    else:
      v = 0.3 * rng.standard_normal(shape)
    out[name] = v.astype(np.float32)
  return out


# ---------------------------------------------------------------------------------------------
# Independent float64 numpy references.


def np_layernorm(x, scale, bias, eps):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * scale + bias


def np_gelu_tanh(x):
  return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


def np_transformer(p, ids, num_layers, vocab):
  """BERT post-LN forward on the linen tree p (float64), ids [B, L] (negative ids wrap)."""
  p = {k: np.asarray(v, np.float64) for k, v in p.items()}
  ids = np.where(ids < 0, ids + vocab, ids)
  eps = 1e-12
  we = p["Embed_0/word_embeddings/embedding"]
  x = we[ids] + p["Embed_0/position_embeddings/embedding"][None, : ids.shape[1]]
  x = np_layernorm(x, p["Embed_0/embeddings_ln/scale"], p["Embed_0/embeddings_ln/bias"], eps)
  for i in range(num_layers):
    a = f"TransformerLayer_{i}/Attention_0/"
    proj = {}
    for n in ("query", "key", "value"):
      proj[n] = np.einsum("blh,hnd->blnd", x, p[a + f"self_attention/{n}/kernel"]) + \
          p[a + f"self_attention/{n}/bias"]
    d = proj["query"].shape[-1]
    s = np.einsum("bqnd,bknd->bnqk", proj["query"], proj["key"]) / np.sqrt(d)
    s = s - s.max(-1, keepdims=True)
    w = np.exp(s) / np.exp(s).sum(-1, keepdims=True)
    o = np.einsum("bnqk,bknd->bqnd", w, proj["value"])
    o = np.einsum("bqnd,ndh->bqh", o, p[a + "self_attention/out/kernel"]) + \
        p[a + "self_attention/out/bias"]
    x = np_layernorm(o + x, p[a + "attention_output_ln/scale"], p[a + "attention_output_ln/bias"],
                     eps)
    m = f"TransformerLayer_{i}/Mlp_0/"
    h = np_gelu_tanh(x @ p[m + "intermediate_output/kernel"] + p[m + "intermediate_output/bias"])
    h = h @ p[m + "layer_output/kernel"] + p[m + "layer_output/bias"]
    x = np_layernorm(h + x, p[m + "layer_output_ln/scale"], p[m + "layer_output_ln/bias"], eps)
  h = np_gelu_tanh(x @ p["MlmLayer_0/mlm_dense/kernel"] + p["MlmLayer_0/mlm_dense/bias"])
  h = np_layernorm(h, p["MlmLayer_0/mlm_ln/scale"], p["MlmLayer_0/mlm_ln/bias"], eps)
  return h @ we.T + p["MlmLayer_0/mlm_bias/bias"]


def np_conv_same(x, k, b=None):
  """'SAME' stride-1 conv, x [B, H, W, C] (float64), k [kh, kw, C, O]."""
  kh, kw = k.shape[:2]
  ph, pw = (kh - 1) // 2, (kw - 1) // 2
  xp = np.pad(x, ((0, 0), (ph, kh - 1 - ph), (pw, kw - 1 - pw), (0, 0)))
  h, w = x.shape[1:3]
  y = np.zeros(x.shape[:3] + (k.shape[-1],))
  for i in range(kh):
    for j in range(kw):
      y += np.einsum("bhwc,co->bhwo", xp[:, i:i + h, j:j + w], k[i, j])
  return y if b is None else y + b


def np_groupnorm(x, scale, bias, groups=32, eps=1e-6):
  b, h, w, c = x.shape
  g = x.reshape(b, h, w, groups, c // groups)
  mean = g.mean((1, 2, 4), keepdims=True)
  var = ((g - mean) ** 2).mean((1, 2, 4), keepdims=True)
  return ((g - mean) / np.sqrt(var + eps)).reshape(x.shape) * scale + bias


def np_swish(x):
  return x / (1.0 + np.exp(-x))


def np_vqgan_decode(p, ids, cfg):
  """The original decoder's math on the linen tree (float64); output unclipped."""
  p = {k: np.asarray(v, np.float64) for k, v in p.items()}
  x = p["quantizer/codebook"][ids]
  conv_i, block_i = [0], [0]

  def conv(x):
    n = f"decoder/Conv_{conv_i[0]}/"
    conv_i[0] += 1
    return np_conv_same(x, p[n + "kernel"], p[n + "bias"])

  def block(x, filters):
    n = f"decoder/ResBlock_{block_i[0]}/"
    block_i[0] += 1
    y = np_conv_same(np_swish(np_groupnorm(x, p[n + "GroupNorm_0/scale"],
                                           p[n + "GroupNorm_0/bias"])), p[n + "Conv_0/kernel"])
    y = np_conv_same(np_swish(np_groupnorm(y, p[n + "GroupNorm_1/scale"],
                                           p[n + "GroupNorm_1/bias"])), p[n + "Conv_1/kernel"])
    if x.shape[-1] != filters:
      return y + np_conv_same(y, p[n + "Conv_2/kernel"])
    return y + x

  m = cfg.channel_multipliers
  x = conv(x)
  for _ in range(cfg.num_res_blocks):
    x = block(x, cfg.filters * m[-1])
  for i in reversed(range(len(m))):
    for _ in range(cfg.num_res_blocks):
      x = block(x, cfg.filters * m[i])
    if i > 0:
      x = conv(x.repeat(2, axis=1).repeat(2, axis=2))
  x = np_swish(np_groupnorm(x, p["decoder/GroupNorm_0/scale"], p["decoder/GroupNorm_0/bias"]))
  return conv(x)
