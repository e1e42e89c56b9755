"""Left-to-right ancestral sampling of a causal (autoregressive) model, with classifier-free
guidance (CFG) and FUDGE-style classifier guidance: the AR baseline of the QM9 guidance sweep
(SPEC_DOMAINS §M.6: "D-CBG (right; FUDGE for AR)"). Never imports Flax.

Model interface: `logits_fn(params, tokens int32 [B, L]) -> next-token logits [B, L, V]` of a
causal model (row l sees tokens[:, :l + 1] and predicts token l + 1); params is any pytree, so
per-call inputs (class labels) ride inside it.

Layout: position 0 holds `bos_id` (the data's `[<bos>] + ids + [<eos>] + <pad>...` framing,
`remdm_jax.molecules.tokenizer`); positions 1..L-1 are drawn in order, one `lax.scan` step each,
with a full recompute of the L-token forward pass per step (positions > i hold `fill_id` and are
not seen by the causal rows < i). Nothing is forced after an <eos>: the model continues (pads are
modelled tokens on QM9) and decoding strips the specials.

Step i (i = 1..L-1), with log p(. | x_<i) = log_softmax(logits[:, i - 1]):
  plain  log q = log p(. | x_<i)
  CFG    log q = cfg_mix(log p(. | x_<i, y), log p(. | x_<i, null), gamma)
         = log_softmax(gamma log p(.|y) + (1 - gamma) log p(.|null))   (`guidance.cfg_mix`,
         the formula of D-CFG); gamma = 1 / 0: one model call of B rows (label / null class),
         else one batched call of 2B rows (`guidance.cfg_logits_pair`).
  FUDGE  log q(v) = log p(v | x_<i) + gamma log p_phi(y | x_<i, v, MASK...MASK)   (Yang & Klein
         2021), where p_phi is a classifier of noisy sequences (the QM9 D-CBG classifier, trained
         on absorbing-noised x_t): the prefix x_<i, the candidate v at position i, and the unknown
         suffix i+1..L-1 set to `mask_id`. All V candidates are scored (V classifier rows per
         sample per step) unless `top_k` is set: then, as FUDGE does, only the top_k candidates of
         the (temperature-free) LM distribution are scored and q is restricted to them (the others
         get probability 0). The classifier's time input is the masked fraction (L - 1 - i) / L
         (a classifier without time conditioning ignores it).
  The draw is categorical(softmax(log q / temperature)) by the exact32 Gumbel-max of
  `sampling.draws` with per-(row, position) keys fold_in(fold_in(fold_in(key, i), b), i), so a
  sample does not depend on the batch size. `sample_with_info(..., gumbel=G)` replays injected
  Gumbel noise G float32 [L - 1, B, V] instead (step i uses G[i - 1]).

NFE (info): "nfe" = model forward passes per sample = L - 1 (a CFG pass with gamma not in {0, 1}
runs 2 rows per sample, counted in "model_rows"); "classifier_nfe" = classifier rows per sample
(FUDGE: (L - 1) * V, or (L - 1) * top_k).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from remdm_jax.sampling import draws
from remdm_jax.sampling.guidance import _check_gamma, cfg_logits_pair, cfg_mix, class_log_prob
from remdm_jax.diffusion.subs import NEG_INF
from remdm_jax.types import CausalLogitsFn



def _check_int(name, v, lo):
  if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
    raise ValueError(f"{name}={v!r} must be an int >= {lo}")
  return int(v)


@dataclasses.dataclass(frozen=True)
class ARCFG:
  """Classifier-free guidance of a class-conditional causal model.

  cond_logits_fn(model_params, tokens int32 [N, L], labels int32 [N]) -> logits [N, L, V];
  label `null_label` is the null class. Sampler params: {"model": model_params, "labels": int32
  [B] (or a scalar) target classes}. gamma: static float (1: conditional only, 0: null only)."""

  cond_logits_fn: Callable
  gamma: float
  null_label: int

  def __post_init__(self):
    if not callable(self.cond_logits_fn):
      raise ValueError(f"ARCFG.cond_logits_fn={self.cond_logits_fn!r} must be callable")
    object.__setattr__(self, "gamma", _check_gamma(self.gamma, "ARCFG"))
    _check_int("ARCFG.null_label", self.null_label, 0)


@dataclasses.dataclass(frozen=True)
class FUDGEGuidance:
  """FUDGE-style classifier guidance (module docstring).

  classifier_fn(params, tokens int32 [N, L], t float32 [N]) -> log p(y | x) [N, C] (normalised
  over classes; e.g. `models.dit.make_classifier_fn`). Sampler params: {"model": logits_fn params,
  "classifier": classifier params}. label: the target class; mask_id: the id of the unknown
  suffix; top_k: None (score all V candidates) or the number of LM candidates scored;
  chunk_size: classifier rows per call (memory bound)."""

  classifier_fn: Callable
  gamma: float
  label: int
  mask_id: int
  top_k: Optional[int] = None
  chunk_size: int = 4096

  def __post_init__(self):
    if not callable(self.classifier_fn):
      raise ValueError(f"FUDGEGuidance.classifier_fn={self.classifier_fn!r} must be callable")
    object.__setattr__(self, "gamma", _check_gamma(self.gamma, "FUDGEGuidance"))
    _check_int("FUDGEGuidance.label", self.label, 0)
    _check_int("FUDGEGuidance.mask_id", self.mask_id, 0)
    if self.top_k is not None:
      _check_int("FUDGEGuidance.top_k", self.top_k, 1)
    _check_int("FUDGEGuidance.chunk_size", self.chunk_size, 1)


def fudge_scores(classifier_fn, params, tokens: jax.Array, i, candidates: jax.Array, label: int,
                 mask_id: int, chunk_size: int = 4096) -> jax.Array:
  """log p(y = label | x_<i, v at position i, mask at > i) for every candidate v, float32 [B, K].

  Args: tokens int32 [B, L] (positions < i are the prefix); i: the position (int or traced int32
  scalar); candidates int32 [B, K] token ids; classifier_fn as in `FUDGEGuidance`.
  The B * K rows are scored in chunks of `chunk_size` under `lax.map`.
  """
  B, L = tokens.shape
  K = candidates.shape[1]
  pos = jnp.arange(L, dtype=jnp.int32)
  base = jnp.where(pos[None, :] < i, tokens, jnp.int32(mask_id))  # prefix, then all masks
  n = B * K
  chunk = max(1, min(int(chunk_size), n))
  n_chunks = -(-n // chunk)
  idx = jnp.arange(n_chunks * chunk, dtype=jnp.int32) % n
  t = ((L - 1 - jnp.asarray(i, jnp.float32)) / L)

  def run(ix):
    b, k = ix // K, ix % K
    rows = jnp.where(pos[None, :] == i, candidates[b, k][:, None], base[b])
    return class_log_prob(classifier_fn(params, rows, jnp.full(ix.shape, t, jnp.float32)), label,
                          "FUDGE")

  out = lax.map(run, idx.reshape(n_chunks, chunk)).reshape(-1)[:n]
  return out.astype(jnp.float32).reshape(B, K)


class ARSampler:
  """Callable returned by `make_ar_sampler`: sampler(params, key, batch_size) -> int32 [B, L].
  `sample_with_info(params, key, batch_size, gumbel=None)` also returns info {"nfe",
  "model_rows", "classifier_nfe"} (per sample, static). Attributes: seq_len, nfe (model passes
  per sample), model_rows (model rows per sample), core (un-jitted)."""

  def __init__(self, core, seq_len, nfe, model_rows, jit):
    self.core, self.seq_len, self.nfe, self.model_rows = core, seq_len, nfe, model_rows
    self._fn = jax.jit(core, static_argnames=("batch_size",)) if jit else core

  def sample_with_info(self, params, key, batch_size: int, gumbel=None):
    b = _check_int("batch_size", batch_size, 1)
    if gumbel is not None and tuple(np.shape(gumbel))[:2] != (self.seq_len - 1, b):
      raise ValueError(f"gumbel must have shape (L - 1, B, V) = ({self.seq_len - 1}, {b}, V), "
                       f"got {tuple(np.shape(gumbel))}")
    return self._fn(params, key, gumbel, batch_size=b)

  def __call__(self, params, key, batch_size: int):
    return self.sample_with_info(params, key, batch_size)[0]


def make_ar_sampler(logits_fn: Optional[CausalLogitsFn], *, seq_len: int, bos_id: int,
                    fill_id: Optional[int] = None, temperature: float = 1.0,
                    guidance: Union[None, ARCFG, FUDGEGuidance] = None,
                    jit: bool = True) -> ARSampler:
  """The AR ancestral sampler (module docstring) as one `lax.scan` over positions 1..L-1.

  Args:
    logits_fn: (params, tokens int32 [B, L]) -> next-token logits [B, L, V]; None with ARCFG
      (which carries cond_logits_fn). With FUDGEGuidance it is the (unconditional) LM and gets
      params["model"].
    seq_len: L >= 2. bos_id: the token at position 0. fill_id: the placeholder of not-yet-drawn
      positions (default bos_id; invisible to a causal model).
    temperature: > 0; the step draws from softmax(log q / temperature).
    guidance: None, ARCFG or FUDGEGuidance.
  Returns: `ARSampler`; samples int32 [B, L] with column 0 = bos_id.
  Raises: ValueError (before tracing) for bad sizes / ids / temperature / guidance, or a
    logits_fn given together with ARCFG (or missing without it); on the first call (at trace
    time, before any sampling; V from the logits shape by `jax.eval_shape`) for bos_id or
    fill_id >= V or params without the keys the guidance needs.
  """
  L = _check_int("seq_len", seq_len, 2)
  bos = _check_int("bos_id", bos_id, 0)
  fill = bos if fill_id is None else _check_int("fill_id", fill_id, 0)
  try:
    temp = float(temperature)
  except (TypeError, ValueError):
    raise ValueError(f"temperature={temperature!r} must be a number > 0") from None
  if not (np.isfinite(temp) and temp > 0):
    raise ValueError(f"temperature={temperature!r} must be a finite number > 0")
  if guidance is not None and not isinstance(guidance, (ARCFG, FUDGEGuidance)):
    raise ValueError(f"guidance={guidance!r} must be None, ARCFG or FUDGEGuidance")
  is_cfg = isinstance(guidance, ARCFG)
  is_fudge = isinstance(guidance, FUDGEGuidance)
  if is_cfg and logits_fn is not None:
    raise ValueError("make_ar_sampler: with ARCFG pass logits_fn=None (the guidance carries "
                     "cond_logits_fn)")
  if not is_cfg and not callable(logits_fn):
    raise ValueError("make_ar_sampler: logits_fn is required without ARCFG")
  rows_per_pass = 2 if is_cfg and guidance.gamma not in (0.0, 1.0) else 1
  need = {"model", "labels"} if is_cfg else ({"model", "classifier"} if is_fudge else None)

  def core(params, key, gumbel, batch_size):
    B = batch_size
    if need is not None and (not isinstance(params, dict) or set(params) != need):
      got = sorted(params) if isinstance(params, dict) else type(params).__name__
      raise ValueError(f"make_ar_sampler: params must be a dict with keys {sorted(need)}, "
                       f"got {got}")

    def next_log_probs(tokens, i):
      """[B, V] float32 log q of position i (before temperature), classifier rows."""
      def at(logits):  # row i - 1 predicts position i
        row = lax.dynamic_index_in_dim(logits, i - 1, axis=1, keepdims=False)
        return row.astype(jnp.float32)
      if is_cfg:
        labels = jnp.broadcast_to(jnp.asarray(params["labels"], jnp.int32), (B,))
        f = lambda p, z, t, y: guidance.cond_logits_fn(p, z, y)
        lc, lu = cfg_logits_pair(f, params["model"], tokens, jnp.zeros((B,), jnp.float32),
                                 labels, guidance.null_label, guidance.gamma)
        return cfg_mix(None if lc is None else at(lc), None if lu is None else at(lu),
                       guidance.gamma)
      p = params["model"] if is_fudge else params
      logp = jax.nn.log_softmax(at(logits_fn(p, tokens)), axis=-1)
      if not is_fudge:
        return logp
      V = logp.shape[-1]
      k = V if guidance.top_k is None else min(guidance.top_k, V)
      if k == V:
        cand = jnp.broadcast_to(jnp.arange(V, dtype=jnp.int32), (B, V))
      else:
        cand = lax.top_k(logp, k)[1].astype(jnp.int32)
      c = fudge_scores(guidance.classifier_fn, params["classifier"], tokens, i, cand,
                       guidance.label, guidance.mask_id, guidance.chunk_size)
      guided = jnp.take_along_axis(logp, cand, axis=-1) + jnp.float32(guidance.gamma) * c
      out = jnp.full((B, V), NEG_INF, jnp.float32)
      return out.at[jnp.arange(B)[:, None], cand].set(guided)

    tokens0 = jnp.full((B, L), fill, jnp.int32).at[:, 0].set(bos)
    rows = jnp.arange(B, dtype=jnp.int32)
    if is_cfg:
      labels0 = jnp.broadcast_to(jnp.asarray(params["labels"], jnp.int32), (B,))
      V = jax.eval_shape(guidance.cond_logits_fn, params["model"], tokens0, labels0).shape[-1]
    else:
      V = jax.eval_shape(logits_fn, params["model"] if is_fudge else params, tokens0).shape[-1]
    for name, v in (("bos_id", bos), ("fill_id", fill)):
      if v >= V:
        raise ValueError(f"make_ar_sampler: {name}={v} is outside the model's vocabulary of "
                         f"V={V} tokens (ids 0..{V - 1})")

    def body(tokens, xs):
      i = xs["i"]
      logq = next_log_probs(tokens, i) / jnp.float32(temp)
      if gumbel is None:
        keys = draws.position_keys(jax.random.fold_in(key, i), rows, jnp.full((B,), i))
        tok = draws.gumbel_argmax(keys, logq)
      else:
        tok = jnp.argmax(logq + xs["g"].astype(jnp.float32), axis=-1).astype(jnp.int32)
      return lax.dynamic_update_index_in_dim(tokens, tok, i, axis=1), None

    xs = {"i": jnp.arange(1, L, dtype=jnp.int32)}
    if gumbel is not None:
      xs["g"] = jnp.asarray(gumbel, jnp.float32)
    tokens, _ = lax.scan(body, tokens0, xs)
    cls_rows = 0
    if is_fudge:
      cls_rows = (L - 1) * (V if guidance.top_k is None else min(guidance.top_k, V))
    return tokens, {"nfe": jnp.int32(L - 1), "model_rows": jnp.int32((L - 1) * rows_per_pass),
                    "classifier_nfe": jnp.int32(cls_rows)}

  return ARSampler(core, L, L - 1, (L - 1) * rows_per_pass, jit)
