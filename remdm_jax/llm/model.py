"""The LLaDA architecture (LLaDA-8B-Base / -Instruct) in Flax NNX (SPEC_DOMAINS §L.4).

Forward pass, B = batch, L = length, d = d_model, N = n_heads, K = n_kv_heads, D = d / N:

  x = wte[tokens]                                                       [B, L, d]
  per block i:
    n = RMSNorm(x) * attn_norm            RMSNorm(x) = x rsqrt(mean(x^2) + eps), float32
    q, k, v = n Wq (+bq), n Wk (+bk), n Wv (+bv)        q [B, L, N, D]; k, v [B, L, K, D]
    q, k = rope(q, pos), rope(k, pos)     half-split ("rotate_half") RoPE, theta = rope_theta
    a = softmax(q k^T / sqrt(D) + key_pad_bias) v       bidirectional, softmax in float32,
                                                        masked keys at finfo(float32).min
    x = x + a W_attn_out
    n = RMSNorm(x) * ff_norm
    x = x + (silu(n W_ff_proj) * (n W_up_proj)) W_ff_out                SwiGLU
  logits = (RMSNorm(x) * ln_f) W_head                                   untied head [d, V]

Positions (`positions=`): "absolute" (LLaDA / HF, default): 0..L-1 for every row, left pads
included (bonsai's `compute_positions_from_segment_ids + left_pads`; pads' own positions do not
matter because they are key-masked). "from_first_token" (Dream style): cumsum(mask) - 1, so a
left-padded row sees exactly the positions of the same prompt without pads. RoPE scores depend only
on position differences, so the two agree up to float rounding.

KV cache (Fast-dLLM style block decoding, `sampling.blocks` cache modes): `prefill` is the forward
above that also returns every layer's keys (after RoPE) and values, cache {"k", "v"}
[n_layers, B, L, K, D] in compute dtype; `window(tokens [B, W], start, cache)` runs only the
query positions [start, start + W): their keys / values are computed, written into the cache
(static shapes: `dynamic_update_slice`), and their queries attend over all L cached keys with the
same key-padding mask. A window over unchanged tokens reproduces `prefill` (same keys / values,
same logits up to float rounding); entries outside the window stay as they were (stale when the
tokens they were computed from have changed: the approximation of the prefix / dual caches).
Logits are computed only at the `width` requested positions.

Parameter names follow bonsai's port and the HF keys `model.transformer.*` (see `weights.py`):
`wte.embedding`, `blocks.{i}.{attn_norm,ff_norm}.weight`,
`blocks.{i}.{q_proj,k_proj,v_proj,attn_out,ff_proj,up_proj,ff_out}.kernel` ([in, out], the
transpose of torch's weight), `blocks.{i}.{q,k,v}_proj.bias` (include_qkv_bias), `ln_f.weight`,
`ff_out.kernel` (head). RMSNorm weights are initialised to ONES (bonsai's zeros give a constant
random-init model). With `scan_layers=True` the blocks are stored stacked (leading axis "layers",
same names without the index) and run with `lax.scan`.

Logical axes (mapped to mesh axes by `remdm_jax.sharding` rules): wte ("vocab", "embed"),
q/k/v ("embed", "qkv"), attn_out ("heads", "embed"), ff_proj / up_proj ("embed", "mlp"),
block ff_out ("mlp", "embed"), head ("embed", "vocab"), norms ("norm",), qkv biases ("qkv",),
stacked blocks prepend "layers" (replicated by the default rules).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from remdm_jax.llm.tokenizer import HFTokenizer

POSITIONS = ("absolute", "from_first_token")
_DTYPES = ("float32", "bfloat16", "float16")

# HF config.json key -> LLaDAConfig field (LLaDA's `configuration_llada.py` names).
_HF_KEYS = ("d_model", "n_heads", "n_kv_heads", "n_layers", "mlp_hidden_size", "vocab_size",
            "embedding_size", "rope_theta", "rms_norm_eps", "include_qkv_bias",
            "max_sequence_length")

# The special ids (SPEC_DOMAINS §L.4): field -> (CLI flag, tokenizer special-token names, token
# strings looked up in the tokenizer, default of LLaDA-8B's tokenizer).
LLADA_8B_VOCAB = 126464
ID_FIELDS = {
    "mask_token_id": ("--mask_id", ("mask_token",), ("<|mdm_mask|>",), 126336),
    "eos_token_id": ("--eos_id", ("eos_token",), (), 126081),
    "eot_token_id": ("--eot_id", ("eot_token",), ("<|eot_id|>",), 126348),
    "pad_token_id": ("--pad_id", ("pad_token",), (), 126081),
}

# config.json options whose other values change the architecture (and are not implemented).
_HF_SUPPORTED = {"block_type": "llama", "layer_norm_type": "rms", "activation_type": "silu",
                 "weight_tying": False, "alibi": False, "include_bias": False, "rope": True,
                 "scale_logits": False, "layer_norm_with_affine": True,
                 "attention_layer_norm": False, "input_emb_norm": False, "block_group_size": 1}


@dataclasses.dataclass(frozen=True)
class LLaDAConfig:
  """Sizes and options of a LLaDA-architecture model.

  Attributes:
    d_model, n_heads, n_kv_heads (None = n_heads; grouped-query attention when smaller), n_layers,
      mlp_hidden_size, vocab_size (tokenizer size), embedding_size (rows of wte / columns of the
      head, >= vocab_size; None = vocab_size): sizes as in LLaDA's config.json.
    rope_theta: RoPE base (LLaDA-8B: 500000). rms_norm_eps: 1e-5.
    include_qkv_bias: biases on q/k/v (False for LLaDA-8B).
    max_sequence_length: longest accepted input (4096).
    mask_token_id, eos_token_id, eot_token_id, pad_token_id: LLaDA-8B: 126336, 126081, 126348,
      126081. eot_token_id may be None (a tokenizer without an end-of-turn token); the others are
      ints in [0, embedding_size). `from_hf_dict` resolves each (`resolve_ids`).
    param_dtype: dtype the parameters are stored in ("bfloat16" for the 8B model).
    compute_dtype: dtype of the matmuls (float32 accumulation); norms, RoPE, softmax and the
      residual stream are float32; logits float32.
    positions: "absolute" | "from_first_token" (module docstring).
    remat: rematerialise each block in the backward pass (training only).
    scan_layers: store the blocks stacked and run them with `lax.scan` (one compiled block).
  """

  d_model: int = 4096
  n_heads: int = 32
  n_kv_heads: Optional[int] = None
  n_layers: int = 32
  mlp_hidden_size: int = 12288
  vocab_size: int = 126464
  embedding_size: Optional[int] = None
  rope_theta: float = 500000.0
  rms_norm_eps: float = 1e-5
  include_qkv_bias: bool = False
  max_sequence_length: int = 4096
  mask_token_id: int = 126336
  eos_token_id: int = 126081
  eot_token_id: Optional[int] = 126348
  pad_token_id: int = 126081
  param_dtype: str = "bfloat16"
  compute_dtype: str = "bfloat16"
  positions: str = "absolute"
  remat: bool = False
  scan_layers: bool = False

  def __post_init__(self):
    def bad(field, why):
      raise ValueError(f"LLaDAConfig.{field}={getattr(self, field)!r}: {why}")

    if self.n_kv_heads is None:
      object.__setattr__(self, "n_kv_heads", self.n_heads)
    if self.embedding_size is None:
      object.__setattr__(self, "embedding_size", self.vocab_size)
    for f in ("d_model", "n_heads", "n_kv_heads", "n_layers", "mlp_hidden_size", "vocab_size",
              "embedding_size", "max_sequence_length"):
      v = getattr(self, f)
      if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        bad(f, "must be a positive int")
    if self.d_model % self.n_heads:
      bad("d_model", f"must be divisible by n_heads={self.n_heads}")
    if (self.d_model // self.n_heads) % 2:
      bad("n_heads", f"head dim {self.d_model // self.n_heads} must be even (RoPE)")
    if self.n_heads % self.n_kv_heads:
      bad("n_kv_heads", f"must divide n_heads={self.n_heads}")
    if self.embedding_size < self.vocab_size:
      bad("embedding_size", f"must be >= vocab_size={self.vocab_size}")
    for f in ID_FIELDS:
      v = getattr(self, f)
      if v is None and f == "eot_token_id":
        continue
      if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or \
          not 0 <= v < self.embedding_size:
        bad(f, f"must be an int in [0, embedding_size={self.embedding_size}) (override: "
            f"{ID_FIELDS[f][0]})")
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
    return self.d_model // self.n_heads

  @classmethod
  def from_hf_dict(cls, d: dict, token_ids: Optional[dict] = None, **overrides) -> "LLaDAConfig":
    """From the dict of a LLaDA `config.json` (unknown keys ignored; `overrides` win).

    token_ids: {field: id} found in the tokenizer files (`ids_from_tokenizer`), used for the
      special ids config.json lacks. The ids are resolved by `resolve_ids`.
    Raises ValueError for unsupported architecture options or an invalid / unresolvable id (one
    line naming the key, where its value came from and the flag that overrides it).
    """
    if not isinstance(d, dict):
      raise ValueError(f"LLaDA config.json must hold a JSON object, got {type(d).__name__}")
    unsupported = [f"{k}={d[k]!r}" for k, ok in _HF_SUPPORTED.items()
                   if k in d and d[k] is not None and d[k] != ok]
    if unsupported:
      raise ValueError(f"LLaDA config.json options not supported by this port: {unsupported} "
                       f"(supported: {_HF_SUPPORTED})")
    kw = {k: d[k] for k in _HF_KEYS if k in d and d[k] is not None}
    kw.update({k: v for k, v in overrides.items() if k not in ID_FIELDS})
    sizes = {f.name: f.default for f in dataclasses.fields(cls)}
    sizes.update(kw)
    vocab = sizes["vocab_size"]
    emb = sizes["embedding_size"] if sizes["embedding_size"] is not None else vocab
    kw.update(resolve_ids(d, token_ids, {k: v for k, v in overrides.items() if k in ID_FIELDS},
                          vocab_size=vocab, embedding_size=emb))
    return cls(**kw)

  @classmethod
  def from_hf_config(cls, path: str, token_ids: Optional[dict] = None,
                     **overrides) -> "LLaDAConfig":
    """From a `config.json` file or a folder holding one (`from_hf_dict`). When `token_ids` is
    None and the folder has tokenizer files, the ids config.json lacks come from them
    (`ids_from_tokenizer`). Raises ValueError naming the file if it is missing or not JSON."""
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    d = read_config_json(path, "LLaDA")
    if token_ids is None:
      token_ids = ids_from_tokenizer(folder)
    return cls.from_hf_dict(d, token_ids=token_ids, **overrides)

  @classmethod
  def llada_8b(cls, **overrides) -> "LLaDAConfig":
    """LLaDA-8B-Base / -Instruct sizes (bonsai's `llada_8b_it`)."""
    return cls(**overrides)

  @classmethod
  def tiny(cls, **overrides) -> "LLaDAConfig":
    """Test size: d=64, 2 heads, 2 layers, V=512, mask = V-1, EOS 510, EOT 509, pad 0, float32."""
    kw = dict(d_model=64, n_heads=2, n_layers=2, mlp_hidden_size=128, vocab_size=512,
              max_sequence_length=512, mask_token_id=511, eos_token_id=510, eot_token_id=509,
              pad_token_id=0, param_dtype="float32", compute_dtype="float32")
    kw.update(overrides)
    return cls(**kw)


def read_config_json(path: str, arch: str) -> dict:
  """The dict of `config.json` (a file or a folder holding one). ValueError naming the file when it
  is missing, unreadable or not a JSON object."""
  if os.path.isdir(path):
    path = os.path.join(path, "config.json")
  if not os.path.isfile(path):
    raise ValueError(f"{arch} config.json not found at {path!r}")
  try:
    with open(path, encoding="utf-8") as f:
      d = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f"{path}: not a valid config.json ({type(e).__name__}: {e})") from None
  if not isinstance(d, dict):
    raise ValueError(f"{path}: config.json must hold a JSON object")
  return d


