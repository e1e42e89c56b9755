"""The small validators shared by the trainer, the data pipeline, the tokenizers and the samplers.

A leaf module (imports only numpy): each check raises one ValueError naming the field and the bad
value, before any work is done.
"""
from __future__ import annotations

import numpy as np


def check_objective_model(objective: str, causal: bool) -> None:
  """Objective "ar" needs a causal model and the diffusion objectives a bidirectional one."""
  if (objective == "ar") != bool(causal):
    raise ValueError(f"loss.objective={objective!r} needs model.causal={objective == 'ar'} "
                     f"(got model.causal={causal})")


def check_vocab(model_vocab_size: int, tokenizer_vocab_size: int, tokenizer_name: str) -> None:
  """The model vocabulary must hold every tokenizer id (mask included)."""
  if int(model_vocab_size) < int(tokenizer_vocab_size):
    raise ValueError(f"vocab mismatch between data and model: model.vocab_size="
                     f"{model_vocab_size} < vocab_size {tokenizer_vocab_size} of tokenizer "
                     f"{tokenizer_name!r} (mask included)")


def check_mask_id(mask_id, vocab_size: int, field: str = "loss.mask_id") -> int | None:
  """mask_id (None = no mask, e.g. objective "ar") must be an int in [0, vocab_size); returns it
  as an int. ValueError naming `field` otherwise."""
  if mask_id is None:
    return None
  if (not isinstance(mask_id, (int, np.integer)) or isinstance(mask_id, bool)
      or not 0 <= int(mask_id) < int(vocab_size)):
    raise ValueError(f"{field}={mask_id!r} must lie in [0, model.vocab_size={vocab_size})")
  return int(mask_id)


def check_seq_len(seq_len: int, max_seq_len: int, field: str = "data.seq_len") -> None:
  """A sequence length must not exceed the model's max_seq_len."""
  if int(seq_len) > int(max_seq_len):
    raise ValueError(f"{field}={seq_len} exceeds model.max_seq_len={max_seq_len}")


def check_data_ids(max_id: int, vocab_size: int, mask_id: int | None = None) -> None:
  """The largest token id of the data must fit the model vocabulary and (when a mask id is
  given as m = V - 1) never reach it (the data must not contain masks). A mask id below V - 1,
  as the SMILES tokenizer's 2, cannot be checked from the largest id and is not."""
  max_id, vocab_size = int(max_id), int(vocab_size)
  if max_id >= vocab_size:
    raise ValueError(f"vocab mismatch between data and model: data token id {max_id} "
                     f"does not fit model vocab_size={vocab_size}")
  if mask_id is not None and int(mask_id) == vocab_size - 1 and max_id >= int(mask_id):
    raise ValueError(f"vocab mismatch between data and model: data token id {max_id} "
                     f"reaches the mask id {mask_id} (model vocab_size={vocab_size})")


def check_seed(seed, field: str = "seed") -> int:
  """seed as an int in [0, 2^32) (what `jax.random.PRNGKey` and numpy's RandomState accept;
  larger seeds overflowed with a traceback, negative ones were silently folded); ValueError
  naming `field` and the value otherwise."""
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
    raise ValueError(f"{field}={seed!r} must be an int in [0, 2^32)")
  return int(seed)
