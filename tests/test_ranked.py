"""`select_top_n` / `ranked_commit` against a numpy reference (stable order, per-row n, infinities)."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from remdm_jax.sampling.ranked import ranked_commit, select_below_nth, select_top_n


def np_top_n(scores, n, largest):
  out = np.zeros(scores.shape, bool)
  for b in range(scores.shape[0]):
    key = -scores[b] if largest else scores[b]
    order = np.argsort(key, kind="stable")
    k = int(np.clip(n[b], 0, scores.shape[1]))
    out[b, order[:k]] = True
  return out


@pytest.mark.parametrize("largest", [True, False])
def test_matches_numpy_with_ties_and_infinities(largest):
  rng = np.random.default_rng(0)
  scores = rng.integers(0, 4, size=(6, 11)).astype(np.float32)  # many ties
  scores[0, :3] = -np.inf
  scores[1, 5:] = np.inf
  n = np.array([0, 3, 11, 5, 14, -2])
  got = jax.jit(select_top_n, static_argnames="largest")(jnp.asarray(scores), jnp.asarray(n),
                                                         largest=largest)
  chex.assert_shape(got, scores.shape)
  np.testing.assert_array_equal(np.asarray(got), np_top_n(scores, n, largest))
  np.testing.assert_array_equal(np.asarray(got).sum(-1), np.clip(n, 0, 11))


def test_commit_writes_only_selected():
  tokens = jnp.full((2, 5), 9, jnp.int32)
  cand = jnp.arange(10, dtype=jnp.int32).reshape(2, 5)
  scores = jnp.array([[0.1, 0.9, 0.5, -jnp.inf, 0.7], [1.0, 2.0, 3.0, 4.0, 5.0]])
  new, sel = ranked_commit(tokens, cand, scores, jnp.array([2, 1]))
  np.testing.assert_array_equal(np.asarray(new), [[9, 1, 9, 9, 4], [9, 9, 9, 9, 9]])
  np.testing.assert_array_equal(np.asarray(sel).sum(-1), [2, 1])
  assert new.dtype == jnp.int32


def np_mask_by_random_topk(confidence, mask_len):
  """google-research/maskgit libml/parallel_decode.py `mask_by_random_topk` after its Gumbel
  term: cut_off = sort(confidence)[mask_len]; masking = confidence < cut_off."""
  cut = np.take_along_axis(np.sort(confidence, -1), mask_len[:, None], -1)
  return confidence < cut


def test_select_below_nth_is_the_maskgit_cut_off_with_ties():
  """Issue 19 item 4: Google re-masks strictly below the cut-off, so positions tied with it are
  committed (fewer than mask_len re-masked); select_top_n always picks exactly n."""
  rng = np.random.default_rng(1)
  scores = rng.integers(0, 3, size=(6, 9)).astype(np.float32)  # many ties
  scores[0] = 0.0                                                # a whole row tied (conf 1.0)
  scores[1, 4:] = np.inf                                         # known positions
  n = np.array([3, 2, 0, 5, 8, 1])
  got = np.asarray(jax.jit(select_below_nth)(jnp.asarray(scores), jnp.asarray(n)))
  np.testing.assert_array_equal(got, np_mask_by_random_topk(scores, n))
  assert got[0].sum() == 0 and got.sum(-1).tolist() != n.tolist()
  assert np.all(got.sum(-1) <= n)
  distinct = rng.permutation(9).astype(np.float32)[None]  # no ties: exactly n, the n lowest
  np.testing.assert_array_equal(np.asarray(select_below_nth(jnp.asarray(distinct), 4)),
                                np_top_n(distinct, [4], largest=False))
