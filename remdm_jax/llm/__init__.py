"""Large masked diffusion LMs (LLaDA family, Dream) with ReMDM sampling (SPEC_DOMAINS §L).

Modules:
  model        LLaDAConfig (from a HF config.json; special ids resolved by `resolve_ids`),
               LLaDAModel (Flax NNX), init_sharded,
               make_logits_fn(graphdef) -> logits_fn(params, tokens, attention_mask),
               make_cache_fns(graphdef) -> (prefill_fn, window_fn): the KV cache
  weights      load_llada(model_dir, mesh=...) streaming HF safetensors (`stream_params`)
  dream/       DreamConfig, DreamModel (Qwen2 layout, bidirectional, shifted logits), load_dream
  load         load_lm(model_dir): either architecture + tokenizer + ids; LoadedLM (logits_fn,
               cache_fns for LLaDA, make_generator)
  tokenizer    HFTokenizer: tokenizer.json + special tokens + chat templates as transformers
  likelihood   LLaDA's Monte-Carlo log-likelihood (lm-eval loglikelihood)
  lm_eval      the lm-evaluation-harness model `remdm_jax` (`python -m remdm_jax.llm.lm_eval`)
  fixtures     tiny random LLaDA / Dream folders (`python -m remdm_jax.llm.fixtures`)
  generate     GenConfig, make_generate: official LLaDA generate, llada_conf, ReMDM-LLaDA, Dream's
               four algorithms and every remdm_jax.sampling strategy in semi-autoregressive
               blocks (Flax-free; the loop is sampling.blocks, the rules sampling.confidence),
               on KV-cache modes none / prefix / dual (LLaDA) with fixed or adaptive
               (threshold, factor, EB) commits
  countdown    cd3 problems, prompt, reference scorer, pass@k;  countdown_eval: the command
  countdown_train  a tiny LLaDA trained from scratch on generated Countdown through the
               library's trainer (the slow test; the shipped countdown_llada; its codec)
  truthfulqa   BLEU / ROUGE max / diff / acc for user-supplied TruthfulQA data
  cli          `python -m remdm_jax.llm.cli` plain generation
"""
