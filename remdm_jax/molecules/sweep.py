"""The QM9 guidance sweep (SPEC_DOMAINS §M.6): `python -m remdm_jax.molecules.sweep`.

  python -m remdm_jax.molecules.sweep --out_dir=benchmarks/results/qm9_sweep          # full grid
  python -m remdm_jax.molecules.sweep --quick --out_dir=/tmp/qm9_quick               # reduced

Grid: gamma in {1..5} x T in {32, 64, 128} x method in {MDLM, ReMDM, UDLM, AR} x guidance in
{D-CFG, D-CBG}, `--num_samples` (1024) samples per point, seed 1, target label 1. Each point is
scored with `metrics.evaluate_samples` (uncanonicalised novelty by default); points with fewer
than `--min_novel` (50) novel samples are dropped from the plot (kept in the CSV, `kept=False`).
Writes `<out_dir>/qm9_sweep.csv` (after every point, atomically) and `<out_dir>/qm9_pareto.png`:
novel-sample mean property vs number of novel samples, one panel per guidance, one line per
method. Progress and ETA go to stderr. An existing CSV in out_dir is resumed: points already
there (status ok, same seed, --num_samples and `settings` - model, ReMDM strategy and eta, exact /
first-order D-CBG, FUDGE top-k) are not rerun, and earlier points outside the requested grid stay
in the CSV and, if they have this run's --num_samples, in the plot (`--fresh` starts over; a CSV
that is not one this sweep wrote - binary, other columns - is one `error:` line, before any
work). `--quick`: gamma in {1, 2, 3}, T = 32, MDLM / ReMDM, D-CFG and first-order D-CBG
(exact D-CBG is hours per point on a CPU), 256 samples, and --min_novel scaled to the sample count
(50 per 1024 samples: 12), so that its plot is not empty: a few minutes on a CPU.
Progress: the denoiser step within each batch of a point, and an ETA from the measured seconds per
step of each kind of point (method, guidance, exact / first-order D-CBG), scaled by T. Ctrl-C
stops within a fraction of a second: every finished point is already in the CSV (exit 130; the
same command resumes).

D-CFG: `guidance.cfg_denoise_fn` (gamma = 1 is the conditional model alone, one call per step);
D-CBG: `guidance.CBGGuidance` with the shipped classifier, exact (L * V = 1120 classifier rows per
sample per step) unless `--approx` (first order: 1 forward + 1 backward). No final noise-removal
step (SPEC_DOMAINS §M.4, `sample_molecules(noise_removal=False)`).
UDLM (`--udlm_model`, default the shipped `qm9_udlm`): its own ancestral sampler
(`uniform.make_udlm_sampler`, SPEC_DOMAINS §M.7) at each T; D-CFG mixes the two log posteriors,
D-CBG adds gamma * C of the same classifier (trained on masked x_t: a mismatch for uniform noise,
see `molecules.sample`). AR (`--ar_model`, default the shipped `qm9_ar`): left-to-right sampling
(`sampling.ar`), D-CFG = CFG on the next-token log-probs, D-CBG = FUDGE with the same classifier
(all V candidates, exact: 31 * 35 classifier rows per sample, ~6 s per sample on 2 CPU cores, so
a GPU job; `--approx` does not apply). T does not apply to AR: it runs once per
(guidance, gamma) and its row is labelled T = L = 32.
Points this tree cannot run (a missing default UDLM / AR model) are listed as skipped with the
reason (CSV rows with `status`).
All calls into the guidance API are in `remdm_jax.molecules.sample` (`guided_denoise` and the
UDLM / AR sampler set-ups behind `sample_molecules`); `run_point` is the only function that knows
the methods.
"""
from __future__ import annotations

import csv
import io
import itertools
import math
import os
import sys
import time
from typing import Optional


from remdm_jax.checks import check_seed
from remdm_jax.cliargs import ArgumentParser
from remdm_jax.fileio import atomic_open, check_output_path
from remdm_jax.interrupt import EXIT_INTERRUPTED, Interrupted, hard_exit, note_saved
from remdm_jax.sampling import SamplerConfig

