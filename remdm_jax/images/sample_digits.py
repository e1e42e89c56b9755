"""Draw class-conditional 8x8 digits from the shipped model and write a PNG grid (issue 11 item 5).

  python -m remdm_jax.images.sample_digits --out=digits.png
  python -m remdm_jax.images.sample_digits --strategy=remdm_rescale --eta=0.05 --steps=32 \\
      --temperature=0.8 --per-class=10 --seed=1 --out=digits.png --judge

Row c of the grid holds `--per-class` samples of class c (0..9). CPU: a few seconds (most of it
compilation). `--judge` also prints digits-FID / digits-IS / class accuracy of the drawn samples
(few samples: FID is biased upwards; the sweep uses 1,000). The default `--out` is a new file
./samples/digits-<strategy>-T<steps>-<timestamp>.png (under ~/remdm-jax/ inside the source
checkout; $REMDM_OUTPUT_DIR replaces the folder), so two commands never write the same file; an
existing --out needs --overwrite. Bad input (a seed outside [0, 2^32), a flag the strategy would
ignore - `--eta` with maskgit, `--choice-temperature` without it -, a model that is not a digits
model, an unwritable --out): one `error:` line, exit 2, before any work. Ctrl-C stops within a
fraction of a second (exit 130).
"""
from __future__ import annotations

import json
import sys
import time

if __name__ == "__main__":  # Ctrl-C / SIGTERM while the imports load: one line, no traceback
  from remdm_jax import interrupt as _interrupt
  _interrupt.install_handlers("images.sample_digits")

import jax  # noqa: E402
import numpy as np

from remdm_jax.cliargs import ArgumentParser
from remdm_jax.fileio import check_output_path

from remdm_jax.images import digits as dg
from remdm_jax.images.decode import IMAGE_STRATEGIES, ImageSamplerConfig


def build_parser():
  ap = ArgumentParser(prog="python -m remdm_jax.images.sample_digits",
                      description="Sample 8x8 digits from the shipped class-conditional MDLM and "
                                  "write a PNG grid.")
  ap.add_argument("--strategy", default="maskgit", choices=IMAGE_STRATEGIES)
  ap.add_argument("--steps", type=int, default=16, help="T")
  ap.add_argument("--temperature", type=float, default=1.0)
  ap.add_argument("--eta", type=float, default=None,
                  help="ReMDM eta (default: the strategy's; not for maskgit / mdlm)")
  ap.add_argument("--mask-schedule", default="uniform")
  ap.add_argument("--choice-temperature", type=float, default=None,
                  help="MaskGIT ranking noise (maskgit only; default 4.5)")
  ap.add_argument("--per-class", type=int, default=10)
  ap.add_argument("--seed", type=int, default=0, help="in [0, 2^32)")
  ap.add_argument("--model", default=None, help="model folder (default: the shipped digits_mdlm)")
  ap.add_argument("--out", default=None,
                  help="PNG path (default: a new ./samples/digits-<strategy>-T<steps>-"
                       "<timestamp>.png)")
  ap.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
  ap.add_argument("--judge", action="store_true", help="print digits-FID / IS / accuracy")
  return ap


def default_out(strategy: str, steps: int, cwd=None) -> str:
  """<generation.output_root(cwd)>/samples/digits-<strategy>-T<steps>-<timestamp>[-k].png: never
  an existing file, never inside the source checkout."""
  import os
  from remdm_jax.generation import output_root
  stem = os.path.join(output_root(cwd), "samples",
                      f"digits-{strategy}-T{steps}-{time.strftime('%Y%m%d-%H%M%S')}")
  path, k = stem + ".png", 1
  while os.path.exists(path):
    path, k = f"{stem}-{k}.png", k + 1
  return path


def check_flags(args) -> None:
  """Flags the chosen strategy would silently ignore, and the seed: ValueError (one line)."""
  from remdm_jax.checks import check_seed
  check_seed(args.seed, "--seed")
  if args.per_class < 1:
    raise ValueError(f"--per-class={args.per_class} must be >= 1")
  if args.strategy == "maskgit" and args.eta is not None:
    raise ValueError(f"--eta={args.eta:g} does not apply to --strategy=maskgit (confidence "
                     "decoding has no ReMDM remasking)")
  if args.strategy == "mdlm" and args.eta is not None:
    raise ValueError(f"--eta={args.eta:g} does not apply to --strategy=mdlm (no remasking)")
  if args.strategy != "maskgit" and args.choice_temperature is not None:
    raise ValueError(f"--choice-temperature={args.choice_temperature:g} applies only to "
                     f"--strategy=maskgit, not {args.strategy}")


def main(argv=None) -> int:
  """CLI: 0; 2 after one `error:` line (bad input, before any work); 130 / 143 after Ctrl-C /
  SIGTERM (one line, nothing written: the grid is one compiled program; `interrupt.run_main`)."""
  from remdm_jax import interrupt
  return interrupt.run_main(_main, argv, prog="images.sample_digits")


def _main(argv=None) -> int:
  from remdm_jax.interrupt import EXIT_INTERRUPTED, call_interruptibly, hard_exit, note_saved
  args = build_parser().parse_args(argv)
  try:
    check_flags(args)
    out = args.out or default_out(args.strategy, args.steps)
    if not out.lower().endswith(".png"):
      raise ValueError(f"--out={out!r} must end in .png")
    args.out = check_output_path(out, args.overwrite, "--out")
    cfg = ImageSamplerConfig(strategy=args.strategy, num_steps=args.steps,
                             temperature=args.temperature, eta=args.eta,
                             mask_schedule=args.mask_schedule,
                             choice_temperature=(4.5 if args.choice_temperature is None
                                                 else args.choice_temperature))
    f, params = dg.load_model(args.model)
  except (ValueError, FileNotFoundError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  t0 = time.time()
  sampler = dg.make_digits_sampler(cfg, f)
  labels = np.repeat(np.arange(dg.NUM_CLASSES), args.per_class).astype(np.int32)
  try:
    pix = call_interruptibly(lambda: np.asarray(
        sampler(params, jax.random.PRNGKey(args.seed), labels=labels)))
  except KeyboardInterrupt:
    print("images.sample_digits: interrupted before the samples were finished; nothing "
          "written", file=sys.stderr)
    hard_exit(EXIT_INTERRUPTED)
  secs = time.time() - t0
  dg.save_grid_png(args.out, pix, ncol=args.per_class)
  note_saved(f"the grid is in {args.out}" + ("; metrics not computed" if args.judge else ""))
  rec = {"out": args.out, "strategy": args.strategy, "steps": args.steps,
         "temperature": args.temperature, "nfe": int(sampler.nfe), "samples": len(labels),
         "seconds": round(secs, 2)}
  if args.judge:
    rec.update(dg.DigitsJudge().evaluate(pix, labels))
  print(json.dumps(rec))
  return 0


if __name__ == "__main__":
  sys.exit(main())
