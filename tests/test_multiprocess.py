"""Real multi-process JAX runs on 127.0.0.1 (issue 18): the launcher, training across processes
(2 processes x 2 devices == 1 x 4 bitwise, each process feeds its own rows, output written once,
orbax checkpoints resumed by 2 and by 1 process), faults (kill -9 of one process, SIGTERM to the
launcher) and sampling across processes (sample.py, the molecule sampler, LLaDA block generation).

Every test starts subprocesses (`python -m remdm_jax.launch`), each in its own session with a hard
timeout (the whole process group is killed on expiry); ports are chosen free at run time by the
launcher; the children share one persistent compilation cache per test session. Select or skip
them with `-m multiprocess` / `-m "not multiprocess"`.

The 1-process references of the bitwise training checks run through the launcher with `-n 1`, so
that they initialise `jax.distributed` too: only then do their collectives use gloo's summation
order, as the 2-process runs do (plain single-process XLA CPU collectives differ by about 1 ulp).
"""
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MP = os.path.join(ROOT, "tests", "mp")
pytestmark = pytest.mark.multiprocess
TIMEOUT = 240  # seconds, per subprocess (the run is killed, process group and all, on expiry)


@pytest.fixture(scope="session")
def mp_env(tmp_path_factory):
  """Environment of every child: CPU only, a compilation cache shared by this session's runs, no
  inherited multi-process variables."""
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("REMDM_COORDINATOR", "REMDM_NUM_PROC", "REMDM_PROCESS_ID",
                              "REMDM_DISTRIBUTED", "JAX_NUM_CPU_DEVICES", "JAX_COORDINATOR"))}
  env.update(JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
             JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jax_cache")),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             REMDM_OUTPUT_DIR=str(tmp_path_factory.mktemp("outputs")))
  return env


def _start(args, env, *, n=None, devices=None, grace=10):
  """Popen of `python -m remdm_jax.launch -n N --devices-per-process K -- args` (n given) or of
  `python args` (n None), in its own session."""
  if n is not None:
    cmd = [sys.executable, "-m", "remdm_jax.launch", "-n", str(n), "--grace", str(grace)]
    if devices:
      cmd += ["--devices-per-process", str(devices)]
    cmd += ["--"] + list(args)
  else:
    cmd = [sys.executable] + list(args)
  return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, start_new_session=True)


def _wait(p, timeout=TIMEOUT):
  """(returncode, stdout, stderr); on timeout the process group is killed and the test fails
  (the launcher's children die with it: PR_SET_PDEATHSIG)."""
  try:
    out, err = p.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    os.killpg(p.pid, signal.SIGKILL)
    out, err = p.communicate()
    pytest.fail(f"timed out after {timeout} s: {p.args}\n{out[-3000:]}\n{err[-3000:]}")
  return p.returncode, out, err


def _run(args, env, **kw):
  timeout = kw.pop("timeout", TIMEOUT)
  t0 = time.monotonic()
  r = _wait(_start(args, env, **kw), timeout)
  if os.environ.get("MP_TIMING"):
    print(f"\n[timing] {time.monotonic() - t0:6.1f} s  n={kw.get('n')} {' '.join(args)[:90]}")
  return r


def _wait_for(pred, p, what, timeout=TIMEOUT):
  """Polls pred() until True; fails (killing p's process group) if p ends or time runs out."""
  deadline = time.monotonic() + timeout
  while not pred():
    if p.poll() is not None or time.monotonic() > deadline:
      if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
      out, err = p.communicate()
      pytest.fail(f"never saw {what} (rc {p.returncode})\n{out[-3000:]}\n{err[-3000:]}")
    time.sleep(0.05)


def _children(pid):
  r = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
  return [int(x) for x in r.stdout.split()]


# ------------------------------------------------------------------------------------------------
# the launcher itself (tiny non-JAX children: fast)
# ------------------------------------------------------------------------------------------------

