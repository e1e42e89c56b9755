"""Loading a trained denoiser and drawing many samples with any sampler strategy.

This is the library behind `sample.py` and the scaling sweep (`remdm_jax.eval.sweep`): load a
params checkpoint (ours, an exported training run, or a converted official MDLM checkpoint), check
it against its tokenizer, and run `remdm_jax.sampling.make_sampler` batch by batch with progress.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Any, Callable, Iterable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from remdm_jax import checkpoint
from remdm_jax.fileio import atomic_open
from remdm_jax.models import dit
from remdm_jax.sampling import SamplerConfig, make_sampler
from remdm_jax.tokenizers import get_tokenizer

ASSETS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "models")
SHIPPED_MODELS = {
    "bible_byte_mdlm": "MDLM DiT on King James Bible bytes (L=128, V=257)",
    "bible_byte_ar": "autoregressive DiT on the same data: the offline perplexity scorer",
}
# Model vocabularies of the tokenizers we know, for checkpoints that do not name theirs.
_VOCAB_TO_TOKENIZER = {257: "byte", 50258: "gpt2"}


def shipped_model_path(name: str = "bible_byte_mdlm") -> str:
  """Path of a model that ships inside the package (`SHIPPED_MODELS`)."""
  if name not in SHIPPED_MODELS:
    raise ValueError(f"shipped model name={name!r} is not one of {tuple(SHIPPED_MODELS)}")
  return os.path.join(ASSETS_DIR, name)


@dataclasses.dataclass(frozen=True)
class LoadedModel:
  """A denoiser ready to sample: float32 params, its `DiTConfig`, graphdef and tokenizer."""

  params: Any
  config: dit.DiTConfig
  graphdef: Any
  tokenizer: Any
  path: str
  metadata: dict

  @property
  def seq_len(self) -> int:
    return self.config.max_seq_len

  @property
  def mask_id(self) -> int:
    return self.tokenizer.mask_id

  def denoise_fn(self) -> Callable:
    """denoise_fn(params, tokens [B, L], t [B]) -> logits [B, L, V] (SPEC §4.3 step 1)."""
    return dit.make_denoise_fn(self.graphdef)

  def log_probs_fn(self) -> Callable:
    """For a causal (AR) model: tokens [B, L] -> next-token logits [B, L, V] (jitted)."""
    if not self.config.causal:
      raise ValueError(f"{self.path}: log_probs_fn needs an autoregressive (causal=True) model")
    apply = dit.make_apply_fn(self.graphdef)
    params = self.params
    return jax.jit(lambda toks: apply(params, toks, jnp.zeros((toks.shape[0],), jnp.float32)))


def load_model(path: str, tokenizer: Optional[str] = None, **config_overrides) -> LoadedModel:
  """Loads a params checkpoint (or a training workdir's latest EMA params) and its tokenizer.

  `config_overrides` replace run-time fields of the stored `DiTConfig`, e.g.
  `compute_dtype="float32"` or `attention_impl="cudnn"` (shape fields must match the weights).

  The tokenizer is `tokenizer` if given, else the checkpoint's metadata `tokenizer`, else inferred
  from the vocabulary size (257 -> byte, 50258 -> gpt2). Raises FileNotFoundError for a missing
  checkpoint and ValueError when the tokenizer's model vocabulary differs from the checkpoint's.
  """
  params, model_config, metadata = checkpoint.load_params(path)
  cfg = dit.DiTConfig.from_dict({**model_config, **config_overrides})
  name = tokenizer or metadata.get("tokenizer") or _VOCAB_TO_TOKENIZER.get(cfg.vocab_size)
  if name is None:
    raise ValueError(f"{path}: checkpoint vocab_size={cfg.vocab_size} matches no known tokenizer;"
                     " pass the tokenizer name explicitly")
  tok = get_tokenizer(name)
  if tok.vocab_size != cfg.vocab_size:
    raise ValueError(f"checkpoint/tokenizer vocab mismatch: {path} has vocab_size="
                     f"{cfg.vocab_size} but tokenizer {name!r} has vocab_size={tok.vocab_size}")
  graphdef = dit.abstract_params(cfg)[0]
  return LoadedModel(params=params, config=cfg, graphdef=graphdef, tokenizer=tok,
                     path=os.path.abspath(path), metadata=dict(metadata, tokenizer=name))


def encode_prefix(tokenizer, text: str, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
  """A text prefix as (prompt int32 [L], prompt_mask bool [L]): the first len(ids) positions are
  frozen to the prompt, the rest are generated. Raises ValueError if the prompt does not fit."""
  ids = list(tokenizer.encode(text))
  if not ids:
    raise ValueError(f"prompt={text!r} encodes to no tokens")
  if len(ids) >= seq_len:
    raise ValueError(f"prompt has {len(ids)} tokens; it must be shorter than seq_len={seq_len}")
  prompt = np.full((seq_len,), tokenizer.mask_id, np.int32)
  prompt[:len(ids)] = ids
  mask = np.zeros((seq_len,), bool)
  mask[:len(ids)] = True
  return prompt, mask


def generate(model: LoadedModel, cfg: SamplerConfig, *, num_samples: int, batch_size: int,
             seed: int, prompt: Optional[str] = None, progress: bool = True,
             ) -> tuple[np.ndarray, dict]:
  """Draws `num_samples` sequences with sampler `cfg`.

  Batch b uses key fold_in(PRNGKey(seed), b); every batch has `batch_size` rows (one compiled
  program) and the surplus of the last batch is dropped.

  Returns:
    (tokens int32 [num_samples, L], stats) with stats: nfe (static denoiser calls per batch),
    nfe_spent (mean calls actually made, lower with caching), seconds, samples_per_s.
  """
  if not isinstance(num_samples, int) or num_samples < 1:
    raise ValueError(f"num_samples={num_samples!r} must be an int >= 1")
  if not isinstance(batch_size, int) or batch_size < 1:
    raise ValueError(f"batch_size={batch_size!r} must be an int >= 1")
  if not model.config.time_conditioning and not cfg.time_independent:
    cfg = cfg.replace(time_independent=True)  # SPEC §4.8: this network ignores t
  sampler = make_sampler(model.denoise_fn(), cfg, seq_len=model.seq_len, mask_id=model.mask_id)
  params = dit.cast_for_compute(model.params, model.config)
  batch_size = min(batch_size, num_samples)
  kwargs = {}
  if prompt is not None:
    p, m = encode_prefix(model.tokenizer, prompt, model.seq_len)
    kwargs = dict(prompt=np.tile(p, (batch_size, 1)), prompt_mask=np.tile(m, (batch_size, 1)))
  root = jax.random.PRNGKey(seed)
  num_batches = -(-num_samples // batch_size)
  out, spent = [], []
  start = time.perf_counter()
  for b in range(num_batches):
    toks, info = sampler.sample_with_info(params, jax.random.fold_in(root, b),
                                          batch_size=batch_size, **kwargs)
    toks = np.asarray(toks)
    spent.append(int(info["nfe"]))
    out.append(toks)
    if progress:
      done = min((b + 1) * batch_size, num_samples)
      el = time.perf_counter() - start
      eta = el / (b + 1) * (num_batches - b - 1)
      print(f"\r[{cfg.strategy} T={cfg.num_steps}] {done}/{num_samples} samples  "
            f"{el:.1f}s elapsed  ETA {eta:.1f}s", end="", file=sys.stderr, flush=True)
  if progress:
    print(file=sys.stderr)
  seconds = time.perf_counter() - start
  tokens = np.concatenate(out)[:num_samples]
  if np.any(tokens == model.mask_id):  # the sampler guarantees this; never write masks out
    raise RuntimeError("sampler returned mask tokens")
  return tokens, dict(nfe=sampler.nfe, nfe_spent=float(np.mean(spent)), seconds=seconds,
                      samples_per_s=num_samples / seconds)


def write_jsonl_atomic(path: str, records: Iterable[dict]) -> str:
  """Writes one JSON object per line to `path` via a temp file in the same folder + rename."""
  with atomic_open(path) as f:
    for r in records:
      f.write(json.dumps(r) + "\n")
  return os.path.abspath(path)


def sampler_settings(cfg: SamplerConfig) -> dict:
  """The sampler config as a JSON-able dict (recorded with every sample)."""
  return dataclasses.asdict(cfg)