METHODS = ("MDLM", "ReMDM", "UDLM", "AR")
GUIDANCES = ("D-CFG", "D-CBG")
FIELDS = ("method", "guidance", "gamma", "T", "settings", "seed", "status", "kept", "num_samples",
          "num_valid",
          "num_unique", "num_novel", "valid_frac", "unique_frac", "novel_frac",
          "property", "valid_mean", "valid_median", "novel_mean", "novel_q25", "novel_median",
          "novel_q75", "nfe", "seconds")


class Unavailable(Exception):
  """A grid point this tree cannot run (missing model / guidance kernels)."""


MODEL_KEYS = {"MDLM": "model", "ReMDM": "model", "UDLM": "udlm_model", "AR": "ar_model"}


def unavailable_reason(ctx: dict, method: str, guidance: str, gamma: float) -> Optional[str]:
  """Why this tree cannot run a grid point (its model is not loaded: `ctx[<key>]` holds the reason
  string instead of a model), or None if it can."""
  del guidance, gamma
  m = ctx.get(MODEL_KEYS[method])
  return m if isinstance(m, str) else (f"no {method} model" if m is None else None)


def point_settings(ctx: dict, method: str, guidance: str) -> str:
  """What else defines a point's samples besides (method, guidance, gamma, T, seed, num_samples):
  the model, the ReMDM strategy and its eta, exact / first-order D-CBG or FUDGE's top-k. Stored in
  the CSV; a resumed sweep reuses a point only when this string (and seed, num_samples) match."""
  m = ctx.get(MODEL_KEYS[method])
  parts = [os.path.basename(os.path.normpath(m.path)) if hasattr(m, "path") else str(m)]
  if method == "ReMDM":
    cfg = SamplerConfig(strategy=ctx["remdm_strategy"], num_steps=1, eta=ctx["eta"])
    parts.append(f"{cfg.strategy} eta={cfg.eta:g}")
  if guidance == "D-CBG":
    if method == "AR":
      k = ctx.get("fudge_top_k")
      parts.append(f"fudge top_k={k if k else 'all'}")
    else:
      parts.append("cbg " + ("first-order" if ctx["approx"] else "exact"))
  return "; ".join(parts)


def run_point(ctx: dict, method: str, guidance: str, gamma: float, T: int) -> dict:
  """Samples and scores one grid point; raises `Unavailable` with the reason.

  ctx: model / udlm_model / ar_model (LoadedModel, or a reason string when unavailable),
  classifier (for D-CBG), reference (set of QM9 SMILES), num_samples, batch_size, seed, property,
  canonical, approx, remdm_strategy, eta. T is unused for AR (one left-to-right pass)."""
  from remdm_jax.molecules import metrics
  from remdm_jax.molecules.sample import CBG, CFG, sample_molecules
  reason = unavailable_reason(ctx, method, guidance, gamma)
  if reason:
    raise Unavailable(reason)
  model = ctx[MODEL_KEYS[method]]
  if guidance == "D-CFG" and gamma == 1:
    g = None  # gamma = 1: the conditional model alone (one call per step)
  elif guidance == "D-CFG":
    g = CFG(gamma)
  else:  # FUDGE (AR) is exact over the candidates
    g = CBG(gamma, approx=ctx["approx"] and method != "AR")
  if method == "ReMDM":
    cfg = SamplerConfig(strategy=ctx["remdm_strategy"], num_steps=T, eta=ctx["eta"])
  else:
    cfg = SamplerConfig(strategy="mdlm", num_steps=T)
  top_k = ctx.get("fudge_top_k") if method == "AR" and guidance == "D-CBG" else None
  tokens, stats = sample_molecules(model, cfg, num_samples=ctx["num_samples"],
                                   batch_size=ctx["batch_size"], seed=ctx["seed"], label=1,
                                   guidance=g, classifier=ctx.get("classifier"),
                                   progress=bool(ctx.get("progress")),
                                   **({"top_k": top_k} if top_k else {}))
  smiles = model.tokenizer.decode_batch(tokens)
  m = metrics.evaluate_samples(smiles, ctx["reference"], properties=(ctx["property"],),
                               canonical=ctx["canonical"])
  p = ctx["property"]
  return dict(m, valid_mean=m[f"{p}_valid_mean"], valid_median=m[f"{p}_valid_median"],
              novel_mean=m[f"{p}_novel_mean"], novel_q25=m[f"{p}_novel_q25"],
              novel_median=m[f"{p}_novel_median"], novel_q75=m[f"{p}_novel_q75"],
              nfe=stats["nfe"], seconds=stats["seconds"])


