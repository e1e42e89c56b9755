"""Train an MDLM / ReMDM / AR model.

  python train.py --config=configs/bible_byte.py --workdir=/tmp/remdm_bible
  python train.py --config=configs/bible_byte.py:ar --workdir=/tmp/remdm_ar --config.optim.lr=5e-4

Any config field can be overridden with --config.<section>.<field>=value. Re-running with the same
workdir resumes from its latest checkpoint. Bad input (unknown field, missing corpus, mesh that
does not fit the devices, vocab mismatch) is reported as one `error:` line, exit status 2.
"""
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/x.py[:preset]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (metrics, checkpoints).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:  # orbax logs every save step at INFO
    logging.set_verbosity(logging.WARNING)
  from remdm_jax.training.trainer import train
  try:
    result = train(_CONFIG.value, _WORKDIR.value)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except FloatingPointError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(3)
  except KeyboardInterrupt:
    print(f"interrupted; re-run the same command to resume from the latest checkpoint in "
          f"{_WORKDIR.value}", file=sys.stderr)
    sys.exit(130)
  print(f"done: step {result['step']}, workdir {result['workdir']}")


def _parse_flags(argv):
  """absl flag parsing with bad input (unknown --config.x.y field, bad value) as one line."""
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # flags.Error, AttributeError / KeyError from config_flags overrides
    text = str(e).replace("\\n", "\n").replace("\\'", "'")
    lines = [ln.strip().strip("\"'") for ln in text.splitlines() if ln.strip()]
    msg = lines[-1] if lines else type(e).__name__
    if isinstance(e, (AttributeError, KeyError)):
      bad = [a.split("=")[0][2:] for a in argv[1:]
             if a.startswith("--config.") and f"'{a.split('=')[0].split('.')[-1]}'" in text]
      hint = " ".join(ln for ln in lines[1:] if ln.startswith("Did you mean"))
      msg = f"unknown config field {bad[0] if bad else lines[0]!r}" + (f" ({hint})" if hint else "")
    elif len(lines) > 1 and lines[0].startswith("flag --config="):
      msg = f"{lines[0].rstrip(':')}: {msg}"
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