def ids_from_tokenizer(folder: str, fields=None) -> dict:
  """{field: id} of the special ids found in a folder's tokenizer files (tokenizer.json plus
  tokenizer_config.json / special_tokens_map.json, `remdm_jax.llm.tokenizer`): a named special
  token (`mask_token`, `eos_token`, `eot_token`, `pad_token`) first, else a known token string
  (`<|mdm_mask|>`, `<|eot_id|>`). Empty when the folder has no tokenizer.json."""
  fields = ID_FIELDS if fields is None else fields
  if not folder or not os.path.isfile(os.path.join(folder, "tokenizer.json")):
    return {}
  tok = HFTokenizer(folder)
  out = {}
  for f, (_, names, strings, _) in fields.items():
    for i in [tok.special_id(n) for n in names] + [tok.token_id(s) for s in strings]:
      if i is not None:
        out[f] = int(i)
        break
  return out


def resolve_ids(config: dict, token_ids: Optional[dict], overrides: dict, *, vocab_size: int,
                embedding_size: int, fields=None, defaults_vocab: int = LLADA_8B_VOCAB,
                defaults_name: str = "LLaDA-8B") -> dict:
  """Resolves the special ids of a checkpoint (SPEC_DOMAINS §L.4), field by field, from the first
  source that has one:
    1. `overrides` (the CLI flags --mask_id / --eos_id / --eot_id / --pad_id);
    2. config.json's key of the same name (`mask_token_id`, ...);
    3. the tokenizer files (`token_ids`, from `ids_from_tokenizer`);
    4. the LLaDA-8B tokenizer's id, only when it is valid for this model: the model's vocab_size
       is at least `defaults_vocab` (126464, LLaDA's tokenizer) so the id names a real token;
    5. pad_token_id falls back to the EOS id (LLaDA pads with EOS); eot_token_id to None (no
       end-of-turn token; the rules that need it then ask for --eot_id).
  A mask or EOS id found nowhere, or any id that is not an int in [0, embedding_size), is one
  ValueError naming the key, where its value came from and the flag that overrides it.

  fields: {field: (flag, special names, token strings, 8B default)} (default `ID_FIELDS`);
  defaults_vocab / defaults_name: the vocabulary size and name of the model whose defaults these
  are (Dream passes its own).
  Returns {field: int or None}.
  """
  fields = ID_FIELDS if fields is None else fields
  token_ids = token_ids or {}
  out = {}
  for f, (flag, _, _, default) in fields.items():
    if overrides.get(f) is not None:
      v, src = overrides[f], f"{flag}"
    elif config.get(f) is not None:
      v, src = config[f], f"config.json {f}"
    elif token_ids.get(f) is not None:
      v, src = token_ids[f], f"the tokenizer files' {f[:-3]}"
    elif default is not None and vocab_size >= defaults_vocab and default < vocab_size:
      v, src = default, f"the {defaults_name} default {f}"
    elif f == "pad_token_id" and out.get("eos_token_id") is not None:
      v, src = out["eos_token_id"], "the EOS id"
    elif f == "eot_token_id":
      out[f] = None
      continue
    else:
      raise ValueError(f"{f}: config.json has no {f!r}, the tokenizer files name none and the "
                       f"{defaults_name} default does not fit vocab_size={vocab_size}; "
                       f"pass {flag}")
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or \
        not 0 <= int(v) < embedding_size:
      raise ValueError(f"{f}={v!r} (from {src}) is outside the vocabulary [0, {embedding_size}); "
                       f"set {flag} to an id inside it")
    out[f] = int(v)
  return out


