"""Trainer: sharded == single-device step, partition specs, EMA / lr schedule, resume, NaN stop."""
import json
import math
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from remdm_jax import checkpoint as ckpt_lib
from remdm_jax import config_utils
from remdm_jax import sharding as mesh_lib
from remdm_jax.training import trainer as T
from remdm_jax.training.metrics import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from configs import tiny  # noqa: E402

LISTING = os.path.join(ROOT, "tests", "data", "partition_specs_tiny.txt")


@pytest.fixture(scope="module", autouse=True)
def compile_cache(tmp_path_factory):
  """Persistent compilation cache: the same tiny programs are compiled by several tests."""
  from jax._src import compilation_cache as cc
  d = str(tmp_path_factory.getbasetemp() / "jax_cache")
  old = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
  jax.config.update("jax_compilation_cache_dir", d)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  cc.reset_cache()
  yield d
  jax.config.update("jax_compilation_cache_dir", old[0])
  jax.config.update("jax_persistent_cache_min_compile_time_secs", old[1])
  cc.reset_cache()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  """A small local text corpus (Python's own docs, stdlib) for the `text` source."""
  from pydoc_data.topics import topics
  path = tmp_path_factory.mktemp("corpus") / "docs.txt"
  path.write_text("\n".join(topics[k] for k in sorted(topics))[:60_000])
  return str(path)


def tiny_cfg(**overrides):
  """configs/tiny.py as an ExperimentConfig, with 'section.field' overrides."""
  c = tiny.get_config()
  for k, v in overrides.items():
    sec, field = k.split(".")
    c[sec][field] = v
  return config_utils.experiment_from_config(c)


def _one_device_mesh():
  return mesh_lib.make_mesh((1, 1, 1), devices=jax.devices()[:1])


def _tokens(seed, b=8, l=32):
  return np.random.default_rng(seed).integers(0, 256, (b, l), dtype=np.int32)


def test_listing_matches_checked_in_file():
  cfg = tiny_cfg()
  from remdm_jax.models import dit
  _, abstract = dit.abstract_params(cfg.model)
  listing = mesh_lib.partition_spec_listing(abstract, mesh_lib.make_mesh((2, 2, 2)),
                                            cfg.mesh.rules)
  with open(LISTING) as f:
    assert listing == f.read()


def test_sharded_step_equals_single_device_step():
  cfg = tiny_cfg(**{"model.compute_dtype": "float32", "optim.warmup_steps": 0})
  mesh8 = mesh_lib.make_mesh((2, 2, 2))
  tr8, tr1 = T.Trainer(cfg, mesh8), T.Trainer(cfg, _one_device_mesh())
  s8, s1 = tr8.init_state(), tr1.init_state()
  p0 = jax.device_get(s1.params)
  chex.assert_trees_all_close(jax.device_get(s8.params), p0, atol=0, rtol=0)

  # every state leaf lives on all 8 devices with the intended sharding (optax's count included)
  for leaf, sh in zip(jax.tree.leaves(s8), jax.tree.leaves(tr8.state_shardings)):
    assert leaf.sharding == sh, (leaf.sharding, sh)
    assert len(leaf.sharding.device_set) == 8
  counts = [x for x in jax.tree.leaves(s8.opt_state) if x.ndim == 0]
  assert counts and all(c.sharding.is_fully_replicated for c in counts)
  specs = [leaf.sharding.spec for leaf in jax.tree.leaves(s8.params)]
  assert jax.sharding.PartitionSpec("fsdp", "tensor") in specs  # really sharded

  losses8, losses1 = [], []
  for i in range(2):
    batch = _tokens(i)
    s8, m8 = tr8.train_step(s8, tr8.put_batch(batch))
    s1, m1 = tr1.train_step(s1, tr1.put_batch(batch))
    losses8.append(float(m8["loss"]))
    losses1.append(float(m1["loss"]))
    assert math.isfinite(float(m1["grad_norm"])) and float(m1["grad_norm"]) > 0
  np.testing.assert_allclose(losses8, losses1, rtol=2e-5)
  chex.assert_trees_all_close(jax.device_get(s8.params), jax.device_get(s1.params), atol=2e-5)
  chex.assert_trees_all_close(jax.device_get(s8.ema_params), jax.device_get(s1.ema_params),
                              atol=2e-5)
  assert int(s8.step) == 2