def grid_points(methods, guidances, gammas, steps, ar_len: int = 32) -> list[tuple]:
  """(method, guidance, gamma, T) of the sweep; AR once per (guidance, gamma), with T = ar_len."""
  out = []
  for method, guidance, gamma in itertools.product(methods, guidances, gammas):
    out += [(method, guidance, gamma, T) for T in ([ar_len] if method == "AR" else steps)]
  return out


def _load_optional(path: Optional[str], name: str, kind: str):
  """A LoadedModel of the right kind; the shipped default may be missing (-> a reason string)."""
  from remdm_jax.molecules.sample import load_qm9_model, model_kind, shipped_path
  if path is None and not os.path.exists(shipped_path(name)):
    return f"no shipped QM9 {name} model (train one and pass its path)"
  m = load_qm9_model(path, name)
  if model_kind(m) != kind:
    raise ValueError(f"{m.path} is a {model_kind(m)} model, not a {kind} model")
  return m


def _numbers(text: str, kind, flag: str) -> list:
  """A comma-separated list of numbers; ValueError naming the flag otherwise."""
  try:
    return [kind(x) for x in text.split(",") if x.strip()]
  except ValueError:
    raise ValueError(f"{flag}={text!r} must be a comma-separated list of "
                     f"{'integers' if kind is int else 'numbers'}") from None


def write_csv(path: str, rows) -> None:
  buf = io.StringIO()
  w = csv.DictWriter(buf, fieldnames=FIELDS, extrasaction="ignore")
  w.writeheader()
  for r in rows:
    w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
  with atomic_open(path, "w") as f:
    f.write(buf.getvalue())


def point_key(row) -> tuple:
  """A grid point's identity in the CSV: (method, guidance, gamma, T, property)."""
  return (row["method"], row["guidance"], float(row["gamma"]), int(row["T"]), row["property"])


def read_csv(path: str) -> dict:
  """Rows of an earlier sweep CSV keyed by `point_key` (numbers parsed; {} if there is none), so
  that an interrupted or extended sweep reruns only the missing points. ValueError (one line
  naming the file, pointing at --fresh) for a file this sweep did not write: not UTF-8 text,
  missing columns, unparsable numbers."""
  if not os.path.exists(path):
    return {}
  out = {}
  need = ("method", "guidance", "gamma", "T", "property", "status")
  try:
    with open(path, newline="", encoding="utf-8") as f:
      reader = csv.DictReader(f)
      missing = [k for k in need if k not in (reader.fieldnames or ())]
      if missing:
        raise ValueError(f"no column(s) {', '.join(missing)}")
      for line, r in enumerate(reader, 2):
        row = {}
        for k, v in r.items():
          if k is None or k not in FIELDS:
            continue
          if k in ("method", "guidance", "status", "property", "settings") or v in ("", None):
            row[k] = v
          elif k == "kept":
            row[k] = v == "True"
          else:
            try:
              fv = float(v)
            except ValueError:
              raise ValueError(f"line {line}: {k}={v!r} is not a number") from None
            row[k] = int(fv) if k.startswith("num_") or k in ("T", "nfe", "seed") else fv
        out[point_key(row)] = row
  except (UnicodeDecodeError, csv.Error, ValueError, TypeError) as e:
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise ValueError(f"{path} is not a sweep CSV this command wrote ({type(e).__name__}: "
                     f"{reason[:120]}); move it away or pass --fresh") from None
  return out


def point_cost_key(method: str, guidance: str, approx: bool) -> tuple:
  """What makes one point cost more than another besides T (the ETA groups points by it)."""
  exact = guidance == "D-CBG" and not approx and method != "AR"
  return (method, guidance, "exact" if exact else "")


