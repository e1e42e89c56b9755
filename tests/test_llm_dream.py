"""Dream architecture and loader vs transformers' own Qwen2 code run bidirectionally (Dream =
Qwen2 weights + no causal mask + shifted logits): a tiny random Qwen2ForCausalLM saved with
save_pretrained gives the reference logits offline."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

pytest.importorskip("safetensors")

from remdm_jax.llm.dream import model as DM  # noqa: E402
from remdm_jax.llm.dream import weights as DW  # noqa: E402
from remdm_jax.llm.load import load_lm  # noqa: E402

V, H, I, NL, NH, NKV = 64, 32, 48, 2, 4, 2


@pytest.fixture(scope="module")
def qwen2_dir(tmp_path_factory):
  """A tiny random Qwen2ForCausalLM (GQA, q/k/v biases, untied head, rope_theta 1e6) with every
  parameter randomised, saved in the HF layout, and its bidirectional logits."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  torch.manual_seed(0)
  cfg = transformers.Qwen2Config(
      vocab_size=V, hidden_size=H, intermediate_size=I, num_hidden_layers=NL,
      num_attention_heads=NH, num_key_value_heads=NKV, max_position_embeddings=128,
      rms_norm_eps=1e-6, tie_word_embeddings=False, use_cache=False,
      rope_parameters={"rope_type": "default", "rope_theta": 1e6}, attn_implementation="sdpa")
  model = transformers.Qwen2ForCausalLM(cfg).eval().float()
  with torch.no_grad():
    for name, p in model.named_parameters():
      p.copy_(torch.randn_like(p) * (0.2 if "norm" in name else 0.3) +
              (1.0 if "norm" in name else 0.0))
  d = str(tmp_path_factory.mktemp("qwen2"))
  model.save_pretrained(d, safe_serialization=True)
  rng = np.random.default_rng(0)
  ids = rng.integers(0, V, (2, 9))
  # Left-padded batch: row 0 has 3 pads. Dream's 4-D mask (key & query valid) and tok_idx.
  am = np.ones((2, 9), np.int64)
  am[0, :3] = 0
  tam = torch.tensor(am)
  tok_idx = tam.cumsum(-1) - 1
  tok_idx.masked_fill_(tam == 0, 1)
  m4 = torch.logical_and(tam[:, None, None, :].bool(), tam[:, None, :, None].bool())
  with torch.no_grad():
    full = model(torch.tensor(ids), attention_mask=torch.ones(2, 1, 9, 9, dtype=torch.bool)
                 ).logits.double().numpy()
    causal = model(torch.tensor(ids)).logits.double().numpy()
    padded = model(torch.tensor(ids), attention_mask=m4, position_ids=tok_idx
                   ).logits.double().numpy()
  return dict(dir=d, ids=ids, am=am, full=full, causal=causal, padded=padded)


def _shift(x):
  return np.concatenate([x[:, :1], x[:, :-1]], 1)


@pytest.mark.parametrize("scan", [False, True])
def test_forward_matches_transformers_qwen2_bidirectional(qwen2_dir, scan):
  q = qwen2_dir
  with open(os.path.join(q["dir"], "config.json")) as f:
    hf = json.load(f)
  assert hf["model_type"] == "qwen2"
  lm = load_lm(q["dir"], param_dtype="float32", compute_dtype="float32", scan_layers=scan,
               mask_token_id=V - 1, eos_token_id=V - 2)
  assert lm.arch == "dream" and lm.cfg.rope_theta == 1e6 and lm.cfg.num_key_value_heads == NKV
  ids = jnp.asarray(q["ids"], jnp.int32)
  with jax.default_matmul_precision("highest"):
    raw = np.asarray(DM.make_raw_logits_fn(lm.graphdef)(lm.params, ids, jnp.ones_like(ids)))
    got = np.asarray(lm.logits_fn(lm.params, ids, jnp.ones_like(ids)))
  np.testing.assert_allclose(raw, q["full"], rtol=2e-5, atol=2e-5)
  np.testing.assert_allclose(got, _shift(q["full"]), rtol=2e-5, atol=2e-5)
  assert np.abs(raw - q["causal"]).max() > 1e-2  # the causal Qwen2 call differs
  # Dream's left-padding path: the non-pad logits equal transformers' with Dream's 4-D mask and
  # position ids (cumsum - 1), and the same prompt without pads.
  am = jnp.asarray(q["am"], jnp.int32)
  with jax.default_matmul_precision("highest"):
    padded = np.asarray(DM.make_raw_logits_fn(lm.graphdef)(lm.params, ids, am))
    alone = np.asarray(DM.make_raw_logits_fn(lm.graphdef)(
        lm.params, ids[:1, 3:], jnp.ones((1, 6), jnp.int32)))
  real = q["am"].astype(bool)
  np.testing.assert_allclose(padded[real], q["padded"][real], rtol=2e-5, atol=2e-5)
  np.testing.assert_allclose(padded[0, 3:], alone[0], rtol=2e-5, atol=2e-5)


