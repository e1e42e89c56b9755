"""Block generation for LLaDA-class models: the LLaDA wiring of the sampler family's block
decoder (SPEC_DOMAINS §L.1, §L.3, §L.5). The algorithm (rules llada / llada_conf / remdm_llada /
strategy, keys, CFG rows, EOS stop, per-row done flags) is `remdm_jax.sampling.blocks`; this
module adds LLaDA's token ids as `GenConfig` defaults, left padding of token lists and the
reference output processing (`decode_outputs`). Never imports Flax: the model is reached through
`logits_fn(params, tokens int32 [B, L], attention_mask int32 [B, L]) -> logits [B, L, V]`
(`llm.model.make_logits_fn`).
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

# The block decoder's names stay importable from here.
from remdm_jax.sampling.blocks import (GEN_PRECISIONS, REMASKING, RULES,  # noqa: F401
                                       BlockConfig, check_prompt, make_block_generate,
                                       num_transfer_tokens)
from remdm_jax.types import MaskedLMFn, PrefillFn, WindowFn


@dataclasses.dataclass(frozen=True)
class GenConfig(BlockConfig):
  """`sampling.blocks.BlockConfig` with LLaDA's token ids as defaults: mask 126336, EOS 126081,
  EOT 126348, pad 126081 (LLaDA's pad id is EOS). See BlockConfig for every field."""

  mask_id: int = 126336
  eos_id: int = 126081
  eot_id: int = 126348
  pad_id: int = 126081


def make_generate(logits_fn: Optional[MaskedLMFn], cfg: BlockConfig, *, jit: bool = True,
                  mesh=None, data_axes: Sequence[str] = ("data", "fsdp"),
                  prefill_fn: Optional[PrefillFn] = None, window_fn: Optional[WindowFn] = None):
  """-> gen(params, prompt int32 [B, P], attention_mask [B, P], key, noise=None)
  -> (tokens int32 [B, G], info {"nfe", "row_nfe" [B], "done" [B]}): `sampling.blocks.
  make_block_generate` (see there for mesh, noise, cache modes and the one compiled program).
  For the LLaDA model: logits_fn = `llm.model.make_logits_fn(graphdef)`, and for cache modes
  prefix / dual (prefill_fn, window_fn) = `llm.model.make_cache_fns(graphdef)`."""
  return make_block_generate(logits_fn, cfg, jit=jit, mesh=mesh, data_axes=data_axes,
                             prefill_fn=prefill_fn, window_fn=window_fn)


def truncate_at_stops(text: str, stops: Sequence[str]) -> str:
  """Cuts `text` at the first occurrence of any stop string (lm-eval `until`)."""
  cut = len(text)
  for s in stops:
    if s:
      i = text.find(s)
      if 0 <= i < cut:
        cut = i
  return text[:cut]


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int):
  """Token lists -> (prompt int32 [B, P], attention_mask int32 [B, P]), left-padded."""
  if not prompts:
    raise ValueError("no prompts")
  P = max(len(p) for p in prompts)
  if P == 0:
    raise ValueError("empty prompt")
  out = np.full((len(prompts), P), pad_id, np.int32)
  am = np.zeros((len(prompts), P), np.int32)
  for i, p in enumerate(prompts):
    if len(p):
      out[i, P - len(p):] = p
      am[i, P - len(p):] = 1
  return out, am


def decode_outputs(tokens, tokenizer, stops: Sequence[str] = (), eos_token: Optional[str] = None,
                   eot_token: Optional[str] = "<|eot_id|>") -> list[str]:
  """The reference output processing (§L.1): decode the generated slice with special tokens,
  cut at the first of `stops`, EOT, EOS, re-encode and decode with skip_special_tokens."""
  out = []
  stop_list = list(stops) + [s for s in (eot_token, eos_token) if s]
  for row in np.asarray(tokens):
    text = tokenizer.decode(row.tolist(), skip_special_tokens=False)
    text = truncate_at_stops(text, stop_list)
    ids = tokenizer.encode(text, add_special_tokens=False)
    out.append(tokenizer.decode(ids, skip_special_tokens=True))
  return out
