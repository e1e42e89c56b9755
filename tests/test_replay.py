"""Replay ("mixture") mode (SPEC §4.7): our float64 sampler, fed the uniforms of an independent
PyTorch float64 reimplementation of the official code's sampler (SPEC §4), reproduces its draws
bitwise: every intermediate z and the final tokens.

The torch reference below is written from SPEC §4 as the official code computes it, not from our
code: SUBS in log space with the mask logit at -1e6 (§1), the sorted nucleus over the non-mask
columns (keep C_k <= p and the top token, renormalise; §4.3), the unnormalised row q per strategy
(§4.4: mdlm / loop phases 1 and 3 as p (t - s) with mask weight s and decoded positions copied
back; ReMDM / loop phase 2 / FB / conf as the §4.1 mixture with the stay-masked weight
(1 - alpha_s - sigma alpha_t) / (1 - alpha_t), negative on FB's last step; DFM by its unmask /
remask rates), the float64 race argmax q / E with E = 1e-10 - log(U + 1e-10),
U = torch.rand(..., float64) (§4.6), and the final argmax at min_t (§4.5). Times come from the
float32 torch.linspace(1, eps, T + 1) grid with s = t - dt and coefficients in float64 (§4.2);
DFM builds its own float64 grid (§4.4). conf keeps c = -psi in float32 (our [LIB] choice; the
reference's bf16 is not emulated here).

Why bitwise equality is expected: both sides race the same U on rows q that agree up to float64
rounding (ours builds q = a x~ + (1 - a) onehot(m) from the schedule's u, the reference divides
other expressions), so the argmax can only differ where two entries of q / E tie to ~1e-15
relative (float32 ~1e-7 for conf's weights) - probability ~1e-12 (~1e-4) over this whole file,
and the seeds are fixed.
"""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from remdm_jax.sampling import KernelSpec, SamplerConfig, make_sampler, transition_sample
from remdm_jax.sampling import draws

torch = pytest.importorskip("torch")

V, M, L, B = 7, 6, 10, 3  # mask id m = V - 1 (the last column, as in the reference)
EPS = 1e-5
_rng = np.random.default_rng(1234)
POS = _rng.normal(size=(L, V)) * 1.2    # position term
W_PREV = _rng.normal(size=(V, V)) * 1.5  # left neighbour's token term
W_NEXT = _rng.normal(size=(V, V)) * 1.5  # right neighbour's token term


# ------------------------------ the stand-in denoiser, twice -------------------------------------
def torch_denoiser(x):
  """float64 [B, L, V] logits from long [B, L] tokens (time-independent)."""
  pos, wp, wn = (torch.from_numpy(a) for a in (POS, W_PREV, W_NEXT))
  return (pos[None] + wp[torch.roll(x, 1, dims=1)]) + wn[torch.roll(x, -1, dims=1)]


def jax_denoiser(params, tokens, t):
  """The same function in JAX (gathers and two adds in the same order: bitwise equal logits)."""
  chex.assert_type(tokens, jnp.int32)
  chex.assert_shape(t, (tokens.shape[0],))
  prev = jnp.take(params["wp"], jnp.roll(tokens, 1, axis=1), axis=0)
  nxt = jnp.take(params["wn"], jnp.roll(tokens, -1, axis=1), axis=0)
  return (params["pos"][None] + prev) + nxt


def jax_params():
  """Must be called under x64 (float64 tables)."""
  p = {"pos": jnp.asarray(POS), "wp": jnp.asarray(W_PREV), "wn": jnp.asarray(W_NEXT)}
  assert all(v.dtype == jnp.float64 for v in p.values())
  return p


# ------------------------------ the torch float64 reference (SPEC §4) ----------------------------
def ref_subs(logits, x):
  """SPEC §1: mask logit -1e6, log-softmax, carry-over at decoded positions; returns probs."""
  lg = logits.clone()
  lg[..., M] += -1e6
  lg = lg - torch.logsumexp(lg, dim=-1, keepdim=True)
  onehot = torch.nn.functional.one_hot(x, V).bool()
  carry = torch.where(onehot, torch.zeros_like(lg), torch.full_like(lg, -float("inf")))
  lg = torch.where((x != M)[..., None], carry, lg)
  return lg.exp()


