"""One trainer for every model kind (issue 15 item 3): the DiT, the LLaDA Countdown SFT and the
digits judge train through `training.trainer` and give the losses and parameters of an
independent plain optax loop written here (same optimizer, keys and batches); the batch
pipelines resume exactly; a killed digits training resumes from its checkpoint.
"""
import os
import signal
import subprocess
import sys
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from remdm_jax import sharding as mesh_lib
from remdm_jax.training import trainer as T

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module", autouse=True)
def compile_cache(tmp_path_factory):
  """Persistent compilation cache: the resumed runs compile the same programs again."""
  from jax._src import compilation_cache as cc
  d = str(tmp_path_factory.getbasetemp() / "jax_cache_one_trainer")
  old = (jax.config.jax_compilation_cache_dir,
         jax.config.jax_persistent_cache_min_compile_time_secs)
  jax.config.update("jax_compilation_cache_dir", d)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  cc.reset_cache()
  yield d
  jax.config.update("jax_compilation_cache_dir", old[0])
  jax.config.update("jax_persistent_cache_min_compile_time_secs", old[1])
  cc.reset_cache()


def _one_device_mesh():
  return mesh_lib.make_mesh((1, 1, 1), devices=jax.devices()[:1])


def _leaves(tree):
  return [np.asarray(x, np.float64) for x in jax.tree.leaves(jax.device_get(tree))]


def _assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
  la, lb = _leaves(a), _leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)


# ------------------------------------------------------------------------------------------------
# the DiT (MDLM, dropout on): Trainer == plain loop
# ------------------------------------------------------------------------------------------------

def test_dit_trainer_equals_plain_optax_loop():
  sys.path.insert(0, ROOT)
  from configs import tiny
  from remdm_jax import config_utils
  from remdm_jax.diffusion import losses
  from remdm_jax.models import dit
  c = tiny.get_config()
  c.model.dropout = 0.1
  c.optim.update(warmup_steps=2, ema_decay=0.9)
  cfg = config_utils.experiment_from_config(c)
  tr = T.Trainer(cfg, _one_device_mesh())
  rng = np.random.default_rng(0)
  batches = [rng.integers(0, 256, (8, 32), dtype=np.int32) for _ in range(3)]
  state = tr.init_state()
  got = []
  for b in batches:
    state, m = tr.train_step(state, tr.put_batch(b))
    got.append(float(m["loss"]))

  # reference: the documented key scheme, the loss module, optax written out here
  k_params, k_train = jax.random.split(jax.random.PRNGKey(cfg.train.seed))
  graphdef, params = dit.init_params(cfg.model, k_params)
  apply = dit.make_apply_fn(graphdef)
  loss = losses.loss_fn(cfg.loss)
  sched = optax.join_schedules([optax.linear_schedule(0.0, 1e-3, 2),
                                optax.constant_schedule(1e-3)], [2])
  tx = optax.chain(optax.clip_by_global_norm(1.0),
                   optax.adamw(sched, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0))
  opt = tx.init(params)
  ema = params
  want = []
  for n, b in enumerate(batches):
    loss_key, drop_key = jax.random.split(jax.random.fold_in(k_train, n))

    def f(p):
      return loss(lambda z, s, **kw: apply(p, z, s, dropout_key=drop_key, **kw), jnp.asarray(b),
                  loss_key)[0]
    val, g = jax.jit(jax.value_and_grad(f))(params)
    upd, opt = tx.update(g, opt, params)
    params = optax.apply_updates(params, upd)
    d = min(0.9, (2.0 + n) / (11.0 + n))
    ema = jax.tree.map(lambda e, p: d * e + (1 - d) * p, ema, params)
    want.append(float(val))
  np.testing.assert_allclose(got, want, rtol=1e-6)
  _assert_trees_close(state.params, params)
  _assert_trees_close(state.ema_params, ema)


