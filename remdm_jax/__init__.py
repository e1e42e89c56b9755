"""remdm-jax: masked discrete diffusion language models and the ReMDM remasking sampler in JAX."""

__version__ = "0.1.0"
