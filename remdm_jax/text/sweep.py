"""Inference-time-scaling sweep: sample quality against the number of steps T (paper Figure 1).

Runs each strategy at each T, then scores every sample set (MAUVE against held-out text, gen-PPL
under an AR scorer, unigram entropy) and writes `scaling.csv` and `scaling.png`:

  python -m remdm_jax.text.sweep                                     # shipped bible_byte model
  python -m remdm_jax.text.sweep --stage=sample --output_dir=...     # sampling only (e.g. on a GPU)
  python -m remdm_jax.text.sweep --stage=eval --output_dir=...       # scoring only (e.g. on a CPU)

Default output_dir: `./runs/sweep`, or `~/remdm-jax/runs/sweep` when run inside the source checkout
(`$REMDM_OUTPUT_DIR` replaces the folder; `generation.output_root`). With --stage=all the scorer,
MAUVE's packages and matplotlib are checked before any sampling.

Defaults: strategies mdlm, fb, dfm, remdm_cap, remdm_loop; T in {L/4, L/2, L, 2L, 4L}; top-p 0.9;
the SPEC §5 script defaults of eta. `nfe` is the number of denoiser calls actually made per batch
(DFM's own grid is longer than T, SPEC §4.4; the final noise-removal call is included);
`seconds` is the wall time of the whole sample set, compilation included.
"""
from __future__ import annotations

import csv
import json
import os
import sys
from typing import Optional, Sequence

import numpy as np

from remdm_jax.fileio import atomic_open

DEFAULT_STRATEGIES = ("mdlm", "fb", "dfm", "remdm_cap", "remdm_loop")
CSV_FIELDS = ("strategy", "T", "nfe", "mauve", "gen_ppl", "entropy", "num_samples", "seconds",
              "mauve_reference", "mauve_featurizer", "gen_ppl_scorer")