def test_ema_and_lr_schedule_hand_values():
  np.testing.assert_allclose(float(T.ema_decay(1, 0.9999)), 2 / 11, rtol=1e-6)
  np.testing.assert_allclose(float(T.ema_decay(3, 0.9999)), 4 / 13, rtol=1e-6)
  np.testing.assert_allclose(float(T.ema_decay(10**6, 0.9999)), 0.9999, rtol=1e-7)
  np.testing.assert_allclose(float(T.ema_decay(100, 0.5)), 0.5)
  lr = T.make_lr_schedule(T.OptimConfig(lr=1e-3, warmup_steps=4), 100)
  np.testing.assert_allclose([float(lr(n)) for n in (0, 1, 2, 4, 5, 1000)],
                             [0.0, 2.5e-4, 5e-4, 1e-3, 1e-3, 1e-3], rtol=1e-6)
  cos = T.make_lr_schedule(T.OptimConfig(lr=1e-3, warmup_steps=10, schedule="cosine",
                                         min_lr=1e-4), 110)
  np.testing.assert_allclose([float(cos(n)) for n in (5, 10, 60, 110)],
                             [5e-4, 1e-3, 5.5e-4, 1e-4], rtol=1e-5)


def test_ema_update_in_train_step():
  """After the first update, ema = d p0 + (1 - d) p1 with d = 2/11; the first lr is 0."""
  cfg = tiny_cfg(**{"optim.warmup_steps": 0, "optim.ema_decay": 0.9999})
  tr = T.Trainer(cfg, _one_device_mesh())
  s = tr.init_state()
  p0 = jax.device_get(s.params)
  s, m = tr.train_step(s, tr.put_batch(_tokens(0)))
  p1 = jax.device_get(s.params)
  want = jax.tree.map(lambda a, b: (2 / 11) * a + (9 / 11) * b, p0, p1)
  chex.assert_trees_all_close(jax.device_get(s.ema_params), want, rtol=1e-6, atol=1e-7)
  assert float(m["lr"]) == pytest.approx(1e-3)
  assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(p0), jax.tree.leaves(p1)))


def _run(cfg, workdir, **kw):
  return T.train(cfg, str(workdir), log=lambda _: None, **kw)


def test_resume_reproduces_losses_exactly(tmp_path, corpus):
  over = {"data.source": "text", "data.path": corpus, "data.doc_per_line": True, "train.num_steps": 6, "train.log_every": 1,
          "train.eval_every": 0, "checkpoint.save_every": 3, "model.dropout": 0.1}
  _run(tiny_cfg(**over), tmp_path / "straight")
  _run(tiny_cfg(**dict(over, **{"train.num_steps": 3})), tmp_path / "resumed")
  out = _run(tiny_cfg(**over), tmp_path / "resumed")  # restarts from step 3
  assert out["step"] == 6
  a = [(r["step"], r["loss"]) for r in read_metrics(str(tmp_path / "straight"), "train")]
  b = [(r["step"], r["loss"]) for r in read_metrics(str(tmp_path / "resumed"), "train")]
  assert [s for s, _ in a] == list(range(1, 7))
  assert a == b  # bitwise equal losses, each step exactly once
  pa, _, _ = ckpt_lib.load_params(str(tmp_path / "straight"))
  pb, mc, meta = ckpt_lib.load_params(str(tmp_path / "resumed"))
  assert meta["step"] == 6 and mc["hidden_size"] == 64
  for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, corpus):
  cfg = tiny_cfg(**{"data.source": "text", "data.path": corpus, "data.doc_per_line": True, "train.num_steps": 8,
                    "train.log_every": 4, "train.eval_every": 0, "checkpoint.save_every": 2})

  def poison(step_fn):
    def wrapped(state, batch):
      if int(state.step) == 4:  # corrupt the parameters: the genuine loss of step 5 is NaN
        state = state.replace(params=jax.tree.map(lambda x: x * jnp.nan, state.params))
      return step_fn(state, batch)
    return wrapped

  with pytest.raises(FloatingPointError, match=r"at step 5\b.*last good checkpoint: step 4"):
    _run(cfg, tmp_path, step_wrapper=poison)
  ck = ckpt_lib.TrainCheckpointer(os.path.join(tmp_path, "checkpoints"))
  assert ck.all_steps() == [2, 4]
  ck.close()
  params, _, meta = ckpt_lib.load_params(str(tmp_path))
  assert meta["step"] == 4
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))


