"""FID (Frechet distance) and Inception Score against closed forms and hand cases."""
import math

import numpy as np
import pytest

pytest.importorskip("scipy")

from remdm_jax.images import fid


def _rot(d, seed):
  q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
  return q


def _psd_sqrt(s):
  w, v = np.linalg.eigh(s)
  return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def test_frechet_commuting_closed_form():
  """S1 = Q diag(a) Q^T, S2 = Q diag(b) Q^T: FID = |dmu|^2 + sum (sqrt a - sqrt b)^2."""
  d = 6
  q = _rot(d, 0)
  a, b = np.arange(1.0, d + 1), np.linspace(0.5, 4.0, d)
  mu1, mu2 = np.zeros(d), np.arange(d) * 0.5
  got = fid.frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T)
  want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  assert got == pytest.approx(want, rel=1e-9)


def test_frechet_general_closed_form():
  """Non-commuting covariances: tr (S1 S2)^{1/2} = tr (S1^{1/2} S2 S1^{1/2})^{1/2} (eigh)."""
  rng = np.random.default_rng(1)
  d = 5
  x, y = rng.standard_normal((d, d)), rng.standard_normal((d, d))
  s1, s2 = x @ x.T + 0.1 * np.eye(d), y @ y.T + 0.1 * np.eye(d)
  mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
  r = _psd_sqrt(s1)
  want = (np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2)
          - 2 * np.trace(_psd_sqrt(r @ s2 @ r)))
  assert fid.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(want, rel=1e-8)
  # 1-D: (m1 - m2)^2 + (s1 - s2)^2 in standard deviations.
  assert fid.frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4.0 + 1.0)


def test_fid_features_symmetric_and_zero():
  rng = np.random.default_rng(2)
  f1 = rng.standard_normal((400, 8))
  f2 = rng.standard_normal((300, 8)) * 1.5 + 0.3
  ab, ba = fid.fid_from_features(f1, f2), fid.fid_from_features(f2, f1)
  assert ab == pytest.approx(ba, rel=1e-9) and ab > 0.5
  assert abs(fid.fid_from_features(f1, f1)) < 1e-6
  mu, sigma = fid.gaussian_stats(f1)
  np.testing.assert_allclose(mu, f1.mean(0))
  np.testing.assert_allclose(sigma, np.cov(f1.T))
  # More samples from known Gaussians -> the closed form (sampling error only).
  n, d = 200_000, 3
  a, b = np.array([1.0, 2.0, 0.5]), np.array([2.0, 1.0, 0.5])
  g1 = rng.standard_normal((n, d)) * np.sqrt(a)
  g2 = rng.standard_normal((n, d)) * np.sqrt(b) + 1.0
  want = d * 1.0 + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  assert fid.fid_from_features(g1, g2) == pytest.approx(want, abs=0.03)


def test_fid_files_and_cli(tmp_path, capsys):
  rng = np.random.default_rng(3)
  f1, f2 = rng.standard_normal((50, 4)), rng.standard_normal((60, 4)) + 1
  mu, sigma = fid.gaussian_stats(f2)
  np.save(tmp_path / "a.npy", f1)
  np.savez(tmp_path / "b.npz", mu=mu, sigma=sigma)
  np.savez(tmp_path / "c.npz", arr_0=f2)
  want = fid.fid_from_features(f1, f2)
  assert fid.frechet_distance(*fid.load_stats(str(tmp_path / "a.npy")),
                              *fid.load_stats(str(tmp_path / "c.npz"))) == pytest.approx(want)
  assert fid.main([str(tmp_path / "a.npy"), str(tmp_path / "b.npz")]) == 0
  assert f"FID {want:.4f}" in capsys.readouterr().out
  assert fid.main([str(tmp_path / "a.npy"), str(tmp_path / "none.npz")]) == 2
  np.savez(tmp_path / "bad.npz", x=np.zeros(3))
  with pytest.raises(ValueError, match="bad.npz"):
    fid.load_stats(str(tmp_path / "bad.npz"))
  with pytest.raises(ValueError, match="shapes do not match"):
    fid.frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))


def test_inception_score_hand_cases():
  c = 10
  # One-hot rows covering every class equally: IS = C exactly; identical rows: IS = 1.
  assert fid.inception_score(np.eye(c), splits=1) == pytest.approx((c, 0.0))
  assert fid.inception_score(np.tile(np.eye(c), (3, 1)), splits=3) == pytest.approx((c, 0.0))
  uniform = np.full((20, c), 1.0 / c)
  assert fid.inception_score(uniform, splits=2) == pytest.approx((1.0, 0.0))
  # Two rows by hand: p(y) = [0.75, 0.25].
  p = np.array([[1.0, 0.0], [0.5, 0.5]])
  kl = [math.log(1 / 0.75), 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)]
  assert fid.inception_score(p, splits=1)[0] == pytest.approx(math.exp(np.mean(kl)))
  # Splits are consecutive parts: [one-hot 0..4] and [all class 0] -> scores 5 and 1.
  q = np.concatenate([np.eye(5), np.tile(np.eye(5)[:1], (5, 1))])
  assert fid.inception_score(q, splits=2) == pytest.approx((3.0, 2.0))
  with pytest.raises(ValueError, match="sum to 1"):
    fid.inception_score(np.ones((4, 3)), splits=1)
  with pytest.raises(ValueError, match="splits"):
    fid.inception_score(np.eye(3), splits=5)
