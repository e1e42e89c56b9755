"""The text domain: corpora (`corpora`, registered by `registrations`: bible, text, hf_disk) and
evaluation (SPEC §7): entropy, generative perplexity, the GPT-2 scorer and MiniLM featuriser
(over the model ports `models.gpt2` / `models.bert`), MAUVE, plots, the inference-time-scaling sweep
(`python -m remdm_jax.text.sweep`).

`import remdm_jax.text` needs only the core install (jax, numpy). The modules with optional
dependencies (gpt2: safetensors [+ tokenizers]; minilm: safetensors + tokenizers; mauve:
mauve-text; plots: matplotlib) are imported lazily on first attribute access.
"""
from __future__ import annotations

import importlib

from remdm_jax.text.entropy import mean_entropy, sample_entropy, sample_entropy_jnp
from remdm_jax.text.gen_ppl import gen_ppl, gen_ppl_from_texts, retokenize, target_weights

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
    mod = importlib.import_module(f"remdm_jax.text.{_LAZY[name]}")
    return getattr(mod, name)
  raise AttributeError(f"module 'remdm_jax.text' has no attribute {name!r}")