def test_train_py_end_to_end(tmp_path, corpus, compile_cache):
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=compile_cache,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  cmd = [sys.executable, os.path.join(ROOT, "train.py"),
         f"--config={os.path.join(ROOT, 'configs', 'tiny.py')}", f"--workdir={tmp_path}",
         "--config.data.source=text", f"--config.data.path={corpus}",
         "--config.data.doc_per_line=True",
         "--config.train.num_steps=4", "--config.checkpoint.save_every=2"]
  r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "step 4/4" in r.stdout
  recs = read_metrics(str(tmp_path))
  assert {rec["split"] for rec in recs} == {"train", "validation"}
  assert all(math.isfinite(rec["loss"]) for rec in recs)
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4"]
  with open(tmp_path / "config.json") as f:
    assert json.load(f)["train"]["num_steps"] == 4


# ------------------------------------------------------------------------------------------------
# Scale controls: gradient accumulation, remat, scan over blocks, optimizer-state shardings,
# prefetching, replication warning (issue 8, items 7 and 10).
# ------------------------------------------------------------------------------------------------

def _flat(tree):
  return [np.asarray(x, np.float64) for x in jax.tree.leaves(jax.device_get(tree))]


_BASE = {"model.compute_dtype": "float32", "optim.warmup_steps": 0, "model.dropout": 0.0}


@pytest.fixture(scope="module")
def reference_step():
  """Plain trainer on mesh (2, 2, 2): a state after one update, a batch, its loss / gradients and
  the next update (host copies)."""
  mesh8 = mesh_lib.make_mesh((2, 2, 2))
  ref = T.Trainer(tiny_cfg(**_BASE), mesh8)
  s0 = ref.init_state()
  # a non-trivial starting point: one update (the zero-initialised output layer gets weights)
  s0, _ = ref.train_step(s0, ref.put_batch(_tokens(5)))
  host_state = jax.device_get(s0)
  batch_np = _tokens(6)
  loss0, g0 = ref.loss_and_grad(s0, ref.put_batch(batch_np))
  s1, m1 = ref.train_step(s0, ref.put_batch(batch_np))
  return dict(mesh=mesh8, state=host_state, batch=batch_np, loss=float(loss0), grads=_flat(g0),
              next_loss=float(m1["loss"]), next_params=_flat(s1.params))


@pytest.mark.parametrize("name,over", [
    ("all", {"train.grad_accum_steps": 2, "model.remat": True, "model.scan_blocks": True}),
    pytest.param("accum2", {"train.grad_accum_steps": 2}, marks=pytest.mark.slow),
    pytest.param("accum4", {"train.grad_accum_steps": 4, "mesh.shape": (2, 1, 4)},
                 marks=pytest.mark.slow),
    pytest.param("remat", {"model.remat": True}, marks=pytest.mark.slow),
    pytest.param("scan", {"model.scan_blocks": True}, marks=pytest.mark.slow),
])
def test_grad_accum_remat_scan_equal_loss_grads_and_update(reference_step, name, over):
  """grad_accum_steps, model.remat, model.scan_blocks: same loss, gradients and updated params
  as the plain step (8 devices, float32 compute). The default run checks all three at once."""
  ref = reference_step
  mesh = ref["mesh"] if "mesh.shape" not in over else mesh_lib.make_mesh(over["mesh.shape"])
  tr = T.Trainer(tiny_cfg(**_BASE, **over), mesh)
  st = jax.device_put(ref["state"], tr.state_shardings)
  loss, g = tr.loss_and_grad(st, tr.put_batch(ref["batch"]))
  np.testing.assert_allclose(float(loss), ref["loss"], rtol=1e-6, err_msg=name)
  scale = max(np.abs(x).max() for x in ref["grads"])
  for a, b in zip(_flat(g), ref["grads"]):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * scale, err_msg=name)
  s1, m1 = tr.train_step(st, tr.put_batch(ref["batch"]))
  np.testing.assert_allclose(float(m1["loss"]), ref["next_loss"], rtol=1e-6, err_msg=name)
  for a, b in zip(_flat(s1.params), ref["next_params"]):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=name)


def test_grad_accum_needs_divisible_batch():
  with pytest.raises(ValueError, match=r"data.batch_size=8 .*grad_accum_steps=3"):
    T._validate_setup(tiny_cfg(**{"train.grad_accum_steps": 3}), _one_device_mesh(),
                      __import__("remdm_jax.tokenizers", fromlist=["x"]).get_tokenizer("byte"))
  with pytest.raises(ValueError, match=r"train.grad_accum_steps=0"):
    tiny_cfg(**{"train.grad_accum_steps": 0})


