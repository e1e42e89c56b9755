"""Local multi-process launcher: N JAX processes on this machine, one job.

  python -m remdm_jax.launch -n 2 --devices-per-process 2 -- train.py --config=... --workdir=...
  python -m remdm_jax.launch -n 2 -- sample.py --num_samples=16 --batch_size=16
  python -m remdm_jax.launch -n 2 -- -m remdm_jax.molecules.sample --num_samples=64

Process i runs the command (a leading `x.py`, `-m module` or `-c code` runs with this Python) with

  REMDM_COORDINATOR=127.0.0.1:PORT  REMDM_COORDINATOR_BIND=127.0.0.1:PORT
  REMDM_NUM_PROCESSES=N  REMDM_PROCESS_ID=i  [JAX_NUM_CPU_DEVICES=K]

PORT is a free 127.0.0.1 port chosen at run time (the coordinator listens on loopback only).
`remdm_jax.distributed` reads these variables; a SLURM or TPU-pod job sets the same three
REMDM_COORDINATOR / REMDM_NUM_PROCESSES / REMDM_PROCESS_ID per task (or the config's
`distributed` section, or REMDM_DISTRIBUTED=auto for JAX's cluster auto-detection), see README
"Multi-host". `--devices-per-process K` gives each process K fake CPU devices (CPU runs only).

Faults and signals (children run in their own sessions and die with the launcher, even on kill -9):
  * a child that exits non-zero or dies by a signal ends the job: the launcher prints one line
    naming it (`launch: process 1 (pid N) was killed by SIGKILL; stopping processes [0]`),
    SIGKILLs the others (they would otherwise wait in a collective until JAX's heartbeat
    timeout) and exits with that child's status (128 + signal number for a signal);
  * a child that exits 0, or 130 / 143 (interrupted after saving, as train.py does), while others
    still run: they get `--grace` seconds to finish too;
  * SIGTERM / SIGINT to the launcher (pod pre-emption, Ctrl-C) is forwarded as SIGTERM to every
    child (`train.py` then saves the same step in every process and exits 143); children still
    running `--grace` seconds later are SIGKILLed; a second SIGTERM / SIGINT kills them at once.
Output lines get a `[pI] ` prefix (stdout to stdout, stderr to stderr; gloo's
"[Gloo] Rank ... connected" lines are dropped) unless `--no-prefix`.

This module imports no JAX (the launcher starts in a fraction of a second).
"""
from __future__ import annotations

import argparse
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Callable, Optional, Sequence

# The environment contract between the launcher (or a SLURM / pod script) and
# `remdm_jax.distributed`.
ENV_COORDINATOR = "REMDM_COORDINATOR"
ENV_COORDINATOR_BIND = "REMDM_COORDINATOR_BIND"
ENV_NUM_PROCESSES = "REMDM_NUM_PROCESSES"
ENV_PROCESS_ID = "REMDM_PROCESS_ID"
ENV_DISTRIBUTED = "REMDM_DISTRIBUTED"  # "auto": jax.distributed.initialize() detects the cluster
ENV_CPU_DEVICES = "JAX_NUM_CPU_DEVICES"  # read by JAX itself
INTERRUPTED = (130, 143)  # train.py's statuses after saving on SIGINT / SIGTERM


def free_port(host: str = "127.0.0.1") -> int:
  """A TCP port that was free on `host` a moment ago (the OS picks it)."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind((host, 0))
    return s.getsockname()[1]


def child_env(base: dict, *, port: int, num_processes: int, process_id: int,
              devices_per_process: Optional[int] = None) -> dict:
  """The environment of process `process_id` (see the module docstring)."""
  addr = f"127.0.0.1:{port}"
  env = dict(base)
  env.update({ENV_COORDINATOR: addr, ENV_COORDINATOR_BIND: addr,
              ENV_NUM_PROCESSES: str(num_processes), ENV_PROCESS_ID: str(process_id),
              "PYTHONUNBUFFERED": "1"})
  env.pop(ENV_DISTRIBUTED, None)
  if devices_per_process is not None:
    env[ENV_CPU_DEVICES] = str(devices_per_process)
  return env


def command(argv: Sequence[str]) -> list[str]:
  """`x.py ...`, `-m module ...` and `-c code ...` run with this Python; anything else as
  given."""
  argv = list(argv)
  if argv and (argv[0].endswith(".py") or argv[0] in ("-m", "-c")):
    return [sys.executable] + argv
  return argv


def _die_with_parent():  # runs in the child between fork and exec (Linux)
  try:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
  except (OSError, AttributeError):
    pass


def _pump(stream, prefix: str, out) -> None:
  for raw in iter(stream.readline, b""):
    line = raw.decode(errors="replace")
    if line.startswith("[Gloo] Rank"):  # gloo's per-communicator chatter (stdout)
      continue
    out.write(prefix + line if line.endswith("\n") else prefix + line + "\n")
    out.flush()
  stream.close()


def describe(rc: int) -> str:
  """'exited with status 3' / 'was killed by SIGKILL'."""
  if rc < 0:
    try:
      return f"was killed by {signal.Signals(-rc).name}"
    except ValueError:
      return f"was killed by signal {-rc}"
  return f"exited with status {rc}"


def exit_status(rc: int) -> int:
  """A child's return code as a shell exit status (128 + n for signal n)."""
  return 128 - rc if rc < 0 else rc


