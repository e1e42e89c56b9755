"""Large masked diffusion LMs (LLaDA architecture) with ReMDM sampling (SPEC_DOMAINS §L).

Modules:
  model        LLaDAConfig (from a HF config.json), LLaDAModel (Flax NNX), init_sharded,
               make_logits_fn(graphdef) -> logits_fn(params, tokens, attention_mask)
  weights      load_llada(model_dir, mesh=...) streaming HF safetensors; Tokenizer (tokenizer.json)
  generate     GenConfig, make_generate: official LLaDA generate, llada_conf, ReMDM-LLaDA and
               every remdm_jax.sampling strategy in semi-autoregressive blocks (Flax-free)
  countdown    cd3 problems, prompt, reference scorer, pass@k;  countdown_eval: the command
  countdown_train  a tiny LLaDA trained from scratch on generated Countdown through the
               library's trainer (the slow test; the shipped countdown_llada; its codec)
  truthfulqa   BLEU / ROUGE max / diff / acc for user-supplied TruthfulQA data
  cli          `python -m remdm_jax.llm.cli` plain generation
"""
