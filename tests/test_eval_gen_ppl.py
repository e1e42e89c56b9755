"""Generative perplexity (SPEC §7): target weights, token-weighted PPL, padding, retokenising."""
import importlib
import itertools
import math

import jax.numpy as jnp
import numpy as np
import pytest

# remdm_jax.text.gen_ppl is shadowed by the function of that name in the package namespace.
gp = importlib.import_module("remdm_jax.text.gen_ppl")

E = 2  # EOS id in the small alphabets below


def _ref_weights_reference(seq, eos):
  """SPEC §7 literally: target p >= 1 counts iff it is not EOS, or it lies between the first EOS
  (inclusive) and the second EOS (exclusive) of the sequence."""
  eos_pos = [i for i, t in enumerate(seq) if t == eos]
  first = eos_pos[0] if eos_pos else None
  second = eos_pos[1] if len(eos_pos) > 1 else None
  out = []
  for p in range(1, len(seq)):
    in_span = first is not None and p >= first and (second is None or p < second)
    out.append(seq[p] != eos or in_span)
  return out


def _ref_weights_truncate(seq, eos):
  """Position 0 is context; targets up to and including the first EOS at p >= 1 count."""
  out, ended = [], False
  for p in range(1, len(seq)):
    out.append(not ended)
    if seq[p] == eos:
      ended = True
  return out


REFS = {"reference": _ref_weights_reference, "truncate_at_first_eos": _ref_weights_truncate}


@pytest.mark.parametrize("rule", gp.RULES)
def test_target_weights_exhaustive(rule):
  seqs = np.array(list(itertools.product([0, 1, E], repeat=6)), np.int32)  # 729 sequences
  w = gp.target_weights(seqs, E, rule)
  assert w.dtype == bool and w.shape == (729, 5)
  ref = np.array([REFS[rule](list(s), E) for s in seqs])
  np.testing.assert_array_equal(w, ref)


@pytest.mark.parametrize("rule", gp.RULES)
def test_target_weights_padding_exhaustive(rule):
  """Right padding with EOS under a mask == the unpadded sequence; padding never counts."""
  seqs = list(itertools.product([0, 1, E], repeat=4))
  for n in range(1, 5):
    rows = np.full((len(seqs), 7), E, np.int32)
    rows[:, :n] = np.array(seqs)[:, :n]
    mask = np.zeros_like(rows)
    mask[:, :n] = 1
    w = gp.target_weights(rows, E, rule, mask)
    unpadded = gp.target_weights(rows[:, :n], E, rule)
    np.testing.assert_array_equal(w[:, :n - 1], unpadded)
    assert not w[:, n - 1:].any()


def test_target_weights_hand_made():
  E_ = 9
  # leading BOS is context; second EOS and later EOS targets excluded; text after EOS counts.
  seq = np.array([[E_, 3, 4, E_, 5, E_, 6]])
  np.testing.assert_array_equal(gp.target_weights(seq, E_, "reference")[0],
                                [1, 1, 0, 1, 0, 1])
  # no leading BOS: the first EOS target counts, the second does not.
  seq = np.array([[3, E_, 4, E_, E_]])
  np.testing.assert_array_equal(gp.target_weights(seq, E_, "reference")[0], [1, 1, 0, 0])
  # no EOS at all: everything counts.
  np.testing.assert_array_equal(gp.target_weights(np.array([[1, 2, 3]]), E_)[0], [1, 1])
  # truncate rule.
  seq = np.array([[E_, 3, 4, E_, 5, E_, 6]])
  np.testing.assert_array_equal(gp.target_weights(seq, E_, "truncate_at_first_eos")[0],
                                [1, 1, 1, 0, 0, 0])
  seq = np.array([[3, E_, 4]])
  np.testing.assert_array_equal(gp.target_weights(seq, E_, "truncate_at_first_eos")[0], [1, 0])
  # The reference quirk without a mask: a sample with no EOS, padded with EOS, would count
  # its first pad token. With the mask it does not.
  seq = np.array([[3, 4, 5, E_, E_]])
  np.testing.assert_array_equal(gp.target_weights(seq, E_)[0], [1, 1, 1, 0])
  np.testing.assert_array_equal(gp.target_weights(seq, E_, attention_mask=[[1, 1, 1, 0, 0]])[0],
                                [1, 1, 0, 0])


def test_target_weights_bad_args():
  with pytest.raises(ValueError, match="rule"):
    gp.target_weights(np.zeros((1, 3), np.int32), 0, "bogus")
  with pytest.raises(ValueError, match="tokens"):
    gp.target_weights(np.zeros((3,), np.int32), 0)
  with pytest.raises(ValueError, match="attention_mask"):
    gp.target_weights(np.zeros((1, 3), np.int32), 0, attention_mask=np.ones((1, 4)))


V = 11
EOS = 10
TABLE = np.random.RandomState(1).randn(V, V) * 2.0  # a bigram "AR model": logits = TABLE[x_j]


def _bigram_fn(tokens):
  return jnp.asarray(TABLE, jnp.float32)[tokens]


