"""MaskGIT transformer / VQGAN decoder ports and the official-checkpoint importer.

Random weights are written in the official linen layout and file format (flax msgpack of
{"params": ...}), loaded by our importer, and the forward passes compared with an independent
float64 numpy implementation (and, where the `maskgit` pip package is installed, with the original
linen modules applied to the same tree).
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from images_reference import np_transformer, np_vqgan_decode, random_official_tree

from remdm_jax.images import convert
from remdm_jax.images import maskgit as mg
from remdm_jax.images import vqgan as vq

TCFG = mg.MaskGITConfig.preset("tiny")
VCFG = vq.VQGANConfig.preset("tiny")


# ---------------------------------------------------------------------------------------------
# Fixtures: random official trees written as official files.


@pytest.fixture(scope="module")
def transformer_file(tmp_path_factory):
  arrays = random_official_tree(convert.official_transformer_shapes(TCFG), 0)
  path = str(tmp_path_factory.mktemp("ckpt") / "maskgit_tiny_checkpoint")
  convert.write_flax_checkpoint(arrays, path)
  return path, arrays


@pytest.fixture(scope="module")
def vqgan_file(tmp_path_factory):
  arrays = random_official_tree(convert.official_vqgan_decoder_shapes(VCFG), 1)
  # The published tokenizer file also holds the encoder: it must be skipped, not rejected.
  arrays["encoder/Conv_0/kernel"] = np.zeros((3, 3, 3, 32), np.float32)
  path = str(tmp_path_factory.mktemp("ckpt") / "tokenizer_tiny_checkpoint")
  convert.write_flax_checkpoint(arrays, path)
  return path, arrays


def _ids(batch=3, seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(0, TCFG.codebook_size, (batch, TCFG.seq_len))
  ids[:, 0] = TCFG.codebook_size + rng.integers(0, TCFG.num_classes, batch)
  ids[:, 1::3] = -1  # the reference's mask id
  ids[0, 2] = TCFG.mask_token_id  # the same mask written as V - 1
  return ids.astype(np.int32)


# ---------------------------------------------------------------------------------------------
# Transformer.


def test_transformer_config():
  full = mg.MaskGITConfig.preset("imagenet256")
  assert (full.vocab_size, full.seq_len, full.mask_token_id) == (2025, 257, 2024)
  assert (full.hidden_size, full.num_layers, full.num_heads, full.intermediate_size) == \
      (768, 24, 16, 3072)
  shapes = convert.official_transformer_shapes(full)
  assert shapes["Embed_0/word_embeddings/embedding"] == (2025, 768)
  assert shapes["TransformerLayer_23/Attention_0/self_attention/query/kernel"] == (768, 16, 48)
  assert sum(math.prod(s) for s in shapes.values()) == mg.count_params(full)
  with pytest.raises(ValueError, match="num_heads"):
    mg.MaskGITConfig.preset("tiny", num_heads=5)
  with pytest.raises(ValueError, match="unknown key"):
    mg.MaskGITConfig.from_dict({"bogus": 1})


def test_transformer_matches_numpy_float64(transformer_file):
  path, arrays = transformer_file
  cfg, graphdef, params = convert.load_maskgit_transformer(path, codebook_size=TCFG.codebook_size)
  assert cfg == TCFG
  ids = _ids()
  logits = np.asarray(mg.make_apply_fn(graphdef)(params, jnp.asarray(ids)))
  ref = np_transformer(arrays, ids, TCFG.num_layers, TCFG.vocab_size)
  assert logits.shape == (3, TCFG.seq_len, TCFG.vocab_size) and logits.dtype == np.float32
  np.testing.assert_allclose(logits, ref, rtol=1e-5, atol=1e-5)
  # tokens_to_logits: the reference's slice to the codebook.
  t2l = mg.make_tokens_to_logits(graphdef, cfg)
  np.testing.assert_array_equal(np.asarray(t2l(params, ids)), logits[..., :TCFG.codebook_size])
  # The mask written as -1 and as V - 1 gives the same logits (JAX negative indexing).
  ids2 = np.where(ids < 0, TCFG.mask_token_id, ids)
  np.testing.assert_array_equal(np.asarray(mg.make_apply_fn(graphdef)(params, ids2)), logits)


def test_transformer_matches_original_linen(transformer_file):
  mt = pytest.importorskip("maskgit.nets.maskgit_transformer")
  path, arrays = transformer_file
  _, graphdef, params = convert.load_maskgit_transformer(path, TCFG)
  model = mt.Transformer(vocab_size=TCFG.vocab_size, hidden_size=TCFG.hidden_size,
                         num_hidden_layers=TCFG.num_layers, num_attention_heads=TCFG.num_heads,
                         intermediate_size=TCFG.intermediate_size,
                         max_position_embeddings=TCFG.seq_len)
  variables = {"params": convert.unflatten({k: jnp.asarray(v) for k, v in arrays.items()})}
  ids = _ids(seed=1)
  ref = np.asarray(model.apply(variables, jnp.asarray(ids), deterministic=True))
  ours = np.asarray(mg.make_apply_fn(graphdef)(params, ids))
  np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
  # And our random init has the original's tree (same names and shapes).
  init = model.init(jax.random.PRNGKey(0), jnp.asarray(ids))["params"]
  assert {k: tuple(v.shape) for k, v in convert.flatten(init).items()} == \
      convert.official_transformer_shapes(TCFG)


def test_transformer_importer_names_every_bad_key(transformer_file, tmp_path):
  _, arrays = transformer_file
  bad = dict(arrays)
  del bad["TransformerLayer_1/Mlp_0/layer_output/bias"]
  bad["TransformerLayer_0/Extra_0/kernel"] = np.zeros(3, np.float32)
  bad["MlmLayer_0/mlm_bias/bias"] = np.zeros(7, np.float32)
  path = str(tmp_path / "bad")
  convert.write_flax_checkpoint(bad, path)
  with pytest.raises(ValueError) as e:
    convert.load_maskgit_transformer(path, TCFG)
  msg = str(e.value)
  assert "missing keys ['TransformerLayer_1/Mlp_0/layer_output/bias']" in msg
  assert "unexpected keys ['TransformerLayer_0/Extra_0/kernel']" in msg
  assert f"MlmLayer_0/mlm_bias/bias: expected ({TCFG.vocab_size},), got (7,)" in msg
  # A config that does not fit the file: every shape named.
  with pytest.raises(ValueError, match="Embed_0/word_embeddings/embedding: expected"):
    convert.load_maskgit_transformer(transformer_file[0], mg.MaskGITConfig.preset(
      "tiny", num_classes=5))
  with pytest.raises(FileNotFoundError, match="checkpoint not found"):
    convert.load_maskgit_transformer(str(tmp_path / "nope"))
  (tmp_path / "garbage").write_bytes(b"\x00not msgpack at all")
  with pytest.raises(ValueError, match="garbage"):
    convert.read_flax_checkpoint(str(tmp_path / "garbage"))


def test_reads_flax_training_checkpoint_dir(transformer_file, tmp_path):
  """A `flax.training.checkpoints` directory: the highest checkpoint_<step> is read."""
  path, arrays = transformer_file
  d = tmp_path / "ckpts"
  d.mkdir()
  convert.write_flax_checkpoint({"Embed_0/word_embeddings/embedding": np.zeros((2, 2))},
                                str(d / "checkpoint_5"))
  with open(path, "rb") as src, open(d / "checkpoint_12", "wb") as dst:
    dst.write(src.read())
  got = convert.read_flax_checkpoint(str(d))
  assert set(got) == set(arrays)
  np.testing.assert_array_equal(got["MlmLayer_0/mlm_bias/bias"], arrays["MlmLayer_0/mlm_bias/bias"])
  # The reference's reader (flax.serialization.from_bytes(None, bytes)) sees the same tree.
  from flax import serialization
  with open(path, "rb") as f:
    tree = serialization.from_bytes(None, f.read())
  np.testing.assert_array_equal(tree["params"]["Embed_0"]["word_embeddings"]["embedding"],
                                arrays["Embed_0/word_embeddings/embedding"])


# ---------------------------------------------------------------------------------------------
# VQGAN decoder.


def test_vqgan_config():
  full = vq.VQGANConfig.preset("imagenet256")
  shapes = convert.official_vqgan_decoder_shapes(full)
  assert full.upsample_factor == 16
  assert shapes["quantizer/codebook"] == (1024, 256)
  assert shapes["decoder/Conv_0/kernel"] == (3, 3, 256, 512)
  assert shapes["decoder/ResBlock_4/Conv_2/kernel"] == (1, 1, 256, 256)
  assert shapes["decoder/Conv_5/kernel"] == (3, 3, 128, 3)
  assert "decoder/ResBlock_11/Conv_1/kernel" in shapes and "decoder/ResBlock_12/Conv_0/kernel" \
      not in shapes
  with pytest.raises(ValueError, match="GroupNorm"):
    vq.VQGANConfig.preset("tiny", filters=8)


def test_vqgan_matches_numpy_float64(vqgan_file):
  path, arrays = vqgan_file
  cfg, graphdef, params = convert.load_vqgan_decoder(path)
  assert cfg == VCFG
  ids = np.random.default_rng(0).integers(0, VCFG.codebook_size, (2, 4, 4)).astype(np.int32)
  raw = np.asarray(nnx_apply(graphdef, params, ids))
  ref = np_vqgan_decode(arrays, ids, VCFG)
  assert raw.shape == (2, 8, 8, 3) and raw.dtype == np.float32
  np.testing.assert_allclose(raw, ref, rtol=1e-4, atol=1e-4)
  assert (ref < 0).any() or (ref > 1).any()  # so the clip below is exercised
  img = np.asarray(vq.make_decode_fn(graphdef)(params, ids))
  np.testing.assert_array_equal(img, np.clip(raw, 0, 1))
  u8 = vq.to_uint8(img)
  assert u8.dtype == np.uint8
  np.testing.assert_array_equal(u8, (np.clip(raw, 0, 1) * 255).astype(np.uint8))


def nnx_apply(graphdef, params, ids):
  from flax import nnx
  return nnx.merge(graphdef, params)(ids)


def test_vqgan_matches_original_linen(vqgan_file):
  vt = pytest.importorskip("maskgit.nets.vqgan_tokenizer")
  cc = pytest.importorskip("maskgit.configs.maskgit_class_cond_config")
  path, arrays = vqgan_file
  _, graphdef, params = convert.load_vqgan_decoder(path, VCFG)
  config = cc.get_config()
  config.vqvae.codebook_size = VCFG.codebook_size
  config.vqvae.embedding_dim = VCFG.embedding_dim
  config.vqvae.filters = VCFG.filters
  config.vqvae.num_res_blocks = VCFG.num_res_blocks
  config.vqvae.channel_multipliers = list(VCFG.channel_multipliers)
  model = vt.VQVAE(config=config, train=False)
  tree = {k: jnp.asarray(v) for k, v in arrays.items() if not k.startswith("encoder/")}
  ids = np.random.default_rng(1).integers(0, VCFG.codebook_size, (2, 4, 4)).astype(np.int32)
  ref = np.asarray(model.apply({"params": convert.unflatten(tree)}, jnp.asarray(ids),
                               method=model.decode_from_indices))
  np.testing.assert_allclose(np.asarray(nnx_apply(graphdef, params, ids)), ref, rtol=1e-4,
                             atol=1e-4)


def test_vqgan_importer_errors(vqgan_file, tmp_path):
  _, arrays = vqgan_file
  bad = dict(arrays)
  del bad["decoder/ResBlock_2/Conv_2/kernel"]
  bad["decoder/Conv_1/kernel"] = np.zeros((1, 1, 64, 64), np.float32)
  bad["discriminator/x"] = np.zeros(1, np.float32)
  path = str(tmp_path / "bad")
  convert.write_flax_checkpoint(bad, path)
  with pytest.raises(ValueError) as e:
    convert.load_vqgan_decoder(path, VCFG)
  msg = str(e.value)
  assert "missing keys ['decoder/ResBlock_2/Conv_2/kernel']" in msg
  assert "unexpected keys ['discriminator/x']" in msg
  assert "decoder/Conv_1/kernel: expected (3, 3, 64, 64), got (1, 1, 64, 64)" in msg


def test_full_size_shapes_abstract():
  """The imagenet256 models trace to the published shapes (jax.eval_shape: nothing computed)."""
  from flax import nnx
  tcfg, vcfg = mg.MaskGITConfig.preset("imagenet256"), vq.VQGANConfig.preset("imagenet256")
  graphdef, params = mg.abstract_params(tcfg)
  ids = jax.ShapeDtypeStruct((2, 257), jnp.int32)
  out = jax.eval_shape(mg.make_tokens_to_logits(graphdef, tcfg), params, ids)
  assert (out.shape, out.dtype) == ((2, 257, 1024), jnp.float32)
  vgraph, vparams = vq.abstract_params(vcfg)
  img = jax.eval_shape(vq.make_decode_fn(vgraph), vparams, jax.ShapeDtypeStruct((2, 16, 16),
                                                                               jnp.int32))
  assert (img.shape, img.dtype) == ((2, 256, 256, 3), jnp.float32)
  assert sum(math.prod(v.shape) for _, v in nnx.to_flat_state(params)) == 172_457_193


def test_bfloat16_compute_and_denoise_fn(transformer_file):
  path, _ = transformer_file
  _, graphdef, params = convert.load_maskgit_transformer(path, TCFG)
  ids = _ids(seed=2)
  f32 = np.asarray(mg.make_tokens_to_logits(graphdef, TCFG)(params, ids))
  den = mg.make_denoise_fn(graphdef, TCFG)(params, ids, jnp.full((3,), 0.5))
  np.testing.assert_array_equal(np.asarray(den), f32)  # t is ignored
  bcfg = mg.MaskGITConfig.preset("tiny", compute_dtype="bfloat16")
  _, graphdef16, params16 = convert.load_maskgit_transformer(path, bcfg)
  b16 = np.asarray(mg.make_tokens_to_logits(graphdef16, bcfg)(params16, ids))
  assert b16.dtype == np.float32
  assert np.abs(b16 - f32).max() < 0.05 * np.abs(f32).max() and not np.array_equal(b16, f32)


def test_convert_command_reads_or_fails_in_one_line(transformer_file, vqgan_file, tmp_path,
                                                    capsys):
  """Issue 19 item 7: `python -m remdm_jax.images.convert` with no arguments did nothing and
  exited 0; now it names what is missing (exit 2) and with checkpoints reports what they hold."""
  import json
  assert convert.main([]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err == ["error: name a checkpoint to read: --transformer_ckpt and / or --vqgan_ckpt"]
  assert convert.main(["--transformer_ckpt", transformer_file[0], "--vqgan_ckpt",
                       vqgan_file[0], "--codebook_size", str(TCFG.codebook_size)]) == 0
  rep = json.loads(capsys.readouterr().out)
  assert rep["transformer"]["config"]["codebook_size"] == TCFG.codebook_size
  assert rep["transformer"]["parameters"] > 0 and rep["vqgan_decoder"]["parameters"] > 0
  (tmp_path / "garbage").write_bytes(b"\x00not msgpack at all")
  assert convert.main(["--vqgan_ckpt", str(tmp_path / "garbage")]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "garbage" in err[0]
