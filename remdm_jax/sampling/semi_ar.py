"""Semi-autoregressive generation of sequences longer than the denoiser's length L (MDLM §semi-AR).

MDLM's semi-AR sampler (kuleshov-group/mdlm `diffusion.py`, `_semi_ar_sampler` /
`restore_model_and_semi_ar_sample`, flags `sampling.semi_ar`, `sampling.stride_length`,
`sampling.num_strides`) generates a first window of L tokens, then `num_strides` times keeps the
last L - stride_length tokens of the window as a frozen prefix of a new all-mask window and
generates the stride_length tokens after it. The output is

  window_0[:stride] ++ window_1[:stride] ++ ... ++ window_S[:stride] ++ window_S[stride:]

of length L + S * stride (S = num_strides), i.e. window s covers output positions
[s * stride, s * stride + L).

Here every window is one run of an existing `Sampler` (any SamplerConfig strategy: mdlm, ReMDM
cap / rescale / conf / loop / switch, fb, dfm) called through its un-jitted `core` with
`prompt` / `prompt_mask`, and all S + 1 windows are one `lax.scan` (one compiled program, no host
round trip between strides). Window s uses key fold_in(key, s); window 0 with no user prompt equals
`sampler(params, fold_in(key, 0))` bitwise.

Differences from the reference (documented choices):
  * The prefix is frozen through `prompt_mask`, so remasking strategies (ReMDM) never remask it;
    the reference relies on the MDLM update's copy-over of unmasked tokens (it only ran MDLM).
  * The reference hard-codes `dt = 0.001` (1001 ancestral updates + a final argmax per window) and
    returns the decoded texts of every prefix window_0..window_k; we run the given sampler's own
    schedule and return only the full token array (prefixes are slices of it).
  * No BOS is injected (the reference's MDLM semi-AR sampler injects none either).
  * An optional user prompt freezes its positions of the first window only (later windows freeze
    the previous window's tail, which contains whatever prompt tokens are still in view).
  * A prefix position that still holds mask_id (only possible with a sampler built with
    `noise_removal=False`) is not frozen but regenerated in the next window.
"""
from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from remdm_jax.sampling.sampler import Sampler, check_batch, check_prompt


def check_semi_ar(seq_len: int, num_strides, stride_length) -> tuple[int, int]:
  """(num_strides, stride_length) as ints, else ValueError naming the bad value:
  num_strides must be an int >= 0, stride_length an int in [1, seq_len - 1]."""
  if not isinstance(num_strides, (int, np.integer)) or isinstance(num_strides, bool) or (
      num_strides < 0):
    raise ValueError(f"num_strides={num_strides!r} must be an int >= 0")
  if not isinstance(stride_length, (int, np.integer)) or isinstance(stride_length, bool) or not (
      1 <= stride_length <= seq_len - 1):
    raise ValueError(f"stride_length={stride_length!r} must be an int in [1, L - 1 = "
                     f"{seq_len - 1}] (L = seq_len = {seq_len})")
  return int(num_strides), int(stride_length)


def semi_ar_length(seq_len: int, num_strides: int, stride_length: int) -> int:
  """Output length L + num_strides * stride_length."""
  return seq_len + num_strides * stride_length


def semi_ar_nfe(sampler: Sampler, num_strides: int) -> int:
  """Static denoiser calls per sample: (num_strides + 1) * sampler.nfe."""
  return (num_strides + 1) * sampler.nfe