def launch(num_processes: int, cmd: Sequence[str], *, devices_per_process: Optional[int] = None,
           grace: float = 30.0, prefix: bool = True, env: Optional[dict] = None,
           log: Optional[Callable[[str], None]] = None) -> int:
  """Runs `cmd` as processes 0..num_processes-1 of one JAX job on 127.0.0.1.

  Returns the job's exit status: 0 when every process exited 0, else the status of the first
  process that failed (128 + n for signal n). Raises ValueError for num_processes < 1, an empty
  command, devices_per_process < 1 or grace < 0.
  """
  if num_processes < 1:
    raise ValueError(f"-n {num_processes}: the number of processes must be >= 1")
  if not cmd:
    raise ValueError("no command given after --")
  if devices_per_process is not None and devices_per_process < 1:
    raise ValueError(f"--devices-per-process={devices_per_process} must be >= 1")
  if grace < 0:
    raise ValueError(f"--grace={grace} must be >= 0")
  log = log or (lambda m: print(f"launch: {m}", file=sys.stderr, flush=True))
  cmd = command(cmd)
  port = free_port()
  base = dict(os.environ if env is None else env)
  procs: list[subprocess.Popen] = []
  threads: list[threading.Thread] = []
  ended: dict[int, tuple[float, int]] = {}  # process index -> (time it ended, return code)
  lock = threading.Lock()
  state = {"signals": 0, "deadline": None}

  def reap(i, p):  # one thread per child: the order of death is known to the millisecond
    rc = p.wait()
    with lock:
      ended[i] = (time.monotonic(), rc)

  def signal_all(sig):
    for i, p in enumerate(procs):
      with lock:
        if i in ended:
          continue
        try:
          os.kill(p.pid, sig)  # not yet reaped: the pid is still this child's
        except ProcessLookupError:
          pass

  def on_signal(signum, frame):
    del frame
    state["signals"] += 1
    if state["signals"] == 1:
      log(f"{signal.Signals(signum).name}: asking all {num_processes} processes to save and "
          f"stop (SIGTERM); killing any still running in {grace:g} s; signal again to kill now")
      signal_all(signal.SIGTERM)
      state["deadline"] = time.monotonic() + grace
    else:
      log("second signal: killing all processes")
      signal_all(signal.SIGKILL)

  old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
  status = None
  try:
    for i in range(num_processes):
      e = child_env(base, port=port, num_processes=num_processes, process_id=i,
                    devices_per_process=devices_per_process)
      pipe = subprocess.PIPE if prefix else None
      try:
        p = subprocess.Popen(cmd, env=e, start_new_session=True, preexec_fn=_die_with_parent,
                             stdout=pipe, stderr=pipe)
      except OSError as err:
        log(f"cannot start {cmd[0]!r}: {err.strerror or err}")
        signal_all(signal.SIGKILL)
        return 127
      procs.append(p)
      t = threading.Thread(target=reap, args=(i, p), daemon=True)
      t.start()
      threads.append(t)
      if prefix:
        for stream, out in ((p.stdout, sys.stdout), (p.stderr, sys.stderr)):
          t = threading.Thread(target=_pump, args=(stream, f"[p{i}] ", out), daemon=True)
          t.start()
          threads.append(t)
    while True:
      with lock:
        done = dict(ended)
      # failures in the order the processes ended (the first is the cause: the others die of
      # it); 130 / 143 is an interrupted child that saved its state (train.py after a signal
      # reached one process directly): the others are finishing the same agreed step
      bad = sorted((t, i, rc) for i, (t, rc) in done.items() if rc not in (0,) + INTERRUPTED)
      if bad and status is None and state["signals"] == 0:
        status = exit_status(bad[0][2])
        alive = [j for j in range(num_processes) if j not in done]
        what = "; ".join(f"process {j} (pid {procs[j].pid}) {describe(rc)}" for _, j, rc in bad)
        log(f"{what}; stopping processes {alive}" if alive else what)
        signal_all(signal.SIGKILL)
      elif done and state["deadline"] is None:
        state["deadline"] = time.monotonic() + grace  # one ended well: the rest must follow
      if state["deadline"] is not None and time.monotonic() > state["deadline"]:
        alive = [j for j in range(num_processes) if j not in done]
        log(f"processes {alive} still running {grace:g} s later: killing them")
        signal_all(signal.SIGKILL)
        state["deadline"] = float("inf")
      if len(done) == num_processes:
        break
      time.sleep(0.02)
  finally:
    for s, h in old.items():
      signal.signal(s, h)
    signal_all(signal.SIGKILL)
    for t in threads:
      t.join(timeout=5)
  if status is None:  # the first process (in time) that ended non-zero, else 0
    bad = sorted((t, rc) for t, rc in ended.values() if rc != 0)
    status = exit_status(bad[0][1]) if bad else 0
  return status


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  usage = ("python -m remdm_jax.launch -n N [--devices-per-process K] [--grace S] [--no-prefix] "
           "-- PROGRAM [ARGS...]")
  if "--" not in argv:
    print(f"usage: {usage}\nlaunch: error: put the command after '--'", file=sys.stderr)
    return 2
  k = argv.index("--")
  ap = argparse.ArgumentParser(prog="python -m remdm_jax.launch", usage=usage,
                               description=__doc__.split("\n\n")[0])
  ap.add_argument("-n", "--num-processes", type=int, required=True)
  ap.add_argument("--devices-per-process", type=int, default=None,
                  help="fake CPU devices per process (sets JAX_NUM_CPU_DEVICES)")
  ap.add_argument("--grace", type=float, default=30.0,
                  help="seconds the others get after one process ended or after a forwarded "
                       "SIGTERM, before SIGKILL (default 30)")
  ap.add_argument("--no-prefix", action="store_true",
                  help="children write to this terminal directly (no [pI] prefix)")
  a = ap.parse_args(argv[:k])
  try:
    return launch(a.num_processes, argv[k + 1:], devices_per_process=a.devices_per_process,
                  grace=a.grace, prefix=not a.no_prefix)
  except ValueError as e:
    print(f"launch: error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