_ENV_CHILD = """
import os, sys, time
keys = ("REMDM_COORDINATOR", "REMDM_COORDINATOR_BIND", "REMDM_NUM_PROCESSES", "REMDM_PROCESS_ID",
        "JAX_NUM_CPU_DEVICES")
print(" ".join(f"{k}={os.environ.get(k)}" for k in keys), flush=True)
if os.environ["REMDM_PROCESS_ID"] == "1":
  time.sleep(0.5)
  sys.exit(3)
time.sleep(120)
"""


def test_launcher_env_and_a_failed_child_ends_the_job(mp_env):
  t0 = time.monotonic()
  rc, out, err = _run(["-c", _ENV_CHILD], mp_env, n=2, devices=3, timeout=60)
  wall = time.monotonic() - t0
  assert rc == 3, (out, err)
  assert wall < 15, wall  # not the 120 s sleep of process 0
  lines = sorted(ln for ln in out.splitlines() if "REMDM_COORDINATOR=" in ln)
  assert len(lines) == 2 and lines[0].startswith("[p0] ") and lines[1].startswith("[p1] ")
  envs = [dict(kv.split("=", 1) for kv in ln[5:].split()) for ln in lines]
  port = envs[0]["REMDM_COORDINATOR"].rsplit(":", 1)[1]
  for i, e in enumerate(envs):
    assert e["REMDM_COORDINATOR"] == e["REMDM_COORDINATOR_BIND"] == f"127.0.0.1:{port}"
    assert (e["REMDM_NUM_PROCESSES"], e["REMDM_PROCESS_ID"], e["JAX_NUM_CPU_DEVICES"]) == (
        "2", str(i), "3")
  assert re.search(r"launch: process 1 \(pid \d+\) exited with status 3; stopping processes "
                   r"\[0\]", err), err


_TERM_CHILD = """
import os, signal, sys, time
pid = os.environ["REMDM_PROCESS_ID"]
def on_term(s, f):
  print(f"process {pid} got SIGTERM", flush=True)
  if pid == "0":
    sys.exit(143)
signal.signal(signal.SIGTERM, on_term)  # process 1 ignores it: the launcher must SIGKILL it
open(os.path.join(sys.argv[1], f"ready{pid}"), "w").write(str(os.getpid()))
while True:
  time.sleep(0.05)
"""


def test_launcher_forwards_sigterm_then_kills_after_grace(mp_env, tmp_path):
  p = _start(["-c", _TERM_CHILD, str(tmp_path)], mp_env, n=2, grace=1)
  _wait_for(lambda: all((tmp_path / f"ready{i}").exists() for i in range(2)), p, "2 children",
            timeout=60)
  t0 = time.monotonic()
  p.send_signal(signal.SIGTERM)
  rc, out, err = _wait(p, timeout=60)
  assert time.monotonic() - t0 < 10
  assert rc == 143, (out, err)
  assert "[p0] process 0 got SIGTERM" in out and "[p1] process 1 got SIGTERM" in out, out
  assert "killing them" in err and "[1]" in err, err


def test_killing_the_launcher_kills_its_children(mp_env, tmp_path):
  p = _start(["-c", _TERM_CHILD, str(tmp_path)], mp_env, n=2)
  _wait_for(lambda: all((tmp_path / f"ready{i}").exists() for i in range(2)), p, "2 children",
            timeout=60)
  pids = [int((tmp_path / f"ready{i}").read_text()) for i in range(2)]
  os.kill(p.pid, signal.SIGKILL)
  p.communicate(timeout=30)
  deadline = time.monotonic() + 10
  alive = pids
  while alive and time.monotonic() < deadline:
    alive = [q for q in pids if os.path.exists(f"/proc/{q}") and
             "Z" not in open(f"/proc/{q}/stat").read().split(")")[1].split()[0]]
    time.sleep(0.05)
  assert not alive, alive


