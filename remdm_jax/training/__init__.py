"""Training: mesh / sharding rules (`mesh`), the trainer (`trainer`), metrics files (`metrics`).

Import the submodules directly (`from remdm_jax.training import trainer`); nothing is imported here
so that `remdm_jax.checkpoint` can use `training.mesh` without pulling in the trainer.
"""
