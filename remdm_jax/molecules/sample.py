"""Draw molecules from the shipped QM9 models: `python -m remdm_jax.molecules.sample`.

  python -m remdm_jax.molecules.sample                         # 16 molecules, label 1, T = 32
  python -m remdm_jax.molecules.sample --num_samples=64 --strategy=remdm_cap --steps=64
  python -m remdm_jax.molecules.sample --label=none            # unconditional (null class)
  python -m remdm_jax.molecules.sample --guidance=cfg --gamma=2  # D-CFG
  python -m remdm_jax.molecules.sample --guidance=cbg --gamma=2 --approx  # D-CBG, first order
  python -m remdm_jax.molecules.sample --guidance=cbg --gamma=2 --num_samples=2 --steps=8
      # D-CBG, exact: L * V = 1120 classifier rows per sample per step; ~25 s for this on 2 CPU
      # cores, several minutes for 16 samples at T = 32 (use --approx or a GPU for more)
  python -m remdm_jax.molecules.sample --model=udlm --guidance=cfg --gamma=2   # UDLM baseline
  python -m remdm_jax.molecules.sample --model=ar --guidance=cbg --gamma=2 --top_k=8
      # AR + FUDGE: (L - 1) * V = 1085 classifier rows per sample (all candidates; measured
      # ~6 s per sample on 2 loaded CPU cores), --top_k=8 scores 248

Several processes (README "Multi-host"): `python -m remdm_jax.launch -n 2 -- -m
remdm_jax.molecules.sample ...` splits every batch of the mdlm model over the devices of all
processes (same molecules as one process); process 0 prints.

`--model` is a checkpoint folder or one of the shipped names mdlm (qm9_cond_mdlm, default), udlm
(qm9_udlm) and ar (qm9_ar). The kind of a checkpoint (`model_kind`) picks the sampler: mdlm ->
`sampling.make_sampler` (any strategy), udlm -> `sampling.udlm.make_udlm_sampler` (SPEC_DOMAINS §M.7;
D-CFG mixes the two log posteriors, D-CBG adds gamma * C over all values), ar ->
`sampling.ar.make_ar_sampler` (left to right from <bos>; D-CFG = CFG on the next-token log-probs,
D-CBG = FUDGE: the shipped noisy classifier scores the prefix + candidate with the suffix masked,
all V = 35 candidates or the LM's `--top_k`). `--steps` does not apply to ar (L - 1 = 31 passes).
A flag the chosen sampler would ignore (`--gamma` without `--guidance`, `--top_k` other than with
ar + cbg, `--steps` / `--eta` / `--strategy` with ar) is a one-line `error:` and exit status 2.
UDLM D-CBG uses the same shipped classifier, which was trained on absorbing (masked) x_t, not on
uniform-noised x_t as the reference's UDLM classifier: a mismatch (no uniform-noise classifier
ships).

No final noise-removal step by default (SPEC_DOMAINS §M.4, as the QM9 guidance reference; rows
with a leftover mask decode as invalid); `--noise_removal` adds it.

Prints each SMILES with its validity, ring count and QED, then the SPEC_DOMAINS §M.5 metrics of
the batch, and writes one JSON line per molecule (smiles, tokens, valid, ring_count, qed, novel,
the settings) to `--output` (atomically; an existing file needs `--overwrite`; default
./samples/molecules-<timestamp>.jsonl, under ~/remdm-jax/ inside the source checkout). Bad input
(a model of another kind or domain, a classifier that is not one, flags the chosen sampler would
ignore, a seed outside [0, 2^32), an unwritable output) is one `error:` line and exit status 2,
before any work. Ctrl-C stops within a fraction of a second, writes the finished batches and
exits 130. CPU: well under a minute for 16-64 molecules at T = 32 (unguided, D-CFG, D-CBG approx;
measured 6-8 s for 16 on 2 shared cores, compile included).

Library: `sample_molecules(model, sampler_cfg, ...)` draws token arrays; guidance is ONE extra
argument (`guidance=None | CFG(gamma) | CBG(gamma, approx)`), resolved in `guided_denoise`, the
only place that touches the guidance API of `remdm_jax.sampling.guidance`:
  * None: the class-conditional model with the label fixed (`label`; None = the null class);
    for D-CFG this is gamma = 1 (label) or gamma = 0 (null class), one model call per step.
  * CFG(gamma): `guidance.cfg_denoise_fn(cond_denoise_fn, gamma, null_label)`, a plain
    denoise_fn(params, tokens, t) with params = {"model": model_params, "labels": int32 [B]}.
  * CBG(gamma, approx): the unconditional denoiser (null class) and
    `make_sampler(..., guidance=guidance.CBGGuidance(classifier_fn, gamma, label, approx=approx))`
    with params {"model": {"model", "labels"}, "classifier": classifier params}; the classifier
    takes one-hot rows [B, L, V] (`dit.make_classifier_fn`), which approx differentiates.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import time
from typing import Optional

if __name__ == "__main__":  # Ctrl-C / SIGTERM while the imports load: one line, no traceback
  from remdm_jax import interrupt as _interrupt
  _interrupt.install_handlers("molecules.sample")

import jax  # noqa: E402
import jax.numpy as jnp
import numpy as np

from remdm_jax import generation
from remdm_jax import sharding as mesh_lib
from remdm_jax.checks import check_seed
from remdm_jax.generation import ASSETS_DIR, LoadedModel, load_model
from remdm_jax.interrupt import Interrupted, call_interruptibly, deferred
from remdm_jax.models import dit
from remdm_jax.sampling import SamplerConfig, make_sampler
from remdm_jax.sampling import guidance as G

COND_MODEL = "qm9_cond_mdlm"
CLASSIFIER_MODEL = "qm9_classifier"
UDLM_MODEL = "qm9_udlm"
AR_MODEL = "qm9_ar"
SHIPPED = {"mdlm": COND_MODEL, "udlm": UDLM_MODEL, "ar": AR_MODEL}  # --model short names


@dataclasses.dataclass(frozen=True)
class CFG:
  """Discrete classifier-free guidance with weight gamma (SPEC_DOMAINS §M.4)."""
  gamma: float


@dataclasses.dataclass(frozen=True)
class CBG:
  """Discrete classifier-based guidance with weight gamma; approx = first-order (SPEC_DOMAINS §M.4)."""
  gamma: float
  approx: bool = False


def shipped_path(name: str) -> str:
  names = (COND_MODEL, CLASSIFIER_MODEL, UDLM_MODEL, AR_MODEL)
  if name not in names:
    raise ValueError(f"QM9 model name={name!r} is not one of {names}")
  return os.path.join(ASSETS_DIR, name)


def load_qm9_model(path: Optional[str] = None, name: str = COND_MODEL) -> LoadedModel:
  """A shipped (or given) QM9 checkpoint with the SMILES tokenizer, float32 compute. `path` may
  also be a short name of `SHIPPED` (mdlm, udlm, ar)."""
  if path in SHIPPED:
    path = shipped_path(SHIPPED[path])
  return load_model(path or shipped_path(name), tokenizer="smiles", compute_dtype="float32")


def model_kind(model: LoadedModel) -> str:
  """"ar" (causal model), "udlm" (trained with objective "udlm": metadata
  train_config.loss.objective, as `checkpoint.export_params` writes it), "classifier" or "mdlm"
  (any other): `generation.model_kind`."""
  return generation.model_kind(model.config, model.stored_metadata)


def _check_conditional(model: LoadedModel) -> int:
  """The null class of a class-conditional LM (else ValueError)."""
  cfgm = model.config
  if cfgm.num_classes < 1 or cfgm.head != "lm":
    raise ValueError(f"{model.path}: not a class-conditional model (num_classes="
                     f"{cfgm.num_classes}, head={cfgm.head!r})")
  return cfgm.num_classes


def _check_request(model: LoadedModel, guidance, label: Optional[int]) -> tuple[int, int]:
  """(null class, fixed label = label or the null class) after checking model / label /
  guidance / gamma; ValueError otherwise."""
  null = _check_conditional(model)
  if label is not None and (isinstance(label, bool) or not 0 <= int(label) < null):
    raise ValueError(f"label={label!r} must be None (null class) or in [0, {null})")
  fixed = null if label is None else int(label)
  if guidance is None:
    return null, fixed
  if not isinstance(guidance, (CFG, CBG)):
    raise ValueError(f"guidance={guidance!r} must be None, CFG(gamma) or CBG(gamma, approx)")
  if label is None:
    raise ValueError("guidance needs a target label (not the null class)")
  gamma = guidance.gamma
  if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not np.isfinite(gamma) \
      or gamma < 0:
    raise ValueError(f"gamma={gamma!r} must be a finite number >= 0")
  return null, fixed


def _check_classifier(classifier: Optional[LoadedModel], model: LoadedModel, fixed: int):
  if classifier is None:
    raise ValueError("CBG guidance needs a classifier model (--classifier / shipped "
                     f"{CLASSIFIER_MODEL})")
  ccfg, cfgm = classifier.config, model.config
  if ccfg.head != "classifier" or ccfg.vocab_size != cfgm.vocab_size or fixed >= ccfg.num_classes:
    raise ValueError(f"{classifier.path}: not a classifier for this model (head={ccfg.head!r}, "
                     f"vocab_size={ccfg.vocab_size} vs {cfgm.vocab_size}, num_classes="
                     f"{ccfg.num_classes}, label={fixed})")


def _guided_params(model_params, guidance, batch_size: int, null: int, fixed: int,
                   classifier: Optional[LoadedModel]):
  """The per-call params layout shared by every model kind: None / CFG -> {"model", "labels":
  int32 [B] = the label}; CBG -> {"model": {"model", "labels": int32 [B] = the null class},
  "classifier": classifier params} (the layout the CBG / FUDGE guidance expects)."""
  if isinstance(guidance, CBG):
    return {"model": {"model": model_params, "labels": jnp.full((batch_size,), null, jnp.int32)},
            "classifier": classifier.params}
  return {"model": model_params, "labels": jnp.full((batch_size,), fixed, jnp.int32)}


def guided_denoise(model: LoadedModel, guidance, label: Optional[int], batch_size: int,
                   classifier: Optional[LoadedModel] = None):
  """(denoise_fn(params, tokens, t), params, make_sampler kwargs) for one guidance choice.

  The sampler always sees a plain denoise_fn; per-call inputs ride in params:
    * None / CFG: {"model": model params, "labels": int32 [B]}.
    * CBG: {"model": {"model": ..., "labels": null class [B]}, "classifier": classifier params}
      (the layout `make_sampler(guidance=CBGGuidance)` requires), kwargs {"guidance": CBGGuidance}.
  CFG(gamma): `guidance.cfg_denoise_fn` (gamma = 0: null class, 1: the label; one model call per
  step; else one batched call of 2B rows). CBG(gamma, approx): the null-class denoiser with
  `guidance.CBGGuidance(classifier_fn, gamma, label, approx)`, the classifier fed one-hot rows
  (`dit.make_classifier_fn` embeds them as x @ E).
  Raises ValueError for a bad model / label / gamma / missing classifier.
  """
  null, fixed = _check_request(model, guidance, label)
  cond = dit.make_cond_denoise_fn(model.graphdef)
  plain = lambda p, z, t: cond(p["model"], z, t, p["labels"])
  kwargs = {}
  if isinstance(guidance, CFG):
    denoise = G.cfg_denoise_fn(cond, float(guidance.gamma), null, mask_id=int(model.mask_id))
  else:
    denoise = plain
    if isinstance(guidance, CBG):
      _check_classifier(classifier, model, fixed)
      kwargs["guidance"] = G.CBGGuidance(dit.make_classifier_fn(classifier.graphdef),
                                         float(guidance.gamma), fixed,
                                         approx=bool(guidance.approx))
  mp = dit.cast_for_compute(model.params, model.config)
  return denoise, _guided_params(mp, guidance, batch_size, null, fixed, classifier), kwargs


def _udlm_sampler(model: LoadedModel, num_steps: int, guidance, label, batch_size, classifier):
  """(UDLMSampler, params) for the class-conditional UDLM (SPEC_DOMAINS §M.7): None = the fixed
  label (or null class); CFG = `sampling.udlm.CFGGuidance` (mix of the two log posteriors; params
  {"model", "labels"}); CBG = `guidance.CBGGuidance` on the null-class denoiser (params
  {"model": {"model", "labels"}, "classifier"})."""
  from remdm_jax.sampling import udlm as U
  null, fixed = _check_request(model, guidance, label)
  cond = dit.make_cond_denoise_fn(model.graphdef)  # sigma = loglinear sigma(t), as udlm_loss
  mp = dit.cast_for_compute(model.params, model.config)
  plain = lambda p, z, t: cond(p["model"], z, t, p["labels"])
  kw = dict(num_steps=num_steps, seq_len=model.seq_len)
  if isinstance(guidance, CFG):
    sampler = U.make_udlm_sampler(None, guidance=U.CFGGuidance(cond, float(guidance.gamma), null),
                                  **kw)
  elif isinstance(guidance, CBG):
    _check_classifier(classifier, model, fixed)
    g = G.CBGGuidance(dit.make_classifier_fn(classifier.graphdef), float(guidance.gamma), fixed,
                      approx=bool(guidance.approx))
    sampler = U.make_udlm_sampler(plain, guidance=g, **kw)
  else:
    sampler = U.make_udlm_sampler(plain, **kw)
  return sampler, _guided_params(mp, guidance, batch_size, null, fixed, classifier)


def _ar_sampler(model: LoadedModel, guidance, label, batch_size, classifier,
                top_k: Optional[int] = None, temperature: float = 1.0):
  """(ARSampler, params) for the class-conditional AR model: None = the fixed label (or null
  class); CFG = `sampling.ar.ARCFG`; CBG = FUDGE (`sampling.ar.FUDGEGuidance`) on the null-class
  model with the noisy classifier (int token rows, suffix masked; CBG.approx does not apply)."""
  from remdm_jax.sampling import ar as AR
  null, fixed = _check_request(model, guidance, label)
  if isinstance(guidance, CBG) and guidance.approx:
    raise ValueError("FUDGE (D-CBG of the AR model) is exact over the candidates; approx=True "
                     "does not apply (use top_k to score fewer candidates)")
  apply = dit.make_apply_fn(model.graphdef)
  mp = dit.cast_for_compute(model.params, model.config)

  def cond_logits(p, z, y):
    return apply(p, z, jnp.zeros((z.shape[0],), jnp.float32), labels=jnp.asarray(y, jnp.int32))

  plain = lambda p, z: cond_logits(p["model"], z, p["labels"])
  kw = dict(seq_len=model.seq_len, bos_id=int(model.tokenizer.bos_id), temperature=temperature)
  if isinstance(guidance, CFG):
    sampler = AR.make_ar_sampler(None, guidance=AR.ARCFG(cond_logits, float(guidance.gamma), null),
                                 **kw)
  elif isinstance(guidance, CBG):
    _check_classifier(classifier, model, fixed)
    g = AR.FUDGEGuidance(dit.make_classifier_fn(classifier.graphdef), float(guidance.gamma),
                         fixed, int(model.mask_id), top_k=top_k)
    sampler = AR.make_ar_sampler(plain, guidance=g, **kw)
  else:
    sampler = AR.make_ar_sampler(plain, **kw)
  return sampler, _guided_params(mp, guidance, batch_size, null, fixed, classifier)


def sample_molecules(model: LoadedModel, sampler_cfg: SamplerConfig, *, num_samples: int,
                     batch_size: int = 64, seed: int = 1, label: Optional[int] = 1,
                     guidance=None, classifier: Optional[LoadedModel] = None,
                     noise_removal: bool = False, top_k: Optional[int] = None,
                     progress: bool = False,
                     mesh: Optional[jax.sharding.Mesh] = None) -> tuple[np.ndarray, dict]:
  """Draws `num_samples` token rows int32 [N, 32] (batch b uses fold_in(PRNGKey(seed), b)).

  progress: a line on stderr with the batch and, for masked diffusion, the denoiser step within
    it (`generation.StepProgress`; the samples are the same with and without).
  noise_removal: False (the molecules default) stops after the last grid step with no final
  argmax step, as the QM9 guidance reference does (SPEC_DOMAINS §M.4); a row that still holds a
  mask token then decodes to an invalid SMILES. True adds the SPEC §4.5 final step (one more NFE).
  The model's kind (`model_kind`) picks the sampler: mdlm -> `make_sampler(sampler_cfg)`; udlm
  -> `sampling.udlm.make_udlm_sampler` with T = sampler_cfg.num_steps; ar -> `sampling.ar`
  (sampler_cfg.num_steps unused; D-CBG = FUDGE, `top_k` candidates or all V). udlm / ar need
  strategy "mdlm" and noise_removal=False (ValueError otherwise).
  Ctrl-C stops within a fraction of a second, even inside a batch's compiled program: it raises
  `interrupt.Interrupted` whose `partial` holds the finished batches' rows.
  Returns (tokens, stats) with stats nfe (model rows per sample, SPEC_DOMAINS §M.8: T steps
  for mdlm / udlm, L - 1 = 31 positions for ar, twice that for D-CFG with gamma not in {0, 1},
  which runs the conditional and the null-class rows in one 2B-row call), classifier_nfe (D-CBG / FUDGE: classifier rows per
  sample), seconds. Decode with `SmilesTokenizer().decode_batch(tokens)`, score with
  `metrics.evaluate_samples`.
  mesh (mdlm only; udlm / ar ignore it): every batch is split over all mesh axes, also across
  processes (README "Multi-host"; every process calls with the same arguments and gets all rows;
  batch_size must be divisible by the mesh size). Samples do not depend on the split.
  """
  if not isinstance(num_samples, int) or num_samples < 1:
    raise ValueError(f"num_samples={num_samples!r} must be an int >= 1")
  if not isinstance(batch_size, int) or batch_size < 1:
    raise ValueError(f"batch_size={batch_size!r} must be an int >= 1")
  check_seed(seed)
  batch_size = min(batch_size, num_samples)
  n_batches = -(-num_samples // batch_size)
  meter = None
  kind = model_kind(model)
  if kind == "classifier":
    raise ValueError(f"{model.path} is a classifier, not a generative model (give it as the "
                     "classifier of D-CBG)")
  if kind == "mdlm":
    if not model.config.time_conditioning and not sampler_cfg.time_independent:
      sampler_cfg = sampler_cfg.replace(time_independent=True)
    denoise, params, kwargs = guided_denoise(model, guidance, label, batch_size, classifier)
    if mesh is not None:
      if batch_size % mesh.devices.size:
        raise ValueError(f"batch_size={batch_size} must be divisible by the "
                         f"{mesh.devices.size} devices of the sampling mesh")
      from jax.sharding import NamedSharding, PartitionSpec as P
      params = mesh_lib.put_global(params, NamedSharding(mesh, P()))  # once, not per batch
    if progress:  # denoiser steps within each batch (a D-CBG batch can take minutes)
      meter = generation.StepProgress(f"{sampler_cfg.strategy} T={sampler_cfg.num_steps}",
                                      num_batches=n_batches, batch_size=batch_size,
                                      seq_len=model.seq_len, nfe=sampler_cfg.num_steps)
      denoise = generation.with_progress(denoise, meter)
    sampler = make_sampler(denoise, sampler_cfg, seq_len=model.seq_len, mask_id=model.mask_id,
                           noise_removal=bool(noise_removal), mesh=mesh, **kwargs)
    if meter is not None:
      meter.nfe = max(1, int(sampler.nfe))
    nfe = sampler.nfe * (G.cfg_model_calls(guidance.gamma) if isinstance(guidance, CFG) else 1)
  else:
    if sampler_cfg.strategy != "mdlm":
      raise ValueError(f"strategy={sampler_cfg.strategy!r} is a masked-diffusion sampler; the "
                       f"{kind.upper()} model uses its own ancestral sampler (strategy='mdlm')")
    if noise_removal:
      raise ValueError("noise_removal applies to masked diffusion, not to the "
                       f"{kind.upper()} model")
    if kind == "udlm":
      sampler, params = _udlm_sampler(model, sampler_cfg.num_steps, guidance, label, batch_size,
                                      classifier)
      nfe = sampler.nfe
    else:
      sampler, params = _ar_sampler(model, guidance, label, batch_size, classifier, top_k)
      nfe = sampler.model_rows
  root = jax.random.PRNGKey(seed)
  out = []
  start = time.perf_counter()
  info = {}
  with deferred():  # a signal between two batches stops the next one (interrupt docstring)
    for b in range(n_batches):
      if meter is not None:
        meter.start_batch(b)

      def run_batch():
        toks, info = sampler.sample_with_info(params, jax.random.fold_in(root, b),
                                              batch_size=batch_size)
        return mesh_lib.to_host(toks), info  # all rows on every process

      try:
        toks, info = call_interruptibly(run_batch)
      except KeyboardInterrupt:
        if progress:
          print(file=sys.stderr)
        done = (np.concatenate(out)[:num_samples] if out
                else np.zeros((0, model.seq_len), np.int32))
        raise Interrupted(done, f"interrupted in batch {b + 1}/{n_batches}") from None
      out.append(np.asarray(toks))
      if meter is not None:
        jax.effects_barrier()  # every step's callback has run
        meter.end_batch()
      elif progress:
        el = time.perf_counter() - start
        print(f"\r{min((b + 1) * batch_size, num_samples)}/{num_samples} molecules {el:.0f}s "
              f"ETA {el / (b + 1) * (n_batches - b - 1):.0f}s", end="", file=sys.stderr,
              flush=True)
  if progress:
    print(file=sys.stderr)
  tokens = np.concatenate(out)[:num_samples]
  return tokens, {"nfe": nfe, "classifier_nfe": int(info.get("classifier_nfe", 0)),
                  "seconds": time.perf_counter() - start}


def _parse_label(text: str) -> Optional[int]:
  """--label: an int class ("0" or "1" for QM9; the range is checked against the model later) or
  "none" (the null class); ValueError naming the flag otherwise."""
  if text.strip().lower() == "none":
    return None
  try:
    return int(text)
  except ValueError:
    raise ValueError(f"--label={text!r} must be 0, 1 or none") from None


def _check_cli_for_kind(a, model: LoadedModel) -> None:
  """One-line errors for flags the loaded model's sampler would silently ignore."""
  kind = model_kind(model)
  if kind == "ar":
    for flag, value in (("--steps", a.steps), ("--eta", a.eta)):
      if value is not None:
        raise ValueError(f"{flag}={value:g} does not apply to the AR model (it draws the "
                         f"L - 1 = {model.seq_len - 1} positions left to right, no steps)")
    if a.strategy not in (None, "mdlm"):
      raise ValueError(f"--strategy={a.strategy} does not apply to the AR model (it has its own "
                       "left-to-right sampler)")
  if kind == "udlm":
    if a.eta is not None:
      raise ValueError(f"--eta={a.eta:g} does not apply to the UDLM model (its ancestral "
                       "sampler has no remasking)")
    if a.strategy not in (None, "mdlm"):
      raise ValueError(f"--strategy={a.strategy} does not apply to the UDLM model (it has its "
                       "own ancestral sampler)")
  if kind in ("ar", "udlm") and a.noise_removal:
    raise ValueError(f"--noise_removal applies to masked diffusion, not to the {kind.upper()} "
                     "model")
  if a.top_k is not None:
    if kind != "ar":
      raise ValueError(f"--top_k={a.top_k} applies only to the AR model (FUDGE), not to the "
                       f"{kind.upper()} model {model.path}")
    V = model.config.vocab_size
    if not 1 <= a.top_k <= V:
      raise ValueError(f"--top_k={a.top_k} must be in [1, V = {V}]")