def ref_nucleus(p, top_p):
  """SPEC §4.3, the reference rule over the non-mask columns (the mask is the last column)."""
  if top_p is None or top_p >= 1.0:
    return p
  pp = p[..., :-1].clone()
  sp, si = pp.sort(dim=-1, descending=True)
  keep = sp.cumsum(dim=-1) <= top_p
  keep[..., 0] = True
  pp = torch.zeros_like(pp).scatter(-1, si, sp * keep)
  pp = pp / pp.sum(dim=-1, keepdim=True)
  out = p.clone()
  out[..., :-1] = pp
  return out


def ref_race(q, gen):
  """SPEC §4.6: argmax q / E, E = 1e-10 - log(U + 1e-10), U ~ U[0, 1) float64."""
  u = torch.rand(q.shape, dtype=torch.float64, generator=gen)
  e = 1e-10 - (u + 1e-10).log()
  return (q / e).argmax(dim=-1), u


def mdlm_row(p, mc_t, mc_s):
  """p (mc_t - mc_s) with mask weight mc_s (mc = 1 - alpha, the move chance)."""
  q = p * (mc_t - mc_s)
  q[..., M] = mc_s
  return q


def remdm_row(p, x, a_t, a_s, sigma):
  """SPEC §4.1 mixture as the reference builds it (sigma scalar or [B, L])."""
  sig = torch.as_tensor(sigma, dtype=torch.float64).expand(B, L)[..., None]
  q_dec = p * (1 - sig)
  q_dec[..., M] = sig[..., 0]
  q_msk = p * ((a_s - (1 - sig) * a_t) / (1 - a_t))
  q_msk[..., M] = ((1 - a_s - sig * a_t) / (1 - a_t))[..., 0]
  return torch.where((x != M)[..., None], q_dec, q_msk)


def dfm_times(T):
  """SPEC §4.4 DFM grid: list of (t, h, a, b) and min_t, in float64 Python floats."""
  out, t = [], 1.0
  while t > (1 - EPS) / T:
    a = 10 * t**0.25 * (1 - t)**0.25 + 1
    b = a - 1
    h = 1 / T if t == 1.0 else min(1 / T, 1 / (a / t + b / (1 - t)))
    out.append((t, h, a, b))
    t = t - h
  return out, t


def reference_sample(strategy, T, top_p, seed, eta=0.0, t_on=0.55, t_off=0.05, alpha_on=0.9):
  """Runs the reference loop. Returns (final tokens [B, L], trajectory [n, B, L] of z at the start
  of each step, uniforms [n, B, L, V] float64, float32 grid or None for DFM, remask count)."""
  gen = torch.Generator().manual_seed(seed)
  x = torch.full((B, L), M, dtype=torch.long)
  conf = torch.full((B, L), -float("inf"), dtype=torch.float32)  # c = -psi
  traj, us, remasks = [], [], 0
  if strategy == "dfm":
    steps, min_t = dfm_times(T)
    grid = None
  else:
    grid = torch.linspace(1, EPS, T + 1, dtype=torch.float32)
    dt = (1 - EPS) / T
    steps = [(float(grid[i]), dt) for i in range(T)]  # float64 from the float32 grid values
    min_t = float(grid[T])
  for step in steps:
    t = step[0]
    traj.append(x.clone())
    p = ref_nucleus(ref_subs(torch_denoiser(x), x), top_p)
    copy_back = False
    if strategy == "mdlm":
      s = t - step[1]
      q, copy_back = mdlm_row(p, t, s), True
    elif strategy == "remdm_loop":
      s = t - step[1]
      if t > t_on or t <= t_off:  # phases 1 / 3: MDLM on the rescaled alphas
        if t > t_on:
          alpha = lambda r: (1 - r) * alpha_on / (1 - t_on)
        else:
          alpha = lambda r: 1 - r * (1 - alpha_on) / t_off
        q, copy_back = mdlm_row(p, 1 - alpha(t), 1 - alpha(s)), True
      else:  # phase 2: alpha_t = alpha_s = alpha_on, sigma = eta
        q = remdm_row(p, x, alpha_on, alpha_on, eta)
    elif strategy == "dfm":
      _, h, a, b = step
      un = a * h / t
      re = 0.0 if t == 1.0 else b * h / (1 - t)
      q_dec = p * (1 - re)
      q_dec[..., M] = re
      q_msk = p * un
      q_msk[..., M] = 1 - un
      q = torch.where((x != M)[..., None], q_dec, q_msk)
    else:
      s = t - step[1]
      a_t, a_s = 1 - t, 1 - s
      smax = min(1.0, (1 - a_s) / a_t) if a_t > 0 else 1.0
      if strategy == "remdm_cap":
        sigma = min(eta, smax) if a_t > 0 else eta
      elif strategy == "remdm_rescale":
        sigma = eta * smax if a_t > 0 else eta
      elif strategy == "fb":
        sigma = (a_s - a_t) / a_t if a_t > 0 else 1.0
      elif strategy == "remdm_conf":
        w = torch.softmax(conf, dim=-1)  # NaN in rows with nothing decoded
        w = torch.where(x == M, torch.zeros_like(w), w)
        sigma = w.double() * smax
      else:
        raise AssertionError(strategy)
      q = remdm_row(p, x, a_t, a_s, sigma)
    xs, u = ref_race(q, gen)
    us.append(u)
    if copy_back:
      xs = torch.where(x != M, x, xs)
    newly = (x == M) & (xs != M)
    remasked = (x != M) & (xs == M)
    remasks += int(remasked.sum())
    if strategy == "remdm_conf":
      px = torch.gather(p, -1, xs[..., None])[..., 0].float()
      conf = torch.where(newly, -px, conf)
      conf = torch.where(remasked, torch.full_like(conf, -float("inf")), conf)
    x = xs
  # Final step (SPEC §4.5) at min_t: SUBS argmax, no nucleus.
  del min_t  # the stand-in denoiser is time-independent
  p = ref_subs(torch_denoiser(x), x)
  x = torch.where(x == M, p.argmax(dim=-1), x)
  return (x.numpy(), torch.stack(traj).numpy(), torch.stack(us).numpy(),
          None if grid is None else grid.numpy(), remasks)


