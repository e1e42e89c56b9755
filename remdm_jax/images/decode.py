"""Decoding class-conditional image-token sequences: MaskGIT, MDLM and every ReMDM strategy
(SPEC_DOMAINS §I.1; reference: google-research/maskgit `libml/parallel_decode.py` and its ReMDM fork
yair-schiff/maskgit). Never imports Flax. This module is wiring only (canvas, class token,
codebook slice, temperature, the `ImageSampler` API); the decoding loops are the sampler family's:
`sampling.maskgit` (+ the step kernel `sampling.confidence.maskgit_step`), `sampling.fork_compat`
and `sampling.sampler`.

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
            (`sampling.maskgit.maskgit_decode`). T denoiser calls; the output is the last
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
            own posteriors (`sampling.fork_compat`; §I.1 "mdlm" / "remdm_*" branches),
            alpha = `schedules.alpha(t)` for any mask schedule, its key chain and float32
            exponential race, including its quirks: the mask "slot" is codebook entry K - 1
            (never emitted), remdm_conf's stale neg-log-prob values stay in the softmax
            denominator (`conf_stale=True`; False = the clean weights: softmax over decoded
            positions only), no final noise-removal step.

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

from remdm_jax.diffusion.subs import NEG_INF
from remdm_jax.images import schedules as msched
from remdm_jax.sampling.config import SamplerConfig
# The per-step formulas live in the sampler family; re-exported here (tests, oracles).
from remdm_jax.sampling.confidence import maskgit_mask_len  # noqa: F401
from remdm_jax.sampling.fork_compat import (FORK_STRATEGIES, fork_conf_weights,  # noqa: F401
                                            fork_decode, fork_posterior, fork_sigma, race)
from remdm_jax.sampling.maskgit import maskgit_decode
from remdm_jax.sampling.sampler import make_sampler
from remdm_jax.types import DenoiseFn

IMAGE_STRATEGIES = ("maskgit", "mdlm", "remdm_cap", "remdm_rescale", "remdm_conf", "remdm_loop",
                    "fb", "remdm_fb", "dfm")
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
               class_offset, nfe, jit, logits_fn=None, num_classes=None):
    self.core, self.cfg = core, cfg
    self._logits_fn, self.num_classes = logits_fn, num_classes
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
        self._check_labels(np.asarray(labels), params)
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

  def _check_labels(self, lab, params) -> None:
    """Labels in [0, num_classes) (when the sampler knows it) whose class token
    class_offset + label is not the mask id and lies in the model vocabulary V (read from the
    logits' shape, no compute): a label past the classes was silently clamped by the embedding
    gather (digits labels 11 or 500 gave all-zero images). ValueError naming the label."""
    if not lab.size:
      return
    hi = self.num_classes
    if hi is None and self._logits_fn is not None:
      B = lab.shape[0]
      V = jax.eval_shape(self._logits_fn, params,
                         jax.ShapeDtypeStruct((B, self.seq_len), jnp.int32),
                         jax.ShapeDtypeStruct((B,), jnp.float32)).shape[-1]
      hi = V - self.class_offset
    bad = lab[(lab < 0) | ((lab >= hi) if hi is not None else False)
              | (lab + self.class_offset == self.mask_id)]
    if bad.size:
      what = (f"[0, num_classes={self.num_classes})" if self.num_classes is not None else
              f"[0, {hi}) (class token {self.class_offset} + label inside the model vocabulary)"
              if hi is not None else ">= 0")
      raise ValueError(f"labels: label {int(bad[0])} is outside {what} or gives the mask id "
                       f"{self.mask_id} as class token")

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
                       num_classes: Optional[int] = None, jit: bool = True) -> ImageSampler:
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
    num_classes: labels must lie in [0, num_classes) (None: only class_offset + label < V, the
      model's vocabulary, read from the logits' shape, and != mask_id are checked).
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
  if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(
      num_classes, (int, np.integer)) or num_classes < 1):
    raise ValueError(f"num_classes={num_classes!r} must be None or an int >= 1")
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

  if cfg.strategy == "maskgit" or cfg.fork_compat:
    method = msched.parse_method(cfg.mask_schedule)

    def core(params, key, batch_size, labels=None, image_tokens=None, noise=None,
             temperature=tau):
      B = batch_size
      tokens0 = initial(B, labels, image_tokens)
      temperature = jnp.asarray(temperature, jnp.float32)

      def step_logits(tokens, i):
        t = (jnp.float32(T) - i.astype(jnp.float32)) / jnp.float32(T)
        return codebook_logits(params, tokens, jnp.full((B,), t), step_temp(temperature, i))

      if cfg.strategy == "maskgit":
        last, info = maskgit_decode(
            step_logits, tokens0, key, num_steps=T, mask_id=m,
            mask_ratio=lambda r, n0: msched.mask_ratio(r, n0, method),
            choice_temperature=float(cfg.choice_temperature), noise=noise,
            record_steps=cfg.record_steps)
      else:
        last, info = fork_decode(
            step_logits, tokens0, key, num_steps=T, mask_id=m, strategy=cfg.strategy,
            eta=0.0 if cfg.eta is None else float(cfg.eta),
            alpha=lambda t, n0: msched.alpha(t, n0, method), conf_stale=cfg.conf_stale,
            class_token=class_token, noise=noise, record_steps=cfg.record_steps)
      return (last[:, 1:] if class_token else last), info

    return ImageSampler(core, cfg, N, L, K, m, class_token, class_offset, T, jit,
                        tokens_to_logits, num_classes)

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

  return ImageSampler(core, cfg, N, L, K, m, class_token, class_offset, text.nfe, jit,
                      tokens_to_logits, num_classes)
