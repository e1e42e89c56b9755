"""Shared pieces of the JAX ports of Hugging Face encoders (GPT-2, MiniLM/BERT): reading a local
`model.safetensors` and a float32 LayerNorm with affine parameters."""
from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np


@contextlib.contextmanager
def safetensors_reader(st_path: str, optional_prefix: str):
  """Yields get(name) -> float32 numpy array from `st_path`.

  `optional_prefix` (e.g. "transformer." or "bert.") is prepended when the file's keys use it, so
  both the bare-model and the head-model layouts load. A missing tensor raises ValueError naming it.
  """
  from safetensors import safe_open  # optional dependency (eval extra)

  with safe_open(st_path, framework="np") as f:
    keys = set(f.keys())
    prefix = optional_prefix if any(k.startswith(optional_prefix) for k in keys) else ""

    def get(name: str) -> np.ndarray:
      if prefix + name not in keys:
        raise ValueError(f"{st_path}: missing tensor {prefix + name!r}")
      return np.asarray(f.get_tensor(prefix + name), np.float32)

    yield get


def stack_layers(get, layer_key: str, names: dict, num_layers: int) -> dict:
  """{ours: [num_layers, ...] stacked from get(layer_key.format(i) + "." + theirs)} (for lax.scan)."""
  return {ours: np.stack([get(f"{layer_key.format(i)}.{theirs}") for i in range(num_layers)])
          for ours, theirs in names.items()}


def layer_norm(x, g, b, eps):
  """LayerNorm over the last axis with weight g and bias b."""
  mu = jnp.mean(x, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x - mu), axis=-1, keepdims=True)
  return (x - mu) * jax.lax.rsqrt(var + eps) * g + b
