"""MaskGIT mask schedules (SPEC_DOMAINS §I.1, §I.3 item 1) against float64 numpy formulas."""
import jax.numpy as jnp
import numpy as np
import pytest

from remdm_jax.images import schedules as ms

R = np.linspace(0.0, 1.0, 41)


def _np_ref(r, n0, method):
  with np.errstate(divide="ignore", invalid="ignore"):
    if method == "uniform":
      v = 1 - r
    elif method == "cosine":
      v = np.cos(np.pi * r / 2)
    elif method == "pow2.5":
      v = 1 - r**2.5
    elif method == "log":
      v = -np.log2(r) / np.log2(n0)
    elif method == "exp":
      v = 1 - 2.0**(-np.log2(n0) * (1 - r))
    elif method == "cubic_alpha-12_a-2_b-0.25":
      v = 12 * (1 - r)**2 * r**0.25
  return np.clip(v, 1e-6, 1.0)


@pytest.mark.parametrize("method", ["uniform", "cosine", "pow2.5", "log", "exp",
                                    "cubic_alpha-12_a-2_b-0.25"])
def test_schedule_matches_numpy_incl_clip(method):
  want = _np_ref(R, 256, method)
  got = ms.mask_ratio(R, 256, method)
  np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)
  got32 = np.asarray(ms.mask_ratio(jnp.asarray(R, jnp.float32), 256, method))
  assert got32.dtype == np.float32
  np.testing.assert_allclose(got32, want, rtol=2e-6, atol=1e-7)
  assert got.min() >= 1e-6 and got.max() <= 1.0


def test_clip_values_and_alpha_endpoints():
  # the clip is active: 1 - r at r = 1 is 0 -> 1e-6; log at r = 0 is +inf -> 1; cubic > 1 -> 1
  assert ms.mask_ratio(1.0, 256, "uniform") == pytest.approx(1e-6, rel=0, abs=0)
  assert ms.mask_ratio(0.0, 256, "log") == 1.0
  assert ms.mask_ratio(0.5, 256, "cubic_alpha-12_a-2_b-0.25") == 1.0
  for method in ("uniform", "cosine"):
    assert float(ms.alpha(1.0, 256, method)) == pytest.approx(1e-6, abs=1e-12)   # t = 1
    assert float(ms.alpha(0.0, 256, method)) == 1.0                               # t = 0
  assert float(ms.alpha(np.float32(1.0), 256, "cosine")) == np.float32(1e-6)


@pytest.mark.parametrize("bad", ["linear", "pow", "powx", "cubic_alpha-1_a-2", "", 3])
def test_bad_method_raises(bad):
  with pytest.raises(ValueError, match="method"):
    ms.parse_method(bad)
