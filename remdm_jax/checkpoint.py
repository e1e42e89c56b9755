"""Checkpoints: the only module of remdm-jax that imports orbax.

Two formats:

1. **Training checkpoints** (`TrainCheckpointer`): an orbax `CheckpointManager` under
   `<workdir>/checkpoints/<step>/` with three items:
     state: the whole `TrainState` (step, params, opt_state, ema_params, key) as a nested dict of
            arrays keyed by the pytree path (so any pytree type, nnx.State included, round-trips);
     data:  the data iterator's position (JSON);
     meta:  JSON: {"model_config": ..., "config": ..., "step": ...}.
   Saves are asynchronous; a step still being written lives in a `*.orbax-checkpoint-tmp*` folder and
   is never listed as finished. `save` checks orbax's return value (False = nothing written).
   `restore` places every leaf directly onto the given shardings (ShapeDtypeStruct leaves).

2. **Params checkpoints** (`save_params` / `load_params` / `export_params`): one portable directory
     <dir>/params/            orbax (OCDBT) tree of float32 arrays, nested dict keyed by pytree path
     <dir>/model_config.json  the model config dict (DiTConfig.to_dict())
     <dir>/metadata.json      free-form metadata (+ "format": "remdm-jax-params", "version": 1,
                              "sha256": {relative path: hex digest} of every other file)
   written atomically: everything goes to the hidden sibling `.<name>.remdm-partial` first, then
   one rename. An existing path is never replaced unless `overwrite=True`, and even then only if
   it is a model folder that remdm-jax wrote (`is_model_folder`): an arbitrary folder or a file
   at the output path is refused, never deleted. `load_params` verifies the recorded checksums
   (and, for folders written before checksums existed, that every stored float is finite) and
   names the damaged file. It also accepts a training workdir (or its `checkpoints/` folder): it
   returns the EMA parameters of the latest finished step.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from typing import Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp

from remdm_jax.fileio import atomic_open, check_writable_folder
from remdm_jax.sharding import param_shardings, path_str

PARAMS_FORMAT = "remdm-jax-params"
PARAMS_VERSION = 1
CHECKPOINTS_SUBDIR = "checkpoints"


# ----------------------------------------------------------------------------------------------
# pytree <-> nested dict keyed by path
# ----------------------------------------------------------------------------------------------

def tree_to_nested(tree) -> dict:
  """Any pytree -> nested dict {str: ... {str: leaf}} following the leaves' paths.

  nnx Variables contribute their path only (not ".value"), so an nnx.State and its pure-dict form
  give the same nested dict.
  """
  out: dict = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    parts = path_str(path).split("/") if path else ["_"]
    node = out
    for p in parts[:-1]:
      node = node.setdefault(p, {})
      if not isinstance(node, dict):
        raise ValueError(f"pytree path {'/'.join(parts)} collides with a leaf")
    if parts[-1] in node:
      raise ValueError(f"pytree path {'/'.join(parts)} occurs twice")
    node[parts[-1]] = leaf
  return out


def nested_to_tree(nested: Mapping, target):
  """Inverse of `tree_to_nested`: the leaves of `target` replaced by the values in `nested`.

  Raises ValueError naming the first path of `target` that `nested` lacks.
  """
  def pick(path, _):
    node = nested
    key = path_str(path) if path else "_"
    for p in key.split("/"):
      if not isinstance(node, Mapping) or p not in node:
        raise ValueError(f"checkpoint has no entry for parameter {key!r}")
      node = node[p]
    return node
  return jax.tree_util.tree_map_with_path(pick, target)


def _nested_paths(nested: Mapping, prefix="") -> dict:
  out = {}
  for k, v in nested.items():
    key = f"{prefix}/{k}" if prefix else str(k)
    if isinstance(v, Mapping):
      out.update(_nested_paths(v, key))
    else:
      out[key] = v
  return out


def _abstract_from_metadata(meta_tree, sharding_for) -> dict:
  """Orbax array metadata tree -> ShapeDtypeStruct tree (sharding_for(path, shape) gives placement)."""
  def conv(path, m):
    shape = tuple(m.shape)
    return jax.ShapeDtypeStruct(shape, m.dtype, sharding=sharding_for(path_str(path), shape))
  return jax.tree_util.tree_map_with_path(
      conv, meta_tree, is_leaf=lambda x: hasattr(x, "shape") and hasattr(x, "dtype"))


def _single_device_sharding():
  return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])


def _write_json(path: str, obj) -> None:
  with atomic_open(path) as f:
    json.dump(obj, f, indent=2, sort_keys=True, default=json_default)
    f.write("\n")


def json_default(o):
  """`json.dump(default=...)` for numpy scalars, tuples and sets (other objects: str(o))."""
  if isinstance(o, (np.integer,)):
    return int(o)
  if isinstance(o, (np.floating,)):
    return float(o)
  if isinstance(o, (tuple, set)):
    return list(o)
  return str(o)


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


# ----------------------------------------------------------------------------------------------
# training checkpoints
# ----------------------------------------------------------------------------------------------

def checkpoint_dir(workdir: str) -> str:
  """`<workdir>/checkpoints`; a path that already is a checkpoints folder is returned as is."""
  workdir = os.path.abspath(os.fspath(workdir))
  sub = os.path.join(workdir, CHECKPOINTS_SUBDIR)
  return sub if os.path.isdir(sub) or not _has_step_dirs(workdir) else workdir


def _has_step_dirs(path: str) -> bool:
  return os.path.isdir(path) and any(n.isdigit() for n in os.listdir(path))


class TrainCheckpointer:
  """orbax CheckpointManager for training: save every `save_every` steps, keep the last `keep`.

  Args:
    directory: the checkpoints folder (created if needed), e.g. `checkpoint_dir(workdir)`.
    save_every: `should_save(step)` is True when step % save_every == 0.
    keep: number of finished checkpoints kept (older ones are deleted).
    async_save: write in a background thread (call `wait_until_finished` before reading).
  """

  def __init__(self, directory: str, *, save_every: int = 1000, keep: int = 3,
               async_save: bool = True):
    if save_every < 1:
      raise ValueError(f"checkpoint.save_every={save_every} must be >= 1")
    if keep < 1:
      raise ValueError(f"checkpoint.keep={keep} must be >= 1")
    self.directory = os.path.abspath(os.fspath(directory))
    self.save_every = save_every
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=async_save,
        cleanup_tmp_directories=True)
    self._mngr = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "data": ocp.JsonCheckpointHandler(),
                       "meta": ocp.JsonCheckpointHandler()})

  # -- queries ---------------------------------------------------------------------------------
  def latest_step(self) -> int | None:
    """Latest *finished* step (in-progress `*-tmp` folders are never listed)."""
    self._mngr.reload()
    return self._mngr.latest_step()

  def all_steps(self) -> list[int]:
    self._mngr.reload()
    return sorted(self._mngr.all_steps())

  def should_save(self, step: int) -> bool:
    return step % self.save_every == 0

  # -- save / restore --------------------------------------------------------------------------
  def save(self, step: int, state, *, data_state: Mapping | None = None,
           meta: Mapping | None = None) -> None:
    """Starts an (async) save of `state` at `step`; raises RuntimeError if orbax declines."""
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(tree_to_nested(state)),
        data=ocp.args.JsonSave(dict(data_state or {})),
        meta=ocp.args.JsonSave(json.loads(json.dumps(
            {"step": int(step), **dict(meta or {})}, default=json_default))))
    try:
      saved = self._mngr.save(int(step), args=args, force=True)
    except ocp.checkpoint_manager.StepAlreadyExistsError:
      saved = False
    if not saved:
      raise RuntimeError(f"checkpoint for step {step} was not written to {self.directory} "
                         "(a checkpoint for this step already exists?)")

  def wait_until_finished(self) -> None:
    """Blocks until pending saves are written; raises RuntimeError if one failed."""
    try:
      self._mngr.wait_until_finished()
    except Exception as e:
      raise self._save_error(e) from e

  def check_for_errors(self) -> None:
    """Raises RuntimeError (one line naming the step and folder) if a background save has
    failed; cheap, meant to be called after every training step."""
    try:
      self._mngr.check_for_errors()
    except Exception as e:
      raise self._save_error(e) from e
    ref = getattr(self._mngr, "_finalize_thread", None)
    thread = ref.get() if hasattr(ref, "get") else None
    if thread is not None and not thread.is_alive() and getattr(thread, "exception", None):
      exc = thread.exception
      try:
        self._mngr.wait_until_finished()  # lets orbax drop the failed step
      except Exception:
        pass
      raise self._save_error(exc, getattr(thread, "step", lambda: None)()) from exc

  def _save_error(self, e: BaseException, step=None) -> RuntimeError:
    if isinstance(e, RuntimeError) and str(e).startswith("checkpoint save"):
      return e
    what = f"of step {step} " if step is not None else ""
    msg = " ".join(str(e).split()) or type(e).__name__
    return RuntimeError(f"checkpoint save {what}to {self.directory} failed: "
                        f"{type(e).__name__}: {msg[:300]}")

  def restore(self, abstract_state, step: int | None = None):
    """Restores (state, data_state, meta) at `step` (default: latest finished).

    Args:
      abstract_state: pytree like the saved state whose leaves are `jax.ShapeDtypeStruct`s with
        `.sharding` set: every restored array lands directly on that sharding.
    """
    self.wait_until_finished()
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no finished checkpoint in {self.directory}")
    out = self._mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(tree_to_nested(abstract_state)),
        data=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore()))
    state = nested_to_tree(out["state"], abstract_state)
    return state, dict(out["data"] or {}), dict(out["meta"] or {})

  def restore_subtree(self, key: str, step: int | None = None, *, sharding=None):
    """Restores one top-level entry of the saved state (e.g. "ema_params") as a nested dict.

    Returns (nested dict of arrays, meta dict). `sharding` as in `load_params` (no Mesh here).
    """
    self.wait_until_finished()
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no finished checkpoint in {self.directory}")
    meta_tree = self.state_metadata(step)
    if key not in meta_tree:
      raise ValueError(f"checkpoint step {step} in {self.directory} has no {key!r}; "
                       f"entries: {sorted(meta_tree)}")
    sharding_for = _sharding_fn(sharding)
    target = {key: _abstract_from_metadata(meta_tree[key], sharding_for)}
    ckptr = ocp.PyTreeCheckpointer()
    restored = ckptr.restore(
        os.path.join(self.directory, str(step), "state"),
        args=ocp.args.PyTreeRestore(
            item=target,
            restore_args=jax.tree.map(
                lambda s: ocp.ArrayRestoreArgs(sharding=s.sharding, global_shape=s.shape,
                                               dtype=s.dtype), target),
            partial_restore=True))
    ckptr.close()
    meta = self._mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    return restored[key], dict(meta or {})

  def state_metadata(self, step: int) -> dict:
    """Nested dict of orbax array metadata (.shape, .dtype) of the saved state at `step`."""
    tree = self._mngr.item_metadata(step)["state"]
    return tree.tree if hasattr(tree, "tree") else tree

  def restore_meta(self, step: int | None = None) -> dict:
    """The JSON `meta` item of `step` (default: latest finished)."""
    step = self.latest_step() if step is None else step
    return dict(self._mngr.restore(
        step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"] or {})

  def close(self, *, raise_errors: bool = True) -> None:
    """Waits for pending saves and releases the manager; a failed save raises RuntimeError
    (or is ignored with raise_errors=False, for cleanup while another error propagates)."""
    try:
      self.wait_until_finished()
    except RuntimeError:
      if raise_errors:
        self._mngr.close()
        raise
    self._mngr.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


# ----------------------------------------------------------------------------------------------
# params checkpoints
# ----------------------------------------------------------------------------------------------

def _sharding_fn(sharding):
  """sharding argument -> f(path, shape) -> Sharding."""
  if sharding is None:
    dev = _single_device_sharding()
    return lambda path, shape: dev
  if isinstance(sharding, jax.sharding.Sharding):
    return lambda path, shape: sharding
  if callable(sharding):
    return sharding
  raise ValueError(f"sharding={sharding!r} must be None, a jax.sharding.Sharding, a Mesh or a "
                   "callable (path, shape) -> Sharding")


def _host_if_local(x):
  """A jax.Array that lives on this process's devices only (e.g. `load_params`' default single
  device placement) -> numpy; orbax refuses to save host-local arrays in a multi-process run
  ("Cannot serialize host local jax.Array"). Every process holds the same value."""
  if isinstance(x, jax.Array) and x.is_fully_addressable:
    return np.asarray(jax.device_get(x))
  return x


def _to_float32(x):
  if hasattr(x, "dtype") and jax.numpy.issubdtype(x.dtype, jax.numpy.floating):
    return x.astype(jax.numpy.float32)
  return x


# The entries a model folder written by remdm-jax may hold (save_params: params/, model_config.json,
# metadata.json; the digits classifier: params.npz, metadata.json).
MODEL_FOLDER_ENTRIES = frozenset({"params", "params.npz", "model_config.json", "metadata.json"})
_PARTIAL_SUFFIX = ".remdm-partial"
_OLD_SUFFIX = ".remdm-old"


def is_model_folder(path) -> bool:
  """True if `path` is a folder that a remdm-jax tool wrote for one model (and so may be replaced
  by `save_params(..., overwrite=True)`): a directory (not a link) whose entries all lie in
  `MODEL_FOLDER_ENTRIES` and whose metadata.json is a JSON object with a "format" starting with
  "remdm-jax". Anything else (a file, a project folder, a training workdir) is False."""
  path = os.path.abspath(os.fspath(path))
  if os.path.islink(path) or not os.path.isdir(path):
    return False
  try:
    names = set(os.listdir(path))
    with open(os.path.join(path, "metadata.json")) as f:
      meta = json.load(f)
  except (OSError, ValueError):
    return False
  fmt = meta.get("format") if isinstance(meta, dict) else None
  return names <= MODEL_FOLDER_ENTRIES and isinstance(fmt, str) and fmt.startswith("remdm-jax")


def _describe(path: str) -> str:
  if os.path.islink(path):
    return "a symbolic link"
  if not os.path.isdir(path):
    return "a file"
  try:
    names = sorted(os.listdir(path))
  except OSError:
    return "an unreadable folder"
  other = [n for n in names if n not in MODEL_FOLDER_ENTRIES]
  if other:
    shown = ", ".join(other[:3]) + (", ..." if len(other) > 3 else "")
    return f"a folder holding files remdm-jax did not write ({shown})"
  return "a folder without a remdm-jax metadata.json"


def check_model_output(path, overwrite: bool, *, flag: str = "--output",
                       overwrite_flag: str = "--overwrite") -> str:
  """The absolute path of a model output folder, checked BEFORE any work.

  A new path is fine (its parent must be creatable and writable). An existing path needs
  `overwrite`, and even then must be a model folder remdm-jax wrote (`is_model_folder`): a file,
  a link or any other folder is never replaced. Raises ValueError (one line naming `flag`, the
  path and what is there) otherwise.
  """
  path = os.path.abspath(os.path.expanduser(os.fspath(path)))
  if os.path.lexists(path):
    if not is_model_folder(path):
      raise ValueError(f"{flag}={path} exists and is {_describe(path)}, not a model folder "
                       "written by remdm-jax; it is never replaced: choose a new path")
    if not overwrite:
      raise ValueError(f"{flag}={path} exists (a remdm-jax model folder); pass {overwrite_flag} "
                       "to replace it, or choose a new path")
  check_writable_folder(os.path.dirname(path), flag, path)
  return path


def _sibling(directory: str, suffix: str) -> str:
  head, base = os.path.split(directory)
  return os.path.join(head, f".{base}{suffix}")


def _remove_own_leftover(path: str) -> None:
  """Removes a leftover `.<name>.remdm-partial` / `.remdm-old` folder of an interrupted save; one
  holding anything save_params does not write is refused (ValueError), never deleted."""
  if not os.path.lexists(path):
    return
  if (os.path.islink(path) or not os.path.isdir(path)
      or not set(os.listdir(path)) <= MODEL_FOLDER_ENTRIES):
    raise ValueError(f"{path} exists and is not a leftover of an interrupted save_params "
                     "(it holds other files); move it away")
  shutil.rmtree(path)


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def _file_checksums(directory: str, skip=("metadata.json",)) -> dict:
  """{relative path ('/'-separated): sha256 hex} of every file under `directory` but `skip`."""
  out = {}
  for root, _, files in os.walk(directory):
    for name in files:
      full = os.path.join(root, name)
      rel = os.path.relpath(full, directory).replace(os.sep, "/")
      if rel not in skip:
        out[rel] = _sha256(full)
  return dict(sorted(out.items()))


def verify_checksums(directory, metadata: Mapping) -> bool:
  """Checks the files of a params folder against `metadata["sha256"]` (written by save_params).

  Returns False if the metadata records no checksums (a folder written before they existed),
  True if every recorded file is present with the recorded digest. Raises ValueError (one line
  naming the folder and the first missing or differing file) otherwise. Files not recorded are
  not read (orbax never adds any).
  """
  sums = metadata.get("sha256")
  if sums is None:
    return False
  directory = os.path.abspath(os.fspath(directory))
  if not isinstance(sums, Mapping):
    raise ValueError(f"{directory}/metadata.json: 'sha256' must map file names to digests")
  for rel, want in sums.items():
    full = os.path.join(directory, *str(rel).split("/"))
    if not os.path.isfile(full):
      raise ValueError(f"{directory}: unreadable or truncated params checkpoint ({rel}: missing, "
                       "but recorded in metadata.json)")
    if _sha256(full) != want:
      raise ValueError(f"{directory}: unreadable or truncated params checkpoint ({rel}: its "
                       "sha256 differs from the one recorded when it was saved; the file is "
                       "corrupted or was changed)")
  return True


def check_finite(params, where: str) -> None:
  """ValueError (one line naming `where` and the first parameter path) if a floating leaf holds
  NaN or +-inf: a damaged file can decode to such values without any read error."""
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    if not (hasattr(leaf, "dtype") and jax.numpy.issubdtype(leaf.dtype, jax.numpy.floating)):
      continue
    bad = int(jax.device_get(jax.numpy.sum(~jax.numpy.isfinite(leaf))))
    if bad:
      raise ValueError(f"{where}: parameter {path_str(path)!r} holds non-finite values ({bad} "
                       "NaN or inf); the file is corrupted or the model diverged")


def save_params(directory, params, *, model_config: dict,
                extra_metadata: dict | None = None, overwrite: bool = False) -> str:
  """Writes a params checkpoint (float32) atomically: a hidden sibling folder, then one rename.

  Args:
    directory: output folder. It must not exist, unless `overwrite=True` and it is a model folder
      remdm-jax wrote (`is_model_folder`); a file, link or any other folder is never replaced.
    params: pytree of arrays (nnx.State, nested dict, ...); floating leaves are stored as float32.
      With several processes every process calls this with the same tree (global arrays, or
      host-local / numpy leaves holding the same values); process 0 writes the JSON files.
    model_config: JSON-serialisable model config (e.g. `DiTConfig.to_dict()`).
    extra_metadata: JSON-serialisable extras (step, source, ...), stored in metadata.json.
    overwrite: replace an existing model folder (the old one is removed only after the new one
      is complete).
  Returns:
    the absolute path of the written directory. metadata.json records the sha256 of every other
    file ("sha256"), which `load_params` verifies.
  Raises:
    ValueError (one line) if model_config is not a dict or the output path is refused
    (`check_model_output`), before anything is written.
  """
  if not isinstance(model_config, Mapping):
    raise ValueError(f"save_params: model_config must be a dict, got {type(model_config).__name__}")
  directory = check_model_output(directory, overwrite, flag="save_params: directory",
                                 overwrite_flag="overwrite=True")
  tmp = _sibling(directory, _PARTIAL_SUFFIX)
  primary = jax.process_index() == 0
  if primary:
    _remove_own_leftover(tmp)
  _sync("remdm_save_params_clean")
  nested = tree_to_nested(jax.tree.map(_to_float32, params))
  if jax.process_count() > 1:  # host-local arrays (load_params' default) cannot be saved by orbax
    nested = jax.tree.map(_host_if_local, nested)
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(os.path.join(tmp, "params"), nested)
  ckptr.wait_until_finished()
  ckptr.close()
  _sync("remdm_save_params_written")
  if primary:
    _write_json(os.path.join(tmp, "model_config.json"), dict(model_config))
    meta = {"format": PARAMS_FORMAT, "version": PARAMS_VERSION, **dict(extra_metadata or {})}
    meta["num_params"] = int(sum(np.prod(np.shape(x)) for x in jax.tree.leaves(nested)))
    meta["sha256"] = _file_checksums(tmp)
    _write_json(os.path.join(tmp, "metadata.json"), meta)
    if os.path.lexists(directory):  # checked above: a model folder we wrote, overwrite=True
      old = _sibling(directory, _OLD_SUFFIX)
      _remove_own_leftover(old)
      os.replace(directory, old)
      os.replace(tmp, directory)
      shutil.rmtree(old)
    else:
      os.replace(tmp, directory)
  _sync("remdm_save_params_done")
  return directory


def _read_json(path: str) -> dict:
  """A JSON object from `path`; ValueError (one line, naming the file) if unreadable."""
  try:
    with open(path) as f:
      obj = json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f"{path}: unreadable or truncated JSON ({_first_line(e)})") from e
  if not isinstance(obj, dict):
    raise ValueError(f"{path}: expected a JSON object, got {type(obj).__name__}")
  return obj


def _first_line(e: BaseException) -> str:
  text = str(e).strip()
  return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


_QUIET_INSTALLED = False


def _quiet_closed_loop_callbacks() -> None:
  """Drops the 'Event loop is closed' RuntimeErrors that tensorstore callbacks raise into orbax's
  already-closed asyncio loop after a failed read of a damaged checkpoint (they reach
  `sys.unraisablehook` from a background thread, as tracebacks after our one-line error). Every
  other unraisable exception goes to the previous hook."""
  global _QUIET_INSTALLED
  if _QUIET_INSTALLED:
    return
  previous = sys.unraisablehook

  def hook(unraisable):
    exc = unraisable.exc_value
    if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
      return
    previous(unraisable)

  sys.unraisablehook = hook
  _QUIET_INSTALLED = True


def _quietly(fn):
  """fn() with absl logging at ERROR: orbax logs a damaged folder as a WARNING before our own
  one-line error says the same."""
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  old = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.ERROR)
  try:
    return fn()
  finally:
    absl_logging.set_verbosity(old)


def _check_shapes(meta_tree, abstract, directory: str) -> None:
  """ValueError naming the first parameter whose stored shape differs from the model config's."""
  if abstract is None:
    return
  stored = {path_str(p): tuple(m.shape) for p, m in jax.tree_util.tree_flatten_with_path(
      meta_tree, is_leaf=lambda x: hasattr(x, "shape") and hasattr(x, "dtype"))[0]}
  for path, leaf in jax.tree_util.tree_flatten_with_path(abstract)[0]:
    key = path_str(path)
    if key not in stored:
      raise ValueError(f"{directory}: the stored weights have no parameter {key!r} that its "
                       "model_config.json describes")
    if stored[key] != tuple(leaf.shape):
      raise ValueError(f"{directory}: parameter {key!r} is stored with shape {stored[key]} but "
                       f"its model_config.json implies {tuple(leaf.shape)}")