_RAISE_CHILD = """
import time
from remdm_jax import distributed
assert distributed.initialize_from_env()
import jax
from jax.experimental import multihost_utils
for i in range(10_000):
  multihost_utils.sync_global_devices(f"step{i}")
  if jax.process_index() == 1 and i == 3:
    raise RuntimeError("injected failure in process 1")
  time.sleep(0.01)
"""


def test_an_uncaught_exception_in_one_process_ends_the_job_at_once(mp_env):
  """distributed's excepthook: traceback + exit 1 at once (not JAX's exit barrier, which would
  wait its shutdown timeout and then abort every process)."""
  t0 = time.monotonic()
  rc, out, err = _run(["-c", _RAISE_CHILD], mp_env, n=2, devices=1, timeout=120)
  assert rc == 1, (out[-2000:], err[-2000:])
  assert time.monotonic() - t0 < 45
  assert "[p1] error: process 1 of 2 failed:" in err and "injected failure in process 1" in err
  # process 1 ended first and is named first (process 0 may have died of it in the same instant)
  assert re.search(r"launch: process 1 \(pid \d+\) exited with status 1(; |$)", err, re.M), (
      err[-2000:])


# ------------------------------------------------------------------------------------------------
# each process feeds only its rows of every global batch
# ------------------------------------------------------------------------------------------------

def test_each_process_feeds_its_own_rows(mp_env, tmp_path):
  rc, out, err = _run([os.path.join(MP, "feed_child.py"), str(tmp_path)], mp_env, n=2, devices=2)
  assert rc == 0, (out, err)
  sys.path.insert(0, ROOT)
  from configs import tiny
  from remdm_jax import config_utils, data
  B, L, N = 8, 32, 40  # as in feed_child.py
  packed = np.repeat(np.arange(N, dtype=np.int32)[:, None], L, axis=1)
  cfg = config_utils.experiment_from_config(tiny.get_config())
  assert cfg.data.batch_size == B
  ref = data.make_dataset(cfg.data, "train", packed=packed)
  glob = [next(ref)[:, 0] for _ in range(3)]  # the global batches (row ids), 1 process
  parts = [dict(np.load(tmp_path / f"feed_p{i}.npz")) for i in range(2)]
  tags = sorted({k.split("/")[0] for k in parts[0]})
  assert tags == ["1x1x4", "1x2x2", "2x2x1", "4x1x1"], tags  # data x fsdp x tensor
  expect_block = {"4x1x1": [(0, 2), (1, 2)], "1x2x2": [(0, 2), (1, 2)],
                  "2x2x1": [(0, 2), (1, 2)], "1x1x4": [(0, 1), (0, 1)]}
  for tag in tags:
    for n in range(3):
      g = glob[n]
      cover = np.zeros(B, int)
      for i, part in enumerate(parts):
        index, count = part[f"{tag}/{n}/block"]
        assert (index, count) == expect_block[tag][i]
        lo, hi = index * B // count, (index + 1) * B // count
        np.testing.assert_array_equal(part[f"{tag}/{n}/local"][:, 0], g[lo:hi])  # its block only
        for row in part[f"{tag}/{n}/shards"]:  # every device shard holds the right global rows
          start, ids = int(row[0]), row[1:]
          np.testing.assert_array_equal(ids, g[start:start + len(ids)])
          cover[start:start + len(ids)] += 1
        assert int(part[f"{tag}/{n}/sum"]) == int(g.sum())  # the global array, seen by a jit
      # no gaps, no duplicates: every row is held by the same number of devices
      per_row = cover[0]
      assert per_row >= 1 and np.all(cover == per_row), (tag, n, cover)
      if count == 2:  # rows split across the processes: they are disjoint
        a, b = (set(p[f"{tag}/{n}/local"][:, 0]) for p in parts)
        assert not a & b and a | b == set(g)


# ------------------------------------------------------------------------------------------------
# training: train.py with 2 processes x 2 devices, faults, resume with 2 and with 1 process
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  from pydoc_data.topics import topics
  path = tmp_path_factory.mktemp("corpus") / "docs.txt"
  path.write_text("\n".join(topics[k] for k in sorted(topics))[:60_000])
  return str(path)


