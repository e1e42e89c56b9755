"""Multi-process start-up and host-level agreement: the only module that calls `jax.distributed`.

A single-host run (1 CPU, 1 machine with 8 GPUs) needs nothing. A multi-process run (several GPU
machines, a TPU pod, or `python -m remdm_jax.launch -n 2` on one machine) must call
`jax.distributed.initialize` before any other JAX call that creates the backend; `maybe_initialize`
does so when the config or the environment asks for it, in this order:
  1. the config's `distributed` section: explicit coordinator_address ("host:port"),
     num_processes, process_id; or auto=True (JAX's cluster detection: TPU pods, SLURM, Open MPI);
  2. else the environment: REMDM_COORDINATOR, REMDM_NUM_PROCESSES, REMDM_PROCESS_ID (+ optional
     REMDM_COORDINATOR_BIND) as set by `remdm_jax.launch` (or by a SLURM / pod script), or
     REMDM_DISTRIBUTED=auto;
  3. else nothing (one process).
Timeouts (seconds; env REMDM_INIT_TIMEOUT / REMDM_HEARTBEAT_TIMEOUT / REMDM_SHUTDOWN_TIMEOUT
override the config): initialization 300 (a process that never starts), heartbeat 60 (a lost
process: the survivors abort after about this long; the local launcher stops them at once),
shutdown 60 (the exit barrier). JAX's own defaults are 300 / 100 / 300.

After a multi-process initialisation (num_processes > 1):
  * an uncaught exception prints its traceback and ends the process at once with status 1
    (`os._exit`), so the other processes (or the launcher) see the failure immediately instead of
    everyone waiting `shutdown_timeout` in JAX's exit barrier and then aborting (SIGABRT);
  * with `preemption_sync=True` (training), JAX's pre-emption notifier owns SIGTERM: the signal
    no longer ends the process; `preemption_sync_point(k)` turns True at the same loop count k
    in every process once ANY process got SIGTERM (`training.trainer` saves and stops there).
    Entry points that never check it (sampling) pass preemption_sync=False, keeping their own
    SIGTERM handling (`remdm_jax.interrupt.run_main`: SIGTERM like Ctrl-C, finished batches
    written, exit 143).
CPU runs use gloo collectives (`jax_cpu_collectives_implementation`); note that a 1-process run
only matches a multi-process run bitwise when it also initialises (num_processes=1): plain XLA
CPU collectives add in another order than gloo (README "Multi-host").
"""
from __future__ import annotations

import dataclasses
import os
import sys

import jax

from remdm_jax.launch import (ENV_COORDINATOR, ENV_COORDINATOR_BIND, ENV_DISTRIBUTED,
                              ENV_NUM_PROCESSES, ENV_PROCESS_ID)

