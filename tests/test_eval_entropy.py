"""Unigram entropy (SPEC §7) against a direct float64 reference."""
import collections
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from remdm_jax.text import entropy as ent


def _reference(row):
  c = collections.Counter(int(v) for v in row)
  n = len(row)
  return -sum((k / n) * math.log(k / n) for k in c.values())


def _samples():
  rng = np.random.RandomState(0)
  x = rng.randint(0, 7, size=(9, 13)).astype(np.int32)
  x[0] = 3  # constant row: H = 0
  x[1] = np.arange(13)  # all distinct: H = ln 13
  x[2, :] = 50256  # large ids
  x[3] = np.array([50257] * 6 + [1] * 7)
  return x


def test_numpy_matches_reference():
  x = _samples()
  h = ent.sample_entropy(x)
  assert h.dtype == np.float64 and h.shape == (9,)
  np.testing.assert_allclose(h, [_reference(r) for r in x], rtol=0, atol=1e-12)
  assert h[0] == 0.0
  np.testing.assert_allclose(h[1], math.log(13), atol=1e-12)
  assert ent.mean_entropy(x) == pytest.approx(np.mean([_reference(r) for r in x]), abs=1e-12)


def test_single_token_rows_and_int64():
  x = np.array([[5], [7]], np.int64)
  np.testing.assert_array_equal(ent.sample_entropy(x), [0.0, 0.0])


class JnpTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_jnp_matches_numpy(self):
    x = _samples()
    with jax.enable_x64(True):
      h = self.variant(ent.sample_entropy_jnp)(jnp.asarray(x))
      chex.assert_shape(h, (9,))
      assert h.dtype == jnp.float64
      np.testing.assert_allclose(np.asarray(h), ent.sample_entropy(x), atol=1e-12)
    h32 = self.variant(ent.sample_entropy_jnp)(jnp.asarray(x))
    assert h32.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(h32), ent.sample_entropy(x), atol=1e-5)


@pytest.mark.parametrize("bad", [np.zeros((3,), np.int32), np.zeros((2, 0), np.int32),
                                 np.zeros((2, 3), np.float32)])
def test_bad_input(bad):
  with pytest.raises(ValueError, match="samples"):
    ent.sample_entropy(bad)


def test_empty_mean_raises():
  with pytest.raises(ValueError, match="N = 0"):
    ent.mean_entropy(np.zeros((0, 4), np.int32))
