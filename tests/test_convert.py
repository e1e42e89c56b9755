"""Tests of the official-checkpoint importer (remdm_jax/models/convert.py) against a PyTorch DiT
written from SPEC §6 (tests/torch_reference_dit.py), in the official names and layouts."""
import json
import os
import subprocess
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
                                             time_conditioning=False, compute_dtype="float32")
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
  kw = dict(num_heads=N, max_seq_len=L, time_conditioning=False)
  with pytest.raises(ValueError, match=r"blocks\.0\.attn_qkv\.weight.*\(192, 64\).*\(3, 3\)"):
    convert.load_lightning_ckpt(path, **kw)
  ckpt["ema"]["shadow_params"] = ckpt["ema"]["shadow_params"][:-1]
  torch.save(ckpt, path)
  with pytest.raises(ValueError, match="shadow_params has 29 tensors, expected 30"):
    convert.load_lightning_ckpt(path, **kw)


def test_hf_safetensors_with_and_without_config(tmp_path):
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  model = _torch_model(time_conditioning=True, seed=3)
  folder = tmp_path / "mdlm-owt"
  folder.mkdir()
  save_file(_state_dict(model), str(folder / "model.safetensors"))
  tokens, sigma = _inputs()
  ref = _reference_logits(model, tokens, sigma)

  # Without config.json: sizes from shapes; heads / length / time conditioning are not in the
  # shapes, so they must be given (never guessed from hidden / 64).
  with pytest.raises(ValueError, match="num_heads.*--num-heads"):
    convert.load_hf_safetensors(str(folder))
  with pytest.raises(ValueError, match="time_conditioning"):
    convert.load_hf_safetensors(str(folder), num_heads=N, max_seq_len=L)
  cfg, named = convert.load_hf_safetensors(str(folder), num_heads=N, max_seq_len=L,
                                           time_conditioning=False)
  assert (cfg.hidden_size, cfg.num_blocks, cfg.cond_dim, cfg.vocab_size) == (H, NB, C, V)
  assert cfg.time_conditioning is False and cfg.num_heads == N

  (folder / "config.json").write_text(json.dumps({
    "model_type": "mdlm", "hidden_dim": H, "n_heads": N, "n_blocks": NB, "cond_dim": C,
    "vocab_size": V, "model_length": L, "time_conditioning": True, "dropout": 0.1}))
  cfg, named = convert.load_hf_safetensors(str(folder / "model.safetensors"),
                                           compute_dtype="float32")
  assert cfg == _cfg(time_conditioning=True)
  params = convert.torch_names_to_params(named, cfg)
  np.testing.assert_allclose(_our_logits(cfg, params, tokens, sigma), ref, rtol=1e-5, atol=1e-5)

  with pytest.raises(ValueError, match="--num-heads=2 disagrees with .*config.json n_heads=4"):
    convert.load_hf_safetensors(str(folder), num_heads=2)
  (folder / "config.json").write_text(json.dumps({"hidden_dim": 2 * H, "n_heads": N}))
  with pytest.raises(ValueError, match="hidden_dim=128 disagrees with the weights"):
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
  assert convert.main(["--input", str(tmp_path / "nothing_here"),
                       "--output", str(tmp_path / "o")]) == 2
  checkpoint = pytest.importorskip("remdm_jax.checkpoint")
  model = _torch_model(seed=4)
  path = str(tmp_path / "mdlm.ckpt")
  _fake_lightning_ckpt(path, model, _torch_model(seed=5))
  out = tmp_path / "converted"
  assert convert.main(["--input", path, "--output", str(out), "--num-heads", str(N),
                       "--max-seq-len", str(L), "--no-time-conditioning"]) == 0
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


# ---------------------------------------------------------------------------------------------
# The checkpoint's own config (Lightning hyper_parameters): plain dict or pickled omegaconf.

def _mdlm_config(heads=N, time_conditioning=False, backbone="dit", drop=None):
  """The parts of the official MDLM Hydra config (configs/config.yaml + configs/model/small.yaml)
  that describe the network, at our tiny sizes."""
  model = {"name": "tiny", "type": "ddit", "hidden_size": H, "cond_dim": C, "length": L,
           "n_blocks": NB, "n_heads": heads, "scale_by_sigma": True, "dropout": 0.1,
           "tie_word_embeddings": False}
  config = {"mode": "train", "diffusion": "absorbing_state", "backbone": backbone,
            "parameterization": "ar" if backbone == "ar" else "subs",
            "time_conditioning": time_conditioning, "T": 0, "model": model,
            "loader": {"global_batch_size": 512,
                       "batch_size": "${div_up:${.global_batch_size}, 8}"}}
  for key in drop or ():
    node = config
    *parents, last = key.split(".")
    for p in parents:
      node = node[p]
    del node[last]
  return config


