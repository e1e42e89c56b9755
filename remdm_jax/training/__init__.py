"""Training: the one trainer of every model kind (`trainer`: `Trainer`, `run`, `train`), model specs
and jobs (`spec`: `ModelSpec`, `TrainJob`, `dit_spec`), config dataclasses (`config`), device
prefetching (`prefetch`) and metrics files (`metrics`). Optimizers and training gradients live
only here.

Import the submodules directly (`from remdm_jax.training import trainer`); nothing is imported here
so that `remdm_jax.config_utils` can use `training.config` without pulling in the trainer.
"""