def default_steps(seq_len: int) -> list[int]:
  """T in {L/4, L/2, L, 2L, 4L}."""
  return [max(1, seq_len // 4), max(1, seq_len // 2), seq_len, 2 * seq_len, 4 * seq_len]


def _stem(strategy: str, steps: int) -> str:
  return f"samples_{strategy}_T{steps}"


def sample_stage(checkpoint: str, output_dir: str, *, strategies: Sequence[str],
                 steps: Optional[Sequence[int]], num_samples: int, batch_size: int, seed: int,
                 top_p: Optional[float], precision: str = "exact32") -> list[dict]:
  """Draws and saves `<output_dir>/samples_<strategy>_T<T>.npy` (+ `.json` stats) for every pair."""
  from remdm_jax import generation
  from remdm_jax.sampling import SamplerConfig

  model = generation.load_model(checkpoint)
  generation.check_diffusion_model(model)
  generation.check_model_use(model, "the text sweep", kinds=("mdlm",), domains=("text", None))
  steps = list(steps) if steps else default_steps(model.seq_len)
  os.makedirs(output_dir, exist_ok=True)
  done = []
  for strategy in strategies:
    for t in steps:
      cfg = SamplerConfig.preset(strategy, num_steps=int(t), top_p=top_p, precision=precision)
      tokens, stats = generation.generate(model, cfg, num_samples=num_samples,
                                          batch_size=batch_size, seed=seed)
      stem = os.path.join(output_dir, _stem(strategy, t))
      with atomic_open(stem + ".npy", "wb") as f:
        np.save(f, tokens.astype(np.int32))
      info = dict(strategy=strategy, T=int(t), nfe=int(round(stats["nfe_spent"])),
                  seconds=stats["seconds"], num_samples=num_samples, seed=seed,
                  checkpoint=model.path, sampler=generation.sampler_settings(cfg))
      with atomic_open(stem + ".json") as f:
        json.dump(info, f, indent=1)
      print(f"{strategy:>14s} T={t:<5d} nfe={info['nfe']:<5d} {stats['seconds']:.1f}s",
            file=sys.stderr)
      done.append(info)
  return done


def eval_stage(checkpoint: str, output_dir: str, *, scorer: Optional[str],
               mauve: bool = True, seed: int = 1) -> list[dict]:
  """Scores every saved sample set in `output_dir`; writes scaling.csv and scaling.png."""
  from remdm_jax import generation
  from remdm_jax.text.sample_metrics import heldout_texts, sample_metrics

  model = generation.load_model(checkpoint)
  scorer_model = generation.load_model(scorer) if scorer else None
  infos = []
  for name in sorted(os.listdir(output_dir)):
    if name.startswith("samples_") and name.endswith(".json"):
      with open(os.path.join(output_dir, name)) as f:
        infos.append(json.load(f))
  if not infos:
    raise FileNotFoundError(f"no samples_*.json in {output_dir}: run --stage=sample first")
  n = max(i["num_samples"] for i in infos)
  refs, ref_name, featurizer = None, "", None
  if mauve:
    data_cfg = model.metadata.get("data")
    if not data_cfg:
      raise ValueError(f"checkpoint {model.path} records no training data config (for MAUVE)")
    refs, ref_name = heldout_texts(data_cfg, n, seed=seed)
    from remdm_jax.text.minilm import MiniLMFeaturizer
    featurizer = MiniLMFeaturizer()
  rows = []
  if refs is not None:  # the data itself: a second, independent held-out draw
    data_texts, _ = heldout_texts(data_cfg, n, seed=seed + 1)
    data_tokens = np.array([model.tokenizer.encode(t) for t in data_texts], np.int32)
    m = sample_metrics(data_tokens, scorer=scorer_model, texts=data_texts, mauve_reference=refs,
                       reference_name=ref_name, featurizer=featurizer)
    rows.append(dict(strategy="data", T=0, nfe=0, seconds=0.0, **m))
  for info in sorted(infos, key=lambda i: (i["strategy"], i["T"])):
    tokens = np.load(os.path.join(output_dir, _stem(info["strategy"], info["T"]) + ".npy"))
    texts = [model.tokenizer.decode(t.tolist()) for t in tokens]
    m = sample_metrics(tokens, scorer=scorer_model, texts=texts, mauve_reference=refs,
                       reference_name=ref_name, featurizer=featurizer)
    rows.append(dict(strategy=info["strategy"], T=info["T"], nfe=info["nfe"],
                     seconds=info["seconds"], **m))
    print(f"{info['strategy']:>14s} T={info['T']:<5d} " + " ".join(
        f"{k}={m[k]:.4f}" for k in ("mauve", "gen_ppl", "entropy") if k in m), file=sys.stderr)
  write_csv(os.path.join(output_dir, "scaling.csv"), rows)
  from remdm_jax.text.plots import plot_scaling
  plot_scaling([r for r in rows if r["strategy"] != "data"], os.path.join(output_dir, "scaling.png"),
               title=f"{os.path.basename(model.path)}: quality vs steps")
  return rows


def write_csv(path: str, rows: Sequence[dict]) -> None:
  with atomic_open(path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
    w.writeheader()
    for r in rows:
      w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})


def main(argv) -> int:
  """The CLI under `interrupt.run_main`: Ctrl-C / SIGTERM anywhere is one line, exit 130 / 143;
  every finished (strategy, T) sample set is kept."""
  from remdm_jax.interrupt import run_main
  return run_main(_main, argv, prog="sweep")


def _main(argv) -> int:
  from absl import flags
  F = flags.FLAGS
  from absl import logging
  from remdm_jax import generation
  logging.set_verbosity(logging.WARNING)
  try:
    ckpt = F.checkpoint or generation.shipped_model_path("bible_byte_mdlm")
    scorer = None if F.scorer == "none" else (
        generation.shipped_model_path("bible_byte_ar") if F.scorer == "shipped" else F.scorer)
    if F.num_samples < 2:
      raise ValueError(f"--num_samples={F.num_samples} must be >= 2")
    generation.check_seed(F.seed, "--seed")
    output_dir = F.output_dir or os.path.join(generation.output_root(), "runs", "sweep")
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
      raise ValueError(f"--output_dir={output_dir} is a file")
    from remdm_jax.fileio import check_writable_folder
    check_writable_folder(output_dir, "--output_dir", output_dir)
    if F.stage == "all":  # whatever the eval stage needs, before sampling
      if F.mauve:
        from remdm_jax.text.sample_metrics import check_mauve_available
        check_mauve_available()
      try:
        import matplotlib  # noqa: F401  pylint: disable=unused-import
      except ImportError as e:
        raise ImportError("the sweep's plot needs matplotlib: pip install 'remdm-jax[eval]'") from e
      if scorer is not None and not generation.load_model_for_flag("--scorer",
                                                                   scorer).config.causal:
        raise ValueError(f"--scorer={scorer} is not an autoregressive (causal) model")
    for s in F.strategies:
      from remdm_jax.sampling import PRESETS
      if s not in PRESETS:
        raise ValueError(f"--strategies entry {s!r} is not one of {tuple(PRESETS)}")
    top_p = None if F.top_p >= 1.0 else F.top_p
    from remdm_jax.interrupt import note_saved
    note_saved(f"every finished (strategy, T) sample set is in {output_dir}")
    if F.stage in ("sample", "all"):
      sample_stage(ckpt, output_dir, strategies=F.strategies,
                   steps=[int(s) for s in F.steps] if F.steps else None,
                   num_samples=F.num_samples, batch_size=F.batch_size, seed=F.seed, top_p=top_p,
                   precision=F.precision)
    if F.stage in ("eval", "all"):
      eval_stage(ckpt, output_dir, scorer=scorer, mauve=F.mauve)
  except (ValueError, FileNotFoundError, ImportError, OSError) as e:
    text = " ".join(str(e).split()) or type(e).__name__
    print(f"sweep: error: {text}", file=sys.stderr)
    return 2
  except KeyboardInterrupt as e:  # Ctrl-C (generation.generate stops within a batch)
    from remdm_jax.interrupt import EXIT_INTERRUPTED, hard_exit
    print(f"sweep: {e or 'interrupted'}; every finished (strategy, T) sample set is in "
          f"{output_dir}", file=sys.stderr)
    hard_exit(EXIT_INTERRUPTED)
  return 0


def _define_flags():
  from absl import flags
  flags.DEFINE_string("checkpoint", None, "Denoiser checkpoint (default: shipped bible_byte MDLM).")
  flags.DEFINE_string("scorer", "shipped", "AR scorer checkpoint, 'shipped' or 'none'.")
  flags.DEFINE_list("strategies", list(DEFAULT_STRATEGIES), "Sampler presets to sweep.")
  flags.DEFINE_list("steps", None, "Values of T (default: L/4, L/2, L, 2L, 4L).")
  flags.DEFINE_integer("num_samples", 256, "Samples per (strategy, T).")
  flags.DEFINE_integer("batch_size", 256, "Samples per sampler batch.")
  flags.DEFINE_integer("seed", 1, "Sampling seed.")
  flags.DEFINE_float("top_p", 0.9, "Nucleus mass (1 = off).")
  flags.DEFINE_string("precision", "exact32", "exact32 | float64 | float32")
  flags.DEFINE_boolean("mauve", True, "Compute MAUVE (eval stage).")
  flags.DEFINE_enum("stage", "all", ["sample", "eval", "all"], "Which stage to run.")
  flags.DEFINE_string("output_dir", None, "Where samples, CSV and PNG go (default ./runs/sweep, "
                      "or ~/remdm-jax/runs/sweep inside the source checkout).")


if __name__ == "__main__":
  from absl import app
  _define_flags()
  app.run(main)