def test_opt_state_shardings_follow_params_structurally():
  """Every Adam moment (and MultiSteps' accumulator) leaf gets exactly its parameter's sharding;
  counts are replicated; a state leaf that only shares a parameter's name and shape (not a
  params-shaped tree) is replicated, not guessed."""
  import optax
  from remdm_jax.models import dit
  cfg = tiny_cfg()
  mesh8 = mesh_lib.make_mesh((1, 2, 4))
  _, abstract = dit.abstract_params(cfg.model)
  psh = mesh_lib.param_shardings(abstract, mesh8, cfg.mesh.rules)
  tx = optax.MultiSteps(optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3)), 2)

  def odd_init(params):
    bias = params["output_layer"]["linear"]["bias"]
    return {"stats": {"output_layer": {"linear": {"bias": jnp.zeros(bias.shape)}}}}
  odd = optax.GradientTransformation(odd_init, lambda u, s, p=None: (u, s))
  tx = optax.chain(tx, odd)
  opt_abs = jax.eval_shape(tx.init, abstract)
  sh = T._opt_state_shardings(opt_abs, psh, abstract, mesh8)
  p_flat = jax.tree.leaves(psh)
  mirrors = 0

  def visit(x):
    nonlocal mirrors
    if jax.tree_util.tree_structure(x) == jax.tree_util.tree_structure(abstract):
      mirrors += 1
    return False
  jax.tree.map(lambda _: None, opt_abs, is_leaf=visit)
  leaves = jax.tree.leaves(sh)
  # mu, nu and MultiSteps' acc_grads: three params-shaped subtrees
  assert mirrors == 3
  specs = [s.spec for s in leaves]
  for p in p_flat:
    assert sum(1 for s in leaves if s == p) >= 3 or p.is_fully_replicated
  odd_leaf = sh[1]["stats"]["output_layer"]["linear"]["bias"]
  assert odd_leaf.is_fully_replicated
  assert any(s != jax.sharding.PartitionSpec() for s in specs)


def test_replication_warning_names_the_size_lost():
  """vocab 257 on tensor=8 cannot be sharded: the trainer says how much stays replicated."""
  cfg = tiny_cfg(**{"mesh.shape": (1, 1, 8)})
  tr = T.Trainer(cfg, mesh_lib.make_mesh((1, 1, 8)))
  w = tr.replication.warning()
  assert w is not None
  assert "vocab=257 over tensor=8" in w and "MB" in w and "vocab_embed/embedding" in w
  rep = tr.replication
  v, h = cfg.model.vocab_size, cfg.model.hidden_size
  assert rep.replicated_params == 2 * v * h + v  # embedding, output kernel and bias
  np.testing.assert_allclose(rep.replicated_mb, rep.replicated_params * 4 / 2**20)
  assert T.Trainer(tiny_cfg(), mesh_lib.make_mesh((8, 1, 1))).replication.warning() is None
  # DiT-small with GPT-2's vocabulary on tensor=4: the 45.5% of the issue
  from remdm_jax.models import dit
  _, small = dit.abstract_params(dit.DiTConfig.preset("small"))
  r = mesh_lib.replication_report(small, mesh_lib.make_mesh((1, 2, 4)))
  assert "45.5% of 169,627,218" in r.warning()


def test_prefetcher_order_states_errors_and_close():
  from remdm_jax.training.prefetch import DevicePrefetcher
  src = [(np.full((2, 3), i), {"step": i + 1}) for i in range(5)]
  for size in (0, 1, 3):
    out = list(DevicePrefetcher(iter(src), jnp.asarray, size))
    assert [int(b[0, 0]) for b, _ in out] == list(range(5))
    assert [s["step"] for _, s in out] == [1, 2, 3, 4, 5]
    assert all(isinstance(b, jax.Array) for b, _ in out)

  def bad():
    yield src[0]
    raise OSError("disk gone")
  pf = DevicePrefetcher(bad(), jnp.asarray, 2)
  next(pf)
  with pytest.raises(OSError, match="disk gone"):
    next(pf)
  endless = DevicePrefetcher(((np.zeros(2), {}) for _ in iter(int, 1)), jnp.asarray, 2)
  next(endless)
  endless.close()
  assert endless._thread is None