_FAKE_OMEGACONF = {  # the pickled state layout of omegaconf 2.x DictConfig / AnyNode
  "__init__.py": "from .dictconfig import DictConfig\nfrom .nodes import AnyNode\n",
  "base.py": '''
import dataclasses, typing
@dataclasses.dataclass
class Metadata:
  ref_type: typing.Any
  object_type: typing.Any
  optional: bool
  key: typing.Any
  flags: typing.Optional[dict] = None
@dataclasses.dataclass
class ContainerMetadata(Metadata):
  key_type: typing.Any = None
  element_type: typing.Any = None
''',
  "nodes.py": '''
import typing
from .base import Metadata
class AnyNode:
  def __init__(self, value, key, parent):
    self.__dict__.update(_val=value, _parent=parent, _flags_cache=None,
                         _metadata=Metadata(typing.Any, None, True, key, {}))
  def __getstate__(self):
    d = dict(self.__dict__); d.pop("_flags_cache"); return d
''',
  "dictconfig.py": '''
import typing
from .base import ContainerMetadata
from .nodes import AnyNode
class DictConfig:
  def __init__(self, content, key=None, parent=None):
    self.__dict__.update(_parent=parent, _flags_cache=None, _metadata=ContainerMetadata(
        typing.Any, dict, True, key, {}, typing.Any, typing.Any))
    self.__dict__["_content"] = {
        k: DictConfig(v, k, self) if isinstance(v, dict) else AnyNode(v, k, self)
        for k, v in content.items()}
  def __getstate__(self):
    d = dict(self.__dict__); d.pop("_flags_cache"); return d
''',
}


def _omegaconf_like(tmp_path, config):
  """A DictConfig pickled with omegaconf's state layout (omegaconf itself is not installed)."""
  pkg = tmp_path / "fake_site" / "omegaconf"
  pkg.mkdir(parents=True, exist_ok=True)
  for name, text in _FAKE_OMEGACONF.items():
    (pkg / name).write_text(text)
  sys.path.insert(0, str(pkg.parent))
  try:
    import omegaconf  # noqa: F401  pylint: disable=g-import-not-at-top
    return omegaconf.DictConfig(config)
  finally:
    sys.path.remove(str(pkg.parent))


@pytest.fixture
def no_omegaconf():
  """The fake omegaconf package must not be importable when the checkpoint is read."""
  yield
  for name in [m for m in sys.modules if m == "omegaconf" or m.startswith("omegaconf.")]:
    del sys.modules[name]


@pytest.mark.parametrize("form", ["dict", "omegaconf"])
def test_lightning_hyper_parameters_give_heads_and_time_conditioning(tmp_path, form,
                                                                     no_omegaconf):
  """A 4-head, time-conditioned model (hidden 64: the old hidden/64 guess says 1 head and no time
  conditioning) converts to logits equal to the torch reference with no flags at all."""
  assert H // 64 != N
  ema_model, raw_model = (_torch_model(time_conditioning=True, seed=s) for s in (6, 7))
  config = _mdlm_config(heads=N, time_conditioning=True)
  if form == "omegaconf":
    config = _omegaconf_like(tmp_path, config)
  path = str(tmp_path / "mdlm.ckpt")
  _fake_lightning_ckpt(path, ema_model, raw_model, extra={"hyper_parameters": {
      "config": config, "tokenizer": HyperParams({"name_or_path": "gpt2"})}})
  for m in [m for m in sys.modules if m.startswith("omegaconf")]:
    del sys.modules[m]
  cfg, named = convert.load_lightning_ckpt(path, compute_dtype="float32")
  assert cfg == _cfg(time_conditioning=True)
  assert cfg.num_heads == N and cfg.max_seq_len == L and cfg.time_conditioning
  assert "omegaconf" not in sys.modules, "the pickled class must never be imported"
  tokens, sigma = _inputs()
  ref = _reference_logits(ema_model, tokens, sigma)
  np.testing.assert_allclose(_our_logits(cfg, convert.torch_names_to_params(named, cfg), tokens,
                                         sigma), ref, rtol=1e-5, atol=1e-5)


