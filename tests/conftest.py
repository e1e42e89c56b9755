"""Test-wide setup: 8 fake CPU devices (set before JAX initialises its backend), offline hubs."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)


import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _join_abandoned_workers():
  """A test that interrupts `interrupt.call_interruptibly` in-process leaves its worker running;
  wait for it before the interpreter shuts down (a daemon thread inside XLA at shutdown can end
  the process with "Fatal Python error: PyGILState_Release")."""
  yield
  from remdm_jax import interrupt
  interrupt.join_abandoned(120.0)
