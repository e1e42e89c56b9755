"""Evaluation (SPEC §7): entropy, generative perplexity, GPT-2 / MiniLM featurisers, MAUVE, plots.

`import remdm_jax.eval` needs only the core install (jax, numpy). The modules with optional
dependencies (gpt2: safetensors [+ tokenizers]; minilm: safetensors + tokenizers; mauve:
mauve-text; plots: matplotlib) are imported lazily on first attribute access.
"""
from __future__ import annotations

import importlib

from remdm_jax.eval.entropy import mean_entropy, sample_entropy, sample_entropy_jnp
from remdm_jax.eval.gen_ppl import gen_ppl, gen_ppl_from_texts, retokenize, target_weights

_LAZY = {
    "GPT2Config": "gpt2", "GPT2Scorer": "gpt2", "load_gpt2_params": "gpt2",
    "gpt2_hidden": "gpt2", "gpt2_logits": "gpt2",
    "MiniLMFeaturizer": "minilm", "load_bert_params": "minilm",
    "compute_mauve": "mauve", "mauve_from_texts": "mauve",
    "plot_scaling": "plots",
}

__all__ = ["mean_entropy", "sample_entropy", "sample_entropy_jnp", "gen_ppl",
           "gen_ppl_from_texts", "retokenize", "target_weights", *_LAZY]


def __getattr__(name):
  if name in _LAZY:
    mod = importlib.import_module(f"remdm_jax.eval.{_LAZY[name]}")
    return getattr(mod, name)
  raise AttributeError(f"module 'remdm_jax.eval' has no attribute {name!r}")