def _abstract_model(model_config: Mapping):
  """(abstract nnx state of the DiT described by model_config) or None if it is not a DiT config."""
  try:
    from remdm_jax.models import dit
    cfg = dit.DiTConfig.from_dict(dict(model_config))
    return dit.abstract_params(cfg)[1]
  except Exception:  # not a DiT config (or models unavailable): fall back to nested dicts
    return None


def _restore_structured(nested_fn, meta_tree, model_config, sharding, directory=""):
  """Shared tail of load_params: choose shardings, restore, rebuild the model's pytree type."""
  abstract = _abstract_model(model_config)
  _check_shapes(meta_tree, abstract, directory)
  if isinstance(sharding, jax.sharding.Mesh):
    if abstract is None:
      raise ValueError("load_params: sharding=Mesh needs a DiT model_config (logical axis names)")
    flat = jax.tree_util.tree_flatten_with_path(param_shardings(abstract, sharding))[0]
    by_path = {path_str(p): s for p, s in flat}
    sharding_for = lambda path, shape: by_path[path]
  else:
    sharding_for = _sharding_fn(sharding)
  nested = nested_fn(_abstract_from_metadata(meta_tree, sharding_for))
  if abstract is None:
    return nested
  return nested_to_tree(nested, abstract)


def load_params(directory, *, sharding=None, verify: bool = True):
  """Loads a params checkpoint (or the latest EMA params of a training workdir).

  Args:
    directory: a folder written by `save_params`, or a training workdir / its checkpoints folder.
    sharding: None (first local device), a `jax.sharding.Sharding` for every leaf, a `Mesh` (leaves
      placed by the logical-axis rules of `remdm_jax.sharding`), or f(path, shape) -> Sharding.
    verify: check the sha256 of every file recorded in metadata.json before reading the arrays
      (`verify_checksums`; folders saved before checksums existed have none) and that every loaded
      float is finite (`check_finite`). Costs one read of the files.
  Returns:
    (params, model_config dict, metadata dict). params is the model's own pytree type
    (nnx.State from `models.dit.init_params`) when model_config describes a DiT, else a nested dict.
  Raises:
    FileNotFoundError naming `directory` if it (or a checkpoint in it) does not exist;
    NotADirectoryError if it exists but is not a folder; ValueError
    (one line, naming the folder and the file or parameter) if its JSON files or arrays are
    unreadable or truncated, a file's checksum differs from the recorded one, a loaded parameter
    is not finite, or a stored parameter's shape differs from the one its model config implies.
  """
  directory = os.path.abspath(os.fspath(directory))
  if os.path.exists(directory) and not os.path.isdir(directory):
    raise NotADirectoryError(f"params checkpoint {directory} is not a directory (a checkpoint "
                             "is a folder)")
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"params checkpoint directory not found: {directory}")
  cfg_path = os.path.join(directory, "model_config.json")
  if os.path.isfile(cfg_path):
    model_config = _read_json(cfg_path)
    meta_path = os.path.join(directory, "metadata.json")
    metadata = _read_json(meta_path) if os.path.isfile(meta_path) else {}
    ppath = os.path.join(directory, "params")
    if not os.path.isdir(ppath):
      raise FileNotFoundError(f"params checkpoint {directory} has no params/ folder")
    if verify:
      verify_checksums(directory, metadata)
    _quiet_closed_loop_callbacks()
    ckptr = ocp.StandardCheckpointer()
    try:
      try:
        meta_tree = _quietly(lambda: ckptr.metadata(ppath).item_metadata)
        if hasattr(meta_tree, "tree"):
          meta_tree = meta_tree.tree
        if not meta_tree:
          raise ValueError("no array metadata (missing _METADATA or manifest.ocdbt)")
      except Exception as e:  # orbax / tensorstore errors of a damaged folder
        raise ValueError(f"{directory}: unreadable or truncated params checkpoint "
                         f"({_first_line(e)})") from e

      def restore(target):
        try:
          return ckptr.restore(ppath, target)
        except Exception as e:
          raise ValueError(f"{directory}: unreadable or truncated params checkpoint "
                           f"({_first_line(e)})") from e

      params = _restore_structured(restore, meta_tree, model_config, sharding, directory)
    finally:
      ckptr.close()
    if verify:
      check_finite(params, directory)
    return params, model_config, metadata
  ckdir = checkpoint_dir(directory)
  if not _has_step_dirs(ckdir):
    raise FileNotFoundError(f"{directory} is neither a params checkpoint (no model_config.json) "
                            "nor a training workdir with finished checkpoints")
  ckptr = TrainCheckpointer(ckdir)
  try:
    step = ckptr.latest_step()
    if step is None:
      raise FileNotFoundError(f"no finished checkpoint in {ckdir}")
    meta = ckptr.restore_meta(step)
    model_config = dict(meta.get("model_config") or {})
    meta_tree = ckptr.state_metadata(step)["ema_params"]
    params = _restore_structured(
        lambda target: ckptr.restore_subtree("ema_params", step,
                                             sharding=_leafwise_from_target(target))[0],
        meta_tree, model_config, sharding, ckdir)
  finally:
    ckptr.close()
  if verify:
    check_finite(params, f"{ckdir}/{step}")
  metadata = {"format": PARAMS_FORMAT, "source": ckdir, "step": int(step), "params": "ema",
              **_data_metadata(meta)}
  return params, model_config, metadata


