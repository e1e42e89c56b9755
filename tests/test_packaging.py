"""Packaging: a built wheel holds every shipped asset file, and the build prints none of
setuptools' "Package 'remdm_jax.assets.models...' is absent from the `packages` configuration"
warnings (32 of them before: include_package_data picked the asset folders up as would-be
packages; the assets are package data of `remdm_jax` through `options.package_data`)."""
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_wheel_has_every_asset_and_no_package_warnings(tmp_path):
  pytest.importorskip("setuptools")
  src = tmp_path / "src"
  src.mkdir()
  for name in ("setup.cfg", "pyproject.toml", "README.md"):
    shutil.copy(os.path.join(ROOT, name), src / name)
  shutil.copytree(os.path.join(ROOT, "remdm_jax"), src / "remdm_jax",
                  ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
  r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                      "-v", "-w", str(tmp_path / "whl"), str(src)],
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
  log = r.stdout + r.stderr
  assert "is absent from the `packages` configuration" not in log, log[-3000:]
  (wheel,) = list((tmp_path / "whl").glob("*.whl"))
  names = set(zipfile.ZipFile(wheel).namelist())
  assets = os.path.join(ROOT, "remdm_jax", "assets")
  want = {os.path.relpath(os.path.join(d, f), ROOT).replace(os.sep, "/")
          for d, _, fs in os.walk(assets) for f in fs}
  assert len(want) > 100
  assert not want - names, sorted(want - names)[:10]
