"""Child of tests/test_multiprocess.py: what each process feeds the trainer.

For several meshes over all devices of the job: the data pipeline of `training.trainer.train`
(`data.make_dataset` with `sharding.process_data_shard(mesh)`) and `Trainer.put_batch` build 3
global batches of a toy packed array (row r = [r, r, ...]); every process writes
OUT_DIR/feed_p<pid>.npz with, per mesh and batch, its local numpy rows, its row block
(index, count) and the rows of every addressable device shard (global start row + data), plus
the sum of row ids of the global array computed by a jitted program (replicated result).

  python -m remdm_jax.launch -n 2 --devices-per-process 2 -- tests/mp/feed_child.py OUT_DIR
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from remdm_jax import distributed  # noqa: E402

distributed.initialize_from_env()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from configs import tiny  # noqa: E402
from remdm_jax import config_utils, data  # noqa: E402
from remdm_jax import sharding as mesh_lib  # noqa: E402
from remdm_jax.training.trainer import Trainer  # noqa: E402

MESHES = ((-1, 1, 1), (2, 2, 1), (1, 2, 2), (1, 1, 4))  # data, fsdp, tensor
B, L, N = 8, 32, 40  # global batch, row length, rows in the toy data set
c = tiny.get_config()
c.data.batch_size = B
packed = np.repeat(np.arange(N, dtype=np.int32)[:, None], L, axis=1)
pi = jax.process_index()
out = {}
total = jax.jit(lambda x: jnp.sum(x[:, 0]), out_shardings=None)
for shape in MESHES:
  c.mesh.shape = shape
  cfg = config_utils.experiment_from_config(c)
  mesh = mesh_lib.make_mesh(cfg.mesh.shape)
  trainer = Trainer(cfg, mesh)
  index, count = mesh_lib.process_data_shard(mesh)
  assert trainer.data_shard == (index, count)
  it = data.make_dataset(cfg.data, "train", packed=packed, process_index=index,
                         process_count=count)
  tag = "x".join(str(s) for s in mesh.devices.shape)
  for n in range(3):
    local = next(it)
    glob = trainer.put_batch(local)
    assert glob.shape == (B, L), glob.shape
    out[f"{tag}/{n}/local"] = local
    out[f"{tag}/{n}/block"] = np.array([index, count])
    out[f"{tag}/{n}/shards"] = np.stack([
        np.concatenate([[s.index[0].start or 0], np.asarray(s.data)[:, 0]])
        for s in glob.addressable_shards])
    out[f"{tag}/{n}/sum"] = np.asarray(total(glob))
np.savez(os.path.join(sys.argv[1], f"feed_p{pi}.npz"), **out)
print(f"process {pi}: fed {len(MESHES)} meshes", flush=True)
