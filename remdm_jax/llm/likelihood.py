"""Conditional log-likelihood of a masked LM by LLaDA's Monte-Carlo estimate (ML-GSAI/LLaDA
`eval_llada.py`: `_forward_process`, `get_logits`, `get_loglikelihood`), the quantity lm-eval's
`loglikelihood` requests ask for (multiple-choice tasks, TruthfulQA MC).

For a prefix p and a target y of length T, with a model that never sees its own prompt masked:

  log p(y | p) >= E_k E_{M: |M| = k} [(T / k) sum_{i in M} log p_theta(y_i | p, y with M masked)]

estimated with `mc_num` draws, in batches of b rows (`mc_num % b == 0`). Per batch (the
reference's low-discrepancy draw of the mask counts):
  k ~ U{1..T};  x_j = round(linspace(k, k + (b - 1) T / b, b))_j  (torch's float32 linspace,
  `sampling.schedule.torch_linspace_f32`; round half to even),
  x_j = ((x_j - 1) mod T) + 1;  row j masks a uniform random subset of x_j target positions;
  loss_batch = sum_j sum_{i in M_j} CE_i / (x_j / T) / b.
The estimate is -mean over batches. CFG (`cfg > 0`): the unconditional rows have the prefix set to
MASK, logits = un + (cfg + 1)(cond - un) (LLaDA's form). A one-token target is exact
(k = 1, the only subset). LLaDA's logits are not shifted; Dream's are re-aligned by its
logits_fn, so the same estimator applies to both (Dream's own eval uses a different per-token
Bernoulli forward process; `remdm_jax.llm.dream`).

The draws (k, the subsets) come from a numpy Generator on the host (`mc_draws`), so the estimate
is reproducible from a seed and checkable against a transcription of the reference; the masked
cross-entropies are one jitted program per (b, length bucket). Never imports Flax.
"""
from __future__ import annotations

import functools
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from remdm_jax.sampling.schedule import torch_linspace_f32
from remdm_jax.types import MaskedLMFn


def mc_draws(rng: np.random.Generator, target_len: int, batch: int):
  """One batch of LLaDA's `_forward_process` draws for a target of `target_len` tokens.
  Returns (is_mask bool [b, T], p_mask float32 [b] = x_j / T)."""
  T, b = int(target_len), int(batch)
  if T < 1 or b < 1:
    raise ValueError(f"target_len={T} and batch={b} must be >= 1")
  k = int(rng.integers(1, T + 1))
  x = np.round(torch_linspace_f32(float(k), k + (b - 1) * (T / b), b)).astype(np.int64)
  x = ((x - 1) % T) + 1
  is_mask = np.zeros((b, T), bool)
  for j in range(b):
    is_mask[j] = (np.arange(T) < x[j])[rng.permutation(T)]
  return is_mask, (x / T).astype(np.float32)


def _bucket(n: int, step: int = 32) -> int:
  return max(step, -(-n // step) * step)


@functools.lru_cache(maxsize=None)
def _loss_program(logits_fn, mask_id: int, cfg: float):
  """jit: (params, seq int32 [b, L], am int32 [b, L], prompt bool [b, L], masked bool [b, L],
  p_mask float32 [b]) -> float32 sum_j sum_{masked} CE / p_mask_j (not yet / b)."""

  def loss(params, seq, am, prompt, masked, p_mask):
    noisy = jnp.where(masked, mask_id, seq)
    if cfg > 0:
      un = jnp.where(prompt, mask_id, noisy)
      both = logits_fn(params, jnp.concatenate([noisy, un]), jnp.concatenate([am, am]))
      b = seq.shape[0]
      cond, unc = both[:b].astype(jnp.float32), both[b:].astype(jnp.float32)
      logits = unc + (cfg + 1.0) * (cond - unc)
    else:
      logits = logits_fn(params, noisy, am).astype(jnp.float32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    ce = -jnp.take_along_axis(logp, seq[..., None], axis=-1)[..., 0]
    return jnp.sum(jnp.where(masked, ce / p_mask[:, None], 0.0))

  return jax.jit(loss)


def mc_loglikelihood(logits_fn: MaskedLMFn, params, prefix: Sequence[int],
                     target: Sequence[int], *, mask_id: int, mc_num: int = 128,
                     batch_size: int = 32, cfg: float = 0.0, seed=0,
                     rng: Optional[np.random.Generator] = None, pad_id: int = 0,
                     bucket: int = 32) -> float:
  """LLaDA's Monte-Carlo estimate of log p(target | prefix) (module docstring).

  Args:
    logits_fn: MaskedLMFn (params, tokens [b, L], attention_mask [b, L]) -> logits [b, L, V].
    prefix, target: token id lists (target non-empty; prefix may be empty).
    mask_id: the model's mask id. mc_num: number of masked samples; batch_size: rows per model
      call (mc_num % batch_size == 0, as the reference asserts). cfg: classifier-free guidance
      scale (0 = off).
    seed / rng: the draws come from `rng`, else numpy.random.default_rng(seed).
    pad_id, bucket: sequences are left-padded (attention mask 0) to a multiple of `bucket` so one
      compiled program serves many lengths (RoPE attention scores depend only on position
      differences, so padding does not change the logits beyond float rounding).
  Returns:
    the estimate (float, nats; <= 0 up to Monte-Carlo noise).
  Raises:
    ValueError on an empty target, mc_num % batch_size != 0, ids outside [0, V) are the caller's
    business (the model gathers them).
  """
  prefix, target = [int(t) for t in prefix], [int(t) for t in target]
  if not target:
    raise ValueError("target must hold at least one token")
  if mc_num < 1 or batch_size < 1 or mc_num % batch_size:
    raise ValueError(f"mc_num={mc_num} must be a positive multiple of batch_size={batch_size}")
  if cfg < 0:
    raise ValueError(f"cfg={cfg} must be >= 0")
  rng = np.random.default_rng(seed) if rng is None else rng
  P, T = len(prefix), len(target)
  L = _bucket(P + T, bucket)
  pad = L - P - T
  b = batch_size
  seq = np.full((b, L), pad_id, np.int32)
  seq[:, pad:] = prefix + target
  am = np.zeros((b, L), np.int32)
  am[:, pad:] = 1
  prompt = np.zeros((b, L), bool)
  prompt[:, pad:pad + P] = True
  fn = _loss_program(logits_fn, int(mask_id), float(cfg))
  losses = []
  for _ in range(mc_num // b):
    is_mask, p_mask = mc_draws(rng, T, b)
    masked = np.zeros((b, L), bool)
    masked[:, pad + P:] = is_mask
    total = fn(params, jnp.asarray(seq), jnp.asarray(am), jnp.asarray(prompt),
               jnp.asarray(masked), jnp.asarray(p_mask))
    losses.append(float(total) / b)
  return -float(np.mean(losses))
