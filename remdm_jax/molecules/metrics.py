"""QM9 sample metrics (SPEC_DOMAINS §M.5, reference `guidance_eval/qm9_eval.py`).

For decoded sample strings s_1..s_n (specials written as `<bos>` etc.):
  1. t_i = s_i with every `<bos>`, `<eos>`, `<pad>` substring removed (`<mask>`, `<unk>` stay);
  2. valid iff len(t_i) > 0 and `Chem.MolFromSmiles(t_i)` is not None;
  3. valid_frac = #valid / n;
  4. unique_frac = |set(valid)| / #valid;
  5. novel_frac = |set(valid) - reference| / #valid; `num_novel` is the numerator;
  6. property (ring count = len(GetSymmSSSR), or QED): mean and 25/50/75th percentiles (numpy
     linear interpolation) over all valid samples (duplicates counted) and over the SET of novel
     strings.
Novelty / uniqueness follow the reference's quirk by default: the generated strings are NOT
canonicalised, so a QM9 molecule written non-canonically counts as novel (and two spellings of one
molecule as two unique strings). `canonical=True` canonicalises every valid string first
(`Chem.CanonSmiles`). The reference set is QM9's canonical SMILES (`QM9Data.smiles_set()`).
Fractions with a zero denominator are 0.0; statistics over an empty set are NaN.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

STRIP_TOKENS = ("<bos>", "<eos>", "<pad>")
PROPERTIES = ("ring_count", "qed")


def _rdkit():
  try:
    from rdkit import Chem, RDLogger
    from rdkit.Chem import QED
  except ImportError as e:
    raise ImportError("molecule metrics need the optional extra: pip install "
                      "'remdm-jax[chem]' (rdkit)") from e
  RDLogger.DisableLog("rdApp.*")
  return Chem, QED


def check_available() -> None:
  """ImportError (one line) now, before any sampling, if RDKit is missing."""
  _rdkit()


def strip_special(s: str) -> str:
  """Removes the substrings <bos>, <eos>, <pad> anywhere (step 1)."""
  for t in STRIP_TOKENS:
    s = s.replace(t, "")
  return s


def mol_property(mol, name: str) -> float:
  """ring_count = len(Chem.GetSymmSSSR(mol)) or qed = QED.qed(mol) of an RDKit Mol."""
  Chem, QED = _rdkit()
  if name == "ring_count":
    return float(len(Chem.GetSymmSSSR(mol)))
  if name == "qed":
    return float(QED.qed(mol))
  raise ValueError(f"property name={name!r} is not one of {PROPERTIES}")


def smiles_property(smiles: str, name: str) -> float:
  """Property of a SMILES string; NaN if it is not a valid molecule."""
  Chem, _ = _rdkit()
  mol = Chem.MolFromSmiles(smiles) if smiles else None
  return float("nan") if mol is None else mol_property(mol, name)


def _stats(values: Sequence[float], prefix: str) -> dict:
  v = np.asarray(values, np.float64)
  if v.size == 0:
    return {f"{prefix}_{k}": float("nan") for k in ("mean", "q25", "median", "q75")}
  q25, q50, q75 = np.percentile(v, [25, 50, 75])
  return {f"{prefix}_mean": float(v.mean()), f"{prefix}_q25": float(q25),
          f"{prefix}_median": float(q50), f"{prefix}_q75": float(q75)}


def evaluate_samples(samples: Iterable[str], reference: Iterable[str], *,
                     properties: Sequence[str] = PROPERTIES, canonical: bool = False) -> dict:
  """Metrics of decoded sample strings (module docstring).

  Args:
    samples: n decoded strings (specials may be present; they are stripped here).
    reference: training SMILES (canonical) for novelty, non-empty; None: no novelty metrics
      (num_novel None, novel_frac and the novel statistics NaN).
    properties: subset of ("ring_count", "qed") to summarise.
    canonical: canonicalise valid strings before uniqueness / novelty (default: the reference's
      uncanonicalised rule).
  Returns:
    dict with num_samples, num_valid, num_unique, num_novel, valid_frac, unique_frac, novel_frac,
    and for each property P: P_valid_{mean,q25,median,q75} and P_novel_{mean,q25,median,q75}.
  Raises:
    ValueError for an unknown property, an empty sample list, an empty reference (every sample
    would count as novel), a single string given for `samples` or `reference` (its characters
    would be taken as the molecules), or a non-string sample.
  """
  Chem, _ = _rdkit()
  for p in properties:
    if p not in PROPERTIES:
      raise ValueError(f"property name={p!r} is not one of {PROPERTIES}")
  for name, value in (("samples", samples), ("reference", reference)):
    if isinstance(value, (str, bytes)):
      raise ValueError(f"evaluate_samples: {name} must be a list of SMILES strings, got one "
                       f"string {value[:40]!r}")
  samples = list(samples)
  bad = [s for s in samples if not isinstance(s, str)]
  if bad:
    raise ValueError(f"evaluate_samples: sample {bad[0]!r} is not a string")
  samples = [strip_special(s) for s in samples]
  n = len(samples)
  if n == 0:
    raise ValueError("evaluate_samples: no samples")
  if reference is None:
    ref = None
  else:
    ref = reference if isinstance(reference, (set, frozenset)) else set(reference)
    if not ref:
      raise ValueError("evaluate_samples: the reference set is empty (every sample would count "
                       "as novel); give the training SMILES (load_qm9().smiles_set()), or "
                       "reference=None for no novelty metrics")
  valid, mols = [], []
  for s in samples:
    mol = Chem.MolFromSmiles(s) if len(s) > 0 else None
    if mol is None:
      continue
    valid.append(Chem.CanonSmiles(s) if canonical else s)
    mols.append(mol)
  uniq = set(valid)
  novel = sorted(uniq - ref) if ref is not None else []
  nv = len(valid)
  out = dict(num_samples=n, num_valid=nv, num_unique=len(uniq), num_novel=len(novel),
             valid_frac=nv / n, unique_frac=len(uniq) / nv if nv else 0.0,
             novel_frac=len(novel) / nv if nv else 0.0)
  if ref is None:
    out.update(num_novel=None, novel_frac=float("nan"))
  if properties:
    first_mol = {}
    for key, mol in zip(valid, mols):
      first_mol.setdefault(key, mol)
    for p in properties:
      out.update(_stats([mol_property(m, p) for m in mols], f"{p}_valid"))
      out.update(_stats([mol_property(first_mol[k], p) for k in novel], f"{p}_novel"))
  return out