def test_visible_prefix_gives_the_model_the_clean_prefix(monkeypatch):
  """dit_spec(visible_prefix=1) (the digits class token): the denoiser's input equals that of
  visible_prefix=0 (same key: same z_t) except that position 0 holds the clean token, also in
  the rows where z_t masked it."""
  sys.path.insert(0, ROOT)
  from configs import tiny
  from remdm_jax import config_utils
  from remdm_jax.models import dit
  cfg = config_utils.experiment_from_config(tiny.get_config())
  real = dit.make_apply_fn
  inputs = []
  monkeypatch.setattr(dit, "make_apply_fn", lambda gd: (
      lambda p, z, s, **kw: inputs.append(z) or real(gd)(p, z, s, **kw)))
  x = jnp.asarray(np.random.default_rng(1).integers(0, 256, (64, 32), dtype=np.int32))
  vals = []
  for n in (0, 1):
    spec = T.dit_spec(cfg, visible_prefix=n)
    params = spec.init(jax.random.PRNGKey(0))
    vals.append(float(spec.loss(params, x, jax.random.PRNGKey(2), False)[0]))
  z0, z1 = np.asarray(inputs[0]), np.asarray(inputs[1])
  mask = cfg.loss.mask_id
  assert (z0[:, 0] == mask).sum() > 5  # z_t did mask the class position in some rows
  np.testing.assert_array_equal(z1[:, 0], np.asarray(x[:, 0]))
  np.testing.assert_array_equal(z1[:, 1:], z0[:, 1:])
  assert all(np.isfinite(vals))
  with pytest.raises(ValueError, match="visible_prefix=-1"):
    T.dit_spec(cfg, visible_prefix=-1)


# ------------------------------------------------------------------------------------------------
# the LLaDA Countdown SFT
# ------------------------------------------------------------------------------------------------

CD_MODEL = dict(d_model=32, n_heads=2, n_layers=1, mlp_hidden_size=64)


def _countdown_problems():
  from remdm_jax.llm import countdown as cd
  return cd.generate_problems(60, seed=5, max_number=6, ops="+-*/", max_target=99)


def test_countdown_sft_equals_plain_optax_loop():
  from remdm_jax.llm import countdown_train as C
  from remdm_jax.llm import model as M
  probs = _countdown_problems()
  steps, bs, lr, warmup, seed = 6, 8, 3e-3, 2, 3
  tr = C.train(probs, steps=steps, batch_size=bs, lr=lr, warmup=warmup, seed=seed,
               model=CD_MODEL)
  p_len, g_len = C.slot_lengths(probs)
  x, am = C.make_batch(probs, p_len, g_len)
  cfg = C.model_config(**CD_MODEL)
  gd, params = M.init_model(cfg, jax.random.key(seed))
  f = M.make_logits_fn(gd)
  sched = optax.warmup_cosine_decay_schedule(0.0, lr, warmup, steps, end_value=lr / 20)
  tx = optax.adamw(sched, b1=0.9, b2=0.99, eps=1e-8, weight_decay=0.01)
  opt = tx.init(params)

  @jax.jit
  def step(p, o, xb, ab, key):
    val, g = jax.value_and_grad(lambda q: C.sft_loss(f, q, xb, ab, key, p_len,
                                                     weighting="uniform"))(p)
    u, o = tx.update(g, o, p)
    return optax.apply_updates(p, u), o, val

  want = []
  for i in range(steps):
    kd, kl = jax.random.split(jax.random.fold_in(jax.random.key(seed + 1), i))
    idx = np.asarray(jax.random.randint(kd, (bs,), 0, len(probs)))
    params, opt, val = step(params, opt, jnp.asarray(x[idx]), jnp.asarray(am[idx]), kl)
    want.append(float(val))
  assert tr.losses.shape == (steps,)
  np.testing.assert_allclose(tr.losses, want, rtol=1e-5)
  _assert_trees_close(tr.params, params, rtol=1e-5, atol=2e-6)


def test_countdown_sft_resumes_exactly(tmp_path):
  """Straight 6 steps == 3 steps + a resumed run to 6 (same workdir): same losses, bitwise
  equal parameters; the pipeline's state travels with the checkpoint."""
  from remdm_jax.llm import countdown_train as C
  probs = _countdown_problems()
  kw = dict(batch_size=8, warmup=2, model=CD_MODEL, save_every=3)
  full = C.train(probs, steps=6, workdir=str(tmp_path / "a"), **kw)
  C.train(probs, steps=3, workdir=str(tmp_path / "b"), **kw)
  with pytest.raises(ValueError, match="cannot resume"):  # another model in that workdir
    C.train(probs, steps=6, workdir=str(tmp_path / "b"), **dict(kw, model=dict(CD_MODEL,
                                                                                d_model=16)))
  rest = C.train(probs, steps=6, workdir=str(tmp_path / "b"), **kw)
  assert rest.losses.shape == (3,)
  np.testing.assert_array_equal(rest.losses, full.losses[3:])
  for a, b in zip(_leaves(full.params), _leaves(rest.params)):
    np.testing.assert_array_equal(a, b)


