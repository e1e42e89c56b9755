"""Device mesh, logical-axis sharding rules and batch sharding (one code path: 1 CPU .. TPU pod).

Mesh axes are always ("data", "fsdp", "tensor"):
  data:   pure data parallelism (parameters replicated);
  fsdp:   data parallelism with parameters / optimizer state sharded along their "embed" dim;
  tensor: tensor (model) parallelism over "vocab", "mlp", "qkv", "heads", "adaln".
The global batch is split along ("data", "fsdp").

Parameters carry *logical* axis names (e.g. ("embed", "mlp")) in their nnx metadata; `rules` map each
logical name to mesh axes, maxtext style. The mapping per dimension is:
  1. the first rule whose logical name matches gives the mesh axes (None / no rule -> replicated);
  2. a mesh axis already used by an earlier dim of the same array is dropped (an axis can shard at
     most one dim);
  3. if the dim's size is not divisible by the product of its mesh-axis sizes, that dim falls back
     to replication (e.g. the byte vocabulary 257 over tensor=2). This keeps every config runnable on
     every mesh at the cost of some replication; `replication_report` measures the cost (the trainer
     prints its warning: e.g. GPT-2's vocabulary 50258 over tensor=4 leaves 45.6% of DiT-small's
     parameters replicated; pad the vocabulary, e.g. to 50304) and `partition_spec_listing` shows
     every spec.
Axes of size 1 are kept in the specs (harmless) so the listing does not depend on the device count
beyond divisibility.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# logical name -> mesh axis / axes / None (replicated). maxtext style.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("qkv", "tensor"),
    ("heads", "tensor"),
    ("adaln", "tensor"),
    ("cond", None),
    ("freq", None),
    ("norm", None),
)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Mesh shape over MESH_AXES (one entry may be -1: all remaining devices) and sharding rules.

  Attributes:
    shape: sizes of ("data", "fsdp", "tensor"); e.g. (-1, 1, 1) = pure data parallel.
    rules: (logical name, mesh axis | tuple of mesh axes | None) pairs.
  """

  shape: tuple[int, ...] = (-1, 1, 1)
  rules: tuple[tuple[str, Any], ...] = DEFAULT_RULES

  def __post_init__(self):
    object.__setattr__(self, "shape", _normalize_shape(self.shape))
    rules = tuple((str(k), _as_axes(v, f"mesh.rules[{k!r}]")) for k, v in
                  (self.rules.items() if isinstance(self.rules, Mapping) else self.rules))
    object.__setattr__(self, "rules", rules)


def _as_axes(v, where: str):
  if v is None:
    return None
  axes = (v,) if isinstance(v, str) else tuple(v)
  for a in axes:
    if a not in MESH_AXES:
      raise ValueError(f"{where}: unknown mesh axis {a!r}; valid axes are {MESH_AXES}")
  return axes[0] if len(axes) == 1 else axes


def _normalize_shape(shape) -> tuple[int, ...]:
  if isinstance(shape, Mapping):
    unknown = set(shape) - set(MESH_AXES)
    if unknown:
      raise ValueError(f"mesh.shape: unknown axis {sorted(unknown)}; valid axes are {MESH_AXES}")
    shape = tuple(int(shape.get(a, 1)) for a in MESH_AXES)
  try:
    shape = tuple(int(s) for s in shape)
  except (TypeError, ValueError):
    raise ValueError(f"mesh.shape={shape!r} must be 3 integers for axes {MESH_AXES}") from None
  if len(shape) != len(MESH_AXES):
    raise ValueError(f"mesh.shape={shape} must have {len(MESH_AXES)} entries for axes {MESH_AXES}")
  if sum(s == -1 for s in shape) > 1 or any(s == 0 or s < -1 for s in shape):
    raise ValueError(f"mesh.shape={shape}: sizes must be >= 1, with at most one -1")
  return shape