def estimate_seconds(done: dict, pending: list, approx: bool) -> Optional[float]:
  """ETA of `pending` points (method, guidance, gamma, T) from `done` {cost key: [seconds per
  unit of T, ...]} of this run: each point costs T x its kind's mean seconds per T (AR: one pass,
  unit 1); a kind not measured yet takes the largest measured rate (a conservative guess).
  None before any point has run."""
  rates = {k: sum(v) / len(v) for k, v in done.items() if v}
  if not rates:
    return None
  worst = max(rates.values())
  total = 0.0
  for method, guidance, _, T in pending:
    unit = 1 if method == "AR" else T
    total += unit * rates.get(point_cost_key(method, guidance, approx), worst)
  return total


def plot_pareto(rows, path: str, prop: str) -> str:
  """Two panels (D-CFG, D-CBG): novel mean property vs number of novel samples, one line per
  method (points sorted by gamma, labelled gamma/T); only kept points."""
  import matplotlib
  matplotlib.use("Agg", force=False)
  from matplotlib.figure import Figure
  fig = Figure(figsize=(11, 4.2))
  axes = fig.subplots(1, 2)
  markers = {32: "o", 64: "s", 128: "^"}
  for ax, g in zip(axes, GUIDANCES):
    for i, method in enumerate(METHODS):
      pts = [r for r in rows if r["guidance"] == g and r["method"] == method and r.get("kept")]
      for T in sorted({r["T"] for r in pts}):
        sel = sorted((r for r in pts if r["T"] == T), key=lambda r: r["gamma"])
        ax.plot([r["num_novel"] for r in sel], [r["novel_mean"] for r in sel],
                marker=markers.get(T, "x"), color=f"C{i}", label=f"{method} T={T}")
        for r in sel:
          ax.annotate(f"{r['gamma']:g}", (r["num_novel"], r["novel_mean"]), fontsize=6)
    ax.set_title(g)
    ax.set_xlabel("number of novel samples")
    ax.set_ylabel(f"novel mean {prop}")
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=7)
  fig.tight_layout()
  with atomic_open(path, "wb") as f:
    fig.savefig(f, format="png", dpi=120)
  return path


def apply_defaults(a) -> None:
  """--quick (quick must be quick: first-order D-CBG, gamma 1..3, T = 32, MDLM / ReMDM, at most
  256 samples) and the --min_novel default scaled to the sample count (50 per 1024 samples, so a
  quick run's plot is not empty), in place on the parsed args."""
  if a.quick:
    a.gammas, a.steps, a.methods = "1,2,3", "32", "MDLM,ReMDM"
    a.num_samples = min(a.num_samples, 256)
    a.approx = True
  if a.min_novel is None:
    a.min_novel = max(1, round(50 * a.num_samples / 1024))


def main(argv=None) -> int:
  """The CLI under `interrupt.run_main`: Ctrl-C / SIGTERM anywhere is one line saying what is
  kept, exit 130 / 143."""
  from remdm_jax.interrupt import run_main
  return run_main(_main, argv, prog="molecules.sweep")


