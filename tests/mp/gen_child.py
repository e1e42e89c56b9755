"""Child of tests/test_multiprocess.py: molecule sampling, semi-autoregressive text generation
with a prompt (`generation.generate`) and LLaDA block generation, run either as one process of a
`remdm_jax.launch` job (batches split over the devices of all processes) or alone (one device,
no mesh: the reference). Process 0 writes OUT (npz); every process prints one
`digest <pid> <sha256>` line of what it gathered.

  python tests/mp/gen_child.py OUT
"""
import hashlib
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from remdm_jax import distributed  # noqa: E402

multi = distributed.initialize_from_env()

import jax  # noqa: E402
import numpy as np  # noqa: E402

from remdm_jax import sharding as mesh_lib  # noqa: E402
from remdm_jax.fileio import atomic_open  # noqa: E402
from remdm_jax.llm import generate as G  # noqa: E402
from remdm_jax.llm import model as M  # noqa: E402
from remdm_jax.molecules import sample as mol  # noqa: E402
from remdm_jax.sampling import SamplerConfig  # noqa: E402

mesh = mesh_lib.make_mesh((-1, 1, 1)) if multi else None
out = {}

# molecules: the shipped class-conditional QM9 MDLM, ReMDM-cap, 8 rows in one batch, 2 batches
model = mol.load_qm9_model()
cfg = SamplerConfig(strategy="remdm_cap", num_steps=8, eta=0.05)
out["molecules"], _ = mol.sample_molecules(model, cfg, num_samples=16, batch_size=8, seed=3,
                                           label=1, mesh=mesh)

# semi-autoregressive text (2 windows of the shipped bible model) with a prompt
from remdm_jax import generation  # noqa: E402

text_model = generation.load_model(generation.shipped_model_path("bible_byte_mdlm"))
out["semi_ar"], _ = generation.generate(
    text_model, SamplerConfig.preset("mdlm", num_steps=4), num_samples=4, batch_size=4, seed=2,
    prompt="And", progress=False, num_strides=1, stride_length=64, mesh=mesh)

# LLaDA block generation: a tiny random model (parameters fsdp-sharded over every device of the
# job when multi-process), 8 prompts, per-row keys
mcfg = M.LLaDAConfig.tiny(vocab_size=64, mask_token_id=63, eos_token_id=62, eot_token_id=61)
key = jax.random.key(5)
if mesh is None:
  gd, params = M.init_model(mcfg, key)
else:
  gd, params = M.init_sharded(mcfg, key, mesh_lib.make_mesh((1, -1, 1)))
rng = np.random.default_rng(0)
prompt = rng.integers(1, 60, size=(8, 6)).astype(np.int32)
am = np.ones_like(prompt)
am[::3, :2] = 0
keys = jax.random.split(jax.random.key(11), 8)
gcfg = G.GenConfig(rule="llada_conf", gen_length=8, block_length=4, steps=4, mask_id=63,
                   eos_id=62, eot_id=61, pad_id=0)
gen = G.make_generate(M.make_logits_fn(gd), gcfg, mesh=mesh)
toks, info = gen(params, prompt, am, keys)
out["llada"] = mesh_lib.to_host(toks)

digest = hashlib.sha256(b"".join(np.ascontiguousarray(out[k]).tobytes()
                                 for k in sorted(out))).hexdigest()
print(f"digest {jax.process_index()} {digest}", flush=True)
if jax.process_index() == 0:
  with atomic_open(sys.argv[1], "wb") as f:
    np.savez(f, **out)
