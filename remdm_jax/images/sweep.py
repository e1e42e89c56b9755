"""The digits sweep (issue 11 item 4): T x method x temperature on the shipped class-conditional
digits MDLM, judged by the shipped digits classifier.

  python -m remdm_jax.images.sweep --out=runs/digits_sweep

Grid: T in {8, 16, 32} x {MaskGIT, MDLM, ReMDM-rescale, ReMDM-cap, ReMDM-loop} x temperature in
{0.6, 0.8, 1.0}; `--samples` class-conditional samples per cell (labels 0..9 in equal numbers, the
same seed for every cell). Settings: MaskGIT uniform mask schedule (the paper's ImageNet setting,
SPEC_DOMAINS §I.2), choice temperature 4.5; ReMDM-rescale and -cap eta = 0.05 (the paper's image
eta); ReMDM-loop eta = 0.02, alpha_on = 0.9, with its phase boundaries put on grid points
(t_on = t_{T/2}, t_off = t_{7T/8}: the text defaults 0.55 / 0.05 leave no phase-3 step at T = 8).
MDLM / ReMDM make T + 1 denoiser calls (the final noise-removal step), MaskGIT T.

Writes (atomically) into --out: `digits_sweep.csv` (method, T, temperature, eta, nfe, samples,
digits_fid, digits_is, accuracy, seconds), `digits_sweep.png` (FID / IS / accuracy against T),
`grid_<method>.png` (10 classes x 10 samples at T = 32, temperature 0.8) and reference rows
(`real` = the 360 held-out real digits, `noise` = uniform random grey levels, same sample count).
Progress with an ETA on stderr. The default --out is ./runs/digits_sweep-<timestamp> (under
~/remdm-jax/ inside the source checkout; $REMDM_OUTPUT_DIR replaces the folder), never the
tracked results under benchmarks/results/; a folder that already holds sweep results needs
--overwrite (regenerating the tracked figures: `--out=benchmarks/results/digits_sweep
--overwrite`). Bad input (flags, a seed outside [0, 2^32), an --out that is a file or cannot be
written) is one `error:` line and exit 2 before any work; Ctrl-C stops within a fraction of a
second keeping the CSV of the finished cells (exit 130).
"""
from __future__ import annotations

import csv
import io
import json
import os
import sys
import time

if __name__ == "__main__":  # Ctrl-C / SIGTERM while the imports load: one line, no traceback
  from remdm_jax import interrupt as _interrupt
  _interrupt.install_handlers("images.sweep")

import jax
import numpy as np

from remdm_jax.checks import check_seed
from remdm_jax.cliargs import ArgumentParser
from remdm_jax.fileio import atomic_open
from remdm_jax.images import digits as dg
from remdm_jax.interrupt import EXIT_INTERRUPTED, call_interruptibly, hard_exit, note_saved
from remdm_jax.images.decode import ImageSamplerConfig
from remdm_jax.sampling import uniform_grid

METHODS = ("maskgit", "mdlm", "remdm_rescale", "remdm_cap", "remdm_loop")
LABELS = {"maskgit": "MaskGIT", "mdlm": "MDLM", "remdm_rescale": "ReMDM-rescale",
          "remdm_cap": "ReMDM-cap", "remdm_loop": "ReMDM-loop"}
FIELDS = ("method", "T", "temperature", "eta", "nfe", "samples", "digits_fid", "digits_is",
          "accuracy", "seconds", "includes_compile")