ENV_TIMEOUTS = {"initialization_timeout": "REMDM_INIT_TIMEOUT",
                "heartbeat_timeout": "REMDM_HEARTBEAT_TIMEOUT",
                "shutdown_timeout": "REMDM_SHUTDOWN_TIMEOUT"}


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
  """How (and whether) to join a multi-process JAX run.

  Attributes:
    coordinator_address: "host:port" of process 0; None = not configured.
    num_processes: total number of processes (hosts).
    process_id: this process's index in [0, num_processes).
    auto: call `jax.distributed.initialize()` with no address (cluster auto-detection, TPU pods,
      SLURM).
    local_device_ids: optional devices visible to this process (GPU / TPU; no effect on CPU).
    coordinator_bind_address: where process 0's coordinator listens, e.g. "127.0.0.1:1234"
      (None: JAX's default, all interfaces "[::]:port").
    initialization_timeout, heartbeat_timeout, shutdown_timeout: seconds (module docstring).
  """

  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  auto: bool = False
  local_device_ids: tuple[int, ...] | None = None
  coordinator_bind_address: str | None = None
  initialization_timeout: int = 300
  heartbeat_timeout: int = 60
  shutdown_timeout: int = 60

  def __post_init__(self):
    explicit = (self.coordinator_address, self.num_processes, self.process_id)
    if any(v is not None for v in explicit) and any(v is None for v in explicit):
      raise ValueError(
          "distributed: coordinator_address, num_processes and process_id must be given together "
          f"(got {self.coordinator_address!r}, {self.num_processes!r}, {self.process_id!r})")
    if self.num_processes is not None and self.num_processes < 1:
      raise ValueError(f"distributed.num_processes={self.num_processes} must be >= 1")
    if self.process_id is not None and not 0 <= self.process_id < (self.num_processes or 1):
      raise ValueError(f"distributed.process_id={self.process_id} must lie in "
                       f"[0, {self.num_processes})")
    for name in ENV_TIMEOUTS:
      v = getattr(self, name)
      if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"distributed.{name}={v!r} must be an int >= 1 (seconds)")
    for name in ("coordinator_address", "coordinator_bind_address"):
      v = getattr(self, name)
      if v is not None and (not isinstance(v, str) or ":" not in v):
        raise ValueError(f"distributed.{name}={v!r} must be 'host:port'")

  @property
  def enabled(self) -> bool:
    return self.auto or self.coordinator_address is not None


def config_from_env(environ=None) -> DistributedConfig | None:
  """The DistributedConfig that the environment describes (module docstring), or None.

  Raises ValueError (one line naming the variable) for a partial or malformed set."""
  env = os.environ if environ is None else environ
  timeouts = {}
  for field, var in ENV_TIMEOUTS.items():
    if env.get(var):
      timeouts[field] = _env_int(env, var)
  if env.get(ENV_DISTRIBUTED):
    if env[ENV_DISTRIBUTED] != "auto":
      raise ValueError(f"{ENV_DISTRIBUTED}={env[ENV_DISTRIBUTED]!r}: the only value is 'auto'")
    return DistributedConfig(auto=True, **timeouts)
  names = (ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID)
  given = [n for n in names if env.get(n)]
  if not given:
    return None
  if len(given) != len(names):
    missing = [n for n in names if n not in given]
    raise ValueError(f"environment sets {', '.join(given)} but not {', '.join(missing)}")
  return DistributedConfig(coordinator_address=env[ENV_COORDINATOR],
                           num_processes=_env_int(env, ENV_NUM_PROCESSES),
                           process_id=_env_int(env, ENV_PROCESS_ID),
                           coordinator_bind_address=env.get(ENV_COORDINATOR_BIND) or None,
                           **timeouts)


def _env_int(env, var: str) -> int:
  try:
    return int(env[var])
  except ValueError:
    raise ValueError(f"{var}={env[var]!r} must be an integer") from None


def is_initialized() -> bool:
  fn = getattr(jax.distributed, "is_initialized", None)
  return bool(fn()) if fn is not None else False


_is_initialized = is_initialized  # old private name


def resolve(cfg: DistributedConfig | None) -> DistributedConfig | None:
  """The config to use: `cfg` when it configures a run, else the environment's (or None)."""
  if cfg is not None and cfg.enabled:
    return cfg
  return config_from_env()