def default_output(cwd: Optional[str] = None) -> str:
  """<generation.output_root(cwd)>/samples/molecules-<YYYYmmdd-HHMMSS>[-k].jsonl (as sample.py:
  never an existing file, never inside the source checkout)."""
  stem = os.path.join(generation.output_root(cwd), "samples",
                      f"molecules-{time.strftime('%Y%m%d-%H%M%S')}")
  path, k = stem + ".jsonl", 1
  while os.path.exists(path):
    path, k = f"{stem}-{k}.jsonl", k + 1
  return path


def _records(smiles, tokens, reference, settings) -> list[dict]:
  from remdm_jax.molecules import metrics
  out = []
  for i, (s, t) in enumerate(zip(smiles, tokens)):
    rc = metrics.smiles_property(s, "ring_count")
    valid = not np.isnan(rc)
    out.append(dict(index=i, smiles=s, tokens=np.asarray(t).tolist(), valid=valid,
                    ring_count=int(rc) if valid else None,
                    qed=metrics.smiles_property(s, "qed") if valid else None,
                    novel=(s not in reference) if valid and reference is not None else None,
                    **settings))
  return out


def main(argv=None) -> int:
  """CLI; 0, or 2 after one `error: ...` line (bad input, before any work), or 130 / 143 after
  Ctrl-C / SIGTERM (the finished batches are written; `interrupt.run_main`)."""
  from remdm_jax import interrupt
  return interrupt.run_main(_main, argv, prog="molecules.sample")