def _param(value, axes) -> nnx.Param:
  if len(axes) != value.ndim:
    raise ValueError(f"logical axes {axes} do not match parameter shape {value.shape}")
  return nnx.Param(value, out_sharding=tuple(axes), eager_sharding=False)


class Linear(nnx.Module):
  """y = x K (+ b), K [in, out] stored in param_dtype; matmul in compute dtype, float32 out.
  Init: normal(0, 1/sqrt(in)) kernel, zero bias."""

  def __init__(self, n_in, n_out, axes, cfg: LLaDAConfig, *, bias=False, rngs: nnx.Rngs):
    dt = jnp.dtype(cfg.param_dtype)
    w = jax.random.normal(rngs.params(), (n_in, n_out), jnp.float32) / math.sqrt(n_in)
    self.kernel = _param(w.astype(dt), axes)
    self.bias = _param(jnp.zeros((n_out,), dt), (axes[1],)) if bias else None

  def __call__(self, x, dtype):
    y = jnp.matmul(x.astype(dtype), self.kernel[...].astype(dtype),
                   preferred_element_type=jnp.float32)
    if self.bias is not None:
      y = y + self.bias[...].astype(jnp.float32)
    return y


class RMSNorm(nnx.Module):
  """x rsqrt(mean(x^2) + eps) * weight in float32; weight initialised to ONES."""

  def __init__(self, dim, cfg: LLaDAConfig):
    self.weight = _param(jnp.ones((dim,), jnp.dtype(cfg.param_dtype)), ("norm",))
    self.eps = cfg.rms_norm_eps

  def __call__(self, x):
    x = x.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps)
    return x * self.weight[...].astype(jnp.float32)