def test_step_pipelines_restore_to_the_same_batches():
  from remdm_jax.images import digits as dg
  from remdm_jax.llm import countdown_train as C
  probs = _countdown_problems()
  x, am = C.make_batch(probs, *C.slot_lengths(probs))
  xtr, ytr = np.arange(40 * 64).reshape(40, 64) % 17, np.arange(40) % 10
  seqs = np.arange(50 * 3).reshape(50, 3)
  for make in (lambda: C.sft_batches(x, am, 4, 1), lambda: dg.classifier_batches(xtr, ytr, 2, 8),
               lambda: dg._epoch_batches(seqs, 16, 3)):
    it = make()
    seq = [next(it) for _ in range(9)]
    it2 = make()
    it2.set_state(dict(seq and it.get_state(), step=5))
    for want in seq[5:]:
      jax.tree.map(np.testing.assert_array_equal, next(it2), want)
    it2.set_state({"step": 2})  # backwards too
    jax.tree.map(np.testing.assert_array_equal, next(it2), seq[2])
    bad = dict(it.get_state(), seed=99)
    with pytest.raises(ValueError, match="state mismatch: saved seed=99"):
      it2.set_state(bad)
  # the epoch pipeline: every row once per epoch (remainder dropped), a new order each epoch
  it = dg._epoch_batches(seqs, 16, 3)
  e0 = np.concatenate([next(it) for _ in range(3)])
  e1 = np.concatenate([next(it) for _ in range(3)])
  assert len(np.unique(e0[:, 0])) == 48 and len(np.unique(e1[:, 0])) == 48
  assert not np.array_equal(e0, e1)


# ------------------------------------------------------------------------------------------------
# the digits judge
# ------------------------------------------------------------------------------------------------

