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
| PrefillFn       | (params, tokens [B, L], attention_mask [B, L], start, | (logits [B, width, V], |
|                 |  width)                                               |  cache)          |
| WindowFn        | (params, tokens [B, W], start, cache,                 | (logits [B, width, V], |
|                 |  attention_mask [B, L], width)                        |  cache)          |

DenoiseFn is the diffusion denoiser x_theta(z_t, t) of the MDLM / ReMDM / UDLM samplers (a model
without time conditioning ignores t; the image samplers pass their step time). MaskedLMFn is a
large masked LM (LLaDA, Dream) over left-padded batches: it is not time-conditioned and pads are
attention_mask 0. ApplyFn is what a training loss differentiates (`diffusion.losses.loss_fn`).

PrefillFn / WindowFn are a MaskedLMFn with a KV cache (`llm.model.make_cache_fns`; the cache modes
of `sampling.blocks`): PrefillFn is the full forward that also returns the cache (any pytree, e.g.
{"k", "v"} [n_layers, B, L, K, D]); WindowFn runs only the query positions [start, start + W)
against the cache and writes their keys / values back. Both return logits only at positions
start .. start + width - 1 (width a static int; start an int32 scalar that may be traced).
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
Cache = Any
PrefillFn = Callable[[Params, jax.Array, jax.Array, Any, int], tuple[jax.Array, Cache]]
WindowFn = Callable[[Params, jax.Array, Any, Cache, jax.Array, int], tuple[jax.Array, Cache]]