def rope_cos_sin(positions: jax.Array, head_dim: int, theta: float):
  """cos, sin [B, L, D] float32 for integer positions [B, L]: angle(p, j) = p theta^(-2j/D),
  j < D/2, repeated over both halves (half-split RoPE)."""
  inv = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
  ang = jnp.einsum("bl,j->blj", positions.astype(jnp.float32), jnp.asarray(inv, jnp.float32),
                   precision=jax.lax.Precision.HIGHEST)
  ang = jnp.concatenate([ang, ang], axis=-1)
  return jnp.cos(ang), jnp.sin(ang)


def apply_rope(x, cos, sin):
  """x [B, L, H, D] float32: x cos + rotate_half(x) sin, rotate_half(x) = [-x2, x1]."""
  x1, x2 = jnp.split(x, 2, axis=-1)
  rot = jnp.concatenate([-x2, x1], axis=-1)
  return x * cos[:, :, None, :] + rot * sin[:, :, None, :]


def positions_from_mask(attention_mask: jax.Array, mode: str) -> jax.Array:
  """int32 [B, L] positions (module docstring) from a 0/1 key-padding mask [B, L]."""
  B, L = attention_mask.shape
  if mode == "absolute":
    return jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32), (B, L))
  m = attention_mask.astype(jnp.int32)
  return jnp.maximum(jnp.cumsum(m, axis=-1) - 1, 0).astype(jnp.int32)