# ------------------------------------------------------------------------------------------------
# The loop: model/usage agreement on resume, errors before work, interrupts (items 3, 8, 9).
# ------------------------------------------------------------------------------------------------

def _text(corpus, **over):
  return {"data.source": "text", "data.path": corpus, "data.doc_per_line": True,
          "train.eval_every": 0, **over}


def test_resume_with_other_model_or_usage_fails_before_work(tmp_path, corpus):
  _run(tiny_cfg(**_text(corpus, **{"train.num_steps": 2, "checkpoint.save_every": 2})), tmp_path)
  before = read_metrics(str(tmp_path))
  cases = [
      ({"model.causal": True, "loss.objective": "ar"}, r"model.causal: checkpoint False vs "
       r"config True; loss.objective: checkpoint 'mdlm' vs config 'ar'"),
      ({"model.hidden_size": 32}, r"model.hidden_size: checkpoint 64 vs config 32"),
      ({"data.seq_len": 16}, r"data.seq_len: checkpoint 32 vs config 16"),
  ]
  for over, msg in cases:
    calls = []
    with pytest.raises(ValueError, match=r"cannot resume workdir=.*" + msg):
      _run(tiny_cfg(**_text(corpus, **{"train.num_steps": 4}, **over)), tmp_path,
           step_wrapper=lambda f: calls.append(1) or f)
    assert calls == []  # refused before the trainer was even built
  assert read_metrics(str(tmp_path)) == before
  with pytest.raises(ValueError, match=r"checkpoint.resume=False"):
    _run(tiny_cfg(**_text(corpus, **{"checkpoint.resume": False})), tmp_path)


@pytest.mark.slow
def test_resume_allows_run_time_model_fields(tmp_path, corpus):
  _run(tiny_cfg(**_text(corpus, **{"train.num_steps": 2, "checkpoint.save_every": 2})), tmp_path)
  out = _run(tiny_cfg(**_text(corpus, **{"train.num_steps": 3, "model.remat": True,
                                         "model.dropout": 0.1})), tmp_path)
  assert out["step"] == 3


def test_workdir_errors_and_stale_temp_files(tmp_path, corpus):
  f = tmp_path / "file"
  f.write_text("x")
  with pytest.raises(ValueError, match=r"workdir=.*file.*not a directory"):
    _run(tiny_cfg(**_text(corpus)), f)
  with pytest.raises(ValueError, match=r"workdir=.*file/sub is not writable"):
    _run(tiny_cfg(**_text(corpus)), f / "sub")
  w = tmp_path / "w"
  w.mkdir()
  for name in (".tmp-abc-config.json", "metrics.jsonl.tmp", "config.json.tmp"):
    (w / name).write_text("half")
  (w / "keep.txt").write_text("mine")
  _run(tiny_cfg(**_text(corpus, **{"train.num_steps": 1})), w)
  assert sorted(os.listdir(w)) == ["checkpoints", "config.json", "keep.txt", "metrics.jsonl"]


def test_failed_async_save_stops_at_the_next_step(tmp_path, corpus, monkeypatch):
  import orbax.checkpoint as ocp
  orig = ocp.JsonCheckpointHandler._save_fn

  async def failing(self, x, directory):
    if isinstance(x, dict) and x.get("step") == 4:
      raise OSError(28, "No space left on device")
    return await orig(self, x, directory)
  monkeypatch.setattr(ocp.JsonCheckpointHandler, "_save_fn", failing)
  steps = []

  def count(f):
    def g(state, batch):
      steps.append(int(state.step) + 1)
      return f(state, batch)
    return g
  cfg = tiny_cfg(**_text(corpus, **{"train.num_steps": 40, "train.log_every": 1,
                                    "checkpoint.save_every": 2}))
  with pytest.raises(RuntimeError, match=r"checkpoint save .*failed: .*No space left on device"):
    _run(cfg, tmp_path, step_wrapper=count)
  assert max(steps) <= 6, steps  # not many steps later
  ck = ckpt_lib.TrainCheckpointer(os.path.join(tmp_path, "checkpoints"))
  assert ck.all_steps() == [2]  # the failed step is not listed as a checkpoint
  ck.close()


