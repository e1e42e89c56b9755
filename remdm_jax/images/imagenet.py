"""Class-conditional ImageNet 256 generation with the public MaskGIT model (SPEC_DOMAINS §I.1-2).

The pipeline of the reference fork's `gen_imgs.py` (yair-schiff/maskgit), on our ports:

  labels -> [1024 + label, MASK x 256] -> decoding strategy (T forward passes of the MaskGIT
  transformer, logits sliced to the 1024 codes) -> 16 x 16 codes -> VQGAN decoder -> clip to
  [0, 1] -> (x * 255).astype(uint8) -> <output_dir>/images/<index:06d>.png (+ labels/<index>.txt)

and finally <output_dir>/images.npz with `arr_0` (uint8 [N, 256, 256, 3], the ADM / guided-diffusion
evaluator's input) and `labels` (int32 [N]), streamed image by image (no N x 256 x 256 x 3 array is
held in memory). Every file is written atomically.

Randomness follows `gen_imgs.py`: key = PRNGKey(seed + start_index); per batch
`key, label_key = split(key)`, labels = randint(label_key, (B, 1), 0, num_classes) (unless
--class_labels), `key, sample_key = split(key)`. The chain is advanced for skipped batches too, so a
resumed run writes exactly the images an uninterrupted run writes (the reference does not advance
it on a skip). A batch is skipped when all its PNGs and label files exist.

Sharding: a ("data", "fsdp", "tensor") mesh over all devices; both networks' params are replicated,
the batch is split over the data axes (batch_size must be a multiple of the device count). One
compiled program (decode + VQGAN) per run.

Usage (the paper's ReMDM row at T = 64, SPEC_DOMAINS §I.2):

  python -m remdm_jax.images.imagenet \
      --transformer_ckpt=maskgit_imagenet256_checkpoint \
      --vqgan_ckpt=tokenizer_imagenet256_checkpoint \
      --decoding_strategy=remdm_rescale --remdm_eta=0.05 --sampling_temperature=0.8 \
      --num_iter=64 --mask_scheduling_method=uniform \
      --num_images=50000 --batch_size=64 --seed=42 --output_dir=out/remdm_rescale_T64

Bad input (missing checkpoint, wrong shapes, a class label out of range, an unknown strategy...)
prints one line `error: ...` and exits 2 before anything is written.
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import re
import sys
import time
import zipfile
from typing import Any, Callable

import numpy as np

STRATEGIES = ("maskgit", "mdlm", "remdm_rescale", "remdm_cap", "remdm_conf", "remdm_loop", "fb",
              "dfm")
# Testing only: one forward pass, every masked position set to its argmax code. NOT a sampler of
# the model; it lets the pipeline (checkpoints -> tokens -> VQGAN -> PNG/npz, resume, sharding)
# run end to end without the decoding strategies of `remdm_jax.images.decode`.
PLACEHOLDER = "placeholder_argmax"
_SCHEDULE_RE = re.compile(r"uniform|cosine|log|exp|pow\d+(\.\d+)?")


@dataclasses.dataclass(frozen=True)
class DecodeOptions:
  """What the decoding strategy needs (the gen_imgs.py flags of SPEC_DOMAINS §I.1)."""
  strategy: str
  num_iter: int
  mask_scheduling_method: str = "uniform"
  sampling_temperature: float = 1.0
  sampling_temperature_annealing: bool = False
  remdm_eta: float = 0.0
  choice_temperature: float = 4.5
  fork_compat: bool = False


# ---------------------------------------------------------------------------------------------
# The decoding-strategy adapter: the ONLY place that calls remdm_jax.images.decode.


def build_sampler(tokens_to_logits: Callable, opts: DecodeOptions, *, codebook_size: int,
                  mask_id: int, seq_len: int) -> Callable:
  """-> sample(params, input_tokens int32 [B, L], key) -> tokens int32 [B, L] (class token at
  position 0 kept, every image token a code in [0, codebook_size)).

  tokens_to_logits(params, ids [B, L]) -> logits [B, L, codebook_size] float32.
  """
  if opts.strategy == PLACEHOLDER:
    return _placeholder_argmax_sampler(tokens_to_logits, mask_id)
  try:
    from remdm_jax.images import decode
  except ImportError as e:
    raise ImportError(f"--decoding_strategy={opts.strategy} needs remdm_jax.images.decode "
                      f"(the image decoding strategies), which is not installed: {e}") from None
  cfg = decode.ImageSamplerConfig(
    strategy=opts.strategy, num_steps=opts.num_iter, mask_schedule=opts.mask_scheduling_method,
    temperature=opts.sampling_temperature,
    temperature_annealing=opts.sampling_temperature_annealing,
    eta=(opts.remdm_eta or None) if opts.strategy.startswith("remdm") else None,  # 0: default
    choice_temperature=opts.choice_temperature, fork_compat=opts.fork_compat)
  sampler = decode.make_image_sampler(lambda p, ids, t: tokens_to_logits(p, ids), cfg,
                                      num_tokens=seq_len - 1, codebook_size=codebook_size,
                                      mask_id=mask_id, class_token=True,
                                      class_offset=codebook_size)

  def sample(params, input_tokens, key):
    labels = input_tokens[:, 0] - codebook_size  # class token = codebook_size + label
    codes = sampler(params, key, labels=labels)
    import jax.numpy as jnp
    return jnp.concatenate([input_tokens[:, :1], codes.astype(jnp.int32)], axis=1)

  return sample


def _placeholder_argmax_sampler(tokens_to_logits: Callable, mask_id: int) -> Callable:
  """TESTING PLACEHOLDER, not a decoding strategy: one forward pass, masked positions <- argmax."""
  import jax.numpy as jnp

  def sample(params, input_tokens, key):
    del key
    logits = tokens_to_logits(params, input_tokens)
    best = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    masked = (input_tokens == mask_id) | (input_tokens < 0)
    return jnp.where(masked, best, input_tokens)

  return sample


# ---------------------------------------------------------------------------------------------
# Output files.


def image_path(output_dir: str, index: int) -> str:
  return os.path.join(output_dir, "images", f"{index:06d}.png")


def label_path(output_dir: str, index: int) -> str:
  return os.path.join(output_dir, "labels", f"{index:06d}.txt")


def _write_png(path: str, image_u8: np.ndarray) -> None:
  from PIL import Image

  from remdm_jax.fileio import atomic_open
  buf = io.BytesIO()
  Image.fromarray(image_u8).save(buf, format="PNG")
  with atomic_open(path, "wb") as f:
    f.write(buf.getvalue())


def _read_png(path: str) -> np.ndarray:
  from PIL import Image
  with Image.open(path) as im:
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _read_label(path: str) -> int:
  with open(path) as f:
    return int(f.read())


def write_npz_streaming(path: str, image_paths: list[str], labels: np.ndarray,
                        image_shape: tuple[int, int, int]) -> None:
  """images.npz with arr_0 uint8 [N, H, W, 3] (read PNG by PNG) and labels int32 [N]; atomic.

  The result is a standard npz (`np.load(path)["arr_0"]`), written as zip members whose .npy
  header is followed by the rows, so memory stays at one image."""
  from remdm_jax.fileio import atomic_open
  n = len(image_paths)
  with atomic_open(path, "wb") as f:
    with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
      with zf.open("arr_0.npy", "w", force_zip64=True) as member:
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)),
                  "fortran_order": False, "shape": (n,) + tuple(image_shape)}
        np.lib.format.write_array_header_1_0(member, header)
        for p in image_paths:
          img = _read_png(p)
          if img.shape != tuple(image_shape):
            raise ValueError(f"{p}: image shape {img.shape}, expected {tuple(image_shape)}")
          member.write(np.ascontiguousarray(img).tobytes())
      with zf.open("labels.npy", "w") as member:
        np.lib.format.write_array(member, np.asarray(labels, np.int32))


# ---------------------------------------------------------------------------------------------
# The command.


def parse_class_labels(text: str | None) -> list[int] | None:
  """None / "" -> None (random labels); "207" or "1,2,3" -> ints (cycled over the images)."""
  if text is None or text.strip() == "":
    return None
  try:
    return [int(x) for x in text.split(",")]
  except ValueError:
    raise ValueError(f"--class_labels={text!r} must be comma-separated integers") from None


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m remdm_jax.images.imagenet",
                              description=__doc__.split("\n\n")[0])
  p.add_argument("--transformer_ckpt", required=True,
                 help="official maskgit_imagenet256_checkpoint")
  p.add_argument("--vqgan_ckpt", required=True, help="official tokenizer_imagenet256_checkpoint")
  p.add_argument("--decoding_strategy", default="maskgit",
                 help=f"one of {', '.join(STRATEGIES)}")
  p.add_argument("--num_iter", type=int, default=16, help="decoding steps T")
  p.add_argument("--mask_scheduling_method", default="uniform",
                 help="uniform | cosine | powK | log | exp (the paper: uniform for every method)")
  p.add_argument("--sampling_temperature", type=float, default=1.0)
  p.add_argument("--sampling_temperature_annealing", default="False", choices=("True", "False"))
  p.add_argument("--remdm_eta", type=float, default=None,
                  help="ReMDM eta (remdm_* strategies; default: the strategy's)")
  p.add_argument("--choice_temperature", type=float, default=None,
                 help="MaskGIT ranking noise (maskgit only; default 4.5)")
  p.add_argument("--fork_compat", action="store_true",
                 help="mdlm / remdm_*: the reference fork's posteriors and quirks (codebook entry "
                      "1023 as the mask slot, stale conf weights; SPEC_DOMAINS §I.1)")
  p.add_argument("--num_images", type=int, default=50000)
  p.add_argument("--batch_size", type=int, default=64)
  p.add_argument("--seed", type=int, default=42)
  p.add_argument("--start_index", type=int, default=0,
                 help="index of the first image (gen_imgs.py --output_start_index); the PRNG key "
                      "is PRNGKey(seed + start_index)")
  p.add_argument("--class_labels", default=None,
                 help="comma-separated class ids cycled over the images (default: random per "
                      "image as the reference)")
  p.add_argument("--output_dir", required=True)
  p.add_argument("--compute_dtype", default="float32", choices=("float32", "bfloat16"),
                 help="transformer matmul dtype (float32 = the original numerics)")
  p.add_argument("--no_npz", action="store_true", help="write the PNGs only")
  return p


def _validate(args) -> DecodeOptions:
  if args.decoding_strategy not in STRATEGIES + (PLACEHOLDER,):
    raise ValueError(f"--decoding_strategy={args.decoding_strategy!r} is not one of {STRATEGIES}")
  for name in ("num_iter", "num_images", "batch_size"):
    if getattr(args, name) < 1:
      raise ValueError(f"--{name}={getattr(args, name)} must be >= 1")
  if args.start_index < 0:
    raise ValueError(f"--start_index={args.start_index} must be >= 0")
  if not _SCHEDULE_RE.fullmatch(args.mask_scheduling_method):
    raise ValueError(f"--mask_scheduling_method={args.mask_scheduling_method!r} is not one of "
                     "uniform, cosine, powK, log, exp")
  if not args.sampling_temperature > 0:
    raise ValueError(f"--sampling_temperature={args.sampling_temperature} must be > 0")
  from remdm_jax.checks import check_seed
  check_seed(args.seed, "--seed")
  check_seed(args.seed + args.start_index, "--seed + --start_index")
  strategy = args.decoding_strategy
  if args.remdm_eta is not None and not strategy.startswith("remdm"):
    raise ValueError(f"--remdm_eta={args.remdm_eta:g} does not apply to --decoding_strategy="
                     f"{strategy} (only the remdm_* strategies remask)")
  if args.choice_temperature is not None and strategy != "maskgit":
    raise ValueError(f"--choice_temperature={args.choice_temperature:g} applies only to "
                     f"--decoding_strategy=maskgit, not {strategy}")
  remdm_eta = 0.0 if args.remdm_eta is None else args.remdm_eta
  choice_temperature = 4.5 if args.choice_temperature is None else args.choice_temperature
  if not remdm_eta >= 0:
    raise ValueError(f"--remdm_eta={args.remdm_eta} must be >= 0")
  out = os.path.abspath(os.path.expanduser(args.output_dir))
  if os.path.lexists(out) and not os.path.isdir(out):
    raise ValueError(f"--output_dir={out} exists and is not a folder")
  from remdm_jax.fileio import check_writable_folder
  check_writable_folder(out, "--output_dir", out)
  for name in ("transformer_ckpt", "vqgan_ckpt"):
    if not os.path.exists(getattr(args, name)):
      raise FileNotFoundError(f"--{name}: checkpoint not found: {getattr(args, name)}")
  return DecodeOptions(strategy=args.decoding_strategy, num_iter=args.num_iter,
                       mask_scheduling_method=args.mask_scheduling_method,
                       sampling_temperature=args.sampling_temperature,
                       sampling_temperature_annealing=args.sampling_temperature_annealing == "True",
                       remdm_eta=remdm_eta, choice_temperature=choice_temperature,
                       fork_compat=args.fork_compat)


def generate(args, opts: DecodeOptions, log=print) -> dict[str, Any]:
  """Runs the pipeline for parsed, validated args; returns a summary dict."""
  import jax
  import jax.numpy as jnp

  from remdm_jax.fileio import atomic_open
  from remdm_jax.images import convert
  from remdm_jax.interrupt import Interrupted, call_interruptibly, note_saved
  from remdm_jax.images import maskgit as mg
  from remdm_jax.images import vqgan as vq
  from remdm_jax import sharding as mesh_lib

  vcfg, vgraph, vparams = convert.load_vqgan_decoder(args.vqgan_ckpt)
  tcfg, tgraph, tparams = convert.load_maskgit_transformer(
    args.transformer_ckpt, codebook_size=vcfg.codebook_size, compute_dtype=args.compute_dtype)
  side = int(round(tcfg.num_image_tokens ** 0.5))
  if side * side != tcfg.num_image_tokens:
    raise ValueError(f"transformer has {tcfg.num_image_tokens} image tokens, not a square grid")
  labels_given = parse_class_labels(args.class_labels)
  if labels_given is not None:
    bad = [c for c in labels_given if not 0 <= c < tcfg.num_classes]
    if bad:
      raise ValueError(f"--class_labels: {bad} out of range [0, {tcfg.num_classes})")

  mesh = mesh_lib.make_mesh((-1, 1, 1))
  div = mesh_lib.batch_divisor(mesh)
  if args.batch_size % div:
    raise ValueError(f"--batch_size={args.batch_size} is not a multiple of the {div} devices")
  rep, bsh = mesh_lib.replicated(mesh), mesh_lib.batch_sharding(mesh)
  tparams = jax.device_put(tparams, rep)
  vparams = jax.device_put(vparams, rep)

  t2l = mg.make_tokens_to_logits(tgraph, tcfg)
  sample = build_sampler(t2l, opts, codebook_size=tcfg.codebook_size,
                         mask_id=tcfg.mask_token_id, seq_len=tcfg.seq_len)
  decode_images = vq.make_decode_fn(vgraph)
  bsz = args.batch_size

  @jax.jit
  def run_batch(tp, vp, input_tokens, key):
    tokens = sample(tp, input_tokens, key)
    codes = tokens[:, 1:].reshape(bsz, side, side)
    images = decode_images(vp, codes)
    return tokens, (jnp.clip(images, 0.0, 1.0) * 255).astype(jnp.uint8)  # gen_imgs.py's writer

  n, start = args.num_images, args.start_index
  num_batches = -(-n // bsz)
  key = jax.random.PRNGKey(args.seed + start)
  written = skipped = 0
  t0 = time.time()
  for b in range(num_batches):
    key, label_key = jax.random.split(key)
    key, sample_key = jax.random.split(key)
    first = start + b * bsz
    indices = [first + j for j in range(bsz) if b * bsz + j < n]
    if all(os.path.exists(image_path(args.output_dir, i)) and
           os.path.exists(label_path(args.output_dir, i)) for i in indices):
      skipped += 1
      continue
    if labels_given is None:
      labels = np.asarray(jax.random.randint(label_key, (bsz, 1), 0, tcfg.num_classes))[:, 0]
    else:
      labels = np.asarray([labels_given[(b * bsz + j) % len(labels_given)] for j in range(bsz)])
    input_tokens = np.full((bsz, tcfg.seq_len), tcfg.mask_token_id, np.int32)
    input_tokens[:, 0] = tcfg.codebook_size + labels
    try:
      tokens, images = call_interruptibly(lambda: jax.device_get(run_batch(
          tparams, vparams, jax.device_put(input_tokens, bsh), sample_key)))
    except KeyboardInterrupt:
      raise Interrupted(None, f"interrupted in batch {b + 1}/{num_batches}; the finished "
                              f"images are in {args.output_dir} (the same command resumes "
                              "after them)") from None
    tokens, images = np.asarray(tokens), np.asarray(images)
    if (tokens[:, 0] != input_tokens[:, 0]).any() or not (
        (tokens[:, 1:] >= 0) & (tokens[:, 1:] < tcfg.codebook_size)).all():
      raise RuntimeError("the decoding strategy returned a changed class token or a non-code id")
    for j, i in enumerate(indices):
      _write_png(image_path(args.output_dir, i), images[j])
      with atomic_open(label_path(args.output_dir, i), "w") as f:
        f.write(f"{int(labels[j])}")
    written += 1
    note_saved(f"the finished images are in {args.output_dir} (the same command resumes after "
               "them)")
    log(f"batch {b + 1}/{num_batches}: images {indices[0]:06d}-{indices[-1]:06d} "
        f"({time.time() - t0:.1f}s)")

  summary = dict(batches_written=written, batches_skipped=skipped, num_images=n,
                 seconds=round(time.time() - t0, 3))
  if not args.no_npz:
    paths = [image_path(args.output_dir, start + i) for i in range(n)]
    labels_all = np.asarray([_read_label(label_path(args.output_dir, start + i))
                             for i in range(n)], np.int32)
    hw = side * vcfg.upsample_factor
    write_npz_streaming(os.path.join(args.output_dir, "images.npz"), paths, labels_all,
                        (hw, hw, 3))
    summary["npz"] = os.path.join(args.output_dir, "images.npz")
  with atomic_open(os.path.join(args.output_dir, "generation.json"), "w") as f:
    json.dump({"args": vars(args), "transformer": tcfg.to_dict(), "vqgan": vcfg.to_dict(),
               **summary}, f, indent=1, sort_keys=True)
  return summary


def main(argv: list[str] | None = None) -> int:
  """CLI: 0; 2 after one `error:` line (bad input, before any work); 130 / 143 after Ctrl-C /
  SIGTERM (one line; `interrupt.run_main`)."""
  from remdm_jax.interrupt import run_main
  return run_main(_main, argv, prog="images.imagenet")


def _main(argv: list[str] | None = None) -> int:
  from remdm_jax.interrupt import EXIT_INTERRUPTED, Interrupted, hard_exit
  args = _parser().parse_args(argv)
  try:
    opts = _validate(args)
    summary = generate(args, opts)
  except (ValueError, FileNotFoundError, ImportError, OSError) as e:
    text = " ".join(str(e).split()) or type(e).__name__
    print(f"error: {text}", file=sys.stderr)
    return 2
  except Interrupted as e:
    print(str(e), file=sys.stderr)
    hard_exit(EXIT_INTERRUPTED)
  print(json.dumps(summary))
  return 0


if __name__ == "__main__":
  sys.exit(main())
