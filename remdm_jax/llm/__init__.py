"""Large masked diffusion LMs (LLaDA architecture) with ReMDM sampling (SPEC_DOMAINS §L).

Modules:
  model        LLaDAConfig (from a HF config.json), LLaDAModel (Flax NNX), init_sharded,
               make_logits_fn(graphdef) -> logits_fn(params, tokens, attention_mask),
               make_cache_fns(graphdef) -> (prefill_fn, window_fn): the KV cache
  weights      load_llada(model_dir, mesh=...) streaming HF safetensors; Tokenizer (tokenizer.json)
  generate     GenConfig, make_generate: official LLaDA generate, llada_conf, ReMDM-LLaDA and
               every remdm_jax.sampling strategy in semi-autoregressive blocks (Flax-free;
               the loop is sampling.blocks), on KV-cache modes none / prefix / dual with fixed
               or adaptive (threshold, factor, EB) commits
  countdown    cd3 problems, prompt, reference scorer, pass@k;  countdown_eval: the command
  countdown_train  a tiny LLaDA trained from scratch on generated Countdown (the slow test)
  truthfulqa   BLEU / ROUGE max / diff / acc for user-supplied TruthfulQA data
  cli          `python -m remdm_jax.llm.cli` plain generation
"""
