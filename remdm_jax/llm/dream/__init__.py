"""Dream (HKUNLP Dream-v0-7B; Qwen2 layout, bidirectional attention, shifted logits).

Modules:
  model    DreamConfig (from a HF config.json), DreamModel (Flax NNX), make_logits_fn (re-aligned
           logits: a MaskedLMFn like LLaDA's)
  weights  load_dream(model_dir, mesh=...) streaming HF safetensors (Qwen2 key names)
Generation: Dream's rules (origin, maskgit_plus, topk_margin, entropy) live with the LLaDA rules in
the sampler family; `remdm_jax.llm.checkpoint.load_lm` loads either architecture.
"""