def _load_for_flag(flag: str, path: Optional[str], name: str = COND_MODEL) -> LoadedModel:
  """`load_qm9_model` for --model / --classifier: a path that does not exist or is not a folder
  is one line naming the flag (and, for --model, the shipped short names)."""
  if path is not None and path not in SHIPPED and not os.path.isdir(path):
    what = "is not a folder" if os.path.exists(path) else "does not exist"
    names = f" and is not a shipped name ({', '.join(SHIPPED)})" if flag == "--model" else ""
    raise ValueError(f"{flag}={path} {what}{names}")
  return load_qm9_model(path, name)


def _main(argv=None) -> int:
  from remdm_jax.cliargs import ArgumentParser
  from remdm_jax.interrupt import EXIT_INTERRUPTED, hard_exit, note_saved
  p = ArgumentParser(prog="python -m remdm_jax.molecules.sample",
                     description=__doc__.split("\n\n")[0])
  p.add_argument("--model", default=None,
                 help="checkpoint dir or a shipped name: mdlm (default), udlm, ar")
  p.add_argument("--classifier", default=None, help="classifier dir (default: shipped)")
  p.add_argument("--num_samples", type=int, default=16)
  p.add_argument("--batch_size", type=int, default=64)
  p.add_argument("--steps", type=int, default=None, help="T (default 32; not for --model=ar)")
  p.add_argument("--strategy", default=None,
                 help="masked-diffusion sampler (default mdlm; only mdlm for udlm / ar)")
  p.add_argument("--eta", type=float, default=None)
  p.add_argument("--label", default="1", help="0, 1 or none (null class)")
  p.add_argument("--guidance", default="none", choices=("none", "cfg", "cbg", "cbg_approx"))
  p.add_argument("--gamma", type=float, default=None,
                 help="guidance weight (default 2; needs --guidance)")
  p.add_argument("--approx", action="store_true", help="first-order D-CBG (with --guidance=cbg)")
  p.add_argument("--noise_removal", action="store_true",
                 help="add the final argmax step (off by default: SPEC_DOMAINS §M.4)")
  p.add_argument("--top_k", type=int, default=None,
                 help="ar + cbg (FUDGE): score only the LM's top-k next tokens (default: all)")
  p.add_argument("--seed", type=int, default=1, help="in [0, 2^32)")
  p.add_argument("--output", default=None,
                 help="JSONL output, one molecule per line (smiles, tokens, validity, ring count, "
                      "QED, novelty, settings), written atomically. Default: "
                      "./samples/molecules-<timestamp>.jsonl (under ~/remdm-jax/ when run inside "
                      "the source checkout; $REMDM_OUTPUT_DIR replaces the folder)")
  p.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
  a = p.parse_args(argv)
  try:
    from remdm_jax import distributed
    mesh = None  # several processes (README "Multi-host"): batches split over all their devices
    if distributed.initialize_from_env():
      mesh = mesh_lib.make_mesh((-1, 1, 1))
    # 1. Flags alone, the output path, the models and their agreement: before any work.
    label = _parse_label(a.label)
    check_seed(a.seed, "--seed")
    if a.approx and a.guidance not in ("cbg", "cbg_approx"):
      raise ValueError(f"--approx needs --guidance=cbg, got --guidance={a.guidance}")
    if a.gamma is not None and a.guidance == "none":
      raise ValueError(f"--gamma={a.gamma:g} needs --guidance=cfg, cbg or cbg_approx (it would "
                       "be ignored)")
    if a.top_k is not None and a.guidance != "cbg":
      raise ValueError(f"--top_k={a.top_k} applies only to --model=ar with --guidance=cbg "
                       f"(FUDGE), got --guidance={a.guidance}")
    from remdm_jax.fileio import check_output_path
    out_path = check_output_path(a.output or default_output(), a.overwrite, "--output")
    gamma = 2.0 if a.gamma is None else a.gamma
    cfg = SamplerConfig(strategy=a.strategy or "mdlm", num_steps=32 if a.steps is None else
                        a.steps, eta=a.eta)
    guidance = {"none": None, "cfg": CFG(gamma), "cbg": CBG(gamma, a.approx),
                "cbg_approx": CBG(gamma, True)}[a.guidance]
    model = _load_for_flag("--model", a.model)
    generation.check_model_use(model, "molecules.sample", kinds=("mdlm", "udlm", "ar"),
                               domains=("molecules", None))
    _check_cli_for_kind(a, model)
    null, fixed = _check_request(model, guidance, label)
    clf = None
    if isinstance(guidance, CBG):
      clf = _load_for_flag("--classifier", a.classifier, CLASSIFIER_MODEL)
      generation.check_model_use(clf, "molecules.sample --classifier", kinds=("classifier",),
                                 domains=("molecules", None))
      _check_classifier(clf, model, fixed)
    elif a.classifier is not None:
      raise ValueError(f"--classifier={a.classifier} applies only to --guidance=cbg (it would be "
                       "ignored)")
    del null
    from remdm_jax.molecules import metrics
    metrics.check_available()
    # 2. The QM9 reference (for novelty; built with RDKit once, then cached), sampling.
    from remdm_jax.molecules.data import load_qm9
    reference = load_qm9().smiles_set()
    settings = dict(model=model.path, kind=model_kind(model), strategy=cfg.strategy,
                    steps=cfg.num_steps, eta=cfg.eta, label=label, guidance=a.guidance,
                    gamma=gamma if guidance is not None else None, seed=a.seed,
                    noise_removal=a.noise_removal)
    primary = jax.process_index() == 0  # process 0 writes and prints
    try:
      tokens, stats = sample_molecules(model, cfg, num_samples=a.num_samples,
                                       batch_size=a.batch_size, seed=a.seed, label=label,
                                       guidance=guidance, classifier=clf,
                                       noise_removal=a.noise_removal, top_k=a.top_k,
                                       mesh=mesh if model_kind(model) == "mdlm" else None,
                                       progress=primary and a.num_samples > a.batch_size)
    except Interrupted as e:
      done = e.partial
      where = "no batch had finished; nothing written"
      if len(done) and primary:
        recs = _records(model.tokenizer.decode_batch(done), done, reference, settings)
        out, failure = generation.write_jsonl_or_rescue(out_path, recs)
        where = f"wrote the {len(done)} finished molecules to {out}" + (
            f" ({failure})" if failure else "")
      print(f"molecules.sample: {e}; {where}", file=sys.stderr)
      hard_exit(EXIT_INTERRUPTED)
    if not primary:
      return 0
    smiles = model.tokenizer.decode_batch(tokens)
    records = _records(smiles, tokens, reference, settings)
    out, failure = generation.write_jsonl_or_rescue(out_path, records)
    if failure:
      raise ValueError(f"{failure}; the {len(records)} molecules were written to {out} instead")
    note_saved(f"the {len(records)} molecules are in {out}")
  except (ValueError, FileNotFoundError, ImportError, OSError) as e:
    text = str(e).strip()
    print(f"error: {text.splitlines()[0] if text else type(e).__name__}", file=sys.stderr)
    return 2
  for r in records:
    if not r["valid"]:
      print(f"{r['smiles']:<34} invalid")
    else:
      novel = "novel" if r["novel"] else "in QM9"
      print(f"{r['smiles']:<34} rings {r['ring_count']}  QED {r['qed']:.3f}  {novel}")
  m = metrics.evaluate_samples(smiles, reference)
  print(f"valid {m['valid_frac']:.3f} | unique {m['unique_frac']:.3f} | novel {m['novel_frac']:.3f}"
        f" ({m['num_novel']}) | mean ring count {m['ring_count_valid_mean']:.3f} (valid), "
        f"{m['ring_count_novel_mean']:.3f} (novel) | {stats['seconds']:.1f}s, NFE {stats['nfe']}")
  print(f"wrote {len(records)} molecules to {out}", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
