"""Denoiser networks: the MDLM DiT (SPEC §6) and the importer of official PyTorch checkpoints.

`convert` is imported lazily (`remdm_jax.models.convert`) so that `python -m
remdm_jax.models.convert` runs without a double import.
"""
from remdm_jax.models.dit import (
  LOGICAL_AXES,
  DiT,
  DiTConfig,
  abstract_params,
  cast_for_compute,
  count_params,
  flops_per_token,
  init_params,
  logical_partition_specs,
  make_apply_fn,
  make_denoise_fn,
)

__all__ = [
  "LOGICAL_AXES", "DiT", "DiTConfig", "abstract_params", "cast_for_compute", "count_params",
  "flops_per_token", "init_params", "logical_partition_specs", "make_apply_fn", "make_denoise_fn",
  "convert",
]


def __getattr__(name):
  if name == "convert":
    import importlib  # pylint: disable=g-import-not-at-top
    return importlib.import_module("remdm_jax.models.convert")
  raise AttributeError(f"module 'remdm_jax.models' has no attribute {name!r}")
