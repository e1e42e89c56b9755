"""Draw samples from a masked diffusion LM with MDLM / ReMDM samplers.

With no flags: ReMDM-loop (the paper's T >= 1024 setting, SPEC §5) on the model that ships with the
project (King James Bible bytes, L = 128, T = L), printing samples and metrics:

  python sample.py

Paper settings on a converted official MDLM OWT checkpoint (GPU):

  python -m remdm_jax.models.convert --input mdlm.ckpt --output /ckpt/mdlm_owt
  python sample.py --checkpoint=/ckpt/mdlm_owt --preset=remdm_loop --steps=1024 \
      --num_samples=5000 --batch_size=16 --seed=1 --precision=float64 --output=remdm_loop.jsonl

Semi-autoregressive long samples (MDLM's `sampling.semi_ar`): `--num_strides=S` generates
L + S * stride_length tokens as S + 1 windows of the model length L; each extra window keeps the
previous window's last L - stride_length tokens frozen and generates `--stride_length` new ones
(default L // 2), with the chosen sampler inside every window (NFE = (S + 1) x the sampler's).
On the shipped model (L = 128) this writes 256-token samples:

  python sample.py --num_strides=2 --stride_length=64 --preset=mdlm --steps=128 --num_samples=4

gen-PPL of samples longer than the scorer's length is computed on consecutive non-overlapping
chunks of the scorer's length (each scored on its own; the reference's eval_context_size rule).

Any vocabulary: `--tokenizer=ids` writes token ids (no text), `--tokenizer=/path/tokenizer.json`
decodes with a Hugging Face tokenizer file (`bpe` extra: the `tokenizers` package); a
checkpoint whose vocabulary matches no known tokenizer defaults to ids.

Output: `--output` (never silently overwritten: an existing file needs `--overwrite`); default
`./samples/<preset>-<YYYYmmdd-HHMMSS>.jsonl` under the current directory, or under `~/remdm-jax/`
when the current directory is inside this source checkout (`$REMDM_OUTPUT_DIR` replaces either).
The JSONL is written before any metric is computed.

Several processes (README "Multi-host"): `python -m remdm_jax.launch -n 2 -- sample.py ...` (or a
SLURM / pod job with the REMDM_* environment) splits every batch over the devices of all
processes (--batch_size divisible by their number); the samples equal a one-process run's;
process 0 writes the output and prints.

Presets: mdlm, remdm_cap, remdm_rescale, remdm_conf, remdm_switch, remdm_loop, fb, dfm (top-p 0.9
and the SPEC §5 script defaults); any field can be overridden with the flags below. Bad input is
one `sample.py: error: ...` line and exit status 2, before any sampling.
"""
from __future__ import annotations

import os
import sys
import time

if __name__ == "__main__":  # Ctrl-C / SIGTERM while the imports load: one line, no traceback
  from remdm_jax import interrupt as _interrupt
  _interrupt.install_handlers("sample.py")

from absl import app, flags, logging  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "Params checkpoint (or training workdir). "
                    "Default: the shipped bible_byte MDLM model.")
flags.DEFINE_string("tokenizer", None, "byte | gpt2 | ids (samples as token ids, any vocabulary) "
                    "| a tokenizer.json path; default: the checkpoint's, else by vocabulary size, "
                    "else ids.")
flags.DEFINE_integer("mask_id", None, "With --tokenizer=ids: the mask id (default V - 1).")
flags.DEFINE_string("compute_dtype", None, "Override the model's compute dtype (bfloat16 | float32).")
flags.DEFINE_string("attention_impl", None, "Override the attention kernel (xla | cudnn on GPU).")
flags.DEFINE_string("preset", "remdm_loop", "Sampler preset (SPEC §5).")
flags.DEFINE_integer("steps", None, "Sampling steps T >= 1 (default: the model length L).")
flags.DEFINE_float("eta", None, "ReMDM eta (cap / rescale / loop / switch).")
flags.DEFINE_float("top_p", None, "Nucleus mass in (0, 1]; 1 disables (preset: 0.9).")
flags.DEFINE_string("nucleus_rule", None, "reference | hf")
flags.DEFINE_float("temperature", None, "Sampling temperature tau > 0 (logits / tau before top-p; "
                   "default 1).")
