"""Discrete guidance for the MDLM / ReMDM sampler: D-CFG and D-CBG (SPEC_DOMAINS §M.4, §M.6).

Both compose with the shared transition kernel (`sampler.transition_sample`), so every strategy
(mdlm, remdm_cap / rescale / conf / switch / loop, fb, dfm) and every precision is guided by the
same code; no strategy branches.

D-CFG (classifier-free; Nisonoff et al. 2024, reference `diffusion.py::_cfg_denoise`):
  x_theta^gamma = softmax(gamma * l_c + (1 - gamma) * l_u), l_c / l_u the SUBS log-probs of the
  conditional / null-class outputs (`cfg_log_probs`). `cfg_denoise_fn` wraps a class-conditional
  denoiser into an ordinary `denoise_fn(params, tokens, t)` that returns these guided log-probs as
  its "logits" (mask column at NEG_INF); the kernel's SUBS of them is the identity up to rounding.
  gamma = 0 (null class only) and gamma = 1 (conditional only) make one model call per step, any
  other gamma one batched call of 2B rows. Under ReMDM nothing is copied over: the kernel's rule
  for decoded positions (stay w.p. 1 - sigma, remask w.p. sigma) applies (§M.6).

D-CBG (classifier-based; reference `_cbg_denoise`): the step's posterior row is reweighted,
  q_guided(z_s^l = v) ∝ q_sigma(v | z_t, x_theta) * exp(gamma * C[l, v]),
  C[l, v] = log p(y | z_t with position l set to v)   (all V values, the mask included),
  where q_sigma is the full ReMDM row of the step (masked: u x_theta + (1 - u) e_m; decoded:
  (1 - sigma) e_{z_t} + sigma e_m). With sigma = 0 the decoded row is e_{z_t}, which is exactly the
  reference's forced copy-over, so this reduces to the reference's D-CBG (§M.4 steps 1-5); under
  ReMDM a decoded position keeps two outcomes in the ratio (1 - sigma) e^{gamma C_x} :
  sigma e^{gamma C_m} (§M.6). `CBGGuidance` is passed to `make_sampler(..., guidance=)`, which
  computes gamma * C inside the scan and hands it to the kernel as `log_weight`.

Classifier interface (D-CBG): `classifier_fn(params, x, t) -> log p(y | x)` float [N, C], with
  x float32 [N, L, V] one-hot (or soft) rows of the input tokens (the mask id is an ordinary
  column) and t float32 [N] the step's grid time (a classifier without time conditioning ignores
  it, as the reference's). The one-hot form is what the first-order approximation differentiates;
  a Flax classifier implements it as `x @ embedding_table`. With `CBGGuidance(token_input=True)`
  the exact form calls `classifier_fn(params, tokens int32 [N, L], t)` instead (no approximation).

NFE accounting: `cfg_model_calls(gamma)` model rows per denoiser call (1 or 2);
`CBGGuidance.classifier_calls_per_step(L, V)`: L * V classifier rows per sample per step (exact:
every one-token change, the unchanged sequence among them), 1 forward + 1 backward (approx).
The sampler reports them in `info["nfe"]` (denoiser calls) and `info["classifier_nfe"]`.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax import lax

from remdm_jax.diffusion.subs import NEG_INF, subs_log_probs
from remdm_jax.types import ClassifierFn, CondDenoiseFn



def _check_gamma(gamma, who):
  try:
    g = float(gamma)
  except (TypeError, ValueError):
    raise ValueError(f"{who}: gamma={gamma!r} must be a real number") from None
  if not g == g or abs(g) == float("inf"):
    raise ValueError(f"{who}: gamma={gamma!r} must be finite")
  return g


def cfg_model_calls(gamma: float) -> int:
  """Model rows per sample per denoiser call of D-CFG: 1 for gamma in {0, 1}, else 2 (§M.4)."""
  g = _check_gamma(gamma, "cfg_model_calls")
  return 1 if g in (0.0, 1.0) else 2


def cfg_mix(lc: jax.Array, lu: jax.Array, gamma: float) -> jax.Array:
  """The D-CFG mix of two log-distributions over the last axis (SPEC_DOMAINS §M.4 D-CFG step 2),
  the one home of the formula (MDLM x_theta, UDLM posteriors, AR next-token distributions):

    log_softmax(gamma * lc + (1 - gamma) * lu)

  Entries that are log 0 (<= NEG_INF) in both stay exactly NEG_INF. gamma = 0 / 1 return
  log_softmax(lu) / log_softmax(lc) (the other argument may be None).

  Args: lc, lu: [..., V] conditional / null-class log-probs (or logits; any float dtype, computed
    in float32 at least). gamma: a Python float (static).
  Returns: [..., V] normalised log-probs (float32, float64 for float64 input).
  """
  g = _check_gamma(gamma, "cfg_mix")
  if g in (0.0, 1.0):
    one = lu if g == 0.0 else lc
    return jax.nn.log_softmax(one.astype(jnp.promote_types(one.dtype, jnp.float32)), axis=-1)
  dt = jnp.promote_types(jnp.promote_types(lc.dtype, lu.dtype), jnp.float32)
  lc, lu = lc.astype(dt), lu.astype(dt)
  mixed = jax.nn.log_softmax(g * lc + (1.0 - g) * lu, axis=-1)
  # Entries that are log 0 in both stay log 0 (NEG_INF, not -gamma * 1e9 + ... rounding).
  dead = (lc <= NEG_INF) & (lu <= NEG_INF)
  return jnp.where(dead, jnp.asarray(NEG_INF, mixed.dtype), mixed)


def cfg_log_probs(lc_logits: jax.Array, lu_logits: jax.Array, tokens: jax.Array, gamma: float,
                  mask_id: int) -> jax.Array:
  """Guided log x_theta of D-CFG (SPEC_DOMAINS §M.4 D-CFG steps 1-2).

  log_softmax(gamma * SUBS(l_c) + (1 - gamma) * SUBS(l_u)) over V, SUBS = `subs_log_probs`
  (mask column NEG_INF, unmasked rows one-hot in log space; those stay one-hot for any gamma).
  gamma = 0 returns SUBS(l_u), gamma = 1 SUBS(l_c) (then the other argument may be None).

  Args:
    lc_logits, lu_logits: [B, L, V] conditional / null-class outputs (any float dtype).
    tokens: int [B, L] z_t. gamma: a Python float (static). mask_id: the mask id.
  Returns: [B, L, V] log-probs, float32 (float64 for float64 logits); mask column = NEG_INF.
  """
  g = _check_gamma(gamma, "cfg_log_probs")
  if g == 0.0:
    return subs_log_probs(lu_logits, tokens, mask_id)
  if g == 1.0:
    return subs_log_probs(lc_logits, tokens, mask_id)
  return cfg_mix(subs_log_probs(lc_logits, tokens, mask_id),
                 subs_log_probs(lu_logits, tokens, mask_id), g)


def cfg_logits_pair(cond_denoise_fn: CondDenoiseFn, model_params, tokens, t, labels, null_label,
                    gamma: float):
  """(l_c, l_u) raw outputs for D-CFG with the fewest model rows: gamma = 1 -> (l_c, None),
  gamma = 0 -> (None, l_u), else ONE call of 2B rows (labels, then null labels) split in two.

  cond_denoise_fn(model_params, tokens int32 [N, L], t float32 [N], labels int32 [N]) -> [N, L, V].
  """
  g = _check_gamma(gamma, "cfg_logits_pair")
  labels = jnp.asarray(labels, jnp.int32)
  null = jnp.full_like(labels, null_label)
  if g == 1.0:
    return cond_denoise_fn(model_params, tokens, t, labels), None
  if g == 0.0:
    return None, cond_denoise_fn(model_params, tokens, t, null)
  B = tokens.shape[0]
  out = cond_denoise_fn(model_params, jnp.concatenate([tokens, tokens]), jnp.concatenate([t, t]),
                        jnp.concatenate([labels, null]))
  return out[:B], out[B:]


def cfg_denoise_fn(cond_denoise_fn: CondDenoiseFn, gamma: float, null_label: int, *,
                   mask_id: int):
  """Wraps a class-conditional denoiser into a D-CFG `denoise_fn` for `make_sampler`.

  Args:
    cond_denoise_fn: (model_params, tokens int32 [N, L], t float32 [N], labels int32 [N]) ->
      logits [N, L, V]; label `null_label` is the null class (= num_classes, §M.3).
    gamma: guidance strength (static Python float); 0 / 1 make one model call.
    null_label: the null class id. mask_id: the mask id.
  Returns:
    denoise_fn(params, tokens [B, L], t [B]) -> guided log-probs [B, L, V] (float32), with
    params = {"model": model_params, "labels": int32 [B] the target class of each row}.
    Model rows per call: `cfg_model_calls(gamma)` * B.
  Raises: ValueError for a non-finite gamma, a bad null_label / mask_id, or (at trace time)
    params without the keys "model" and "labels".
  """
  g = _check_gamma(gamma, "cfg_denoise_fn")
  if not isinstance(null_label, int) or isinstance(null_label, bool) or null_label < 0:
    raise ValueError(f"cfg_denoise_fn: null_label={null_label!r} must be an int >= 0")
  if not isinstance(mask_id, int) or isinstance(mask_id, bool) or mask_id < 0:
    raise ValueError(f"cfg_denoise_fn: mask_id={mask_id!r} must be an int >= 0")

  def denoise_fn(params, tokens, t):
    if not isinstance(params, dict) or set(params) != {"model", "labels"}:
      got = sorted(params) if isinstance(params, dict) else type(params).__name__
      raise ValueError(f"D-CFG params must be a dict with keys 'model' and 'labels', got {got}")
    labels = jnp.broadcast_to(jnp.asarray(params["labels"], jnp.int32), tokens.shape[:1])
    lc, lu = cfg_logits_pair(cond_denoise_fn, params["model"], tokens, t, labels, null_label, g)
    return cfg_log_probs(lc, lu, tokens, g, mask_id)

  return denoise_fn


def class_log_prob(log_probs: jax.Array, label: int, where: str = "classifier") -> jax.Array:
  """log_probs[:, label] after a trace-time check that the classifier has that class: an index
  past the classes is clamped by JAX's gather (a D-CBG label beyond the classifier's classes
  silently guided towards its last class). ValueError naming the label otherwise."""
  C = log_probs.shape[-1]
  if not 0 <= int(label) < C:
    raise ValueError(f"{where}: label={label} is outside the classifier's classes [0, {C})")
  return log_probs[:, label]


def classifier_term(classifier_fn: ClassifierFn, params, tokens: jax.Array, t: jax.Array,
                    label: int, vocab: int, *, approx: bool = False, chunk_size: int = 4096,
                    token_input: bool = False) -> jax.Array:
  """C[b, l, v] = log p(y = label | tokens[b] with position l set to v), float32 [B, L, V].

  Exact (approx=False): all B * L * V one-token changes (v runs over the whole vocabulary, the
  mask id included) are scored in chunks of `chunk_size` classifier rows under `lax.map`, so
  memory is bounded by one chunk. First order (approx=True; §M.4 D-CBG step 2):
    C[b, l, v] ~ log p(y | x_t) + g[b, l, v] - g[b, l, x_t^l],  g = d log p(y | x) / d onehot(x),
  one forward and one backward pass at the one-hot of x_t (needs one-hot input).

  Args:
    classifier_fn: see the module docstring (one-hot float32 [N, L, V] input, or int32 tokens
      [N, L] with token_input=True), -> log-probs [N, C] (normalised over the classes).
    params: the classifier's params pytree. tokens: int32 [B, L] x_t. t: float [B].
    label: the target class y (static int, inside the classifier's classes: ValueError at trace
      time otherwise). vocab: V.
  """
  B, L = tokens.shape
  V = int(vocab)
  t = jnp.asarray(t, jnp.float32)
  if approx:
    if token_input:
      raise ValueError("classifier_term: approx=True differentiates w.r.t. the one-hot input; "
                       "it needs token_input=False")
    oh = jax.nn.one_hot(tokens, V, dtype=jnp.float32)

    def f(x):
      lp = class_log_prob(classifier_fn(params, x, t), label, "D-CBG").astype(jnp.float32)
      return jnp.sum(lp), lp

    g, lp0 = jax.grad(f, has_aux=True)(oh)
    g_cur = jnp.take_along_axis(g, tokens[..., None].astype(jnp.int32), axis=-1)
    return lp0[:, None, None] + g - g_cur
  n = B * L * V
  chunk = max(1, min(int(chunk_size), n))
  n_chunks = -(-n // chunk)
  idx = jnp.arange(n_chunks * chunk, dtype=jnp.int32) % n
  pos = jnp.arange(L, dtype=jnp.int32)

  def run(ix):
    b, l, v = ix // (L * V), (ix // V) % L, ix % V
    toks = jnp.where(pos[None, :] == l[:, None], v[:, None], tokens[b].astype(jnp.int32))
    x = toks if token_input else jax.nn.one_hot(toks, V, dtype=jnp.float32)
    return class_log_prob(classifier_fn(params, x, t[b]), label, "D-CBG").astype(jnp.float32)

  out = lax.map(run, idx.reshape(n_chunks, chunk)).reshape(-1)[:n]
  return out.reshape(B, L, V)


@dataclasses.dataclass(frozen=True)
class CBGGuidance:
  """D-CBG settings for `make_sampler(..., guidance=CBGGuidance(...))` (SPEC_DOMAINS §M.4, §M.6).

  With guidance, the sampler's params are {"model": <denoise_fn params>, "classifier":
  <classifier_fn params>}; every step computes log_weight = gamma * C (`classifier_term`) at z_t
  and the grid time t, and the kernel draws from q_guided ∝ q_sigma * exp(log_weight).

  Attributes:
    classifier_fn: (params, x, t) -> log p(y | x) [N, C], see the module docstring.
    gamma: guidance strength (static float; gamma = 0 is unguided but still scores).
    label: the target class y (§M.1: generation asks for 1).
    approx: first-order Taylor form (1 forward + 1 backward per step) instead of exact.
    chunk_size: classifier rows per call of the exact form (memory bound).
    token_input: the exact form passes int32 tokens instead of one-hot (approx must be False).
  """

  classifier_fn: ClassifierFn
  gamma: float = 1.0
  label: int = 1
  approx: bool = False
  chunk_size: int = 4096
  token_input: bool = False

  def __post_init__(self):
    if not callable(self.classifier_fn):
      raise ValueError(f"CBGGuidance.classifier_fn={self.classifier_fn!r} must be callable")
    object.__setattr__(self, "gamma", _check_gamma(self.gamma, "CBGGuidance"))
    if not isinstance(self.label, int) or isinstance(self.label, bool) or self.label < 0:
      raise ValueError(f"CBGGuidance.label={self.label!r} must be an int >= 0")
    if not isinstance(self.chunk_size, int) or self.chunk_size < 1:
      raise ValueError(f"CBGGuidance.chunk_size={self.chunk_size!r} must be an int >= 1")
    if self.approx and self.token_input:
      raise ValueError("CBGGuidance: approx=True needs one-hot input (token_input=False)")

  def log_weight(self, classifier_params, tokens: jax.Array, t: jax.Array,
                 vocab: int) -> jax.Array:
    """gamma * C, float32 [B, L, V] (t float [B])."""
    c = classifier_term(self.classifier_fn, classifier_params, tokens, t, self.label, vocab,
                        approx=self.approx, chunk_size=self.chunk_size,
                        token_input=self.token_input)
    return jnp.float32(self.gamma) * c

  def classifier_calls_per_step(self, seq_len: int, vocab: int) -> int:
    """Classifier rows per sample per step: L * V exact; 1 (forward, plus a backward) approx."""
    return 1 if self.approx else int(seq_len) * int(vocab)
