"""The molecules domain's registry entries: the "smiles" tokenizer and the "qm9" corpus
(SPEC_DOMAINS §M.1, §M.2). Light: the QM9 loader (rdkit, qm9pack) is imported only when used."""
from remdm_jax import registry


def _smiles_tokenizer(**kwargs):
  from remdm_jax.molecules.tokenizer import SmilesTokenizer  # pylint: disable=g-import-not-at-top
  return SmilesTokenizer(**kwargs)


def _qm9_rows(cfg, split):
  from remdm_jax.molecules.data import load_qm9  # pylint: disable=g-import-not-at-top
  return load_qm9(cfg.cache_dir).rows(split, cfg.label)


def _check_qm9(cfg):
  if cfg.seq_len != 32:
    raise ValueError(f"DataConfig.seq_len={cfg.seq_len!r}: source 'qm9' uses L = 32 "
                     "(SPEC_DOMAINS §M.2)")


registry.register_tokenizer("smiles", _smiles_tokenizer, corpora=("qm9",))
registry.register_corpus("qm9", rows=_qm9_rows, check=_check_qm9, labels=("ring_count", "qed"),
                         tokenizers=("smiles",))