flags.DEFINE_string("precision", None, "Categorical draw: exact32 | float64 | float32.")
flags.DEFINE_float("t_on", None, "Loop: start of the remasking phase.")
flags.DEFINE_float("t_off", None, "Loop: end of the remasking phase.")
flags.DEFINE_float("alpha_on", None, "Loop: alpha held during the remasking phase.")
flags.DEFINE_float("t_switch", None, "Switch: time below which ReMDM is on.")
flags.DEFINE_string("switch_base", None, "Switch: cap | rescale | conf.")
flags.DEFINE_boolean("cache_unchanged", False, "Skip the denoiser when no token changed.")
flags.DEFINE_integer("num_samples", 8, "Number of samples.")
flags.DEFINE_integer("batch_size", 8, "Samples per batch.")
flags.DEFINE_integer("seed", 1, "Seed in [0, 2^32) (batch b uses fold_in(PRNGKey(seed), b)).")
flags.DEFINE_string("prompt", None, "Optional text prefix (with --tokenizer=ids: space-separated "
                    "ids); its tokens are kept fixed.")
flags.DEFINE_integer("num_strides", 0, "Semi-AR: extra windows S >= 0 (0 = off); samples are "
                     "L + S * stride_length tokens long.")
flags.DEFINE_integer("stride_length", None, "Semi-AR: new tokens per extra window, in [1, L - 1] "
                     "(default L // 2); needs --num_strides >= 1.")
flags.DEFINE_string("output", None, "JSONL output (written atomically). Default: "
                    "./samples/<preset>-<timestamp>.jsonl, under ~/remdm-jax/ instead when run "
                    "inside the source checkout ($REMDM_OUTPUT_DIR replaces the folder).")
flags.DEFINE_boolean("overwrite", False, "Replace an existing --output file.")
flags.DEFINE_boolean("progress", True, "Report denoiser steps within each batch on stderr.")
flags.DEFINE_integer("show", 3, "How many samples to print.")
flags.DEFINE_string("scorer", "shipped", "AR checkpoint for gen-PPL: 'shipped' (the project's "
                    "byte-level AR model, relative metric), a path, or 'none'.")
flags.DEFINE_boolean("mauve", False, "Also compute MAUVE against held-out text (needs the eval "
                     "extras and the training data config in the checkpoint metadata).")

_OVERRIDES = ("eta", "top_p", "temperature", "nucleus_rule", "precision", "t_on", "t_off",
              "alpha_on", "t_switch", "switch_base")


def default_output(preset: str, cwd: str | None = None) -> str:
  """<generation.output_root(cwd)>/samples/<preset>-<YYYYmmdd-HHMMSS>[-k].jsonl, never an
  existing file."""
  from remdm_jax.generation import output_root  # pylint: disable=g-import-not-at-top
  stem = os.path.join(output_root(cwd), "samples",
                      f"{preset}-{time.strftime('%Y%m%d-%H%M%S')}")
  path, k = stem + ".jsonl", 1
  while os.path.exists(path):
    path, k = f"{stem}-{k}.jsonl", k + 1
  return path


def check_output(path: str, overwrite: bool) -> str:
  """`fileio.check_output_path` for --output (imports no JAX)."""
  from remdm_jax.fileio import check_output_path
  return check_output_path(path, overwrite, "--output")


