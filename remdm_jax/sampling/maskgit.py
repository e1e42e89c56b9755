"""MaskGIT confidence decoding: the loop around `confidence.maskgit_step` (SPEC_DOMAINS §I.1;
google-research/maskgit `libml/parallel_decode.py`). One `lax.scan` over T steps, T denoiser
calls; the output is the last step's sample before re-masking (the reference's
`final_seqs[:, -1]`), fully decoded. Never imports Flax.

Keys follow the reference's chain: per step `rng, sample_rng = split(rng)`, then
`rng, choice_rng = split(rng)`, so with the same key and logits the draws are the reference's
(they depend on the batch size). Injected noise (`noise=`) replaces them:
{"categorical": [T, B, L, K] Gumbels, "choice": [T, B, L] Gumbels}.
"""
from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
from jax import lax

from remdm_jax.sampling.confidence import maskgit_step


def maskgit_decode(step_logits: Callable, tokens0, key, *, num_steps: int, mask_id: int,
                   mask_ratio: Callable, choice_temperature: float,
                   noise: Optional[dict] = None, record_steps: bool = False):
  """Runs MaskGIT decoding from `tokens0`.

  Args:
    step_logits: (tokens int32 [B, L], step int32 scalar) -> float32 [B, L, K] codebook logits
      of step i, temperature applied (the domain's wiring: time t = (T - i) / T, class token,
      codebook slice).
    tokens0: int32 [B, L] start state (mask_id = unknown; other positions are kept).
    key: PRNG key of the reference chain (unused with `noise`).
    num_steps: T. mask_id: the mask id (>= K).
    mask_ratio: (r float32 scalar, unknown0 int32 [B]) -> float32 masked fraction of the next
      step (a MaskGIT mask schedule).
    choice_temperature: Gumbel scale of the re-mask ranking (reference 4.5).
    noise: optional injected Gumbels (module docstring).
    record_steps: also return every step's sample / state.
  Returns:
    (last int32 [B, L]: the last step's sample, info {"nfe": T, "tokens": the final state (one
    mask left)} (+ "final_seqs", "states" int32 [B, T, L] with record_steps)).
  """
  T = num_steps
  m = mask_id
  unknown0 = jnp.sum(tokens0 == m, axis=-1).astype(jnp.int32)

  def body(carry, xs):
    tokens, rng, _ = carry
    i = xs["step"]
    logits = step_logits(tokens, i)
    ratio = (i + 1).astype(jnp.float32) / jnp.float32(T)
    mr = mask_ratio(ratio, unknown0)
    if noise is None:
      rng, sample_rng = jax.random.split(rng)
      rng, choice_rng = jax.random.split(rng)
      kw = dict(sample_key=sample_rng, choice_key=choice_rng)
    else:
      kw = dict(categorical_gumbel=xs["categorical"], choice_gumbel=xs["choice"])
    new_tokens, sampled = maskgit_step(tokens, logits, mask_id=m, unknown0=unknown0, ratio=ratio,
                                       mask_ratio=mr, choice_temperature=choice_temperature,
                                       **kw)
    return (new_tokens, rng, sampled), ((sampled, new_tokens) if record_steps else None)

  xs = {"step": jnp.arange(T, dtype=jnp.int32)}
  if noise is not None:
    xs["categorical"], xs["choice"] = noise["categorical"], noise["choice"]
  (tokens, _, last), rec = lax.scan(body, (tokens0, key, tokens0), xs)
  info = {"nfe": T, "tokens": tokens}
  if record_steps:
    info["final_seqs"] = jnp.swapaxes(rec[0], 0, 1)
    info["states"] = jnp.swapaxes(rec[1], 0, 1)
  return last, info
