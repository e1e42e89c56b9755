"""The model callables' one home: every sampler, loss and guidance function takes one of these.

Shapes: B batch rows, L sequence length, V model vocabulary (mask included), C classes. Token ids
are int32, times float32 in [0, 1] (t = 1 fully masked), logits any float dtype (samplers upcast
to float32). A function never sees Flax: models are bound by `models.*.make_*_fn(graphdef)`.

| name            | call                                                  | returns          |
|-----------------|-------------------------------------------------------|------------------|
| DenoiseFn       | (params, tokens [B, L], t [B])                        | logits [B, L, V] |
| CondDenoiseFn   | (params, tokens [B, L], t [B], labels int32 [B])      | logits [B, L, V] |
| ClassifierFn    | (params, tokens [B, L], t [B])                        | logits [B, C]    |
| CausalLogitsFn  | (params, tokens [B, L])  (position i sees <= i)       | logits [B, L, V] |
| MaskedLMFn      | (params, tokens [B, L], attention_mask int32 [B, L])  | logits [B, L, V] |
| ApplyFn         | (tokens [B, L], sigma float32 [B])  (params bound)    | logits [B, L, V] |

DenoiseFn is the diffusion denoiser x_theta(z_t, t) of the MDLM / ReMDM / UDLM samplers (a model
without time conditioning ignores t; the image samplers pass their step time). MaskedLMFn is a
large masked LM (LLaDA, Dream) over left-padded batches: it is not time-conditioned and pads are
attention_mask 0. ApplyFn is what a training loss differentiates (`diffusion.losses.loss_fn`).
"""
from __future__ import annotations

from typing import Any, Callable

import jax

Params = Any

DenoiseFn = Callable[[Params, jax.Array, jax.Array], jax.Array]
CondDenoiseFn = Callable[[Params, jax.Array, jax.Array, jax.Array], jax.Array]
ClassifierFn = Callable[[Params, jax.Array, jax.Array], jax.Array]
CausalLogitsFn = Callable[[Params, jax.Array], jax.Array]
MaskedLMFn = Callable[[Params, jax.Array, jax.Array], jax.Array]
ApplyFn = Callable[[jax.Array, jax.Array], jax.Array]
