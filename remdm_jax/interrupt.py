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
write those out and exit with status 130 (the shell's code for SIGINT), 143 after SIGTERM.

Entry points run their whole main body under `run_main` (`install_handlers`): SIGINT and SIGTERM
(pod pre-emption, `timeout`, the launcher `remdm_jax.launch` forwarding a Ctrl-C) are handled
alike, and a signal is never a traceback. What the handler does depends on where the main thread
is:
  * waiting in `call_interruptibly` (a batch in flight): it raises KeyboardInterrupt there, so the
    sampling loop raises `Interrupted` with the finished batches, which the entry point writes;
  * inside a `deferred()` region (a sampling loop between two batches): it only records the
    signal; the next `call_interruptibly` (or `note_saved`, or the end of `run_main`) acts on it;
  * anywhere else (imports, loading a checkpoint, compiling, computing metrics): it prints one line
    `<prog>: interrupted[ by SIGTERM]; <what is saved>` and ends the process at once
    (`hard_exit`), where `note_saved` tells what is already on disk (default "nothing written").
    Raising there instead would be unsafe: a KeyboardInterrupt raised inside a C++ extension's
    initialisation (jax's nanobind modules) aborts the process ("terminate called ...").
The exit status is 130 after SIGINT and 143 after SIGTERM; `remdm_jax.launch` treats both as a
graceful end.

A KeyboardInterrupt raised while Python runs a garbage-collector callback or a finaliser (JAX's
`_xla_gc_callback`) is swallowed by the interpreter ("Exception ignored in ..."): the handler
therefore records the signal first, and `call_interruptibly` raises KeyboardInterrupt for a
recorded signal before it starts a call and while it waits, so such a Ctrl-C still stops the work.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Optional

EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_TERMINATED = 143  # 128 + SIGTERM

# process-wide state of the handlers (entry points only; a library import installs nothing)
_state: dict = {"prog": None, "signal": None, "saved": None, "raise": 0, "defer": 0,
                "installed_by_main": False}


_abandoned: list = []  # `finished` events of the workers an interrupted call left running


def join_abandoned(timeout: float = 120.0) -> int:
  """Waits (at most `timeout` seconds in all) for the workers abandoned by interrupted
  `call_interruptibly` calls; returns how many are still running. For a process that goes on
  after an interrupt and then exits normally (e.g. a test session): a daemon thread still inside
  a compiled program at interpreter shutdown can abort the process."""
  deadline = time.monotonic() + timeout
  while _abandoned:
    if not _abandoned[0].wait(max(0.0, deadline - time.monotonic())):
      break
    _abandoned.pop(0)
  return len(_abandoned)


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
  finished = threading.Event()  # (Thread.is_alive can read False after an interrupted join)

  def work():
    try:
      box["result"] = fn(*args, **kwargs)
    except BaseException as e:  # pylint: disable=broad-except  (re-raised in the caller)
      box["error"] = e
    finally:
      finished.set()

  check_signal()  # recorded between two calls, or its KeyboardInterrupt was swallowed
  worker = threading.Thread(target=work, name="remdm-compute", daemon=True)
  _state["raise"] += 1  # a signal now raises KeyboardInterrupt here (module docstring)
  try:
    worker.start()
    while worker.is_alive():
      worker.join(poll)
      check_signal()
  finally:
    _state["raise"] -= 1
    if not finished.is_set():
      _abandoned.append(finished)
  if "error" in box:
    raise box["error"]
  return box["result"]


def signal_received() -> Optional[str]:
  """"SIGINT" / "SIGTERM" once a handler of `install_handlers` has run, else None."""
  sig = _state["signal"]
  return None if sig is None else signal.Signals(sig).name


def check_signal() -> None:
  """Raises KeyboardInterrupt if `install_handlers`' handler has recorded a signal (its own
  KeyboardInterrupt may have been swallowed, module docstring); no-op otherwise."""
  if _state["signal"] is not None:
    raise KeyboardInterrupt(f"interrupted by {signal_received()}")


def exit_status() -> int:
  """143 after SIGTERM, else 130."""
  return EXIT_TERMINATED if _state["signal"] == signal.SIGTERM else EXIT_INTERRUPTED


def program_line(message: str) -> str:
  """"<prog>: <message>", prog as `install_handlers` named it (else the script's name)."""
  prog = _state["prog"] or os.path.basename(sys.argv[0] or "python")
  return f"{prog}: {message}"


def _interrupted_line(detail: Optional[str] = None) -> str:
  by = " by SIGTERM" if _state["signal"] == signal.SIGTERM else ""
  return program_line(f"interrupted{by}; {detail or _state['saved'] or 'nothing written'}")


def _exit_interrupted() -> None:
  print(_interrupted_line(), file=sys.stderr)
  hard_exit(exit_status())


def _handler(signum, frame):
  del frame
  _state["signal"] = signum
  if _state["raise"] > 0:  # the main thread waits in call_interruptibly
    raise KeyboardInterrupt(f"interrupted by {signal.Signals(signum).name}")
  if _state["defer"] > 0:  # between two batches: the next call_interruptibly raises
    return
  _exit_interrupted()


def install_handlers(prog: Optional[str] = None) -> None:
  """SIGINT and SIGTERM -> the handler of the module docstring. For entry points only (it
  replaces the process's handlers; a no-op outside the main thread); `prog` names the program in
  the interrupted line. Entry modules whose imports are slow call it first, under
  `if __name__ == "__main__":`."""
  if prog is not None:
    _state["prog"] = prog
  if threading.current_thread() is not threading.main_thread():
    return
  for sig in (signal.SIGINT, signal.SIGTERM):
    signal.signal(sig, _handler)


class deferred:  # pylint: disable=invalid-name
  """`with deferred():` a signal is only recorded (the next `call_interruptibly` raises): for a
  sampling loop whose finished batches live in local variables between two calls."""

  def __enter__(self):
    _state["defer"] += 1
    return self

  def __exit__(self, *exc):
    _state["defer"] -= 1
    return False


def note_saved(what: Optional[str]) -> None:
  """Records what is already written, for the interrupted line from now on (e.g. "the 16 samples
  are in out.jsonl; metrics not computed"; None: "nothing written"). A safe point: a signal that
  was recorded but not yet acted on ends the process here, with that line."""
  _state["saved"] = what
  if _state["signal"] is not None and _state["installed_by_main"]:
    _exit_interrupted()


def run_main(fn: Callable[..., Optional[int]], *args, prog: str, **kwargs) -> int:
  """fn(*args, **kwargs) as an entry point's whole main body (module docstring): SIGINT and
  SIGTERM are handled by `install_handlers`' handler; a KeyboardInterrupt that reaches here (from
  a `call_interruptibly` the caller did not catch) or a signal recorded and not yet acted on is
  one line on stderr and `hard_exit` (130, 143 after SIGTERM). Returns fn's result (None -> 0);
  the previous SIGINT / SIGTERM handlers are restored when fn returns or raises another
  exception (an in-process caller, e.g. a test, keeps its own)."""
  main = threading.current_thread() is threading.main_thread()
  old = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)} if main else {}
  install_handlers(prog)
  _state["installed_by_main"] = True
  try:
    try:
      rc = fn(*args, **kwargs)
    except KeyboardInterrupt:
      _exit_interrupted()
    if _state["signal"] is not None and not rc:  # recorded in a deferred() region, not acted on
      _exit_interrupted()
  finally:  # returned (or raised another exception): as before, e.g. for an in-process caller
    for sig, handler in old.items():
      signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
    reset()
  return 0 if rc is None else rc


def reset() -> None:
  """Forgets a recorded signal and the saved note (tests)."""
  _state.update(signal=None, saved=None, installed_by_main=False)


def hard_exit(code: Optional[int] = None) -> None:
  """Flushes stdout / stderr and ends the process at once (`os._exit`): an abandoned compiled
  program in a worker thread could otherwise hold up interpreter shutdown. code None or
  EXIT_INTERRUPTED: `exit_status()` (130, 143 when the interruption was a SIGTERM)."""
  if code is None or code == EXIT_INTERRUPTED:
    code = exit_status()
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except (OSError, ValueError):
      pass
  os._exit(code)  # pylint: disable=protected-access
