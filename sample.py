"""Draw samples from a masked diffusion LM with MDLM / ReMDM samplers.

With no flags: ReMDM-loop (the paper's T >= 1024 setting, SPEC §5) on the model that ships with the
project (King James Bible bytes, L = 128, T = L), printing samples and metrics:

  python sample.py

Paper settings on a converted official MDLM OWT checkpoint (GPU):

  python -m remdm_jax.models.convert --input mdlm.ckpt --output /ckpt/mdlm_owt
  python sample.py --checkpoint=/ckpt/mdlm_owt --preset=remdm_loop --steps=1024 \
      --num_samples=5000 --batch_size=16 --seed=1 --precision=float64 --output=remdm_loop.jsonl

Presets: mdlm, remdm_cap, remdm_rescale, remdm_conf, remdm_switch, remdm_loop, fb, dfm (top-p 0.9
and the SPEC §5 script defaults); any field can be overridden with the flags below.
"""
from __future__ import annotations

import sys

from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "Params checkpoint (or training workdir). "
                    "Default: the shipped bible_byte MDLM model.")
flags.DEFINE_string("tokenizer", None, "Tokenizer name (byte | gpt2); default from the checkpoint.")
flags.DEFINE_string("compute_dtype", None, "Override the model's compute dtype (bfloat16 | float32).")
flags.DEFINE_string("attention_impl", None, "Override the attention kernel (xla | cudnn on GPU).")
flags.DEFINE_string("preset", "remdm_loop", "Sampler preset (SPEC §5).")
flags.DEFINE_integer("steps", None, "Number of sampling steps T (default: the model length L).")
flags.DEFINE_float("eta", None, "ReMDM eta (cap / rescale / loop / switch).")
flags.DEFINE_float("top_p", None, "Nucleus mass in (0, 1]; 1 disables (preset: 0.9).")
flags.DEFINE_string("nucleus_rule", None, "reference | hf")
flags.DEFINE_string("precision", None, "Categorical draw: exact32 | float64 | float32.")
flags.DEFINE_float("t_on", None, "Loop: start of the remasking phase.")
flags.DEFINE_float("t_off", None, "Loop: end of the remasking phase.")
flags.DEFINE_float("alpha_on", None, "Loop: alpha held during the remasking phase.")
flags.DEFINE_float("t_switch", None, "Switch: time below which ReMDM is on.")
flags.DEFINE_string("switch_base", None, "Switch: cap | rescale | conf.")
flags.DEFINE_boolean("cache_unchanged", False, "Skip the denoiser when no token changed.")
flags.DEFINE_integer("num_samples", 8, "Number of samples.")
flags.DEFINE_integer("batch_size", 8, "Samples per batch.")
flags.DEFINE_integer("seed", 1, "Random seed (batch b uses fold_in(PRNGKey(seed), b)).")
flags.DEFINE_string("prompt", None, "Optional text prefix; its tokens are kept fixed.")
flags.DEFINE_string("output", "samples.jsonl", "JSONL output (written atomically).")
flags.DEFINE_integer("show", 3, "How many samples to print.")
flags.DEFINE_string("scorer", "shipped", "AR checkpoint for gen-PPL: 'shipped' (the project's "
                    "byte-level AR model, relative metric), a path, or 'none'.")
flags.DEFINE_boolean("mauve", False, "Also compute MAUVE against held-out text (needs the eval "
                     "extras and the training data config in the checkpoint metadata).")

_OVERRIDES = ("eta", "top_p", "nucleus_rule", "precision", "t_on", "t_off", "alpha_on",
              "t_switch", "switch_base")


def run(argv) -> int:
  del argv
  import jax

  from remdm_jax import generation
  from remdm_jax.eval.sample_metrics import heldout_texts, sample_metrics
  from remdm_jax.sampling import PRESETS, SamplerConfig

  if FLAGS.preset not in PRESETS:
    raise ValueError(f"--preset={FLAGS.preset!r} is not one of {tuple(PRESETS)}")
  if FLAGS.num_samples < 1:
    raise ValueError(f"--num_samples={FLAGS.num_samples} must be >= 1")
  if FLAGS.batch_size < 1:
    raise ValueError(f"--batch_size={FLAGS.batch_size} must be >= 1")
  path = FLAGS.checkpoint or generation.shipped_model_path("bible_byte_mdlm")
  runtime = {k: getattr(FLAGS, k) for k in ("compute_dtype", "attention_impl")
             if getattr(FLAGS, k) is not None}
  model = generation.load_model(path, FLAGS.tokenizer, **runtime)
  overrides = {k: getattr(FLAGS, k) for k in _OVERRIDES if getattr(FLAGS, k) is not None}
  if overrides.get("top_p") == 1.0:
    overrides["top_p"] = None
  cfg = SamplerConfig.preset(FLAGS.preset, num_steps=FLAGS.steps or model.seq_len,
                             cache_unchanged=FLAGS.cache_unchanged,
                             time_independent=not model.config.time_conditioning, **overrides)
  if cfg.precision == "float64":
    jax.config.update("jax_enable_x64", True)
  print(f"model: {model.path} ({model.config.vocab_size} vocab, L={model.seq_len}); sampler: "
        f"{cfg.strategy}, T={cfg.num_steps}, top_p={cfg.top_p}, eta={cfg.eta}, "
        f"precision={cfg.precision}", file=sys.stderr)
  tokens, stats = generation.generate(model, cfg, num_samples=FLAGS.num_samples,
                                      batch_size=FLAGS.batch_size, seed=FLAGS.seed,
                                      prompt=FLAGS.prompt)
  texts = [model.tokenizer.decode(t.tolist()) for t in tokens]

  scorer = None
  if FLAGS.scorer != "none":
    sp = generation.shipped_model_path("bible_byte_ar") if FLAGS.scorer == "shipped" else FLAGS.scorer
    scorer = generation.load_model(sp)
    if scorer.tokenizer.vocab_size != model.tokenizer.vocab_size:
      print(f"note: scorer {sp} uses another tokenizer; gen-PPL skipped", file=sys.stderr)
      scorer = None
  refs, ref_name = None, ""
  if FLAGS.mauve:
    data_cfg = model.metadata.get("data")
    if not data_cfg:
      raise ValueError(f"--mauve: checkpoint {model.path} records no training data config")
    refs, ref_name = heldout_texts(data_cfg, FLAGS.num_samples)
  metrics = sample_metrics(tokens, scorer=scorer, texts=texts, mauve_reference=refs,
                           reference_name=ref_name)

  settings = generation.sampler_settings(cfg)
  records = [dict(index=i, text=txt, tokens=tok.tolist(), sampler=settings, seed=FLAGS.seed,
                  checkpoint=model.path, prompt=FLAGS.prompt)
             for i, (txt, tok) in enumerate(zip(texts, tokens))]
  out = generation.write_jsonl_atomic(FLAGS.output, records)

  for i, txt in enumerate(texts[:FLAGS.show]):
    print(f"--- sample {i} ---\n{txt}")
  print("--- metrics ---")
  print(f"samples: {len(texts)} -> {out}")
  print(f"denoiser calls per sample: {stats['nfe']} (spent {stats['nfe_spent']:.0f}); "
        f"{stats['seconds']:.1f}s ({stats['samples_per_s']:.2f} samples/s)")
  for k, v in metrics.items():
    print(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}")
  return 0


def main(argv):
  logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
  try:
    return run(argv)
  except (ValueError, FileNotFoundError, ImportError) as e:
    print(f"sample.py: error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  app.run(main)