def method_config(method: str, T: int, temperature: float) -> ImageSamplerConfig:
  """The sweep's `ImageSamplerConfig` of one cell (see the module docstring)."""
  if method == "maskgit":
    return ImageSamplerConfig("maskgit", num_steps=T, temperature=temperature,
                              mask_schedule="uniform", choice_temperature=4.5)
  if method in ("remdm_rescale", "remdm_cap"):
    return ImageSamplerConfig(method, num_steps=T, temperature=temperature, eta=0.05)
  if method == "remdm_loop":
    if T < 3:
      raise ValueError(f"T={T}: ReMDM-loop needs T >= 3 (three phases on the grid)")
    grid, _ = uniform_grid(T)
    return ImageSamplerConfig("remdm_loop", num_steps=T, temperature=temperature, eta=0.02,
                              extra={"t_on": float(grid[T // 2]),
                                     "t_off": float(grid[T - max(1, T // 8)]), "alpha_on": 0.9})
  if method == "mdlm":
    return ImageSamplerConfig("mdlm", num_steps=T, temperature=temperature)
  raise ValueError(f"method={method!r} must be one of {METHODS}")


OUTPUT_FILES = ("digits_sweep.csv", "digits_sweep.png", "digits_sweep.json")


def default_out(cwd=None) -> str:
  """<generation.output_root(cwd)>/runs/digits_sweep-<YYYYmmdd-HHMMSS>[-k]: a new folder, never
  inside the source checkout (so never the tracked benchmarks/results/)."""
  from remdm_jax.generation import output_root
  stem = os.path.join(output_root(cwd), "runs", f"digits_sweep-{time.strftime('%Y%m%d-%H%M%S')}")
  path, k = stem, 1
  while os.path.exists(path):
    path, k = f"{stem}-{k}", k + 1
  return path


def check_out_dir(path: str, overwrite: bool) -> str:
  """The absolute --out folder, checked before any work: ValueError (one line) if it is a file,
  cannot be created or written, or already holds sweep results without `overwrite`."""
  from remdm_jax.fileio import check_writable_folder
  path = os.path.abspath(os.path.expanduser(path))
  if os.path.lexists(path) and not os.path.isdir(path):
    raise ValueError(f"--out={path} exists and is not a folder")
  done = [n for n in OUTPUT_FILES if os.path.exists(os.path.join(path, n))]
  if done and not overwrite:
    raise ValueError(f"--out={path} already holds sweep results ({', '.join(done)}); pass "
                     "--overwrite to replace them, or choose a new folder")
  check_writable_folder(path, "--out", path)
  return path


def _parse_list(text, cast, name):
  try:
    vals = [cast(v) for v in text.split(",") if v.strip()]
  except ValueError:
    raise ValueError(f"--{name}={text!r} must be a comma-separated list") from None
  if not vals:
    raise ValueError(f"--{name} is empty")
  return vals


def plot(rows, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  temps = sorted({r["temperature"] for r in rows if r["method"] in METHODS})
  metrics = (("digits_fid", "digits-FID (lower is better)"), ("digits_is", "digits-IS"),
             ("accuracy", "class accuracy"))
  fig, axes = plt.subplots(len(metrics), len(temps), figsize=(4 * len(temps), 3.2 * len(metrics)),
                           squeeze=False)
  for j, tau in enumerate(temps):
    for i, (key, title) in enumerate(metrics):
      ax = axes[i][j]
      for m in METHODS:
        pts = sorted((r["T"], r[key]) for r in rows if r["method"] == m and r["temperature"] == tau)
        if pts:
          ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=LABELS[m])
      real = [r[key] for r in rows if r["method"] == "real"]
      if real:
        ax.axhline(real[0], color="grey", ls="--", lw=1, label="real (held-out)")
      ax.set_xscale("log", base=2)
      ax.set_xlabel("T")
      ax.set_title(f"{title}, temperature {tau}", fontsize=9)
      if i == 0 and j == 0:
        ax.legend(fontsize=7)
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=110)
  plt.close(fig)
  with atomic_open(path, "wb") as f:
    f.write(buf.getvalue())


def write_csv(rows, path):
  with atomic_open(path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=FIELDS)
    w.writeheader()
    for r in rows:
      w.writerow({k: (f"{r[k]:.4f}" if isinstance(r[k], float) else r[k]) for k in FIELDS})


def main(argv=None) -> int:
  """The CLI under `interrupt.run_main`: Ctrl-C / SIGTERM anywhere is one line saying what is
  kept, exit 130 / 143."""
  from remdm_jax.interrupt import run_main
  return run_main(_main, argv, prog="images.sweep")


def _main(argv=None) -> int:
  ap = ArgumentParser(prog="python -m remdm_jax.images.sweep",
                      description="Digits sweep: T x method x temperature.")
  ap.add_argument("--out", default=None,
                  help="output folder (default: a new ./runs/digits_sweep-<timestamp>)")
  ap.add_argument("--overwrite", action="store_true",
                  help="write into a folder that already holds sweep results")
  ap.add_argument("--steps", default="8,16,32", help="comma-separated T values")
  ap.add_argument("--methods", default=",".join(METHODS))
  ap.add_argument("--temperatures", default="0.6,0.8,1.0")
  ap.add_argument("--samples", type=int, default=1000, help="samples per cell (multiple of 10)")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--model", default=None)
  args = ap.parse_args(argv)
  try:
    Ts = _parse_list(args.steps, int, "steps")
    methods = _parse_list(args.methods, str, "methods")
    temps = _parse_list(args.temperatures, float, "temperatures")
    for m in methods:
      if m not in METHODS:
        raise ValueError(f"--methods entry {m!r} must be one of {METHODS}")
    if args.samples < 10 or args.samples % 10:
      raise ValueError(f"--samples={args.samples} must be a positive multiple of 10")
    check_seed(args.seed, "--seed")
    cells = [(m, T, tau) for T in Ts for m in methods for tau in temps]
    cfgs = [method_config(m, T, tau) for m, T, tau in cells]   # validates every cell first
    args.out = check_out_dir(args.out or default_out(), args.overwrite)
    f, params = dg.load_model(args.model)
    judge = dg.DigitsJudge()
  except (ValueError, FileNotFoundError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  try:
    os.makedirs(args.out, exist_ok=True)
    n = args.samples
    labels = np.repeat(np.arange(dg.NUM_CLASSES), n // dg.NUM_CLASSES).astype(np.int32)
    rows = []
    xte, yte = dg.load_digits_split("test")
    rows.append(dict(method="real", T=0, temperature=0.0, eta=0.0, nfe=0, samples=len(yte),
                     digits_fid=judge.fid(xte), digits_is=judge.inception_score(xte),
                     accuracy=judge.accuracy(xte, yte), seconds=0.0, includes_compile=0))
    noise = np.random.RandomState(args.seed).randint(0, dg.LEVELS, size=(n, dg.NUM_PIXELS))
    rows.append(dict(method="noise", T=0, temperature=0.0, eta=0.0, nfe=0, samples=n,
                     digits_fid=judge.fid(noise), digits_is=judge.inception_score(noise),
                     accuracy=judge.accuracy(noise, labels), seconds=0.0, includes_compile=0))
    t_start = time.time()
    samplers = {}
    done_cost, total_cost = 0.0, float(sum(T for _, T, _ in cells))
    for k, ((m, T, tau), cfg) in enumerate(zip(cells, cfgs)):
      t0 = time.time()
      fresh = (m, T) not in samplers
      if fresh:   # one compiled program per (method, T); temperature is traced
        samplers[(m, T)] = dg.make_digits_sampler(cfg, f)
      sampler = samplers[(m, T)]
      try:
        pix = call_interruptibly(lambda: np.asarray(sampler(
            params, jax.random.PRNGKey(args.seed), labels=labels, temperature=tau)))
      except KeyboardInterrupt:
        print(f"\ninterrupted in cell {k + 1}/{len(cells)}; the {k} finished cells are in "
              f"{os.path.join(args.out, 'digits_sweep.csv')}", file=sys.stderr)
        hard_exit(EXIT_INTERRUPTED)
      secs = time.time() - t0
      ev = judge.evaluate(pix, labels)
      eta = cfg.sampler_config().eta if m != "maskgit" else 0.0
      rows.append(dict(method=m, T=T, temperature=tau, eta=eta, nfe=int(sampler.nfe), samples=n,
                       digits_fid=ev["fid"], digits_is=ev["is"], accuracy=ev["accuracy"],
                       seconds=secs, includes_compile=int(fresh)))
      if T == max(Ts) and abs(tau - 0.8) < 1e-9:
        per = n // dg.NUM_CLASSES
        pick = np.concatenate([np.arange(c * per, c * per + min(10, per)) for c in range(10)])
        dg.save_grid_png(os.path.join(args.out, f"grid_{m}.png"), pix[pick], ncol=min(10, per))
      done_cost += T
      el = time.time() - t_start
      eta_s = el / done_cost * (total_cost - done_cost)
      print(f"[{k + 1}/{len(cells)}] {LABELS[m]:14s} T={T:3d} temp={tau:.1f}: FID {ev['fid']:.3f} "
            f"IS {ev['is']:.3f} acc {ev['accuracy']:.3f} ({secs:.1f} s; ETA {eta_s:.0f} s)",
            file=sys.stderr, flush=True)
      write_csv(rows, os.path.join(args.out, "digits_sweep.csv"))   # partial results survive
      note_saved(f"the {k + 1} finished cells are in {os.path.join(args.out, 'digits_sweep.csv')}")
    plot(rows, os.path.join(args.out, "digits_sweep.png"))
    with atomic_open(os.path.join(args.out, "digits_sweep.json"), "w") as fh:
      json.dump({"samples": n, "seed": args.seed, "seconds": round(time.time() - t_start, 1),
                 "device": str(jax.devices()[0].platform)}, fh, indent=2)
    print(json.dumps({"out": args.out, "cells": len(cells),
                      "seconds": round(time.time() - t_start, 1)}))
  except OSError as e:  # an output that became unwritable mid-run: one line, exit 2
    text = " ".join(str(e).split()) or type(e).__name__
    print(f"error: {text} (the results written before it are kept)", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
