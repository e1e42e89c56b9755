"""QM9 molecules (SPEC_DOMAINS §M): SMILES tokenizer, data, metrics, sampling and the sweep.

`tokenizer` needs nothing beyond numpy; `data` and `metrics` need the optional extra `chem`
(rdkit, qm9pack): pip install 'remdm-jax[chem]'.
"""