def maybe_initialize(cfg: DistributedConfig | None = None, *,
                     preemption_sync: bool = True) -> bool:
  """Joins the multi-process run that `cfg` or the environment describes (module docstring).
  Idempotent; must run before anything creates the JAX backend.

  Args:
    cfg: the config's distributed section (None / not enabled: use the environment).
    preemption_sync: keep JAX's SIGTERM pre-emption notifier (training); False restores the
      default SIGTERM behaviour (sampling and other entry points that do not check
      `preemption_sync_point`).
  Returns:
    True if JAX's distributed runtime is initialised after the call (now or before).
  Raises:
    ValueError for a malformed environment; RuntimeError (from JAX) when the backend already
    exists.
  """
  if is_initialized():
    return True
  cfg = resolve(cfg)
  if cfg is None:
    return False
  jax.config.update("jax_enable_preemption_service", bool(preemption_sync))
  if not jax.config.jax_cpu_collectives_implementation:  # gloo is JAX 0.10's default
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  kwargs = dict(initialization_timeout=cfg.initialization_timeout,
                heartbeat_timeout_seconds=cfg.heartbeat_timeout,
                shutdown_timeout_seconds=cfg.shutdown_timeout)
  if cfg.local_device_ids is not None:
    kwargs["local_device_ids"] = list(cfg.local_device_ids)
  if cfg.coordinator_bind_address is not None:
    kwargs["coordinator_bind_address"] = cfg.coordinator_bind_address
  if cfg.auto and cfg.coordinator_address is None:
    jax.distributed.initialize(**kwargs)
  else:
    jax.distributed.initialize(coordinator_address=cfg.coordinator_address,
                               num_processes=cfg.num_processes, process_id=cfg.process_id,
                               **kwargs)
  if jax.process_count() > 1:
    install_fast_exit()
  return True


def initialize_from_env(*, preemption_sync: bool = False) -> bool:
  """`maybe_initialize(None)` for entry points without a config (sample.py, molecule sampler,
  LLaDA CLI): joins the launcher's / cluster's job when the environment describes one."""
  return maybe_initialize(None, preemption_sync=preemption_sync)


# ----------------------------------------------------------------------------------------------
# host-level agreement (every function here must be called by all processes in the same order)
# ----------------------------------------------------------------------------------------------

def preemption_sync_enabled() -> bool:
  """True when `preemption_sync_point` is live (initialised with preemption_sync=True)."""
  from jax._src import distributed as jd
  return is_initialized() and getattr(jd.global_state, "preemption_sync_manager", None) is not None


def preemption_sync_point(count: int) -> bool:
  """JAX's pre-emption sync point: True in every process at the same `count` once any process
  received SIGTERM (JAX picks max(counts at the notice) + 1). Call it once per loop iteration
  with count = 1, 2, 3, ... (iterations of THIS run, so that a notice that arrives before the
  loop stops it at iteration 1). About 0 ms; False when not initialised."""
  from jax.experimental import multihost_utils
  return bool(multihost_utils.reached_preemption_sync_point(int(count)))


def sync(name: str) -> None:
  """Barrier over all processes (no-op in a single process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def any_process(flag: bool) -> bool:
  """True in every process if `flag` is True in any process (a collective; single process: flag)."""
  if jax.process_count() == 1:
    return bool(flag)
  import numpy as np
  from jax.experimental import multihost_utils
  return bool(np.max(multihost_utils.process_allgather(np.int32(bool(flag)))))


def fast_exit(code: int) -> None:
  """Flushes stdout / stderr and ends the process now (no atexit handlers, so no JAX shutdown
  barrier that would wait for processes stuck in a collective with this one)."""
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except Exception:  # pragma: no cover
      pass
  os._exit(code)


_FAST_EXIT_INSTALLED = False


def install_fast_exit() -> None:
  """sys.excepthook: print the uncaught exception with this process's index, then `fast_exit(1)`
  (module docstring). Installed by `maybe_initialize` when num_processes > 1."""
  global _FAST_EXIT_INSTALLED
  if _FAST_EXIT_INSTALLED:
    return
  previous = sys.excepthook

  def hook(etype, value, tb):
    if issubclass(etype, (SystemExit,)):  # pragma: no cover (sys.exit never reaches the hook)
      return previous(etype, value, tb)
    try:
      print(f"error: process {jax.process_index()} of {jax.process_count()} failed:",
            file=sys.stderr)
      previous(etype, value, tb)
    finally:
      fast_exit(1)

  sys.excepthook = hook
  _FAST_EXIT_INSTALLED = True
