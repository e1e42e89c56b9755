"""Plain-JAX GPT-2 (the scorer of SPEC §7: gen PPL under gpt2-large, MAUVE features).

Loads Hugging Face GPT-2 weights from a local folder (`config.json` + `model.safetensors`, the
gpt2 / gpt2-large layout; keys optionally prefixed with "transformer."; Conv1D weights are stored
[in, out]; the LM head is tied to `wte`). No network access, float32 throughout.

Forward (pre-LN transformer, Radford et al. 2019):
  x = wte[tokens] + wpe[0..L-1]
  per block: x += c_proj(causal_attn(ln_1(x)));  x += mlp_c_proj(gelu_tanh(c_fc(ln_2(x))))
  h = ln_f(x);  logits = h @ wte^T.
`h` at the last real token is the MAUVE feature (mauve-text takes hidden_states[-1], which in HF
GPT-2 is the ln_f output).
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


@dataclasses.dataclass(frozen=True)
class GPT2Config:
  vocab_size: int = 50257
  n_positions: int = 1024
  n_embd: int = 768
  n_layer: int = 12
  n_head: int = 12
  layer_norm_epsilon: float = 1e-5
  activation_function: str = "gelu_new"
  eos_token_id: int = 50256

  @classmethod
  def from_json(cls, path: str) -> "GPT2Config":
    if not os.path.isfile(path):
      raise FileNotFoundError(f"GPT-2 config.json not found: {path}")
    with open(path) as f:
      d = json.load(f)
    kw = {k: d[k] for k in (f.name for f in dataclasses.fields(cls)) if d.get(k) is not None}
    cfg = cls(**kw)
    if cfg.n_embd % cfg.n_head:
      raise ValueError(f"n_embd={cfg.n_embd} is not divisible by n_head={cfg.n_head}")
    if cfg.activation_function not in ("gelu_new", "gelu", "gelu_pytorch_tanh"):
      raise ValueError(f"unsupported activation_function={cfg.activation_function!r}")
    for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
      if d.get(flag):
        raise ValueError(f"unsupported {flag}={d[flag]!r} in {path}")
    if d.get("n_inner") not in (None, 4 * cfg.n_embd):
      raise ValueError(f"unsupported n_inner={d.get('n_inner')!r} (only 4 * n_embd)")
    return cfg


_BLOCK_KEYS = {
    "ln_1_g": "ln_1.weight", "ln_1_b": "ln_1.bias",
    "attn_w": "attn.c_attn.weight", "attn_b": "attn.c_attn.bias",
    "attn_proj_w": "attn.c_proj.weight", "attn_proj_b": "attn.c_proj.bias",
    "ln_2_g": "ln_2.weight", "ln_2_b": "ln_2.bias",
    "fc_w": "mlp.c_fc.weight", "fc_b": "mlp.c_fc.bias",
    "mlp_proj_w": "mlp.c_proj.weight", "mlp_proj_b": "mlp.c_proj.bias",
}


def load_gpt2_params(path: str) -> tuple[GPT2Config, dict]:
  """Read `path/config.json` and `path/model.safetensors` into (config, params).

  params: {"wte" [V, D], "wpe" [P, D], "ln_f_g"/"ln_f_b" [D], "blocks": {name: [n_layer, ...]}}
  as float32 numpy arrays (blocks stacked along a leading layer axis, for lax.scan).
  """
  cfg_path = os.path.join(path, "config.json")
  st_path = os.path.join(path, "model.safetensors")
  if not os.path.isdir(path):
    raise FileNotFoundError(f"GPT-2 weights folder not found: {path}")
  cfg = GPT2Config.from_json(cfg_path)
  if not os.path.isfile(st_path):
    raise FileNotFoundError(f"GPT-2 model.safetensors not found: {st_path}")
  with safetensors_reader(st_path, "transformer.") as get:
    params = {"wte": get("wte.weight"), "wpe": get("wpe.weight"),
              "ln_f_g": get("ln_f.weight"), "ln_f_b": get("ln_f.bias"),
              "blocks": stack_layers(get, "h.{}", _BLOCK_KEYS, cfg.n_layer)}
  d = cfg.n_embd
  expect = {"wte": (cfg.vocab_size, d), "wpe": (cfg.n_positions, d),
            "attn_w": (cfg.n_layer, d, 3 * d), "fc_w": (cfg.n_layer, d, 4 * d)}
  got = {"wte": params["wte"].shape, "wpe": params["wpe"].shape,
         "attn_w": params["blocks"]["attn_w"].shape, "fc_w": params["blocks"]["fc_w"].shape}
  for k, v in expect.items():
    if tuple(got[k]) != v:
      raise ValueError(f"{st_path}: tensor {k} has shape {got[k]}, config implies {v}")
  return cfg, params


def gpt2_hidden(params: dict, tokens: jax.Array, cfg: GPT2Config,
                precision=HIGHEST) -> jax.Array:
  """Final hidden states h = ln_f(x_L). tokens int [B, L] (L <= n_positions) -> float32 [B, L, D].

  Causal attention only (right padding never affects real positions, so no mask is needed).
  """
  b, length = tokens.shape
  if length > cfg.n_positions:
    raise ValueError(f"sequence length {length} exceeds n_positions={cfg.n_positions}")
  nh, dh = cfg.n_head, cfg.n_embd // cfg.n_head
  eps = cfg.layer_norm_epsilon
  dot = functools.partial(jnp.einsum, precision=precision)
  x = jnp.take(params["wte"], tokens, axis=0) + params["wpe"][:length][None]
  causal = jnp.tril(jnp.ones((length, length), bool))
  approx = cfg.activation_function != "gelu"

  def block(x, p):
    h = layer_norm(x, p["ln_1_g"], p["ln_1_b"], eps)
    qkv = dot("bld,de->ble", h, p["attn_w"]) + p["attn_b"]
    q, k, v = jnp.split(qkv.reshape(b, length, 3, nh, dh), 3, axis=2)
    q, k, v = q[:, :, 0], k[:, :, 0], v[:, :, 0]
    s = dot("bqhd,bkhd->bhqk", q, k) / np.sqrt(dh).astype(np.float32)
    s = jnp.where(causal, s, jnp.finfo(s.dtype).min)
    a = jax.nn.softmax(s, axis=-1)
    o = dot("bhqk,bkhd->bqhd", a, v).reshape(b, length, nh * dh)
    x = x + dot("bld,de->ble", o, p["attn_proj_w"]) + p["attn_proj_b"]
    h = layer_norm(x, p["ln_2_g"], p["ln_2_b"], eps)
    h = jax.nn.gelu(dot("bld,de->ble", h, p["fc_w"]) + p["fc_b"], approximate=approx)
    x = x + dot("bld,de->ble", h, p["mlp_proj_w"]) + p["mlp_proj_b"]
    return x, None

  x, _ = jax.lax.scan(block, x, params["blocks"])
  return layer_norm(x, params["ln_f_g"], params["ln_f_b"], eps)


def gpt2_logits(params: dict, tokens: jax.Array, cfg: GPT2Config, precision=HIGHEST) -> jax.Array:
  """Next-token logits, tied head: ln_f(x) @ wte^T. tokens [B, L] -> float32 [B, L, V]."""
  h = gpt2_hidden(params, tokens, cfg, precision)
  return jnp.einsum("bld,vd->blv", h, params["wte"], precision=precision)
