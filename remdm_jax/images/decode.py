"""Decoding class-conditional image-token sequences: MaskGIT, MDLM and every ReMDM strategy
(SPEC_DOMAINS §I.1; reference: google-research/maskgit `libml/parallel_decode.py` and its ReMDM fork
yair-schiff/maskgit). Never imports Flax.

Sequence layout (length L = 1 + N with a class token, else N):
  position 0      the class token `class_offset + label` (fixed: never sampled, never re-masked);
  positions 1..N  image codes in [0, K), K = `codebook_size`, or `mask_id` (its OWN id, >= K, so
                  every code 0..K-1 can be emitted).
The model is `tokens_to_logits(params, tokens int32 [B, L], t float32 [B]) -> logits [B, L, V]`,
V >= K; only the first K logits (the codebook) are used, divided by the sampling temperature
(`temperature * t` with annealing, t = (T - step) / T). For the MaskGIT ImageNet model:
K = 1024, class_offset = 1024, mask_id = 2024 (the reference's -1), N = 256.

Strategies (`ImageSamplerConfig.strategy`), each one compiled program (one `lax.scan`):
  maskgit   MaskGIT's confidence decoding (§I.1 "maskgit branch"): sample every masked position,
            keep the known ones, confidence p(sampled) (+inf for known), Gumbel-annealed ranking
            log(conf) + choice_temperature (1 - r) g, re-mask the mask_len lowest with
            mask_len = clip(floor(N0 schedule(r)), 1, unknown - 1), r = (step + 1) / T
            (`remdm_jax.sampling.ranked.select_top_n`). T denoiser calls; the output is the last
            step's sample before re-masking (the reference's `final_seqs[:, -1]`), fully decoded.
  mdlm, remdm_cap, remdm_rescale, remdm_conf, remdm_loop, fb (alias remdm_fb), dfm
            Clean mode (default): `remdm_jax.sampling.make_sampler` (the text sampler, SPEC §4)
            with a denoiser wrapper (codebook slice, temperature, every non-codebook column,
            the mask's included, at log 0) and the class token as a frozen prompt. alpha_t is the
            sampler's: mask_schedule "uniform" -> alpha_t = 1 - t (the paper's setting; equals the
            fork's up to its 1e-6 clip at t = 1 and the grid end eps), "cosine" -> the library's
            cosine noise schedule eps + (1 - eps) cos(pi t / 2) (eps = 1e-3). T + 1 denoiser calls
            (SPEC §4.5 final argmax step). Loop and DFM use their own alpha (uniform only).
            `fork_compat=True` (mdlm / remdm_cap / remdm_rescale / remdm_conf / fb): the fork's
            own posteriors (§I.1 "mdlm" / "remdm_*" branches), alpha = `schedules.alpha(t)` for
            any mask schedule, its key chain and float32 exponential race, including its quirks:
            the mask "slot" is codebook entry K - 1 (never emitted), remdm_conf's stale
            neg-log-prob values stay in the softmax denominator (`conf_stale=True`; False = the
            clean weights: softmax over decoded positions only), no final noise-removal step.

Random numbers: maskgit and the fork mode follow the reference's key chain (per step
`rng, sample_rng = split(rng)` then, maskgit only, `rng, choice_rng = split(rng)`), so with the same
key and logits they reproduce the reference's draws (they depend on the batch size). Tests inject
the noise instead (`noise=`): maskgit {"categorical": [T, B, L, K] Gumbels, "choice": [T, B, L]
Gumbels}; fork mode {"uniforms": [T, B, L, K]}; clean mode {"uniforms": [T, B, L, mask_id + 1]}
(the text sampler's replay mode, needs `extra={"precision": "float32" | "float64"}`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from remdm_jax.images import schedules as msched
from remdm_jax.sampling.config import SamplerConfig
from remdm_jax.sampling.ranked import select_top_n
from remdm_jax.sampling.sampler import make_sampler
from remdm_jax.diffusion.subs import NEG_INF
from remdm_jax.types import DenoiseFn

IMAGE_STRATEGIES = ("maskgit", "mdlm", "remdm_cap", "remdm_rescale", "remdm_conf", "remdm_loop",
                    "fb", "remdm_fb", "dfm")
FORK_STRATEGIES = ("mdlm", "remdm_cap", "remdm_rescale", "remdm_conf", "fb", "remdm_fb")
CLEAN_ALPHA = {"uniform": "linear", "cosine": "cosine"}



@dataclasses.dataclass(frozen=True)
class ImageSamplerConfig:
  """Settings of `make_image_sampler` (SPEC_DOMAINS §I.1, §I.2).

  Attributes:
    strategy: one of `IMAGE_STRATEGIES`.
    num_steps: T (denoiser calls: T for maskgit / fork mode, T + 1 for the clean sampler).
    temperature: sampling temperature tau > 0 (logits / tau before any sampling).
    temperature_annealing: tau (T - step) / T instead of tau (clean mode: tau max(t, 1/T)).
    mask_schedule: `schedules.METHODS` name. maskgit: the masked fraction of the next step;
      fork mode: alpha_t; clean mode: "uniform" or "cosine" only (see the module docstring).
    choice_temperature: maskgit's Gumbel scale of the re-mask ranking (reference 4.5), >= 0.
    eta: ReMDM eta (None = the `SamplerConfig` default of the strategy; fork mode: 0.0).
    fork_compat: the fork's posteriors and quirks (mdlm / remdm_* / fb only).
    conf_stale: fork-mode remdm_conf: keep the stale values in the softmax (the fork); False =
      clean weights.
    record_steps: maskgit / fork mode: also return `final_seqs` [B, T, L] (every step's sample
      before re-masking) in the info dict.
    extra: further `SamplerConfig` fields for the clean sampler (top_p, precision, t_on, ...).
  """

  strategy: str = "maskgit"
  num_steps: int = 16
  temperature: float = 1.0
  temperature_annealing: bool = False
  mask_schedule: str = "uniform"
  choice_temperature: float = 4.5
  eta: Optional[float] = None
  fork_compat: bool = False
  conf_stale: bool = True
  record_steps: bool = False
  extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    def bad(field, why):
      raise ValueError(f"ImageSamplerConfig.{field}={getattr(self, field)!r}: {why}")

    if self.strategy not in IMAGE_STRATEGIES:
      bad("strategy", f"must be one of {IMAGE_STRATEGIES}")
    if isinstance(self.num_steps, bool) or not isinstance(self.num_steps, int) or self.num_steps < 1:
      bad("num_steps", "must be an int >= 1")
    if not isinstance(self.temperature, (int, float)) or not self.temperature > 0:
      bad("temperature", "must be a number > 0")
    if not isinstance(self.choice_temperature, (int, float)) or not self.choice_temperature >= 0:
      bad("choice_temperature", "must be a number >= 0")
    msched.parse_method(self.mask_schedule)
    if self.fork_compat and self.strategy not in FORK_STRATEGIES:
      bad("fork_compat", f"applies to strategies {FORK_STRATEGIES}, not {self.strategy!r}")
    if self.strategy != "maskgit" and not self.fork_compat:
      if self.strategy in ("remdm_loop", "dfm"):
        if self.mask_schedule != "uniform":
          bad("mask_schedule", f"strategy {self.strategy!r} defines its own alpha; use 'uniform'")
      elif self.mask_schedule not in CLEAN_ALPHA:
        bad("mask_schedule", f"the clean sampler supports {tuple(CLEAN_ALPHA)}; other schedules "
            "need fork_compat=True")
      if self.record_steps:
        bad("record_steps", "is for maskgit / fork_compat mode")
    if self.eta is not None and (not isinstance(self.eta, (int, float)) or not 0 <= self.eta <= 1):
      bad("eta", "must be None or a number in [0, 1]")
    if not isinstance(self.extra, Mapping):
      bad("extra", "must be a dict of SamplerConfig fields")
    for k in self.extra:
      if k in ("strategy", "num_steps", "eta", "alpha_schedule"):
        bad("extra", f"must not set {k!r} (use the ImageSamplerConfig field)")
    if self.strategy != "maskgit" and not self.fork_compat:
      self.sampler_config()  # validate the SamplerConfig now

  def sampler_config(self) -> SamplerConfig:
    """The text `SamplerConfig` of the clean mode."""
    strategy = "fb" if self.strategy == "remdm_fb" else self.strategy
    alpha = "linear" if strategy in ("remdm_loop", "dfm") else CLEAN_ALPHA[self.mask_schedule]
    return SamplerConfig(strategy=strategy, num_steps=self.num_steps, eta=self.eta,
                         alpha_schedule=alpha, **dict(self.extra))

  def replace(self, **changes) -> "ImageSamplerConfig":
    return dataclasses.replace(self, **changes)


# ------------------------------------------------------------------------------------------------
# the per-step formulas (pure; also used by the tests' oracles)
# ------------------------------------------------------------------------------------------------

def maskgit_mask_len(unknown0, unknown, ratio_mask):
  """Number of tokens re-masked after a MaskGIT step (§I.1 step 4): clip(floor(N0 m), 1, u - 1),
  i.e. max(1, min(u - 1, floor(N0 m))). unknown0, unknown: int [B]; ratio_mask: float32 scalar
  schedule value m. Returns int32 [B] (>= 1 even when u <= 1: the reference keeps one mask)."""
  raw = jnp.floor(unknown0.astype(jnp.float32) * ratio_mask)
  ml = jnp.maximum(1.0, jnp.minimum(unknown.astype(jnp.float32) - 1.0, raw))
  return ml.astype(jnp.int32)


def fork_sigma(strategy: str, alpha_t, alpha_s, eta: float):
  """The fork's base sigma of a remdm_* step (§I.1): cap min((1-a_s)/a_t, eta), rescale
  eta min((1-a_s)/a_t, 1), conf min((1-a_s)/a_t, 1) (times the weights), fb min((a_s-a_t)/a_t, 1),
  mdlm 0."""
  smax = (1.0 - alpha_s) / alpha_t
  if strategy == "remdm_cap":
    return jnp.minimum(smax, eta)
  if strategy == "remdm_rescale":
    return eta * jnp.minimum(smax, 1.0)
  if strategy == "remdm_conf":
    return jnp.minimum(smax, 1.0)
  if strategy in ("fb", "remdm_fb"):
    return jnp.minimum((alpha_s - alpha_t) / alpha_t, 1.0)
  return jnp.zeros_like(alpha_t)


def fork_conf_weights(neg_logprobs, tokens, mask_id: int, stale: bool = True):
  """remdm_conf weights w [B, L] (§I.1): softmax over positions of the stored neg-log-probs, then 0
  where `tokens == mask_id` (NaN -> 0). stale=True (the fork): masked positions' old values stay in
  the softmax denominator; stale=False (clean): the softmax runs over decoded positions only."""
  masked = tokens == mask_id
  x = neg_logprobs if stale else jnp.where(masked, -jnp.inf, neg_logprobs)
  w = jax.nn.softmax(x, axis=-1)
  return jnp.nan_to_num(jnp.where(masked, 0.0, w))


def fork_posterior(tokens, logits, alpha_t, alpha_s, sigma, mask_id: int, strategy: str):
  """The fork's q(z_s | z_t) rows [B, L, K] over the codebook with slot K-1 as the mask (§I.1).

  logits: [B, L, K] (codebook logits / temperature; entry K-1 is overwritten with -inf).
  alpha_t, alpha_s: scalars or [B, 1, 1]. sigma: scalar or [B, L]. mdlm: q = x (mc_t - mc_s)/mc_t, slot = mc_s/mc_t (known tokens are kept by
  the caller). remdm_*: masked q = (a_s - a_t(1-sigma))/(1-a_t) x + (1-a_s-a_t sigma)/(1-a_t) e_M;
  decoded q = (1-sigma) onehot(z) + sigma e_M (onehot of an id >= K is all zeros).
  Returns (q, log_softmax(logits with slot at -inf)).
  """
  K = logits.shape[-1]
  lg = logits.astype(jnp.float32).at[..., K - 1].set(-jnp.inf)
  logp = jax.nn.log_softmax(lg, axis=-1)
  x = jnp.exp(logp)
  e_m = jax.nn.one_hot(K - 1, K, dtype=jnp.float32)
  if strategy == "mdlm":
    mc_t, mc_s = 1.0 - alpha_t, 1.0 - alpha_s
    q = x * (mc_t - mc_s) / mc_t
    return jnp.where(jnp.arange(K) == K - 1, mc_s / mc_t, q), logp
  sig = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), tokens.shape)[..., None]
  case1 = ((alpha_s - alpha_t * (1.0 - sig)) / (1.0 - alpha_t) * x
           + (1.0 - alpha_s - alpha_t * sig) / (1.0 - alpha_t) * e_m)
  case2 = (1.0 - sig) * jax.nn.one_hot(tokens, K, dtype=jnp.float32) + sig * e_m
  return jnp.where((tokens == mask_id)[..., None], case1, case2), logp


def race(q, uniforms):
  """The fork's exponential race argmax q / (1e-10 - log(U + 1e-10)) (float32)."""
  return jnp.argmax(q / (1e-10 - jnp.log(uniforms + 1e-10)), axis=-1).astype(jnp.int32)


