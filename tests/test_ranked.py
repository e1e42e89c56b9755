"""`select_top_n` / `ranked_commit` against a numpy reference (stable order, per-row n, infinities)."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from remdm_jax.sampling.ranked import ranked_commit, select_top_n


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
