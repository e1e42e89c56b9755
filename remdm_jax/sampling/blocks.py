"""Semi-autoregressive block decoding over a canvas for large masked LMs (LLaDA-class), one
compiled program per configuration (SPEC_DOMAINS §L.1, §L.3, §L.5): the driver of the
confidence-ranked rules (`sampling.confidence`) and of every `SamplerConfig` strategy in blocks
(`sampling.sampler`). Never imports Flax: the model is reached through
`logits_fn(params, tokens int32 [B, L], attention_mask int32 [B, L]) -> logits [B, L, V]`
(`types.MaskedLMFn`). The LLaDA wiring (its token ids, tokenizer, CLI) is `llm.generate`.

Layout: x = [left-padded prompt (P), MASK x G]; G = gen_length is cut into nb = G / block_length
blocks, each decoded with S = steps / nb steps (the prompt and pads are never masked). Rules:

* "llada" - the official ML-GSAI/LLaDA `generate` (§L.3). Per block, n_i = the block's actual
  mask count spread over S steps (`num_transfer_tokens`, the first rem steps +1). Per step:
  logits (CFG: un = the same call with the prompt set to MASK, batched as 2B rows;
  logits = un + (s + 1)(cond - un)); then `confidence.propose` (x0 and its confidence, the EOS
  options) and `confidence.commit` (the n_i masked block positions of largest confidence take x0).
* "llada_conf" - the authors' baseline `llada_conf_sample` (§L.1): k = G / T per step
  (constant), x0 ~ Cat(softmax(logits)) at temperature 1, confidence p[x0], the top-k masked
  block positions take x0.
* "remdm_llada" - the authors' `llada_remdm_sample` (§L.1): per block conf_cache = +inf,
  tau = int(7 block_length / 8), 2S iterations; iteration i in [tau, tau + S) first remasks the
  r = `remdm_number` positions with the smallest conf_cache (`confidence.remdm_remask`), then
  decodes r (else k); the cache stores p[x0] at decode time. 2S NFE per block. The rule is
  consistent only when S >= tau (steps per block = block_length, k = 1); other sizes raise
  ValueError (the reference silently runs a truncated window there, §L.1).
* "dream_origin", "dream_maskgit_plus", "dream_topk_margin", "dream_entropy" - Dream's
  `_sample` algorithms (HKUNLP Dream-v0 `generation_utils.py`; `confidence` module docstring):
  per block, S steps over t_i = linspace(1, eps, S + 1); origin transfers each masked position
  with probability 1 - t_{i+1}/t_i, the confidence rules commit n_i = int(M (1 - t_{i+1}/t_i))
  (M at the last step) by top-n or by Gumbel-top-n over conf / alg_temp; tokens from Dream's
  `sample_tokens` (temperature, top-p, top-k). One block (block_length = gen_length) is Dream's
  own decoding; more blocks run it semi-autoregressively. Injected noise: `u` gives the token
  Gumbels, `conf_u` the origin transfer uniforms / the alg_temp Gumbels (g = -log(-log u)).
* "strategy" - a `SamplerConfig` strategy (mdlm, remdm_cap, remdm_rescale, remdm_conf,
  remdm_switch, remdm_loop, fb, dfm): per block, the sampler core (`sampling.make_sampler`, S grid
  steps + its final argmax step = S + 1 NFE per block) runs with everything outside the current
  block frozen; the attention mask rides inside params. Its draws are named per row as the
  rules' are: block b of row r draws with the sampler's per-(row, position) scheme on a fixed base
  key fold_in(key(0), b), row id = 32 random bits of fold_in(r's row key, b) and position id =
  the generated position (`kernel.transition_sample` ids), so a row's tokens depend on its own
  key and prompt only (not its neighbours, index, padding or the batch size) when per-row keys
  are given; with one key, row b's key is fold_in(key, b) as for the rules. (Two rows share a
  block's draws only if their 32-bit ids collide, probability 2^-32.)

Cache modes (`cache`, `refresh_every`; `kvcache`): every step's block logits come from one model
call of the `kvcache.BlockModel` kernel: a full forward (`none`, or a refresh step), or a window
against the KV cache (`prefix`: [start, L); `dual`: the block), the cache carried through the loop
(NVlabs/Fast-dLLM's prefix / dual cache). Every rule (LLaDA's and Dream's) and the strategies
use the same kernel (the strategies as the sampler's stateful model,
`sampler.make_sampler(...).core(forward=...)`), and with CFG the unconditional rows get their own
cache rows. The cache callables exist for LLaDA-architecture models (`llm.model.make_cache_fns`);
a Dream model decodes with cache "none" (`llm.load.LoadedLM.make_generator` says so). Adaptive
commits (`commit` = threshold / factor / eb, rules llada and llada_conf; `confidence` module
docstring): each block is a `lax.while_loop` that runs while some live row still has a mask in
the block (at most block_length steps: the mask is never proposed, so every step commits >= 1);
fixed rules (and the Dream rules) run their iters_per_block steps in the same loop.
info["row_nfe"] counts, per row, the steps it took part in (a row finished with its block, or
stopped at EOS, waits without counting).

Both LLaDA reference samplers draw over the full vocabulary, mask token included (x0 may be MASK,
which then stays masked); this port keeps that. Their block gate is
`x0_p[:, prompt_len + (num_block + 1) * block_length:] = -inf`: it excludes only LATER blocks.
So a mask can survive a block (the model drew the mask token there and it was committed), and
such a position of an earlier block, still holding the mask id, is a candidate again in every
later block, competing with the current block's positions for the n_i commits; this port follows
the references (the confidence rules propose over every generated position and gate those after
the current block; a masked earlier position may thus be committed later, and masks can remain
in the output). The Dream rules use the same gate (one block is Dream's own decoding). With a
KV cache this holds at full-forward steps (refresh); a window step computes the current block's
logits only, so only its masks compete there, as in Fast-dLLM's cached functions (a leftover mask
of an earlier block is a candidate again at the next refresh). Adaptive commits never propose the
mask, so no mask survives a block under them.

Randomness (`draws` module docstring, "block decoding"): row b uses its own key (`key` [B], or
fold_in(key, b) for one key); global step j (= block * iters_per_block + i) uses
fold_in(row key, j), split into (token, confidence) keys, and generated position g (0..G-1) uses
fold_in(that key, g). So a row's output depends only on its prompt and its key, not on the batch
or its padding (with position-invariant logits). Injected noise (tests / replay):
`noise={"u": [n_iter, B, G, V], "conf_u": [n_iter, B, G]}` replaces the drawn uniforms u (Gumbel /
race) and the random-remasking confidences.

EOS: with `stop_at_eos` (default on for llada_conf / remdm_llada / strategy, as their early
return; off for "llada") a row whose generated slice holds EOS after a block is frozen (per-row
done flag); when every row is done the remaining blocks are skipped (lax.cond). Earlier blocks
never change, so the text before the first EOS is the same as without stopping. The references
check the whole x (prompt included) at batch size 1; here only the generated slice.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from remdm_jax.sampling import confidence as conf_k
from remdm_jax.sampling import draws, kvcache
from remdm_jax.sampling.config import SamplerConfig
from remdm_jax.sampling.sampler import make_sampler
from remdm_jax.sharding import put_global
from remdm_jax.types import MaskedLMFn, PrefillFn, WindowFn

RULES = conf_k.LLADA_RULES + conf_k.DREAM_RULES
REMASKING = conf_k.REMASKING
GEN_PRECISIONS = ("exact32", "float64")
_IDS = ("mask_id", "eos_id", "eot_id", "pad_id")


@dataclasses.dataclass(frozen=True)
class BlockConfig:
  """Settings of block decoding (module docstring). `llm.generate.GenConfig` is this with LLaDA's
  token ids as defaults.

  Attributes:
    rule: "llada" | "llada_conf" | "remdm_llada" | "dream_origin" | "dream_maskgit_plus" |
      "dream_topk_margin" | "dream_entropy" | "strategy" (then `sampler` is used).
    gen_length (G), block_length, steps (T, total over all blocks; S = T / (G / block_length)).
    temperature: Gumbel temperature of "llada" and the Dream rules (0 = argmax; sampling at
      temperature T is sampling softmax(logits / T) in both). llada_conf / remdm_llada sample at 1.
    top_p, top_k, alg_temp, eps: the Dream rules' nucleus, top-k, commit temperature and
      schedule end (`confidence.DreamSpec`; None / None / None / 1e-3 as Dream's defaults).
    remasking: "low_confidence" | "random" ("llada").
    cfg_scale: s >= 0 (0 = no CFG).
    logits_eos_inf, confidence_eos_eot_inf, official_eos_quirk: the EOS options of "llada"
      (`confidence.propose`).
    remdm_number: r of "remdm_llada".
    stop_at_eos: None = rule default (True for llada_conf / remdm_llada / strategy, False for
      llada and the Dream rules, which generate the full length as their references).
    precision: "exact32" (default) | "float64" (the references' float64 draws; needs x64).
    mask_id, eos_id, eot_id, pad_id: token ids (required; GenConfig defaults to LLaDA's). eot_id
      may be None (no end-of-turn token) unless confidence_eos_eot_inf is set.
    sampler: the `SamplerConfig` of rule "strategy" (its num_steps must equal S).
    cache: "none" | "prefix" | "dual" (`kvcache`; prefix / dual need the model's prefill_fn and
      window_fn). refresh_every: 0 = refresh the cache once per block, k >= 1 = every k steps.
    commit: "fixed" (the rule's own counts) | "threshold" | "factor" | "eb" (adaptive, rules llada
      and llada_conf: `confidence` module docstring; steps per block become data-dependent, at
      most block_length, and `steps` only fixes the key layout). threshold: tau of "threshold";
      factor: of "factor"; eb_gamma: the entropy bound of "eb".
  Raises: ValueError naming the bad field.
  """

  rule: str = "llada"
  gen_length: int = 128
  block_length: int = 128
  steps: int = 128
  temperature: float = 0.0
  remasking: str = "low_confidence"
  cfg_scale: float = 0.0
  logits_eos_inf: bool = False
  confidence_eos_eot_inf: bool = False
  official_eos_quirk: bool = False
  remdm_number: int = 1
  stop_at_eos: Optional[bool] = None
  precision: str = "exact32"
  mask_id: Optional[int] = None
  eos_id: Optional[int] = None
  eot_id: Optional[int] = None
  pad_id: Optional[int] = None
  sampler: Optional[SamplerConfig] = None
  top_p: Optional[float] = None
  top_k: Optional[int] = None
  alg_temp: Optional[float] = None
  eps: float = 1e-3
  cache: str = "none"
  refresh_every: int = 0
  commit: str = "fixed"
  threshold: float = 0.9
  factor: float = 1.0
  eb_gamma: float = 1e-3

  def __post_init__(self):
    name = type(self).__name__

    def bad(field, why):
      raise ValueError(f"{name}.{field}={getattr(self, field)!r}: {why}")

    if self.rule not in RULES + ("strategy",):
      bad("rule", f"must be one of {RULES + ('strategy',)}")
    for f in ("gen_length", "block_length", "steps", "remdm_number"):
      v = getattr(self, f)
      if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        bad(f, "must be an int >= 1")
    for f in _IDS:
      v = getattr(self, f)
      if f == "eot_id" and v is None:  # a model without an end-of-turn token
        if self.confidence_eos_eot_inf:
          bad(f, "confidence_eos_eot_inf needs the model's end-of-turn id (--eot_id)")
        continue
      if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
        bad(f, "must be an int >= 0 (a token id)")
    if self.gen_length % self.block_length:
      raise ValueError(f"{name}: gen_length={self.gen_length} is not divisible by "
                       f"block_length={self.block_length}")
    nb = self.gen_length // self.block_length
    if self.steps % nb:
      raise ValueError(f"{name}: steps={self.steps} is not divisible by the number of blocks "
                       f"gen_length/block_length={nb}")
    if self.remasking not in REMASKING:
      bad("remasking", f"must be one of {REMASKING}")
    if self.precision not in GEN_PRECISIONS:
      bad("precision", f"must be one of {GEN_PRECISIONS}")
    if not self.temperature >= 0:
      bad("temperature", "must be >= 0")
    if not self.cfg_scale >= 0:
      bad("cfg_scale", "must be >= 0")
    if self.pad_id == self.mask_id:
      raise ValueError(f"{name}: pad_id={self.pad_id} must differ from mask_id={self.mask_id}")
    S = self.steps_per_block
    if self.rule in ("llada_conf", "remdm_llada"):
      if self.gen_length % self.steps:
        raise ValueError(f"{name}: rule {self.rule!r} needs gen_length={self.gen_length} "
                         f"divisible by steps={self.steps} (k = G/T tokens per step)")
    if self.rule == "remdm_llada":
      tau = self.remask_start
      if S < tau:
        raise ValueError(
            f"{name}: rule 'remdm_llada' needs steps per block S={S} >= tau=int(7*"
            f"block_length/8)={tau} (i.e. steps = gen_length); the reference's window "
            f"[tau, tau+S) would be cut short at 2S and its pre-window steps over-decode")
      if self.remdm_number > tau * self.tokens_per_step:
        bad("remdm_number", f"must be <= the {tau * self.tokens_per_step} tokens decoded before "
            f"the remask window (tau={tau})")
    dream = self.rule in conf_k.DREAM_RULES
    for f in ("top_p", "top_k", "alg_temp"):
      if getattr(self, f) is not None and not dream:
        bad(f, f"applies only to the Dream rules {conf_k.DREAM_RULES}")
    if dream:
      self.dream_spec()  # validates top_p / top_k / alg_temp / eps
      if self.precision != "exact32":
        bad("precision", "the Dream rules draw in exact32 (float32 like the reference)")
    if self.cache not in kvcache.CACHE_MODES:
      bad("cache", f"must be one of {kvcache.CACHE_MODES}")
    r = self.refresh_every
    if isinstance(r, bool) or not isinstance(r, (int, np.integer)) or r < 0:
      bad("refresh_every", "must be an int >= 0 (0 = once per block)")
    if self.commit not in conf_k.COMMIT_RULES:
      bad("commit", f"must be one of {conf_k.COMMIT_RULES}")
    if self.commit != "fixed" and self.rule not in ("llada", "llada_conf"):
      bad("commit", f"adaptive commit rules apply to rules 'llada' and 'llada_conf', not "
          f"{self.rule!r}")
    if not 0.0 <= self.threshold <= 1.0:
      bad("threshold", "must be in [0, 1]")
    if not self.factor > 0:
      bad("factor", "must be > 0")
    if not self.eb_gamma >= 0:
      bad("eb_gamma", "must be >= 0")
    if self.rule == "strategy":
      if not isinstance(self.sampler, SamplerConfig):
        bad("sampler", "rule 'strategy' needs a SamplerConfig")
      if self.sampler.num_steps != S:
        raise ValueError(f"{name}: sampler.num_steps={self.sampler.num_steps} must equal the "
                         f"steps per block S={S}")

  @property
  def num_blocks(self) -> int:
    return self.gen_length // self.block_length

  @property
  def steps_per_block(self) -> int:
    return self.steps // self.num_blocks

  @property
  def tokens_per_step(self) -> int:
    """k = G / T of the reference rules."""
    return self.gen_length // self.steps

  @property
  def remask_start(self) -> int:
    return int(self.block_length / 8 * 7)

  @property
  def iters_per_block(self) -> int:
    """Denoiser calls per block: S (llada, llada_conf), 2S (remdm_llada), S + 1 (strategy); with
    an adaptive commit rule at most block_length (also the stride of the step keys / noise)."""
    if self.commit != "fixed":
      return self.block_length
    S = self.steps_per_block
    return {"remdm_llada": 2 * S, "strategy": S + 1}.get(self.rule, S)

  def cache_spec(self) -> kvcache.CacheSpec:
    return kvcache.CacheSpec(mode=self.cache, refresh_every=int(self.refresh_every))

  @property
  def stops(self) -> bool:
    if self.stop_at_eos is None:
      return self.rule in ("llada_conf", "remdm_llada", "strategy")
    return bool(self.stop_at_eos)

  def dream_spec(self) -> conf_k.DreamSpec:
    """The `confidence.DreamSpec` of a Dream-rule config."""
    return conf_k.DreamSpec(rule=self.rule, mask_id=int(self.mask_id),
                            temperature=float(self.temperature), top_p=self.top_p,
                            top_k=self.top_k, alg_temp=self.alg_temp, eps=float(self.eps))

  def confidence_spec(self) -> conf_k.ConfidenceSpec:
    """The `confidence.ConfidenceSpec` of a llada / llada_conf / remdm_llada config."""
    return conf_k.ConfidenceSpec(
        rule=self.rule, mask_id=int(self.mask_id), eos_id=int(self.eos_id),
        # eot_id is read only with confidence_eos_eot_inf, which requires it (__post_init__)
        eot_id=int(self.eos_id if self.eot_id is None else self.eot_id),
        temperature=float(self.temperature), remasking=self.remasking,
        logits_eos_inf=self.logits_eos_inf, confidence_eos_eot_inf=self.confidence_eos_eot_inf,
        official_eos_quirk=self.official_eos_quirk, precision=self.precision)

  def replace(self, **kw):
    return dataclasses.replace(self, **kw)


def num_transfer_tokens(mask_count: jax.Array, steps: int) -> jax.Array:
  """Official `get_num_transfer_tokens`: int32 [B, steps], count // steps each, the first
  count % steps steps one more."""
  base = mask_count // steps
  rem = mask_count % steps
  return (base[:, None] + (jnp.arange(steps)[None, :] < rem[:, None])).astype(jnp.int32)


def check_prompt(prompt, attention_mask, cfg: BlockConfig, vocab_size: Optional[int] = None):
  """Validates a left-padded batch; returns (prompt int32 [B, P], mask int32 [B, P]) as numpy.
  With `vocab_size` (the model's V) every real prompt id must lie in [0, V). ValueError naming
  the bad value otherwise (a float or out-of-vocabulary id was silently cast or clamped)."""
  prompt = np.asarray(prompt)
  if prompt.ndim != 2 or prompt.shape[1] < 1:
    raise ValueError(f"prompt shape {prompt.shape} must be [B, P] with P >= 1")
  if not (np.issubdtype(prompt.dtype, np.integer) or prompt.dtype == bool):
    raise ValueError(f"prompt must hold integer token ids, got dtype {prompt.dtype}")
  am = np.ones_like(prompt) if attention_mask is None else np.asarray(attention_mask)
  if am.shape != prompt.shape:
    raise ValueError(f"attention_mask shape {am.shape} != prompt shape {prompt.shape}")
  if not np.all((am == 0) | (am == 1)):
    raise ValueError("attention_mask must hold only 0 and 1")
  if np.any(np.diff(am.astype(np.int64), axis=1) < 0):
    raise ValueError("prompts must be LEFT-padded: attention_mask has a 1 before a 0 in a row")
  if np.any(am.sum(1) == 0):
    raise ValueError("a prompt row is all padding")
  if np.any((prompt == cfg.mask_id) & (am == 1)):
    raise ValueError(f"prompt holds the mask id {cfg.mask_id} at a real position")
  real = prompt[am == 1]
  hi = np.iinfo(np.int32).max if vocab_size is None else int(vocab_size)
  bad = real[(real < 0) | (real >= hi)]
  if bad.size:
    raise ValueError(f"prompt token id {int(bad[0])} is outside the model vocabulary [0, {hi})")
  return prompt.astype(np.int32), am.astype(np.int32)


def check_ids(cfg: BlockConfig, vocab_size: int) -> None:
  """Every token id of `cfg` (mask, EOS, EoT, pad) must lie in the model vocabulary [0, V): an
  id >= V was silently clamped by the gathers (the mask id never matched, EOS never stopped).
  ValueError naming the field otherwise."""
  for f in _IDS:
    v = getattr(cfg, f)
    if v is not None and not 0 <= int(v) < int(vocab_size):
      raise ValueError(f"{type(cfg).__name__}.{f}={v} is outside the model vocabulary "
                       f"[0, {vocab_size}) (logits have V = {vocab_size})")


def make_block_generate(logits_fn: Optional[MaskedLMFn], cfg: BlockConfig, *, jit: bool = True,
                        mesh=None, data_axes: Sequence[str] = ("data", "fsdp"),
                        prefill_fn: Optional[PrefillFn] = None,
                        window_fn: Optional[WindowFn] = None):
  """-> gen(params, prompt int32 [B, P], attention_mask [B, P], key, noise=None)
  -> (tokens int32 [B, G], info {"nfe": int32 model calls made for the batch, "row_nfe": int32
  [B] the steps each row took part in, "done": bool [B]}).

  logits_fn: the MaskedLMFn (cache "none"; may be None for prefix / dual). prefill_fn, window_fn:
  the cache callables (`types.PrefillFn`, `types.WindowFn`, e.g. `llm.model.make_cache_fns`),
  required for cache modes prefix / dual.

  mesh: optional; the batch (prompt, mask, per-row keys) is placed split over `data_axes` when B
  is divisible by their size (else replicated), so fsdp devices do not all compute every row.
  Parameters keep their own (e.g. fsdp x tensor) shardings. Results do not depend on the mesh.

  `gen` validates on the host (`check_prompt`: integer ids inside the model vocabulary V, read
  from the logits' shape without compute; `check_ids`: mask / EOS / EoT / pad ids in [0, V);
  noise shapes; x64 for float64) and then calls ONE jitted program per (shapes, cfg): blocks are
  a `lax.scan` (unrolled for cache 'prefix', whose window needs a static start), the steps of a
  block a `lax.while_loop`.
  Raises: ValueError naming the bad argument.
  """
  if not isinstance(cfg, BlockConfig):
    raise ValueError(f"cfg must be a BlockConfig (e.g. llm.generate.GenConfig), got "
                     f"{type(cfg).__name__}")
  if cfg.cache != "none" and (prefill_fn is None or window_fn is None):
    raise ValueError(f"cache={cfg.cache!r} needs prefill_fn and window_fn "
                     "(e.g. llm.model.make_cache_fns(graphdef))")
  if cfg.cache == "none" and logits_fn is None:
    raise ValueError("cache='none' needs logits_fn")
  core = functools.partial(_generate_core, (logits_fn, prefill_fn, window_fn), cfg)
  fn = jax.jit(core) if jit else core

  def gen(params, prompt, attention_mask=None, key=None, noise=None):
    prompt, am = check_prompt(prompt, attention_mask, cfg)
    B = prompt.shape[0]
    L = prompt.shape[1] + cfg.gen_length
    tok_shape = jax.ShapeDtypeStruct((B, L), jnp.int32)
    if logits_fn is not None:
      V = jax.eval_shape(logits_fn, params, tok_shape, tok_shape).shape[-1]  # no compute
    else:
      V = jax.eval_shape(lambda p, t, a: prefill_fn(p, t, a, 0, 1)[0], params, tok_shape,
                         tok_shape).shape[-1]
    check_ids(cfg, V)
    check_prompt(prompt, am, cfg, V)
    if (cfg.precision == "float64" or cfg.rule == "strategy" and cfg.sampler.precision
        == "float64") and not jax.config.jax_enable_x64:
      raise ValueError("precision 'float64' needs jax_enable_x64 "
                       "(use `with jax.enable_x64(True):`)")
    if key is None:
      raise ValueError("key is required")
    if noise is not None:
      n_iter = cfg.num_blocks * cfg.iters_per_block
      noise = dict(noise)
      for name, shp in (("u", (n_iter, B, cfg.gen_length)), ("conf_u", (n_iter, B,
                                                                          cfg.gen_length))):
        if name in noise and tuple(np.shape(noise[name]))[:3] != shp:
          raise ValueError(f"noise[{name!r}] shape {np.shape(noise[name])} must start with "
                           f"{shp} [iterations, B, G]")
      unknown = set(noise) - {"u", "conf_u"}
      if unknown:
        raise ValueError(f"unknown noise entries {sorted(unknown)}")
      if cfg.rule == "strategy":
        raise ValueError("injected noise is not supported for rule 'strategy'")
    prompt, am = jnp.asarray(prompt), jnp.asarray(am)
    if mesh is not None:
      from jax.sharding import NamedSharding, PartitionSpec as PS
      n = int(np.prod([mesh.shape[a] for a in data_axes]))
      spec = PS(tuple(data_axes)) if B % n == 0 else PS()
      put = lambda a: put_global(a, NamedSharding(mesh, spec))  # also across processes
      prompt, am = put(prompt), put(am)
      key = jnp.asarray(key)
      if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key)
      key = put(key) if key.ndim == 1 else put_global(key, NamedSharding(mesh, PS()))
    return fn(params, prompt, am, key, noise)

  gen.core = core
  gen.cfg = cfg
  return gen


def _generate_core(models, cfg: BlockConfig, params, prompt, am, key, noise):
  logits_fn, prefill_fn, window_fn = models
  B, P = prompt.shape
  G, Bk, nb = cfg.gen_length, cfg.block_length, cfg.num_blocks
  L = P + G
  m = cfg.mask_id
  if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.wrap_key_data(key)
  rows = draws.block_row_keys(key, B)
  x = jnp.concatenate([prompt, jnp.full((B, G), m, jnp.int32)], axis=1)
  am_full = jnp.concatenate([am, jnp.ones((B, G), jnp.int32)], axis=1)
  prompt_index = jnp.concatenate([am.astype(bool), jnp.zeros((B, G), bool)], axis=1)
  guided = cfg.cfg_scale > 0
  am_rows = jnp.concatenate([am_full, am_full]) if guided else am_full

  def to_rows(tokens):
    """The model's rows: [x; x with the prompt masked] with CFG (2B rows), else x."""
    if guided:
      return jnp.concatenate([tokens, jnp.where(prompt_index, m, tokens)])
    return tokens

  def combine(lg):
    """CFG: un + (s + 1)(cond - un) (SPEC_DOMAINS §L.3)."""
    if guided:
      cond, unc = lg[:B], lg[B:]
      return unc + (cfg.cfg_scale + 1.0) * (cond - unc)
    return lg

  cspec = cfg.cache_spec()

  def block_model(start):
    return kvcache.BlockModel(cspec, logits_fn, prefill_fn, window_fn, params, am_rows, start,
                              Bk)

  n_iter = cfg.iters_per_block

  def block_noise(b):  # the block's iterations, every generated position
    if noise is None:
      return None
    return {name: lax.dynamic_slice_in_dim(jnp.asarray(arr), b * n_iter, n_iter, axis=0)
            for name, arr in noise.items()}

  def run_block(carry, b, start):
    x, done, nfe, row_nfe, state = carry
    model = block_model(start)
    if cfg.rule == "strategy":
      x_new, calls, row_calls = _strategy_block(model, to_rows, combine, cfg, params, x, start,
                                                done, rows, b, B, L, state)
    else:
      x_new, calls, row_calls, state = _confidence_block(model, to_rows, combine, cfg, x, start,
                                                         b, done, rows, block_noise(b), B, state)
    if cfg.stops:
      done = done | jnp.any(x_new[:, P:] == cfg.eos_id, axis=1)
    return (x_new, done, nfe + calls, row_nfe + row_calls, state)

  def skip_or_run(carry, b, start):
    return lax.cond(jnp.all(carry[1]), lambda c: c, lambda c: run_block(c, b, start), carry)

  state = block_model(P).init_state(to_rows(x))
  carry = (x, jnp.zeros((B,), bool), jnp.zeros((), jnp.int32), jnp.zeros((B,), jnp.int32), state)
  if cspec.mode == "prefix":  # the window [start, L) needs a static start: unrolled blocks
    for b in range(nb):
      carry = skip_or_run(carry, b, P + b * Bk)
  else:
    carry, _ = lax.scan(lambda c, b: (skip_or_run(c, b, P + b * Bk), None), carry,
                        jnp.arange(nb, dtype=jnp.int32))
  x, done, nfe, row_nfe, _ = carry
  return x[:, P:], {"nfe": nfe, "done": done, "row_nfe": row_nfe}


def _confidence_block(model, to_rows, combine, cfg: BlockConfig, x, start, b, done, rows, noise,
                      B, state):
  """One block of the confidence-ranked rules (llada / llada_conf / remdm_llada and the Dream
  rules, `confidence` kernels), every step of it one `model` call, in a `lax.while_loop`: fixed
  rules run their iters_per_block steps, adaptive commit rules run until every active row has no
  mask left in the block (at most block_length steps: each step commits >= 1). Returns (x, NFE,
  per-row NFE [B], model state).

  The candidates of a step are the generated positions that still hold the mask id, are not in a
  LATER block, and whose logits the step's model call computed. A full forward (cache "none", or
  a refresh step of prefix / dual) computes every position: the references' gate `x0_p[:,
  prompt_len + (num_block + 1) * block_length:] = -inf` excludes only later blocks, so a position
  of an earlier block that kept the mask id (the model drew the mask token there, which both
  references allow) competes again (module docstring). A window step of the prefix / dual cache
  computes the current block only, and only its masks compete: NVlabs/Fast-dLLM's
  `generate_with_prefix_cache` / `generate_with_dual_cache` (full `mask_index[:, e:] = 0` at the
  refresh step, the window's own block after). An adaptive commit rule never proposes the mask,
  so no earlier position holds it: its full forwards propose over the block only (same tokens).
  The llada count n_i comes from the current block's masks at its start, as
  `get_num_transfer_tokens(block_mask_index, steps)`."""
  Bk, S, m = cfg.block_length, cfg.steps_per_block, cfg.mask_id
  G = cfg.gen_length
  P = x.shape[1] - G
  rule = cfg.rule
  dream = rule in conf_k.DREAM_RULES
  spec = cfg.dream_spec() if dream else cfg.confidence_spec()
  fdt = jnp.float32 if dream else spec.conf_dtype
  adaptive = cfg.commit != "fixed"
  k = cfg.tokens_per_step
  r = cfg.remdm_number
  tau = cfg.remask_start
  n_iter = cfg.iters_per_block
  g0 = b * Bk  # first generated position of the block
  live = ~done
  reach = (jnp.arange(G) < (b + 1) * Bk)[None, :]  # [1, G]: not a later block
  # the positions a full forward proposes over: every generated one (the gate `reach`), or just
  # the block under an adaptive rule, which never proposes the mask, so that no mask survives an
  # earlier block (the same tokens; the refresh's LM head and draws over Bk, not G, positions)
  full_g, full_w = (g0, Bk) if adaptive else (0, G)
  if adaptive:
    reach = True
  full_span = (P + full_g, full_w)

  blk0 = lax.dynamic_slice_in_dim(x, start, Bk, axis=1)
  sched = num_transfer_tokens(jnp.sum(blk0 == m, axis=1, dtype=jnp.int32), S)  # [B, S]
  factors = jnp.asarray(conf_k.dream_schedule(S, cfg.eps)) if dream else None  # [S] float32

  def active(x):
    """[B] rows that take part in this step (NFE counted per row)."""
    if not adaptive:
      return live
    blk = lax.dynamic_slice_in_dim(x, start, Bk, axis=1)
    return live & jnp.any(blk == m, axis=1)

  def cond(c):
    return (c["i"] < n_iter) & jnp.any(active(c["x"]))

  def body(c):
    c = dict(c)
    x, i, cache = c["x"], c["i"], c["cache"]
    act = active(x)
    in_win = (i >= tau) & (i < tau + S)
    if rule == "remdm_llada":
      gen, cache = conf_k.remdm_remask(x[:, P:], cache, jnp.where(in_win & live, r, 0), m)
      x = lax.dynamic_update_slice_in_dim(x, gen, P, axis=1)
    tok_keys, conf_keys = draws.step_keys(rows, b * n_iter + i)

    def commit_span(lg_rows, g_start, W, cand):
      """Commits over the generated positions [g_start, g_start + W) from their logits
      lg_rows [R, W, V] (cand: bool mask broadcast to [B, W]); -> (x, cache)."""
      seg = lax.dynamic_slice_in_dim(x, P + g_start, W, axis=1)  # [B, W]
      masked = (seg == m) & cand
      lg = combine(lg_rows).astype(jnp.float32)  # [B, W, V]
      if adaptive:  # never propose the mask: every step then commits >= 1 masked position
        lg = lg.at[..., m].set(-jnp.inf)
      tk = draws.offset_position_keys(tok_keys, g_start, W)
      ck = draws.offset_position_keys(conf_keys, g_start, W)
      u = None if noise is None or "u" not in noise else \
          lax.dynamic_slice_in_dim(noise["u"][i], g_start, W, axis=1)
      conf_u = None if noise is None or "conf_u" not in noise else \
          lax.dynamic_slice_in_dim(noise["conf_u"][i], g_start, W, axis=1)
      cc = lax.dynamic_slice_in_dim(cache, g_start, W, axis=1)
      if dream:  # Dream's rules (`confidence` module docstring); done rows stay as they are
        x0, conf = conf_k.dream_propose(spec, lg, tk, u)
        masked = masked & act[:, None]
        if rule == "dream_origin":
          seg, _ = conf_k.dream_origin_commit(seg, x0, masked, factors[i], ck, conf_u)
        else:
          n = conf_k.dream_transfer_count(masked, factors[i], i == S - 1)
          seg, _ = conf_k.dream_rank_commit(spec, seg, x0, conf, masked, n, ck, conf_u)
      else:
        x0, conf = conf_k.propose(spec, lg, tk, ck, u, conf_u)
        conf = conf_k.gate(conf, masked, fdt)
        if adaptive:
          ent = conf_k.entropy(lg.astype(fdt)) if cfg.commit == "eb" else None
          n = conf_k.commit_count(cfg.commit, conf, tau=cfg.threshold, factor=cfg.factor,
                                  gamma=cfg.eb_gamma, ent=ent)
        elif rule == "llada":
          n = sched[:, jnp.minimum(i, S - 1)]
        elif rule == "remdm_llada":
          n = jnp.where(in_win, r, k)
        else:
          n = k
        seg, take = conf_k.commit(seg, x0, conf, jnp.where(act, n, 0))
        if rule == "remdm_llada":
          cc = jnp.where(take, conf.astype(cc.dtype), cc)
      return (lax.dynamic_update_slice_in_dim(x, seg, P + g_start, axis=1),
              lax.dynamic_update_slice_in_dim(cache, cc, g_start, axis=1))

    (c["x"], c["cache"]), c["state"] = model.step(
        to_rows(x), c["state"], i, full_span,
        on_full=lambda lg: commit_span(lg, full_g, full_w, reach),
        on_window=lambda lg: commit_span(lg, g0, Bk, True))
    c["row_nfe"] = c["row_nfe"] + act.astype(jnp.int32)
    c["i"] = i + 1
    return c

  c = {"x": x, "i": jnp.zeros((), jnp.int32), "row_nfe": jnp.zeros((B,), jnp.int32),
       "state": state, "cache": jnp.full((B, G), jnp.inf, fdt)}
  c = lax.while_loop(cond, body, c)
  return c["x"], c["i"], c["row_nfe"], c["state"]


def _strategy_block(model, to_rows, combine, cfg: BlockConfig, params, x, start, done, rows, b, B,
                    L, state):
  """One block of a probabilistic strategy: the sampler core (`sampling.sampler`) with everything
  outside the block frozen; with a cache mode its model calls go through `model` (the cache is
  the sampler's model state). Returns (x, NFE, per-row NFE [B])."""
  Bk = cfg.block_length
  pos = jnp.arange(L)
  in_blk = (pos >= start) & (pos < start + Bk)
  frozen = ~in_blk[None, :] | done[:, None]
  s = make_sampler(lambda p, tokens, t: None, cfg.sampler, seq_len=L, mask_id=cfg.mask_id,
                   jit=False)

  if cfg.cache == "none":
    def forward(tokens, t, st):
      del t  # LLaDA is not time-conditioned
      logits = model.logits_fn(params, to_rows(tokens), model.am)
      return combine(logits), st
    st0 = ()
  else:
    def forward(tokens, t, st):
      del t
      cache, count = st
      lg, cache = model(to_rows(tokens), cache, count)
      lg = combine(lg)  # [B, Bk, V]; the positions outside the block are frozen (never read)
      full = jnp.zeros((B, L) + lg.shape[2:], lg.dtype)
      return lax.dynamic_update_slice_in_dim(full, lg, start, axis=1), (cache, count + 1)
    st0 = (state, jnp.zeros((), jnp.int32))

  # Draws named per row (module docstring): fixed base key, row id from the row's own key,
  # position id = generated position.
  kb = jax.random.fold_in(jax.random.key(0), b)
  row_ids = jax.vmap(lambda r: jax.random.bits(jax.random.fold_in(r, b), (), jnp.uint32))(rows)
  pos_ids = (jnp.arange(L) - (L - cfg.gen_length)).astype(jnp.uint32)
  out, info = s.core(params, kb, B, prompt=x, prompt_mask=frozen, forward=forward,
                     model_state=st0, ids=(row_ids, pos_ids))
  x = jnp.where(frozen, x, out).astype(jnp.int32)
  return x, info["nfe"], jnp.where(done, 0, info["nfe"]).astype(jnp.int32)
