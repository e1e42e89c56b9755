"""Old import paths of moved modules, kept for one release with a DeprecationWarning.

`import remdm_jax.losses` (say) returns the module `remdm_jax.diffusion.losses` itself (the same
object, so attributes and monkeypatching agree) and warns once. A name mapped to several modules
(`remdm_jax.uniform`, split into process math, loss and sampler) gets a module holding the public
names of all of them. Installed by `remdm_jax/__init__.py`; a finder, not import statements, so the
old paths add no edges to the import graph.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
import warnings

# old module -> new module(s), release 0.2 (remove in 0.3).
MOVED: dict[str, tuple[str, ...]] = {
    "remdm_jax.schedules": ("remdm_jax.diffusion.schedules",),
    "remdm_jax.sigmas": ("remdm_jax.diffusion.sigmas",),
    "remdm_jax.subs": ("remdm_jax.diffusion.subs",),
    "remdm_jax.losses": ("remdm_jax.diffusion.losses",),
    "remdm_jax.uniform": ("remdm_jax.diffusion.uniform", "remdm_jax.diffusion.losses",
                          "remdm_jax.sampling.udlm"),
    "remdm_jax.training.mesh": ("remdm_jax.sharding",),
    "remdm_jax.eval": ("remdm_jax.text",),
    "remdm_jax.eval.entropy": ("remdm_jax.text.entropy",),
    "remdm_jax.eval.gen_ppl": ("remdm_jax.text.gen_ppl",),
    "remdm_jax.eval.gpt2": ("remdm_jax.text.gpt2",),
    "remdm_jax.eval.hf_weights": ("remdm_jax.models.hf_weights",),
    "remdm_jax.eval.mauve": ("remdm_jax.text.mauve",),
    "remdm_jax.eval.minilm": ("remdm_jax.text.minilm",),
    "remdm_jax.eval.plots": ("remdm_jax.text.plots",),
    "remdm_jax.eval.sample_metrics": ("remdm_jax.text.sample_metrics",),
    "remdm_jax.eval.sweep": ("remdm_jax.text.sweep",),
}


def _merged(name: str, targets: tuple[str, ...]) -> types.ModuleType:
  mod = types.ModuleType(name, f"Deprecated: the names of {', '.join(targets)}.")
  for t in targets:
    src = importlib.import_module(t)
    public = getattr(src, "__all__", None) or [k for k in vars(src) if not k.startswith("_")]
    for k in public:
      setattr(mod, k, getattr(src, k))
  return mod


class _AliasLoader(importlib.abc.Loader):

  def __init__(self, name: str):
    self.name = name

  def create_module(self, spec):
    targets = MOVED[self.name]
    warnings.warn(f"{self.name} is deprecated; import {' / '.join(targets)}",
                  DeprecationWarning, stacklevel=3)
    if len(targets) == 1:
      return importlib.import_module(targets[0])
    return _merged(self.name, targets)

  def exec_module(self, module):
    sys.modules[self.name] = module


class _AliasFinder(importlib.abc.MetaPathFinder):

  def find_spec(self, fullname, path=None, target=None):
    if fullname not in MOVED:
      return None
    targets = MOVED[fullname]
    is_pkg = len(targets) == 1 and hasattr(importlib.import_module(targets[0]), "__path__")
    return importlib.util.spec_from_loader(fullname, _AliasLoader(fullname), is_package=is_pkg)


def install() -> None:
  if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
    sys.meta_path.insert(0, _AliasFinder())  # before the path finders: a stale copy of an old
    # file (e.g. an editable install of an older checkout) must not shadow the move.