# ------------------------------------------------------------------------------------------------
# the sampler
# ------------------------------------------------------------------------------------------------

class ImageSampler:
  """Callable returned by `make_image_sampler`.

  `sampler(params, key, labels=None, batch_size=None, image_tokens=None, noise=None)` -> int32
  [B, N] codes in [0, K). `sample_with_info(...)` -> (codes, info) with info["nfe"] (int) and,
  with `record_steps`, info["final_seqs"] int32 [B, T, L] (maskgit: also info["states"] [B, T, L],
  the state after each step's re-masking; info["tokens"] is the final state, one mask left).

  Args of the call:
    params: any pytree, passed to tokens_to_logits.
    key: a PRNG key.
    labels: int [B] class labels (class token = class_offset + label); required iff class_token.
    batch_size: B when there are no labels / image_tokens.
    image_tokens: optional int [B, N] partially known codes (mask_id = unknown): known codes are
      kept (maskgit, clean mode: frozen prompt; fork mode: as in the fork, they may be re-masked).
    noise: injected randomness (see the module docstring), for tests / reproduction.
    temperature: optional float scalar overriding cfg.temperature (a traced argument: one
      compiled program serves every temperature).
  Attributes: cfg, num_tokens (N), seq_len (L), codebook_size (K), mask_id, class_offset, nfe,
    core (the un-jitted function).
  """

  def __init__(self, core, cfg, num_tokens, seq_len, codebook_size, mask_id, class_token,
               class_offset, nfe, jit):
    self.core, self.cfg = core, cfg
    self.num_tokens, self.seq_len, self.codebook_size = num_tokens, seq_len, codebook_size
    self.mask_id, self.class_token, self.class_offset, self.nfe = (mask_id, class_token,
                                                                   class_offset, nfe)
    self._fn = jax.jit(core, static_argnames=("batch_size",)) if jit else core

  def sample_with_info(self, params, key, labels=None, batch_size=None, image_tokens=None,
                       noise=None, temperature=None):
    B = batch_size
    if temperature is None:
      temperature = self.cfg.temperature
    if not isinstance(temperature, jax.core.Tracer):
      if np.ndim(temperature) != 0 or not float(temperature) > 0:
        raise ValueError(f"temperature={temperature!r} must be a scalar > 0")
    temperature = jnp.asarray(temperature, jnp.float32)
    if labels is not None:
      if not self.class_token:
        raise ValueError("labels given but the sampler was built with class_token=False")
      labels = jnp.asarray(labels, jnp.int32)
      if labels.ndim != 1:
        raise ValueError(f"labels shape {labels.shape} must be [B]")
      if B is not None and B != labels.shape[0]:
        raise ValueError(f"labels batch {labels.shape[0]} != batch_size={B}")
      B = labels.shape[0]
      if not isinstance(labels, jax.core.Tracer):
        lab = np.asarray(labels)
        if lab.size and (lab.min() < 0 or np.any(lab + self.class_offset == self.mask_id)):
          raise ValueError(f"labels must be >= 0 and class_offset + label != mask_id "
                           f"({self.mask_id}); got min {lab.min()}, max {lab.max()}")
    elif self.class_token:
      raise ValueError("labels [B] are required (the sampler was built with class_token=True)")
    if image_tokens is not None:
      image_tokens = jnp.asarray(image_tokens, jnp.int32)
      if image_tokens.ndim != 2 or image_tokens.shape[1] != self.num_tokens:
        raise ValueError(f"image_tokens shape {image_tokens.shape} must be [B, N={self.num_tokens}]")
      if B is not None and B != image_tokens.shape[0]:
        raise ValueError(f"image_tokens batch {image_tokens.shape[0]} != batch size {B}")
      B = image_tokens.shape[0]
      if not isinstance(image_tokens, jax.core.Tracer):
        it = np.asarray(image_tokens)
        if np.any((it != self.mask_id) & ((it < 0) | (it >= self.codebook_size))):
          raise ValueError(f"image_tokens must hold codes in [0, {self.codebook_size}) or "
                           f"mask_id={self.mask_id}")
    if B is None or int(B) < 1:
      raise ValueError(f"batch_size={B!r} must be an int >= 1 (or give labels / image_tokens)")
    if noise is not None:
      noise = self._check_noise(noise, int(B))
    return self._fn(params, key, batch_size=int(B), labels=labels, image_tokens=image_tokens,
                    noise=noise, temperature=temperature)

  def __call__(self, params, key, labels=None, batch_size=None, image_tokens=None, noise=None,
               temperature=None):
    return self.sample_with_info(params, key, labels, batch_size, image_tokens, noise,
                                 temperature)[0]

  def _check_noise(self, noise, B):
    T, L, K = self.cfg.num_steps, self.seq_len, self.codebook_size
    cfg = self.cfg
    if cfg.strategy == "maskgit":
      want = {"categorical": (T, B, L, K), "choice": (T, B, L)}
    elif cfg.fork_compat:
      want = {"uniforms": (T, B, L, K)}
    else:
      want = {"uniforms": None}
    if not isinstance(noise, Mapping) or set(noise) != set(want):
      raise ValueError(f"noise must be a dict with keys {sorted(want)} for strategy "
                       f"{cfg.strategy!r} (fork_compat={cfg.fork_compat})")
    out = {}
    for k, shape in want.items():
      a = jnp.asarray(noise[k])
      if shape is not None and tuple(a.shape) != shape:
        raise ValueError(f"noise[{k!r}] shape {tuple(a.shape)} must be {shape} ([T, B, L, ...])")
      out[k] = a if shape is None else a.astype(jnp.float32)
    return out


