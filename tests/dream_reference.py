"""A numpy transcription of Dream's generation (`generation_utils.py` of Dream-v0-Instruct-7B on
the Hugging Face Hub: `DreamGenerationMixin._sample` and `sample_tokens`, with `top_p_logits` /
`top_k_logits`), written from the reference for tests; torch's random draws are replaced by
injected noise of the same distribution:

  torch.rand(M) < p_transfer      (origin)        -> u [steps, B, N] uniforms, read at the masked
                                                     positions in row-major order
  Categorical(probs).sample()     (temperature>0) -> argmax(log probs + g), g [steps, B, N, V]
                                                     Gumbels at those positions
  multinomial(softmax(conf / alg_temp), n)        -> top-n of conf / alg_temp + h (Gumbel-top-k,
                                                     h [steps, B, N]; softmax's shift is constant)
Everything runs in float32 like the reference's float32 logits. torch.topk's order among equal
confidences is unspecified; here ties go to the lower position (a stable sort).
"""
from __future__ import annotations

import numpy as np

F32 = np.float32
FMIN = np.finfo(np.float32).min


def torch_linspace_f32(start: float, end: float, n: int) -> np.ndarray:
  """CPU torch.linspace(start, end, n) in float32, bit for bit: step = f32((e - s) / f32(n - 1));
  the first half is s + step i, the second half e - step (n - 1 - i), each rounded once."""
  s, e = F32(start), F32(end)
  step = np.float64(F32((e - s) / F32(n - 1))) if n > 1 else 0.0
  idx = np.arange(n, dtype=np.float64)
  lo = np.float64(s) + step * idx
  hi = np.float64(e) - step * (n - 1 - idx)
  return np.where(np.arange(n) < n // 2, lo, hi).astype(F32)


def _softmax(x):
  x = x.astype(F32)
  m = np.max(x, axis=-1, keepdims=True)
  e = np.exp(x - m)
  return (e / e.sum(-1, keepdims=True)).astype(F32)


def top_p_logits(logits, top_p):
  order = np.argsort(-logits, axis=-1, kind="stable")
  sorted_logits = np.take_along_axis(logits, order, -1)
  cum = np.cumsum(_softmax(sorted_logits), axis=-1, dtype=F32)
  remove = cum > F32(top_p)
  remove[..., 1:] = remove[..., :-1].copy()
  remove[..., 0] = False
  mask = np.zeros_like(remove)
  np.put_along_axis(mask, order, remove, -1)
  return np.where(mask, FMIN, logits).astype(F32)


def top_k_logits(logits, top_k):
  k = min(top_k, logits.shape[-1])
  kth = np.sort(logits, axis=-1)[..., ::-1][..., k - 1:k]
  return np.where(logits < kth, FMIN, logits).astype(F32)


def sample_tokens(logits, temperature=0.0, top_p=None, top_k=None, margin_confidence=False,
                  neg_entropy=False, gumbel=None):
  """Dream's `sample_tokens` on float32 logits [M, V]; gumbel [M, V] replaces the Categorical
  draw. Returns (confidence float32 [M], x0 int64 [M])."""
  logits = logits.astype(F32)
  if temperature > 0:
    logits = (logits / F32(temperature)).astype(F32)
  if top_p is not None and top_p < 1:
    logits = top_p_logits(logits, top_p)
  if top_k is not None:
    logits = top_k_logits(logits, top_k)
  probs = _softmax(logits)
  if temperature > 0:
    with np.errstate(divide="ignore"):
      x0 = np.argmax(np.log(probs) + gumbel.astype(F32), axis=-1)
    confidence = np.take_along_axis(probs, x0[:, None], -1)[:, 0]
  else:
    x0 = np.argmax(probs, axis=-1)
    confidence = np.max(probs, axis=-1)
  if margin_confidence:
    sp = np.sort(probs, axis=-1)[:, ::-1]
    confidence = (sp[:, 0] - sp[:, 1]).astype(F32)
  if neg_entropy:
    confidence = np.sum(probs * np.log(probs + F32(1e-10)), axis=-1, dtype=F32)
  return confidence.astype(F32), x0


def dream_sample(logits_fn, x, mask_id, *, steps, eps=1e-3, alg="origin", alg_temp=None,
                 temperature=0.0, top_p=None, top_k=None, noise=None):
  """Dream's `_sample` loop. logits_fn(x int [B, N]) -> float32 [B, N, V] ALREADY re-aligned
  (row i predicts token i: Dream's shift is the model's business). x: prompt + MASK slots.
  noise: {"u": [steps, B, N], "g": [steps, B, N, V], "h": [steps, B, N]} (module docstring).
  Returns the final x (int64 [B, N])."""
  x = np.array(x, dtype=np.int64)
  noise = noise or {}
  timesteps = torch_linspace_f32(1, eps, steps + 1)
  for i in range(steps):
    mask_index = x == mask_id
    logits = np.asarray(logits_fn(x), F32)
    mask_logits = logits[mask_index]
    t, s = timesteps[i], timesteps[i + 1]
    g = None if "g" not in noise else np.asarray(noise["g"][i])[mask_index]
    if alg == "origin":
      p_transfer = F32(1) - s / t if i < steps - 1 else F32(1)
      x0 = np.full(mask_logits.shape[0], mask_id, np.int64)
      transfer = np.asarray(noise["u"][i])[mask_index].astype(F32) < p_transfer
      if transfer.any():
        _, sampled = sample_tokens(mask_logits[transfer], temperature, top_p, top_k,
                                   gumbel=None if g is None else g[transfer])
        x0[transfer] = sampled
      x[mask_index] = x0
    elif alg in ("maskgit_plus", "topk_margin", "entropy"):
      confidence, x0 = sample_tokens(mask_logits, temperature, top_p, top_k,
                                     margin_confidence=alg == "topk_margin",
                                     neg_entropy=alg == "entropy", gumbel=g)
      num_mask_token = F32(mask_index.sum()) / F32(mask_index.shape[0])
      if i < steps - 1:
        n = int(F32(num_mask_token * (F32(1) - s / t)))
      else:
        n = int(num_mask_token)
      full = np.full(x.shape, -np.inf, F32)
      full[mask_index] = confidence
      if n > 0:
        if alg_temp is None or alg_temp == 0:
          score = full
        else:
          score = full / F32(alg_temp) + np.asarray(noise["h"][i], F32)
        transfer_index = np.argsort(-score, axis=-1, kind="stable")[:, :n]
        x_ = np.full(x.shape, mask_id, np.int64)
        x_[mask_index] = x0
        rows = np.arange(x.shape[0])[:, None]
        x[rows, transfer_index] = x_[rows, transfer_index]
    else:
      raise RuntimeError(f"Unknown alg: {alg}")
  return x