def test_digits_classifier_equals_plain_optax_loop():
  pytest.importorskip("sklearn")
  from remdm_jax.images import digits as dg
  steps, seed, lr, wd = 5, 1, 1e-3, 1e-4
  params, acc = dg.train_classifier(seed=seed, steps=steps, lr=lr, weight_decay=wd,
                                    log=lambda _: None)
  assert 0.0 <= acc <= 1.0
  xtr, ytr = dg.load_digits_split("train")
  ref = dg.init_classifier(jax.random.PRNGKey(seed))
  tx = optax.adamw(optax.cosine_decay_schedule(lr, steps), weight_decay=wd)
  opt = tx.init(ref)

  def loss_fn(p, xb, yb):
    h = jnp.asarray(xb, jnp.float32) / 16.0
    for i in range(2):
      h = jax.nn.relu(h @ p[f"w{i}"] + p[f"b{i}"])
    logits = h @ p["w2"] + p["b2"]
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), yb[:, None], 1))

  rs = np.random.RandomState(seed)
  imgs = xtr.reshape(-1, 8, 8)
  for _ in range(steps):
    idx = rs.randint(0, len(xtr), 128)
    sy, sx = rs.randint(-1, 2, size=2)
    b = np.zeros_like(imgs[idx])
    src = imgs[idx]
    # shift by (sy, sx) with zero fill, written out with slices
    ys = slice(max(sy, 0), 8 + min(sy, 0))
    yd = slice(max(-sy, 0), 8 + min(-sy, 0))
    xs = slice(max(sx, 0), 8 + min(sx, 0))
    xd = slice(max(-sx, 0), 8 + min(-sx, 0))
    b[:, ys, xs] = src[:, yd, xd]
    g = jax.grad(loss_fn)(ref, b.reshape(-1, 64), jnp.asarray(ytr[idx]))
    upd, opt = tx.update(g, opt, ref)
    ref = optax.apply_updates(ref, upd)
  _assert_trees_close(params, ref, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# digits CLI: outputs and resume (issue 19 item 8)
# ------------------------------------------------------------------------------------------------

def _cli(args, **kw):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  return subprocess.Popen([sys.executable, "-m", "remdm_jax.images.digits", *args], cwd=ROOT,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          **kw)


def _digits_params(path):
  if os.path.isfile(os.path.join(path, "params.npz")):
    with np.load(os.path.join(path, "params.npz")) as z:
      return [z[k] for k in sorted(z.files)]
  from remdm_jax.checkpoint import load_params
  return _leaves(load_params(str(path))[0])


@pytest.mark.slow
@pytest.mark.parametrize("command", [
    ["train-classifier", "--save-every", "100"],
    ["train-model", "--config", os.path.join(ROOT, "configs", "digits.py") + ":tiny"]])
def test_digits_training_killed_at_step_200_of_400_resumes(tmp_path, command):
  """SIGKILL once the step-200 checkpoint exists: the same command resumes from the latest
  finished checkpoint and ends with the parameters of an uninterrupted run (bitwise). (The MDLM
  checkpoints every 100 steps: configs/digits.py checkpoint.save_every.)"""
  pytest.importorskip("sklearn")
  straight = tmp_path / "straight"
  common = [*command, "--steps", "400"]
  p = _cli([*common, "--out", str(straight)])
  out, err = p.communicate(timeout=1200)
  assert p.returncode == 0, err[-2000:]
  out_dir = tmp_path / "run"
  ck = tmp_path / "run.train" / "checkpoints"
  args = [*common, "--out", str(out_dir)]
  p = _cli(args)
  t0 = time.time()
  while not (ck / "200").is_dir() and p.poll() is None and time.time() - t0 < 1200:
    time.sleep(0.02)
  assert (ck / "200").is_dir(), "no checkpoint of step 200 appeared"
  p.kill()
  p.communicate(timeout=600)
  assert p.returncode == -signal.SIGKILL, "the run ended before the kill (too fast?)"
  assert not out_dir.exists()
  p = _cli(args)
  out, err = p.communicate(timeout=1200)
  assert p.returncode == 0, err[-2000:]
  assert "resumed from step" in out + err
  for a, b in zip(_digits_params(straight), _digits_params(out_dir)):
    np.testing.assert_array_equal(a, b)


def test_digits_cli_never_writes_shipped_models_or_foreign_folders(tmp_path, monkeypatch, capsys):
  """No --out: one error line, the (stand-in) shipped folders untouched; an existing folder needs
  --overwrite and must be one the tool wrote; a file path is refused. All before any work."""
  pytest.importorskip("sklearn")
  from remdm_jax.images import digits as dg
  shipped_m, shipped_c = tmp_path / "shipped_m", tmp_path / "shipped_c"
  for d in (shipped_m, shipped_c):
    d.mkdir()
    (d / "metadata.json").write_text('{"format": "x"}')
  monkeypatch.setattr(dg, "MODEL_PATH", str(shipped_m))
  monkeypatch.setattr(dg, "CLASSIFIER_PATH", str(shipped_c))
  tiny = ["--config", os.path.join(ROOT, "configs", "digits.py") + ":tiny", "--steps", "1"]
  for args in (["train-model", *tiny], ["train-classifier", "--steps", "1"]):
    assert dg.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --out is required"), err
  assert [p.name for p in shipped_m.iterdir()] == ["metadata.json"]
  assert [p.name for p in shipped_c.iterdir()] == ["metadata.json"]
  mine = tmp_path / "mine"
  mine.mkdir()
  (mine / "notes.txt").write_text("keep me")
  readme = tmp_path / "README.md"
  readme.write_text("hello")
  cases = [
      (["train-model", *tiny, "--out", str(mine)], "exists; pass --overwrite"),
      (["train-model", *tiny, "--out", str(mine), "--overwrite"], "not a digits model folder"),
      (["train-classifier", "--steps", "1", "--out", str(mine), "--overwrite"],
       "not a digits classifier folder"),
      (["train-model", *tiny, "--out", str(readme)], "is not a folder"),
      (["train-classifier", "--steps", "1", "--out", str(readme), "--overwrite"],
       "is not a folder"),
  ]
  for args, needle in cases:
    assert dg.main(args) == 2, args
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], (args, err)
  assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
  assert (mine / "notes.txt").read_text() == "keep me" and readme.read_text() == "hello"
  assert not (tmp_path / "mine.train").exists()


def test_digits_classifier_cli_writes_and_overwrites_its_own_folder(tmp_path, capsys):
  pytest.importorskip("sklearn")
  from remdm_jax.images import digits as dg
  out = tmp_path / "clf"
  assert dg.main(["train-classifier", "--steps", "2", "--out", str(out)]) == 0
  assert dg.is_classifier_folder(str(out)) and (tmp_path / "clf.train" / "checkpoints").is_dir()
  capsys.readouterr()
  assert dg.main(["train-classifier", "--steps", "2", "--out", str(out)]) == 2
  assert "exists; pass --overwrite" in capsys.readouterr().err
  assert dg.main(["train-classifier", "--steps", "3", "--out", str(out), "--overwrite",
                  "--workdir", str(tmp_path / "w3")]) == 0
  import json
  assert json.load(open(out / "metadata.json"))["steps"] == 3
  chex.assert_trees_all_equal(sorted(os.listdir(out)), ["metadata.json", "params.npz"])