def test_missing_mask_id_names_key_and_flag(qwen2_dir):
  with pytest.raises(ValueError, match=r"mask_token_id: config.json has no 'mask_token_id'.*"
                     r"pass --mask_id"):
    load_lm(qwen2_dir["dir"])


def test_bad_checkpoint_names_every_key(tmp_path):
  from safetensors.numpy import load_file, save_file
  d = str(tmp_path / "dream")
  from remdm_jax.llm import fixtures as F
  F.write_tiny_dream(d, seed=1)
  p = os.path.join(d, "model.safetensors")
  t = load_file(p)
  del t["model.layers.1.mlp.up_proj.weight"]
  t["model.layers.0.self_attn.o_proj.bias"] = np.zeros(64, np.float32)
  t["model.layers.0.self_attn.q_proj.weight"] = np.zeros((64, 63), np.float32)
  save_file(t, p)
  with pytest.raises(ValueError) as e:
    load_lm(d)
  msg = str(e.value)
  assert "does not match the Dream config" in msg
  assert "model.layers.1.mlp.up_proj.weight" in msg
  assert "model.layers.0.self_attn.o_proj.bias" in msg
  assert "model.layers.0.self_attn.q_proj.weight: shape (64, 63)" in msg


def test_fixture_round_trip_tied_head_and_config():
  cfg = DM.DreamConfig.tiny(tie_word_embeddings=True)
  gd, params = DM.init_model(cfg, jax.random.key(0))
  assert "lm_head" not in dict(params)
  x = jnp.asarray([[1, 2, 3]])
  with jax.default_matmul_precision("highest"):
    out = DM.make_raw_logits_fn(gd)(params, x, jnp.ones_like(x))
    hid = nnx.merge(gd, params).hidden(x)
  emb = np.asarray(params["embed_tokens"]["embedding"][...])
  np.testing.assert_allclose(np.asarray(out), np.asarray(hid) @ emb.T, rtol=1e-5, atol=1e-5)
  assert DM.count_params(DM.DreamConfig.dream_7b()) == 7_615_616_512
  with pytest.raises(ValueError, match="rope_scaling"):
    DM.DreamConfig.from_hf_dict({"rope_scaling": {"type": "yarn"}, "mask_token_id": 1,
                                 "vocab_size": 8, "eos_token_id": 2})
  c = DM.DreamConfig.from_hf_dict({"hidden_size": 32, "intermediate_size": 48,
                                   "num_hidden_layers": 1, "num_attention_heads": 4,
                                   "num_key_value_heads": 2, "vocab_size": 152064,
                                   "rope_parameters": {"rope_type": "default",
                                                       "rope_theta": 5.0}})
  assert c.rope_theta == 5.0 and (c.mask_token_id, c.eos_token_id, c.eot_token_id) == \
      (151666, 151643, 151645)


def test_tiny_dream_folder_ids_from_tokenizer(tmp_path):
  from remdm_jax.llm import fixtures as F
  d = str(tmp_path / "dream")
  F.write_tiny_dream(d)
  with open(os.path.join(d, "config.json")) as f:
    c = json.load(f)
  del c["mask_token_id"]
  with open(os.path.join(d, "config.json"), "w") as f:
    json.dump(c, f)
  lm = load_lm(d)
  assert (lm.mask_id, lm.eos_id, lm.eot_id, lm.pad_id) == (259, 256, 258, 256)
  assert DW.hf_name(("layers", "self_attn", "q_proj", "bias"), 3) == \
      "model.layers.3.self_attn.q_proj.bias"
