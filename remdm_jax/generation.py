"""Loading a trained denoiser and drawing many samples with any sampler strategy.

This is the library behind `sample.py` and the scaling sweep (`remdm_jax.text.sweep`): load a
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

from remdm_jax import checkpoint, checks
from remdm_jax import sharding as mesh_lib
from remdm_jax.checks import check_mask_id
from remdm_jax.fileio import atomic_open
from remdm_jax.interrupt import Interrupted, call_interruptibly, deferred
from remdm_jax.models import dit
from remdm_jax.sampling import SamplerConfig, make_sampler, semi_ar
from remdm_jax.tokenizers import get_tokenizer

ASSETS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "models")
SHIPPED_MODELS = {
    "bible_byte_mdlm": "MDLM DiT on King James Bible bytes (L=128, V=257)",
    "bible_byte_ar": "autoregressive DiT on the same data: the offline perplexity scorer",
}
# Model vocabularies of the tokenizers we know, for checkpoints that do not name theirs.
_VOCAB_TO_TOKENIZER = {257: "byte", 50258: "gpt2"}


SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUTPUT_ENV = "REMDM_OUTPUT_DIR"


def output_root(cwd: Optional[str] = None) -> str:
  """Folder for default outputs (sample.py's samples/, the sweep's runs/): `$REMDM_OUTPUT_DIR` if
  set, else the current directory, unless that lies inside the source checkout (the folder holding
  `remdm_jax/`), then `~/remdm-jax` so that outputs never land in the repository."""
  if os.environ.get(OUTPUT_ENV):
    return os.path.abspath(os.path.expanduser(os.environ[OUTPUT_ENV]))
  cwd = os.path.abspath(cwd or os.getcwd())
  if os.path.commonpath([cwd, SOURCE_ROOT]) == SOURCE_ROOT:
    return os.path.join(os.path.expanduser("~"), "remdm-jax")
  return cwd


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
  stored_tokenizer: Optional[str] = None  # the metadata's own "tokenizer" (None: none stored)

  @property
  def stored_metadata(self) -> dict:
    """The metadata as stored with the checkpoint (`metadata["tokenizer"]` is the tokenizer in
    use, which the caller may have chosen)."""
    meta = dict(self.metadata)
    meta.pop("tokenizer", None)
    if self.stored_tokenizer is not None:
      meta["tokenizer"] = self.stored_tokenizer
    return meta

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


# DiTConfig fields fixed by the stored weights (or their meaning): a load_model override must equal
# the stored value. The others (compute_dtype, attention_impl, vocab_pad_multiple, dropout,
# backward_in_compute_dtype, max_seq_len: rotary positions need no table) are run-time settings.
STORED_FIELDS = ("vocab_size", "hidden_size", "num_heads", "num_blocks", "cond_dim", "mlp_ratio",
                 "time_conditioning", "causal")


def load_model_for_flag(flag: str, path: str, *args, **kwargs) -> LoadedModel:
  """`load_model(path, *args, **kwargs)` for an entry point's flag: a missing path, or one that
  is not a folder, raises the same OSError (FileNotFoundError / NotADirectoryError) with its
  message prefixed by `<flag>=<path>: `, so the one error line names the flag."""
  try:
    return load_model(path, *args, **kwargs)
  except (FileNotFoundError, NotADirectoryError) as e:
    raise type(e)(f"{flag}={path}: {e}") from None


def load_model(path: str, tokenizer: Optional[str] = None, *, mask_id: Optional[int] = None,
               **config_overrides) -> LoadedModel:
  """Loads a params checkpoint (or a training workdir's latest EMA params) and its tokenizer.

  Args:
    path: a `checkpoint.save_params` folder (ours, exported, or converted) or a training workdir.
    tokenizer: "byte" | "gpt2" | "ids" | a tokenizer.json path (`tokenizers.get_tokenizer`);
      default: the checkpoint's metadata `tokenizer`, else by vocabulary size (257 -> byte,
      50258 -> gpt2), else "ids" (samples are token ids; any vocabulary size).
    mask_id: only with the "ids" tokenizer: the mask id (default V - 1); must lie in [0, V).
    config_overrides: run-time fields of the stored `DiTConfig`, e.g. `compute_dtype="float32"` or
      `attention_impl="cudnn"`. A field in `STORED_FIELDS` (shapes, heads, time conditioning,
      causal) must equal the stored value.
  Raises:
    FileNotFoundError for a missing checkpoint, NotADirectoryError for a path that is not a
    folder; ValueError (one line, before any compilation) for
    an unreadable or truncated checkpoint, overrides that differ from the stored config (naming
    every differing field), a stored config that does not match the stored weights, a tokenizer
    whose model vocabulary differs from the checkpoint's, or a mask id outside the vocabulary.
  """
  params, model_config, metadata = checkpoint.load_params(path)
  differ = [f"{k}={v!r} (stored {model_config.get(k)!r})" for k, v in config_overrides.items()
            if k in STORED_FIELDS and k in model_config and model_config[k] != v]
  if differ:
    raise ValueError(f"load_model overrides disagree with the checkpoint {path}: "
                     + ", ".join(differ))
  try:
    cfg = dit.DiTConfig.from_dict({**model_config, **config_overrides})
  except ValueError as e:
    if metadata.get("kind") == "llada_countdown" or "n_layers" in model_config:
      raise ValueError(f"{path} is a LLaDA-architecture model, not a DiT; run it with python -m "
                       "remdm_jax.llm.cli / remdm_jax.llm.countdown_eval") from None
    raise ValueError(f"{path}: model_config.json is not a DiT config ({e})") from None
  name = tokenizer or metadata.get("tokenizer") or _VOCAB_TO_TOKENIZER.get(cfg.vocab_size) or "ids"
  if name == "ids":
    tok = get_tokenizer("ids", vocab_size=cfg.vocab_size, mask_id=mask_id)
  else:
    if mask_id is not None:
      raise ValueError(f"mask_id={mask_id} can only be set with tokenizer 'ids'; tokenizer "
                       f"{name!r} fixes its own mask id")
    tok = get_tokenizer(name, **({"model_vocab_size": cfg.vocab_size}
                                 if name not in ("byte", "bytes", "gpt2", "smiles") else {}))
  if tok.vocab_size != cfg.vocab_size:
    raise ValueError(f"checkpoint/tokenizer vocab mismatch: {path} has vocab_size="
                     f"{cfg.vocab_size} but tokenizer {name!r} has vocab_size={tok.vocab_size}")
  check_mask_id(tok.mask_id, cfg.vocab_size, field="mask_id")
  graphdef = dit.abstract_params(cfg)[0]
  return LoadedModel(params=params, config=cfg, graphdef=graphdef, tokenizer=tok,
                     path=os.path.abspath(path), metadata=dict(metadata, tokenizer=tok.name),
                     stored_tokenizer=metadata.get("tokenizer"))


MODEL_KINDS = ("mdlm", "udlm", "ar", "classifier")


def model_kind(config, metadata: Optional[dict] = None) -> str:
  """What a stored model is, from its DiTConfig (or dict) and metadata: "classifier" (head
  "classifier"), "ar" (causal), "udlm" (trained with loss objective "udlm": metadata
  train_config.loss.objective, as `checkpoint.export_params` writes it) or "mdlm" (any other
  bidirectional LM: a masked-diffusion denoiser)."""
  get = config.get if isinstance(config, dict) else lambda k, d=None: getattr(config, k, d)
  if get("head", "lm") == "classifier":
    return "classifier"
  if get("causal", False):
    return "ar"
  loss = ((metadata or {}).get("train_config") or {}).get("loss") or {}
  return "udlm" if loss.get("objective") == "udlm" else "mdlm"


def model_domain(metadata: Optional[dict]) -> Optional[str]:
  """The domain a stored model was trained for, from its metadata: "images" (the digits layout),
  "molecules" (tokenizer "smiles"), "text" (any other named text tokenizer) or None (unknown:
  token ids of any vocabulary)."""
  meta = metadata or {}
  if isinstance(meta.get("layout"), dict) and "levels" in meta["layout"]:
    return "images"
  tok = meta.get("tokenizer")
  if tok == "smiles":
    return "molecules"
  if isinstance(tok, str) and tok not in ("ids", ""):
    return "text"
  return None


# Where each (kind, domain) is sampled: named in the errors of the entry points.
ENTRY_POINTS = {"text": "python sample.py", "molecules": "python -m remdm_jax.molecules.sample",
                "images": "python -m remdm_jax.images.sample_digits"}


def check_model_use(model: "LoadedModel", entry: str, *, kinds: tuple, domains: tuple) -> None:
  """ValueError (one line naming the model, its kind and domain, and the entry point that samples
  it) unless `model_kind` is in `kinds` and `model_domain` in `domains` (None = unknown domain).
  Uses the metadata stored with the model (`LoadedModel.stored_metadata`)."""
  meta = model.stored_metadata
  kind, domain = model_kind(model.config, meta), model_domain(meta)
  if kind in kinds and domain in domains:
    return
  where = ENTRY_POINTS.get(domain) if kind != "classifier" else None
  hint = f"; sample it with {where}" if where and domain not in domains else ""
  article = "an" if kind == "ar" else "a"
  raise ValueError(f"{model.path} is {article} {kind} model of the {domain or 'unknown'} domain; "
                   f"{entry} "
                   f"takes {'/'.join(kinds)} models of the "
                   f"{'/'.join(d or 'unknown' for d in domains)} domain{hint}")


def check_diffusion_model(model: LoadedModel) -> None:
  """ValueError unless `model` is a masked diffusion denoiser (not a causal AR model, a UDLM or
  a classifier: `model_kind` "mdlm")."""
  if model.config.causal:
    raise ValueError(f"{model.path} is an autoregressive model (causal=True); the diffusion "
                     "sampler needs a masked diffusion denoiser (causal=False)")
  kind = model_kind(model.config, model.stored_metadata)
  if kind != "mdlm":
    raise ValueError(f"{model.path} is a {kind} model, not a masked-diffusion denoiser; the "
                     "MDLM / ReMDM sampler needs an mdlm model")
  check_mask_id(model.mask_id, model.config.vocab_size, field="mask_id")


def encode_prefix(tokenizer, text: str, seq_len: int,
                  vocab_size: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
  """A text prefix as (prompt int32 [L], prompt_mask bool [L]): the first len(ids) positions are
  frozen to the prompt, the rest are generated. Raises ValueError if the prompt does not fit or
  holds an id outside [0, vocab_size) (default the tokenizer's) or the mask id."""
  ids = list(tokenizer.encode(text))
  if not ids:
    raise ValueError(f"prompt={text!r} encodes to no tokens")
  if len(ids) >= seq_len:
    raise ValueError(f"prompt has {len(ids)} tokens; it must be shorter than seq_len={seq_len}")
  vocab = tokenizer.vocab_size if vocab_size is None else vocab_size
  bad = [i for i in ids if not 0 <= i < vocab or i == tokenizer.mask_id]
  if bad:
    raise ValueError(f"prompt token id {bad[0]} is outside the model vocabulary [0, {vocab}) or "
                     f"is the mask id {tokenizer.mask_id}")
  prompt = np.full((seq_len,), tokenizer.mask_id, np.int32)
  prompt[:len(ids)] = ids
  mask = np.zeros((seq_len,), bool)
  mask[:len(ids)] = True
  return prompt, mask


class StepProgress:
  """Host-side progress of a sampling run, fed by the denoiser through `jax.debug.callback`.

  One line on `stream`, rewritten at most every `min_interval` s (default 0.25 s on a terminal,
  10 s otherwise, e.g. a log file) and at the end of each batch: batch b/nb, denoiser step k/nfe
  within the batch, sample tokens per second (batch_size * L per completed batch, pro rata within
  one) and the ETA. Seconds include compilation (the first step of the first batch).
  """

  def __init__(self, label: str, *, num_batches: int, batch_size: int, seq_len: int, nfe: int,
               stream=None, min_interval: Optional[float] = None):
    self.label, self.num_batches, self.batch_size = label, num_batches, batch_size
    self.seq_len, self.nfe = seq_len, max(1, nfe)
    self.stream = sys.stderr if stream is None else stream
    if min_interval is None:
      tty = getattr(self.stream, "isatty", lambda: False)()
      min_interval = 0.25 if tty else 10.0
    self.min_interval = min_interval
    self.batch, self.calls, self.lines = 0, 0, 0
    self.start = self.last = time.perf_counter()

  def start_batch(self, b: int) -> None:
    self.batch, self.calls = b, 0

  def on_call(self, *_) -> None:
    """One denoiser call (the callback's argument, t [B], is ignored)."""
    self.calls += 1
    now = time.perf_counter()
    if now - self.last >= self.min_interval or self.calls >= self.nfe:
      self.last = now
      self.show()

  def end_batch(self) -> None:
    self.calls = self.nfe  # cached steps skip the denoiser: the batch is complete anyway
    self.show()

  def show(self) -> None:
    el = time.perf_counter() - self.start
    done = (self.batch + min(self.calls, self.nfe) / self.nfe)  # batches done (fractional)
    tok_s = done * self.batch_size * self.seq_len / el if el > 0 else 0.0
    eta = el / done * (self.num_batches - done) if done > 0 else float("nan")
    print(f"\r[{self.label}] batch {self.batch + 1}/{self.num_batches}  step "
          f"{min(self.calls, self.nfe)}/{self.nfe}  {tok_s:,.0f} tok/s  {el:.1f}s elapsed  "
          f"ETA {eta:.1f}s ", end="", file=self.stream, flush=True)
    self.lines += 1


def with_progress(denoise_fn: Callable, progress: StepProgress) -> Callable:
  """denoise_fn that also reports every call to `progress` (a `jax.debug.callback` on t; the
  logits are untouched, so samples are identical with and without it)."""

  def fn(params, tokens, t):
    jax.debug.callback(progress.on_call, t)
    return denoise_fn(params, tokens, t)

  return fn


def generate(model: LoadedModel, cfg: SamplerConfig, *, num_samples: int, batch_size: int,
             seed: int, prompt: Optional[str] = None, progress: bool = True,
             num_strides: int = 0, stride_length: Optional[int] = None,
             mesh: Optional[jax.sharding.Mesh] = None) -> tuple[np.ndarray, dict]:
  """Draws `num_samples` sequences with sampler `cfg`.

  Batch b uses key fold_in(PRNGKey(seed), b); every batch has `batch_size` rows (one compiled
  program) and the surplus of the last batch is dropped. With `progress`, a `StepProgress` line on
  stderr reports the denoiser step within each batch (same samples as without).

  Semi-AR (num_strides = S > 0; MDLM's `sampling.semi_ar`, `remdm_jax.sampling.semi_ar`): each
  sample is L + S * stride_length tokens long, generated as S + 1 windows of the model length L,
  each extra window freezing the previous window's last L - stride_length tokens (stride_length
  in [1, L - 1], default L // 2); window s of batch b uses fold_in(fold_in(PRNGKey(seed), b), s).
  A text prompt freezes the start of the first window. NFE = (S + 1) * the sampler's NFE.

  mesh: optional; every batch is split over all mesh axes (params replicated), also when the mesh
  spans several processes (README "Multi-host"): every process then calls `generate` with the same
  arguments and gets all `num_samples` rows. A row's sample does not depend on the split (keys are
  per row and position, `sampling.draws`). batch_size (after min(batch_size, num_samples)) must
  be divisible by the mesh size.

  Ctrl-C stops within a fraction of a second even inside a batch's compiled program
  (`interrupt.call_interruptibly`): it raises `interrupt.Interrupted` whose `partial` holds the
  finished batches' rows (int32 [k * batch_size capped at num_samples, length]).

  Returns:
    (tokens int32 [num_samples, L + S * stride_length], stats) with stats: nfe (static denoiser
    calls per batch), nfe_spent (mean calls actually made, lower with caching), seconds,
    samples_per_s, length (tokens per sample).
  Raises:
    ValueError before any work: bad counts, a seed outside [0, 2^32), a causal (AR) model, a mask
    id outside the vocabulary, a prompt that does not fit or holds ids outside the vocabulary,
    num_strides < 0 or stride_length outside [1, L - 1].
  """
  if not isinstance(num_samples, int) or num_samples < 1:
    raise ValueError(f"num_samples={num_samples!r} must be an int >= 1")
  if not isinstance(batch_size, int) or batch_size < 1:
    raise ValueError(f"batch_size={batch_size!r} must be an int >= 1")
  check_seed(seed)
  check_diffusion_model(model)
  if num_strides == 0 and stride_length is None:  # no semi-AR (also for an L = 1 model)
    stride_length = 1
  else:
    if stride_length is None:
      stride_length = model.seq_len // 2
    num_strides, stride_length = semi_ar.check_semi_ar(model.seq_len, num_strides, stride_length)
  length = semi_ar.semi_ar_length(model.seq_len, num_strides, stride_length)
  if not model.config.time_conditioning and not cfg.time_independent:
    cfg = cfg.replace(time_independent=True)  # SPEC §4.8: this network ignores t
  batch_size = min(batch_size, num_samples)
  if mesh is not None and batch_size % mesh.devices.size:
    raise ValueError(f"batch_size={batch_size} must be divisible by the {mesh.devices.size} "
                     "devices of the sampling mesh")
  kwargs = {}
  if prompt is not None:
    p, m = encode_prefix(model.tokenizer, prompt, model.seq_len, model.config.vocab_size)
    kwargs = dict(prompt=np.tile(p, (batch_size, 1)), prompt_mask=np.tile(m, (batch_size, 1)))
  num_batches = -(-num_samples // batch_size)
  denoise_fn = model.denoise_fn()
  meter = None
  if progress:
    from remdm_jax.sampling import step_schedule  # pylint: disable=g-import-not-at-top
    meter = StepProgress(f"{cfg.strategy} T={cfg.num_steps}", num_batches=num_batches,
                         batch_size=batch_size, seq_len=length,
                         nfe=(num_strides + 1) * step_schedule(cfg).nfe)
    denoise_fn = with_progress(denoise_fn, meter)
  sampler = make_sampler(denoise_fn, cfg, seq_len=model.seq_len, mask_id=model.mask_id,
                         mesh=mesh)
  if num_strides:
    sampler = semi_ar.make_semi_ar_sampler(sampler, num_strides=num_strides,
                                           stride_length=stride_length)
    sample_with_info = sampler
  else:
    sample_with_info = sampler.sample_with_info
  params = dit.cast_for_compute(model.params, model.config)
  put_key = lambda k: k  # noqa: E731
  if mesh is not None:  # placed once here (the semi-AR path does not place its inputs)
    from jax.sharding import NamedSharding, PartitionSpec as P
    rep = NamedSharding(mesh, P())
    params = mesh_lib.put_global(params, rep)  # (the prompt stays numpy: it is checked first)
    put_key = lambda k: mesh_lib.put_global(k, rep)  # noqa: E731
  root = jax.random.PRNGKey(seed)
  start = time.perf_counter()
  with deferred():  # a signal between two batches stops the next one (interrupt docstring)
    tokens, spent = _generate_batches(
        sample_with_info, params, put_key, root, kwargs, num_batches=num_batches,
        batch_size=batch_size, num_samples=num_samples, length=length, meter=meter)
  if meter:
    print(file=sys.stderr)
  seconds = time.perf_counter() - start
  if np.any(tokens == model.mask_id):  # the sampler guarantees this; never write masks out
    raise RuntimeError("sampler returned mask tokens")
  return tokens, dict(nfe=sampler.nfe, nfe_spent=float(np.mean(spent)), seconds=seconds,
                      samples_per_s=num_samples / seconds, length=length)


def _generate_batches(sample_with_info, params, put_key, root, kwargs, *, num_batches,
                      batch_size, num_samples, length, meter):
  """The batch loop of `generate`: (tokens [num_samples, length], per-batch NFE spent)."""
  out, spent = [], []
  for b in range(num_batches):
    if meter:
      meter.start_batch(b)

    def run_batch():
      toks, info = sample_with_info(params, put_key(jax.random.fold_in(root, b)),
                                    batch_size=batch_size, **kwargs)
      return mesh_lib.to_host(toks), info  # all rows on every process

    try:
      toks, info = call_interruptibly(run_batch)
    except KeyboardInterrupt:
      if meter:
        print(file=sys.stderr)
      done = np.concatenate(out)[:num_samples] if out else np.zeros((0, length), np.int32)
      raise Interrupted(done, f"interrupted in batch {b + 1}/{num_batches}") from None
    spent.append(int(info["nfe"]))
    out.append(toks)
    if meter:
      jax.effects_barrier()  # every step's callback has run
      meter.end_batch()
  return np.concatenate(out)[:num_samples], spent


def check_seed(seed, field: str = "seed") -> int:
  """seed as an int in [0, 2^32) (what `jax.random.PRNGKey` and numpy accept); else ValueError
  (`checks.check_seed`)."""
  return checks.check_seed(seed, field)


def write_jsonl_atomic(path: str, records: Iterable[dict]) -> str:
  """Writes one JSON object per line to `path` with `fileio.atomic_open` (temp file + rename)."""
  with atomic_open(path) as f:
    for r in records:
      f.write(json.dumps(r) + "\n")
  return os.path.abspath(path)


def write_jsonl_or_rescue(path: str, records: list) -> tuple[str, Optional[str]]:
  """`write_jsonl_atomic(path, records)`; if that fails (the output became read-only, the disk
  filled up, ...) the records go to a new file in the system temp folder instead, so sampled work
  is never lost. Returns (the path written, None) or (the rescue path, one-line reason)."""
  try:
    return write_jsonl_atomic(path, records), None
  except OSError as e:
    import tempfile  # pylint: disable=g-import-not-at-top
    reason = f"cannot write {path} ({e.strerror or type(e).__name__})"
    fd, rescue = tempfile.mkstemp(prefix="remdm-samples-", suffix=".jsonl")
    os.close(fd)
    return write_jsonl_atomic(rescue, records), reason


def sampler_settings(cfg: SamplerConfig) -> dict:
  """The sampler config as a JSON-able dict (recorded with every sample)."""
  return dataclasses.asdict(cfg)
