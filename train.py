"""Train an MDLM / ReMDM / AR model.

  python train.py --config=configs/bible_byte.py --workdir=/tmp/remdm_bible
  python train.py --config=configs/bible_byte.py:ar --workdir=/tmp/remdm_ar --config.optim.lr=5e-4

Any config field can be overridden with --config.<section>.<field>=value. Re-running with the same
workdir resumes from its latest checkpoint (a workdir trained with a different model type, shape,
objective, seq_len or tokenizer is refused). Bad input (missing config file, unknown field,
missing corpus, mesh that does not fit the devices, vocab mismatch, unwritable workdir) is
reported as one `error:` line, exit status 2, before any work; a non-finite loss exits 3, a failed
checkpoint save 4. Ctrl-C (SIGINT) or SIGTERM saves a checkpoint of the last finished step and
exits 130 / 143; a second Ctrl-C aborts at once.

Several processes (README "Multi-host"): `python -m remdm_jax.launch -n 2 -- train.py ...` on one
machine, or the REMDM_COORDINATOR / REMDM_NUM_PROCESSES / REMDM_PROCESS_ID environment (SLURM,
TPU pod; `remdm_jax.distributed`). Process 0 writes the metrics, config and progress lines; all
processes write the checkpoint together; SIGTERM to any process stops all of them after the same
step (its checkpoint saved, exit 143); an unexpected error in one process ends it at once with
status 1 (the launcher then stops the others).
"""
import os
import sys

if __name__ == "__main__":
  # Until the trainer installs its own SIGINT / SIGTERM handlers (which save a checkpoint): a
  # signal is one line and exit 130 / 143. The default KeyboardInterrupt could be swallowed by
  # JAX's gc callback ("Exception ignored in _xla_gc_callback"), and training went on to the end.
  from remdm_jax import interrupt as _interrupt
  _interrupt.install_handlers("train.py")

from absl import app, flags, logging  # noqa: E402
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
  from remdm_jax.training.trainer import TrainingInterrupted, train
  try:
    result = train(_CONFIG.value, _WORKDIR.value)
  except (ValueError, FileNotFoundError) as e:
    _fail(f"error: {e}", 2)
  except FloatingPointError as e:
    _fail(f"error: {e}", 3)
  except RuntimeError as e:
    if not str(e).startswith("checkpoint save"):
      raise
    _fail(f"error: {e}", 4)
  except TrainingInterrupted as e:
    if e.checkpoint_step is not None:
      how = (f"checkpoint of step {e.checkpoint_step} saved in {e.directory}; re-run the same "
             "command to resume")
    else:
      how = "no checkpoint was saved"
    print(f"interrupted by {e.signal_name} after step {e.step}; {how}", file=sys.stderr)
    sys.exit(143 if e.signal_name == "SIGTERM" else 130)
  except KeyboardInterrupt:
    print(f"interrupted; {_checkpoint_note(_WORKDIR.value)}", file=sys.stderr)
    sys.exit(130)
  import jax
  if jax.process_index() == 0:  # several processes (README "Multi-host"): one line
    print(f"done: step {result['step']}, workdir {result['workdir']}")


def _fail(line: str, code: int) -> None:
  """One error line, then exit without interpreter-shutdown noise: `train` has already closed the
  checkpointer and every file is written atomically, but orbax's background threads can print a
  "cannot schedule new futures after interpreter shutdown" traceback during a normal exit."""
  print(line, file=sys.stderr)
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)


def _checkpoint_note(workdir) -> str:
  """What a re-run would resume from (never claims a checkpoint that does not exist)."""
  ckdir = os.path.join(os.path.abspath(workdir), "checkpoints")
  steps = sorted(int(n) for n in (os.listdir(ckdir) if os.path.isdir(ckdir) else [])
                 if n.isdigit())
  if not steps:
    return "no checkpoint was saved (a re-run starts from step 0)"
  return f"re-run the same command to resume from step {steps[-1]} ({ckdir})"


def _check_config_file(argv) -> None:
  """A missing --config file is one line (absl would print a traceback much later)."""
  for i, a in enumerate(argv[1:], 1):
    value = None
    if a.startswith("--config="):
      value = a.split("=", 1)[1]
    elif a == "--config" and i + 1 < len(argv):
      value = argv[i + 1]
    if value is not None:
      path = value.split(":", 1)[0]
      if not os.path.isfile(path):
        print(f"error: --config file not found: {path}", file=sys.stderr)
        sys.exit(2)


def _parse_flags(argv):
  """absl flag parsing with bad input (unknown --config.x.y field, bad value) as one line."""
  _check_config_file(argv)
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
