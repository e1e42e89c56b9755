"""The MDLM / ReMDM transition kernel: one reverse step z_t -> z_s for every strategy
(SPEC §4.1, §4.3-§4.8). The loop that drives it is `sampling.sampler` (one `lax.scan`).

Kernel, exact32 (default, SPEC §4.6 item 2): (1) per position, a 32-bit-integer Bernoulli with
probability u (masked; the MDLM/ReMDM unmask rate) or sigma^l (decoded; remask) - these do not
depend on x_theta; (2) only at the positions that unmask, log x_theta = log_softmax over the
non-mask vocabulary of the gathered logits, the nucleus filter (float32 bisection) and a Gumbel-max
draw. Unmasking positions are processed K = `unmask_buffer` per row at a time in a while loop
(usually one pass), so no [B, L, V] float array beyond the logits is built.
Kernel, float64/float32: the reference's race over the full row q = a x~ + (1 - a) onehot(m),
a = u (masked) or 1 - sigma^l (decoded); x~ is filtered by the sort-free `method="select"` nucleus
(exactly the sorted rule's kept set, ties included, in the row's dtype; no argsort).
Temperature (every path): x_theta = SUBS(logits / temperature) before top-p
(`remdm_jax.diffusion.subs`). Degenerate denoiser outputs (every non-mask logit -inf) never
produce the mask (`remdm_jax.diffusion.subs`).

Keys: `transition_sample(key, ...)` splits the step key into (Bernoulli key, token key); every
random number of (row b, position l) comes from fold_in(fold_in(token key, b), l) (`draws`).
Never imports Flax.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax

from remdm_jax.diffusion.subs import NEG_INF, masked_log_probs, subs_log_probs
from remdm_jax.sampling import draws
from remdm_jax.sampling.conf import conf_sigma
from remdm_jax.sampling.config import SamplerConfig
from remdm_jax.sampling.nucleus import nucleus_filter


@dataclasses.dataclass(frozen=True)
class KernelSpec:
  """Static (trace-time) settings of the transition kernel."""

  mask_id: int
  precision: str = "exact32"
  top_p: Optional[float] = None
  nucleus_rule: str = "reference"
  uses_conf: bool = False
  conf_dtype: str = "float32"
  unmask_buffer: int = 16
  temperature: float = 1.0

  @classmethod
  def from_config(cls, cfg: SamplerConfig, mask_id: int, unmask_buffer: int) -> "KernelSpec":
    return cls(mask_id=mask_id, precision=cfg.precision, top_p=cfg.top_p,
               nucleus_rule=cfg.nucleus_rule, uses_conf=cfg.uses_conf, conf_dtype=cfg.conf_dtype,
               unmask_buffer=unmask_buffer, temperature=cfg.temperature)


def token_sigma(tokens, psi, frozen, sigma, conf, spec: KernelSpec, dtype=jnp.float32):
  """Remask probability sigma^l of each decoded position [B, L] (0 at masked / frozen ones):
  sigma, or w_l sigma on conf steps (conf = 1), w from psi (SPEC §4.4)."""
  masked = tokens == spec.mask_id
  sig = jnp.broadcast_to(jnp.asarray(sigma, dtype), tokens.shape)
  if spec.uses_conf:
    sc = conf_sigma(psi, jnp.isfinite(psi), sigma, spec.conf_dtype)
    sig = jnp.where(conf > 0, sc.astype(dtype), sig)
  return jnp.where(masked | frozen, jnp.zeros((), dtype), sig)


def _draw_rows(keys, logits_rows, spec: KernelSpec):
  """exact32 token draw on rows [..., V] of raw logits at masked positions: SUBS log-softmax of
  logits / temperature (mask excluded, `masked_log_probs`), nucleus filter (bisection),
  Gumbel-max. Returns (token, x~(token)); the token is never the mask."""
  logp = masked_log_probs(logits_rows.astype(jnp.float32), spec.mask_id, spec.temperature)
  logp = nucleus_filter(logp, spec.top_p, spec.nucleus_rule, method="bisect")
  tok = draws.gumbel_argmax(keys, logp)
  psi = jnp.exp(jnp.take_along_axis(logp, tok[..., None], axis=-1)[..., 0])
  return tok, psi


def _draw_ids(ids, B: int, L: int):
  """(row ids uint32 [B], position ids uint32 [L]) of the draws: (arange(B), arange(L)) by
  default, or the caller's `ids` (`transition_sample`)."""
  if ids is None:
    return jnp.arange(B, dtype=jnp.uint32), jnp.arange(L, dtype=jnp.uint32)
  row_ids, pos_ids = ids
  if tuple(row_ids.shape) != (B,) or tuple(pos_ids.shape) != (L,):
    raise ValueError(f"draw ids shapes {tuple(row_ids.shape)}, {tuple(pos_ids.shape)} must be "
                     f"[B={B}] and [L={L}]")
  return row_ids.astype(jnp.uint32), pos_ids.astype(jnp.uint32)


