"""Atomic file output: readers never see a half-written file (temp file in the same folder, then
`os.replace`; on any error the temp file is removed and the target is left untouched).

This is the one home of atomic writes in remdm-jax (samples, CSVs, plots, JSON metadata, data
caches). Temp files are named `.tmp-<pid>-<random>-<basename>`; one left behind by a killed
process (its pid no longer runs on this host) is removed by the next write of the same path.
"""
from __future__ import annotations

import contextlib
import os
import tempfile

TMP_PREFIX = ".tmp-"


def _umask() -> int:
  """The process umask, read without changing it where possible (Linux /proc; os.umask would
  briefly set it process-wide, racing other threads' file creation)."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("Umask:"):
          return int(line.split()[1], 8)
  except (OSError, ValueError, IndexError):
    pass
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


def _pid_alive(pid: int) -> bool:
  if pid == os.getpid():
    return True
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except OSError:  # e.g. PermissionError: the process exists
    return True
  return True


def stale_temp_files(path: str) -> list[str]:
  """Temp files of `path` left by processes that no longer run (absolute paths)."""
  path = os.path.abspath(os.fspath(path))
  folder, base = os.path.split(path)
  out = []
  try:
    names = os.listdir(folder)
  except OSError:
    return out
  for name in names:
    if not (name.startswith(TMP_PREFIX) and name.endswith("-" + base)):
      continue
    pid_text = name[len(TMP_PREFIX):].split("-", 1)[0]
    if pid_text.isdigit() and not _pid_alive(int(pid_text)):
      out.append(os.path.join(folder, name))
  return out


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w", **kwargs):
  """`with atomic_open(path, "wb") as f: ...` writes `path` atomically; creates its folder.

  On any exception (KeyboardInterrupt included) the temp file is removed and `path` is untouched.
  Stale temp files of `path` from killed processes are removed first. The file gets the mode an
  ordinary `open` would give it (0o666 minus the umask; `mkstemp` alone makes it 0o600).
  """
  path = os.path.abspath(os.fspath(path))
  folder = os.path.dirname(path)
  os.makedirs(folder, exist_ok=True)
  for stale in stale_temp_files(path):
    with contextlib.suppress(OSError):
      os.remove(stale)
  fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{os.getpid()}-",
                             suffix="-" + os.path.basename(path), dir=folder)
  try:
    with os.fdopen(fd, mode, **kwargs) as f:
      yield f
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
    raise


def check_writable_folder(folder: str, flag: str, shown: str) -> None:
  """ValueError (one line naming `flag`=`shown`) unless `folder` exists as a writable directory
  or could be created: its nearest existing ancestor must be a writable directory (probed with a
  temp file, e.g. /proc). Creates nothing (the check runs before any work; a failing command
  leaves no empty folders behind)."""
  folder = os.path.abspath(folder)
  probe = folder
  while not os.path.lexists(probe):
    probe = os.path.dirname(probe)
  try:
    if not os.path.isdir(probe):
      raise NotADirectoryError(20, "Not a directory", probe)
    with tempfile.TemporaryFile(dir=probe, prefix=".tmp-probe-"):
      pass
  except OSError as e:
    raise ValueError(f"{flag}={shown}: cannot write to {folder} ({e.strerror or e})") from e


def check_output_path(path: str, overwrite: bool, flag: str = "--output") -> str:
  """The absolute output path, checked BEFORE any work: ValueError (one line, naming `flag`) if it
  is a directory, exists without `overwrite`, or its folder cannot be created or written
  (`check_writable_folder`; nothing is created)."""
  path = os.path.abspath(os.path.expanduser(path))
  if os.path.isdir(path):
    raise ValueError(f"{flag}={path} is a directory; give a file path")
  if os.path.lexists(path) and not overwrite:
    raise ValueError(f"{flag}={path} exists; pass --overwrite to replace it")
  check_writable_folder(os.path.dirname(path), flag, path)
  return path


def check_output_dir(path: str, overwrite: bool, *, flag: str, is_ours, what: str) -> str:
  """The absolute path of an output FOLDER, checked BEFORE any work: ValueError (one line, naming
  `flag`) if it is a file, exists without `overwrite`, exists but `is_ours(path)` is False (an
  output folder replaces only a folder the tool itself wrote, never an arbitrary one), or its
  parent cannot be created or written (`check_writable_folder`; nothing is created).

  Args:
    is_ours: path -> bool, recognises a folder this tool wrote (e.g. by its metadata.json).
    what: what the folder holds, for the message ("digits model").
  """
  path = os.path.abspath(os.path.expanduser(os.fspath(path)))
  if os.path.lexists(path) and not os.path.isdir(path):
    raise ValueError(f"{flag}={path} exists and is not a folder; give a new folder path")
  if os.path.isdir(path):
    if not overwrite:
      raise ValueError(f"{flag}={path} exists; pass --overwrite to replace it")
    if not is_ours(path):
      raise ValueError(f"{flag}={path} is not a {what} folder written by this tool; refusing "
                       "to replace it (give a new path)")
  check_writable_folder(os.path.dirname(path), flag, path)
  return path
