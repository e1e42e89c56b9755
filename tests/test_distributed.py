"""remdm_jax.distributed / launch / sharding helpers for several processes, in ONE process (the
real multi-process runs are tests/test_multiprocess.py): the environment contract, config checks,
which rows a process feeds, host <-> global placement."""
import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from remdm_jax import distributed, launch
from remdm_jax import sharding as mesh_lib


def test_config_from_env_reads_the_launcher_contract():
  assert distributed.config_from_env({}) is None
  env = launch.child_env({"PATH": "/bin", "REMDM_DISTRIBUTED": "auto"}, port=1234,
                         num_processes=3, process_id=2, devices_per_process=4)
  assert env["JAX_NUM_CPU_DEVICES"] == "4" and "REMDM_DISTRIBUTED" not in env
  cfg = distributed.config_from_env(env)
  assert (cfg.coordinator_address, cfg.coordinator_bind_address, cfg.num_processes,
          cfg.process_id) == ("127.0.0.1:1234", "127.0.0.1:1234", 3, 2)
  assert (cfg.initialization_timeout, cfg.heartbeat_timeout, cfg.shutdown_timeout) == (300, 60, 60)
  cfg = distributed.config_from_env(dict(env, REMDM_HEARTBEAT_TIMEOUT="10"))
  assert cfg.heartbeat_timeout == 10 and cfg.enabled
  auto = distributed.config_from_env({"REMDM_DISTRIBUTED": "auto"})
  assert auto.auto and auto.coordinator_address is None


@pytest.mark.parametrize("env, match", [
    ({"REMDM_COORDINATOR": "h:1", "REMDM_NUM_PROCESSES": "2"}, "not REMDM_PROCESS_ID"),
    ({"REMDM_COORDINATOR": "h:1", "REMDM_NUM_PROCESSES": "two", "REMDM_PROCESS_ID": "0"},
     "REMDM_NUM_PROCESSES='two' must be an integer"),
    ({"REMDM_COORDINATOR": "h:1", "REMDM_NUM_PROCESSES": "2", "REMDM_PROCESS_ID": "2"},
     r"process_id=2 must lie in \[0, 2\)"),
    ({"REMDM_COORDINATOR": "nohostport", "REMDM_NUM_PROCESSES": "2", "REMDM_PROCESS_ID": "0"},
     "must be 'host:port'"),
    ({"REMDM_DISTRIBUTED": "yes"}, "the only value is 'auto'"),
    ({"REMDM_DISTRIBUTED": "auto", "REMDM_SHUTDOWN_TIMEOUT": "0"}, "shutdown_timeout=0"),
])
def test_bad_environment_is_one_clear_error(env, match):
  with pytest.raises(ValueError, match=match):
    distributed.config_from_env(env)


def test_config_wins_over_environment(monkeypatch):
  monkeypatch.setenv("REMDM_COORDINATOR", "127.0.0.1:9")
  monkeypatch.setenv("REMDM_NUM_PROCESSES", "2")
  monkeypatch.setenv("REMDM_PROCESS_ID", "1")
  own = distributed.DistributedConfig(coordinator_address="10.0.0.1:5", num_processes=4,
                                      process_id=0)
  assert distributed.resolve(own) is own
  assert distributed.resolve(None).coordinator_address == "127.0.0.1:9"
  assert distributed.resolve(distributed.DistributedConfig()).process_id == 1


def test_launcher_command_and_status_helpers():
  import sys
  assert launch.command(["train.py", "--x"]) == [sys.executable, "train.py", "--x"]
  assert launch.command(["-m", "remdm_jax.x"])[0] == sys.executable
  assert launch.command(["bash", "-c", "true"]) == ["bash", "-c", "true"]
  assert (launch.exit_status(-9), launch.exit_status(3)) == (137, 3)
  assert launch.describe(-9) == "was killed by SIGKILL" and launch.describe(2).endswith(" 2")
  port = launch.free_port()
  assert 0 < port < 65536
  with pytest.raises(ValueError, match="must be >= 1"):
    launch.launch(0, ["true"])
  assert launch.main(["-n", "2", "train.py"]) == 2  # no "--"


