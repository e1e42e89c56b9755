"""Config conversion and bad input: one clear error line naming the field (also through train.py)."""
import os
import subprocess
import sys

import jax
import pytest

from remdm_jax import config_utils
from remdm_jax import sharding as mesh_lib
from remdm_jax.training import trainer as T

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from configs import bible_byte, owt_small, tiny  # noqa: E402


def _one_line(e):
  msg = str(e.value)
  assert "\n" not in msg, msg
  return msg


def test_configs_convert():
  cfg = config_utils.experiment_from_config(tiny.get_config())
  assert cfg.model.vocab_size == 257 and cfg.loss.mask_id == 256 and cfg.data.seq_len == 32
  assert cfg.model.hidden_size == 64 and cfg.model.num_blocks == 2
  ar = config_utils.experiment_from_config(bible_byte.get_config("ar"))
  assert ar.loss.objective == "ar" and ar.model.causal
  rm = config_utils.experiment_from_config(bible_byte.get_config("remdm"))
  assert rm.loss.num_train_steps_T == 1024 and rm.loss.sigma == "cap"
  c = owt_small.get_config()
  c.data.path = "/data/owt"
  owt = config_utils.experiment_from_config(c)
  assert (owt.model.hidden_size, owt.model.num_blocks, owt.model.vocab_size) == (768, 12, 50258)
  assert (owt.optim.lr, owt.optim.warmup_steps, owt.optim.schedule) == (3e-4, 2500, "constant")
  assert (owt.optim.ema_decay, owt.optim.grad_clip, owt.model.dropout) == (0.9999, 1.0, 0.1)
  assert (owt.data.batch_size, owt.data.seq_len, owt.train.num_steps) == (512, 1024, 10**6)
  assert owt.train.eval_every == 10_000 and owt.loss.mask_id == 50257
  assert (owt.optim.b1, owt.optim.b2, owt.optim.eps, owt.optim.weight_decay) == (
      0.9, 0.999, 1e-8, 0.0)
  with pytest.raises(ValueError, match="unknown preset"):
    tiny.get_config("nope")


def test_unknown_field_and_section():
  c = tiny.get_config()
  c.optim.lrr = 1.0
  with pytest.raises(ValueError) as e:
    config_utils.experiment_from_config(c)
  msg = _one_line(e)
  assert "optim.lrr" in msg and "lr" in msg and "warmup_steps" in msg
  c = tiny.get_config()
  c.optimizer = {"lr": 1.0}
  with pytest.raises(ValueError, match="unknown config section 'optimizer'"):
    config_utils.experiment_from_config(c)


def test_type_and_range_errors_name_the_field():
  c = tiny.get_config().to_dict()
  c["train"]["num_steps"] = "ten"
  with pytest.raises(ValueError) as e:
    config_utils.experiment_from_config(c)
  assert "train.num_steps" in _one_line(e)
  c = tiny.get_config().to_dict()
  c["optim"]["lr"] = -1.0
  with pytest.raises(ValueError) as e:
    config_utils.experiment_from_config(c)
  assert "optim.lr" in _one_line(e)
  c = tiny.get_config().to_dict()
  c["model"]["dropout"] = 1.5
  with pytest.raises(ValueError) as e:
    config_utils.experiment_from_config(c)
  assert "dropout" in _one_line(e)
  c = tiny.get_config().to_dict()
  c["loss"]["objective"] = "ar"  # AR objective with a bidirectional model
  with pytest.raises(ValueError, match="model.causal"):
    config_utils.experiment_from_config(c)


def test_vocab_mismatch():
  c = tiny.get_config()
  c.model.vocab_size = 100
  with pytest.raises(ValueError) as e:
    config_utils.experiment_from_config(c)
  assert "vocab mismatch" in _one_line(e) and "100" in str(e.value)


def test_mesh_shape_mismatch():
  assert mesh_lib.resolve_mesh_shape((-1, 2, 1), 8) == (4, 2, 1)
  assert mesh_lib.resolve_mesh_shape({"tensor": 2, "data": -1}, 8) == (4, 1, 2)
  with pytest.raises(ValueError) as e:
    mesh_lib.make_mesh((3, 1, 1))
  assert "(3, 1, 1)" in _one_line(e) and str(len(jax.devices())) in str(e.value)
  with pytest.raises(ValueError, match="not divisible"):
    mesh_lib.make_mesh((-1, 3, 1))
  with pytest.raises(ValueError, match="unknown axis"):
    mesh_lib.make_mesh({"model": 2})
  m = mesh_lib.make_mesh((2, 2, 2))
  assert m.axis_names == ("data", "fsdp", "tensor")
  assert all(t == jax.sharding.AxisType.Auto for t in m.axis_types)


def test_logical_to_spec_rules():
  m = mesh_lib.make_mesh((2, 2, 2))
  assert mesh_lib.logical_to_spec(("embed", "mlp"), (64, 256), m) == jax.sharding.PartitionSpec(
      "fsdp", "tensor")
  # 257 is not divisible by tensor=2: that dim is replicated
  assert mesh_lib.logical_to_spec(("vocab", "embed"), (257, 64), m) == \
      jax.sharding.PartitionSpec(None, "fsdp")
  # an axis shards at most one dim
  rules = (("a", "tensor"), ("b", "tensor"))
  assert mesh_lib.logical_to_spec(("a", "b"), (4, 4), m, rules) == \
      jax.sharding.PartitionSpec("tensor")