def test_lightning_ar_backbone_is_causal(tmp_path):
  model = _torch_model(causal=True, seed=8)
  path = str(tmp_path / "ar.ckpt")
  _fake_lightning_ckpt(path, model, model, extra={"hyper_parameters": {
      "config": _mdlm_config(backbone="ar")}})
  cfg, params = convert.load_official(path, compute_dtype="float32")
  assert cfg.causal and cfg == _cfg(causal=True)
  tokens, sigma = _inputs()
  np.testing.assert_allclose(_our_logits(cfg, params, tokens, sigma),
                             _reference_logits(model, tokens, sigma), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("config,kwargs,needle", [
    (_mdlm_config(drop=["model.n_heads"]), {}, r"model\.n_heads .*--num-heads"),
    (_mdlm_config(drop=["time_conditioning"]), {}, r"config\.time_conditioning .*--time-cond"),
    (_mdlm_config(drop=["model.length"]), {}, r"model\.length .*--max-seq-len"),
    (None, {}, r"model\.n_heads"),  # no hyper_parameters at all
    (_mdlm_config(), {"num_heads": 2}, r"--num-heads=2 disagrees with .*model\.n_heads=4"),
    (_mdlm_config(), {"time_conditioning": True}, r"time_conditioning=False"),
    (_mdlm_config(heads=3), {}, r"not divisible by num_heads=3"),
    (_mdlm_config(backbone="dimamba"), {}, r"backbone='dimamba'"),
    ({**_mdlm_config(), "parameterization": "sedd"}, {}, r"parameterization='sedd'"),
    ({**_mdlm_config(), "model": {**_mdlm_config()["model"], "hidden_size": 96}}, {},
     r"model\.hidden_size=96 disagrees with the weights \(hidden_size=64\)"),
    ({**_mdlm_config(), "model": {**_mdlm_config()["model"], "n_heads": "${oc.env:H}"}}, {},
     r"model\.n_heads \(unresolved '\$\{oc\.env:H\}'\) .*--num-heads"),
])
def test_lightning_config_missing_or_contradicting_fields_are_named(tmp_path, config, kwargs,
                                                                    needle):
  model = _torch_model(seed=9)
  path = str(tmp_path / "m.ckpt")
  _fake_lightning_ckpt(path, model, model,
                       extra={"hyper_parameters": {"config": config}} if config else None)
  with pytest.raises(ValueError, match=needle):
    convert.load_lightning_ckpt(path, **kwargs)
  if config is not None and "n_heads" in needle and "disagrees" not in needle:
    cfg, _ = convert.load_lightning_ckpt(path, num_heads=N)  # the missing field, given
    assert cfg.num_heads == N


def _cli(args, cwd):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
  return subprocess.run([sys.executable, "-m", "remdm_jax.models.convert", *args], cwd=cwd,
                        env=env, capture_output=True, text=True, timeout=300)


def test_cli_bad_input_is_one_line_exit_2(tmp_path):
  garbage = tmp_path / "garbage.ckpt"
  garbage.write_bytes(b"\x00not a checkpoint at all" * 10)
  bad_st = tmp_path / "bad.safetensors"
  bad_st.write_bytes(b"\xff" * 64)
  ours = tmp_path / "ours"
  ours.mkdir()
  (ours / "model_config.json").write_text("{}")
  (ours / "params").mkdir()
  cases = [(str(tmp_path / "missing.ckpt"), "checkpoint not found"),
           (str(garbage), "garbage.ckpt: not a readable PyTorch checkpoint"),
           (str(bad_st), "bad.safetensors: not a readable safetensors file"),
           (str(ours), "is a remdm-jax checkpoint already"),
           (str(tmp_path), "no model.safetensors")]
  for src, needle in cases:
    r = _cli(["--input", src, "--output", str(tmp_path / "out")], tmp_path)
    assert r.returncode == 2, (src, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("convert: error: ") and needle in lines[0], (
        src, r.stderr)
    assert not (tmp_path / "out").exists()


def test_cli_output_never_replaces_a_users_files(tmp_path, capsys):
  """Issue 19 item 0: --output of an existing file or foreign folder was deleted (save_params
  replaced whatever was there). Refused before any work, even with --overwrite; a converted
  model folder is replaced only with --overwrite."""
  model = _torch_model(seed=4)
  path = str(tmp_path / "mdlm.ckpt")
  _fake_lightning_ckpt(path, model, _torch_model(seed=5))
  flags = ["--input", path, "--num-heads", str(N), "--max-seq-len", str(L),
           "--no-time-conditioning"]
  readme = tmp_path / "README.md"
  readme.write_text("keep me\n")
  folder = tmp_path / "work"
  folder.mkdir()
  (folder / "notes.txt").write_text("keep me too\n")
  for out in (readme, folder):
    for extra in ([], ["--overwrite"]):
      capsys.readouterr()
      assert convert.main(flags + ["--output", str(out)] + extra) == 2
      err = capsys.readouterr().err.strip().splitlines()
      assert len(err) == 1 and "never replaced" in err[0] and str(out) in err[0], err
  assert readme.read_text() == "keep me\n" and (folder / "notes.txt").read_text() == "keep me too\n"
  assert sorted(os.listdir(tmp_path)) == ["README.md", "mdlm.ckpt", "work"]
  out = tmp_path / "converted"
  assert convert.main(flags + ["--output", str(out)]) == 0
  capsys.readouterr()
  assert convert.main(flags + ["--output", str(out)]) == 2
  assert "pass --overwrite" in capsys.readouterr().err
  assert convert.main(flags + ["--output", str(out), "--overwrite"]) == 0