class LLaDABlock(nnx.Module):
  """One LLaDA Llama block (module docstring)."""

  def __init__(self, cfg: LLaDAConfig, *, rngs: nnx.Rngs):
    d, kv = cfg.d_model, cfg.n_kv_heads * cfg.head_dim
    self.attn_norm = RMSNorm(d, cfg)
    self.q_proj = Linear(d, d, ("embed", "qkv"), cfg, bias=cfg.include_qkv_bias, rngs=rngs)
    self.k_proj = Linear(d, kv, ("embed", "qkv"), cfg, bias=cfg.include_qkv_bias, rngs=rngs)
    self.v_proj = Linear(d, kv, ("embed", "qkv"), cfg, bias=cfg.include_qkv_bias, rngs=rngs)
    self.attn_out = Linear(d, d, ("heads", "embed"), cfg, rngs=rngs)
    self.ff_norm = RMSNorm(d, cfg)
    self.ff_proj = Linear(d, cfg.mlp_hidden_size, ("embed", "mlp"), cfg, rngs=rngs)
    self.up_proj = Linear(d, cfg.mlp_hidden_size, ("embed", "mlp"), cfg, rngs=rngs)
    self.ff_out = Linear(cfg.mlp_hidden_size, d, ("mlp", "embed"), cfg, rngs=rngs)
    self.cfg = cfg

  def qkv(self, x, cos, sin):
    """x [B, T, d] float32 -> q [B, T, N, D], k, v [B, T, K, D] (float32, RoPE applied to q, k)."""
    cfg = self.cfg
    dt = jnp.dtype(cfg.compute_dtype)
    B, T, _ = x.shape
    N, K, D = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    n = self.attn_norm(x)
    q = apply_rope(self.q_proj(n, dt).reshape(B, T, N, D), cos, sin)
    k = apply_rope(self.k_proj(n, dt).reshape(B, T, K, D), cos, sin)
    v = self.v_proj(n, dt).reshape(B, T, K, D)
    return q, k, v

  def attend(self, x, q, k, v, keep):
    """The rest of the block for queries x [B, T, d] / q [B, T, N, D] over keys / values k, v
    [B, S, K, D] (any float dtype; used in compute dtype) with key mask keep bool [B, 1, 1, S]
    (`attention`) -> [B, T, d] float32."""
    dt = jnp.dtype(self.cfg.compute_dtype)
    B, T, _ = x.shape
    a = attention(q, k, v, keep, dt)
    x = x + self.attn_out(a.reshape(B, T, -1), dt)
    n = self.ff_norm(x)
    h = jax.nn.silu(self.ff_proj(n, dt)) * self.up_proj(n, dt)
    return x + self.ff_out(h, dt)

  def __call__(self, x, cos, sin, keep):
    """x [B, L, d] float32; cos/sin [B, L, D]; keep bool [B, 1, 1, L] (key is a real token)
    -> [B, L, d] float32."""
    q, k, v = self.qkv(x, cos, sin)
    return self.attend(x, q, k, v, keep)

  def prefill(self, x, cos, sin, keep):
    """As __call__, also returning this layer's (k, v) [B, L, K, D] in compute dtype."""
    dt = jnp.dtype(self.cfg.compute_dtype)
    q, k, v = self.qkv(x, cos, sin)
    k, v = k.astype(dt), v.astype(dt)
    return self.attend(x, q, k, v, keep), (k, v)

  def window(self, x, cos, sin, keep, k_all, v_all, layer, start):
    """Queries at positions [start, start + W) (x [B, W, d]) against this layer's entry of the
    stacked cache k_all / v_all [n_layers, B, L, K, D], whose entries at those positions are first
    replaced by the window's own keys / values (in place: a dynamic_update_slice of the carried
    cache). -> (x [B, W, d], (k_all, v_all) updated)."""
    q, k, v = self.qkv(x, cos, sin)
    z = jnp.zeros((), jnp.int32)
    at = (layer, z, start, z, z)
    k_all = lax.dynamic_update_slice(k_all, k.astype(k_all.dtype)[None], at)
    v_all = lax.dynamic_update_slice(v_all, v.astype(v_all.dtype)[None], at)
    k_l = lax.dynamic_index_in_dim(k_all, layer, 0, keepdims=False)
    v_l = lax.dynamic_index_in_dim(v_all, layer, 0, keepdims=False)
    return self.attend(x, q, k_l, v_l, keep), (k_all, v_all)