def test_process_data_shard_single_process():
  for shape in ((-1, 1, 1), (2, 2, 2), (1, 1, 8)):
    assert mesh_lib.process_data_shard(mesh_lib.make_mesh(shape)) == (0, 1)


class _Dev:
  """A stand-in device of process i // 4 (8 fake CPU devices as 2 processes x 4)."""

  def __init__(self, i):
    self.id, self.process_index = i, i // 4


def _blocks(mesh):
  """process_data_shard of both 'processes' of `mesh` (devices 0-3: process 0, 4-7: process 1)."""
  fake = {d: _Dev(i) for i, d in enumerate(jax.devices())}
  orig = NamedSharding.devices_indices_map
  NamedSharding.devices_indices_map = lambda self, shape: {
      fake[d]: idx for d, idx in orig(self, shape).items()}
  try:
    return [mesh_lib.process_data_shard(mesh, p) for p in range(2)]
  finally:
    NamedSharding.devices_indices_map = orig


def test_process_data_shard_of_a_two_process_device_layout():
  assert _blocks(mesh_lib.make_mesh((-1, 1, 1))) == [(0, 2), (1, 2)]
  assert _blocks(mesh_lib.make_mesh((2, 2, 2))) == [(0, 2), (1, 2)]
  assert _blocks(mesh_lib.make_mesh((1, 2, 4))) == [(0, 2), (1, 2)]
  assert _blocks(mesh_lib.make_mesh((1, 1, 8))) == [(0, 1), (0, 1)]  # tensor spans both: same rows
  # devices interleaved between the processes: process 0 would hold rows 0, 2, 4, 6
  interleaved = np.asarray(jax.devices())[[0, 4, 1, 5, 2, 6, 3, 7]].reshape(8, 1, 1)
  with pytest.raises(ValueError, match="not one contiguous block"):
    _blocks(jax.sharding.Mesh(interleaved, mesh_lib.MESH_AXES))


def test_put_global_and_to_host_in_one_process():
  mesh = mesh_lib.make_mesh((-1, 1, 1))
  tree = {"a": np.arange(16, dtype=np.float32).reshape(8, 2), "k": jax.random.key(3)}
  placed = mesh_lib.put_global(tree, NamedSharding(mesh, P()))
  assert placed["a"].sharding == NamedSharding(mesh, P())
  rows = mesh_lib.put_global(tree["a"], mesh_lib.batch_sharding(mesh))
  assert len(rows.addressable_shards) == 8 and rows.addressable_shards[1].data.shape == (1, 2)
  np.testing.assert_array_equal(mesh_lib.to_host(rows), tree["a"])
  np.testing.assert_array_equal(jax.random.key_data(placed["k"]),
                                jax.random.key_data(tree["k"]))


def test_maybe_initialize_without_config_or_env_does_nothing(monkeypatch):
  for k in ("REMDM_COORDINATOR", "REMDM_NUM_PROCESSES", "REMDM_PROCESS_ID", "REMDM_DISTRIBUTED"):
    monkeypatch.delenv(k, raising=False)
  assert distributed.maybe_initialize(None) is False
  assert distributed.initialize_from_env() is False
  assert not distributed.preemption_sync_enabled()
  assert distributed.any_process(True) and not distributed.any_process(False)


def test_step_batches_split_global_batches_over_processes():
  """A StepBatches pipeline (Countdown SFT, digits) yields GLOBAL batches; each process keeps its
  row block, the blocks tile the batch with no gap or duplicate, and the state is shared."""
  from remdm_jax import data
  rows = np.arange(48).reshape(12, 4)

  def make(n):
    return rows[(np.arange(6) + 6 * n) % 12], np.full((6,), n)
  whole = data.StepBatches(make, {"seed": 0})
  parts = [whole.for_process(i, 3) for i in range(3)]
  for n in range(3):
    ref = next(whole)
    got = [next(p) for p in parts]
    np.testing.assert_array_equal(np.concatenate([g[0] for g in got]), ref[0])
    np.testing.assert_array_equal(np.concatenate([g[1] for g in got]), ref[1])
    assert all(g[0].shape == (2, 4) for g in got)
  assert parts[1].get_state() == whole.get_state() == {"step": 3, "seed": 0}
  with pytest.raises(ValueError, match="6 rows does not split over 4 processes"):
    next(whole.for_process(0, 4))
