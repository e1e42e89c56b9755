"""The inference-time-scaling figure (paper Figure 1 style): MAUVE, gen PPL and entropy vs T.

matplotlib is optional (extra `eval`); it is imported only when plotting, with the Agg backend.
"""
from __future__ import annotations

from typing import Sequence

from remdm_jax.fileio import atomic_open

REQUIRED = ("strategy", "T", "mauve", "gen_ppl", "entropy")


def plot_scaling(rows: Sequence[dict], path: str, *, title: str | None = None) -> str:
  """Write a 3-panel PNG: MAUVE (up), gen PPL (down) and entropy vs T, one line per strategy,
  log2 x-axis. rows: dicts with keys strategy, T, nfe, mauve, gen_ppl, entropy (nfe optional;
  a None metric is skipped). Written to a temp file in the same folder, then renamed.
  Returns path.
  """
  rows = list(rows)
  if not rows:
    raise ValueError("rows is empty")
  for i, r in enumerate(rows):
    missing = [k for k in REQUIRED if k not in r]
    if missing:
      raise ValueError(f"rows[{i}] lacks keys {missing}")
    if not r["T"] or r["T"] <= 0:
      raise ValueError(f"rows[{i}]['T'] must be positive; got {r['T']!r}")
  import matplotlib

  matplotlib.use("Agg", force=False)
  from matplotlib.figure import Figure  # no pyplot: no global figure state

  fig = Figure(figsize=(13, 3.8))
  axes = fig.subplots(1, 3)
  panels = (("mauve", "MAUVE (↑)"), ("gen_ppl", "Gen PPL (↓)"), ("entropy", "Entropy (nats)"))
  strategies = list(dict.fromkeys(r["strategy"] for r in rows))
  for ax, (key, label) in zip(axes, panels):
    for s in strategies:
      pts = sorted((r["T"], r[key]) for r in rows if r["strategy"] == s and r.get(key) is not None)
      if pts:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=str(s))
    ax.set_xscale("log", base=2)
    ax.set_xlabel("T (sampling steps)")
    ax.set_ylabel(label)
    ax.grid(True, alpha=0.3)
  axes[0].legend(fontsize=8)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  with atomic_open(path, "wb") as f:
    fig.savefig(f, format="png", dpi=120)
  return path