def resolve_mesh_shape(shape, num_devices: int) -> tuple[int, ...]:
  """Replaces a -1 entry; raises ValueError naming the shape and the device count on a mismatch."""
  shape = _normalize_shape(shape)
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if num_devices % known:
      raise ValueError(f"mesh.shape={shape} cannot be filled with {num_devices} devices "
                       f"({num_devices} is not divisible by {known})")
    shape = tuple(num_devices // known if s == -1 else s for s in shape)
  if math.prod(shape) != num_devices:
    raise ValueError(f"mesh.shape={shape} needs {math.prod(shape)} devices but "
                     f"{num_devices} are available")
  return shape


def make_mesh(shape=(-1, 1, 1), devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A ("data", "fsdp", "tensor") mesh with Auto axis types.

  Args:
    shape: 3 sizes (tuple) or {axis: size} (missing axes = 1); one may be -1.
    devices: defaults to all `jax.devices()` (all hosts).
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = resolve_mesh_shape(shape, len(devices))
  try:
    from jax.experimental import mesh_utils
    dev_array = mesh_utils.create_device_mesh(shape, devices=devices)
  except Exception:  # e.g. unusual topologies / fake CPU devices: plain reshape
    dev_array = np.asarray(devices, dtype=object).reshape(shape)
  auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
  return Mesh(dev_array, MESH_AXES, axis_types=auto)


def _rule_lookup(rules, name):
  for k, v in rules:
    if k == name:
      return v
  return None


def logical_to_spec(names: Sequence[str | None] | None, shape: Sequence[int], mesh: Mesh,
                    rules=DEFAULT_RULES) -> P:
  """PartitionSpec for one array with logical dim names (see the module docstring for the rules)."""
  if names is None:
    return P()
  names = tuple(names)
  if len(names) != len(shape):
    raise ValueError(f"logical names {names} do not match the array rank {len(shape)}")
  used: set[str] = set()
  spec = []
  for name, size in zip(names, shape):
    axes = _rule_lookup(rules, name) if name is not None else None
    if axes is None:
      spec.append(None)
      continue
    axes = (axes,) if isinstance(axes, str) else tuple(axes)
    axes = tuple(a for a in axes if a not in used)
    n = math.prod(mesh.shape[a] for a in axes) if axes else 1
    if not axes or size % n:
      spec.append(None)  # not divisible: replicate this dim
      continue
    used.update(axes)
    spec.append(axes[0] if len(axes) == 1 else axes)
  while spec and spec[-1] is None:
    spec.pop()
  return P(*spec)


def _is_variable(x) -> bool:
  try:
    from flax import nnx
    return isinstance(x, nnx.Variable)
  except ImportError:  # pragma: no cover
    return False


def _var_names(var) -> tuple | None:
  """Logical axis names stored on an nnx Variable (flax renamed the key across versions)."""
  meta = var.get_metadata() if hasattr(var, "get_metadata") else {}
  for key in ("sharding_names", "out_sharding", "sharding"):
    names = meta.get(key)
    if names is not None:
      return tuple(names)
  return None


def path_str(path) -> str:
  """Path string like "blocks/0/attn_qkv/kernel" for a jax key path (nnx `.value` steps dropped)."""
  parts = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        v = getattr(k, attr)
        break
    else:
      v = str(k)
    if v == "value" and isinstance(k, jax.tree_util.GetAttrKey):
      continue
    parts.append(str(v))
  return "/".join(parts)


def map_params_with_names(fn, tree):
  """tree.map over array leaves with fn(path_str, logical_names | None, leaf).

  Leaves inside nnx Variables get the Variable's logical names; bare arrays get None.
  """
  def outer(path, x):
    if _is_variable(x):
      names = _var_names(x)
      return jax.tree_util.tree_map_with_path(
          lambda p, leaf: fn(path_str(path + p), names, leaf), x)
    return fn(path_str(path), None, x)
  return jax.tree_util.tree_map_with_path(outer, tree, is_leaf=_is_variable)


def param_shardings(params, mesh: Mesh, rules=DEFAULT_RULES):
  """NamedSharding per parameter leaf (same tree structure as `params`, abstract or concrete)."""
  return map_params_with_names(
      lambda _, names, x: NamedSharding(mesh, logical_to_spec(names, np.shape(x), mesh, rules)),
      params)


@dataclasses.dataclass(frozen=True)
class ReplicationReport:
  """Parameters that a rule would shard but that stay replicated (size not divisible).

  Attributes:
    entries: (path, shape, logical name, mesh axes, mesh-axes size, dim index) per affected dim.
    replicated_params: number of parameters (elements) in the affected arrays.
    total_params: number of parameters in the whole tree.
  """

  entries: tuple[tuple[str, tuple[int, ...], str, Any, int, int], ...]
  replicated_params: int
  total_params: int

  @property
  def replicated_mb(self) -> float:
    """Size of the affected arrays in MB of float32 (what every device holds in full)."""
    return self.replicated_params * 4 / 2**20

  def warning(self) -> str | None:
    """One line naming the arrays, dims and sizes, or None when nothing is lost."""
    if not self.entries:
      return None
    frac = self.replicated_params / max(self.total_params, 1)
    shown = [f"{p} {sh} dim {name}={sh[i]} over {axes}={n}"
             for p, sh, name, axes, n, i in self.entries[:4]]
    more = f" (+{len(self.entries) - 4} more)" if len(self.entries) > 4 else ""
    return (f"{self.replicated_params:,} parameters ({self.replicated_mb:.1f} MB float32, "
            f"{100 * frac:.1f}% of {self.total_params:,}) are replicated along a dim that "
            f"does not divide its mesh axes: {'; '.join(shown)}{more}; pad that size to a multiple of the "
            "mesh axes (e.g. model.vocab_size) or change mesh.shape")


def replication_report(params, mesh: Mesh, rules=DEFAULT_RULES) -> ReplicationReport:
  """Which parameter dims fall back to replication (rule 3 of the module docstring) and how many
  parameters that leaves unsharded on every device."""
  entries = []
  counts = {"rep": 0, "total": 0}

  def visit(path, names, x):
    shape = tuple(int(d) for d in np.shape(x))
    size = int(np.prod(shape)) if shape else 1
    counts["total"] += size
    if names is None:
      return x
    used: set[str] = set()
    hit = False
    for i, (name, dim) in enumerate(zip(tuple(names), shape)):
      axes = _rule_lookup(rules, name) if name is not None else None
      if axes is None:
        continue
      axes = (axes,) if isinstance(axes, str) else tuple(axes)
      axes = tuple(a for a in axes if a not in used)
      n = math.prod(mesh.shape[a] for a in axes) if axes else 1
      if axes and n > 1 and dim % n:
        entries.append((path, shape, name, axes[0] if len(axes) == 1 else axes, n, i))
        hit = True
      elif axes and not dim % n:
        used.update(axes)
    if hit:
      counts["rep"] += size
    return x

  map_params_with_names(visit, params)
  return ReplicationReport(tuple(entries), counts["rep"], counts["total"])


def partition_spec_listing(params, mesh: Mesh, rules=DEFAULT_RULES) -> str:
  """One line per parameter: `path shape logical_names -> PartitionSpec`, sorted by path."""
  lines = []

  def add(path, names, x):
    spec = logical_to_spec(names, np.shape(x), mesh, rules)
    lines.append(f"{path} {tuple(np.shape(x))} {names} -> {spec}")
    return x

  map_params_with_names(add, params)
  return "\n".join(sorted(lines)) + "\n"


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """[B, L] batches: B over ("data", "fsdp"), L replicated."""
  return NamedSharding(mesh, P(BATCH_AXES, None))


def batch_divisor(mesh: Mesh) -> int:
  return math.prod(mesh.shape[a] for a in BATCH_AXES)


_path_str = path_str  # old private name (compatibility)


# ----------------------------------------------------------------------------------------------
# several processes (multi-host): which rows a process feeds, host values <-> global arrays
# ----------------------------------------------------------------------------------------------

def process_data_shard(mesh: Mesh, process_index: int | None = None) -> tuple[int, int]:
  """(index, count): process `process_index` (default: this one) feeds rows
  [index * B / count, (index + 1) * B / count) of every global batch of B rows sharded over
  ("data", "fsdp") (`batch_sharding`). count = 1 in a single process, = the process count on a
  `make_mesh` mesh whose data x fsdp is a multiple of it; processes that share batch shards (e.g.
  a "tensor" axis across processes) get the same index and feed the same rows.

  Raises ValueError (naming the mesh) when the process's rows are not one contiguous block of
  equal size for every process (a device order that `make_mesh` never produces).
  """
  pi = jax.process_index() if process_index is None else int(process_index)
  n = batch_divisor(mesh)
  spans: dict[int, set] = {}
  for dev, idx in batch_sharding(mesh).devices_indices_map((n, 1)).items():
    s = idx[0]
    spans.setdefault(dev.process_index, set()).add((s.start or 0, n if s.stop is None else s.stop))
  blocks = {}
  for p, rows in spans.items():
    rows = sorted(rows)
    ok = all(a[1] == b[0] for a, b in zip(rows, rows[1:]))
    blocks[p] = (rows[0][0], rows[-1][1]) if ok else None
  sizes = {b[1] - b[0] for b in blocks.values() if b is not None}
  if None in blocks.values() or len(sizes) != 1 or any(b[0] % next(iter(sizes))
                                                       for b in blocks.values()):
    raise ValueError(f"mesh {dict(mesh.shape)}: the batch rows of each process are not one "
                     "contiguous block of the same size (use remdm_jax.sharding.make_mesh, whose "
                     "device order is process-major)")
  size = sizes.pop()
  if pi not in blocks:
    raise ValueError(f"process {pi} holds no device of mesh {dict(mesh.shape)}")
  return blocks[pi][0] // size, n // size


def _is_key(x) -> bool:
  return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def put_global(tree, sharding):
  """Places every leaf of `tree` (numpy, Python scalars, jax Arrays; typed PRNG keys too) onto
  `sharding` (one Sharding for every leaf, or a tree of them like `tree`, as `jax.device_put`
  takes), which may span several processes. Every process must pass the same values (a
  multi-process run reads only the parts its own devices hold; nothing is compared).

  In one process this is `jax.device_put`. Across processes, `jax.device_put` fails for an array
  committed to a local device ("cross-host device transfers") and runs a hidden equality
  collective for numpy input; here each leaf is fetched to the host once (a leaf already placed
  on a sharding with the same devices is resharded by `jax.device_put` instead) and built with
  `jax.make_array_from_callback`.
  """
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)

  def put(x, sh):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return jax.device_put(x, sh)  # already global: a collective reshard
    if _is_key(x):
      impl = jax.random.key_impl(x)
      return jax.random.wrap_key_data(put(jax.random.key_data(x), sh), impl=impl)
    host = np.asarray(jax.device_get(x))
    return jax.make_array_from_callback(host.shape, sh, lambda idx: host[idx])
  if isinstance(sharding, jax.sharding.Sharding):
    return jax.tree.map(lambda x: put(x, sharding), tree)
  return jax.tree.map(put, tree, sharding)


def to_host(x):
  """The full value of every leaf as numpy on EVERY process (a collective when a leaf spans
  several processes: `multihost_utils.process_allgather(tiled=True)`; all processes must call)."""
  def get(a):
    if isinstance(a, jax.Array) and not a.is_fully_addressable:
      if _is_key(a):
        a = jax.random.key_data(a)
      from jax.experimental import multihost_utils
      return np.asarray(multihost_utils.process_allgather(a, tiled=True))
    return np.asarray(jax.device_get(a))
  return jax.tree.map(get, x)
