"""The text domain's registry entries: corpora bible / text / hf_disk (`text.corpora`)."""
from remdm_jax import registry
from remdm_jax.text import corpora

registry.register_corpus("bible", documents=lambda cfg: corpora.load_bible(),
                         fingerprint=corpora.bible_fingerprint)
registry.register_corpus("text", documents=lambda cfg: corpora.load_text(cfg.path, cfg.doc_per_line),
                         check=corpora.check_path, fingerprint=corpora.text_fingerprint)
registry.register_corpus("hf_disk", documents=lambda cfg: corpora.load_hf_disk(
    cfg.path, cfg.text_column, cfg.hf_split), check=corpora.check_path,
                         fingerprint=corpora.hf_disk_fingerprint)
