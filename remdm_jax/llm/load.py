"""One loader for every large masked LM folder: LLaDA-family and Dream checkpoints in the Hugging
Face layout, their tokenizer and chat template, and the special ids generation needs.

  lm = load_lm("/path/to/LLaDA-8B-Instruct", mesh=mesh)     # or a Dream folder
  lm.logits_fn(lm.params, tokens, attention_mask)            # re-aligned logits [B, L, V]
  lm.tokenizer.apply_chat_template([...])                    # remdm_jax.llm.tokenizer
  gen = lm.make_generator(GenConfig(..., cache="dual"), mesh=mesh)  # KV cache: LLaDA only

The architecture comes from config.json: `model_type` / `architectures` naming LLaDA (LLaDA-8B,
LLaDA-1.5, layout-compatible checkpoints) or Dream (Dream, or a plain Qwen2 layout), else the key
set (`d_model` / `n_layers` -> LLaDA, `hidden_size` / `num_hidden_layers` -> Dream).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional

from remdm_jax.llm import countdown_train
from remdm_jax.llm import model as llada_model
from remdm_jax.llm import weights as llada_weights
from remdm_jax.llm.dream import model as dream_model
from remdm_jax.llm.dream import weights as dream_weights
from remdm_jax.llm.tokenizer import HFTokenizer
from remdm_jax.types import MaskedLMFn

ARCHS = ("llada", "dream")


def detect_arch(config: dict, where: str = "config.json") -> str:
  """'llada' or 'dream' from a config.json dict (module docstring); ValueError otherwise."""
  mt = str(config.get("model_type", "")).lower()
  archs = " ".join(str(a) for a in (config.get("architectures") or [])).lower()
  if "llada" in mt or "llada" in archs:
    return "llada"
  if mt in ("dream", "qwen2") or "dream" in archs or "qwen2" in archs:
    return "dream"
  if "d_model" in config and "n_layers" in config:
    return "llada"
  if "hidden_size" in config and "num_hidden_layers" in config:
    return "dream"
  raise ValueError(f"{where}: cannot tell the architecture (model_type={mt or None!r}); "
                   f"supported: {ARCHS} (pass arch=)")


@dataclasses.dataclass
class LoadedLM:
  """A loaded masked LM.

  Attributes:
    arch: "llada" | "dream". cfg: LLaDAConfig | DreamConfig. graphdef, params: the NNX split.
    logits_fn: MaskedLMFn (params, tokens int32 [B, L], attention_mask [B, L]) -> float32
      [B, L, V] where row i predicts token i (Dream's shift applied).
    tokenizer: HFTokenizer of the folder, or None when it has no tokenizer.json.
    model_dir: the folder.
  Generation: `make_generator(cfg, mesh=...)`; the KV cache of LLaDA models: `cache_fns(mesh)`.
  """

  arch: str
  cfg: Any
  graphdef: Any
  params: Any
  logits_fn: MaskedLMFn
  tokenizer: Optional[HFTokenizer]
  model_dir: str

  @property
  def mask_id(self) -> int:
    return self.cfg.mask_token_id

  @property
  def eos_id(self) -> int:
    return self.cfg.eos_token_id

  @property
  def eot_id(self) -> Optional[int]:
    return self.cfg.eot_token_id

  @property
  def pad_id(self) -> int:
    return self.cfg.pad_token_id

  @property
  def vocab_size(self) -> int:
    return self.cfg.embedding_size

  @property
  def max_length(self) -> int:
    return self.cfg.max_sequence_length

  def token_text(self, i: Optional[int]) -> Optional[str]:
    """The text of token id i (None if unknown or no tokenizer)."""
    if i is None or self.tokenizer is None:
      return None
    return self.tokenizer.id_to_token(i)

  def check_cache(self, mode: str) -> None:
    """ValueError unless KV-cache mode `mode` runs on this model (`check_cache`)."""
    check_cache(self.arch, mode, self.model_dir)

  def cache_fns(self, mesh=None, rules=None):
    """(prefill_fn, window_fn) of the KV cache (`llm.model.make_cache_fns`; `types.PrefillFn`,
    `types.WindowFn`), the cache constrained to `mesh` when given. LLaDA only: ValueError for a
    Dream model (`check_cache`)."""
    self.check_cache("dual")
    return llada_model.make_cache_fns(self.graphdef, mesh=mesh, rules=rules)

  def make_generator(self, cfg, *, mesh=None, jit: bool = True):
    """The block generator of `cfg` (`llm.generate.GenConfig`) for this model
    (`llm.generate.make_generate`): `logits_fn`, plus `cache_fns(mesh)` when cfg.cache is prefix
    / dual. -> gen(params, prompt, attention_mask, key, noise=None) -> (tokens, info).
    Raises ValueError (`check_cache`) for a cache mode on a Dream model, before any work."""
    from remdm_jax.llm import generate as G
    self.check_cache(cfg.cache)
    pf, wf = self.cache_fns(mesh) if cfg.cache != "none" else (None, None)
    return G.make_generate(self.logits_fn, cfg, jit=jit, mesh=mesh, prefill_fn=pf, window_fn=wf)


def check_cache(arch: str, mode: str, where: str = "the model") -> None:
  """ValueError unless KV-cache mode `mode` ("none" | "prefix" | "dual") runs on an `arch`
  model: the cache callables (`llm.model.make_cache_fns`) exist for LLaDA-architecture models
  only; a Dream model decodes with cache "none"."""
  if mode != "none" and arch != "llada":
    raise ValueError(f"cache={mode!r}: the KV cache is implemented for LLaDA-architecture "
                     f"models, and {where} is a {arch} model; use cache='none'")


def arch_of(model_dir: str, arch: Optional[str] = None) -> str:
  """The architecture of a folder ('llada' | 'dream') from its config.json alone (nothing
  loaded; the shipped Countdown model folder is 'llada'). ValueError as `load_lm`."""
  if not isinstance(model_dir, str) or not os.path.isdir(model_dir):
    raise ValueError(f"model_dir={model_dir!r} is not a folder")
  if countdown_train.is_model_folder(model_dir):
    return "llada"
  if arch is not None:
    return arch
  d = llada_model.read_config_json(model_dir, "model")
  return detect_arch(d, os.path.join(model_dir, "config.json"))


def config_for(model_dir: str, arch: Optional[str] = None, **overrides):
  """(arch, LLaDAConfig | DreamConfig) of a folder, ids resolved (`model.resolve_ids`)."""
  d = llada_model.read_config_json(model_dir, "model")
  arch = arch or detect_arch(d, os.path.join(model_dir, "config.json"))
  if arch not in ARCHS:
    raise ValueError(f"arch={arch!r} must be one of {ARCHS}")
  overrides = {k: v for k, v in overrides.items() if v is not None}
  if arch == "llada":
    return arch, llada_model.LLaDAConfig.from_hf_config(model_dir, **overrides)
  return arch, dream_model.DreamConfig.from_hf_config(model_dir, **overrides)


def load_lm(model_dir: str, *, mesh=None, rules=None, arch: Optional[str] = None,
            **overrides) -> LoadedLM:
  """Loads a local checkpoint folder (config.json, safetensors, tokenizer files) -> LoadedLM.

  Args:
    model_dir: the folder (nothing is downloaded).
    mesh, rules: shard the parameters as they stream in (`remdm_jax.llm.weights.stream_params`).
    arch: "llada" | "dream" to skip detection.
    **overrides: config fields (param_dtype, compute_dtype, scan_layers, positions, mask_token_id,
      eos_token_id, eot_token_id, pad_token_id, ...); None values are ignored.
  Raises:
    ValueError (one line) for a missing folder / config.json, an unknown architecture, a bad
    special id (naming the key and its flag) or a checkpoint that does not match.
  """
  if not isinstance(model_dir, str) or not os.path.isdir(model_dir):
    raise ValueError(f"model_dir={model_dir!r} is not a folder")
  if countdown_train.is_model_folder(model_dir):  # the shipped tiny Countdown model (own codec)
    if arch not in (None, "llada"):
      raise ValueError(f"arch={arch!r}: {model_dir} is a Countdown LLaDA model folder")
    cfg, gd, params, tok, _ = countdown_train.load_model(
        model_dir, mesh=mesh, **{k: v for k, v in overrides.items() if v is not None})
    return LoadedLM("llada", cfg, gd, params, llada_model.make_logits_fn(gd), tok, model_dir)
  arch, cfg = config_for(model_dir, arch, **overrides)
  if arch == "llada":
    gd, params = llada_weights.load_params(model_dir, cfg, mesh=mesh, rules=rules)
    fn = llada_model.make_logits_fn(gd)
  else:
    gd, params = dream_weights.load_params(model_dir, cfg, mesh=mesh, rules=rules)
    fn = dream_model.make_logits_fn(gd)
  tok = HFTokenizer(model_dir) if os.path.isfile(os.path.join(model_dir, "tokenizer.json")) \
      else None
  return LoadedLM(arch, cfg, gd, params, fn, tok, model_dir)
