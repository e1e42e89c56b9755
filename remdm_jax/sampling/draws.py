"""Random draws of the sampler (SPEC §4.6), all derived from (key, row, position).

Every random number of row b, position l comes from fold_in(fold_in(key, b), l), so a sample does
not depend on the batch size, on how the batch is sharded, or on which positions are processed
together (the exact32 token draw may handle unmasking positions in any grouping).

exact32 (two-stage sampling, why it is exact):
  (a) Bernoulli(p): fire iff r < round(p 2^32) for a uniform 32-bit integer r (p >= 1 always fires).
      P(fire) = round(p 2^32) / 2^32, within 2^-33 of the float32 p for every p, including the
      conf sigmas down to ~1e-8 (a float32 `uniform < p` has resolution 2^-23 and is biased there).
      p 2^32 is an exact float32 (power-of-two scaling), so the threshold needs no 64-bit floats.
  (b) Categorical: Gumbel-max over log x~ in float32 with g = -log(-log1p(-W)),
      W = (r + 0.5) 2^-32 from a 32-bit integer r. Small W (the Gumbel tail that decides a race
      between many small probabilities) is represented exactly in float32, so g reaches
      -log(2^-33) ~ 22.9 (the float32 uniform stops at ~16.6): total-variation bias per draw
      < 1e-5 at V ~ 5e4 (SPEC §4.6). Because the mixture "stay / remask / unmask to x~" is exactly
      "Bernoulli, then categorical", (a) + (b) sample the ReMDM posterior without building it.
float64 / float32: the reference's exponential race argmax_k q_k / E_k, E_k = 1e-10 - log(U_k + 1e-10),
  over the full unnormalised row (float32 is biased: rare tokens are under-sampled).
  Replay: `race_argmax(..., uniforms=U)` runs the same race on given U (e.g. another
  implementation's recorded draws) instead of drawing them.

Key schemes (one per driver; all keep "a draw is a function of (key, row, step, position)"):
  sampler (`sampling.sampler`, semi-AR, the block strategy path): step key fold_in(key, i), split
    into (Bernoulli, token) keys; position keys fold_in(fold_in(token key, b), l).
  block decoding (`sampling.blocks` with the confidence rules of `sampling.confidence`): row key
    r_b = fold_in(key, b) (or the caller's per-row keys, `block_row_keys`); global step j uses
    fold_in(r_b, j) split into (token, confidence) keys (`step_keys`), and generated position g
    uses fold_in(that key, g) (`offset_position_keys`). A row's draws therefore depend only on its
    own key, never on the batch, its index in it or its padding.
  MaskGIT and the images fork mode reproduce their references' key chains (`jax.random.split`
  per step, draws over the whole [B, L, K] array), see `sampling.maskgit` / `sampling.fork_compat`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

_TWO32 = 4294967296.0


def row_keys(key: jax.Array, batch: int) -> jax.Array:
  """[B] keys fold_in(key, b)."""
  return jax.vmap(lambda b: jax.random.fold_in(key, b))(jnp.arange(batch, dtype=jnp.uint32))


def block_row_keys(key: jax.Array, batch: int) -> jax.Array:
  """[B] typed row keys of block decoding. key: one key (typed, or raw uint32 key data) -> fold_in
  (key, b); [B] keys (typed, or raw data [B, 2]) -> themselves. ValueError for another shape."""
  if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.wrap_key_data(key)
  if key.ndim == 0:
    return jax.vmap(lambda b: jax.random.fold_in(key, b))(jnp.arange(batch, dtype=jnp.uint32))
  if key.shape != (batch,):
    raise ValueError(f"key shape {key.shape} must be () or [B={batch}]")
  return key


def step_keys(rows: jax.Array, j) -> tuple[jax.Array, jax.Array]:
  """(token keys [B], confidence keys [B]): split(fold_in(r_b, j)) of every row key r_b."""
  sk = jax.vmap(lambda k: jax.random.fold_in(k, j))(rows)
  tok, conf = jax.vmap(jax.random.split, out_axes=1)(sk)
  return tok, conf


def offset_position_keys(keys: jax.Array, g0, n: int) -> jax.Array:
  """[B, n] keys fold_in(keys[b], g0 + j), j < n (g0 may be traced)."""
  pos = (g0 + jnp.arange(n)).astype(jnp.uint32)
  return jax.vmap(lambda k: jax.vmap(lambda g: jax.random.fold_in(k, g))(pos))(keys)


def uniform_rows(keys: jax.Array, vocab: int, dtype) -> jax.Array:
  """[..., V] U[0, 1) rows of `dtype`, row [...] from keys[...] (float64 needs x64)."""
  return _per_key(keys, lambda k: jax.random.uniform(k, (vocab,), dtype))


def position_keys(key: jax.Array, rows: jax.Array, positions: jax.Array) -> jax.Array:
  """Keys fold_in(fold_in(key, row), position) for int arrays rows, positions of equal shape."""
  fn = lambda b, l: jax.random.fold_in(jax.random.fold_in(key, b), l)
  flat = jax.vmap(fn)(rows.reshape(-1).astype(jnp.uint32), positions.reshape(-1).astype(jnp.uint32))
  return flat.reshape(rows.shape + flat.shape[1:])


def bernoulli_bits(key: jax.Array, batch: int, length: int) -> jax.Array:
  """uint32 [B, L]: row b from fold_in(key, b)."""
  return jax.vmap(lambda k: jax.random.bits(k, (length,), jnp.uint32))(row_keys(key, batch))


def position_uint32(keys: jax.Array) -> jax.Array:
  """uint32 [...]: one random 32-bit word per key of keys [...] (per-position Bernoulli bits)."""
  return _per_key(keys, lambda k: jax.random.bits(k, (), jnp.uint32))


def bernoulli_from_bits(bits: jax.Array, p: jax.Array) -> jax.Array:
  """Exact Bernoulli(p) from uint32 bits: bits < round(p 2^32); p >= 1 always, p <= 0 never."""
  p = jnp.asarray(p, jnp.float32)
  scaled = jnp.round(jnp.clip(p, 0.0, 1.0) * jnp.float32(_TWO32))
  # p < 1 gives scaled <= 2^32 - 256 (exact float32), which fits uint32.
  thr = jnp.where(p >= 1.0, jnp.float32(0.0), scaled).astype(jnp.uint32)
  return (p >= 1.0) | (bits < thr)


def gumbel_from_bits(bits: jax.Array) -> jax.Array:
  """float32 Gumbel noise g = -log(-log1p(-W)), W = (r + 0.5) 2^-32 (max ~22.9)."""
  w = (bits.astype(jnp.float32) + 0.5) * jnp.float32(1.0 / _TWO32)
  w = jnp.minimum(w, jnp.float32(1.0 - 2.0**-24))  # r near 2^32 rounds to 1.0 in float32
  return -jnp.log(-jnp.log1p(-w))


def position_bits(keys: jax.Array, vocab: int) -> jax.Array:
  """uint32 [..., V] per-position random bits from keys [...]."""
  return _per_key(keys, lambda k: jax.random.bits(k, (vocab,), jnp.uint32))


def _per_key(keys, fn):
  """vmap fn over the leading (batch) dims of keys, flattened to one dim (a flat vmap compiles
  several times faster on CPU than nested ones)."""
  nb = _batch_ndim(keys)
  shape = keys.shape[:nb]
  flat = keys.reshape((-1,) + keys.shape[nb:])
  out = jax.vmap(fn)(flat)
  return out.reshape(shape + out.shape[1:])


def _batch_ndim(keys) -> int:
  if jnp.issubdtype(keys.dtype, jax.dtypes.prng_key):
    return keys.ndim
  return keys.ndim - 1  # raw uint32 keys carry a trailing key dimension


def gumbel_argmax(keys: jax.Array, log_probs: jax.Array):
  """exact32 categorical draw per position: argmax_v log_probs[..., v] + g_v, noise from
  `position_bits(keys)`. Entries at NEG_INF (-1e9) never win (g <= 22.9)."""
  g = gumbel_from_bits(position_bits(keys, log_probs.shape[-1]))
  return jnp.argmax(log_probs.astype(jnp.float32) + g, axis=-1).astype(jnp.int32)


def race_argmax(keys: jax.Array, q: jax.Array, uniforms=None) -> jax.Array:
  """The reference race argmax_k q_k / E_k, E_k = 1e-10 - log(U_k + 1e-10), U ~ U[0, 1) in q's
  dtype (float64 needs x64), uniforms from the per-position keys [...]. Entries q_k <= 0 never win
  (unless the whole row is <= 0).

  uniforms: optional U of q's shape [..., V] (replay mode: e.g. the official code's
  `torch.rand_like(q)` values); when given, `keys` is unused and no randomness is drawn."""
  if uniforms is None:
    u = _per_key(keys, lambda k: jax.random.uniform(k, (q.shape[-1],), q.dtype))
  else:
    if uniforms.shape != q.shape:
      raise ValueError(f"race_argmax: uniforms shape {tuple(uniforms.shape)} != row shape "
                       f"{tuple(q.shape)} ([..., V])")
    u = uniforms.astype(q.dtype)
  e = 1e-10 - jnp.log(u + 1e-10)
  score = jnp.where(q > 0, q / e, -jnp.inf)
  return jnp.argmax(score, axis=-1).astype(jnp.int32)