def _data_metadata(meta: Mapping) -> dict:
  """The tokenizer name and data config of a training run (so samplers can decode and evaluate)."""
  data = (meta.get("config") or {}).get("data") or {}
  return {"tokenizer": data["tokenizer"], "data": dict(data)} if "tokenizer" in data else {}


def _leafwise_from_target(target):
  by_path = {path_str(p): s.sharding for p, s in jax.tree_util.tree_flatten_with_path(target)[0]}
  return lambda path, shape: by_path[path]


def export_params(workdir, out_dir, *, step: int | None = None, overwrite: bool = False) -> str:
  """Writes the EMA params of a training workdir's latest (or given) step as a params checkpoint
  (`save_params`: an existing `out_dir` needs overwrite=True and must be a model folder)."""
  workdir = os.path.abspath(os.fspath(workdir))
  check_model_output(out_dir, overwrite, flag="export_params: out_dir",
                     overwrite_flag="overwrite=True")
  ckdir = checkpoint_dir(workdir)
  if not _has_step_dirs(ckdir):
    raise FileNotFoundError(f"no training checkpoints under {workdir}")
  ckptr = TrainCheckpointer(ckdir)
  try:
    step = ckptr.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no finished checkpoint in {ckdir}")
    ema, meta = ckptr.restore_subtree("ema_params", step)
  finally:
    ckptr.close()
  extra = {"source": ckdir, "step": int(step), "params": "ema", **_data_metadata(meta)}
  if "config" in meta:
    extra["train_config"] = meta["config"]
  return save_params(out_dir, ema, model_config=dict(meta.get("model_config") or {}),
                     extra_metadata=extra, overwrite=overwrite)
