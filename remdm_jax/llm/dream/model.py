"""The Dream architecture (HKUNLP Dream-v0-Base-7B / -Instruct-7B; DiffuCoder) in Flax NNX.

Dream is a Qwen2 decoder made bidirectional (`modeling_dream.py` on the Hugging Face Hub; the same
parameter names as transformers' `Qwen2ForCausalLM`). B = batch, L = length, d = hidden_size,
N = num_attention_heads, K = num_key_value_heads, D = d / N:

  h = embed_tokens[tokens]                                              [B, L, d]
  per layer:
    n = RMSNorm(h) * input_layernorm        x rsqrt(mean(x^2) + eps), eps = rms_norm_eps (1e-6)
    q, k, v = n Wq + bq, n Wk + bk, n Wv + bv        q [B, L, N, D]; k, v [B, L, K, D] (biases on)
    q, k = rope(q, pos), rope(k, pos)                half-split RoPE, theta = rope_theta (1e6)
    a = softmax(q k^T / sqrt(D) + key padding) v     NO causal mask (Dream's SDPA call hard-codes
                                                     is_causal=False); GQA: q head j uses kv
                                                     head j // (N / K)
    h = h + a Wo                                     (o_proj has no bias)
    n = RMSNorm(h) * post_attention_layernorm
    h = h + (silu(n W_gate) * (n W_up)) W_down
  raw logits = (RMSNorm(h) * norm) W_lm_head         untied lm_head (tie_word_embeddings=False;
                                                     tied checkpoints use embed_tokens^T)

**Shifted logits.** Dream keeps the autoregressive convention of its Qwen2.5 initialisation: raw
row i predicts token i + 1. Every consumer re-aligns it (`generation_utils.py` `_sample` and
`eval/eval.py`: `logits = cat([logits[:, :1], logits[:, :-1]], 1)`), so that row i predicts token
i; row 0 is a copy of raw row 0 and is never a target (a prompt is never masked).
`DreamModel.__call__` returns the RAW logits; `make_logits_fn` returns the re-aligned ones, so
that every masked-LM consumer (block generation, the ReMDM strategies, the Monte-Carlo
likelihood) treats Dream exactly as LLaDA (`remdm_jax.types.MaskedLMFn`).

Positions: Dream's generation builds `tok_idx = cumsum(attention_mask) - 1` (pads set to 1) when a
batch is left-padded, else arange(L): `positions="from_first_token"` here (pads get 0; a pad's own
position never matters because pads are masked as keys). Dream also masks pad *queries* (SDPA
returns 0 for such rows); here pad rows attend to the real tokens: their outputs are never used.

Precision: norms, RoPE, softmax and the residual stream run in float32, matmuls in compute_dtype
with float32 accumulation (as `remdm_jax.llm.model`); Dream in bf16 casts the norm output and
cos / sin to bf16, so bf16 runs agree with it only to bf16 rounding. In float32 the forward equals
transformers' Qwen2 run bidirectionally to ~1e-5 (tests/test_llm_dream.py).

Parameter names mirror the HF keys without the `model.` prefix (`weights.py`):
`embed_tokens.embedding`, `layers.{i}.self_attn.{q,k,v}_proj.{kernel,bias}`,
`layers.{i}.self_attn.o_proj.kernel`, `layers.{i}.mlp.{gate,up,down}_proj.kernel`,
`layers.{i}.{input,post_attention}_layernorm.weight`, `norm.weight`, `lm_head.kernel`
(kernels [in, out]). Logical axes as in LLaDA: embed ("vocab", "embed"), q/k/v ("embed", "qkv"),
o_proj ("heads", "embed"), gate/up ("embed", "mlp"), down ("mlp", "embed"), lm_head
("embed", "vocab"), norms ("norm",), biases ("qkv",); `scan_layers` stacks under "layers".
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from remdm_jax.llm.model import (Linear, RMSNorm, _param, apply_rope, attention, ids_from_tokenizer,
                                 positions_from_mask, read_config_json, resolve_ids, rope_cos_sin,
                                 run_layers, stacked_layers, POSITIONS)

_DTYPES = ("float32", "bfloat16", "float16")

# Dream-7B's tokenizer (Qwen2.5 + <|mask|>): ids used as defaults only for a model of that
# vocabulary (`remdm_jax.llm.model.resolve_ids`).
DREAM_7B_VOCAB = 152064
ID_FIELDS = {
    "mask_token_id": ("--mask_id", ("mask_token",), ("<|mask|>",), 151666),
    "eos_token_id": ("--eos_id", ("eos_token",), ("<|endoftext|>",), 151643),
    "eot_token_id": ("--eot_id", ("eot_token",), ("<|im_end|>",), 151645),
    "pad_token_id": ("--pad_id", ("pad_token",), (), 151643),
}

# config.json options whose other values change the architecture (not implemented).
_HF_SUPPORTED = {"hidden_act": "silu", "use_sliding_window": False, "rope_scaling": None}


@dataclasses.dataclass(frozen=True)
class DreamConfig:
  """Sizes and options of a Dream-architecture model (the keys of Dream's `config.json`).

  Attributes:
    hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, num_key_value_heads,
      vocab_size (rows of embed_tokens / columns of lm_head): Dream-7B 3584, 18944, 28, 28, 4,
      152064.
    rms_norm_eps: 1e-6. rope_theta: 1e6.
    max_position_embeddings: longest accepted input (Dream's README: 2048 tokens of context).
    tie_word_embeddings: lm_head = embed_tokens^T (False for Dream-7B).
    mask_token_id, eos_token_id, eot_token_id (<|im_end|>, or None), pad_token_id: Dream-7B
      151666, 151643, 151645, 151643 (resolved by `from_hf_dict`).
    param_dtype, compute_dtype, positions, remat, scan_layers: as `LLaDAConfig`.
  """

  hidden_size: int = 3584
  intermediate_size: int = 18944
  num_hidden_layers: int = 28
  num_attention_heads: int = 28
  num_key_value_heads: Optional[int] = 4
  vocab_size: int = 152064
  rms_norm_eps: float = 1e-6
  rope_theta: float = 1e6
  max_position_embeddings: int = 2048
  tie_word_embeddings: bool = False
  mask_token_id: int = 151666
  eos_token_id: int = 151643
  eot_token_id: Optional[int] = 151645
  pad_token_id: int = 151643
  param_dtype: str = "bfloat16"
  compute_dtype: str = "bfloat16"
  positions: str = "from_first_token"
  remat: bool = False
  scan_layers: bool = False

  def __post_init__(self):
    def bad(field, why):
      raise ValueError(f"DreamConfig.{field}={getattr(self, field)!r}: {why}")

    if self.num_key_value_heads is None:
      object.__setattr__(self, "num_key_value_heads", self.num_attention_heads)
    for f in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "vocab_size", "max_position_embeddings"):
      v = getattr(self, f)
      if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        bad(f, "must be a positive int")
    if self.hidden_size % self.num_attention_heads:
      bad("hidden_size", f"must be divisible by num_attention_heads={self.num_attention_heads}")
    if self.head_dim % 2:
      bad("num_attention_heads", f"head dim {self.head_dim} must be even (RoPE)")
    if self.num_attention_heads % self.num_key_value_heads:
      bad("num_key_value_heads", f"must divide num_attention_heads={self.num_attention_heads}")
    for f, (flag, *_rest) in ID_FIELDS.items():
      v = getattr(self, f)
      if v is None and f == "eot_token_id":
        continue
      if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or \
          not 0 <= v < self.vocab_size:
        bad(f, f"must be an int in [0, vocab_size={self.vocab_size}) (override: {flag})")
    if not self.rope_theta > 0:
      bad("rope_theta", "must be > 0")
    if not self.rms_norm_eps > 0:
      bad("rms_norm_eps", "must be > 0")
    for f in ("param_dtype", "compute_dtype"):
      if getattr(self, f) not in _DTYPES:
        bad(f, f"must be one of {_DTYPES}")
    if self.positions not in POSITIONS:
      bad("positions", f"must be one of {POSITIONS}")

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads

  # The names the shared LLaDA building blocks (Linear, RMSNorm) and the loaders read.
  @property
  def embedding_size(self) -> int:
    return self.vocab_size

  @property
  def max_sequence_length(self) -> int:
    return self.max_position_embeddings

  @classmethod
  def from_hf_dict(cls, d: dict, token_ids: Optional[dict] = None, **overrides) -> "DreamConfig":
    """From the dict of a Dream (or Qwen2) `config.json`; `rope_theta` may also sit in
    transformers 5's `rope_parameters`. Special ids as `LLaDAConfig.from_hf_dict` (config.json,
    then the tokenizer files, then Dream-7B's ids when the vocabulary is Dream's, else a flag)."""
    if not isinstance(d, dict):
      raise ValueError(f"Dream config.json must hold a JSON object, got {type(d).__name__}")
    rp = d.get("rope_parameters")
    unsupported = [f"{k}={d[k]!r}" for k, ok in _HF_SUPPORTED.items()
                   if k in d and d[k] is not None and d[k] != ok]
    if isinstance(rp, dict) and rp.get("rope_type", "default") != "default":
      unsupported.append(f"rope_parameters.rope_type={rp.get('rope_type')!r}")
    if unsupported:
      raise ValueError(f"Dream config.json options not supported by this port: {unsupported} "
                       f"(supported: {_HF_SUPPORTED}, default RoPE)")
    names = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
             "num_key_value_heads", "vocab_size", "rms_norm_eps", "rope_theta",
             "max_position_embeddings", "tie_word_embeddings")
    kw = {k: d[k] for k in names if k in d and d[k] is not None}
    if "rope_theta" not in kw and isinstance(rp, dict) and rp.get("rope_theta") is not None:
      kw["rope_theta"] = rp["rope_theta"]
    kw.update({k: v for k, v in overrides.items() if k not in ID_FIELDS})
    vocab = kw.get("vocab_size", cls.vocab_size)
    kw.update(resolve_ids(d, token_ids, {k: v for k, v in overrides.items() if k in ID_FIELDS},
                          vocab_size=vocab, embedding_size=vocab, fields=ID_FIELDS,
                          defaults_vocab=DREAM_7B_VOCAB, defaults_name="Dream-7B"))
    return cls(**kw)

  @classmethod
  def from_hf_config(cls, path: str, token_ids: Optional[dict] = None,
                     **overrides) -> "DreamConfig":
    """From a `config.json` file or a folder holding one (ids from the folder's tokenizer files
    when config.json lacks them)."""
    import os
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    d = read_config_json(path, "Dream")
    if token_ids is None:
      token_ids = ids_from_tokenizer(folder, ID_FIELDS)
    return cls.from_hf_dict(d, token_ids=token_ids, **overrides)

  @classmethod
  def dream_7b(cls, **overrides) -> "DreamConfig":
    """Dream-v0-7B sizes (7,615,616,512 parameters)."""
    return cls(**overrides)

  @classmethod
  def tiny(cls, **overrides) -> "DreamConfig":
    """Test size: d=32, 4 q heads / 2 kv heads, 2 layers, V=264, mask 259, EOS = pad 256,
    EoT 258, float32."""
    kw = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, vocab_size=264, max_position_embeddings=512,
              mask_token_id=259, eos_token_id=256, eot_token_id=258, pad_token_id=256,
              param_dtype="float32", compute_dtype="float32")
    kw.update(overrides)
    return cls(**kw)


class DreamAttention(nnx.Module):
  def __init__(self, cfg: DreamConfig, *, rngs: nnx.Rngs):
    d, kv = cfg.hidden_size, cfg.num_key_value_heads * cfg.head_dim
    self.q_proj = Linear(d, d, ("embed", "qkv"), cfg, bias=True, rngs=rngs)
    self.k_proj = Linear(d, kv, ("embed", "qkv"), cfg, bias=True, rngs=rngs)
    self.v_proj = Linear(d, kv, ("embed", "qkv"), cfg, bias=True, rngs=rngs)
    self.o_proj = Linear(d, d, ("heads", "embed"), cfg, rngs=rngs)


class DreamMLP(nnx.Module):
  def __init__(self, cfg: DreamConfig, *, rngs: nnx.Rngs):
    d, m = cfg.hidden_size, cfg.intermediate_size
    self.gate_proj = Linear(d, m, ("embed", "mlp"), cfg, rngs=rngs)
    self.up_proj = Linear(d, m, ("embed", "mlp"), cfg, rngs=rngs)
    self.down_proj = Linear(m, d, ("mlp", "embed"), cfg, rngs=rngs)


class DreamLayer(nnx.Module):
  """One Qwen2 decoder layer without the causal mask (module docstring)."""

  def __init__(self, cfg: DreamConfig, *, rngs: nnx.Rngs):
    self.input_layernorm = RMSNorm(cfg.hidden_size, cfg)
    self.self_attn = DreamAttention(cfg, rngs=rngs)
    self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg)
    self.mlp = DreamMLP(cfg, rngs=rngs)
    self.cfg = cfg

  def __call__(self, x, cos, sin, keep):
    """x [B, L, d] float32; cos/sin [B, L, D]; keep bool [B, 1, 1, L] -> [B, L, d] float32."""
    cfg = self.cfg
    dt = jnp.dtype(cfg.compute_dtype)
    B, L, _ = x.shape
    N, K, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    at = self.self_attn
    n = self.input_layernorm(x)
    q = apply_rope(at.q_proj(n, dt).reshape(B, L, N, D), cos, sin)
    k = apply_rope(at.k_proj(n, dt).reshape(B, L, K, D), cos, sin)
    v = at.v_proj(n, dt).reshape(B, L, K, D)
    x = x + at.o_proj(attention(q, k, v, keep, dt).reshape(B, L, N * D), dt)
    n = self.post_attention_layernorm(x)
    h = jax.nn.silu(self.mlp.gate_proj(n, dt)) * self.mlp.up_proj(n, dt)
    return x + self.mlp.down_proj(h, dt)


class DreamModel(nnx.Module):
  """`model(tokens int32 [B, L], attention_mask [B, L] (1 = real token) | None) -> RAW logits
  float32 [B, L, vocab_size]` (row i predicts token i + 1; `make_logits_fn` re-aligns).
  Raises ValueError on a bad shape or L > max_position_embeddings."""

  def __init__(self, cfg: DreamConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    emb = jax.random.normal(rngs.params(), (cfg.vocab_size, cfg.hidden_size), jnp.float32) * 0.02
    self.embed_tokens = nnx.Module()
    self.embed_tokens.embedding = _param(emb.astype(jnp.dtype(cfg.param_dtype)),
                                         ("vocab", "embed"))
    if cfg.scan_layers:
      self.layers = stacked_layers(lambda r: DreamLayer(cfg, rngs=r), cfg.num_hidden_layers, rngs)
    else:
      self.layers = nnx.List([DreamLayer(cfg, rngs=rngs) for _ in range(cfg.num_hidden_layers)])
    self.norm = RMSNorm(cfg.hidden_size, cfg)
    self.lm_head = None if cfg.tie_word_embeddings else Linear(
        cfg.hidden_size, cfg.vocab_size, ("embed", "vocab"), cfg, rngs=rngs)

  def hidden(self, tokens, attention_mask=None):
    """Final hidden states after `norm`: float32 [B, L, d]."""
    cfg = self.cfg
    if tokens.ndim != 2:
      raise ValueError(f"tokens shape {tokens.shape} must be [B, L]")
    B, L = tokens.shape
    if L > cfg.max_position_embeddings:
      raise ValueError(f"sequence length {L} > max_position_embeddings="
                       f"{cfg.max_position_embeddings}")
    if attention_mask is None:
      attention_mask = jnp.ones((B, L), jnp.int32)
    if attention_mask.shape != (B, L):
      raise ValueError(f"attention_mask shape {attention_mask.shape} != tokens shape {(B, L)}")
    keep = (attention_mask != 0)[:, None, None, :]
    pos = positions_from_mask(attention_mask, cfg.positions)
    cos, sin = rope_cos_sin(pos, cfg.head_dim, cfg.rope_theta)
    x = jnp.take(self.embed_tokens.embedding[...], tokens, axis=0).astype(jnp.float32)

    def run(layer, x):
      return layer(x, cos, sin, keep)

    if cfg.remat:
      run = nnx.remat(run)
    x = run_layers(self.layers, x, run, cfg.scan_layers)
    return self.norm(x)

  def __call__(self, tokens, attention_mask=None):
    h = self.hidden(tokens, attention_mask)
    dt = jnp.dtype(self.cfg.compute_dtype)
    if self.lm_head is None:
      w = self.embed_tokens.embedding[...]
      return jnp.einsum("bld,vd->blv", h.astype(dt), w.astype(dt),
                        preferred_element_type=jnp.float32)
    return self.lm_head(h, dt)


def shift_logits(logits: jax.Array) -> jax.Array:
  """Dream's re-alignment `cat([logits[:, :1], logits[:, :-1]], 1)`: [B, L, V] -> [B, L, V],
  row i (i >= 1) = raw row i - 1, row 0 = raw row 0."""
  return jnp.concatenate([logits[:, :1], logits[:, :-1]], axis=1)


def init_model(cfg: DreamConfig, key) -> tuple[nnx.GraphDef, nnx.State]:
  """Random init -> (graphdef, params State)."""
  return nnx.split(DreamModel(cfg, rngs=nnx.Rngs(params=key)), nnx.Param)


def abstract_model(cfg: DreamConfig) -> tuple[nnx.GraphDef, nnx.State]:
  """(graphdef, State of ShapeDtypeStruct params) via `nnx.eval_shape`; nothing materialised."""
  return nnx.split(nnx.eval_shape(lambda: DreamModel(cfg, rngs=nnx.Rngs(params=0))), nnx.Param)


def init_sharded(cfg: DreamConfig, key, mesh, rules=None) -> tuple[nnx.GraphDef, nnx.State]:
  """Random init straight into parameters sharded over `mesh` by the logical-axis rules."""
  from remdm_jax import sharding as mesh_lib
  rules = mesh_lib.DEFAULT_RULES if rules is None else rules
  gd, abstract = abstract_model(cfg)
  shardings = mesh_lib.param_shardings(abstract, mesh, rules)
  state = jax.jit(lambda k: init_model(cfg, k)[1], out_shardings=shardings)(key)
  return gd, state


def make_logits_fn(graphdef: nnx.GraphDef) -> Callable[..., jax.Array]:
  """-> logits_fn(params, tokens int32 [B, L], attention_mask [B, L]) -> float32 [B, L, V] with
  Dream's shift applied (row i predicts token i): a `remdm_jax.types.MaskedLMFn` like LLaDA's."""

  def logits_fn(params, tokens, attention_mask):
    return shift_logits(nnx.merge(graphdef, params)(tokens, attention_mask))

  return logits_fn


def make_raw_logits_fn(graphdef: nnx.GraphDef) -> Callable[..., jax.Array]:
  """-> the unshifted logits (row i predicts token i + 1), e.g. to compare with transformers."""

  def logits_fn(params, tokens, attention_mask):
    return nnx.merge(graphdef, params)(tokens, attention_mask)

  return logits_fn


def count_params(cfg: DreamConfig) -> int:
  """Number of parameters (Dream-7B: 7,615,616,512)."""
  d, m, kv = cfg.hidden_size, cfg.intermediate_size, cfg.num_key_value_heads * cfg.head_dim
  layer = 2 * d + (d * d + d) + 2 * (d * kv + kv) + d * d + 3 * d * m
  head = 0 if cfg.tie_word_embeddings else cfg.vocab_size * d
  return cfg.num_hidden_layers * layer + cfg.vocab_size * d + head + d
