"""The MDLM / ReMDM sampler: one transition kernel for every strategy (SPEC §4.3-§4.8).

`make_sampler(denoise_fn, cfg, seq_len=, mask_id=)` returns a `Sampler`; `sampler(params, key,
batch_size=B)` gives int32 [B, L] samples. The per-step schedule arrays (`step_schedule`) are the
`xs` of one `lax.scan`; the body never branches on the strategy. After the scan, the final step
takes the SUBS argmax at still-masked positions at min_t (SPEC §4.5).

Keys: step i uses fold_in(key, i) split into (Bernoulli key, token key); the final step uses index
n_steps. Inside a step every random number of (row b, position l) comes from
fold_in(fold_in(step key, b), l) (see `draws`), so the scan equals a Python loop bitwise, samples do
not depend on batch size or sharding, and the exact32 draw does not depend on how positions are
grouped (`unmask_buffer`).

The transition kernel itself (exact32 / float64 / float32 paths, guidance) is
`sampling.kernel`; its names are re-exported here.

Replay ("mixture" mode, SPEC §4.7; float64/float32 only): `sampler(..., uniforms=U)` with U of
shape [n_steps, B, L, V] (V = the denoiser's output vocabulary, mask column included) runs the race
of step i on U[i] instead of drawing uniforms from the keys: argmax_k q_k / E_k,
E_k = 1e-10 - log(U[i, b, l, k] + 1e-10). Given the official code's `torch.rand_like(q)` values of
each step, this reproduces its draws (tests/test_replay.py checks it bitwise). U is a traced scan
input (one compiled program per shape), but it is materialised in full, so only for small V.
The final argmax step (SPEC §4.5) uses no randomness.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec as P

from remdm_jax.sampling.config import SamplerConfig
from remdm_jax.sampling.guidance import CBGGuidance
# The kernel's names stay importable from here (tests, benchmarks, semi_ar).
from remdm_jax.sampling.kernel import (KernelSpec, _draw_rows, _guided_row_draw,  # noqa: F401
                                       _log_pos, draw_unmasked, final_step, token_sigma,
                                       transition_sample)
from remdm_jax.sampling.schedule import expected_unmask_buffer, step_schedule
from remdm_jax.sharding import put_global
from remdm_jax.types import DenoiseFn



def check_prompt(prompt, prompt_mask, batch_size, seq_len: int, mask_id: int):
  """Validates an optional prompt before tracing -> (prompt int32 [B, L] | None, prompt_mask bool
  [B, L] | None, batch_size | None). batch_size defaults to the prompt's B; prompt_mask defaults
  to prompt != mask_id. ValueError for a prompt not of shape [B, L=seq_len], a batch mismatch,
  prompt_mask of another shape or without a prompt, or frozen positions holding mask_id."""
  if prompt is None:
    if prompt_mask is not None:
      raise ValueError("prompt_mask given without prompt")
    return None, None, batch_size
  prompt = jnp.asarray(prompt, jnp.int32)
  if prompt.ndim != 2 or prompt.shape[1] != seq_len:
    raise ValueError(f"prompt shape {tuple(prompt.shape)} must be [B, seq_len={seq_len}] (a prompt "
                     "cannot be longer than the model length)")
  if batch_size is None:
    batch_size = prompt.shape[0]
  if prompt.shape[0] != batch_size:
    raise ValueError(f"prompt batch {prompt.shape[0]} != batch_size={batch_size}")
  if prompt_mask is None:
    prompt_mask = prompt != mask_id
  prompt_mask = jnp.asarray(prompt_mask, bool)
  if prompt_mask.shape != prompt.shape:
    raise ValueError(f"prompt_mask shape {tuple(prompt_mask.shape)} != prompt shape "
                     f"{tuple(prompt.shape)}")
  if not isinstance(prompt, jax.core.Tracer) and not isinstance(prompt_mask, jax.core.Tracer):
    if bool(np.any(np.asarray(prompt_mask) & (np.asarray(prompt) == mask_id))):
      raise ValueError("prompt: positions with prompt_mask=True must not hold mask_id")
  return prompt, prompt_mask, batch_size


def check_batch(batch_size, cfg: SamplerConfig) -> int:
  """batch_size as an int >= 1 (ValueError otherwise, also for precision 'float64' without
  jax_enable_x64)."""
  if (batch_size is None or not isinstance(batch_size, (int, np.integer))
      or isinstance(batch_size, bool) or int(batch_size) < 1):
    raise ValueError(f"batch_size={batch_size!r} must be an int >= 1")
  if cfg.precision == "float64" and not jax.config.jax_enable_x64:
    raise ValueError("SamplerConfig.precision='float64' needs jax_enable_x64 "
                     "(use `with jax.enable_x64(True):`)")
  return int(batch_size)


class Sampler:
  """Callable returned by `make_sampler`.

  Attributes:
    cfg, schedule (`StepSchedule`), seq_len, mask_id, unmask_buffer (K), nfe (static denoiser
    calls: n_steps + 1), core (the un-jitted function (params, key, batch_size, prompt,
    prompt_mask, uniforms, forward=None, model_state=(), ids=None) -> (tokens, info)).

  `core(..., forward=f, model_state=s)` replaces the denoiser call by a stateful model kernel
  f(tokens int32 [B, L], t float32 scalar, state) -> (logits [B, L, V], state), the state carried
  through the scan (e.g. a KV cache: `sampling.blocks` runs the strategies on its cache modes
  this way). Not with guidance. `ids`: optional (row ids uint32 [B], position ids uint32 [L])
  naming every draw (`kernel.transition_sample`; `sampling.blocks` passes per-row ids so a row's
  draws do not depend on its batch index or padding).
  """

  def __init__(self, core, cfg, schedule, seq_len, mask_id, unmask_buffer, mesh, data_axes, jit):
    self.core, self.cfg, self.schedule = core, cfg, schedule
    self.seq_len, self.mask_id, self.unmask_buffer = seq_len, mask_id, unmask_buffer
    self.mesh, self.data_axes = mesh, data_axes
    self.nfe = schedule.nfe
    self._fn = jax.jit(core, static_argnames=("batch_size",)) if jit else core

  def sample_with_info(self, params, key, batch_size=None, prompt=None, prompt_mask=None,
                       uniforms=None):
    """-> (tokens int32 [B, L], info). info: `nfe` (int32 scalar: denoiser calls actually made,
    = self.nfe without caching) and, with trajectory_every = k > 0, `trajectory` int32
    [ceil(n/k), B, L]: z at the start of steps 0, k, 2k, ...

    uniforms: optional replay mode ("mixture" mode, SPEC §4.7): [n_steps, B, L, V] U[0, 1)
      values, V = the denoiser's output vocabulary (mask column included), dtype float64 for
      precision="float64" (needs x64) or float32 for "float32"; not for "exact32". Step i runs
      the race argmax_k q_k / E_k on E = 1e-10 - log(uniforms[i] + 1e-10) instead of drawing
      from `key`, which reproduces another implementation's draws (e.g. the official code's
      `torch.rand_like(q)` values) from its uniforms. A traced argument (one compilation per
      shape); materialised in full, so for small V only. batch_size defaults to uniforms.shape[1].
    """
    prompt, prompt_mask, batch_size = check_prompt(prompt, prompt_mask, batch_size, self.seq_len,
                                                   self.mask_id)
    if uniforms is not None:
      uniforms = self._check_uniforms(uniforms, batch_size)
      if batch_size is None:
        batch_size = uniforms.shape[1]
    batch_size = check_batch(batch_size, self.cfg)
    if self.mesh is not None:
      n_data = math.prod(self.mesh.shape[a] for a in self.data_axes)
      if batch_size % n_data:
        raise ValueError(f"batch_size={batch_size} must be divisible by the data-axis size "
                         f"{n_data}")
      # put_global: also for a mesh spanning several processes (every process passes the same
      # params / key / prompt; each feeds only its devices' parts)
      params = put_global(params, NamedSharding(self.mesh, P()))
      key = put_global(key, NamedSharding(self.mesh, P()))
      if prompt is not None:
        bs = NamedSharding(self.mesh, P(tuple(self.data_axes), None))
        prompt, prompt_mask = put_global(prompt, bs), put_global(prompt_mask, bs)
      if uniforms is not None:
        uniforms = put_global(
            uniforms, NamedSharding(self.mesh, P(None, tuple(self.data_axes), None, None)))
    return self._fn(params, key, batch_size=batch_size, prompt=prompt, prompt_mask=prompt_mask,
                    uniforms=uniforms)

  def __call__(self, params, key, batch_size=None, prompt=None, prompt_mask=None, uniforms=None):
    """-> int32 [B, L] samples (never containing mask_id, unless noise_removal=False). uniforms:
    replay mode, see `sample_with_info`."""
    return self.sample_with_info(params, key, batch_size, prompt, prompt_mask, uniforms)[0]

  def _check_uniforms(self, uniforms, batch_size):
    """Validates replay uniforms [n_steps, B, L, V] (dtype = the precision's float) before tracing;
    returns them as a jax array. V is checked against the logits when the step is traced."""
    prec = self.cfg.precision
    if prec == "exact32":
      raise ValueError("uniforms (replay mode) need SamplerConfig.precision 'float64' or "
                       "'float32', got precision='exact32' (the two-stage draw builds no row)")
    want = np.float64 if prec == "float64" else np.float32
    if prec == "float64" and not jax.config.jax_enable_x64:
      raise ValueError("uniforms with SamplerConfig.precision='float64' need jax_enable_x64 "
                       "(use `with jax.enable_x64(True):`), else they would be cast to float32")
    dtype = np.dtype(uniforms.dtype) if hasattr(uniforms, "dtype") else np.asarray(uniforms).dtype
    if dtype != want:
      raise ValueError(f"uniforms dtype {dtype} must be {np.dtype(want)} for "
                       f"SamplerConfig.precision={prec!r}")
    shape = tuple(np.shape(uniforms))
    n = self.schedule.n_steps
    if len(shape) != 4 or shape[0] != n or shape[2] != self.seq_len or (
        batch_size is not None and shape[1] != int(batch_size)):
      raise ValueError(f"uniforms shape {shape} must be [n_steps={n}, B="
                       f"{batch_size if batch_size is not None else 'batch_size'}, "
                       f"seq_len={self.seq_len}, V]")
    return jnp.asarray(uniforms, want)


def make_sampler(denoise_fn: DenoiseFn, cfg: SamplerConfig, *, seq_len: int, mask_id: int,
                 mesh: Optional[jax.sharding.Mesh] = None,
                 data_axes: Optional[Sequence[str]] = None, trajectory_every: int = 0,
                 grid: Optional[np.ndarray] = None, jit: bool = True,
                 guidance: Optional[CBGGuidance] = None,
                 noise_removal: bool = True) -> Sampler:
  """Builds the sampler of `cfg` for `denoise_fn(params, tokens [B, L] int32, t [B] float32) ->
  logits [B, L, V]`. t is the grid time of the step (min_t for the final step); a denoiser without
  time conditioning ignores it, one with it maps t to its own input (e.g. sigma(t)).

  Args:
    seq_len: L. mask_id: the mask token id (m = V - 1 for GPT-2, SPEC §1).
    mesh, data_axes: optional sharded sampling: params replicated, batch split over `data_axes`
      (default: all mesh axes). Use Auto axis types (ENVIRONMENT.md).
    trajectory_every: k > 0 records z every k steps into info["trajectory"].
    grid: optional external time grid t_0..t_T (see `step_schedule`), e.g. the reference's float32
      `torch.linspace(1, eps, T + 1)` for replay.
    jit: False returns the un-jitted function (for tests / for composing under an outer jit).
    guidance: optional `guidance.CBGGuidance` (D-CBG, SPEC_DOMAINS §M.4, §M.6). The sampler's
      params are then {"model": <denoise_fn params>, "classifier": <classifier params>}; each
      step scores z_t with the classifier (L * V rows exact, or 1 forward + backward approx),
      passes gamma * C to the kernel as `log_weight`, and info["classifier_nfe"] counts the
      classifier rows per sample. The final argmax step (SPEC §4.5) is unguided. With
      cache_unchanged, C is cached with the logits (the classifier must then ignore t, which
      `time_independent=True` declares for both). D-CFG needs no argument here: wrap the
      denoiser with `guidance.cfg_denoise_fn`.
    noise_removal: True (default) runs the final argmax step at min_t (SPEC §4.5); False returns
      z after the last grid step, where a few positions may still hold mask_id, as the QM9
      guidance reference does (SPEC_DOMAINS §M.4: no final noise-removal step); nfe is then
      n_steps.

  Replay ("mixture" mode, SPEC §4.7): with precision "float64" (or "float32"), the returned
  sampler accepts `uniforms=` [n_steps, B, L, V] and reproduces another implementation's draws
  (e.g. the official code's, from its recorded `torch.rand_like(q)` uniforms) by racing each
  step's full row q on them; small V only, because the uniforms are materialised.
  """
  if not isinstance(seq_len, int) or seq_len < 1:
    raise ValueError(f"seq_len={seq_len!r} must be an int >= 1")
  if not isinstance(mask_id, (int, np.integer)) or mask_id < 0:
    raise ValueError(f"mask_id={mask_id!r} must be an int >= 0")
  if not isinstance(trajectory_every, int) or trajectory_every < 0:
    raise ValueError(f"trajectory_every={trajectory_every!r} must be an int >= 0")
  if guidance is not None and not isinstance(guidance, CBGGuidance):
    raise ValueError(f"guidance={guidance!r} must be None or a CBGGuidance (D-CFG: wrap the "
                     "denoiser with guidance.cfg_denoise_fn instead)")
  sched = step_schedule(cfg, grid)
  K = cfg.unmask_buffer or expected_unmask_buffer(sched, seq_len, cfg.uses_conf)
  spec = KernelSpec.from_config(cfg, int(mask_id), min(K, seq_len))
  if mesh is not None:
    data_axes = tuple(data_axes) if data_axes is not None else tuple(mesh.axis_names)
    for a in data_axes:
      if a not in mesh.axis_names:
        raise ValueError(f"data_axes entry {a!r} is not a mesh axis {mesh.axis_names}")
  n = sched.n_steps
  L = seq_len
  m = int(mask_id)
  cache = cfg.cache_unchanged
  k_traj = trajectory_every
  n_rec = -(-n // k_traj) if k_traj else 0

  def constrain(x):
    if mesh is None:
      return x
    spec_ = P(data_axes, *([None] * (x.ndim - 1)))
    return lax.with_sharding_constraint(x, NamedSharding(mesh, spec_))

  def core(params, key, batch_size, prompt=None, prompt_mask=None, uniforms=None, forward=None,
           model_state=(), ids=None):
    B = batch_size
    if forward is not None and guidance is not None:
      raise ValueError("core(forward=...) cannot be combined with guidance")
    dtype = jnp.float64 if cfg.precision == "float64" else jnp.float32
    xs = {k: jnp.asarray(v, dtype) for k, v in sched.xs(np.float64).items()}
    xs["t"] = jnp.asarray(sched.t, jnp.float32)
    xs["step"] = jnp.arange(n, dtype=jnp.int32)
    if uniforms is not None:  # replay mode: step i races on uniforms[i] [B, L, V]
      if tuple(uniforms.shape[:3]) != (n, B, L):
        raise ValueError(f"uniforms shape {tuple(uniforms.shape)} must be [n_steps={n}, "
                         f"B={B}, seq_len={L}, V]")
      xs["uniforms"] = uniforms
    if prompt is None:
      frozen = jnp.zeros((B, L), bool)
      tokens = jnp.full((B, L), m, jnp.int32)
    else:
      frozen = prompt_mask.astype(bool)
      tokens = jnp.where(frozen, prompt.astype(jnp.int32), m)
    tokens, frozen = constrain(tokens), constrain(frozen)

    model_params = params
    if guidance is not None:
      if not isinstance(params, dict) or set(params) != {"model", "classifier"}:
        got = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise ValueError("make_sampler(guidance=CBGGuidance): params must be a dict with keys "
                         f"'model' and 'classifier', got {got}")
      model_params = params["model"]

    if forward is None:
      def forward(tokens, t, state):
        return denoise_fn(model_params, tokens, jnp.full((B,), t, jnp.float32)), state
    logits_of = lambda tokens, t: forward(tokens, t, model_state)[0]

    def classifier_weight(tokens, t, vocab):
      return guidance.log_weight(params["classifier"], tokens, jnp.full((B,), t, jnp.float32),
                                 vocab)

    carry = {"tokens": tokens, "nfe": jnp.zeros((), jnp.int32), "ms": model_state}
    if spec.uses_conf:
      carry["psi"] = constrain(jnp.full((B, L), jnp.inf, jnp.float32))
    if cache:
      shp = jax.eval_shape(logits_of, tokens, jnp.float32(1.0))
      carry["logits"] = jnp.zeros(shp.shape, shp.dtype)
      carry["dirty"] = jnp.ones((), bool)
    if guidance is not None:
      vocab = jax.eval_shape(logits_of, tokens, jnp.float32(1.0)).shape[-1]
      cls_per_step = guidance.classifier_calls_per_step(L, vocab)
      carry["cls_nfe"] = jnp.zeros((), jnp.int32)
      if cache:
        carry["lw"] = jnp.zeros((B, L, vocab), jnp.float32)
    if k_traj:
      carry["traj"] = jnp.zeros((n_rec, B, L), jnp.int32)

    def get_logits(c, t):
      """-> (logits, nfe, model state); with cache_unchanged the model runs only when z moved."""
      if not cache:
        logits, ms = forward(c["tokens"], t, c["ms"])
        return logits, c["nfe"] + 1, ms

      def run():
        logits, ms = forward(c["tokens"], t, c["ms"])
        return logits.astype(shp.dtype), ms

      logits, ms = lax.cond(c["dirty"], run, lambda: (c["logits"], c["ms"]))
      return logits, c["nfe"] + c["dirty"].astype(jnp.int32), ms

    def body(c, x):
      c = dict(c)
      i = x["step"]
      if k_traj:
        j = i // k_traj
        cur = lax.dynamic_index_in_dim(c["traj"], j, 0, keepdims=False)
        rec = jnp.where(i % k_traj == 0, c["tokens"], cur)
        c["traj"] = lax.dynamic_update_index_in_dim(c["traj"], rec, j, 0)
      dirty = c.get("dirty")
      logits, c["nfe"], c["ms"] = get_logits(c, x["t"])
      lw = None
      if guidance is not None:
        if cache:
          lw = lax.cond(dirty, lambda: classifier_weight(c["tokens"], x["t"], vocab),
                        lambda: c["lw"])
          c["lw"] = lw
          c["cls_nfe"] = c["cls_nfe"] + dirty.astype(jnp.int32) * cls_per_step
        else:
          lw = classifier_weight(c["tokens"], x["t"], vocab)
          c["cls_nfe"] = c["cls_nfe"] + cls_per_step
      z_s, psi = transition_sample(jax.random.fold_in(key, i), c["tokens"], logits, x, spec,
                                   psi=c.get("psi"), frozen=frozen, uniforms=x.get("uniforms"),
                                   log_weight=lw, ids=ids)
      z_s = constrain(z_s)
      if cache:
        c["logits"] = logits
        c["dirty"] = jnp.any(z_s != c["tokens"])
      if spec.uses_conf:
        c["psi"] = psi
      c["tokens"] = z_s
      return c, None

    c, _ = lax.scan(body, carry, xs)
    # Final step at min_t (SPEC §4.5); key index n (unused: the argmax is deterministic).
    if noise_removal:
      logits, nfe, _ = get_logits(c, jnp.float32(sched.min_t))
      out = constrain(final_step(c["tokens"], logits, m))
    else:
      out, nfe = c["tokens"], c["nfe"]
    info = {"nfe": nfe}
    if guidance is not None:
      info["classifier_nfe"] = c["cls_nfe"]
    if k_traj:
      info["trajectory"] = c["traj"]
    return out, info

  smp = Sampler(core, cfg, sched, seq_len, int(mask_id), spec.unmask_buffer, mesh, data_axes, jit)
  if not noise_removal:
    smp.nfe = sched.n_steps
  return smp
