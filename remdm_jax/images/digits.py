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

CLI (both train through the library's one trainer, `remdm_jax.training.trainer.run`):
  python -m remdm_jax.images.digits train-model --config=configs/digits.py --out=DIR
  python -m remdm_jax.images.digits train-classifier --out=DIR
--out is required and must be a new folder; an existing one is replaced only with --overwrite
and only if this tool wrote it (its metadata.json says so). Checkpoints and metrics.jsonl go to
--workdir (default DIR.train); after Ctrl-C / SIGTERM / a kill, re-running the same command
resumes from the latest checkpoint.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Optional

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
CLASSIFIER_FORMAT = "remdm-jax digits classifier"


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
  from remdm_jax.training.config import (CheckpointConfig, ExperimentConfig, OptimConfig,
                                         TrainConfig)
  raw = dict(_to_plain(config))
  model = dataclass_from_dict(DiTConfig, raw["model"], "model")
  if model.vocab_size != VOCAB or model.max_seq_len < SEQ_LEN:
    raise ValueError(f"model.vocab_size={model.vocab_size} must be {VOCAB} and model.max_seq_len="
                     f"{model.max_seq_len} >= {SEQ_LEN} for digits")
  loss = dataclass_from_dict(LossConfig, raw["loss"], "loss")
  if loss.mask_id != MASK_ID:
    raise ValueError(f"loss.mask_id={loss.mask_id} must be {MASK_ID} for digits")
  ckpt = dict(save_every=100, keep=2)
  ckpt.update(dict(raw.get("checkpoint") or {}))
  exp = ExperimentConfig(model=model, data=None, loss=loss,
                         optim=dataclass_from_dict(OptimConfig, raw.get("optim"), "optim"),
                         train=dataclass_from_dict(TrainConfig, raw.get("train"), "train"),
                         mesh=MeshConfig(shape=(1, 1, 1)),
                         checkpoint=dataclass_from_dict(CheckpointConfig, ckpt, "checkpoint"))
  digits = {"batch_size": 64, "test_fraction": 0.2, "split_seed": 0, "class_visible": True}
  for k, v in dict(raw.get("digits") or {}).items():
    if k not in digits:
      raise ValueError(f"unknown config field 'digits.{k}'; valid: {', '.join(digits)}")
    digits[k] = v
  return exp, digits


def _epoch_batches(seqs: np.ndarray, batch_size: int, seed: int):
  """The digits MDLM's resumable pipeline: epochs of `len(seqs) // batch_size` batches, each
  epoch a fresh permutation drawn from one `np.random.RandomState(seed)` (the remainder of an
  epoch is dropped); batch i is a pure function of i (the permutations are replayed on resume)."""
  from remdm_jax.data import StepBatches
  n = len(seqs)
  if batch_size < 1 or batch_size > n:
    raise ValueError(f"digits.batch_size={batch_size} must lie in [1, {n}]")
  per_epoch = n // batch_size
  cache = {"epoch": -1, "rs": None, "order": None}

  def make(i):
    epoch, j = divmod(i, per_epoch)
    if epoch < cache["epoch"] or cache["rs"] is None:
      cache.update(epoch=-1, rs=np.random.RandomState(seed))
    while cache["epoch"] < epoch:
      cache["order"] = cache["rs"].permutation(n)
      cache["epoch"] += 1
    return seqs[cache["order"][j * batch_size:(j + 1) * batch_size]]

  return StepBatches(make, {"seed": int(seed), "rows": n, "batch_size": int(batch_size)})


def train_model(config, out_dir: Optional[str] = None, log=print, init: Optional[str] = None,
                history: Optional[list] = None, workdir: Optional[str] = None,
                overwrite: bool = False) -> dict:
  """Trains the class-conditional MDLM through the library's trainer (`training.trainer.run`,
  `dit_spec` with the MDLM loss; with `digits.class_visible` the denoiser always sees the class
  token: `visible_prefix=1`) on the digits training split and (if `out_dir`) saves the EMA params
  with `checkpoint.save_params`.

  Why class_visible: with the class token masked like a pixel, the state "class known, all pixels
  masked" almost never occurs in training (probability (1 - t) t^64), and conditional samples
  ignore the class; with it visible the model learns p(pixels | class) from every noise level,
  including the all-masked start of sampling (the position-0 NELBO term is then ~0).

  init: optional params folder to continue from (params and EMA start there; fresh optimizer
  state and schedule). history: earlier runs' records, stored in the metadata.
  workdir: None (in memory) or a folder for checkpoints (`checkpoint.save_every`), metrics.jsonl
  and resume: re-running with the same workdir continues from its latest checkpoint.
  out_dir: checked before any work (`check_model_output`; an existing folder needs
  `overwrite=True` and must be one this module wrote).
  Returns {"steps", "seconds", "train_loss", "val_nelbo" (nats/token, held-out, EMA), "out",
  "workdir"}."""
  from remdm_jax import sharding as mesh_lib
  from remdm_jax.training.trainer import TrainJob, dit_spec, run
  from remdm_jax.config_utils import _to_plain
  cfg, dig = experiment_config(config)
  if out_dir:
    out_dir = check_model_output(out_dir, overwrite, "out")
  xtr, ytr = load_digits_split("train", dig["test_fraction"], dig["split_seed"])
  xte, yte = load_digits_split("test", dig["test_fraction"], dig["split_seed"])
  train_seq, test_seq = to_sequences(xtr, ytr), to_sequences(xte, yte)
  bs = int(dig["batch_size"])
  mesh = mesh_lib.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  p0 = None
  if init is not None:
    from remdm_jax.checkpoint import load_params
    p0, _, meta0 = load_params(init)
    history = list(meta0.get("history", [])) + [
        {k: meta0.get(k) for k in ("step", "train_seconds", "val_nelbo_nats_per_token",
                                   "train_config")}]
  n_val = (len(test_seq) // bs) * bs

  def val_batches():
    return [test_seq[i:i + bs] for i in range(0, n_val, bs)]

  plain = _to_plain(config)
  job = TrainJob(spec=dit_spec(cfg, mesh, visible_prefix=1 if dig["class_visible"] else 0),
                 config=cfg, data=lambda: (_epoch_batches(train_seq, bs, cfg.train.seed),
                                           val_batches if n_val else None),
                 tokens_per_step=bs * SEQ_LEN, meta={"config": plain, "init": init},
                 config_dict=plain, init_params=p0)
  t0 = time.time()
  res = run(job, workdir, mesh=mesh, log=log)
  secs = time.time() - t0
  val = float(res["validation"].get("nats", float("nan")))
  out = None
  if out_dir:
    from remdm_jax.checkpoint import save_params
    out = save_params(out_dir, jax.device_get(res["state"].ema_params), overwrite=overwrite,
                      model_config=dict(json.loads(json.dumps(plain["model"]))),
                      extra_metadata={
                          "step": cfg.train.num_steps, "dataset": "sklearn load_digits",
                          "layout": {"levels": LEVELS, "class_offset": CLASS_OFFSET,
                                     "mask_id": MASK_ID, "seq_len": SEQ_LEN},
                          "train_config": plain, "train_seconds": round(secs, 1),
                          "val_nelbo_nats_per_token": val,
                          "loss_schedule": cfg.loss.schedule,
                          "history": list(history or []),
                          "total_steps": cfg.train.num_steps + sum(
                              int(h.get("step") or 0) for h in (history or []))})
  return {"steps": cfg.train.num_steps, "seconds": secs,
          "train_loss": float(res["train"].get("loss", float("nan"))), "val_nelbo": val,
          "out": out, "workdir": res["workdir"]}


def _metadata(path: str) -> dict:
  try:
    with open(os.path.join(path, "metadata.json")) as f:
      meta = json.load(f)
  except (OSError, ValueError):
    return {}
  return meta if isinstance(meta, dict) else {}


def is_model_folder(path: str) -> bool:
  """True for a digits MDLM folder written by `train_model` (metadata.json: the params format
  of `checkpoint.save_params` and dataset "sklearn load_digits")."""
  meta = _metadata(path)
  return meta.get("format") == "remdm-jax-params" and meta.get("dataset") == "sklearn load_digits"


def is_classifier_folder(path: str) -> bool:
  """True for a digits classifier folder written by `save_classifier`."""
  return _metadata(path).get("format") == CLASSIFIER_FORMAT


def check_model_output(path: str, overwrite: bool = False, flag: str = "out") -> str:
  """`fileio.check_output_dir` for a digits MDLM folder (absolute path; ValueError)."""
  from remdm_jax.fileio import check_output_dir
  return check_output_dir(path, overwrite, flag=flag, is_ours=is_model_folder,
                          what="digits model")


def check_classifier_output(path: str, overwrite: bool = False, flag: str = "out") -> str:
  """`fileio.check_output_dir` for a digits classifier folder (absolute path; ValueError)."""
  from remdm_jax.fileio import check_output_dir
  return check_output_dir(path, overwrite, flag=flag, is_ours=is_classifier_folder,
                          what="digits classifier")


def load_model(path: Optional[str] = None):
  """-> (tokens_to_logits(params, tokens [B, 65], t [B]) -> logits [B, 65, 28], params).
  path: a `save_params` folder (default: the shipped remdm_jax/assets/models/digits_mdlm).
  Raises FileNotFoundError naming a missing path; ValueError (naming it) for a model of another
  kind or domain (the text model was accepted and sampled into garbage; a classifier or a model
  of another size gave a traceback): it must be a masked-diffusion LM with the digits layout
  (metadata "layout" {levels 17, class_offset 17, mask_id 27, seq_len 65}, vocab 28, L = 65)."""
  from remdm_jax.checkpoint import load_params
  from remdm_jax.generation import model_kind
  from remdm_jax.models import dit
  path = MODEL_PATH if path is None else path
  if not os.path.isdir(path):
    raise FileNotFoundError(f"digits model folder {path!r} does not exist")
  params, model_config, meta = load_params(path)
  layout = {"levels": LEVELS, "class_offset": CLASS_OFFSET, "mask_id": MASK_ID,
            "seq_len": SEQ_LEN}
  try:
    cfg = dit.DiTConfig.from_dict(dict(model_config))
  except (TypeError, ValueError) as e:
    raise ValueError(f"{path}: not a digits model (model_config.json: {e})") from None
  kind = model_kind(cfg, meta)
  if (meta.get("layout") != layout or kind != "mdlm" or cfg.vocab_size != MASK_ID + 1
      or cfg.max_seq_len != SEQ_LEN):
    raise ValueError(f"{path} is not a digits model (a {kind} model, vocab_size="
                     f"{cfg.vocab_size}, max_seq_len={cfg.max_seq_len}, layout "
                     f"{meta.get('layout')}); python -m remdm_jax.images.sample_digits needs a "
                     f"masked-diffusion model with the digits layout {layout}")
  graphdef, _ = dit.abstract_params(cfg)
  return dit.make_denoise_fn(graphdef), params


def make_digits_sampler(cfg, tokens_to_logits=None, jit: bool = True):
  """`make_image_sampler` for the digits layout (N = 64, K = 17, class_offset 17, mask 27)."""
  from remdm_jax.images.decode import make_image_sampler
  if tokens_to_logits is None:
    tokens_to_logits, _ = load_model()
  return make_image_sampler(tokens_to_logits, cfg, num_tokens=NUM_PIXELS, codebook_size=LEVELS,
                            mask_id=MASK_ID, class_offset=CLASS_OFFSET, num_classes=NUM_CLASSES,
                            jit=jit)


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


def classifier_spec(sizes=CLASSIFIER_SIZES):
  """The judge as a trainer `ModelSpec`: init = `init_classifier` (parameter key PRNGKey(seed)),
  loss(params, (pixels [B, 64] in 0..16, labels int [B]), key, train) = mean softmax
  cross-entropy (optax), aux = batch accuracy; the key is unused."""
  import optax
  from remdm_jax.training.spec import ModelSpec
  sizes = tuple(int(s) for s in sizes)

  def loss(params, batch, key, train: bool):
    del key, train
    x, y = batch
    logits, _ = classifier_apply(params, x)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return ce, {"accuracy": jnp.mean((jnp.argmax(logits, -1) == y).astype(jnp.float32))}

  return ModelSpec(name="digits_classifier", init=lambda key: init_classifier(key, sizes),
                   loss=loss, model_config={"sizes": list(sizes)},
                   keys=lambda seed: (jax.random.PRNGKey(seed), jax.random.PRNGKey(seed)))


def classifier_batches(pixels: np.ndarray, labels: np.ndarray, seed: int, batch_size: int = 128):
  """The judge's resumable pipeline: step i draws `batch_size` rows uniformly with replacement
  and one +-1 pixel shift per batch (zero fill) from one `np.random.RandomState(seed)` stream
  (idx = randint(0, n, B), shift = randint(-1, 2, 2) per step; replayed on resume).
  Yields (pixels int32 [B, 64], labels int32 [B])."""
  from remdm_jax.data import StepBatches
  imgs = np.asarray(pixels, np.int32).reshape(-1, 8, 8)
  labels = np.asarray(labels, np.int32)
  n = len(imgs)
  cache = {"next": 0, "rs": np.random.RandomState(seed)}

  def make(i):
    if i < cache["next"]:
      cache.update(next=0, rs=np.random.RandomState(seed))
    rs = cache["rs"]
    while True:
      idx = rs.randint(0, n, batch_size)
      shift = rs.randint(-1, 2, size=2)
      cache["next"] += 1
      if cache["next"] > i:
        break
    b = np.roll(imgs[idx], tuple(shift), axis=(1, 2))
    if shift[0] == 1:
      b[:, 0] = 0
    elif shift[0] == -1:
      b[:, -1] = 0
    if shift[1] == 1:
      b[:, :, 0] = 0
    elif shift[1] == -1:
      b[:, :, -1] = 0
    return b.reshape(-1, NUM_PIXELS), labels[idx]

  return StepBatches(make, {"seed": int(seed), "rows": n, "batch_size": int(batch_size)})


def train_classifier(seed: int = 0, steps: int = 3000, lr: float = 1e-3, weight_decay: float = 1e-4,
                     test_fraction: float = 0.2, split_seed: int = 0, log=print,
                     workdir: Optional[str] = None, save_every: int = 500):
  """Trains the judge on the digits training split through the library's trainer (AdamW with
  cosine decay from `lr` to 0 over `steps`, weight decay `weight_decay`, no clipping, no EMA;
  mini-batches of 128 with +-1 pixel shifts: `classifier_batches`). workdir: None (in memory)
  or a folder for checkpoints every `save_every` steps and resume. Returns (params, held-out
  accuracy)."""
  from remdm_jax import sharding as mesh_lib
  from remdm_jax.training.config import CheckpointConfig, OptimConfig, RunConfig, TrainConfig
  from remdm_jax.training.trainer import TrainJob, run
  if steps < 1:
    raise ValueError(f"steps={steps} must be >= 1")
  xtr, ytr = load_digits_split("train", test_fraction, split_seed)
  xte, yte = load_digits_split("test", test_fraction, split_seed)
  run_cfg = RunConfig(
      optim=OptimConfig(lr=lr, warmup_steps=0, schedule="cosine", min_lr=0.0,
                        weight_decay=weight_decay, grad_clip=0.0, ema_decay=0.0),
      train=TrainConfig(num_steps=steps, seed=seed, log_every=min(1000, steps), eval_every=0),
      checkpoint=CheckpointConfig(save_every=save_every, keep=2),
      mesh=_one_device_mesh_config(), batch_size=128)
  job = TrainJob(spec=classifier_spec(), config=run_cfg,
                 data=lambda: (classifier_batches(xtr, ytr, seed), None),
                 tokens_per_step=128 * NUM_PIXELS,
                 meta={"train": {"steps": steps, "lr": lr, "weight_decay": weight_decay,
                                 "seed": seed, "test_fraction": test_fraction,
                                 "split_seed": split_seed}})
  res = run(job, workdir, mesh=mesh_lib.make_mesh((1, 1, 1), devices=jax.devices()[:1]),
            log=log)
  params = jax.device_get(res["state"].params)
  acc = float(np.mean(np.argmax(np.asarray(classifier_apply(params, xte)[0]), -1) == yte))
  log(f"classifier held-out accuracy {acc:.4f} ({len(yte)} images)")
  return params, acc


def _one_device_mesh_config():
  from remdm_jax.sharding import MeshConfig
  return MeshConfig(shape=(1, 1, 1))


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
  accuracy(pixels, labels): fraction classified as `labels`. All float; pixels int 0..16.
  Raises ValueError (one line) for pixels that are not [n, 64] values in 0..16 (NaN included),
  n < 2 for FID (a covariance needs two samples), n < 1 otherwise, or labels that are not n
  class ids in 0..9 (out-of-range pixels used to be scored silently, zero samples or another
  width gave tracebacks)."""

  def __init__(self, params: Optional[dict] = None):
    self.params = load_classifier() if params is None else params
    self._apply = jax.jit(lambda p, x: classifier_apply(p, x))
    real, _ = load_digits_split("all")
    self.ref_mu, self.ref_cov = _stats(self.features(real))

  @staticmethod
  def check_pixels(pixels, min_n: int = 1) -> np.ndarray:
    """pixels as float32 [n, 64] after checking shape (n >= min_n) and range 0..16."""
    x = np.asarray(pixels)
    if x.ndim != 2 or x.shape[1] != NUM_PIXELS:
      raise ValueError(f"pixels must be [n, {NUM_PIXELS}] (8x8 digits), got shape {x.shape}")
    if x.shape[0] < min_n:
      raise ValueError(f"need at least {min_n} digit(s), got {x.shape[0]}")
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
      raise ValueError(f"pixels must be numbers 0..{LEVELS - 1}, got dtype {x.dtype}")
    bad = ~np.isfinite(x) | (x < 0) | (x > LEVELS - 1)
    if bad.any():
      raise ValueError(f"pixels must lie in 0..{LEVELS - 1} (grey levels); got "
                       f"{x[bad].flat[0]!r}")
    return x.astype(np.float32)

  def logits_features(self, pixels, min_n: int = 1):
    x = self.check_pixels(pixels, min_n)
    lg, f = self._apply(self.params, jnp.asarray(x))
    return np.asarray(lg, np.float64), np.asarray(f, np.float64)

  def features(self, pixels, min_n: int = 1):
    return self.logits_features(pixels, min_n)[1]

  def fid(self, pixels) -> float:
    mu, cov = _stats(self.features(pixels, min_n=2))
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
    y = np.asarray(labels)
    if y.shape != (lg.shape[0],) or not np.issubdtype(y.dtype, np.integer) or (
        y.min() < 0 or y.max() >= NUM_CLASSES):
      raise ValueError(f"labels must be {lg.shape[0]} class ids in 0..{NUM_CLASSES - 1}, got "
                       f"shape {y.shape} dtype {y.dtype}")
    return float(np.mean(np.argmax(lg, 1) == y))

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

def _check_workdir(workdir: str) -> str:
  """A training workdir: new, empty, or one the trainer wrote (config.json / metrics.jsonl /
  checkpoints/); anything else is refused (ValueError) so that no user folder is touched."""
  workdir = os.path.abspath(os.path.expanduser(workdir))
  if os.path.lexists(workdir) and not os.path.isdir(workdir):
    raise ValueError(f"--workdir={workdir} exists and is not a folder")
  if os.path.isdir(workdir) and os.listdir(workdir) and not any(
      os.path.exists(os.path.join(workdir, n)) for n in ("checkpoints", "metrics.jsonl",
                                                         "config.json")):
    raise ValueError(f"--workdir={workdir} is a folder that no training run wrote; give a new "
                     "or empty folder")
  return workdir


def main(argv=None) -> int:
  """CLI (module docstring). Exit 0; 2 on bad input (one `error:` line, before any work); 3 on a
  non-finite loss; 130 / 143 after Ctrl-C / SIGTERM (a checkpoint is saved: re-run the same
  command to resume)."""
  ap = argparse.ArgumentParser(prog="python -m remdm_jax.images.digits", description=__doc__.split(
      "\n")[0])
  sub = ap.add_subparsers(dest="cmd", required=True)
  m = sub.add_parser("train-model", help="train the class-conditional MDLM (configs/digits.py)")
  m.add_argument("--config", default="configs/digits.py", help="configs/digits.py[:preset]")
  m.add_argument("--steps", type=int, default=None, help="override train.num_steps")
  m.add_argument("--init", default=None, help="continue from this params folder")
  c = sub.add_parser("train-classifier", help="train the digits judge (MLP)")
  c.add_argument("--steps", type=int, default=3000)
  c.add_argument("--seed", type=int, default=0)
  c.add_argument("--save-every", type=int, default=500, help="checkpoint every this many steps")
  for q in (m, c):
    q.add_argument("--out", default=None, help="output model folder (required; never the "
                   "shipped models by default)")
    q.add_argument("--workdir", default=None, help="checkpoints + metrics.jsonl (default: "
                   "<out>.train); re-running the same command resumes from it")
    q.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out folder that this tool wrote")
  args = ap.parse_args(argv)
  from remdm_jax.training.trainer import TrainingInterrupted
  try:
    if not args.out:
      raise ValueError(f"--out is required (a new folder for the trained {args.cmd[6:]}; the "
                       "shipped models are never a default output)")
    if args.steps is not None and args.steps < 1:
      raise ValueError(f"--steps={args.steps} must be >= 1")
    if args.cmd == "train-model":
      out = check_model_output(args.out, args.overwrite, "--out")
    else:
      out = check_classifier_output(args.out, args.overwrite, "--out")
    workdir = _check_workdir(args.workdir or out + ".train")
    if args.cmd == "train-model":
      config = load_config(args.config)
      if args.steps is not None:
        config.train.num_steps = args.steps
      res = train_model(config, out, init=args.init, workdir=workdir, overwrite=True)
      print(json.dumps({k: v for k, v in res.items()}, default=str))
      return 0
    if not 0 <= args.seed < 2**32:
      raise ValueError(f"--seed={args.seed} must lie in [0, 2**32)")
    t0 = time.time()
    if args.save_every < 1:
      raise ValueError(f"--save-every={args.save_every} must be >= 1")
    params, acc = train_classifier(seed=args.seed, steps=args.steps, workdir=workdir,
                                   save_every=args.save_every)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except FloatingPointError as e:
    print(f"error: {e}", file=sys.stderr)
    return 3
  except TrainingInterrupted as e:
    how = (f"checkpoint of step {e.checkpoint_step} in {e.directory}; re-run the same command "
           "to resume" if e.checkpoint_step is not None else "no checkpoint was saved")
    print(f"interrupted by {e.signal_name} after step {e.step}; {how}", file=sys.stderr)
    return 143 if e.signal_name == "SIGTERM" else 130
  save_classifier(out, params, {"format": CLASSIFIER_FORMAT, "sizes": list(CLASSIFIER_SIZES),
                                "held_out_accuracy": acc, "steps": args.steps,
                                "seed": args.seed, "train_seconds": round(time.time() - t0, 1),
                                "input": "pixels / 16, row-major 8x8",
                                "split": "sklearn train_test_split(test_size=0.2, "
                                         "random_state=0, stratify=y)"})
  print(json.dumps({"held_out_accuracy": acc, "out": out, "workdir": workdir}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