def _train_args(corpus, workdir, num_steps, save_every, keep=2):
  return ["train.py", f"--config={os.path.join(ROOT, 'configs', 'tiny.py')}",
          f"--workdir={workdir}", "--config.data.source=text", f"--config.data.path={corpus}",
          "--config.data.doc_per_line=True", f"--config.train.num_steps={num_steps}",
          "--config.train.log_every=1", "--config.train.eval_every=0",
          "--config.optim.warmup_steps=0", "--config.model.num_blocks=1",
          f"--config.checkpoint.save_every={save_every}",
          f"--config.checkpoint.keep={keep}"]


def _steps(workdir):
  d = os.path.join(workdir, "checkpoints")
  return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


def _train_losses(workdir):
  from remdm_jax.training.metrics import read_metrics
  return [(r["step"], r["loss"]) for r in read_metrics(str(workdir), "train")]


def _state(workdir, step):
  """Every leaf of the saved TrainState at `step` (params, opt_state, ema_params, step, key) as
  numpy, keyed by path (read straight from the orbax folder, whatever wrote it)."""
  import jax
  import orbax.checkpoint as ocp
  path = os.path.join(workdir, "checkpoints", str(step), "state")
  ck = ocp.PyTreeCheckpointer()
  meta = ck.metadata(path)
  meta = getattr(meta, "item_metadata", meta)
  meta = getattr(meta, "tree", meta)
  args = jax.tree.map(lambda m: ocp.RestoreArgs(restore_type=np.ndarray), meta,
                      is_leaf=lambda x: hasattr(x, "shape") and hasattr(x, "dtype"))
  tree = ck.restore(path, args=ocp.args.PyTreeRestore(restore_args=args))
  return {jax.tree_util.keystr(p): np.asarray(x)
          for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _assert_same_state(a, b):
  assert sorted(a) == sorted(b) and len(a) > 10
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.fixture(scope="module")
def fault_chain(tmp_path_factory, corpus, mp_env):
  """One workdir (checkpoint every step, all kept) through:
    1. train.py as 2 processes x 2 devices from scratch; kill -9 of one process once checkpoint 2
       exists;
    2. a restart of both; SIGTERM to the launcher (pre-emption) once 2 more checkpoints exist;
    3. a resume with ONE process x 4 devices (re-sharded checkpoint) to step N = stop + 2.
  Checkpoints 1..stop are written by 2 processes, stop+1..N by one."""
  wd = str(tmp_path_factory.mktemp("train_faults"))
  res = {"workdir": wd}
  args = _train_args(corpus, wd, 1000, 1, keep=1000)
  # 1. kill -9 one process mid-run
  t0 = time.monotonic()
  p = _start(args, mp_env, n=2, devices=2)
  _wait_for(lambda: any(s >= 2 for s in _steps(wd)), p, "checkpoint 2")
  if os.environ.get("MP_TIMING"):
    print(f"\n[timing] {time.monotonic() - t0:6.1f} s  2 processes: start -> checkpoint 2")
  kids = _children(p.pid)
  assert len(kids) == 2, kids
  victim = max(kids)  # either process; the launcher names it
  t0 = time.monotonic()
  os.kill(victim, signal.SIGKILL)
  rc, out, err = _wait(p, timeout=60)
  res.update(kill_rc=rc, kill_wall=time.monotonic() - t0, kill_out=out, kill_err=err,
             victim=victim)
  # 2. restart both; SIGTERM to the launcher once 2 more checkpoints exist
  first = _steps(wd)[-1]
  t0 = time.monotonic()
  p = _start(args, mp_env, n=2, devices=2)
  _wait_for(lambda: any(s >= first + 2 for s in _steps(wd)), p, f"checkpoint {first + 2}")
  if os.environ.get("MP_TIMING"):
    print(f"\n[timing] {time.monotonic() - t0:6.1f} s  2 processes: restart -> checkpoint "
          f"{first + 2}")
  t0 = time.monotonic()
  p.send_signal(signal.SIGTERM)
  rc, out, err = _wait(p, timeout=90)
  res.update(resumed_from=first, term_rc=rc, term_wall=time.monotonic() - t0, term_out=out,
             term_err=err)
  stops = re.findall(r"\[p(\d)\] interrupted by SIGTERM after step (\d+); checkpoint of step "
                     r"(\d+) saved", err)
  res["stops"] = stops
  stop = int(stops[0][1]) if stops else _steps(wd)[-1]
  res["stop"] = stop
  # 3. resume with ONE process x 4 devices to step stop + 2
  res["N"] = stop + 2
  rc, out, err = _run(_train_args(corpus, wd, stop + 2, 1, keep=1000), mp_env, n=1, devices=4)
  assert rc == 0, (out[-3000:], err[-3000:])
  res.update(final_out=out)
  if os.environ.get("MP_TIMING"):
    print(f"\n[timing] chain: {res['resumed_from']=} {stop=} N={stop + 2} "
          f"kill {res['kill_wall']:.1f} s term {res['term_wall']:.1f} s")
  return res


@pytest.fixture(scope="module")
def run_1p(tmp_path_factory, corpus, mp_env, fault_chain):
  """The reference: 1 process x 4 devices (with jax.distributed, num_processes=1), uninterrupted,
  N steps, a checkpoint every step."""
  wd = tmp_path_factory.mktemp("train_1p")
  n = fault_chain["N"]
  rc, out, err = _run(_train_args(corpus, wd, n, 1, keep=1000), mp_env, n=1, devices=4)
  assert rc == 0, (out[-3000:], err[-3000:])
  return dict(workdir=str(wd), N=n)


def test_train_two_by_two_equals_one_by_four_bitwise(fault_chain, run_1p):
  """Steps 1..stop were trained by 2 processes x 2 devices (from scratch, then resumed from a
  2-process checkpoint), stop+1..N by 1 process x 4 devices resumed from a 2-process checkpoint:
  every checkpointed state and every loss equals the uninterrupted 1 x 4 run bitwise."""
  wd, ref = fault_chain["workdir"], run_1p["workdir"]
  n, stop = fault_chain["N"], fault_chain["stop"]
  assert _steps(wd) == _steps(ref) == list(range(1, n + 1))
  assert _train_losses(wd) == _train_losses(ref)  # the same floats
  for step in range(1, n + 1):
    _assert_same_state(_state(wd, step), _state(ref, step))
  # orbax wrote the 2-process checkpoints from both processes
  assert {"ocdbt.process_0", "ocdbt.process_1"} <= set(
      os.listdir(os.path.join(wd, "checkpoints", str(stop), "state")))
  # progress lines come from process 0 only
  for out in (fault_chain["kill_out"], fault_chain["term_out"]):
    assert re.search(r"^\[p0\] step \d+/1000 \| loss", out, re.M) and "[p1] step" not in out
  assert json.load(open(os.path.join(wd, "config.json")))["train"]["num_steps"] == n


def test_kill9_one_process_ends_the_job_and_a_restart_resumes(fault_chain, run_1p):
  f = fault_chain
  assert f["kill_rc"] == 137, f["kill_err"][-2000:]
  assert f["kill_wall"] < 15, f["kill_wall"]  # the launcher stops the survivor at once
  # the victim is named first (the survivor may die of it within the same instant)
  assert re.search(rf"^launch: process [01] \(pid {f['victim']}\) was killed by SIGKILL(; |$)",
                   f["kill_err"], re.M), f["kill_err"][-2000:]
  assert f"resumed from step {f['resumed_from']}" in f["term_out"]
  # nothing lost or duplicated in the metrics file: every step once, the uninterrupted losses
  losses = _train_losses(f["workdir"])
  assert [s for s, _ in losses] == list(range(1, f["N"] + 1))
  assert losses == _train_losses(run_1p["workdir"])


def test_sigterm_to_the_launcher_saves_the_same_step_in_both(fault_chain):
  f = fault_chain
  assert f["term_rc"] == 143, (f["term_out"][-2000:], f["term_err"][-2000:])
  assert f["term_wall"] < 60, f["term_wall"]
  stops = f["stops"]
  assert sorted(p for p, _, _ in stops) == ["0", "1"], f["term_err"][-3000:]
  assert len({(s, c) for _, s, c in stops}) == 1 and stops[0][1] == stops[0][2]
  assert f["stop"] >= f["resumed_from"] + 2
  assert re.search(rf"^\[p0\] SIGTERM: stopping at step {f['stop']} \(agreed by all 2 "
                   r"processes\)", f["term_out"], re.M), f["term_out"][-2000:]
  assert "resumed from step" in f["final_out"] and f"done: step {f['N']}" in f["final_out"]


# ------------------------------------------------------------------------------------------------
# sampling across processes
# ------------------------------------------------------------------------------------------------

def test_sample_py_two_processes_equal_one(mp_env, tmp_path):
  common = ["--preset=remdm_loop", "--steps=8", "--num_samples=8", "--batch_size=4",
            "--prompt=And", "--scorer=none", "--noprogress", "--show=1"]  # 2 batches of 4
  rc, out, err = _run(["sample.py", f"--output={tmp_path / 'two.jsonl'}"] + common, mp_env,
                      n=2, devices=2)
  assert rc == 0, (out[-2000:], err[-2000:])
  assert err.count("wrote 8 samples") == 1 and "[p0] wrote 8 samples" in err
  assert "[p1] ---" not in out and out.count("--- metrics ---") == 1
  env1 = dict(mp_env, JAX_NUM_CPU_DEVICES="1")
  rc, out1, err1 = _run(["sample.py", f"--output={tmp_path / 'one.jsonl'}"] + common, env1)
  assert rc == 0, err1[-2000:]
  assert sorted(os.listdir(tmp_path)) == ["one.jsonl", "two.jsonl"]
  two = [json.loads(ln) for ln in open(tmp_path / "two.jsonl")]
  one = [json.loads(ln) for ln in open(tmp_path / "one.jsonl")]
  assert len(two) == 8 and [r["tokens"] for r in two] == [r["tokens"] for r in one]
  assert two == one


def test_molecules_semi_ar_and_llada_two_processes_equal_one(mp_env, tmp_path):
  (tmp_path / "two").mkdir()
  rc, out, err = _run([os.path.join(MP, "gen_child.py"), str(tmp_path / "two" / "out.npz")],
                      mp_env, n=2, devices=2)
  assert rc == 0, (out[-2000:], err[-2000:])
  digests = re.findall(r"^\[p(\d)\] digest \d (\w+)$", out, re.M)
  assert sorted(p for p, _ in digests) == ["0", "1"] and len({d for _, d in digests}) == 1
  assert os.listdir(tmp_path / "two") == ["out.npz"]  # written once
  env1 = dict(mp_env, JAX_NUM_CPU_DEVICES="1")
  rc, out1, err1 = _run([os.path.join(MP, "gen_child.py"), str(tmp_path / "one.npz")], env1)
  assert rc == 0, err1[-2000:]
  two, one = np.load(tmp_path / "two" / "out.npz"), np.load(tmp_path / "one.npz")
  assert sorted(two.files) == ["llada", "molecules", "semi_ar"]
  assert two["molecules"].shape == (16, 32) and two["llada"].shape == (8, 8)
  assert two["semi_ar"].shape == (4, 192)
  for k in two.files:
    np.testing.assert_array_equal(two[k], one[k])
  assert hashlib.sha256(b"".join(np.ascontiguousarray(two[k]).tobytes()
                                 for k in sorted(two.files))).hexdigest() == digests[0][1]
