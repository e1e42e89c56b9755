"""checkpoint.py: params round trip (DiT and plain trees), shardings, atomicity, training manager."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from remdm_jax import checkpoint as ck
from remdm_jax.models import dit
from remdm_jax import sharding as mesh_lib

CFG = dit.DiTConfig.preset("tiny", num_blocks=1, hidden_size=32, num_heads=2, cond_dim=16)


@pytest.fixture(scope="module")
def params():
  return dit.init_params(CFG, jax.random.PRNGKey(0))[1]


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_save_load_params_roundtrip(tmp_path, params):
  out = ck.save_params(tmp_path / "p", params, model_config=CFG.to_dict(),
                       extra_metadata={"step": 7})
  assert sorted(os.listdir(out)) == ["metadata.json", "model_config.json", "params"]
  assert not os.path.exists(str(tmp_path / "p") + ".partial")
  loaded, mc, meta = ck.load_params(out)
  assert mc == CFG.to_dict() and meta["step"] == 7 and meta["format"] == ck.PARAMS_FORMAT
  assert meta["num_params"] == dit.count_params(CFG)
  # same pytree type and structure as init_params: usable by make_apply_fn directly
  assert jax.tree.structure(loaded) == jax.tree.structure(params)
  for a, b in zip(_leaves(loaded), _leaves(params)):
    assert a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
  graphdef, _ = dit.abstract_params(CFG)
  toks = jnp.zeros((1, 8), jnp.int32)
  np.testing.assert_array_equal(dit.make_apply_fn(graphdef)(loaded, toks, jnp.zeros((1,))),
                                dit.make_apply_fn(graphdef)(params, toks, jnp.zeros((1,))))


def test_params_are_stored_float32_and_overwrite_is_atomic(tmp_path):
  tree = {"a": jnp.ones((3, 4), jnp.bfloat16), "b": {"c": jnp.arange(5)}}
  ck.save_params(tmp_path / "q", tree, model_config={"name": "not-a-dit"})
  tree2 = {"a": 2 * jnp.ones((3, 4), jnp.bfloat16), "b": {"c": jnp.arange(5)}}
  ck.save_params(tmp_path / "q", tree2, model_config={"name": "not-a-dit"}, overwrite=True)
  loaded, mc, _ = ck.load_params(tmp_path / "q")
  assert mc == {"name": "not-a-dit"}
  assert loaded["a"].dtype == jnp.float32 and float(loaded["a"][0, 0]) == 2.0
  np.testing.assert_array_equal(loaded["b"]["c"], np.arange(5))
  assert sorted(os.listdir(tmp_path)) == ["q"]  # no temp / old folders left behind


TREE = {"a": jnp.ones((3, 4)), "b": {"c": jnp.arange(5.0)}}


def _snapshot(root):
  out = {}
  for dirpath, _, files in os.walk(root):
    for f in files:
      full = os.path.join(dirpath, f)
      with open(full, "rb") as fh:
        out[os.path.relpath(full, root)] = fh.read()
  return out


def test_save_params_never_replaces_what_it_did_not_write(tmp_path):
  """Issue 19 item 0: an existing file or foreign folder at the output path is refused, even
  with overwrite=True, before anything is written; a model folder needs overwrite=True."""
  readme = tmp_path / "README.md"
  readme.write_text("my notes\n")
  project = tmp_path / "project"
  (project / "src").mkdir(parents=True)
  (project / "src" / "main.py").write_text("print(1)\n")
  (project / "metadata.json").write_text('{"format": "remdm-jax-params"}')
  before = _snapshot(tmp_path)
  for target in (readme, project):
    for overwrite in (False, True):
      with pytest.raises(ValueError, match="never replaced: choose a new path") as e:
        ck.save_params(target, TREE, model_config={"name": "x"}, overwrite=overwrite)
      assert str(target) in str(e.value) and "\n" not in str(e.value)
  assert _snapshot(tmp_path) == before and sorted(os.listdir(tmp_path)) == ["README.md", "project"]
  out = ck.save_params(tmp_path / "m", TREE, model_config={"name": "x"})
  assert ck.is_model_folder(out) and not ck.is_model_folder(project)
  with pytest.raises(ValueError, match="pass overwrite=True to replace it"):
    ck.save_params(out, TREE, model_config={"name": "y"})
  ck.save_params(out, TREE, model_config={"name": "y"}, overwrite=True)
  assert ck.load_params(out)[1] == {"name": "y"}
  # a leftover of an interrupted save is cleaned; a foreign folder at that name is refused
  leftover = tmp_path / ".n.remdm-partial"
  (leftover / "params").mkdir(parents=True)
  ck.save_params(tmp_path / "n", TREE, model_config={"name": "x"})
  assert not leftover.exists()
  (leftover / "mine.txt").parent.mkdir()
  (leftover / "mine.txt").write_text("keep")
  with pytest.raises(ValueError, match="not a leftover"):
    ck.save_params(tmp_path / "n", TREE, model_config={"name": "x"}, overwrite=True)
  assert (leftover / "mine.txt").read_text() == "keep"


def test_export_params_checks_out_dir_before_reading(tmp_path):
  (tmp_path / "notes.txt").write_text("x")
  with pytest.raises(ValueError, match="notes.txt exists and is a file"):
    ck.export_params(tmp_path / "no_workdir_here", tmp_path / "notes.txt", overwrite=True)


def _largest_data_file(folder):
  files = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(folder, "params"))
           for f in fs if os.sep + "d" + os.sep in os.path.join(d, f) + os.sep]
  return max(files, key=os.path.getsize)


def test_corrupted_bytes_are_caught_and_the_file_named(tmp_path, params):
  """Issue 19 item 0: random bytes inside a stored parameter file loaded silently (NaN weights);
  the sha256 recorded at save time now names the file."""
  out = ck.save_params(tmp_path / "p", params, model_config=CFG.to_dict())
  meta = json.loads(open(os.path.join(out, "metadata.json")).read())
  assert set(meta["sha256"]) >= {"model_config.json", "params/manifest.ocdbt"}
  victim = _largest_data_file(out)
  size = os.path.getsize(victim)
  with open(victim, "r+b") as f:
    f.seek(size // 2)
    f.write(np.random.RandomState(0).bytes(64))
  rel = os.path.relpath(victim, out)
  with pytest.raises(ValueError, match=rf"unreadable or truncated params checkpoint \({rel}: "
                                       "its sha256 differs") as e:
    ck.load_params(out)
  assert "\n" not in str(e.value)
  os.remove(victim)
  with pytest.raises(ValueError, match=rf"\({rel}: missing"):
    ck.load_params(out)


def test_corrupted_shipped_digits_model_is_refused(tmp_path):
  """The issue's case: random bytes inside the shipped digits model's largest parameter file gave
  NaN weights and an all-black image with exit 0."""
  import shutil
  from remdm_jax.generation import shipped_model_path
  copy = str(tmp_path / "digits_mdlm")
  shutil.copytree(os.path.join(os.path.dirname(shipped_model_path()), "digits_mdlm"), copy)
  victim = _largest_data_file(copy)
  with open(victim, "r+b") as f:
    f.seek(os.path.getsize(victim) // 3)
    f.write(np.random.RandomState(1).bytes(256))
  with pytest.raises(ValueError, match=os.path.relpath(victim, copy)):
    ck.load_params(copy)


def test_non_finite_parameters_are_refused(tmp_path):
  """A folder without checksums (written before they existed) whose floats decode to NaN."""
  bad = {"a": jnp.ones((3, 4)).at[1, 2].set(jnp.nan), "b": {"c": jnp.arange(5.0)}}
  out = ck.save_params(tmp_path / "nan", bad, model_config={"name": "x"})
  with pytest.raises(ValueError, match=r"parameter 'a' holds non-finite values \(1 NaN or inf\)"):
    ck.load_params(out)
  assert np.isnan(ck.load_params(out, verify=False)[0]["a"][1, 2])


def test_shipped_models_verify():
  from remdm_jax.generation import shipped_model_path
  root = os.path.dirname(shipped_model_path("bible_byte_mdlm"))
  folders = [os.path.join(root, n) for n in sorted(os.listdir(root))
             if os.path.isfile(os.path.join(root, n, "model_config.json"))]
  assert len(folders) >= 7
  for folder in folders:
    meta = json.loads(open(os.path.join(folder, "metadata.json")).read())
    assert ck.verify_checksums(folder, meta), folder
    assert ck.is_model_folder(folder)


def test_load_params_onto_mesh(tmp_path, params):
  ck.save_params(tmp_path / "p", params, model_config=CFG.to_dict())
  mesh = mesh_lib.make_mesh((1, 2, 4))
  loaded, _, _ = ck.load_params(tmp_path / "p", sharding=mesh)
  want = mesh_lib.param_shardings(params, mesh)
  for x, s in zip(jax.tree.leaves(loaded), jax.tree.leaves(want)):
    assert x.sharding == s
  rep = NamedSharding(mesh, P())
  loaded, _, _ = ck.load_params(tmp_path / "p", sharding=rep)
  assert all(x.sharding == rep for x in jax.tree.leaves(loaded))


def test_missing_directory_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope"):
    ck.load_params(tmp_path / "nope")
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="empty"):
    ck.load_params(tmp_path / "empty")


def _state(params, scale):
  return {"step": jnp.asarray(3, jnp.int32), "params": params,
          "ema_params": jax.tree.map(lambda x: scale * x, params),
          "key": jax.random.PRNGKey(1)}


def test_train_checkpointer_roundtrip_export_and_tmp_dirs(tmp_path, params):
  d = tmp_path / "run" / "checkpoints"
  mesh = mesh_lib.make_mesh((2, 2, 2))
  shard = mesh_lib.param_shardings(params, mesh)
  sparams = jax.device_put(params, shard)
  mngr = ck.TrainCheckpointer(str(d), save_every=2, keep=2)
  assert mngr.should_save(4) and not mngr.should_save(3)
  meta = {"model_config": CFG.to_dict()}
  for step in (2, 4, 6):
    mngr.save(step, _state(sparams, float(step)), data_state={"step": step}, meta=meta)
  mngr.wait_until_finished()
  with pytest.raises(RuntimeError, match="step 6"):
    mngr.save(6, _state(sparams, 6.0), meta=meta)
  assert mngr.all_steps() == [4, 6]  # keep=2

  # a half-written step is never taken for a finished one
  (d / "8.orbax-checkpoint-tmp-123").mkdir()
  assert mngr.latest_step() == 6

  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                          _state(sparams, 1.0))
  state, data_state, m = mngr.restore(abstract)
  assert data_state == {"step": 6} and m["step"] == 6
  for x, s in zip(jax.tree.leaves(state["params"]), jax.tree.leaves(shard)):
    assert x.sharding == s
  for a, b in zip(_leaves(state["ema_params"]), _leaves(params)):
    np.testing.assert_array_equal(a, 6.0 * b)
  mngr.close()

  # params API on a training workdir: latest EMA params
  loaded, mc, info = ck.load_params(tmp_path / "run")
  assert mc == CFG.to_dict() and info["step"] == 6
  for a, b in zip(_leaves(loaded), _leaves(params)):
    np.testing.assert_array_equal(a, 6.0 * b)
  out = ck.export_params(tmp_path / "run", tmp_path / "exported")
  with open(os.path.join(out, "metadata.json")) as f:
    assert json.load(f)["step"] == 6
  exported, mc2, _ = ck.load_params(out)
  assert mc2 == mc
  for a, b in zip(_leaves(exported), _leaves(loaded)):
    np.testing.assert_array_equal(a, b)


def test_tree_nested_roundtrip_errors():
  tree = {"a": [jnp.ones(2), jnp.zeros(3)], "b": jnp.ones(())}
  nested = ck.tree_to_nested(tree)
  assert set(nested) == {"a", "b"} and set(nested["a"]) == {"0", "1"}
  back = ck.nested_to_tree(nested, tree)
  assert jax.tree.structure(back) == jax.tree.structure(tree)
  with pytest.raises(ValueError, match="a/1"):
    ck.nested_to_tree({"a": {"0": 1}, "b": 2}, tree)
