"""End-to-end sampler tests: exactness, bitwise identities, traces, sharding, prompts, caching."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from scipy import stats

from remdm_jax.sampling import SamplerConfig, final_step, make_sampler, transition_sample
from remdm_jax.sampling.sampler import KernelSpec

V, M, L = 6, 5, 8
P = np.array([0.35, 0.25, 0.2, 0.12, 0.08, 0.0])  # position-independent target (mask prob 0)


def factorized_denoiser(params, tokens, t):
  """The exact denoiser of a factorized distribution: logits = log p at every position."""
  chex.assert_type(tokens, jnp.int32)
  chex.assert_shape(t, (tokens.shape[0],))
  logp = jnp.log(jnp.asarray(P, jnp.float32) + 1e-30) * params["scale"]
  return jnp.broadcast_to(logp, tokens.shape + (V,))


def mixing_denoiser(params, tokens, t):
  """A denoiser that depends on the input (for identity tests, not exactness)."""
  emb = jax.nn.one_hot(tokens, V) @ params["w"]  # [B, L, V]
  return emb + jnp.roll(emb, 1, axis=1) + params["b"]


def mix_params():
  k1, k2 = jax.random.split(jax.random.key(42))
  return {"w": jax.random.normal(k1, (V, V)), "b": jax.random.normal(k2, (V,))}


PARAMS = {"scale": jnp.float32(1.0)}
ALL = ["mdlm", "remdm_cap", "remdm_rescale", "remdm_conf", "remdm_switch", "remdm_loop", "fb", "dfm"]


@pytest.mark.parametrize("T", [4, 64])
@pytest.mark.parametrize("strategy", ALL)
def test_exact_denoiser_gives_target_distribution(strategy, T):
  """Chi-square (p-value > 1e-3, fixed keys) of B L = 2048 final tokens against p, mixed with the
  final argmax for the fraction f still masked before the final step (SPEC §4.5):
  f = 1 - alpha_s of the last step (marginals preserved; ~1e-5, but 0.1 for the loop at T = 4,
  which has no phase 3, and 0.23 for DFM at T = 4, whose grid stops at t ~ 1/T), and
  f = alpha_t sigma of the last step for FB (u is clipped to 1 there; 0.25 at T = 4)."""
  cfg = SamplerConfig(strategy=strategy, num_steps=T, eta=0.05 if strategy in (
      "remdm_cap", "remdm_switch", "remdm_loop") else None)
  s = make_sampler(factorized_denoiser, cfg, seq_len=L, mask_id=M)
  out = np.asarray(s(PARAMS, jax.random.key(T), batch_size=256))
  assert out.dtype == np.int32 and out.shape == (256, L) and not np.any(out == M)
  sc = s.schedule
  f = sc.alpha_t[-1] * sc.sigma[-1] if strategy == "fb" else 1.0 - sc.alpha_s[-1]
  want = (1 - f) * P[:M] + f * np.eye(M)[np.argmax(P)]
  counts = np.bincount(out.ravel(), minlength=V)[:M]
  res = stats.chisquare(counts, want * counts.sum())
  assert res.pvalue > 1e-3, (counts, want, res)


def test_sigma_zero_equals_mdlm_bitwise():
  p = mix_params()
  a = make_sampler(mixing_denoiser, SamplerConfig(num_steps=16), seq_len=L, mask_id=M)
  b = make_sampler(mixing_denoiser, SamplerConfig(strategy="remdm_cap", eta=0.0, num_steps=16),
                   seq_len=L, mask_id=M)
  c = make_sampler(mixing_denoiser, SamplerConfig(strategy="remdm_cap", eta=0.2, num_steps=16),
                   seq_len=L, mask_id=M)
  key = jax.random.key(3)
  xa, xb, xc = (np.asarray(f(p, key, batch_size=8)) for f in (a, b, c))
  np.testing.assert_array_equal(xa, xb)
  assert np.any(xa != xc)  # the test can fail: remasking changes samples


def test_scan_equals_python_loop():
  cfg = SamplerConfig(strategy="remdm_conf", num_steps=12, top_p=0.9)
  p = mix_params()
  s = make_sampler(mixing_denoiser, cfg, seq_len=L, mask_id=M, trajectory_every=1)
  key = jax.random.key(11)
  out, info = s.sample_with_info(p, key, batch_size=4)
  spec = KernelSpec.from_config(cfg, M, s.unmask_buffer)
  z = jnp.full((4, L), M, jnp.int32)
  psi = jnp.full((4, L), jnp.inf, jnp.float32)
  xs = s.schedule.xs(np.float32)
  step = jax.jit(lambda k, z, lg, c, psi: transition_sample(k, z, lg, c, spec, psi=psi))
  for i in range(s.schedule.n_steps):
    np.testing.assert_array_equal(info["trajectory"][i], z)
    logits = mixing_denoiser(p, z, jnp.full((4,), xs["t"][i]))
    c = {k: jnp.asarray(v[i]) for k, v in xs.items()}
    z, psi = step(jax.random.fold_in(key, i), z, logits, c, psi)
  z = final_step(z, mixing_denoiser(p, z, jnp.full((4,), s.schedule.min_t, jnp.float32)), M)
  np.testing.assert_array_equal(out, z)
  assert int(info["nfe"]) == s.nfe == 13


def test_one_trace_per_config():
  traced = chex.assert_max_traces(mixing_denoiser, n=2)  # scan body + final step, once
  s = make_sampler(traced, SamplerConfig(strategy="remdm_loop", num_steps=8), seq_len=L,
                   mask_id=M)
  p = mix_params()
  outs = [np.asarray(s(jax.tree.map(lambda x: x * (1 + j), p), jax.random.key(j), batch_size=4))
          for j in range(3)]
  assert not np.array_equal(outs[0], outs[1])


class JitVariantsTest(parameterized.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_jit_and_nojit_agree(self):
    cfg = SamplerConfig(strategy="remdm_rescale", num_steps=4, eta=0.3, top_p=0.95)
    s = make_sampler(mixing_denoiser, cfg, seq_len=L, mask_id=M, jit=False)
    fn = self.variant(s.core, static_argnames=("batch_size",))
    out, info = fn(mix_params(), jax.random.key(0), batch_size=4)
    ref = make_sampler(mixing_denoiser, cfg, seq_len=L, mask_id=M)(mix_params(), jax.random.key(0),
                                                                    batch_size=4)
    chex.assert_shape(out, (4, L))
    chex.assert_type(out, jnp.int32)
    np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize("strategy", ["remdm_conf", "remdm_loop"])
def test_eight_devices_equal_one(strategy):
  assert len(jax.devices()) >= 8
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]).reshape(4, 2), ("data", "fsdp"))
  cfg = SamplerConfig(strategy=strategy, num_steps=8, top_p=0.9)
  p = mix_params()
  prompt = np.full((16, L), M, np.int32)
  prompt[:, 0] = 2
  one = make_sampler(mixing_denoiser, cfg, seq_len=L, mask_id=M)
  many = make_sampler(mixing_denoiser, cfg, seq_len=L, mask_id=M, mesh=mesh)
  key = jax.random.key(9)
  a = one(p, key, batch_size=16, prompt=prompt)
  b = many(p, key, batch_size=16, prompt=prompt)
  assert len(b.sharding.device_set) == 8
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # a row does not depend on the batch size either
  np.testing.assert_array_equal(np.asarray(one(p, key, batch_size=8, prompt=prompt[:8])),
                                np.asarray(a)[:8])
  with pytest.raises(ValueError, match="divisible"):
    many(p, key, batch_size=6)


@pytest.mark.parametrize("strategy", ["remdm_cap", "remdm_conf", "fb"])
def test_prompt_positions_kept(strategy):
  rng = np.random.default_rng(0)
  prompt = rng.integers(0, M, (6, L)).astype(np.int32)
  pmask = rng.random((6, L)) < 0.5
  cfg = SamplerConfig(strategy=strategy, num_steps=16, eta=0.5 if strategy == "remdm_cap" else None)
  s = make_sampler(mixing_denoiser, cfg, seq_len=L, mask_id=M, trajectory_every=3)
  out, info = s.sample_with_info(mix_params(), jax.random.key(1), prompt=prompt,
                                 prompt_mask=pmask)
  out, traj = np.asarray(out), np.asarray(info["trajectory"])
  assert traj.shape == (6, 6, L)  # ceil(16 / 3) records
  np.testing.assert_array_equal(out[pmask], prompt[pmask])
  assert np.all(traj[:, pmask] == prompt[pmask])
  assert not np.any(out == M)
  with pytest.raises(ValueError, match="mask_id"):
    s(mix_params(), jax.random.key(1), prompt=np.full((6, L), M, np.int32),
      prompt_mask=np.ones((6, L), bool))


def test_cache_unchanged_identical_and_fewer_nfe():
  cfg = SamplerConfig(strategy="remdm_cap", num_steps=48, eta=0.02, top_p=0.9)
  p = mix_params()
  a = make_sampler(mixing_denoiser, cfg, seq_len=4, mask_id=M)
  b = make_sampler(mixing_denoiser, cfg.replace(cache_unchanged=True, time_independent=True),
                   seq_len=4, mask_id=M)
  xa, ia = a.sample_with_info(p, jax.random.key(2), batch_size=1)
  xb, ib = b.sample_with_info(p, jax.random.key(2), batch_size=1)
  np.testing.assert_array_equal(np.asarray(xa), np.asarray(xb))
  assert int(ia["nfe"]) == a.nfe == 49
  assert int(ib["nfe"]) < 49


def test_float64_mode_and_x64_guard():
  cfg = SamplerConfig(strategy="remdm_cap", num_steps=8, precision="float64", top_p=0.9)
  s = make_sampler(mixing_denoiser, cfg, seq_len=L, mask_id=M)
  with pytest.raises(ValueError, match="x64"):
    s(mix_params(), jax.random.key(0), batch_size=2)
  with jax.enable_x64(True):
    out = np.asarray(s(mix_params(), jax.random.key(0), batch_size=2))
  assert out.shape == (2, L) and not np.any(out == M)
