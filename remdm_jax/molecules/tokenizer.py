"""The QM9 SMILES tokenizer: MolecularTransformer regex, 35-id vocabulary (SPEC_DOMAINS §M.2).

| id    | token                                                                          |
|-------|--------------------------------------------------------------------------------|
| 0..4  | `<bos>` `<eos>` `<mask>` `<pad>` `<unk>`                                       |
| 5..34 | `# ( ) - 1 2 3 4 5 = C F N O [C-] [CH-] [N+] [N-] [NH+] [NH2+] [NH3+] [O-]     |
|       |  [c-] [cH-] [n-] [nH+] [nH] c n o` (sorted, as the reference's vocab file)     |

V = 35, mask id m = 2 (the MDLM absorbing state; NOT V - 1), L = 32. Encoding follows the
reference `guidance` repo's Hugging Face tokenizer (`tokenizer.py::SMILESTokenizer`, called in
`dataloader.py` with `max_length=L, padding="max_length", truncation=True,
add_special_tokens=True`; `compute_loss_on_pad_tokens=True`), checked against it run side by side:

- `[<bos>] + ids + [<eos>]`, right-padded with `<pad>` to L. A string of more than L - 2 tokens
  keeps its first L - 2 tokens and still ends in `<eos>` (HF truncates the content to leave room
  for the special tokens): `<bos>` + 30 tokens + `<eos>` at L = 32.
- A literal special-token string in the input (`<bos>`, `<eos>`, `<mask>`, `<pad>`, `<unk>`) is
  one piece with its special id (HF splits added special tokens out before the regex runs).
- Regex matches outside the vocabulary (`Br`, `S`, `[Na+]`, `?`, ...) become `<unk>` (4).
- Characters the regex does not match at all (`x`, `X`, spaces, `<` outside a special token) are
  dropped: the reference tokenizes with `re.findall`.
"""
from __future__ import annotations

import re
from typing import Iterable, Sequence

import numpy as np

SMILES_REGEX = (r"(\[[^\]]+]|Br?|Cl?|N|O|S|P|F|I|b|c|n|o|s|p|\(|\)|\.|=|#|-|\+|\\|\/|:|~|@|\?|>"
                r"|\*|\$|\%[0-9]{2}|[0-9])")
SPECIAL_TOKENS = ("<bos>", "<eos>", "<mask>", "<pad>", "<unk>")
SMILES_TOKENS = ("#", "(", ")", "-", "1", "2", "3", "4", "5", "=", "C", "F", "N", "O", "[C-]",
                 "[CH-]", "[N+]", "[N-]", "[NH+]", "[NH2+]", "[NH3+]", "[O-]", "[c-]", "[cH-]",
                 "[n-]", "[nH+]", "[nH]", "c", "n", "o")
VOCAB = SPECIAL_TOKENS + SMILES_TOKENS
BOS_ID, EOS_ID, MASK_ID, PAD_ID, UNK_ID = 0, 1, 2, 3, 4
VOCAB_SIZE = len(VOCAB)  # 35
SEQ_LEN = 32

_PATTERN = re.compile(SMILES_REGEX)
_TOKEN_TO_ID = {t: i for i, t in enumerate(VOCAB)}


_SPECIAL_SPLIT = re.compile("(" + "|".join(re.escape(t) for t in SPECIAL_TOKENS) + ")")


def tokenize(smiles: str) -> list[str]:
  """The pieces of `smiles` in order, as the reference HF tokenizer's `tokenize`: literal
  special-token strings first become single pieces, then the regex pieces of the text between
  them (`re.findall`: characters the regex does not match are dropped)."""
  if not isinstance(smiles, str):
    raise ValueError(f"smiles must be a str, got {type(smiles).__name__}")
  out = []
  for i, chunk in enumerate(_SPECIAL_SPLIT.split(smiles)):
    if i % 2:
      out.append(chunk)
    else:
      out.extend(_PATTERN.findall(chunk))
  return out


class SmilesTokenizer:
  """SMILES <-> ids with the reference's special ids (module docstring).

  Attributes (the interface of `remdm_jax.tokenizers`): name "smiles", vocab_size 35, mask_id 2,
  bos_id 0, eos_id 1, pad_id 3, unk_id 4, seq_len 32.
  """

  name = "smiles"
  vocab_size = VOCAB_SIZE
  mask_id = MASK_ID
  bos_id = BOS_ID
  eos_id = EOS_ID
  pad_id = PAD_ID
  unk_id = UNK_ID
  doc_separator = None
  vocab = VOCAB

  def __init__(self, seq_len: int = SEQ_LEN):
    if isinstance(seq_len, bool) or not isinstance(seq_len, (int, np.integer)) or seq_len < 2:
      raise ValueError(f"SmilesTokenizer seq_len={seq_len!r} must be an int >= 2")
    self.seq_len = int(seq_len)

  def token_ids(self, smiles: str) -> list[int]:
    """ids of the pieces (`tokenize`), not framed, not padded: a literal special-token string
    gives its special id, a regex piece outside the vocabulary gives `<unk>` (4)."""
    return [_TOKEN_TO_ID.get(t, UNK_ID) for t in tokenize(smiles)]

  def num_tokens(self, smiles: str) -> int:
    """Length of the framed sequence [bos] + ids + [eos] before truncation."""
    return len(tokenize(smiles)) + 2

  def encode(self, smiles: str) -> list[int]:
    """[bos] + ids[:seq_len - 2] + [eos], right-padded with pad (3) to `seq_len`: list of ints.
    An over-long string keeps its `<eos>` (the reference's HF truncation, module docstring)."""
    ids = [BOS_ID] + self.token_ids(smiles)[: self.seq_len - 2] + [EOS_ID]
    return ids + [PAD_ID] * (self.seq_len - len(ids))

  def encode_batch(self, smiles: Iterable[str]) -> np.ndarray:
    """int32 [N, seq_len]."""
    rows = [self.encode(s) for s in smiles]
    return np.asarray(rows, np.int32).reshape(len(rows), self.seq_len)

  def decode(self, ids: Sequence[int], strip_special: bool = False) -> str:
    """Concatenated token strings. Specials are written as `<bos>` etc.; with
    `strip_special=True`, `<bos>`, `<eos>` and `<pad>` are removed (as SPEC_DOMAINS §M.5 step 1;
    `<mask>` and `<unk>` stay). Ids outside [0, 35) raise ValueError."""
    arr = np.asarray(ids)
    if arr.ndim != 1:
      raise ValueError(f"decode expects a 1-D sequence of ids, got shape {arr.shape}")
    out = []
    for i in arr.tolist():
      i = int(i)
      if not 0 <= i < VOCAB_SIZE:
        raise ValueError(f"token id {i} is outside the SMILES vocabulary [0, {VOCAB_SIZE})")
      if strip_special and i in (BOS_ID, EOS_ID, PAD_ID):
        continue
      out.append(VOCAB[i])
    return "".join(out)

  def decode_batch(self, ids, strip_special: bool = True) -> list[str]:
    """int [N, L] -> N strings (specials stripped by default, ready for the metrics)."""
    arr = np.asarray(ids)
    if arr.ndim != 2:
      raise ValueError(f"decode_batch expects [N, L] ids, got shape {arr.shape}")
    return [self.decode(r, strip_special=strip_special) for r in arr]

  def __repr__(self) -> str:
    return f"SmilesTokenizer(seq_len={self.seq_len})"
