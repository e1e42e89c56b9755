"""remdm-jax: masked discrete diffusion language models and the ReMDM remasking sampler in JAX.

Layout (README "Layout"): core by role (`diffusion/`, `sampling/`, `models/`, `training/`,
infrastructure modules at the root) and the domains (`text/`, `molecules/`, `images/`, `llm/`)
on top of it; core finds a domain's corpora and tokenizers by name (`registry`).
"""
from remdm_jax import _compat

__version__ = "0.1.0"

_compat.install()
