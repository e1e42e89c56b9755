"""LLaDA architecture + HF safetensors loading vs an independent float64 numpy forward pass."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("safetensors")
from safetensors.numpy import save_file  # noqa: E402

from remdm_jax.llm import model as M  # noqa: E402
from remdm_jax.llm import weights as W  # noqa: E402

HF = dict(d_model=32, n_heads=4, n_kv_heads=2, n_layers=2, mlp_hidden_size=48, vocab_size=60,
          embedding_size=64, rope_theta=500000.0, rms_norm_eps=1e-5, include_qkv_bias=True,
          max_sequence_length=128, mask_token_id=63, eos_token_id=62, eot_token_id=61,
          pad_token_id=0)


def hf_tensors(rng, c):
  """Random weights in the HF layout: Linear weight [out, in]."""
  d, m, kv = c["d_model"], c["mlp_hidden_size"], c["n_kv_heads"] * c["d_model"] // c["n_heads"]
  t = {"model.transformer.wte.weight": rng.normal(size=(c["embedding_size"], d)),
       "model.transformer.ln_f.weight": 1 + 0.1 * rng.normal(size=(d,)),
       "model.transformer.ff_out.weight": rng.normal(size=(c["embedding_size"], d)) / 5}
  for i in range(c["n_layers"]):
    p = f"model.transformer.blocks.{i}."
    t[p + "attn_norm.weight"] = 1 + 0.1 * rng.normal(size=(d,))
    t[p + "ff_norm.weight"] = 1 + 0.1 * rng.normal(size=(d,))
    for name, shape in (("q_proj", (d, d)), ("k_proj", (kv, d)), ("v_proj", (kv, d)),
                        ("attn_out", (d, d)), ("ff_proj", (m, d)), ("up_proj", (m, d)),
                        ("ff_out", (d, m))):
      t[p + name + ".weight"] = rng.normal(size=shape) / np.sqrt(shape[1])
    for name, n in (("q_proj", d), ("k_proj", kv), ("v_proj", kv)):
      t[p + name + ".bias"] = 0.1 * rng.normal(size=(n,))
  return {k: v.astype(np.float32) for k, v in t.items()}


def write_dir(path, t, c, shards=1):
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(c, f)
  if shards == 1:
    save_file(t, os.path.join(path, "model.safetensors"))
    return
  keys, wm = sorted(t), {}
  for s in range(shards):
    fn = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
    save_file({k: t[k] for k in keys[s::shards]}, os.path.join(path, fn))
    wm.update({k: fn for k in keys[s::shards]})
  with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
    json.dump({"weight_map": wm}, f)


def numpy_forward(t, c, tokens, mask):
  """Independent float64 LLaDA forward (HF modeling_llada semantics, absolute positions)."""
  t = {k: v.astype(np.float64) for k, v in t.items()}
  d, N, K = c["d_model"], c["n_heads"], c["n_kv_heads"]
  D, eps = d // N, c["rms_norm_eps"]
  B, L = tokens.shape

  def rms(x, w):
    return x / np.sqrt((x ** 2).mean(-1, keepdims=True) + eps) * w

  inv = 1.0 / c["rope_theta"] ** (np.arange(0, D, 2) / D)
  ang = np.arange(L)[:, None] * inv[None]
  cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))

  def rope(x):  # [B, L, H, D]
    rot = np.concatenate([-x[..., D // 2:], x[..., :D // 2]], -1)
    return x * cos[None, :, None] + rot * sin[None, :, None]

  x = t["model.transformer.wte.weight"][tokens]
  for i in range(c["n_layers"]):
    p = f"model.transformer.blocks.{i}."
    lin = lambda h, n: h @ t[p + n + ".weight"].T + t.get(p + n + ".bias", 0.0)
    h = rms(x, t[p + "attn_norm.weight"])
    q = rope(lin(h, "q_proj").reshape(B, L, N, D))
    k = rope(lin(h, "k_proj").reshape(B, L, K, D))
    v = lin(h, "v_proj").reshape(B, L, K, D)
    k, v = np.repeat(k, N // K, 2), np.repeat(v, N // K, 2)
    s = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(D)
    s = np.where(mask[:, None, None, :] > 0, s, -np.inf)
    w = np.exp(s - s.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    x = x + lin(np.einsum("bhqk,bkhd->bqhd", w, v).reshape(B, L, d), "attn_out")
    h = rms(x, t[p + "ff_norm.weight"])
    g = lin(h, "ff_proj")
    x = x + lin(g / (1 + np.exp(-g)) * lin(h, "up_proj"), "ff_out")
  return rms(x, t["model.transformer.ln_f.weight"]) @ t["model.transformer.ff_out.weight"].T


def _batch():
  tokens = np.array([[0, 0, 0, 5, 9, 17, 63, 63], [4, 8, 15, 16, 23, 42, 63, 2]], np.int32)
  mask = np.array([[0, 0, 0, 1, 1, 1, 1, 1], [1] * 8], np.int32)
  return tokens, mask


@pytest.mark.parametrize("shards,scan", [(1, False), (3, False), (3, True)])
def test_hf_safetensors_forward_matches_numpy(tmp_path, shards, scan):
  c = dict(HF)
  t = hf_tensors(np.random.default_rng(0), c)
  write_dir(str(tmp_path), t, c, shards)
  cfg, gd, params = W.load_llada(str(tmp_path), param_dtype="float32", compute_dtype="float32",
                                 scan_layers=scan)
  assert cfg.n_kv_heads == 2 and cfg.embedding_size == 64 and cfg.vocab_size == 60
  tokens, mask = _batch()
  with jax.default_matmul_precision("highest"):
    got = np.asarray(M.make_logits_fn(gd)(params, jnp.asarray(tokens), jnp.asarray(mask)))
  want = numpy_forward(t, c, tokens, mask)
  assert got.shape == (2, 8, 64) and got.dtype == np.float32
  real = mask.astype(bool)  # pad queries are not used by anyone
  np.testing.assert_allclose(got[real], want[real], rtol=1e-5, atol=1e-5)


def test_positions_from_first_token_make_padding_invisible(tmp_path):
  c = dict(HF)
  t = hf_tensors(np.random.default_rng(1), c)
  write_dir(str(tmp_path), t, c)
  _, gd, params = W.load_llada(str(tmp_path), param_dtype="float32", compute_dtype="float32",
                               positions="from_first_token")
  f = M.make_logits_fn(gd)
  tokens, mask = _batch()
  with jax.default_matmul_precision("highest"):
    padded = np.asarray(f(params, jnp.asarray(tokens[:1]), jnp.asarray(mask[:1])))[0, 3:]
    alone = np.asarray(f(params, jnp.asarray(tokens[:1, 3:]), jnp.ones((1, 5), jnp.int32)))[0]
  np.testing.assert_allclose(padded, alone, rtol=1e-5, atol=1e-5)
  # and equals numpy's absolute-position forward of the unpadded prompt
  np.testing.assert_allclose(alone, numpy_forward(t, c, tokens[:1, 3:], mask[:1, 3:])[0],
                             rtol=1e-5, atol=1e-5)


def test_bad_checkpoint_names_every_key(tmp_path):
  c = dict(HF)
  t = hf_tensors(np.random.default_rng(2), c)
  del t["model.transformer.blocks.1.up_proj.weight"]
  t["model.transformer.blocks.0.extra.weight"] = np.zeros(3, np.float32)
  t["model.transformer.blocks.0.q_proj.weight"] = np.zeros((32, 31), np.float32)
  write_dir(str(tmp_path), t, c)
  with pytest.raises(ValueError) as e:
    W.load_llada(str(tmp_path), param_dtype="float32")
  msg = str(e.value)
  assert "model.transformer.blocks.1.up_proj.weight" in msg
  assert "model.transformer.blocks.0.extra.weight" in msg
  assert "model.transformer.blocks.0.q_proj.weight: shape (32, 31)" in msg
  with pytest.raises(ValueError, match="no safetensors"):
    W.load_params(str(tmp_path / "nothing"), M.LLaDAConfig.tiny())


def test_bf16_load_sharded_over_mesh(tmp_path):
  from remdm_jax import sharding as mesh_lib
  c = dict(HF)
  t = hf_tensors(np.random.default_rng(3), c)
  import ml_dtypes
  write_dir(str(tmp_path), {k: v.astype(ml_dtypes.bfloat16) for k, v in t.items()}, c, shards=2)
  mesh = mesh_lib.make_mesh((1, 4, 2))
  cfg, gd, params = W.load_llada(str(tmp_path), mesh=mesh)  # param_dtype bf16 default
  q = params["blocks"][0]["q_proj"]["kernel"][...]
  assert q.dtype == jnp.bfloat16 and q.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
  np.testing.assert_array_equal(np.asarray(q, np.float32),
                                t["model.transformer.blocks.0.q_proj.weight"].astype(
                                    ml_dtypes.bfloat16).astype(np.float32).T)
  tokens, mask = _batch()
  got = np.asarray(M.make_logits_fn(gd)(params, jnp.asarray(tokens), jnp.asarray(mask)))
  want = numpy_forward({k: v.astype(ml_dtypes.bfloat16).astype(np.float32) for k, v in t.items()},
                       c, tokens, mask)
  real = mask.astype(bool)
  assert np.abs(got[real] - want[real]).max() < 0.1 * np.abs(want).max()


def test_config_validation():
  with pytest.raises(ValueError, match="n_kv_heads"):
    M.LLaDAConfig.tiny(n_kv_heads=3)
  with pytest.raises(ValueError, match="positions"):
    M.LLaDAConfig.tiny(positions="rel")
  assert M.count_params(M.LLaDAConfig.llada_8b()) == 8_015_581_184
  gd, st = M.init_model(M.LLaDAConfig.tiny(), jax.random.key(0))
  assert np.all(np.asarray(st["ln_f"]["weight"][...]) == 1.0)  # RMSNorm init = ones


def test_hf_config_unsupported_options_and_real_keys(tmp_path):
  real = dict(HF, block_type="llama", layer_norm_type="rms", activation_type="silu",
              weight_tying=False, alibi=False, rope=True, model_type="llada", init_std=0.02)
  cfg = M.LLaDAConfig.from_hf_dict(real)
  assert cfg.d_model == 32 and cfg.rope_theta == 500000.0 and cfg.include_qkv_bias
  with pytest.raises(ValueError, match="weight_tying=True"):
    M.LLaDAConfig.from_hf_dict(dict(real, weight_tying=True))
  with pytest.raises(ValueError, match="config.json not found"):
    M.LLaDAConfig.from_hf_config(str(tmp_path))