def make_image_sampler(tokens_to_logits: DenoiseFn, cfg: ImageSamplerConfig, *,
                       num_tokens: int, codebook_size: int, mask_id: int,
                       class_token: bool = True, class_offset: Optional[int] = None,
                       jit: bool = True) -> ImageSampler:
  """Builds the image-token sampler of `cfg` (SPEC_DOMAINS §I.1).

  Args:
    tokens_to_logits: (params, tokens int32 [B, L], t float32 [B]) -> logits [B, L, V] (any
      float dtype), V >= codebook_size; t = (T - step) / T (maskgit / fork) or the text sampler's
      grid time (clean mode). A time-independent model ignores t.
    cfg: `ImageSamplerConfig`.
    num_tokens: N image tokens (MaskGIT 256; digits 64).
    codebook_size: K (MaskGIT 1024; digits 17 grey levels).
    mask_id: the model's input id of the mask, >= K (MaskGIT 2024; digits 27).
    class_token: sequences start with a class token (L = N + 1).
    class_offset: class token id = class_offset + label (default K).
    jit: False returns an un-jitted sampler (to compose under an outer jit).
  Raises: ValueError naming the bad argument.
  """
  if not isinstance(cfg, ImageSamplerConfig):
    raise ValueError(f"cfg must be an ImageSamplerConfig, got {type(cfg).__name__}")
  for name, v, lo in (("num_tokens", num_tokens, 1), ("codebook_size", codebook_size, 2),
                      ("mask_id", mask_id, 0)):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
      raise ValueError(f"{name}={v!r} must be an int >= {lo}")
  K, m, N = int(codebook_size), int(mask_id), int(num_tokens)
  if m < K:
    raise ValueError(f"mask_id={m} must be >= codebook_size={K} (the mask is its own id)")
  class_offset = K if class_offset is None else int(class_offset)
  if class_token and class_offset < 0:
    raise ValueError(f"class_offset={class_offset} must be >= 0")
  L = N + (1 if class_token else 0)
  T = cfg.num_steps
  tau = float(cfg.temperature)

  def initial(B, labels, image_tokens):
    img = (jnp.full((B, N), m, jnp.int32) if image_tokens is None
           else image_tokens.astype(jnp.int32))
    if class_token:
      cls = (class_offset + labels.astype(jnp.int32))[:, None]
      return jnp.concatenate([cls, img], axis=1)
    return img

  def step_temp(tau, i):
    """float32 tau (T - i) / T with annealing, else tau."""
    if cfg.temperature_annealing:
      return tau * (jnp.float32(T) - i.astype(jnp.float32)) / jnp.float32(T)
    return tau

  def codebook_logits(params, tokens, t, temp):
    lg = tokens_to_logits(params, tokens, t)
    if lg.shape[-1] < K:
      raise ValueError(f"tokens_to_logits returned V={lg.shape[-1]} < codebook_size={K}")
    return lg[..., :K].astype(jnp.float32) / temp

  if cfg.strategy == "maskgit":
    method = msched.parse_method(cfg.mask_schedule)
    ctemp = float(cfg.choice_temperature)

    def core(params, key, batch_size, labels=None, image_tokens=None, noise=None,
             temperature=tau):
      B = batch_size
      tokens0 = initial(B, labels, image_tokens)
      unknown0 = jnp.sum(tokens0 == m, axis=-1).astype(jnp.int32)
      temperature = jnp.asarray(temperature, jnp.float32)

      def body(carry, xs):
        tokens, rng, _ = carry
        i = xs["step"]
        t = (jnp.float32(T) - i.astype(jnp.float32)) / jnp.float32(T)
        logits = codebook_logits(params, tokens, jnp.full((B,), t), step_temp(temperature, i))
        if noise is None:
          rng, sample_rng = jax.random.split(rng)
          sampled = jax.random.categorical(sample_rng, logits, axis=-1).astype(jnp.int32)
        else:
          sampled = jnp.argmax(logits + xs["categorical"], axis=-1).astype(jnp.int32)
        unknown = tokens == m
        sampled = jnp.where(unknown, sampled, tokens)
        ratio = (i + 1).astype(jnp.float32) / jnp.float32(T)
        mr = msched.mask_ratio(ratio, unknown0, method)
        probs = jax.nn.softmax(logits, axis=-1)
        sel = jnp.take_along_axis(probs, jnp.clip(sampled, 0, K - 1)[..., None], axis=-1)[..., 0]
        sel = jnp.where(unknown, sel, jnp.inf)
        n_unknown = jnp.sum(unknown, axis=-1).astype(jnp.int32)
        mask_len = maskgit_mask_len(unknown0, n_unknown, mr)
        if noise is None:
          rng, choice_rng = jax.random.split(rng)
          g = jax.random.gumbel(choice_rng, sel.shape)
        else:
          g = xs["choice"]
        score = jnp.log(sel) + jnp.float32(ctemp) * (1.0 - ratio) * g
        # The reference masks score < sort(score)[mask_len]: the mask_len lowest among the
        # unknown (known ones score +inf), i.e. min(mask_len, #unknown) positions.
        remask = select_top_n(score, jnp.minimum(mask_len, n_unknown), largest=False)
        new_tokens = jnp.where(remask, m, sampled).astype(jnp.int32)
        return (new_tokens, rng, sampled), ((sampled, new_tokens) if cfg.record_steps else None)

      xs = {"step": jnp.arange(T, dtype=jnp.int32)}
      if noise is not None:
        xs["categorical"], xs["choice"] = noise["categorical"], noise["choice"]
      (tokens, _, last), rec = lax.scan(body, (tokens0, key, tokens0), xs)
      info = {"nfe": T, "tokens": tokens}
      if cfg.record_steps:
        info["final_seqs"] = jnp.swapaxes(rec[0], 0, 1)
        info["states"] = jnp.swapaxes(rec[1], 0, 1)
      out = last[:, 1:] if class_token else last
      return out, info

    return ImageSampler(core, cfg, N, L, K, m, class_token, class_offset, T, jit)

  if cfg.fork_compat:
    method = msched.parse_method(cfg.mask_schedule)
    eta = 0.0 if cfg.eta is None else float(cfg.eta)
    strategy = cfg.strategy

    def core(params, key, batch_size, labels=None, image_tokens=None, noise=None,
             temperature=tau):
      B = batch_size
      tokens0 = initial(B, labels, image_tokens)
      unknown0 = jnp.sum(tokens0 == m, axis=-1).astype(jnp.int32)[:, None, None]
      temperature = jnp.asarray(temperature, jnp.float32)
      neg0 = jnp.full((B, L), -jnp.inf, jnp.float32)  # [UNVERIFIED] initial value of the fork

      def body(carry, xs):
        tokens, neg, rng = carry
        i = xs["step"].astype(jnp.float32)
        t = (jnp.float32(T) - i) / jnp.float32(T)
        s = (jnp.float32(T) - i - 1.0) / jnp.float32(T)
        logits = codebook_logits(params, tokens, jnp.full((B,), t),
                                 step_temp(temperature, xs["step"]))
        a_t = jnp.broadcast_to(msched.alpha(t, unknown0, method), (B, 1, 1))
        a_s = jnp.broadcast_to(msched.alpha(s, unknown0, method), (B, 1, 1))
        sigma = fork_sigma(strategy, a_t, a_s, eta)
        sigma = sigma[..., 0]  # [B, 1]
        if strategy == "remdm_conf":
          sigma = fork_conf_weights(neg, tokens, m, cfg.conf_stale) * sigma
        sigma = jnp.broadcast_to(sigma, (B, L))
        q, logp = fork_posterior(tokens, logits, a_t, a_s, sigma, m, strategy)
        if noise is None:
          rng, sample_rng = jax.random.split(rng)
          u = jax.random.uniform(sample_rng, q.shape)
        else:
          u = xs["uniforms"]
        sampled = race(q, u)
        sampled = jnp.where(sampled == K - 1, m, sampled)
        if strategy == "mdlm":
          sampled = jnp.where(tokens == m, sampled, tokens)
        new_neg = -jnp.take_along_axis(logp, jnp.clip(sampled, 0, K - 1)[..., None],
                                       axis=-1)[..., 0]
        neg = jnp.where(sampled != m, new_neg, neg)
        if class_token:
          sampled = sampled.at[:, 0].set(tokens[:, 0])
          neg = neg.at[:, 0].set(-jnp.inf)
        return (sampled, neg, rng), (sampled if cfg.record_steps else None)

      xs = {"step": jnp.arange(T, dtype=jnp.int32)}
      if noise is not None:
        xs["uniforms"] = noise["uniforms"]
      (tokens, _, _), rec = lax.scan(body, (tokens0, neg0, key), xs)
      info = {"nfe": T}
      if cfg.record_steps:
        info["final_seqs"] = jnp.swapaxes(rec, 0, 1)
      return (tokens[:, 1:] if class_token else tokens), info

    return ImageSampler(core, cfg, N, L, K, m, class_token, class_offset, T, jit)

  # Clean mode: the text sampler with a denoiser wrapper (no kernel copy).
  scfg = cfg.sampler_config()
  W = m + 1

  def denoise(packed, tokens, t):
    params, tau_ = packed   # the temperature rides inside the text sampler's params
    if cfg.temperature_annealing:
      temp = tau_ * jnp.maximum(t.astype(jnp.float32), jnp.float32(1.0 / T))
      temp = temp[:, None, None]
    else:
      temp = tau_
    lg = codebook_logits(params, tokens, t, temp)
    pad = jnp.full(lg.shape[:-1] + (W - K,), NEG_INF, jnp.float32)
    return jnp.concatenate([lg, pad], axis=-1)

  text = make_sampler(denoise, scfg, seq_len=L, mask_id=m, jit=False)

  def core(params, key, batch_size, labels=None, image_tokens=None, noise=None, temperature=tau):
    B = batch_size
    tokens0 = initial(B, labels, image_tokens)
    prompt_mask = tokens0 != m
    uniforms = None if noise is None else noise["uniforms"]
    packed = (params, jnp.asarray(temperature, jnp.float32))
    out, info = text.core(packed, key, B, tokens0, prompt_mask, uniforms)
    return (out[:, 1:] if class_token else out), info

  return ImageSampler(core, cfg, N, L, K, m, class_token, class_offset, text.nfe, jit)
