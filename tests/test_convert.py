"""Tests of the official-checkpoint importer (remdm_jax/models/convert.py) against a PyTorch DiT
written from SPEC §6 (tests/torch_reference_dit.py), in the official names and layouts."""
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
sys.path.insert(0, os.path.dirname(__file__))
import torch_reference_dit  # noqa: E402  pylint: disable=g-import-not-at-top

from remdm_jax.models import convert, dit  # noqa: E402
from remdm_jax.models.dit import DiTConfig  # noqa: E402

V, H, N, NB, C, L = 37, 64, 4, 2, 32, 16


def _torch_model(time_conditioning=False, causal=False, seed=0):
  torch.manual_seed(seed)
  model = torch_reference_dit.DiT(V, H, N, NB, C, time_conditioning=time_conditioning,
                                  causal=causal)
  return torch_reference_dit.randomize_(model, seed=seed, scale=0.1)


def _cfg(**kw):
  kw = {"compute_dtype": "float32", **kw}
  return DiTConfig(vocab_size=V, max_seq_len=L, hidden_size=H, num_heads=N, num_blocks=NB,
                   cond_dim=C, **kw)


def _inputs():
  rng = np.random.RandomState(0)
  return rng.randint(0, V, (3, L)), np.array([0.0, 0.5, 3.0])


def _reference_logits(model, tokens, sigma):
  """float64 torch forward of the same weights."""
  with torch.no_grad():
    return model.double()(torch.tensor(tokens), torch.tensor(sigma, dtype=torch.float64)).numpy()


def _our_logits(cfg, params, tokens, sigma):
  graphdef, _ = dit.abstract_params(cfg)
  with jax.default_matmul_precision("highest"):
    out = dit.make_apply_fn(graphdef)(params, jnp.asarray(tokens, jnp.int32),
                                      jnp.asarray(sigma, jnp.float32))
  assert out.dtype == jnp.float32
  return np.asarray(out)


def _state_dict(model):
  """state_dict of float32 numpy arrays under `backbone.` (rotary buffer included)."""
  return {"backbone." + k: v.detach().float().numpy() for k, v in model.state_dict().items()}


def test_official_names_and_order():
  names = convert.official_param_names(12)
  assert len(names) == 130
  model = torch_reference_dit.DiT(50258, 768, 12, 12, 128)
  assert names == [n for n, _ in model.named_parameters()]
  shapes = convert.official_param_shapes(DiTConfig.preset("small"))
  assert {n: tuple(p.shape) for n, p in model.named_parameters()} == shapes
  assert sum(int(np.prod(s)) for s in shapes.values()) == 169_627_218
  assert "rotary_emb.inv_freq" in model.state_dict()


@pytest.mark.parametrize("time_conditioning,causal", [(False, False), (True, False), (False, True)])
def test_converted_logits_match_torch(time_conditioning, causal):
  model = _torch_model(time_conditioning, causal)
  cfg = _cfg(time_conditioning=time_conditioning, causal=causal)
  params = convert.torch_names_to_params(_state_dict(model), cfg)
  for _, v in nnx.to_flat_state(params):
    assert isinstance(v, nnx.Param) and v.dtype == jnp.float32
    assert v.get_metadata()["out_sharding"] is not None
  tokens, sigma = _inputs()
  ref = _reference_logits(model, tokens, sigma)
  assert 1.0 < np.abs(ref).max() < 20.0
  out = _our_logits(cfg, params, tokens, sigma)
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
  if time_conditioning:  # sigma matters, and examples with different sigma differ
    assert np.abs(ref[0] - ref[1]).max() > 1e-3


def _fake_lightning_ckpt(path, ema_model, raw_model, extra=None):
  ckpt = {
    "epoch": 3, "global_step": 1000,
    "state_dict": {"backbone." + k: v for k, v in raw_model.state_dict().items()},
    "ema": {"decay": 0.9999, "num_updates": 1000,
            "shadow_params": [p.detach().clone() for p in ema_model.parameters()]},
  }
  if extra:
    ckpt.update(extra)
  torch.save(ckpt, path)


class HyperParams:  # a non-tensor object pickled in the checkpoint, like omegaconf configs
  def __init__(self, d):
    self.d = d


def test_lightning_ckpt_ema_and_state_dict(tmp_path):
  ema_model, raw_model = _torch_model(seed=1), _torch_model(seed=2)
  path = str(tmp_path / "mdlm.ckpt")
  _fake_lightning_ckpt(path, ema_model, raw_model,
                       extra={"hyper_parameters": {"config": HyperParams({"n_heads": N})}})
  with pytest.raises(Exception):  # plain weights_only loading refuses the pickled object ...
    torch.load(path, weights_only=True)
  # ... which the converter reads as an inert stand-in (never executing the pickled class).
  tokens, sigma = _inputs()
  for use_ema, model in ((True, ema_model), (False, raw_model)):
    cfg, named = convert.load_lightning_ckpt(path, use_ema=use_ema, num_heads=N, max_seq_len=L,
                                             compute_dtype="float32")
    assert cfg == _cfg()
    assert "rotary_emb.inv_freq" not in named and len(named) == len(convert.official_param_names(NB))
    params = convert.torch_names_to_params(named, cfg)
    np.testing.assert_allclose(_our_logits(cfg, params, tokens, sigma),
                               _reference_logits(model, tokens, sigma), rtol=1e-5, atol=1e-5)