def _train_py(workdir, corpus, *extra):
  return [sys.executable, os.path.join(ROOT, "train.py"),
          f"--config={os.path.join(ROOT, 'configs', 'tiny.py')}", f"--workdir={workdir}",
          "--config.data.source=text", f"--config.data.path={corpus}",
          "--config.data.doc_per_line=True", "--config.train.eval_every=0",
          "--config.train.log_every=1", *extra]


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_signal_saves_a_checkpoint_and_resume_has_no_duplicates(tmp_path, corpus, compile_cache,
                                                                sig):
  import signal
  import time
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=compile_cache,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", PYTHONUNBUFFERED="1")
  cmd = _train_py(tmp_path, corpus, "--config.train.num_steps=100000",
                  "--config.checkpoint.save_every=100000")
  p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                       env=env)
  lines = []
  deadline = time.time() + 240
  while time.time() < deadline:
    ln = p.stdout.readline()
    lines.append(ln)
    if ln.startswith("step 3/"):
      break
  p.send_signal(getattr(signal, sig))
  out, err = p.communicate(timeout=120)
  text = "".join(lines) + out
  assert p.returncode == (143 if sig == "SIGTERM" else 130), err[-3000:]
  assert "loading data" in text and "compiling the train step" in text
  assert "Traceback" not in err
  msg = [ln for ln in err.splitlines() if ln.startswith("interrupted")]
  assert len(msg) == 1 and f"by {sig} after step" in msg[0], err[-2000:]
  stopped = int(msg[0].split("after step ")[1].split(";")[0])
  assert f"checkpoint of step {stopped} saved" in msg[0]
  ck = ckpt_lib.TrainCheckpointer(os.path.join(tmp_path, "checkpoints"))
  assert ck.all_steps() == [stopped]
  ck.close()
  # resume for two more steps: every step recorded exactly once
  r = subprocess.run(_train_py(tmp_path, corpus, f"--config.train.num_steps={stopped + 2}",
                               "--config.checkpoint.save_every=100000"),
                     capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  steps = [rec["step"] for rec in read_metrics(str(tmp_path), "train")]
  assert steps == list(range(1, stopped + 3))


def test_interrupt_before_any_checkpoint_claims_none(tmp_path, corpus):
  """Ctrl-C while the data is loading: the message must not promise a checkpoint."""
  r = subprocess.run([sys.executable, "-c", (
      "import sys; sys.argv=['train.py'] + sys.argv[1:]\n"
      "import remdm_jax.training.trainer as T\n"
      "def boom(*a, **k):\n  raise KeyboardInterrupt\n"
      "T._load_split = boom\n"
      "import runpy; runpy.run_path('train.py', run_name='__main__')\n"),
      *_train_py(tmp_path, corpus)[2:]], capture_output=True, text=True, cwd=ROOT, timeout=120,
      env=dict(os.environ, PYTHONPATH=ROOT))
  assert r.returncode == 130, r.stderr[-2000:]
  assert "no checkpoint was saved" in r.stderr and "resume from" not in r.stderr


def test_signal_during_startup_is_honoured_before_the_first_step(tmp_path, corpus):
  """SIGINT while the data is loading (before compilation): the run stops before step 1 with
  exit 130 instead of the signal being lost and training going on."""
  r = subprocess.run([sys.executable, "-c", (
      "import os, signal, sys; sys.argv=['train.py'] + sys.argv[1:]\n"
      "import remdm_jax.training.trainer as T\n"
      "orig = T._load_split\n"
      "def load(*a, **k):\n  os.kill(os.getpid(), signal.SIGINT)\n  return orig(*a, **k)\n"
      "T._load_split = load\n"
      "import runpy; runpy.run_path('train.py', run_name='__main__')\n"),
      *_train_py(tmp_path, corpus)[2:]], capture_output=True, text=True, cwd=ROOT, timeout=120,
      env=dict(os.environ, PYTHONPATH=ROOT))
  assert r.returncode == 130, r.stderr[-2000:]
  out = r.stdout + r.stderr
  assert "SIGINT received" in out and "compiling the train step" not in out
  assert "interrupted by SIGINT after step 0; no checkpoint was saved" in r.stderr


def test_train_py_missing_config_file_is_one_line(tmp_path):
  r = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"),
                      f"--config={tmp_path}/nope.py:ar", f"--workdir={tmp_path}/w"],
                     capture_output=True, text=True, cwd=ROOT, timeout=120)
  assert r.returncode == 2 and "Traceback" not in r.stderr
  assert r.stderr.strip() == f"error: --config file not found: {tmp_path}/nope.py"
