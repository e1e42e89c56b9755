"""Confidence-ranked commit steps: pure per-step kernels of the sampler family (SPEC_DOMAINS §I.1,
§L.1, §L.3). Every kernel picks positions with `ranked.select_top_n` (MaskGIT:
`ranked.select_below_nth`) and draws its noise with `draws`; the loops that drive them are
`sampling.maskgit` and `sampling.blocks`. Never imports Flax.

MaskGIT (§I.1; google-research/maskgit `libml/parallel_decode.py`), `maskgit_step`: sample every
masked position from the codebook logits, keep the known ones, confidence p(sampled) (+inf for
known), Gumbel-annealed ranking log(conf) + choice_temperature (1 - r) g, re-mask the positions
strictly below the `mask_len`-th smallest score (`maskgit_mask_len`; `ranked.select_below_nth`,
the reference's `confidence < cut_off`): positions tied with the cut-off are committed, so fewer
than `mask_len` may stay masked.

LLaDA rules over one block of W positions (`ConfidenceSpec.rule`), `propose` + `commit`:
  llada       the official ML-GSAI/LLaDA `generate` (§L.3): x0 = argmax(logits) at temperature 0,
              else the Gumbel step (float64: exp(l) / (-log u)^T as the reference; exact32:
              argmax(l + T g), g from 32-bit integers); confidence softmax(logits)[x0]
              ("low_confidence") or a float32 uniform ("random"); the EOS / EOT options
              (`ConfidenceSpec`; the official chained-assignment quirk masks EOS and EOT at
              temperature 0, EOT alone at temperature > 0).
  llada_conf  the authors' `llada_conf_sample` (§L.1): x0 ~ Cat(softmax(logits)) at temperature
              1 (float64: the exponential race; exact32: Gumbel-max from 32-bit integers),
              confidence p[x0].
  remdm_llada `llada_remdm_sample` (§L.1): llada_conf's proposal, plus `remdm_remask` before the
              model call (re-mask the r smallest cached confidences).
`commit` writes x0 at the n masked positions of largest confidence (n per row). n comes from the
rule's fixed count or from an adaptive commit rule over the gated confidences c (masked window
positions; m = their number), each >= 1 whenever m >= 1 (so a block ends within its length):
  threshold  (Fast-dLLM `get_transfer_index` with `threshold`): n = max(1, #{c >= tau}).
  factor     (Fast-dLLM `get_transfer_index_dynamic`): sorted c_0 >= c_1 >= ..., thresholds
             thr_0 = -1, thr_i = 1 - factor / (i + 2); t = the first i with c_i < thr_i (else
             m - 1); n = t, or t + 1 when t is 0 or m - 1 (the reference's loop, including its
             quirk that a failure at the last position still commits all m).
  eb         (EB-sampler, Ben-Hamu et al. 2025, arXiv 2505.24857): in confidence order, the
             largest prefix U with sum_U H - max_U H <= gamma (H = entropy of the position's
             predictive distribution), at least one.

Dream rules (HKUNLP Dream-v0 `generation_utils.py`: `_sample` with `sample_tokens`; `DreamSpec`),
over one window of W positions with S steps and t_i = linspace(1, eps, S + 1) (torch's float32
linspace, `schedule.torch_linspace_f32`):
  dream_origin        each masked position transfers with probability 1 - t_{i+1} / t_i (1 at
                      the last step) and takes a token drawn by `dream_propose`; the others stay
                      masked (a random order; the count per row is random).
  dream_maskgit_plus  confidence p[x0];
  dream_topk_margin   confidence p_(1) - p_(2) (the two largest filtered probabilities);
  dream_entropy       confidence sum_v p_v log(p_v + 1e-10) (negative entropy);
                      for these three, n_i = int(M (1 - t_{i+1} / t_i)) in float32 (all M at the
                      last step; M = the row's masked count) positions commit: the top-n
                      confidences (`alg_temp` = None / 0), or a draw without replacement from
                      softmax(conf / alg_temp) (Gumbel-top-n: conf / alg_temp + g).
`dream_propose` is `sample_tokens`: logits / temperature (temperature > 0), top-p (sorted
cumulative softmax > top_p removed, shifted to keep the first; finfo(float32).min fill), top-k
(below the k-th largest removed), softmax; x0 ~ Cat(p) by Gumbel-max on log p at temperature > 0,
else argmax. Dream counts M as the batch mean; here each row uses its own count, equal to the mean
whenever every row has as many masks (same prompt padding and no drawn mask token), and batch
invariant otherwise.

Keys (`draws` module docstring, "block decoding"): the caller passes per-position token and
confidence keys [B, W]; injected noise (`u` [B, W, V] uniforms, `conf_u` [B, W]) replaces them.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax import lax

from remdm_jax.sampling import draws
from remdm_jax.sampling.ranked import select_below_nth, select_top_n

LLADA_RULES = ("llada", "llada_conf", "remdm_llada")
DREAM_RULES = ("dream_origin", "dream_maskgit_plus", "dream_topk_margin", "dream_entropy")
REMASKING = ("low_confidence", "random")


# ------------------------------------------------------------------------------------ MaskGIT

def maskgit_mask_len(unknown0, unknown, ratio_mask):
  """Number of tokens re-masked after a MaskGIT step (§I.1 step 4): clip(floor(N0 m), 1, u - 1),
  i.e. max(1, min(u - 1, floor(N0 m))). unknown0, unknown: int [B]; ratio_mask: float32 scalar
  schedule value m. Returns int32 [B] (>= 1 even when u <= 1: the reference keeps one mask)."""
  raw = jnp.floor(unknown0.astype(jnp.float32) * ratio_mask)
  ml = jnp.maximum(1.0, jnp.minimum(unknown.astype(jnp.float32) - 1.0, raw))
  return ml.astype(jnp.int32)


def maskgit_step(tokens, logits, *, mask_id: int, unknown0, ratio, mask_ratio,
                 choice_temperature: float, sample_key=None, choice_key=None,
                 categorical_gumbel=None, choice_gumbel=None):
  """One MaskGIT decoding step (§I.1 steps 1-4).

  Args:
    tokens: int32 [B, L] current state (mask_id = unknown).
    logits: float32 [B, L, K] codebook logits, temperature already applied.
    mask_id: the mask id (>= K). unknown0: int32 [B] masked count at the start.
    ratio: float32 scalar progress r = (step + 1) / T. mask_ratio: float32 schedule value at r.
    choice_temperature: Gumbel scale of the ranking.
    sample_key, choice_key: the reference's per-step keys (`jax.random.categorical`, `gumbel`),
      or categorical_gumbel [B, L, K] / choice_gumbel [B, L] injected Gumbels instead.
  Returns:
    (new_tokens int32 [B, L] after re-masking, sampled int32 [B, L] before re-masking). At most
    `mask_len` positions are re-masked: fewer when scores tie at the cut-off (module docstring).
  """
  K = logits.shape[-1]
  m = mask_id
  if categorical_gumbel is None:
    sampled = jax.random.categorical(sample_key, logits, axis=-1).astype(jnp.int32)
  else:
    sampled = jnp.argmax(logits + categorical_gumbel, axis=-1).astype(jnp.int32)
  unknown = tokens == m
  sampled = jnp.where(unknown, sampled, tokens)
  probs = jax.nn.softmax(logits, axis=-1)
  sel = jnp.take_along_axis(probs, jnp.clip(sampled, 0, K - 1)[..., None], axis=-1)[..., 0]
  sel = jnp.where(unknown, sel, jnp.inf)
  n_unknown = jnp.sum(unknown, axis=-1).astype(jnp.int32)
  mask_len = maskgit_mask_len(unknown0, n_unknown, mask_ratio)
  g = jax.random.gumbel(choice_key, sel.shape) if choice_gumbel is None else choice_gumbel
  score = jnp.log(sel) + jnp.float32(choice_temperature) * (1.0 - ratio) * g
  # The reference masks score < sort(score)[mask_len] (strict): the mask_len lowest among the
  # unknown (known ones score +inf, never below the cut), fewer when scores tie at the cut-off.
  remask = select_below_nth(score, mask_len)
  return jnp.where(remask, m, sampled).astype(jnp.int32), sampled


# ------------------------------------------------------------------------------- LLaDA rules

@dataclasses.dataclass(frozen=True)
class ConfidenceSpec:
  """Static settings of the LLaDA proposal kernels (module docstring).

  Attributes:
    rule: one of `LLADA_RULES`. mask_id, eos_id, eot_id: token ids.
    temperature: Gumbel temperature of "llada" (0 = argmax); the other rules sample at 1.
    remasking: "low_confidence" | "random" ("llada").
    logits_eos_inf, confidence_eos_eot_inf, official_eos_quirk: the EOS options of "llada":
      logits_eos_inf sets the EOS logit to -inf before x0 is drawn; confidence_eos_eot_inf sets
      the EOS and EOT logits to -inf in the confidence softmax; with official_eos_quirk the
      official chained assignment decides instead: EOS and EOT at temperature 0 (the noisy
      logits alias the logits there), EOT alone at temperature > 0.
    precision: "exact32" | "float64" (needs x64).
  """

  rule: str
  mask_id: int
  eos_id: int
  eot_id: int
  temperature: float = 0.0
  remasking: str = "low_confidence"
  logits_eos_inf: bool = False
  confidence_eos_eot_inf: bool = False
  official_eos_quirk: bool = False
  precision: str = "exact32"

  def __post_init__(self):
    if self.rule not in LLADA_RULES:
      raise ValueError(f"ConfidenceSpec.rule={self.rule!r} must be one of {LLADA_RULES}")
    if self.remasking not in REMASKING:
      raise ValueError(f"ConfidenceSpec.remasking={self.remasking!r} must be one of {REMASKING}")
    if self.precision not in ("exact32", "float64"):
      raise ValueError(f"ConfidenceSpec.precision={self.precision!r} must be 'exact32' or "
                       "'float64'")

  @property
  def conf_dtype(self):
    """dtype of the ranked confidences (float64 with precision "float64")."""
    return jnp.float64 if self.precision == "float64" else jnp.float32


def gumbel_argmax_tempered(lg, temperature: float, keys, u, precision: str):
  """Official `add_gumbel_noise` + argmax: argmax exp(l) / (-log u)^T in float64, or the exact32
  equivalent argmax(l + T g). temperature 0: argmax(l). lg [B, W, V]; keys [B, W] position keys;
  u: None or injected uniforms [B, W, V]. Returns int32 [B, W]."""
  if temperature == 0:
    return jnp.argmax(lg, axis=-1).astype(jnp.int32)
  V = lg.shape[-1]
  if precision == "float64":
    if u is None:
      u = draws.uniform_rows(keys, V, jnp.float64)
    u = u.astype(jnp.float64)
    score = jnp.exp(lg.astype(jnp.float64)) / (-jnp.log(u)) ** temperature
    return jnp.argmax(score, axis=-1).astype(jnp.int32)
  if u is not None:
    g = -jnp.log(-jnp.log(u.astype(jnp.float32)))
  else:
    g = draws.gumbel_from_bits(draws.position_bits(keys, V))
  return jnp.argmax(lg + jnp.float32(temperature) * g, axis=-1).astype(jnp.int32)


def propose(spec: ConfidenceSpec, lg, tok_keys, conf_keys, u=None, conf_u=None):
  """The candidate tokens and their confidences over a block window (module docstring).

  Args:
    spec: `ConfidenceSpec`.
    lg: float32 [B, W, V] logits of the window (after CFG).
    tok_keys, conf_keys: [B, W] position keys (`draws.offset_position_keys`).
    u: optional injected uniforms [B, W, V] (Gumbel / race); conf_u: optional [B, W] ("random").
  Returns:
    (x0 int32 [B, W], conf [B, W]: float32, or float64 for the float64 llada_conf / remdm_llada).
  """
  if spec.rule == "llada":
    if spec.logits_eos_inf:
      lg = lg.at[..., spec.eos_id].set(-jnp.inf)
    x0 = gumbel_argmax_tempered(lg, spec.temperature, tok_keys, u, spec.precision)
    lc = lg
    if spec.confidence_eos_eot_inf:
      # The official `logits_with_noise[.., EOS] = logits[.., EOT] = -inf` runs after
      # add_gumbel_noise, which at temperature 0 returns `logits` itself: the two names alias, so
      # EOS and EOT both reach the confidence softmax as -inf; at temperature > 0 only EOT does.
      if not spec.official_eos_quirk or spec.temperature == 0:
        lc = lc.at[..., spec.eos_id].set(-jnp.inf)
      lc = lc.at[..., spec.eot_id].set(-jnp.inf)
    if spec.remasking == "low_confidence":
      p = jax.nn.softmax(lc, axis=-1)
      conf = jnp.take_along_axis(p, x0[..., None], axis=-1)[..., 0]
    elif conf_u is not None:
      conf = conf_u.astype(jnp.float32)
    else:
      conf = jax.vmap(jax.vmap(lambda kk: jax.random.uniform(kk, (), jnp.float32)))(conf_keys)
    return x0, conf
  fdt = spec.conf_dtype
  V = lg.shape[-1]
  p = jax.nn.softmax(lg.astype(fdt), axis=-1)
  if spec.precision == "float64":
    uu = u if u is not None else draws.uniform_rows(tok_keys, V, fdt)
    x0 = draws.race_argmax(None, p, uniforms=uu.astype(fdt))
  else:
    logp = jax.nn.log_softmax(lg, axis=-1)
    if u is not None:
      g = -jnp.log(-jnp.log(u.astype(jnp.float32)))
      x0 = jnp.argmax(logp + g, axis=-1).astype(jnp.int32)
    else:
      x0 = draws.gumbel_argmax(tok_keys, logp)
  conf = jnp.take_along_axis(p, x0[..., None], axis=-1)[..., 0]
  return x0, conf


def gate(conf, masked, dtype):
  """Confidence of the masked window positions in `dtype`, -inf elsewhere (never committed)."""
  return jnp.where(masked, conf.astype(dtype), -jnp.inf)


def commit(blk, x0, conf, n):
  """Writes x0 at the n positions of largest (gated) confidence per row.

  blk, x0: int32 [B, W]; conf: float [B, W] (from `gate`); n: int32 [B] or scalar (0 = no change).
  Returns (new blk int32 [B, W], taken bool [B, W])."""
  take = select_top_n(conf, n)
  return jnp.where(take, x0, blk).astype(jnp.int32), take


def remdm_remask(blk, cache, n, mask_id: int):
  """remdm_llada's re-mask before the model call (§L.1): the n positions with the smallest cached
  confidence take mask_id and their cache entries reset to +inf.

  blk int32 [B, W]; cache float [B, W] (+inf = never committed in this window); n int32 [B].
  Returns (blk, cache)."""
  sel = select_top_n(cache, n, largest=False)
  return jnp.where(sel, mask_id, blk), jnp.where(sel, jnp.inf, cache)


# -------------------------------------------------------------------------------- Dream rules

@dataclasses.dataclass(frozen=True)
class DreamSpec:
  """Static settings of the Dream kernels (module docstring; Dream's `DreamGenerationConfig`).

  Attributes:
    rule: one of `DREAM_RULES`. mask_id: the mask id.
    temperature: logits / temperature and sampling (0 = argmax). top_p: None or in (0, 1]
      (1 = off). top_k: None or >= 1. alg_temp: None / 0 = top-n commits, > 0 = sampled commits.
    eps: the last time of the schedule linspace(1, eps, S + 1) (Dream: 1e-3).
  """

  rule: str
  mask_id: int
  temperature: float = 0.0
  top_p: float | None = None
  top_k: int | None = None
  alg_temp: float | None = None
  eps: float = 1e-3

  def __post_init__(self):
    if self.rule not in DREAM_RULES:
      raise ValueError(f"DreamSpec.rule={self.rule!r} must be one of {DREAM_RULES}")
    if not self.temperature >= 0:
      raise ValueError(f"DreamSpec.temperature={self.temperature!r} must be >= 0")
    if self.top_p is not None and not 0 < self.top_p <= 1:
      raise ValueError(f"DreamSpec.top_p={self.top_p!r} must be in (0, 1]")
    if self.top_k is not None and (isinstance(self.top_k, bool) or int(self.top_k) != self.top_k
                                   or self.top_k < 1):
      raise ValueError(f"DreamSpec.top_k={self.top_k!r} must be an int >= 1")
    if self.alg_temp is not None and not self.alg_temp >= 0:
      raise ValueError(f"DreamSpec.alg_temp={self.alg_temp!r} must be >= 0")
    if not 0 <= self.eps < 1:
      raise ValueError(f"DreamSpec.eps={self.eps!r} must be in [0, 1)")


def dream_schedule(steps: int, eps: float):
  """Host float32 [S] factors of the Dream rules: f_i = 1 - t_{i+1} / t_i for i < S - 1 and 1 at
  the last step, t = torch's float32 linspace(1, eps, S + 1) (the origin transfer probability and
  the confidence rules' n_i = int(M f_i))."""
  import numpy as np
  from remdm_jax.sampling.schedule import torch_linspace_f32
  t = torch_linspace_f32(1.0, eps, steps + 1)
  f = (np.float32(1) - t[1:] / t[:-1]).astype(np.float32)
  f[-1] = np.float32(1)
  return f


def dream_filter_logits(lg, temperature: float, top_p, top_k):
  """`sample_tokens` steps 1-3 on float32 logits [..., V]: / temperature (> 0), top-p, top-k
  (removed entries take finfo(float32).min, as the reference's masked_fill)."""
  lg = lg.astype(jnp.float32)
  fmin = jnp.finfo(jnp.float32).min
  if temperature > 0:
    lg = lg / jnp.float32(temperature)
  if top_p is not None and top_p < 1:
    order = jnp.argsort(-lg, axis=-1, stable=True)
    srt = jnp.take_along_axis(lg, order, axis=-1)
    cum = jnp.cumsum(jax.nn.softmax(srt, axis=-1), axis=-1)
    remove = cum > jnp.float32(top_p)
    remove = jnp.concatenate([jnp.zeros_like(remove[..., :1]), remove[..., :-1]], axis=-1)
    inv = jnp.argsort(order, axis=-1)
    lg = jnp.where(jnp.take_along_axis(remove, inv, axis=-1), fmin, lg)
  if top_k is not None:
    k = min(int(top_k), lg.shape[-1])
    kth = jax.lax.top_k(lg, k)[0][..., -1:]
    lg = jnp.where(lg < kth, fmin, lg)
  return lg


def dream_propose(spec: DreamSpec, lg, tok_keys, u=None):
  """Dream's `sample_tokens` over a window (module docstring).

  Args:
    spec: `DreamSpec`. lg: float32 [B, W, V] logits (re-aligned: row i predicts token i).
    tok_keys: [B, W] position keys (exact32 Gumbel from 32-bit integers, `draws`).
    u: optional injected uniforms [B, W, V] (Gumbel g = -log(-log u)).
  Returns:
    (x0 int32 [B, W], confidence float32 [B, W]: p[x0] (origin, maskgit_plus), the top-2 margin
    (topk_margin) or the negative entropy (entropy)).
  """
  lg = dream_filter_logits(lg, spec.temperature, spec.top_p, spec.top_k)
  p = jax.nn.softmax(lg, axis=-1)
  if spec.temperature > 0:
    if u is not None:
      g = -jnp.log(-jnp.log(u.astype(jnp.float32)))
    else:
      g = draws.gumbel_from_bits(draws.position_bits(tok_keys, lg.shape[-1]))
    x0 = jnp.argmax(jnp.log(p) + g, axis=-1).astype(jnp.int32)
    conf = jnp.take_along_axis(p, x0[..., None], axis=-1)[..., 0]
  else:
    x0 = jnp.argmax(p, axis=-1).astype(jnp.int32)
    conf = jnp.max(p, axis=-1)
  if spec.rule == "dream_topk_margin":
    top2 = jax.lax.top_k(p, 2)[0]
    conf = top2[..., 0] - top2[..., 1]
  elif spec.rule == "dream_entropy":
    conf = jnp.sum(p * jnp.log(p + jnp.float32(1e-10)), axis=-1)
  return x0, conf


def dream_origin_commit(blk, x0, masked, p_transfer, conf_keys=None, conf_u=None):
  """dream_origin: every masked position transfers with probability p_transfer (float32 scalar;
  exact Bernoulli from 32-bit integers, or conf_u < p with injected uniforms [B, W]) and takes x0.
  Returns (blk int32 [B, W], taken bool [B, W])."""
  if conf_u is not None:
    fire = conf_u.astype(jnp.float32) < p_transfer
  else:
    bits = jax.vmap(jax.vmap(lambda k: jax.random.bits(k, (), jnp.uint32)))(conf_keys)
    fire = draws.bernoulli_from_bits(bits, p_transfer)
  take = masked & fire
  return jnp.where(take, x0, blk).astype(jnp.int32), take


def dream_transfer_count(masked, factor, last):
  """n = int(M f) in float32 (M = the row's masked count), M at the last step: int32 [B]."""
  M = jnp.sum(masked, axis=-1, dtype=jnp.int32)
  n = jnp.floor(M.astype(jnp.float32) * factor).astype(jnp.int32)
  return jnp.where(last, M, n)


def dream_rank_commit(spec: DreamSpec, blk, x0, conf, masked, n, conf_keys=None, conf_u=None):
  """The confidence rules' commit: the n masked positions of largest confidence (alg_temp None /
  0), or n drawn without replacement from softmax(conf / alg_temp) by Gumbel-top-n (g from the
  confidence keys, or -log(-log conf_u) injected). Returns (blk int32 [B, W], taken [B, W])."""
  score = gate(conf, masked, jnp.float32)
  if spec.alg_temp:
    if conf_u is not None:
      g = -jnp.log(-jnp.log(conf_u.astype(jnp.float32)))
    else:
      g = draws.gumbel_from_bits(
          jax.vmap(jax.vmap(lambda k: jax.random.bits(k, (), jnp.uint32)))(conf_keys))
    score = jnp.where(masked, score / jnp.float32(spec.alg_temp) + g, -jnp.inf)
  return commit(blk, x0, score, n)


# ------------------------------------------------------------------------- adaptive commits

COMMIT_RULES = ("fixed", "threshold", "factor", "eb")


def entropy(lg):
  """Entropy in nats of softmax(lg) over the last axis, in lg's dtype: [..., V] -> [...]."""
  logp = jax.nn.log_softmax(lg, axis=-1)
  p = jnp.exp(logp)
  return -jnp.sum(jnp.where(p > 0, p * logp, 0.0), axis=-1)


def _num_masked(conf):
  return jnp.sum(jnp.isfinite(conf), axis=-1, dtype=jnp.int32)


def threshold_count(conf, tau):
  """Fast-dLLM's threshold rule (module docstring): conf [B, W] gated (-inf = not masked) ->
  int32 [B] n = min(m, max(1, #{conf >= tau}))."""
  m = _num_masked(conf)
  over = jnp.sum(conf >= tau, axis=-1, dtype=jnp.int32)
  return jnp.minimum(m, jnp.maximum(over, 1))


def _sorted_desc(conf):
  return -jnp.sort(-conf, axis=-1)


def factor_count(conf, factor):
  """Fast-dLLM's factor rule (module docstring, quirk included): conf [B, W] gated -> int32 [B]."""
  B, W = conf.shape
  m = _num_masked(conf)
  c = _sorted_desc(conf)
  i = jnp.arange(W)
  thr = jnp.where(i == 0, -1.0, 1.0 - factor / (i + 2.0)).astype(conf.dtype)
  fail = (c < thr) & (i >= 1) & (i < m[:, None])
  first = jnp.argmax(fail, axis=-1).astype(jnp.int32)
  t = jnp.where(jnp.any(fail, axis=-1), first, m - 1)
  n = jnp.where((t == 0) | (t == m - 1), t + 1, t)
  return jnp.where(m > 0, n, 0).astype(jnp.int32)


def eb_count(conf, ent, gamma):
  """EB-sampler's entropy bound (module docstring): conf [B, W] gated, ent [B, W] entropies ->
  int32 [B] = min(m, max(1, #{k : cumsum(H)_k - cummax(H)_k <= gamma})) in confidence order
  (stable: ties to the lower position, as `select_top_n`)."""
  m = _num_masked(conf)
  order = jnp.argsort(-conf, axis=-1, stable=True)
  h = jnp.take_along_axis(ent, order, axis=-1)
  W = conf.shape[-1]
  valid = jnp.arange(W)[None, :] < m[:, None]
  h = jnp.where(valid, h, 0.0)
  ok = (jnp.cumsum(h, axis=-1) - lax.cummax(h, axis=1) <= gamma) & valid
  n = jnp.sum(ok, axis=-1, dtype=jnp.int32)
  return jnp.minimum(m, jnp.maximum(n, 1))


def commit_count(rule: str, conf, *, tau=0.9, factor=1.0, gamma=1e-3, ent=None):
  """n [B] of an adaptive commit rule ("threshold" | "factor" | "eb") on gated confidences."""
  if rule == "threshold":
    return threshold_count(conf, tau)
  if rule == "factor":
    return factor_count(conf, factor)
  if rule == "eb":
    return eb_count(conf, ent, gamma)
  raise ValueError(f"commit rule {rule!r} must be one of {COMMIT_RULES[1:]}")