def test_batch_not_divisible_by_mesh(tmp_path):
  c = tiny.get_config()
  c.data.batch_size = 6
  c.mesh.shape = (4, 2, 1)
  with pytest.raises(ValueError, match="batch_size=6 is not divisible"):
    T.train(c, str(tmp_path), log=lambda _: None)


def test_missing_corpus(tmp_path):
  c = tiny.get_config()
  c.data.source = "text"
  c.data.path = str(tmp_path / "missing.txt")
  with pytest.raises((ValueError, FileNotFoundError), match="missing.txt"):
    T.train(c, str(tmp_path / "w"), log=lambda _: None)


@pytest.mark.parametrize("args,expect", [
    (["--config.optim.lrr=3"], "optim.lrr"),
    (["--config.mesh.shape=(3,1,1)"], "mesh.shape=(3, 1, 1)"),
    (["--config.data.source=text", "--config.data.path=/nonexistent/corpus.txt"],
     "/nonexistent/corpus.txt"),
])
def test_train_py_bad_input_is_one_line(tmp_path, args, expect):
  cmd = [sys.executable, os.path.join(ROOT, "train.py"),
         f"--config={os.path.join(ROOT, 'configs', 'tiny.py')}", f"--workdir={tmp_path}"] + args
  r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)
  assert r.returncode == 2, r.stderr[-2000:]
  assert "Traceback" not in r.stderr
  err = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
  assert len(err) == 1 and expect in err[0], r.stderr[-2000:]


def test_config_module_has_one_home_and_no_cycle():
  """Config dataclasses live in training.config (re-exported by the trainer); importing
  config_utils or checkpoint pulls in no trainer code; checkpoint uses only public sharding names."""
  from remdm_jax.training import config as C
  assert T.OptimConfig is C.OptimConfig and T.ExperimentConfig is C.ExperimentConfig
  assert config_utils.TrainConfig is C.TrainConfig
  code = ("import sys, remdm_jax.config_utils, remdm_jax.checkpoint\n"
          "print('remdm_jax.training.trainer' in sys.modules)")
  r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                     timeout=120, env=dict(os.environ, PYTHONPATH=ROOT))
  assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr[-2000:]
  with open(os.path.join(ROOT, "remdm_jax", "checkpoint.py")) as f:
    src = f.read()
  assert "import _" not in src and "sharding import param_shardings, path_str" in src


def test_shared_checks_name_the_fields():
  with pytest.raises(ValueError, match=r"^loss.objective='ar' needs model.causal=True"):
    config_utils.check_objective_model("ar", False)
  with pytest.raises(ValueError, match=r"model.vocab_size=100 < vocab_size 257 of tokenizer"):
    config_utils.check_vocab(100, 257, "byte")
  with pytest.raises(ValueError, match=r"loss.mask_id=300 must lie in \[0, model.vocab_size=257\)"):
    config_utils.check_mask_id(300, 257)
  with pytest.raises(ValueError, match=r"mask_id=-1"):
    config_utils.check_mask_id(-1, 257)
  with pytest.raises(ValueError, match=r"data.seq_len=64 exceeds model.max_seq_len=32"):
    config_utils.check_seq_len(64, 32)
  with pytest.raises(ValueError, match=r"data token id 256 reaches the mask id 256"):
    config_utils.check_data_ids(256, 257, 256)
  config_utils.check_data_ids(255, 257, 256)
  c = tiny.get_config()
  c.data.seq_len = 64
  with pytest.raises(ValueError, match=r"data.seq_len=64 exceeds model.max_seq_len=32"):
    config_utils.experiment_from_config(c)


def test_resume_mismatch_lists_every_differing_field():
  a = config_utils.experiment_from_config(tiny.get_config()).to_dict()
  b = config_utils.experiment_from_config(tiny.get_config("ar")).to_dict()
  diffs = config_utils.resume_mismatch(b, a)
  assert [d.split(":")[0] for d in diffs] == ["model.causal", "loss.objective", "loss.mask_id"]
  assert config_utils.resume_mismatch(a, a) == []
  c = tiny.get_config()
  c.model.dropout = 0.3
  c.model.remat = True
  assert config_utils.resume_mismatch(config_utils.experiment_from_config(c).to_dict(), a) == []


def test_new_train_and_model_fields_convert():
  c = tiny.get_config()
  c.train.grad_accum_steps = 2
  c.train.prefetch = 0
  c.model.remat = True
  c.model.scan_blocks = True
  cfg = config_utils.experiment_from_config(c)
  assert (cfg.train.grad_accum_steps, cfg.train.prefetch) == (2, 0)
  assert cfg.model.remat and cfg.model.scan_blocks
  c.train.prefetch = -1
  with pytest.raises(ValueError, match=r"train.prefetch=-1"):
    config_utils.experiment_from_config(c)
