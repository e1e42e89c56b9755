"""Test-only PyTorch DiT written from SPEC §6.2 (not copied from the official code).

Its `named_parameters()` names, shapes and order are those of SPEC §6.3, and it registers the
`rotary_emb.inv_freq` buffer, so its `state_dict()` has the layout of the official checkpoints.
Attention is written out (no flash-attn), so it runs on CPU in float32 or float64.
"""
from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F


class EmbeddingLayer(nn.Module):

  def __init__(self, vocab_size: int, dim: int):
    super().__init__()
    self.embedding = nn.Parameter(torch.empty(vocab_size, dim))
    nn.init.uniform_(self.embedding, -1.0 / math.sqrt(dim), 1.0 / math.sqrt(dim))

  def forward(self, tokens):
    return self.embedding[tokens]


class TimestepEmbedder(nn.Module):

  def __init__(self, cond_dim: int, freq_dim: int = 256):
    super().__init__()
    self.freq_dim = freq_dim
    self.mlp = nn.Sequential(nn.Linear(freq_dim, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim))

  def forward(self, sigma):
    half = self.freq_dim // 2
    k = torch.arange(half, dtype=sigma.dtype)
    freqs = torch.exp(-math.log(10000.0) * k / half)
    args = sigma[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return self.mlp(emb)  # the outer SiLU is applied by DiT.forward


class Rotary(nn.Module):

  def __init__(self, head_dim: int):
    super().__init__()
    inv_freq = 10000.0 ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    self.register_buffer("inv_freq", inv_freq)

  def forward(self, seq_len: int, dtype):
    theta = torch.arange(seq_len, dtype=dtype)[:, None] * self.inv_freq.to(dtype)[None, :]
    theta = torch.cat([theta, theta], dim=-1)
    return torch.cos(theta), torch.sin(theta)  # [L, D]


def rotate(x, cos, sin):
  """x [B, L, N, D]; x1' = x1 cos - x2 sin, x2' = x2 cos + x1 sin."""
  d = x.shape[-1] // 2
  x1, x2 = x[..., :d], x[..., d:]
  return x * cos[None, :, None, :] + torch.cat([-x2, x1], dim=-1) * sin[None, :, None, :]


class LayerNorm(nn.Module):

  def __init__(self, dim: int):
    super().__init__()
    self.weight = nn.Parameter(torch.ones(dim))

  def forward(self, x):
    return F.layer_norm(x, [x.shape[-1]], eps=1e-5) * self.weight


class DDiTBlock(nn.Module):

  def __init__(self, hidden: int, heads: int, cond: int, mlp_ratio: int = 4, causal: bool = False):
    super().__init__()
    self.heads, self.causal = heads, causal
    self.norm1 = LayerNorm(hidden)
    self.attn_qkv = nn.Linear(hidden, 3 * hidden, bias=False)
    self.attn_out = nn.Linear(hidden, hidden, bias=False)
    self.norm2 = LayerNorm(hidden)
    self.mlp = nn.Sequential(nn.Linear(hidden, mlp_ratio * hidden), nn.GELU(approximate="tanh"),
                             nn.Linear(mlp_ratio * hidden, hidden))
    self.adaLN_modulation = nn.Linear(cond, 6 * hidden)
    nn.init.zeros_(self.adaLN_modulation.weight)
    nn.init.zeros_(self.adaLN_modulation.bias)

  def forward(self, x, c, cos, sin):
    b, l, h = x.shape
    n, d = self.heads, h // self.heads
    mod = self.adaLN_modulation(c)[:, None, :]
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.chunk(6, dim=-1)
    y = self.norm1(x) * (1 + scale_msa) + shift_msa
    qkv = self.attn_qkv(y).view(b, l, 3, n, d)
    q, k, v = rotate(qkv[:, :, 0], cos, sin), rotate(qkv[:, :, 1], cos, sin), qkv[:, :, 2]
    scores = torch.einsum("bqnd,bknd->bnqk", q, k) / math.sqrt(d)
    if self.causal:
      mask = torch.ones(l, l, dtype=torch.bool).triu(1)
      scores = scores.masked_fill(mask, float("-inf"))
    attn = torch.einsum("bnqk,bknd->bqnd", scores.softmax(-1), v).reshape(b, l, h)
    x = x + gate_msa * self.attn_out(attn)
    y = self.norm2(x) * (1 + scale_mlp) + shift_mlp
    return x + gate_mlp * self.mlp(y)


class DDitFinalLayer(nn.Module):

  def __init__(self, hidden: int, vocab: int, cond: int):
    super().__init__()
    self.norm_final = LayerNorm(hidden)
    self.linear = nn.Linear(hidden, vocab)
    self.adaLN_modulation = nn.Linear(cond, 2 * hidden)
    for p in (self.linear.weight, self.linear.bias, self.adaLN_modulation.weight,
              self.adaLN_modulation.bias):
      nn.init.zeros_(p)

  def forward(self, x, c):
    shift, scale = self.adaLN_modulation(c)[:, None, :].chunk(2, dim=-1)
    return self.linear(self.norm_final(x) * (1 + scale) + shift)


class DiT(nn.Module):
  """tokens [B, L], sigma [B] -> logits [B, L, V]; sigma is zeroed unless time_conditioning."""

  def __init__(self, vocab_size: int, hidden: int, heads: int, blocks: int, cond: int,
               mlp_ratio: int = 4, time_conditioning: bool = False, causal: bool = False):
    super().__init__()
    self.time_conditioning = time_conditioning and not causal
    self.vocab_embed = EmbeddingLayer(vocab_size, hidden)
    self.sigma_map = TimestepEmbedder(cond)
    self.rotary_emb = Rotary(hidden // heads)
    self.blocks = nn.ModuleList(
      [DDiTBlock(hidden, heads, cond, mlp_ratio, causal) for _ in range(blocks)])
    self.output_layer = DDitFinalLayer(hidden, vocab_size, cond)

  def forward(self, tokens, sigma):
    if not self.time_conditioning:
      sigma = torch.zeros_like(sigma)
    x = self.vocab_embed(tokens)
    c = F.silu(self.sigma_map(sigma))
    cos, sin = self.rotary_emb(tokens.shape[1], x.dtype)
    for block in self.blocks:
      x = block(x, c, cos, sin)
    return self.output_layer(x, c)


def randomize_(model: nn.Module, seed: int = 0, scale: float = 0.2) -> nn.Module:
  """Overwrites every parameter (the zero-initialised adaLN / output ones too) with N(0, scale^2)
  draws, norms with 1 + N(0, scale^2), so that every weight matters in a comparison."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype) * scale
      p.copy_(1.0 + noise if "norm" in name else noise)
  return model
