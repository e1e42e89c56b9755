"""Ctrl-C during long compiled programs: stop within a bounded time, keep what was finished.

Python runs its signal handlers only between bytecodes of the main thread, so a KeyboardInterrupt
waits for as long as the main thread is blocked inside one compiled XLA program (a whole sampler
is one `lax.scan`: 80 s and more on a CPU). `call_interruptibly` runs such a call (dispatch and
the device-to-host copy that waits for it) in a worker thread while the main thread waits in
short polls: Ctrl-C then reaches the main thread within `poll` seconds, the call in flight is
abandoned (its result is dropped; the daemon thread dies with the process) and the caller keeps
what earlier calls returned. `hard_exit` ends the process without waiting for an abandoned
program (interpreter shutdown could block on it).

Sampling loops (`generation.generate`, `molecules.sample.sample_molecules`, the sweeps) wrap each
batch in `call_interruptibly` and raise `Interrupted` carrying the finished batches; entry points
write those out and exit with status 130 (the shell's code for SIGINT).
"""
from __future__ import annotations

import os
import sys
import threading
from typing import Any, Callable

EXIT_INTERRUPTED = 130


class Interrupted(KeyboardInterrupt):
  """A KeyboardInterrupt that carries the finished part of the work (`partial`, any object the
  raiser documents, e.g. the token rows of the finished batches)."""

  def __init__(self, partial: Any = None, message: str = "interrupted"):
    super().__init__(message)
    self.partial = partial


def call_interruptibly(fn: Callable, *args, poll: float = 0.05, **kwargs):
  """fn(*args, **kwargs), run in a daemon worker thread; returns its result or re-raises its
  exception. A KeyboardInterrupt (Ctrl-C) of the main thread propagates within about `poll`
  seconds even while fn is blocked in a compiled program; the worker is then abandoned. fn must
  do the blocking part itself (e.g. `jax.device_get` of the result). Called from another thread
  than the main one (where no Ctrl-C arrives), fn runs directly."""
  if threading.current_thread() is not threading.main_thread():
    return fn(*args, **kwargs)
  box: dict = {}

  def work():
    try:
      box["result"] = fn(*args, **kwargs)
    except BaseException as e:  # pylint: disable=broad-except  (re-raised in the caller)
      box["error"] = e

  worker = threading.Thread(target=work, name="remdm-compute", daemon=True)
  worker.start()
  while worker.is_alive():
    worker.join(poll)
  if "error" in box:
    raise box["error"]
  return box["result"]


def hard_exit(code: int = EXIT_INTERRUPTED) -> None:
  """Flushes stdout / stderr and ends the process at once (`os._exit`): an abandoned compiled
  program in a worker thread could otherwise hold up interpreter shutdown."""
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except (OSError, ValueError):
      pass
  os._exit(code)  # pylint: disable=protected-access