def attention(q, k, v, keep, dt):
  """Bidirectional grouped-query attention: queries q [B, T, N, D] over keys / values k, v
  [B, S, K, D] (T = S for a full forward; T < S for a KV-cache window) (K divides N; q head j
  uses kv head j // (N / K), torch's `repeat_kv`), keep bool [B, 1, 1, S] (masked keys get
  finfo(float32).min, so a row never becomes NaN). Scores and softmax in float32, matmuls in dt
  with float32 accumulation. Returns float32 [B, T, N, D]. The one attention of LLaDA (full
  forward, prefill, window) and Dream."""
  N, K, D = q.shape[2], k.shape[2], q.shape[3]
  if K != N:
    k = jnp.repeat(k, N // K, axis=2)
    v = jnp.repeat(v, N // K, axis=2)
  s = jnp.einsum("bqhd,bkhd->bhqk", q.astype(dt), k.astype(dt),
                 preferred_element_type=jnp.float32) / math.sqrt(D)
  s = jnp.where(keep, s, jnp.finfo(jnp.float32).min)
  w = jax.nn.softmax(s, axis=-1)
  return jnp.einsum("bhqk,bkhd->bqhd", w.astype(dt), v.astype(dt),
                    preferred_element_type=jnp.float32)


def stacked_layers(make_layer, n_layers: int, rngs: nnx.Rngs):
  """A layer module whose parameters carry a leading [n_layers] axis (logical name "layers"),
  `make_layer(rngs)` building one layer; run it with `lax.scan` over the split state."""
  keys = jax.random.split(rngs.params(), n_layers)
  states = jax.vmap(lambda k: nnx.split(make_layer(nnx.Rngs(params=k)))[1])(keys)
  gd, _ = nnx.split(nnx.eval_shape(lambda: make_layer(nnx.Rngs(0))))

  def add_axis(v):
    names = v.get_metadata().get("out_sharding")
    return v.replace(v[...], out_sharding=("layers",) + tuple(names))

  states = jax.tree.map(add_axis, states, is_leaf=lambda x: isinstance(x, nnx.Variable))
  return nnx.merge(gd, states)


def _stacked_blocks(cfg: LLaDAConfig, rngs: nnx.Rngs) -> LLaDABlock:
  """A block whose parameters carry a leading [n_layers] axis (logical name "layers")."""
  return stacked_layers(lambda r: LLaDABlock(cfg, rngs=r), cfg.n_layers, rngs)


def layer_loop(layers, carry, fn, scan: bool, xs=None):
  """carry -> fn(layer, carry, xs_i) -> (carry, y_i) through every layer: `lax.scan` over the
  stacked state of `stacked_layers` (one compiled layer; xs, a pytree with a leading [n_layers]
  axis or None, scanned with it), or a Python loop over an `nnx.List` (xs_i = xs[i]).
  Returns (carry, ys stacked on a leading [n_layers] axis, or None when fn returns None)."""
  if scan:
    gd, st = nnx.split(layers)

    def body(c, inp):
      layer_state, x_i = inp
      return fn(nnx.merge(gd, layer_state), c, x_i)

    return jax.lax.scan(body, carry, (st, xs))
  ys = []
  for i, layer in enumerate(layers):
    x_i = None if xs is None else jax.tree.map(lambda a: a[i], xs)
    carry, y = fn(layer, carry, x_i)
    ys.append(y)
  stacked = None if ys[0] is None else jax.tree.map(lambda *a: jnp.stack(a), *ys)
  return carry, stacked


def run_layers(layers, x, run, scan: bool):
  """x -> run(layer, x) through every layer (`layer_loop` without per-layer outputs)."""
  return layer_loop(layers, x, lambda layer, x, _: (run(layer, x), None), scan)[0]


class LLaDAModel(nnx.Module):
  """`model(tokens int32 [B, L], attention_mask [B, L] (1 = real token) | None) -> logits
  float32 [B, L, embedding_size]`. Raises ValueError on a bad shape or L > max_sequence_length."""

  def __init__(self, cfg: LLaDAConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    emb = jax.random.normal(rngs.params(), (cfg.embedding_size, cfg.d_model), jnp.float32) * 0.02
    self.wte = nnx.Module()
    self.wte.embedding = _param(emb.astype(jnp.dtype(cfg.param_dtype)), ("vocab", "embed"))
    if cfg.scan_layers:
      self.blocks = _stacked_blocks(cfg, rngs)
    else:
      self.blocks = nnx.List([LLaDABlock(cfg, rngs=rngs) for _ in range(cfg.n_layers)])
    self.ln_f = RMSNorm(cfg.d_model, cfg)
    self.ff_out = Linear(cfg.d_model, cfg.embedding_size, ("embed", "vocab"), cfg, rngs=rngs)

  def _check(self, tokens, attention_mask):
    cfg = self.cfg
    if tokens.ndim != 2:
      raise ValueError(f"tokens shape {tokens.shape} must be [B, L]")
    B, L = tokens.shape
    if L > cfg.max_sequence_length:
      raise ValueError(f"sequence length {L} > max_sequence_length={cfg.max_sequence_length}")
    if attention_mask is None:
      attention_mask = jnp.ones((B, L), jnp.int32)
    if attention_mask.shape != (B, L):
      raise ValueError(f"attention_mask shape {attention_mask.shape} != tokens shape {(B, L)}")
    return attention_mask

  def _embed(self, tokens):
    return jnp.take(self.wte.embedding[...], tokens, axis=0).astype(jnp.float32)

  def hidden(self, tokens, attention_mask=None):
    """Final hidden states after ln_f: float32 [B, L, d]."""
    cfg = self.cfg
    attention_mask = self._check(tokens, attention_mask)
    keep = (attention_mask != 0)[:, None, None, :]
    pos = positions_from_mask(attention_mask, cfg.positions)
    cos, sin = rope_cos_sin(pos, cfg.head_dim, cfg.rope_theta)
    x = self._embed(tokens)

    def run(block, x):
      return block(x, cos, sin, keep)

    if cfg.remat:
      run = nnx.remat(run)
    x = run_layers(self.blocks, x, run, cfg.scan_layers)
    return self.ln_f(x)

  def __call__(self, tokens, attention_mask=None):
    h = self.hidden(tokens, attention_mask)
    return self.ff_out(h, jnp.dtype(self.cfg.compute_dtype))

  def _head(self, h, start, width):
    h = lax.dynamic_slice_in_dim(h, start, width, axis=1)
    return self.ff_out(self.ln_f(h), jnp.dtype(self.cfg.compute_dtype))

  def prefill(self, tokens, attention_mask=None, start=0, width=None):
    """Full forward that also returns the KV cache (module docstring "KV cache").

    Args: tokens int32 [B, L]; attention_mask [B, L] (1 = real); start (int, may be traced) and
      width (static int, default L - start): the positions whose logits are returned.
    Returns: (logits float32 [B, width, V] at positions start..start+width-1, cache) with cache
      {"k", "v"}: [n_layers, B, L, n_kv_heads, head_dim] in compute dtype (RoPE applied to k).
    """
    cfg = self.cfg
    attention_mask = self._check(tokens, attention_mask)
    L = tokens.shape[1]
    width = L - start if width is None else width
    keep = (attention_mask != 0)[:, None, None, :]
    pos = positions_from_mask(attention_mask, cfg.positions)
    cos, sin = rope_cos_sin(pos, cfg.head_dim, cfg.rope_theta)
    x, (k, v) = layer_loop(self.blocks, self._embed(tokens),
                           lambda block, x, _: block.prefill(x, cos, sin, keep), cfg.scan_layers)
    return self._head(x, start, width), {"k": k, "v": v}

  def window(self, tokens, start, cache, attention_mask=None, width=None):
    """Runs only the query positions [start, start + W) against `cache` and writes their keys /
    values into it (module docstring "KV cache").

    Args: tokens int32 [B, W] (the window's tokens); start int (may be traced; the window must lie
      inside [0, L)); cache {"k", "v"} [n_layers, B, L, K, D] from `prefill` / `window`;
      attention_mask [B, L] of the whole sequence; width (static int <= W, default W): logits of
      the first `width` window positions are returned.
    Returns: (logits float32 [B, width, V], updated cache).
    """
    cfg = self.cfg
    B, W = tokens.shape
    L = cache["k"].shape[2]
    if attention_mask is None:
      attention_mask = jnp.ones((B, L), jnp.int32)
    if attention_mask.shape != (B, L) or cache["k"].shape[1] != B or W > L:
      raise ValueError(f"window: tokens {tokens.shape}, attention_mask {attention_mask.shape} and "
                       f"cache {cache['k'].shape} ([n_layers, B, L, K, D]) do not fit")
    width = W if width is None else width
    keep = (attention_mask != 0)[:, None, None, :]
    pos = lax.dynamic_slice_in_dim(positions_from_mask(attention_mask, cfg.positions), start, W,
                                   axis=1)
    cos, sin = rope_cos_sin(pos, cfg.head_dim, cfg.rope_theta)

    x = self._embed(tokens)

    def run(block, carry, i):  # the cache rides in the carry: updated in place, never copied
      x, k_all, v_all = carry
      x, (k_all, v_all) = block.window(x, cos, sin, keep, k_all, v_all, i, start)
      return (x, k_all, v_all), None

    (x, k_all, v_all), _ = layer_loop(self.blocks, (x, cache["k"], cache["v"]), run,
                                      cfg.scan_layers, jnp.arange(cfg.n_layers, dtype=jnp.int32))
    return self._head(x, 0, width), {"k": k_all, "v": v_all}


def init_model(cfg: LLaDAConfig, key) -> tuple[nnx.GraphDef, nnx.State]:
  """Random init -> (graphdef, params State)."""
  model = LLaDAModel(cfg, rngs=nnx.Rngs(params=key))
  return nnx.split(model, nnx.Param)


def abstract_model(cfg: LLaDAConfig) -> tuple[nnx.GraphDef, nnx.State]:
  """(graphdef, State of ShapeDtypeStruct params) via `nnx.eval_shape`; nothing materialised."""
  model = nnx.eval_shape(lambda: LLaDAModel(cfg, rngs=nnx.Rngs(params=0)))
  return nnx.split(model, nnx.Param)


def init_sharded(cfg: LLaDAConfig, key, mesh, rules=None) -> tuple[nnx.GraphDef, nnx.State]:
  """Random init straight into parameters sharded over `mesh` by the logical-axis rules
  (`remdm_jax.sharding`), never materialising the whole model on one device."""
  from remdm_jax import sharding as mesh_lib
  rules = mesh_lib.DEFAULT_RULES if rules is None else rules
  gd, abstract = abstract_model(cfg)
  shardings = mesh_lib.param_shardings(abstract, mesh, rules)

  @jax.jit
  def make(k):
    return init_model(cfg, k)[1]

  state = jax.jit(make, out_shardings=shardings)(key)
  return gd, state


def make_logits_fn(graphdef: nnx.GraphDef) -> Callable[..., jax.Array]:
  """-> logits_fn(params, tokens int32 [B, L], attention_mask [B, L]) -> float32 [B, L, V], the
  callable the Flax-free generator (`remdm_jax.llm.generate`) takes."""

  def logits_fn(params, tokens, attention_mask):
    return nnx.merge(graphdef, params)(tokens, attention_mask)

  return logits_fn


CACHE_AXES = ("layers", "batch", "cache_len", "kv_heads", "head_dim")
CACHE_RULES = (("batch", ("data", "fsdp")), ("kv_heads", "tensor"))


def cache_sharding(mesh, cache_shape, rules=None):
  """NamedSharding of a cache array [n_layers, B, L, K, D] by the logical-axis rules
  (`remdm_jax.sharding`; CACHE_RULES add batch -> (data, fsdp), kv_heads -> tensor; a dim that
  does not divide its mesh axes is replicated)."""
  from remdm_jax import sharding as mesh_lib
  rules = tuple(mesh_lib.DEFAULT_RULES if rules is None else rules) + CACHE_RULES
  spec = mesh_lib.logical_to_spec(CACHE_AXES, cache_shape, mesh, rules)
  return jax.sharding.NamedSharding(mesh, spec)


def make_cache_fns(graphdef: nnx.GraphDef, mesh=None, rules=None):
  """-> (prefill_fn, window_fn), the cache callables of `remdm_jax.types` (PrefillFn, WindowFn)
  that the Flax-free block decoder takes (`sampling.blocks`, cache modes prefix / dual):

    prefill_fn(params, tokens [B, L], attention_mask [B, L], start, width)
        -> (logits float32 [B, width, V] at positions start.., cache)
    window_fn(params, tokens [B, W], start, cache, attention_mask [B, L], width)
        -> (logits float32 [B, width, V] at positions start.., cache)

  cache = {"k", "v"}: [n_layers, B, L, n_kv_heads, head_dim] in compute dtype (bf16 at the 8B
  shape), a pytree scanned with the stacked layers. With `mesh`, the cache is constrained to
  `cache_sharding` (batch over data/fsdp, kv heads over tensor)."""

  def constrain(cache):
    if mesh is None:
      return cache
    return {n: lax.with_sharding_constraint(a, cache_sharding(mesh, a.shape, rules))
            for n, a in cache.items()}

  def prefill_fn(params, tokens, attention_mask, start, width):
    logits, cache = nnx.merge(graphdef, params).prefill(tokens, attention_mask, start, width)
    return logits, constrain(cache)

  def window_fn(params, tokens, start, cache, attention_mask, width):
    logits, cache = nnx.merge(graphdef, params).window(tokens, start, constrain(cache),
                                                       attention_mask, width)
    return logits, constrain(cache)

  return prefill_fn, window_fn


def count_params(cfg: LLaDAConfig) -> int:
  """Number of parameters (LLaDA-8B: 8,015,581,184)."""
  d, m, kv = cfg.d_model, cfg.mlp_hidden_size, cfg.n_kv_heads * cfg.head_dim
  bias = (d + 2 * kv) if cfg.include_qkv_bias else 0
  block = 2 * d + d * d + 2 * d * kv + d * d + 3 * d * m + bias
  return cfg.n_layers * block + 2 * cfg.embedding_size * d + d
