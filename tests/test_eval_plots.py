"""The scaling figure is written atomically as a valid PNG."""
import os

import pytest

pytest.importorskip("matplotlib")
from remdm_jax.text.plots import plot_scaling  # noqa: E402


def _rows():
  rows = []
  for s, base in (("mdlm", 0.02), ("remdm-loop", 0.2)):
    for i, t in enumerate((128, 256, 512, 1024)):
      rows.append(dict(strategy=s, T=t, nfe=t, mauve=base * (i + 1), gen_ppl=60.0 - 5 * i,
                       entropy=5.5 - 0.05 * i))
  rows.append(dict(strategy="dfm", T=128, nfe=100, mauve=None, gen_ppl=40.0, entropy=5.3))
  return rows


def test_writes_png(tmp_path):
  path = tmp_path / "sub" / "scaling.png"
  out = plot_scaling(_rows(), str(path), title="test")
  assert out == str(path)
  data = path.read_bytes()
  assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
  assert data[12:16] == b"IHDR"
  assert [p.name for p in path.parent.iterdir()] == ["scaling.png"]  # no temp file left


def test_bad_rows(tmp_path):
  with pytest.raises(ValueError, match="empty"):
    plot_scaling([], str(tmp_path / "a.png"))
  with pytest.raises(ValueError, match="gen_ppl"):
    plot_scaling([dict(strategy="x", T=8, mauve=0.1, entropy=5.0)], str(tmp_path / "a.png"))
  assert not os.listdir(tmp_path)
