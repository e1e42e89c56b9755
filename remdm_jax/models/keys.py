"""One home for the "checkpoint does not match the model" error of every weight importer (the
official MDLM `.ckpt` / safetensors converter, the MaskGIT / VQGAN Flax importer, the LLaDA
safetensors loader): every missing, unexpected and mis-shaped key is named in one ValueError."""
from __future__ import annotations

from typing import Sequence


def check_keys(subject: str, missing: Sequence[str] = (), unexpected: Sequence[str] = (),
               misshaped: Sequence[str] = ()) -> None:
  """Raises ValueError("{subject}: missing keys [...]; unexpected keys [...]; mis-shaped keys
  [...]") naming every offending key (only the non-empty groups), or returns None.

  Args:
    subject: what did not match, e.g. "checkpoint 'x' does not match the LLaDA config".
    missing / unexpected: key names; misshaped: "key: expected (..), got (..)" strings.
  """
  parts = []
  if missing:
    parts.append(f"missing keys {list(missing)}")
  if unexpected:
    parts.append(f"unexpected keys {list(unexpected)}")
  if misshaped:
    parts.append(f"mis-shaped keys {list(misshaped)}")
  if parts:
    raise ValueError(f"{subject}: " + "; ".join(parts))