def _main(argv=None) -> int:
  p = ArgumentParser(prog="python -m remdm_jax.molecules.sweep",
                     description="QM9 guidance sweep (SPEC_DOMAINS §M.6)")
  p.add_argument("--out_dir", required=True)
  p.add_argument("--quick", action="store_true")
  p.add_argument("--property", default="ring_count", choices=("ring_count", "qed"))
  p.add_argument("--methods", default=",".join(METHODS))
  p.add_argument("--guidances", default=",".join(GUIDANCES))
  p.add_argument("--gammas", default="1,2,3,4,5")
  p.add_argument("--steps", default="32,64,128")
  p.add_argument("--num_samples", type=int, default=1024)
  p.add_argument("--batch_size", type=int, default=256)
  p.add_argument("--min_novel", type=int, default=None,
                 help="points with fewer novel samples are left out of the plot (default: 50 per "
                      "1024 samples, i.e. 50 at the default --num_samples, 12 with --quick)")
  p.add_argument("--seed", type=int, default=1, help="in [0, 2^32)")
  p.add_argument("--remdm_strategy", default="remdm_cap")
  p.add_argument("--eta", type=float, default=None)
  p.add_argument("--approx", action="store_true", help="first-order D-CBG")
  p.add_argument("--canonical", action="store_true", help="canonicalise before novelty")
  p.add_argument("--model", default=None, help="MDLM / ReMDM model (default: qm9_cond_mdlm)")
  p.add_argument("--udlm_model", default=None, help="UDLM model (default: shipped qm9_udlm)")
  p.add_argument("--ar_model", default=None, help="AR model (default: shipped qm9_ar)")
  p.add_argument("--classifier", default=None)
  p.add_argument("--fudge_top_k", type=int, default=None,
                 help="AR + D-CBG (FUDGE): classifier-score only the LM's top-k next tokens "
                      "(default: all V = 35, i.e. 31 * 35 classifier rows per sample)")
  p.add_argument("--fresh", action="store_true",
                 help="ignore an existing <out_dir>/qm9_sweep.csv (default: resume from it)")
  a = p.parse_args(argv)
  try:
    apply_defaults(a)
    check_seed(a.seed, "--seed")
    if a.min_novel < 0:
      raise ValueError(f"--min_novel={a.min_novel} must be >= 0")
    methods = [m for m in a.methods.split(",") if m]
    guidances = [g for g in a.guidances.split(",") if g]
    gammas = _numbers(a.gammas, float, "--gammas")
    steps = _numbers(a.steps, int, "--steps")
    for flag, vals in (("--methods", methods), ("--guidances", guidances), ("--gammas", gammas),
                       ("--steps", steps)):
      if not vals:
        raise ValueError(f"{flag} is empty: the grid has no points")
    for m in methods:
      if m not in METHODS:
        raise ValueError(f"--methods entry {m!r} is not one of {METHODS}")
    for g in guidances:
      if g not in GUIDANCES:
        raise ValueError(f"--guidances entry {g!r} is not one of {GUIDANCES}")
    if any(not math.isfinite(g) or g < 0 for g in gammas):
      raise ValueError(f"--gammas={a.gammas!r} must be finite numbers >= 0")
    if any(t < 1 for t in steps):
      raise ValueError(f"--steps={a.steps!r} must be integers >= 1")
    if a.num_samples < 1 or a.batch_size < 1:
      raise ValueError("--num_samples and --batch_size must be >= 1")
    if a.fudge_top_k is not None and not 1 <= a.fudge_top_k <= 35:
      raise ValueError(f"--fudge_top_k={a.fudge_top_k} must lie in [1, V = 35]")
    if a.fudge_top_k is not None and not ("AR" in methods and "D-CBG" in guidances):
      raise ValueError("--fudge_top_k applies to AR with D-CBG (FUDGE), which is not in the grid")
    if os.path.lexists(a.out_dir) and not os.path.isdir(a.out_dir):
      raise ValueError(f"--out_dir={a.out_dir} exists and is not a folder")
    csv_path = check_output_path(os.path.join(a.out_dir, "qm9_sweep.csv"), overwrite=True,
                                 flag="--out_dir")
    done = {} if a.fresh else read_csv(csv_path)  # a CSV we cannot resume: before any work
    SamplerConfig(strategy=a.remdm_strategy, num_steps=steps[0], eta=a.eta)  # validate early
    from remdm_jax.molecules.data import load_qm9
    from remdm_jax.molecules.sample import (AR_MODEL, CLASSIFIER_MODEL, UDLM_MODEL,
                                            load_qm9_model, model_kind)
    ctx = dict(num_samples=a.num_samples, batch_size=a.batch_size, seed=a.seed,
               property=a.property, canonical=a.canonical, approx=a.approx,
               remdm_strategy=a.remdm_strategy, eta=a.eta, fudge_top_k=a.fudge_top_k,
               progress=True)
    if {"MDLM", "ReMDM"} & set(methods):
      ctx["model"] = load_qm9_model(a.model)
      if model_kind(ctx["model"]) != "mdlm":
        raise ValueError(f"--model={ctx['model'].path} is a {model_kind(ctx['model'])} model, "
                         "not an mdlm model (MDLM / ReMDM)")
    if "UDLM" in methods:
      ctx["udlm_model"] = _load_optional(a.udlm_model, UDLM_MODEL, "udlm")
    if "AR" in methods:
      ctx["ar_model"] = _load_optional(a.ar_model, AR_MODEL, "ar")
    if "D-CBG" in guidances:
      ctx["classifier"] = load_qm9_model(a.classifier, CLASSIFIER_MODEL)
      if model_kind(ctx["classifier"]) != "classifier":
        raise ValueError(f"--classifier={ctx['classifier'].path} is a "
                         f"{model_kind(ctx['classifier'])} model, not a classifier")
    from remdm_jax.molecules import metrics
    metrics.check_available()
    ctx["reference"] = load_qm9().smiles_set()
  except (ValueError, FileNotFoundError, ImportError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  try:
    grid = grid_points(methods, guidances, gammas, steps)
    rows, start, ran = [], time.perf_counter(), 0
    rates: dict = {}
    for i, (method, guidance, gamma, T) in enumerate(grid):
      base = dict(method=method, guidance=guidance, gamma=gamma, T=T, property=a.property,
                  settings=point_settings(ctx, method, guidance), seed=a.seed)
      old = done.pop(point_key(base), None)
      if old is not None and old["status"] == "ok" and all(
          old.get(k) == v for k, v in (("num_samples", a.num_samples), ("seed", a.seed),
                                       ("settings", base["settings"]))):
        old["kept"] = old["num_novel"] >= a.min_novel
        rows.append(old)
        print(f"[{i + 1}/{len(grid)}] {method} {guidance} gamma={gamma:g} T={T}: from {csv_path}",
              file=sys.stderr, flush=True)
        continue
      if old is not None and old["status"] == "ok":
        print(f"[{i + 1}/{len(grid)}] {method} {guidance} gamma={gamma:g} T={T}: the CSV's point "
              "has other settings / seed / num_samples; rerunning it", file=sys.stderr, flush=True)
      try:
        res = run_point(ctx, method, guidance, gamma, T)
        ran += 1
        rates.setdefault(point_cost_key(method, guidance, a.approx), []).append(
            res["seconds"] / (1 if method == "AR" else T))
        row = dict(base, **res, status="ok", kept=res["num_novel"] >= a.min_novel)
        msg = (f"valid {res['valid_frac']:.3f} novel {res['num_novel']} novel mean "
               f"{res['novel_mean']:.3f}{'' if row['kept'] else ' (dropped: < min_novel)'}")
      except Interrupted:
        write_csv(csv_path, rows + list(done.values()))
        print(f"\ninterrupted in point {i + 1}/{len(grid)}; the {ran} points run (and earlier "
              f"ones) are in {csv_path}; the same command resumes", file=sys.stderr)
        hard_exit(EXIT_INTERRUPTED)
      except Unavailable as e:
        row = dict(base, status=f"skipped: {e}", kept=False)
        msg = row["status"]
      rows.append(row)
      write_csv(csv_path, rows + list(done.values()))
      note_saved(f"the finished points are in {csv_path}; the same command resumes")
      el = time.perf_counter() - start
      pending = [g for g in grid[i + 1:] if unavailable_reason(ctx, g[0], g[1], g[2]) is None]
      eta = estimate_seconds(rates, pending, a.approx)
      print(f"[{i + 1}/{len(grid)}] {method} {guidance} gamma={gamma:g} T={T}: {msg} | "
            f"{el:.0f}s elapsed, ETA {'?' if eta is None else f'{eta:.0f}s'}", file=sys.stderr,
            flush=True)
    rows += list(done.values())  # earlier points outside this grid stay in the CSV and the plot
    write_csv(csv_path, rows)
    print(f"wrote {csv_path} ({ran} of {len(grid)} points run)")
    plotted = [r for r in rows if r.get("num_samples") == a.num_samples]
    if any(r.get("kept") for r in plotted):
      print(f"wrote {plot_pareto(plotted, os.path.join(a.out_dir, 'qm9_pareto.png'), a.property)}")
    else:
      print(f"no plot: every point has fewer than --min_novel={a.min_novel} novel samples",
            file=sys.stderr)
  except OSError as e:  # an output that became unwritable mid-run: one line, exit 2
    text = " ".join(str(e).split()) or type(e).__name__
    print(f"error: {text} (the results written before it are kept)", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
