"""Progress line and metrics files (JSONL always, TensorBoard when installed).

`<workdir>/metrics.jsonl` holds one JSON object per line:
  {"step": 100, "split": "train", "loss": ..., "bits": ..., "lr": ..., "tokens_per_s": ..., ...}
  {"step": 1000, "split": "validation", "loss": ..., "nats": ..., "bits": ..., "ppl_bound": ...}
Only process 0 writes. Each record is one `write` of one full line followed by a flush; on resume
`truncate_after(step)` rewrites the file (temp file + rename) without the records of steps after
the restored checkpoint, so a resumed run's file reads as if the run had never stopped.
"""
from __future__ import annotations

import datetime
import json
import math
import os
from typing import Mapping

from remdm_jax.fileio import atomic_open

METRICS_FILE = "metrics.jsonl"


def _clean(v):
  try:
    v = float(v)
  except (TypeError, ValueError):
    return v
  return v if math.isfinite(v) else str(v)


def format_eta(seconds: float) -> str:
  if not math.isfinite(seconds) or seconds < 0:
    return "?"
  return str(datetime.timedelta(seconds=int(round(seconds))))


def format_progress(step: int, num_steps: int, metrics: Mapping[str, float], *,
                    tokens_per_s: float | None = None, eta_s: float | None = None) -> str:
  """`step 100/1000 | loss 3.2100 | bits/tok 4.6310 | lr 3.00e-04 | 12.3k tok/s | ETA 0:02:13`."""
  parts = [f"step {step}/{num_steps}"]
  if "loss" in metrics:
    parts.append(f"loss {float(metrics['loss']):.4f}")
  if "bits" in metrics:
    parts.append(f"bits/tok {float(metrics['bits']):.4f}")
  if "lr" in metrics:
    parts.append(f"lr {float(metrics['lr']):.2e}")
  if tokens_per_s is not None and math.isfinite(tokens_per_s):
    tps = float(tokens_per_s)
    parts.append(f"{tps / 1e3:.1f}k tok/s" if tps >= 1e3 else f"{tps:.0f} tok/s")
  if eta_s is not None:
    parts.append(f"ETA {format_eta(eta_s)}")
  return " | ".join(parts)


class MetricsWriter:
  """Appends metric records to `<workdir>/metrics.jsonl` (+ TensorBoard if importable).

  Args:
    workdir: output folder (created).
    enabled: False on processes other than 0 (then every method is a no-op).
    tensorboard: also write TensorBoard event files under `<workdir>/tb` when
      `torch.utils.tensorboard` or `tensorboardX` is importable (optional; silently skipped).
  """

  def __init__(self, workdir: str, *, enabled: bool = True, tensorboard: bool = True):
    self.enabled = enabled
    self.path = os.path.join(workdir, METRICS_FILE)
    self._tb = None
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    if tensorboard:
      self._tb = _make_tb_writer(os.path.join(workdir, "tb"))

  def write(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    rec = {"step": int(step), "split": split, **{k: _clean(v) for k, v in metrics.items()}}
    with open(self.path, "a") as f:
      f.write(json.dumps(rec, sort_keys=False) + "\n")
      f.flush()
    if self._tb is not None:
      for k, v in metrics.items():
        try:
          self._tb.add_scalar(f"{split}/{k}", float(v), int(step))
        except (TypeError, ValueError):
          pass

  def truncate_after(self, step: int) -> None:
    """Drops records with record["step"] > step (atomic rewrite)."""
    if not self.enabled or not os.path.isfile(self.path):
      return
    with open(self.path) as f:
      lines = [ln for ln in f if ln.strip()]
    keep = []
    for ln in lines:
      try:
        if int(json.loads(ln).get("step", 0)) <= step:
          keep.append(ln)
      except (ValueError, AttributeError):
        continue  # a torn last line of a killed run
    with atomic_open(self.path) as f:
      f.writelines(keep)

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def read_metrics(workdir: str, split: str | None = None) -> list[dict]:
  """The records of `<workdir>/metrics.jsonl` (optionally of one split)."""
  path = os.path.join(workdir, METRICS_FILE)
  out = []
  with open(path) as f:
    for ln in f:
      if ln.strip():
        rec = json.loads(ln)
        if split is None or rec.get("split") == split:
          out.append(rec)
  return out


def _make_tb_writer(logdir: str):
  try:
    from tensorboardX import SummaryWriter  # type: ignore
    return SummaryWriter(logdir)
  except Exception:
    pass
  try:
    import importlib.util
    if importlib.util.find_spec("tensorboard") is None:
      return None
    from torch.utils.tensorboard import SummaryWriter  # type: ignore
    return SummaryWriter(logdir)
  except Exception:
    return None