def test_lightning_ckpt_wrong_ema_shape_and_length(tmp_path):
  model = _torch_model()
  bad = _torch_model()
  path = str(tmp_path / "bad.ckpt")
  ckpt = {"state_dict": {"backbone." + k: v for k, v in model.state_dict().items()},
          "ema": {"shadow_params": [p.detach().clone() for p in bad.parameters()]}}
  ckpt["ema"]["shadow_params"][6] = torch.zeros(3, 3)  # blocks.0.attn_qkv.weight
  torch.save(ckpt, path)
  with pytest.raises(ValueError, match=r"blocks\.0\.attn_qkv\.weight.*\(192, 64\).*\(3, 3\)"):
    convert.load_lightning_ckpt(path, num_heads=N)
  ckpt["ema"]["shadow_params"] = ckpt["ema"]["shadow_params"][:-1]
  torch.save(ckpt, path)
  with pytest.raises(ValueError, match="shadow_params has 29 tensors, expected 30"):
    convert.load_lightning_ckpt(path, num_heads=N)


def test_hf_safetensors_with_and_without_config(tmp_path):
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  model = _torch_model(time_conditioning=True, seed=3)
  folder = tmp_path / "mdlm-owt"
  folder.mkdir()
  save_file(_state_dict(model), str(folder / "model.safetensors"))
  tokens, sigma = _inputs()
  ref = _reference_logits(model, tokens, sigma)

  # Without config.json: sizes from shapes (heads = hidden / 64 -> 1 here, so pass it).
  cfg, named = convert.load_hf_safetensors(str(folder), num_heads=N)
  assert (cfg.hidden_size, cfg.num_blocks, cfg.cond_dim, cfg.vocab_size) == (H, NB, C, V)
  assert cfg.time_conditioning is False

  (folder / "config.json").write_text(json.dumps({
    "model_type": "mdlm", "hidden_dim": H, "n_heads": N, "n_blocks": NB, "cond_dim": C,
    "vocab_size": V, "model_length": L, "time_conditioning": True, "dropout": 0.1}))
  cfg, named = convert.load_hf_safetensors(str(folder / "model.safetensors"),
                                           compute_dtype="float32")
  assert cfg == _cfg(time_conditioning=True)
  params = convert.torch_names_to_params(named, cfg)
  np.testing.assert_allclose(_our_logits(cfg, params, tokens, sigma), ref, rtol=1e-5, atol=1e-5)

  (folder / "config.json").write_text(json.dumps({"hidden_dim": 2 * H, "n_heads": N}))
  with pytest.raises(ValueError, match="hidden_size=128"):
    convert.load_hf_safetensors(str(folder))


def test_missing_extra_and_misshaped_keys_are_named():
  cfg = _cfg()
  named = _state_dict(_torch_model())
  missing = dict(named)
  del missing["backbone.blocks.1.mlp.2.bias"]
  with pytest.raises(ValueError, match=r"missing keys \['blocks\.1\.mlp\.2\.bias'\]"):
    convert.torch_names_to_params(missing, cfg)
  extra = {**named, "backbone.blocks.0.attn_qkv.bias": np.zeros(3 * H, np.float32)}
  with pytest.raises(ValueError, match=r"unexpected keys \['blocks\.0\.attn_qkv\.bias'\]"):
    convert.torch_names_to_params(extra, cfg)
  bad = {**named, "backbone.output_layer.linear.weight": np.zeros((V, H + 1), np.float32)}
  with pytest.raises(ValueError, match=r"output_layer\.linear\.weight.*\(37, 64\).*\(37, 65\)"):
    convert.torch_names_to_params(bad, cfg)
  # No prefix and no rotary buffer is fine too.
  plain = {k[len("backbone."):]: v for k, v in named.items() if "rotary" not in k}
  convert.torch_names_to_params(plain, cfg)


def test_missing_file_and_cli(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.ckpt"):
    convert.load_lightning_ckpt(str(tmp_path / "nope.ckpt"))
  with pytest.raises(FileNotFoundError, match="nothing_here"):
    convert.main(["--input", str(tmp_path / "nothing_here"), "--output", str(tmp_path / "o")])
  checkpoint = pytest.importorskip("remdm_jax.checkpoint")
  model = _torch_model(seed=4)
  path = str(tmp_path / "mdlm.ckpt")
  _fake_lightning_ckpt(path, model, _torch_model(seed=5))
  out = tmp_path / "converted"
  assert convert.main(["--input", path, "--output", str(out), "--num-heads", str(N),
                       "--max-seq-len", str(L)]) == 0
  assert (out / "model_config.json").exists()
  config = json.loads((out / "model_config.json").read_text())
  assert DiTConfig.from_dict(config) == _cfg(compute_dtype="bfloat16")  # DiTConfig default
  metadata = json.loads((out / "metadata.json").read_text())
  assert metadata["weights"] == "ema" and metadata["source"].endswith("mdlm.ckpt")
  cfg = DiTConfig.from_dict({**config, "compute_dtype": "float32"})
  if hasattr(checkpoint, "load_params"):
    params, _, _ = checkpoint.load_params(str(out))
    tokens, sigma = _inputs()
    got = _our_logits(cfg, params, tokens, sigma)
    np.testing.assert_allclose(got, _reference_logits(model, tokens, sigma), rtol=1e-5, atol=1e-5)
