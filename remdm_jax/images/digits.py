"""The offline image demonstration: scikit-learn's 8x8 digits as class-conditional token sequences
(SPEC_DOMAINS §I.3 "digits"; issue 11 item 4).

Data: `sklearn.datasets.load_digits` (1,797 images, 8x8, grey levels 0..16, 10 classes; ships with
scikit-learn, no download). A stratified split (`test_fraction` 0.2, seed 0) gives 1,437 training
and 360 held-out images.

Tokens (V = 28, L = 65): position 0 = class token `CLASS_OFFSET + label` (17..26), positions 1..64
the pixels in row-major order as their grey level 0..16 (the 17-entry "codebook"), mask id 27.
The model is the library's DiT trained with the MDLM loss (`configs/digits.py`); decoding uses
`remdm_jax.images.decode.make_image_sampler` (codebook 17, class_offset 17, mask 27).

The judge ("digits-Inception"): an MLP 64 -> 256 -> 128 -> 10 (ReLU) on pixels / 16, trained here on
the training split. Its 128-d penultimate features give **digits-FID** (Fréchet distance to the
features of all 1,797 real digits, scipy `sqrtm`), its softmax gives **digits-IS**
(exp E_x KL(p(y|x) || p(y))) and the **class accuracy** of class-conditional samples.

CLI:
  python -m remdm_jax.images.digits train-model --config=configs/digits.py --out=DIR
  python -m remdm_jax.images.digits train-classifier --out=DIR
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from remdm_jax.fileio import atomic_open

LEVELS = 17
NUM_CLASSES = 10
NUM_PIXELS = 64
CLASS_OFFSET = LEVELS          # class token = 17 + label
MASK_ID = LEVELS + NUM_CLASSES  # 27
VOCAB = MASK_ID + 1            # 28
SEQ_LEN = NUM_PIXELS + 1       # 65
CLASSIFIER_SIZES = (64, 256, 128, 10)

ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets",
                      "models")
MODEL_PATH = os.path.join(ASSETS, "digits_mdlm")
CLASSIFIER_PATH = os.path.join(ASSETS, "digits_classifier")


# ------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------

def load_digits_split(split: str = "all", test_fraction: float = 0.2, seed: int = 0):
  """Pixels int32 [n, 64] in 0..16 and labels int32 [n] of the sklearn digits.

  split: "all" (1,797), "train" or "test" (stratified `train_test_split`, `test_fraction`, `seed`).
  Raises ValueError for another split or a fraction outside (0, 1)."""
  from sklearn.datasets import load_digits
  if split not in ("all", "train", "test"):
    raise ValueError(f"split={split!r} must be 'all', 'train' or 'test'")
  if not 0.0 < test_fraction < 1.0:
    raise ValueError(f"test_fraction={test_fraction!r} must lie in (0, 1)")
  d = load_digits()
  x = np.asarray(d.data, np.int32)
  y = np.asarray(d.target, np.int32)
  if split == "all":
    return x, y
  from sklearn.model_selection import train_test_split
  xtr, xte, ytr, yte = train_test_split(x, y, test_size=test_fraction, random_state=seed,
                                        stratify=y)
  return (xtr, ytr) if split == "train" else (xte, yte)


def to_sequences(pixels, labels) -> np.ndarray:
  """[class token, 64 pixels] int32 [n, 65]."""
  pixels = np.asarray(pixels, np.int32)
  labels = np.asarray(labels, np.int32)
  if pixels.ndim != 2 or pixels.shape[1] != NUM_PIXELS or pixels.min() < 0 or pixels.max() >= LEVELS:
    raise ValueError(f"pixels must be int [n, 64] in 0..16, got shape {pixels.shape}")
  if labels.shape != (pixels.shape[0],) or labels.min() < 0 or labels.max() >= NUM_CLASSES:
    raise ValueError(f"labels must be int [n] in 0..9, got shape {labels.shape}")
  return np.concatenate([CLASS_OFFSET + labels[:, None], pixels], axis=1).astype(np.int32)


# ------------------------------------------------------------------------------------------------
# the class-conditional MDLM (existing DiT + trainer + loss)
# ------------------------------------------------------------------------------------------------

def load_config(spec: str):
  """'configs/digits.py[:preset]' -> ml_collections ConfigDict (FileNotFoundError / ValueError)."""
  import importlib.util
  path, _, preset = spec.partition(":")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config file {path!r} does not exist")
  mod_spec = importlib.util.spec_from_file_location("_digits_config", path)
  mod = importlib.util.module_from_spec(mod_spec)
  mod_spec.loader.exec_module(mod)
  return mod.get_config(preset or None)


def experiment_config(config):
  """ml_collections config (configs/digits.py) -> (ExperimentConfig, digits section dict)."""
  from remdm_jax.config_utils import _to_plain, dataclass_from_dict
  from remdm_jax.diffusion.losses import LossConfig
  from remdm_jax.models.dit import DiTConfig
  from remdm_jax.sharding import MeshConfig
  from remdm_jax.training.trainer import ExperimentConfig, OptimConfig, TrainConfig
  raw = dict(_to_plain(config))
  model = dataclass_from_dict(DiTConfig, raw["model"], "model")
  if model.vocab_size != VOCAB or model.max_seq_len < SEQ_LEN:
    raise ValueError(f"model.vocab_size={model.vocab_size} must be {VOCAB} and model.max_seq_len="
                     f"{model.max_seq_len} >= {SEQ_LEN} for digits")
  loss = dataclass_from_dict(LossConfig, raw["loss"], "loss")
  if loss.mask_id != MASK_ID:
    raise ValueError(f"loss.mask_id={loss.mask_id} must be {MASK_ID} for digits")
  exp = ExperimentConfig(model=model, data=None, loss=loss,
                         optim=dataclass_from_dict(OptimConfig, raw.get("optim"), "optim"),
                         train=dataclass_from_dict(TrainConfig, raw.get("train"), "train"),
                         mesh=MeshConfig(shape=(1, 1, 1)))
  digits = {"batch_size": 64, "test_fraction": 0.2, "split_seed": 0, "class_visible": True}
  for k, v in dict(raw.get("digits") or {}).items():
    if k not in digits:
      raise ValueError(f"unknown config field 'digits.{k}'; valid: {', '.join(digits)}")
    digits[k] = v
  return exp, digits


def _class_visible_trainer():
  from remdm_jax.training.trainer import Trainer

  class ClassVisibleTrainer(Trainer):
    """The library's Trainer whose denoiser always sees the true class token at position 0
    (the MDLM loss may still mask it in z_t; the model input gets it back), so the model learns
    p(pixels | class) from every noise level, including the all-masked start of sampling. With
    the class token masked like a pixel (plain Trainer), the state "class known, all pixels
    masked" almost never occurs in training (probability (1 - t) t^64), and conditional samples
    ignore the class. The position-0 term of the NELBO is then ~0 (it is read off the input)."""

    def _with_class(self, fn, batch):
      base = self.apply
      cls = batch[:, :1]

      def apply(p, z, sigma, dropout_key=None):
        return base(p, z.at[:, :1].set(cls), sigma, dropout_key=dropout_key)

      self.apply = apply
      try:
        return fn()
      finally:
        self.apply = base

    def _train_step(self, state, batch):
      return self._with_class(lambda: Trainer._train_step(self, state, batch), batch)

    def _eval_step(self, params, batch, key):
      return self._with_class(lambda: Trainer._eval_step(self, params, batch, key), batch)

  return ClassVisibleTrainer


def train_model(config, out_dir: Optional[str] = None, log=print, init: Optional[str] = None,
                history: Optional[list] = None) -> dict:
  """Trains the class-conditional MDLM with the library's `Trainer` (MDLM loss) on the digits
  training split and (if `out_dir`) saves the EMA params with `checkpoint.save_params`.
  init: optional params folder to continue from (params and EMA start there; fresh optimizer
  state and schedule). history: earlier runs' records, stored in the metadata.
  Returns {"steps", "seconds", "train_loss", "val_nelbo" (nats/token, held-out, EMA), "out"}."""
  from remdm_jax import sharding as mesh_lib
  from remdm_jax.training.trainer import Trainer
  cfg, dig = experiment_config(config)
  xtr, ytr = load_digits_split("train", dig["test_fraction"], dig["split_seed"])
  xte, yte = load_digits_split("test", dig["test_fraction"], dig["split_seed"])
  train_seq, test_seq = to_sequences(xtr, ytr), to_sequences(xte, yte)
  bs = int(dig["batch_size"])
  mesh = mesh_lib.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  trainer = (_class_visible_trainer() if dig["class_visible"] else Trainer)(cfg, mesh)
  state = trainer.init_state()
  if init is not None:
    from remdm_jax.checkpoint import load_params
    p0, _, meta0 = load_params(init)
    p0 = jax.device_put(p0, trainer.param_shardings)
    state = state.replace(params=p0, ema_params=jax.tree.map(jnp.copy, p0))
    history = list(meta0.get("history", [])) + [
        {k: meta0.get(k) for k in ("step", "train_seconds", "val_nelbo_nats_per_token",
                                   "train_config")}]
  rs = np.random.RandomState(cfg.train.seed)
  order, pos = rs.permutation(len(train_seq)), 0
  n_val = (len(test_seq) // bs) * bs

  def val_batches():
    return [test_seq[i:i + bs] for i in range(0, n_val, bs)]

  t0 = time.time()
  losses, val = [], float("nan")
  for step in range(1, cfg.train.num_steps + 1):
    if pos + bs > len(order):
      order, pos = rs.permutation(len(train_seq)), 0
    batch = train_seq[order[pos:pos + bs]]
    pos += bs
    state, metrics = trainer.train_step(state, trainer.put_batch(batch))
    if step % cfg.train.log_every == 0 or step == cfg.train.num_steps:
      losses.append(float(metrics["loss"]))
      el = time.time() - t0
      log(f"step {step}/{cfg.train.num_steps} loss {losses[-1]:.4f} "
          f"({el / step:.3f} s/step, ETA {el / step * (cfg.train.num_steps - step):.0f} s)")
    if cfg.train.eval_every and (step % cfg.train.eval_every == 0 or step == cfg.train.num_steps):
      val = trainer.evaluate(state, val_batches())["nats"]
      log(f"step {step}: held-out NELBO (EMA) {val:.4f} nats/token")
  secs = time.time() - t0
  out = None
  if out_dir:
    from remdm_jax.checkpoint import save_params
    from remdm_jax.config_utils import _to_plain
    out = save_params(out_dir, jax.device_get(state.ema_params),
                      model_config=dict(json.loads(json.dumps(_to_plain(config)["model"]))),
                      extra_metadata={
                          "step": cfg.train.num_steps, "dataset": "sklearn load_digits",
                          "layout": {"levels": LEVELS, "class_offset": CLASS_OFFSET,
                                     "mask_id": MASK_ID, "seq_len": SEQ_LEN},
                          "train_config": _to_plain(config), "train_seconds": round(secs, 1),
                          "val_nelbo_nats_per_token": val,
                          "loss_schedule": cfg.loss.schedule,
                          "history": list(history or []),
                          "total_steps": cfg.train.num_steps + sum(
                              int(h.get("step") or 0) for h in (history or []))})
  return {"steps": cfg.train.num_steps, "seconds": secs,
          "train_loss": losses[-1] if losses else float("nan"), "val_nelbo": val, "out": out}


def load_model(path: Optional[str] = None):
  """-> (tokens_to_logits(params, tokens [B, 65], t [B]) -> logits [B, 65, 28], params).
  path: a `save_params` folder (default: the shipped remdm_jax/assets/models/digits_mdlm).
  Raises FileNotFoundError naming a missing path."""
  from remdm_jax.checkpoint import load_params
  from remdm_jax.models import dit
  path = MODEL_PATH if path is None else path
  if not os.path.isdir(path):
    raise FileNotFoundError(f"digits model folder {path!r} does not exist")
  params, model_config, _ = load_params(path)
  cfg = dit.DiTConfig(**model_config)
  graphdef, _ = dit.abstract_params(cfg)
  return dit.make_denoise_fn(graphdef), params


def make_digits_sampler(cfg, tokens_to_logits=None, jit: bool = True):
  """`make_image_sampler` for the digits layout (N = 64, K = 17, class_offset 17, mask 27)."""
  from remdm_jax.images.decode import make_image_sampler
  if tokens_to_logits is None:
    tokens_to_logits, _ = load_model()
  return make_image_sampler(tokens_to_logits, cfg, num_tokens=NUM_PIXELS, codebook_size=LEVELS,
                            mask_id=MASK_ID, class_offset=CLASS_OFFSET, jit=jit)


# ------------------------------------------------------------------------------------------------
# the judge: MLP classifier, digits-FID / digits-IS / accuracy
# ------------------------------------------------------------------------------------------------

def init_classifier(key, sizes=CLASSIFIER_SIZES) -> dict:
  params = {}
  for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
    key, k = jax.random.split(key)
    params[f"w{i}"] = jax.random.normal(k, (a, b), jnp.float32) * math.sqrt(2.0 / a)
    params[f"b{i}"] = jnp.zeros((b,), jnp.float32)
  return params


def classifier_apply(params: dict, pixels):
  """pixels [n, 64] (0..16) -> (logits float32 [n, 10], penultimate features float32 [n, 128])."""
  h = jnp.asarray(pixels, jnp.float32) / float(LEVELS - 1)
  n_layers = len([k for k in params if k.startswith("w")])
  for i in range(n_layers - 1):
    h = jax.nn.relu(h @ params[f"w{i}"] + params[f"b{i}"])
  return h @ params[f"w{n_layers - 1}"] + params[f"b{n_layers - 1}"], h


def train_classifier(seed: int = 0, steps: int = 3000, lr: float = 1e-3, weight_decay: float = 1e-4,
                     test_fraction: float = 0.2, split_seed: int = 0, log=print):
  """Trains the judge on the digits training split (AdamW, mini-batches of 128, light pixel-shift
  augmentation). Returns (params, held-out accuracy)."""
  import optax
  xtr, ytr = load_digits_split("train", test_fraction, split_seed)
  xte, yte = load_digits_split("test", test_fraction, split_seed)
  params = init_classifier(jax.random.PRNGKey(seed))
  tx = optax.adamw(optax.cosine_decay_schedule(lr, steps), weight_decay=weight_decay)
  opt = tx.init(params)

  def loss_fn(p, x, y):
    logits, _ = classifier_apply(p, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  @jax.jit
  def step(p, o, x, y):
    loss, g = jax.value_and_grad(loss_fn)(p, x, y)
    upd, o = tx.update(g, o, p)
    return optax.apply_updates(p, upd), o, loss

  rs = np.random.RandomState(seed)
  imgs = xtr.reshape(-1, 8, 8)
  for i in range(steps):
    idx = rs.randint(0, len(xtr), 128)
    b = imgs[idx]
    shift = rs.randint(-1, 2, size=2)             # +-1 pixel shift, zero fill
    b = np.roll(b, tuple(shift), axis=(1, 2))
    if shift[0] == 1:
      b[:, 0] = 0
    elif shift[0] == -1:
      b[:, -1] = 0
    if shift[1] == 1:
      b[:, :, 0] = 0
    elif shift[1] == -1:
      b[:, :, -1] = 0
    params, opt, loss = step(params, opt, b.reshape(-1, 64), ytr[idx])
    if (i + 1) % 1000 == 0:
      log(f"classifier step {i + 1}/{steps} loss {float(loss):.4f}")
  acc = float(np.mean(np.argmax(np.asarray(classifier_apply(params, xte)[0]), -1) == yte))
  log(f"classifier held-out accuracy {acc:.4f} ({len(yte)} images)")
  return jax.device_get(params), acc


def save_classifier(path: str, params: dict, metadata: dict) -> str:
  """Writes params.npz and metadata.json into `path` (atomically, file by file)."""
  with atomic_open(os.path.join(path, "params.npz"), "wb") as f:
    np.savez(f, **{k: np.asarray(v) for k, v in params.items()})
  with atomic_open(os.path.join(path, "metadata.json"), "w") as f:
    json.dump(metadata, f, indent=2, sort_keys=True)
  return path


def load_classifier(path: Optional[str] = None) -> dict:
  path = CLASSIFIER_PATH if path is None else path
  f = os.path.join(path, "params.npz")
  if not os.path.isfile(f):
    raise FileNotFoundError(f"digits classifier {f!r} does not exist")
  with np.load(f) as z:
    return {k: jnp.asarray(z[k]) for k in z.files}


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
  """||mu1 - mu2||^2 + tr(C1 + C2 - 2 (C1 C2)^(1/2)) (float64; scipy.linalg.sqrtm, the standard FID
  formula with the same eps fallback as the TTUR / pytorch-fid code)."""
  import warnings
  from scipy import linalg
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
  diff = mu1 - mu2
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")   # singular products (n < dim) are handled below
    covmean, _ = linalg.sqrtm(cov1.dot(cov2), disp=False)
  if not np.isfinite(covmean).all():
    off = np.eye(cov1.shape[0]) * 1e-6
    covmean = linalg.sqrtm((cov1 + off).dot(cov2 + off))
  covmean = np.real(covmean)
  return float(diff.dot(diff) + np.trace(cov1) + np.trace(cov2) - 2.0 * np.trace(covmean))


def _stats(f):
  f = np.asarray(f, np.float64)
  return f.mean(0), np.cov(f, rowvar=False)


class DigitsJudge:
  """digits-FID, digits-IS and class accuracy from the shipped (or given) classifier.

  fid(pixels): Fréchet distance between the penultimate features of `pixels` [n, 64] and those of
  all 1,797 real digits. inception_score(pixels): exp(mean KL(p(y|x) || mean p(y))).
  accuracy(pixels, labels): fraction classified as `labels`. All float; pixels int 0..16."""

  def __init__(self, params: Optional[dict] = None):
    self.params = load_classifier() if params is None else params
    self._apply = jax.jit(lambda p, x: classifier_apply(p, x))
    real, _ = load_digits_split("all")
    self.ref_mu, self.ref_cov = _stats(self.features(real))

  def logits_features(self, pixels):
    lg, f = self._apply(self.params, jnp.asarray(pixels, jnp.float32))
    return np.asarray(lg, np.float64), np.asarray(f, np.float64)

  def features(self, pixels):
    return self.logits_features(pixels)[1]

  def fid(self, pixels) -> float:
    mu, cov = _stats(self.features(pixels))
    return frechet_distance(mu, cov, self.ref_mu, self.ref_cov)

  def inception_score(self, pixels) -> float:
    lg, _ = self.logits_features(pixels)
    logp = lg - np.log(np.exp(lg - lg.max(1, keepdims=True)).sum(1, keepdims=True)) - lg.max(1, keepdims=True)
    p = np.exp(logp)
    py = p.mean(0)
    kl = (p * (logp - np.log(py + 1e-30))).sum(1)
    return float(np.exp(kl.mean()))

  def accuracy(self, pixels, labels) -> float:
    lg, _ = self.logits_features(pixels)
    return float(np.mean(np.argmax(lg, 1) == np.asarray(labels)))

  def evaluate(self, pixels, labels) -> dict:
    return {"fid": self.fid(pixels), "is": self.inception_score(pixels),
            "accuracy": self.accuracy(pixels, labels)}


# ------------------------------------------------------------------------------------------------
# pictures
# ------------------------------------------------------------------------------------------------

def save_grid_png(path: str, pixels, ncol: int = 10, titles=None, scale: int = 4) -> str:
  """Writes an image grid of 8x8 digits [n, 64] (0..16, white on black) as a PNG (Pillow),
  atomically. titles: optional row captions are not drawn (keep the PNG small); `scale` pixels per
  digit pixel; a 1-pixel gap between digits."""
  from PIL import Image
  del titles
  pixels = np.asarray(pixels)
  n = pixels.shape[0]
  nrow = -(-n // ncol)
  cell = 8 * scale + 2
  canvas = np.full((nrow * cell, ncol * cell), 40, np.uint8)
  for i in range(n):
    r, c = divmod(i, ncol)
    img = (pixels[i].reshape(8, 8).astype(np.float64) * (255.0 / (LEVELS - 1))).astype(np.uint8)
    img = np.kron(img, np.ones((scale, scale), np.uint8))
    canvas[r * cell + 1:r * cell + 1 + 8 * scale, c * cell + 1:c * cell + 1 + 8 * scale] = img
  with atomic_open(path, "wb") as f:
    Image.fromarray(canvas).save(f, format="PNG")
  return path


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------

def main(argv=None) -> int:
  ap = argparse.ArgumentParser(prog="python -m remdm_jax.images.digits", description=__doc__.split(
      "\n")[0])
  sub = ap.add_subparsers(dest="cmd", required=True)
  m = sub.add_parser("train-model", help="train the class-conditional MDLM (configs/digits.py)")
  m.add_argument("--config", default="configs/digits.py", help="configs/digits.py[:preset]")
  m.add_argument("--out", default=MODEL_PATH)
  m.add_argument("--steps", type=int, default=None, help="override train.num_steps")
  m.add_argument("--init", default=None, help="continue from this params folder")
  c = sub.add_parser("train-classifier", help="train the digits judge (MLP)")
  c.add_argument("--out", default=CLASSIFIER_PATH)
  c.add_argument("--steps", type=int, default=3000)
  c.add_argument("--seed", type=int, default=0)
  args = ap.parse_args(argv)
  if args.cmd == "train-model":
    try:
      config = load_config(args.config)
      if args.steps is not None:
        if args.steps < 1:
          raise ValueError(f"--steps={args.steps} must be >= 1")
        config.train.num_steps = args.steps
      res = train_model(config, args.out, init=args.init)
    except (ValueError, FileNotFoundError) as e:
      print(f"error: {e}", file=sys.stderr)
      return 2
    print(json.dumps({k: v for k, v in res.items()}, default=str))
  else:
    if args.steps < 1:
      print(f"error: --steps={args.steps} must be >= 1", file=sys.stderr)
      return 2
    t0 = time.time()
    params, acc = train_classifier(seed=args.seed, steps=args.steps)
    save_classifier(args.out, params, {"format": "remdm-jax digits classifier", "sizes":
                                       list(CLASSIFIER_SIZES), "held_out_accuracy": acc,
                                       "steps": args.steps, "seed": args.seed,
                                       "train_seconds": round(time.time() - t0, 1),
                                       "input": "pixels / 16, row-major 8x8",
                                       "split": "sklearn train_test_split(test_size=0.2, "
                                                "random_state=0, stratify=y)"})
    print(json.dumps({"held_out_accuracy": acc, "out": args.out}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
