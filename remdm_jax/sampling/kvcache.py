"""The model kernel of block decoding with a KV cache: which model call gives a block's logits at
each step (the cache modes of NVlabs/Fast-dLLM `llada/generate.py`: `generate`,
`generate_with_prefix_cache`, `generate_with_dual_cache`). Never imports Flax: the model is
reached through the callables of `remdm_jax.types` (MaskedLMFn, PrefillFn, WindowFn).

Modes, for the current block [start, start + Bk) of a canvas of length L:
  none    every step is a full forward (`logits_fn`); no cache.
  prefix  a refresh step is a full forward that also fills the cache (`prefill_fn`); the other
          steps run the window [start, L) (current block + suffix) against the cache, i.e. the
          prompt and finished blocks come from the cache (Fast-dLLM's prefix cache).
  dual    as prefix, but the window is the block [start, start + Bk) only: prefix and suffix both
          come from the cache (Fast-dLLM's dual cache with `replace_position`).
Refresh: `refresh_every` = 0 refreshes once per block (at its first step, as Fast-dLLM);
k >= 1 at every step i with i % k == 0 (k = 1: every step is a full forward, so every mode equals
`none` token for token). A window call writes its positions' keys / values into the cache; the
other entries keep the values of the last refresh (stale when their inputs changed since: the
approximation, which comes only from the refresh interval).
Static shapes: the cache is allocated once ([R, L] rows), the prefix window [start, L) needs a
static start (the block driver unrolls its blocks for prefix), the dual window has length Bk.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax

from remdm_jax.types import MaskedLMFn, PrefillFn, WindowFn

CACHE_MODES = ("none", "prefix", "dual")


@dataclasses.dataclass(frozen=True)
class CacheSpec:
  """mode: one of `CACHE_MODES`; refresh_every: 0 = once per block, k >= 1 = every k steps."""

  mode: str = "none"
  refresh_every: int = 0

  def __post_init__(self):
    if self.mode not in CACHE_MODES:
      raise ValueError(f"CacheSpec.mode={self.mode!r} must be one of {CACHE_MODES}")
    r = self.refresh_every
    if isinstance(r, bool) or not isinstance(r, int) or r < 0:
      raise ValueError(f"CacheSpec.refresh_every={r!r} must be an int >= 0 (0 = once per block)")

  def refresh(self, i):
    """bool scalar: does step i (0-based within the block) refresh the cache?"""
    if self.refresh_every == 0:
      return i == 0
    return i % self.refresh_every == 0


class BlockModel:
  """The logits of one block at step i: `model(tokens [R, L], state, i) -> (logits [R, Bk, V],
  state)` (module docstring); `step(...)` hands a full forward the logits of the whole generated
  region instead (the confidence rules' candidates, `sampling.blocks`). R rows (2B with CFG: the
  unconditional rows get their own cache rows). `init_state(tokens)` is the state before the
  block's first step (the zero cache; the first step always refreshes). Every call is one model
  call (NFE 1).

  Args:
    spec: `CacheSpec`. logits_fn: MaskedLMFn (mode none). prefill_fn, window_fn: PrefillFn,
      WindowFn (modes prefix / dual). params: the model's params. attention_mask: int32 [R, L].
    start: first position of the block (a Python int for prefix; may be traced otherwise).
    block_length: Bk.
  """

  def __init__(self, spec: CacheSpec, logits_fn: Optional[MaskedLMFn],
               prefill_fn: Optional[PrefillFn], window_fn: Optional[WindowFn], params,
               attention_mask, start, block_length: int):
    if spec.mode != "none" and (prefill_fn is None or window_fn is None):
      raise ValueError(f"cache mode {spec.mode!r} needs prefill_fn and window_fn "
                       "(e.g. llm.model.make_cache_fns)")
    if spec.mode == "none" and logits_fn is None:
      raise ValueError("cache mode 'none' needs logits_fn")
    if spec.mode == "prefix" and not isinstance(start, int):
      raise ValueError("cache mode 'prefix' needs a static (Python int) block start")
    self.spec, self.params, self.am = spec, params, attention_mask
    self.logits_fn, self.prefill_fn, self.window_fn = logits_fn, prefill_fn, window_fn
    self.start, self.bk = start, block_length

  def init_state(self, tokens):
    if self.spec.mode == "none":
      return ()
    shp = jax.eval_shape(lambda t: self.prefill_fn(self.params, t, self.am, self.start,
                                                   self.bk)[1], tokens)
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shp)

  def _prefill(self, tokens, state):
    del state
    return self.prefill_fn(self.params, tokens, self.am, self.start, self.bk)

  def _window(self, tokens, state):
    if self.spec.mode == "prefix":
      win = tokens[:, self.start:]
    else:
      win = lax.dynamic_slice_in_dim(tokens, self.start, self.bk, axis=1)
    return self.window_fn(self.params, win, self.start, state, self.am, self.bk)

  def step(self, tokens, state, i, full_span, on_full, on_window):
    """Step i's model call, handed to the caller's continuation: a full forward (mode none, or a
    refresh step) gives on_full(logits [R, W, V] of positions [lo, lo + W)), full_span = (lo, W)
    with W a static int and lo an int that may be traced; a window step gives on_window(logits
    [R, Bk, V] of the block). Both continuations return the same pytree `out`.
    -> (out, state). Every call is one model call (NFE 1)."""
    lo, width = full_span

    def full(tokens, state):
      if self.spec.mode == "none":
        lg = lax.dynamic_slice_in_dim(self.logits_fn(self.params, tokens, self.am), lo, width,
                                      axis=1)
      else:
        lg, state = self.prefill_fn(self.params, tokens, self.am, lo, width)
      return on_full(lg), state

    def window(tokens, state):
      lg, state = self._window(tokens, state)
      return on_window(lg), state

    if self.spec.mode == "none" or self.spec.refresh_every == 1:
      return full(tokens, state)
    return lax.cond(self.spec.refresh(i), full, window, tokens, state)

  def __call__(self, tokens, state, i):
    if self.spec.mode == "none":
      logits = self.logits_fn(self.params, tokens, self.am)
      return lax.dynamic_slice_in_dim(logits, self.start, self.bk, axis=1), state
    if self.spec.refresh_every == 1:
      return self._prefill(tokens, state)
    pre = jax.eval_shape(self._prefill, tokens, state)[0]

    def window(tokens, state):
      lg, st = self._window(tokens, state)
      return lg.astype(pre.dtype), st

    return lax.cond(self.spec.refresh(i), self._prefill, window, tokens, state)