def run(argv) -> int:
  del argv
  # 1. Flags alone (before importing JAX).
  if FLAGS.num_samples < 1:
    raise ValueError(f"--num_samples={FLAGS.num_samples} must be >= 1")
  if FLAGS.batch_size < 1:
    raise ValueError(f"--batch_size={FLAGS.batch_size} must be >= 1")
  if FLAGS.steps is not None and FLAGS.steps < 1:
    raise ValueError(f"--steps={FLAGS.steps} must be >= 1 (omit it for T = the model length)")
  if not 0 <= FLAGS.seed < 2**32:
    raise ValueError(f"--seed={FLAGS.seed} must be in [0, 2^32)")
  if FLAGS.num_strides < 0:
    raise ValueError(f"--num_strides={FLAGS.num_strides} must be >= 0 (0 = no semi-AR)")
  if FLAGS.stride_length is not None and FLAGS.stride_length < 1:
    raise ValueError(f"--stride_length={FLAGS.stride_length} must be an int in [1, L - 1]")
  if FLAGS.stride_length is not None and FLAGS.num_strides == 0:
    raise ValueError(f"--stride_length={FLAGS.stride_length} needs --num_strides >= 1")
  if FLAGS.output is not None:
    check_output(FLAGS.output, FLAGS.overwrite)

  import jax

  from remdm_jax import distributed
  # several processes (`python -m remdm_jax.launch -n 2 -- sample.py ...`, README "Multi-host"):
  # every batch is split over all devices of all processes; process 0 writes and prints
  mesh = None
  if distributed.initialize_from_env():
    from remdm_jax import sharding as mesh_lib
    mesh = mesh_lib.make_mesh((-1, 1, 1))
    if min(FLAGS.batch_size, FLAGS.num_samples) % mesh.devices.size:
      raise ValueError(f"--batch_size={min(FLAGS.batch_size, FLAGS.num_samples)} must be "
                       f"divisible by the {mesh.devices.size} devices of all "
                       f"{jax.process_count()} processes")
  primary = jax.process_index() == 0
  from remdm_jax import generation
  from remdm_jax.text import sample_metrics as metrics_lib
  from remdm_jax.sampling import PRESETS, SamplerConfig

  if FLAGS.preset not in PRESETS:
    raise ValueError(f"--preset={FLAGS.preset!r} is not one of {tuple(PRESETS)}")
  if FLAGS.mauve:
    metrics_lib.check_mauve_available()
  out_path = check_output(FLAGS.output or default_output(FLAGS.preset), FLAGS.overwrite)

  # 2. Model, sampler, prompt, scorer and MAUVE references: all checked before sampling.
  path = FLAGS.checkpoint or generation.shipped_model_path("bible_byte_mdlm")
  runtime = {k: getattr(FLAGS, k) for k in ("compute_dtype", "attention_impl")
             if getattr(FLAGS, k) is not None}
  model = generation.load_model_for_flag("--checkpoint", path, FLAGS.tokenizer,
                                        mask_id=FLAGS.mask_id, **runtime)
  if not model.config.causal:  # (an AR model gets check_diffusion_model's own message)
    generation.check_model_use(model, "sample.py", kinds=("mdlm",), domains=("text", None))
  generation.check_diffusion_model(model)
  overrides = {k: getattr(FLAGS, k) for k in _OVERRIDES if getattr(FLAGS, k) is not None}
  if overrides.get("top_p") == 1.0:
    overrides["top_p"] = None
  cfg = SamplerConfig.preset(FLAGS.preset, num_steps=FLAGS.steps or model.seq_len,
                             cache_unchanged=FLAGS.cache_unchanged,
                             time_independent=not model.config.time_conditioning, **overrides)
  ignored = cfg.ignored_fields()
  for k, v in overrides.items():
    if k in ignored:
      raise ValueError(f"--{k}={v} does not apply to --preset={FLAGS.preset} (strategy "
                       f"{cfg.strategy}): {ignored[k]}")
  if FLAGS.prompt is not None:
    generation.encode_prefix(model.tokenizer, FLAGS.prompt, model.seq_len,
                             model.config.vocab_size)
  semi = {}
  if FLAGS.num_strides:
    from remdm_jax.sampling import semi_ar  # pylint: disable=g-import-not-at-top
    stride = FLAGS.stride_length if FLAGS.stride_length is not None else model.seq_len // 2
    try:
      semi_ar.check_semi_ar(model.seq_len, FLAGS.num_strides, stride)
    except ValueError as e:
      raise ValueError(f"--{e}") from None
    semi = dict(num_strides=FLAGS.num_strides, stride_length=stride,
                length=semi_ar.semi_ar_length(model.seq_len, FLAGS.num_strides, stride))
  has_text = model.tokenizer.name != "ids"

  scorer = None
  if FLAGS.scorer != "none":
    sp = generation.shipped_model_path("bible_byte_ar") if FLAGS.scorer == "shipped" else FLAGS.scorer
    scorer = generation.load_model_for_flag("--scorer", sp)
    if not scorer.config.causal:
      raise ValueError(f"--scorer={sp} is not an autoregressive (causal) model")
    if (scorer.tokenizer.name, scorer.tokenizer.vocab_size) != (model.tokenizer.name,
                                                                model.tokenizer.vocab_size):
      print(f"note: scorer {sp} uses tokenizer {scorer.tokenizer.name!r}, the model "
            f"{model.tokenizer.name!r}; gen-PPL skipped", file=sys.stderr)
      scorer = None
  refs, ref_name = None, ""
  if FLAGS.mauve:
    if not has_text:
      raise ValueError("--mauve needs a text tokenizer (--tokenizer=byte | gpt2 | tokenizer.json)")
    data_cfg = model.metadata.get("data")
    if not data_cfg:
      raise ValueError(f"--mauve: checkpoint {model.path} records no training data config")
    refs, ref_name = metrics_lib.heldout_texts(data_cfg, FLAGS.num_samples)

  if cfg.precision == "float64":
    jax.config.update("jax_enable_x64", True)
  if primary:
    print(f"model: {model.path} ({model.config.vocab_size} vocab, L={model.seq_len}, tokenizer "
        f"{model.tokenizer.name}); sampler: {cfg.strategy}, T={cfg.num_steps}, top_p={cfg.top_p}, "
        f"eta={cfg.eta}, precision={cfg.precision}"
        + (f"; semi-AR: {_plural(semi['num_strides'], 'stride')} of {semi['stride_length']} "
           f"-> {semi['length']} tokens" if semi else ""), file=sys.stderr)

  # 3. Sample, write, then score. Ctrl-C keeps the finished batches; a failed write keeps the
  # samples in a rescue file.
  from remdm_jax.interrupt import (EXIT_INTERRUPTED, Interrupted, hard_exit, note_saved,
                                  signal_received)

  def records_of(tokens):
    texts = [model.tokenizer.decode(t.tolist()) for t in tokens]
    settings = generation.sampler_settings(cfg)
    return texts, [dict(index=i, tokens=tok.tolist(), sampler=settings, seed=FLAGS.seed,
                        checkpoint=model.path, tokenizer=model.tokenizer.name,
                        prompt=FLAGS.prompt, **semi, **({"text": txt} if has_text else {}))
                   for i, (txt, tok) in enumerate(zip(texts, tokens))]

  def write(records):
    out, failure = generation.write_jsonl_or_rescue(out_path, records)
    if failure:
      raise ValueError(f"{failure}; the {len(records)} samples were written to {out} instead")
    return out

  try:
    tokens, stats = generation.generate(model, cfg, num_samples=FLAGS.num_samples,
                                        batch_size=FLAGS.batch_size, seed=FLAGS.seed,
                                        prompt=FLAGS.prompt, progress=FLAGS.progress and primary,
                                        num_strides=semi.get("num_strides", 0),
                                        stride_length=semi.get("stride_length"), mesh=mesh)
  except Interrupted as e:  # Ctrl-C or SIGTERM (the launcher forwards Ctrl-C as SIGTERM)
    done = e.partial
    if not len(done):
      where = "no batch had finished; nothing written"
    elif primary:
      where = f"wrote the {len(done)} finished samples to {write(records_of(done)[1])}"
    else:
      where = "process 0 writes the finished samples"
    by = " (SIGTERM)" if signal_received() == "SIGTERM" else ""
    print(f"sample.py: {e}{by}; {where}", file=sys.stderr)
    hard_exit(EXIT_INTERRUPTED)
  texts, records = records_of(tokens)
  # every process computes the (identical) metrics, so that all reach JAX's exit barrier together
  if primary:
    out = write(records)
    print(f"wrote {len(records)} samples to {out}", file=sys.stderr)
    note_saved(f"the {len(records)} samples are in {out}; metrics not computed")
  else:
    note_saved("process 0 wrote the samples; metrics not computed")
  metrics = metrics_lib.sample_metrics(tokens, scorer=scorer, texts=texts, mauve_reference=refs,
                                       reference_name=ref_name)
  if not primary:
    return 0
  for i, txt in enumerate(texts[:FLAGS.show]):
    print(f"--- sample {i} ---\n{txt}")
  print("--- metrics ---")
  print(f"samples: {len(texts)} -> {out}")
  print(f"denoiser calls per sample: {stats['nfe']} (spent {stats['nfe_spent']:.0f}); "
        f"{stats['seconds']:.1f}s ({stats['samples_per_s']:.2f} samples/s)")
  for k, v in metrics.items():
    print(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}")
  return 0


def _plural(n: int, word: str) -> str:
  return f"{n} {word}" + ("" if n == 1 else "s")


def _parse_flags(argv):
  """absl flag parsing with the documented one-line error (exit 2) instead of absl's FATAL
  message and exit 1 (e.g. --num_strides=abc, an unknown flag)."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    text = str(e).strip()
    print(f"sample.py: error: {text.splitlines()[0] if text else type(e).__name__}",
          file=sys.stderr)
    sys.exit(2)


def main(argv):
  """run(argv) under `interrupt.run_main`: Ctrl-C / SIGTERM anywhere is one line (what is saved)
  and exit 130 / 143; bad input one `error:` line and exit 2."""
  from remdm_jax import interrupt
  return interrupt.run_main(_main, argv, prog="sample.py")


def _main(argv):
  logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
  try:
    return run(argv)
  except (ValueError, FileNotFoundError, ImportError, OSError) as e:
    text = str(e).strip()
    print(f"sample.py: error: {text.splitlines()[0] if text else type(e).__name__}",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