def _ref_ppl(rows, rule, eos=EOS):
  """float64 numpy reference over a list of unpadded 1-D rows."""
  logp = TABLE - np.log(np.exp(TABLE).sum(-1, keepdims=True))
  tot, cnt = 0.0, 0
  for r in rows:
    w = REFS[rule](list(r), eos)
    for j in range(len(r) - 1):
      if w[j]:
        tot += -logp[r[j], r[j + 1]]
        cnt += 1
  return math.exp(tot / cnt), tot, cnt


@pytest.mark.parametrize("rule", gp.RULES)
def test_gen_ppl_matches_float64_reference(rule):
  rng = np.random.RandomState(0)
  toks = rng.randint(0, V, size=(7, 16)).astype(np.int32)
  toks[rng.rand(7, 16) < 0.15] = EOS
  toks[:3, 0] = EOS
  ppl, tot, cnt = _ref_ppl(list(toks), rule)
  for bs in (1, 3, 7, 10):
    out = gp.gen_ppl(toks, _bigram_fn, eos_id=EOS, rule=rule, batch_size=bs)
    assert out["num_tokens"] == cnt and out["num_samples"] == 7
    assert out["nll_sum"] == pytest.approx(tot, rel=1e-6)
    assert out["ppl"] == pytest.approx(ppl, rel=1e-6)
  # an iterable of batches gives the same answer
  out = gp.gen_ppl([toks[:2], toks[2:]], _bigram_fn, eos_id=EOS, rule=rule, batch_size=4)
  assert out["ppl"] == pytest.approx(ppl, rel=1e-6)


def test_gen_ppl_token_weighted_not_sample_mean():
  rows = [np.array([1, 2, 3], np.int32), np.array([4, 5, 6, 7, 8, 9, 1, 2], np.int32)]
  toks = np.full((2, 8), EOS, np.int32)
  mask = np.zeros((2, 8), bool)
  for n, r in enumerate(rows):
    toks[n, :len(r)] = r
    mask[n, :len(r)] = True
  out = gp.gen_ppl(toks, _bigram_fn, eos_id=EOS, batch_size=2, attention_mask=mask)
  ppl, _, cnt = _ref_ppl(rows, "reference")
  assert cnt == 2 + 7 == out["num_tokens"]
  assert out["ppl"] == pytest.approx(ppl, rel=1e-6)
  per_sample = [_ref_ppl([r], "reference")[0] for r in rows]
  assert abs(np.mean(per_sample) - ppl) > 1e-3 * ppl  # the two definitions differ here


def test_gen_ppl_from_texts_char_level():
  texts = ["abc", "hello world", "zz", "a much longer text that will be truncated at 12"]
  vocab = sorted(set("".join(texts)))
  eos = len(vocab)
  enc = lambda s: [vocab.index(c) for c in s]
  table = np.random.RandomState(3).randn(eos + 1, eos + 1)
  fn = lambda t: jnp.asarray(table, jnp.float32)[t]
  out = gp.gen_ppl_from_texts(texts, fn, enc, eos_id=eos, max_length=12, batch_size=3)
  logp = table - np.log(np.exp(table).sum(-1, keepdims=True))
  rows = [enc(t)[:12] for t in texts]
  nll = [-logp[r[j], r[j + 1]] for r in rows for j in range(len(r) - 1)]
  assert out["num_tokens"] == len(nll)
  assert out["ppl"] == pytest.approx(math.exp(np.mean(nll)), rel=1e-6)
  toks, mask = gp.retokenize(texts, enc, max_length=12, eos_id=eos)
  assert toks.shape == (4, 12) and toks.dtype == np.int32
  np.testing.assert_array_equal(mask.sum(1), [3, 11, 2, 12])
  assert (toks[~mask] == eos).all()


def test_gen_ppl_context_chunks():
  rng = np.random.RandomState(5)
  toks = rng.randint(0, V, size=(3, 12)).astype(np.int32)
  toks[0, 5] = EOS
  out = gp.gen_ppl(toks, _bigram_fn, eos_id=EOS, batch_size=2, context_size=4)
  chunks = [r[c:c + 4] for r in toks for c in range(0, 12, 4)]
  ppl, _, cnt = _ref_ppl(chunks, "reference")
  assert out["num_tokens"] == cnt == 3 * 3 * 3  # rows x chunks x targets per chunk
  assert out["ppl"] == pytest.approx(ppl, rel=1e-6)


def test_gen_ppl_bad_args():
  toks = np.zeros((2, 4), np.int32)
  with pytest.raises(ValueError, match="rule"):
    gp.gen_ppl(toks, _bigram_fn, eos_id=EOS, rule="nope")
  with pytest.raises(ValueError, match="batch_size"):
    gp.gen_ppl(toks, _bigram_fn, eos_id=EOS, batch_size=0)
  with pytest.raises(ValueError, match="log_probs_fn"):
    gp.gen_ppl(toks, lambda t: jnp.zeros((2, 4)), eos_id=EOS)
  with pytest.raises(ValueError, match="no target"):
    gp.gen_ppl(toks, _bigram_fn, eos_id=EOS, attention_mask=np.zeros((2, 4)))
