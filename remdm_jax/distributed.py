"""Multi-host start-up: the only module that calls `jax.distributed`.

A single-host run (1 CPU, 1 machine with 8 GPUs) needs nothing. A multi-host run (several GPU
machines, a TPU pod) must call `jax.distributed.initialize` before any other JAX call; `maybe_initialize`
does so only when the config asks for it:
  * explicit: coordinator_address ("host:port"), num_processes, process_id (e.g. from a launcher);
  * auto=True: let JAX discover everything (TPU pods, SLURM, Open MPI, ...).
"""
from __future__ import annotations

import dataclasses

import jax


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
  """How (and whether) to join a multi-process JAX run.

  Attributes:
    coordinator_address: "host:port" of process 0; None = not configured.
    num_processes: total number of processes (hosts).
    process_id: this process's index in [0, num_processes).
    auto: call `jax.distributed.initialize()` with no arguments (cluster auto-detection, TPU pods).
    local_device_ids: optional devices visible to this process.
  """

  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  auto: bool = False
  local_device_ids: tuple[int, ...] | None = None

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

  @property
  def enabled(self) -> bool:
    return self.auto or self.coordinator_address is not None


def _is_initialized() -> bool:
  fn = getattr(jax.distributed, "is_initialized", None)
  return bool(fn()) if fn is not None else False


def maybe_initialize(cfg: DistributedConfig | None) -> bool:
  """Joins the multi-process run if `cfg` configures one. Idempotent.

  Returns:
    True if JAX's distributed runtime is initialised after the call (now or before).
  """
  if cfg is None or not cfg.enabled:
    return _is_initialized()
  if _is_initialized():
    return True
  if cfg.auto and cfg.coordinator_address is None:
    jax.distributed.initialize()
  else:
    kwargs = {}
    if cfg.local_device_ids is not None:
      kwargs["local_device_ids"] = list(cfg.local_device_ids)
    jax.distributed.initialize(coordinator_address=cfg.coordinator_address,
                               num_processes=cfg.num_processes, process_id=cfg.process_id,
                               **kwargs)
  return True