def draw_unmasked(tok_key, logits, unmask, spec: KernelSpec, ids=None):
  """Tokens and x~(token) at the `unmask` positions ([B, L] int32 / float32; other entries are
  mask_id / 0). Handles K = spec.unmask_buffer positions per row per pass; the result does not
  depend on K (per-position keys). ids: optional (row ids [B], position ids [L]) naming the
  draws (`transition_sample`)."""
  B, L, _ = logits.shape
  row_ids, pos_ids = _draw_ids(ids, B, L)
  rows = jnp.arange(B, dtype=jnp.int32)[:, None]  # scatter indices
  K = spec.unmask_buffer
  if K >= L:
    keys = draws.position_keys(tok_key, jnp.broadcast_to(row_ids[:, None], (B, L)),
                               jnp.broadcast_to(pos_ids, (B, L)))
    tok, psi = _draw_rows(keys, logits, spec)
    return jnp.where(unmask, tok, spec.mask_id), jnp.where(unmask, psi, 0.0)
  rank = jnp.cumsum(unmask.astype(jnp.int32), axis=-1) - 1
  n_pass = (jnp.max(jnp.sum(unmask, axis=-1, dtype=jnp.int32)) + K - 1) // K
  init = (jnp.full((B, L), spec.mask_id, jnp.int32), jnp.zeros((B, L), jnp.float32))

  def one_pass(j, acc):
    drawn, psi_acc = acc
    sel = unmask & (rank // K == j)
    idx = jax.vmap(lambda m: jnp.nonzero(m, size=K, fill_value=L)[0])(sel).astype(jnp.int32)
    safe = jnp.minimum(idx, L - 1)
    rows_k = jnp.broadcast_to(rows, (B, K))
    lg = jnp.take_along_axis(logits, safe[..., None], axis=1)  # [B, K, V]
    key_rows = jnp.broadcast_to(row_ids[:, None], (B, K))
    tok, psi = _draw_rows(draws.position_keys(tok_key, key_rows, pos_ids[safe]), lg, spec)
    drawn = drawn.at[rows_k, idx].set(tok, mode="drop")
    psi_acc = psi_acc.at[rows_k, idx].set(psi, mode="drop")
    return drawn, psi_acc

  return lax.fori_loop(0, n_pass, one_pass, init)


def _log_pos(x):
  """log x with log 0 = NEG_INF (finite)."""
  return jnp.where(x > 0, jnp.log(jnp.where(x > 0, x, 1.0)), NEG_INF)


def _guided_row_draw(kt, tokens, logits, sig, p_unmask, log_weight, spec: KernelSpec,
                     ids=None):
  """exact32 draw on the full guided row log q_guided = log q_sigma + log_weight (D-CBG,
  `guidance`): masked rows log u + log x~ (mask column log(1 - u)), decoded rows log(1 - sigma^l)
  at z_t and log sigma^l at the mask, NEG_INF elsewhere; one `draws.gumbel_argmax` per position
  (keys fold_in(fold_in(kt, b), l)). Returns (z_s, x~(z_s))."""
  B, L, V = logits.shape
  m = spec.mask_id
  vocab_ids = jnp.arange(V)
  logp = nucleus_filter(masked_log_probs(logits.astype(jnp.float32), m, spec.temperature),
                        spec.top_p, spec.nucleus_rule, method="bisect")
  u = jnp.asarray(p_unmask, jnp.float32)
  row_m = jnp.where(vocab_ids == m, _log_pos(1.0 - u), _log_pos(u) + logp)
  sig = sig[..., None]
  row_d = jnp.where(vocab_ids == tokens[..., None], _log_pos(1.0 - sig),
                    jnp.where(vocab_ids == m, _log_pos(sig), NEG_INF))
  logq = jnp.where((tokens == m)[..., None], row_m, row_d) + log_weight.astype(jnp.float32)
  row_ids, pos_ids = _draw_ids(ids, B, L)
  rows = jnp.broadcast_to(row_ids[:, None], (B, L))
  pos = jnp.broadcast_to(pos_ids, (B, L))
  z = draws.gumbel_argmax(draws.position_keys(kt, rows, pos), logq)
  psi = jnp.exp(jnp.take_along_axis(logp, z[..., None], axis=-1)[..., 0])
  return z, psi


def transition_sample(key, tokens, logits, coeffs, spec: KernelSpec, psi=None, frozen=None,
                      uniforms=None, log_weight=None, ids=None):
  """One reverse step z_t -> z_s (SPEC §4.1, §4.3) for every strategy.

  Args:
    key: the step key (split here into Bernoulli and token keys).
    tokens: int32 [B, L] z_t.
    logits: [B, L, V] denoiser output at z_t (any float dtype).
    coeffs: dict of scalars `sigma`, `conf`, `p_unmask` (one row of `StepSchedule.xs`).
    spec: `KernelSpec`.
    psi: float32 [B, L] conf state (+inf = masked / frozen), or None without conf.
    frozen: bool [B, L] positions never changed (prompt), or None.
    uniforms: optional [B, L, V] U[0, 1) values of the race (replay mode; float64/float32
      precision only): used instead of the token key's draws.
    log_weight: optional float [B, L, V] added to log q before the draw (D-CBG:
      gamma * C, `sampling.guidance`): z_s ~ q_guided ∝ q_sigma(. | z_t, x_theta) exp(log_weight)
      per position, decoded positions included (stay / remask in the ratio
      (1 - sigma^l) e^{w[z_t]} : sigma^l e^{w[m]}), frozen positions unchanged. exact32 then
      draws each position from its full guided row with `draws.gumbel_argmax` (32-bit-integer
      Gumbel noise) instead of Bernoulli + categorical: exact up to float32 rounding of log q
      and the Gumbel tail bound (g <= 22.9, so an entry more than ~23 nats below a row's
      largest cannot win; SPEC §4.6). float64 / float32 race the normalised guided row.
    ids: optional (row ids uint32 [B], position ids uint32 [L]): every draw of (row b, position
      l) then comes from (key, ids[0][b], ids[1][l]) instead of (key, b, l), Bernoulli bits
      included (one uint32 per position key), so a row's draws can follow the row, not its index
      in the batch or its padding (`sampling.blocks`, strategies with per-row keys). None: the
      default scheme (bitwise unchanged).
  Returns: (z_s int32 [B, L], new psi or None).
  """
  kb, kt = jax.random.split(key)
  B, L, V = logits.shape
  m = spec.mask_id
  if frozen is None:
    frozen = jnp.zeros((B, L), bool)
  if spec.uses_conf and psi is None:
    raise ValueError("transition_sample: spec.uses_conf=True needs psi")
  masked = tokens == m
  if uniforms is not None:
    if spec.precision == "exact32":
      raise ValueError("transition_sample: uniforms (replay mode) need precision 'float64' or "
                       "'float32', got precision='exact32' (the two-stage draw builds no row)")
    if tuple(uniforms.shape) != (B, L, V):
      raise ValueError(f"transition_sample: uniforms shape {tuple(uniforms.shape)} != logits shape "
                       f"{(B, L, V)}")
  if log_weight is not None and tuple(log_weight.shape) != (B, L, V):
    raise ValueError(f"transition_sample: log_weight shape {tuple(log_weight.shape)} != logits "
                     f"shape {(B, L, V)}")
  if spec.precision == "exact32" and log_weight is not None:
    sig = token_sigma(tokens, psi, frozen, coeffs["sigma"], coeffs["conf"], spec)
    z_s, psi_drawn = _guided_row_draw(kt, tokens, logits, sig, coeffs["p_unmask"], log_weight,
                                      spec, ids)
    z_s = jnp.where(frozen, tokens, z_s)
    unmask = masked & (z_s != m)
    remask = ~masked & (z_s == m)
  elif spec.precision == "exact32":
    sig = token_sigma(tokens, psi, frozen, coeffs["sigma"], coeffs["conf"], spec)
    p_fire = jnp.where(masked, jnp.asarray(coeffs["p_unmask"], jnp.float32), sig)
    p_fire = jnp.where(frozen, 0.0, p_fire)
    if ids is None:
      bits = draws.bernoulli_bits(kb, B, L)
    else:
      row_ids, pos_ids = _draw_ids(ids, B, L)
      bits = draws.position_uint32(draws.position_keys(
          kb, jnp.broadcast_to(row_ids[:, None], (B, L)), jnp.broadcast_to(pos_ids, (B, L))))
    fire = draws.bernoulli_from_bits(bits, p_fire)
    unmask = masked & fire
    remask = ~masked & fire
    drawn, psi_drawn = draw_unmasked(kt, logits, unmask, spec, ids)
    z_s = jnp.where(unmask, drawn, jnp.where(remask, m, tokens))
  else:
    dtype = jnp.float64 if spec.precision == "float64" else jnp.float32
    if spec.precision == "float64" and not jax.config.jax_enable_x64:
      raise ValueError("SamplerConfig.precision='float64' needs jax_enable_x64 "
                       "(use `with jax.enable_x64(True):`)")
    sig = token_sigma(tokens, psi, frozen, coeffs["sigma"], coeffs["conf"], spec, dtype)
    logp = subs_log_probs(logits.astype(dtype), tokens, m, spec.temperature)
    logp = nucleus_filter(logp, spec.top_p, spec.nucleus_rule, method="select")
    x = jnp.exp(logp)
    a = jnp.where(masked, jnp.asarray(coeffs["p_unmask"], dtype), 1.0 - sig)
    a = jnp.where(frozen, 1.0, a)[..., None]
    q = a * x + (1.0 - a) * jax.nn.one_hot(m, V, dtype=dtype)
    if log_weight is not None:  # q_guided ∝ q exp(w), normalised (the race ignores the scale)
      lq = jnp.where(q > 0, jnp.log(jnp.where(q > 0, q, 1.0)), -jnp.inf) + log_weight.astype(dtype)
      q = jax.nn.softmax(lq, axis=-1)
    row_ids, pos_ids = _draw_ids(ids, B, L)
    rows = jnp.broadcast_to(row_ids[:, None], (B, L))
    pos = jnp.broadcast_to(pos_ids, (B, L))
    keys = None if uniforms is not None else draws.position_keys(kt, rows, pos)
    z_s = draws.race_argmax(keys, q, uniforms)
    z_s = jnp.where(frozen, tokens, z_s)
    unmask = masked & (z_s != m)
    remask = ~masked & (z_s == m)
    psi_drawn = jnp.take_along_axis(x, z_s[..., None], axis=-1)[..., 0].astype(jnp.float32)
  new_psi = None
  if spec.uses_conf:
    new_psi = jnp.where(unmask, psi_drawn, jnp.where(remask, jnp.inf, psi))
  return z_s.astype(jnp.int32), new_psi


def final_step(tokens, logits, mask_id):
  """SPEC §4.5: still-masked positions take argmax of SUBS x_theta (never the mask: with every
  non-mask logit -inf it is the first non-mask id, see `remdm_jax.diffusion.subs`). No nucleus and no
  temperature (argmax is invariant to tau > 0)."""
  logp = subs_log_probs(logits, tokens, mask_id)
  best = jnp.argmax(logp, axis=-1).astype(jnp.int32)
  return jnp.where(tokens == mask_id, best, tokens)
