"""The metrics reported next to every set of samples (SPEC §7): unigram entropy, generative
perplexity under an AR scorer, and MAUVE against held-out text of the same corpus.

Offline defaults: the scorer is the project's own AR model (so gen-PPL is a *relative* metric, not
the paper's GPT-2 Large number) and MAUVE uses the all-MiniLM-L6-v2 featuriser. Every result records
what it was computed with, because MAUVE is comparable only at identical N, reference set and
featuriser.
"""
from __future__ import annotations

import importlib
from typing import Optional, Sequence

import numpy as np

from remdm_jax.text.entropy import mean_entropy
from remdm_jax.text.gen_ppl import gen_ppl


# import name -> pip name of what MAUVE with the default MiniLM featuriser needs (extra `eval`).
MAUVE_REQUIREMENTS = {"mauve": "mauve-text", "faiss": "faiss-cpu", "sklearn": "scikit-learn",
                      "safetensors": "safetensors", "tokenizers": "tokenizers"}


def check_mauve_available(featurizer: bool = True) -> None:
  """Raises ImportError (one line, naming the missing packages) unless MAUVE can run: mauve-text,
  faiss, scikit-learn and (with `featurizer`) the all-MiniLM-L6-v2 weights package plus
  safetensors and tokenizers. Call it BEFORE sampling so no samples are computed and then lost."""
  missing = []
  for module, pip_name in MAUVE_REQUIREMENTS.items():
    if not featurizer and module in ("safetensors", "tokenizers"):
      continue
    try:
      importlib.import_module(module)
    except ImportError:
      missing.append(pip_name)
  if missing:
    raise ImportError(f"MAUVE needs {', '.join(missing)}: pip install 'remdm-jax[eval]'")
  if featurizer:
    from remdm_jax.text.minilm import default_model_dir
    try:
      default_model_dir()
    except FileNotFoundError as e:
      raise ImportError(str(e)) from e


def heldout_texts(data_config: dict, num: int, seed: int = 1) -> tuple[list[str], str]:
  """`num` held-out (validation) blocks of the corpus a model was trained on, decoded to text.

  Drawn with replacement from the validation split by a numpy generator seeded with `seed` (the
  reference draws 5,000 validation blocks with replacement, SPEC §7). Returns (texts, description).
  """
  from remdm_jax import data as data_lib
  from remdm_jax.tokenizers import get_tokenizer

  fields = {f for f in data_lib.DataConfig.__dataclass_fields__}
  cfg = data_lib.DataConfig(**{k: v for k, v in data_config.items() if k in fields})
  tok = get_tokenizer(cfg.tokenizer)
  packed = data_lib.packed_split(cfg, "validation", tok)
  idx = np.random.default_rng(seed).integers(0, len(packed), size=num)
  texts = [tok.decode(packed[i].tolist()) for i in idx]
  desc = (f"{num} {cfg.source} validation blocks (L={cfg.seq_len}, tokenizer={cfg.tokenizer}, "
          f"drawn with replacement, seed {seed})")
  return texts, desc


def sample_metrics(tokens: np.ndarray, *, scorer=None, texts: Optional[Sequence[str]] = None,
                   mauve_reference: Optional[Sequence[str]] = None, reference_name: str = "",
                   featurizer=None, scorer_batch_size: int = 16) -> dict:
  """Entropy, gen-PPL and MAUVE of generated samples.

  Args:
    tokens: int [N, L] sample ids (model tokenizer).
    scorer: optional `generation.LoadedModel` of a causal model with the SAME tokenizer; gen-PPL is
      token-weighted over all samples (SPEC §7). For tokenizers without EOS (bytes) every target
      counts. Samples longer than the scorer's length (`scorer.seq_len`, e.g. semi-AR samples)
      are split into consecutive non-overlapping chunks of that length, each scored on its own
      (its first token is context only), as the reference's `compute_generative_perplexity`
      does with `eval_context_size`; out["gen_ppl_context"] records the chunk length.
    texts: decoded samples (needed for MAUVE).
    mauve_reference: optional reference texts; MAUVE is computed with `featurizer`
      (default all-MiniLM-L6-v2).
  Returns:
    dict with entropy (mean nats per sample), and when computed gen_ppl, gen_ppl_scorer
    (gen_ppl_context for chunked long samples), mauve, mauve_n, mauve_reference, mauve_featurizer.
  """
  tokens = np.asarray(tokens)
  out = {"num_samples": int(tokens.shape[0]), "entropy": float(mean_entropy(tokens))}
  if scorer is not None:
    eos = scorer.tokenizer.eos_id
    # Without an EOS token (bytes) use the mask id as a sentinel: it never occurs in samples, so
    # every target counts, and it pads partial scorer batches with zero weight.
    eos = scorer.tokenizer.mask_id if eos is None else eos
    ctx = scorer.seq_len if tokens.shape[1] > scorer.seq_len else None
    res = gen_ppl(tokens.astype(np.int32), scorer.log_probs_fn(), eos_id=int(eos),
                  batch_size=min(scorer_batch_size, len(tokens)), context_size=ctx)
    out["gen_ppl"] = float(res["ppl"])
    out["gen_ppl_scorer"] = scorer.path
    if ctx is not None:
      out["gen_ppl_context"] = f"scorer windows of {ctx} tokens (non-overlapping chunks)"
  if mauve_reference is not None:
    if texts is None:
      raise ValueError("MAUVE needs the decoded sample texts")
    from remdm_jax.text.mauve import mauve_from_texts
    if featurizer is None:
      from remdm_jax.text.minilm import MiniLMFeaturizer
      featurizer = MiniLMFeaturizer()
    res = mauve_from_texts(list(mauve_reference), list(texts), featurizer,
                           reference=reference_name, batch_size=64)
    out.update(mauve=res["mauve"], mauve_n=res["n_q"], mauve_reference=res["reference"],
               mauve_featurizer=res["featurizer"])
  return out