# ------------------------------ replay tests ----------------------------------------------------
CASES = {  # strategy: (T, config overrides)
    "mdlm": (12, {}),
    "remdm_cap": (12, dict(eta=0.1)),
    "remdm_rescale": (12, dict(eta=0.5)),
    "remdm_loop": (16, dict(eta=0.2, t_on=0.6, t_off=0.25, alpha_on=0.7)),
    "fb": (10, {}),
    "remdm_conf": (12, {}),
    "dfm": (4, {}),
}


@pytest.mark.parametrize("top_p", [None, 0.9])
@pytest.mark.parametrize("strategy", list(CASES))
def test_replay_reproduces_reference_bitwise(strategy, top_p):
  T, over = CASES[strategy]
  seed = 100 + list(CASES).index(strategy) + (0 if top_p is None else 50)
  _check_replay(strategy, T, top_p, seed, over,
                strategy in ("remdm_cap", "remdm_rescale", "remdm_loop", "fb", "remdm_conf"))


@pytest.mark.parametrize("T", [1, 2, 3, 5])
def test_replay_loop_small_T(T):
  """remdm_loop at small T at the script settings (t_on 0.55, t_off 0.05, alpha_on 0.9): at T = 1, 3,
  5 the last phase-1 step overshoots to alpha_s > 1, where the reference's mask weight
  1 - alpha_s is negative and its race unmasks every masked position; ours clips u to 1 there.
  Same draws, bitwise (before the fix T = 3 and 5 raised)."""
  _check_replay("remdm_loop", T, 0.9, 300 + T, dict(eta=0.1), False)


def _check_replay(strategy, T, top_p, seed, over, needs_remask):
  ref_x, ref_traj, us, grid, remasks = reference_sample(strategy, T, top_p, seed, **over)
  assert us.dtype == np.float64 and us.shape[1:] == (B, L, V)
  assert not np.any(ref_x == M)
  if needs_remask:
    assert remasks > 0, "the reference never remasked: the test would not exercise sigma"
  cfg = SamplerConfig(strategy=strategy, num_steps=T, precision="float64", top_p=top_p, **over)
  with jax.enable_x64(True):
    s = make_sampler(jax_denoiser, cfg, seq_len=L, mask_id=M, trajectory_every=1, grid=grid)
    assert s.schedule.n_steps == us.shape[0], (s.schedule.n_steps, us.shape[0])
    out, info = s.sample_with_info(jax_params(), jax.random.key(0), batch_size=B,
                                   uniforms=jnp.asarray(us))
    out, traj = np.asarray(out), np.asarray(info["trajectory"])
  chex.assert_type(out, jnp.int32)
  assert traj.shape == ref_traj.shape
  for i in range(traj.shape[0]):
    np.testing.assert_array_equal(traj[i], ref_traj[i], err_msg=f"{strategy}: z before step {i}")
  np.testing.assert_array_equal(out, ref_x, err_msg=f"{strategy}: final tokens")