def make_semi_ar_sampler(sampler: Sampler, *, num_strides: int, stride_length: int,
                         jit: bool = True):
  """Semi-AR generation with `sampler` in every window.

  Args:
    sampler: a `Sampler` from `make_sampler` (jit or not; its `core` is used). Replay uniforms,
      trajectories and mesh placement of inputs are not supported here (info keeps `nfe` and,
      with guidance, `classifier_nfe`, summed over windows).
    num_strides: S >= 0 extra windows (0 = one ordinary window).
    stride_length: new tokens per extra window, in [1, L - 1]; each extra window freezes the
      previous window's last L - stride_length tokens.
    jit: jit the returned function (batch_size static).

  Returns:
    fn(params, key, batch_size=None, prompt=None, prompt_mask=None) -> (tokens int32
    [B, L + S * stride_length], info) with info["nfe"] int32 (denoiser calls actually made,
    = (S + 1) * sampler.nfe without caching). prompt: optional int32 [B, L] of the FIRST window
    with prompt_mask bool [B, L] (default prompt != mask_id), as for `Sampler.sample_with_info`.
    fn has attributes nfe (static: (S + 1) * sampler.nfe), length (L + S * stride_length),
    num_strides, stride_length and sampler. One compiled program per batch size: the S + 1
    windows are a `lax.scan` whose body is `sampler.core` (window s key: fold_in(key, s)).

  Raises:
    ValueError (before any tracing) for a `sampler` that is not a `Sampler`, num_strides < 0,
    stride_length outside [1, L - 1], a prompt that is not [B, L] (e.g. longer than L), a
    prompt / batch_size mismatch, prompt_mask without prompt or of another shape, or frozen
    positions holding mask_id.
  """
  if not isinstance(sampler, Sampler):
    raise ValueError(f"make_semi_ar_sampler needs a `Sampler` from `make_sampler`, got "
                     f"{type(sampler).__name__} {sampler!r:.80}")
  L, m = sampler.seq_len, sampler.mask_id
  S, k = check_semi_ar(L, num_strides, stride_length)
  core = sampler.core
  pos = jnp.arange(L)

  def run(params, key, batch_size, prompt, prompt_mask):
    B = batch_size
    if prompt is None:
      p0 = jnp.full((B, L), m, jnp.int32)
      pm0 = jnp.zeros((B, L), bool)
    else:
      p0, pm0 = prompt.astype(jnp.int32), prompt_mask.astype(bool)

    def window(prev, s):
      # Window s >= 1: the previous window's last L - k tokens, then k masks.
      shifted = jnp.where(pos < L - k, jnp.roll(prev, -k, axis=1), m)
      first = s == 0
      p = jnp.where(first, p0, shifted)
      pm = jnp.where(first, pm0, (pos < L - k) & (shifted != m))
      x, info = core(params, jax.random.fold_in(key, s), B, prompt=p, prompt_mask=pm)
      counts = {name: v for name, v in info.items() if jnp.ndim(v) == 0}  # nfe, classifier_nfe
      return x, (x[:, :k], counts)

    init = jnp.full((B, L), m, jnp.int32)
    last, (heads, counts) = lax.scan(window, init, jnp.arange(S + 1, dtype=jnp.int32))
    heads = jnp.moveaxis(heads, 0, 1).reshape(B, (S + 1) * k)
    out = jnp.concatenate([heads, last[:, k:]], axis=1)
    return out, {name: jnp.sum(v, axis=0) for name, v in counts.items()}

  fn = jax.jit(run, static_argnames=("batch_size",)) if jit else run

  def sample(params, key, batch_size=None, prompt=None, prompt_mask=None):
    prompt, prompt_mask, batch_size = check_prompt(prompt, prompt_mask, batch_size, L, m)
    batch_size = check_batch(batch_size, sampler.cfg)
    return fn(params, key, batch_size=int(batch_size), prompt=prompt, prompt_mask=prompt_mask)

  sample.nfe = semi_ar_nfe(sampler, S)
  sample.length = semi_ar_length(L, S, k)
  sample.num_strides, sample.stride_length, sample.sampler = S, k, sampler
  return sample


def semi_ar_sample(sampler: Sampler, params: Any, key: jax.Array, *, num_strides: int,
                   stride_length: int, batch_size: Optional[int] = None, prompt=None,
                   prompt_mask=None):
  """One-shot `make_semi_ar_sampler(sampler, ...)(params, key, ...)` -> (tokens int32
  [B, L + num_strides * stride_length], info). Compiles on every call; keep the function of
  `make_semi_ar_sampler` to sample repeatedly."""
  fn = make_semi_ar_sampler(sampler, num_strides=num_strides, stride_length=stride_length)
  return fn(params, key, batch_size=batch_size, prompt=prompt, prompt_mask=prompt_mask)
