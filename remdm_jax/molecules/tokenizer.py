"""The QM9 SMILES tokenizer: MolecularTransformer regex, 35-id vocabulary (SPEC_DOMAINS §M.2).

| id    | token                                                                          |
|-------|--------------------------------------------------------------------------------|
| 0..4  | `<bos>` `<eos>` `<mask>` `<pad>` `<unk>`                                       |
| 5..34 | `# ( ) - 1 2 3 4 5 = C F N O [C-] [CH-] [N+] [N-] [NH+] [NH2+] [NH3+] [O-]     |
|       |  [c-] [cH-] [n-] [nH+] [nH] c n o` (sorted, as the reference's vocab file)     |

V = 35, mask id m = 2 (the MDLM absorbing state; NOT V - 1), L = 32. Encoding (reference
`guidance` repo, `compute_loss_on_pad_tokens=True`): `[<bos>] + ids + [<eos>]`, right-padded with
`<pad>` and truncated to L (a truncated string loses its `<eos>`, as the reference's HF tokenizer
with `truncation=True` does). Regex matches outside the vocabulary become `<unk>` (4); characters
the regex does not match at all are also `<unk>` (one per maximal unmatched run).
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


def tokenize(smiles: str) -> list[str]:
  """Regex pieces of `smiles` in order; an unmatched run of characters is kept as one piece (it
  maps to `<unk>`)."""
  if not isinstance(smiles, str):
    raise ValueError(f"smiles must be a str, got {type(smiles).__name__}")
  out, pos = [], 0
  for m in _PATTERN.finditer(smiles):
    if m.start() > pos:
      out.append(smiles[pos:m.start()])
    out.append(m.group(0))
    pos = m.end()
  if pos < len(smiles):
    out.append(smiles[pos:])
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
    """ids of the regex pieces, no specials, no padding (unknown pieces -> 4)."""
    return [_TOKEN_TO_ID.get(t, UNK_ID) if t not in SPECIAL_TOKENS else UNK_ID
            for t in tokenize(smiles)]

  def num_tokens(self, smiles: str) -> int:
    """Length of the framed sequence [bos] + ids + [eos] before truncation."""
    return len(tokenize(smiles)) + 2

  def encode(self, smiles: str) -> list[int]:
    """[bos] + ids + [eos], right-padded with pad (3) / truncated to `seq_len`: list of ints."""
    ids = [BOS_ID] + self.token_ids(smiles) + [EOS_ID]
    ids = ids[: self.seq_len]
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