def test_uniforms_are_traced_not_baked():
  """One trace of the sampler for several uniforms of the same shape; the draws follow them."""
  cfg = SamplerConfig(strategy="remdm_cap", num_steps=6, precision="float64", eta=0.2, top_p=0.9)
  n_traces = []

  def counting(params, tokens, t):
    n_traces.append(1)
    return jax_denoiser(params, tokens, t)

  s = make_sampler(counting, cfg, seq_len=L, mask_id=M)
  rng = np.random.default_rng(0)
  with jax.enable_x64(True):
    p = jax_params()
    outs = [np.asarray(s(p, jax.random.key(0), uniforms=rng.random((6, B, L, V))))
            for _ in range(3)]
    u = rng.random((6, B, L, V))
    again = [np.asarray(s(p, jax.random.key(k), uniforms=u)) for k in (1, 2)]
  assert len(n_traces) == 2  # scan body + final step, traced once for all calls
  assert not np.array_equal(outs[0], outs[1]) or not np.array_equal(outs[1], outs[2])
  np.testing.assert_array_equal(again[0], again[1])  # the key is unused in replay mode


def test_race_with_uniforms_equals_keyed_race():
  """race_argmax(uniforms=U) with U drawn from the same per-position keys is the default race."""
  rng = np.random.default_rng(5)
  with jax.enable_x64(True):
    q = jnp.asarray(rng.random((4, 5, V)) * (rng.random((4, 5, V)) < 0.7))
    rows = jnp.broadcast_to(jnp.arange(4, dtype=jnp.int32)[:, None], (4, 5))
    pos = jnp.broadcast_to(jnp.arange(5, dtype=jnp.int32), (4, 5))
    keys = draws.position_keys(jax.random.key(3), rows, pos)
    u = jax.vmap(jax.vmap(lambda k: jax.random.uniform(k, (V,), jnp.float64)))(keys)
    a = draws.race_argmax(keys, q)
    b = draws.race_argmax(None, q, uniforms=u)
    c = draws.race_argmax(None, q, uniforms=1.0 - u)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert not np.array_equal(np.asarray(b), np.asarray(c))


def test_replay_input_errors():
  rng = np.random.default_rng(0)
  u = rng.random((6, B, L, V))
  ex = make_sampler(jax_denoiser, SamplerConfig(num_steps=6), seq_len=L, mask_id=M)
  with jax.enable_x64(True):
    p = jax_params()
    with pytest.raises(ValueError, match="precision='exact32'"):
      ex(p, jax.random.key(0), uniforms=u)
    spec = KernelSpec(mask_id=M)
    coeffs = {"sigma": 0.0, "conf": 0.0, "p_unmask": 0.5}
    z = jnp.full((B, L), M, jnp.int32)
    with pytest.raises(ValueError, match="precision='exact32'"):
      transition_sample(jax.random.key(0), z, jnp.zeros((B, L, V)), coeffs, spec, uniforms=u[0])
    s = make_sampler(jax_denoiser, SamplerConfig(num_steps=6, precision="float64"), seq_len=L,
                     mask_id=M)
    with pytest.raises(ValueError, match=r"uniforms shape \(5, 3, 10, 7\)"):
      s(p, jax.random.key(0), uniforms=u[:5])
    with pytest.raises(ValueError, match=r"uniforms shape \(6, 3, 9, 7\)"):
      s(p, jax.random.key(0), uniforms=u[:, :, :9])
    with pytest.raises(ValueError, match=r"uniforms shape \(6, 3, 10, 7\)"):
      s(p, jax.random.key(0), batch_size=2, uniforms=u)
    with pytest.raises(ValueError, match=r"uniforms shape \(3, 10, 5\)"):  # wrong V, at trace
      s(p, jax.random.key(0), uniforms=u[..., :5])
    with pytest.raises(ValueError, match="dtype float32"):
      s(p, jax.random.key(0), uniforms=u.astype(np.float32))
  with pytest.raises(ValueError, match="x64"):  # would silently become float32 without x64
    s(p, jax.random.key(0), uniforms=u)
