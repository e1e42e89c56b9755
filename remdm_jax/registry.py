"""Named corpora and tokenizers, registered by the domains (google-research/big_vision
`datasets/core.py` style).

Core code (the data pipeline, `tokenizers.get_tokenizer`, the config checks) looks a name up here
and never imports a domain. A domain registers its entries in its own `registrations.py`, a light
module whose entries are factories called only on use; the first lookup imports every
`remdm_jax.<package>.registrations` that exists, so a new domain adds a package with a
`registrations.py` and edits no core file.

  register_corpus(name, documents=... | rows=..., ...)    a `DataConfig.source`
  register_tokenizer(name, factory, corpora=None)         a `DataConfig.tokenizer` / get_tokenizer name
  corpus(name) -> Corpus, tokenizer_factory(name), corpus_names(), tokenizer_names()

Unknown names raise one ValueError listing the registered ones.
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import pkgutil
from typing import Any, Callable, Optional, Sequence

_CORPORA: dict[str, "Corpus"] = {}
_TOKENIZERS: dict[str, "TokenizerEntry"] = {}
_discovered = False


@dataclasses.dataclass(frozen=True)
class Corpus:
  """A registered data source.

  Exactly one of:
    documents(cfg) -> sequence of str: every document in order; the core splits off the last ones
      for validation and packs them with the config's tokenizer (`data.pack`).
    rows(cfg, split) -> int32 [N, seq_len (+ label column)]: already tokenised fixed-length rows of
      "train" / "validation" (the corpus owns its split), e.g. QM9 SMILES.
  Optional:
    check(cfg): raises ValueError(naming the DataConfig field) for settings the corpus cannot
      serve; run in `DataConfig.__post_init__`.
    fingerprint(cfg): JSON-able identity of the source files (size, mtime) for the packed cache.
    labels: the `DataConfig.label` values the corpus supports (empty: none).
    tokenizers: the tokenizer names it can be packed with (None: any registered one).
  """

  name: str
  documents: Optional[Callable[[Any], Sequence[str]]] = None
  rows: Optional[Callable[[Any, str], Any]] = None
  check: Optional[Callable[[Any], None]] = None
  fingerprint: Optional[Callable[[Any], Any]] = None
  labels: tuple[str, ...] = ()
  tokenizers: Optional[tuple[str, ...]] = None


@dataclasses.dataclass(frozen=True)
class TokenizerEntry:
  """factory(**kwargs) -> tokenizer; `corpora`: the only sources it serves (None: any)."""

  name: str
  factory: Callable[..., Any]
  corpora: Optional[tuple[str, ...]] = None


def register_corpus(name: str, *, documents=None, rows=None, check=None, fingerprint=None,
                    labels: Sequence[str] = (), tokenizers: Optional[Sequence[str]] = None) -> None:
  """Registers a `Corpus` (see its docstring). Re-registering a name replaces it."""
  if (documents is None) == (rows is None):
    raise ValueError(f"corpus {name!r}: give exactly one of documents= or rows=")
  _CORPORA[name] = Corpus(name, documents, rows, check, fingerprint, tuple(labels),
                          None if tokenizers is None else tuple(tokenizers))


def register_tokenizer(name: str, factory: Callable[..., Any], *,
                       corpora: Optional[Sequence[str]] = None) -> None:
  """Registers a tokenizer factory under `name`. Re-registering a name replaces it."""
  _TOKENIZERS[name] = TokenizerEntry(name, factory, None if corpora is None else tuple(corpora))


def discover() -> None:
  """Imports every `remdm_jax.<package>.registrations` once (the domains' entries)."""
  global _discovered
  if _discovered:
    return
  _discovered = True
  import remdm_jax  # pylint: disable=g-import-not-at-top
  for info in pkgutil.iter_modules(remdm_jax.__path__):
    if not info.ispkg:
      continue
    name = f"remdm_jax.{info.name}.registrations"
    if importlib.util.find_spec(name) is not None:
      importlib.import_module(name)


def corpus(name: str) -> Corpus:
  """The registered corpus `name`; ValueError listing the registered names otherwise."""
  discover()
  if name not in _CORPORA:
    raise ValueError(f"unknown corpus {name!r}; registered: {', '.join(corpus_names())}")
  return _CORPORA[name]


def tokenizer_entry(name: str) -> TokenizerEntry:
  """The registered tokenizer `name`; ValueError listing the registered names otherwise."""
  discover()
  if name not in _TOKENIZERS:
    raise ValueError(f"unknown tokenizer {name!r}; registered: {', '.join(tokenizer_names())}")
  return _TOKENIZERS[name]


def corpus_names() -> tuple[str, ...]:
  discover()
  return tuple(sorted(_CORPORA))


def tokenizer_names() -> tuple[str, ...]:
  discover()
  return tuple(sorted(_TOKENIZERS))
