"""Noise schedules (SPEC §2) and the SUBS parameterization (SPEC §1) against float64 numpy."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from remdm_jax.diffusion import schedules
from remdm_jax.diffusion.subs import NEG_INF, subs_log_probs

T = np.linspace(0.01, 0.99, 37)


@pytest.mark.parametrize("name,kwargs", [("loglinear", {}), ("linear", {}), ("cosine", {}),
                                         ("poly", {"power": 3.0})])
def test_schedule_weight_and_derivative(name, kwargs):
  sch = schedules.get_schedule(name, **kwargs)
  a = sch.alpha(T)
  assert a.dtype == np.float64
  assert np.all(np.diff(a) < 0), "alpha must decrease"
  # derivative against central differences in float64
  h = 1e-6
  fd = (sch.alpha(T + h) - sch.alpha(T - h)) / (2 * h)
  np.testing.assert_allclose(sch.dalpha(T), fd, rtol=1e-6, atol=1e-9)
  np.testing.assert_allclose(sch.loss_weight(T), -sch.dalpha(T) / (1 - a), rtol=1e-10)
  np.testing.assert_allclose(sch.sigma(T), -np.log(a), rtol=1e-12)
  # jax in -> jax out, same values
  aj = sch.alpha(jnp.asarray(T, jnp.float32))
  assert isinstance(aj, jax.Array) and aj.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(aj), a, rtol=1e-6, atol=1e-7)


def test_schedule_closed_forms():
  ll = schedules.get_schedule("loglinear")
  np.testing.assert_allclose(ll.alpha(T), 1 - (1 - 1e-3) * T, rtol=0)
  np.testing.assert_array_equal(ll.loss_weight(T), 1.0 / T)  # exactly 1/t (SPEC §2)
  assert ll.alpha(0.0) == 1.0 and abs(ll.alpha(1.0) - 1e-3) < 1e-15
  cos = schedules.get_schedule("cosine", eps=1e-3)
  np.testing.assert_allclose(cos.alpha(T), 1e-3 + (1 - 1e-3) * np.cos(np.pi * T / 2), rtol=1e-14)
  np.testing.assert_allclose(schedules.get_schedule("poly", power=2).loss_weight(T), 2 / T)


@pytest.mark.parametrize("kwargs,field", [({"name": "nope"}, "name"), ({"eps": 1.5}, "eps"),
                                          ({"name": "poly", "power": 0.0}, "power")])
def test_schedule_rejects_bad_values(kwargs, field):
  with pytest.raises(ValueError, match=field):
    schedules.NoiseSchedule(**kwargs)


def _subs_reference(logits, z, mask_id):
  logits = np.asarray(logits, np.float64)
  out = np.full(logits.shape, -np.inf)
  b, l, v = logits.shape
  for i in range(b):
    for j in range(l):
      if z[i, j] == mask_id:
        row = np.delete(logits[i, j], mask_id)
        lse = np.log(np.sum(np.exp(row - row.max()))) + row.max()
        out[i, j] = logits[i, j] - lse
        out[i, j, mask_id] = -np.inf
      else:
        out[i, j, z[i, j]] = 0.0
  return out


def test_subs_matches_reference_and_is_exact():
  rng = np.random.default_rng(0)
  v, mask_id = 7, 6
  logits = rng.normal(size=(3, 5, v)).astype(np.float32) * 3
  z = rng.integers(0, v, size=(3, 5)).astype(np.int32)
  z[0, :3] = mask_id
  out = np.asarray(subs_log_probs(jnp.asarray(logits), jnp.asarray(z), mask_id))
  assert out.dtype == np.float32 and out.shape == (3, 5, v)
  ref = _subs_reference(logits, z, mask_id)
  finite = np.isfinite(ref)
  np.testing.assert_allclose(out[finite], ref[finite], rtol=1e-5, atol=1e-5)
  assert np.all(out[~finite] == NEG_INF)
  probs = np.exp(out)
  assert np.all(probs[..., mask_id] == 0.0), "mask probability must be exactly 0"
  unmasked = z != mask_id
  np.testing.assert_array_equal(probs[unmasked].argmax(-1), z[unmasked])
  assert np.all(probs[unmasked].max(-1) == 1.0), "carry-over must be exactly one-hot"
  np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-6)


def test_subs_gradients_are_finite():
  v, mask_id = 5, 4
  z = jnp.array([[4, 1, 4]], jnp.int32)
  x = jnp.array([[0, 1, 2]], jnp.int32)

  def loss(logits):
    lp = subs_log_probs(logits, z, mask_id)
    return -jnp.take_along_axis(lp, x[..., None], -1).sum()

  g = jax.grad(loss)(jnp.zeros((1, 3, v)))
  assert bool(jnp.all(jnp.isfinite(g)))
  assert float(jnp.abs(g[0, 1]).sum()) == 0.0  # carried-over position gets no gradient
