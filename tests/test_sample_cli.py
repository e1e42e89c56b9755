"""sample.py, the generation library and the scaling sweep, end to end on tiny checkpoints."""
import csv
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from remdm_jax import checkpoint, generation
from remdm_jax.models import dit
from remdm_jax.sampling import SamplerConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = dict(source="bible", tokenizer="byte", seq_len=16, val_fraction=0.01)


def _tiny(tmp, name, causal=False, vocab=257, perturb=True):
  cfg = dit.DiTConfig.preset("tiny", vocab_size=vocab, max_seq_len=16, causal=causal,
                             compute_dtype="float32")
  _, params = dit.init_params(cfg, jax.random.PRNGKey(1 + causal))
  if perturb:  # a fresh DiT outputs zero logits; give it some structure
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(7), len(leaves))
    leaves = [x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
    params = jax.tree.unflatten(tree, leaves)
  path = os.path.join(tmp, name)
  checkpoint.save_params(path, params, model_config=cfg.to_dict(),
                         extra_metadata={"tokenizer": "byte", "data": DATA})
  return path


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
  tmp = str(tmp_path_factory.mktemp("ckpts"))
  return dict(mdlm=_tiny(tmp, "mdlm"), ar=_tiny(tmp, "ar", causal=True),
              bad_vocab=_tiny(tmp, "bad_vocab", vocab=300, perturb=False))


def _run(args, cwd):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  return subprocess.run([sys.executable, os.path.join(ROOT, "sample.py"), *args], cwd=cwd,
                        env=env, capture_output=True, text=True, timeout=300)


def test_sample_py_end_to_end(ckpts, tmp_path):
  out = tmp_path / "s.jsonl"
  r = _run([f"--checkpoint={ckpts['mdlm']}", f"--scorer={ckpts['ar']}", "--num_samples=5",
            "--batch_size=2", "--steps=8", f"--output={out}", "--preset=remdm_loop"], tmp_path)
  assert r.returncode == 0, r.stderr
  recs = [json.loads(line) for line in out.read_text().splitlines()]
  assert len(recs) == 5
  for i, rec in enumerate(recs):
    toks = np.array(rec["tokens"])
    assert toks.shape == (16,) and toks.min() >= 0 and toks.max() < 256, "no mask ids (256)"
    assert rec["index"] == i and rec["seed"] == 1
    assert rec["sampler"]["strategy"] == "remdm_loop" and rec["sampler"]["num_steps"] == 8
    assert rec["text"] == bytes(rec["tokens"]).decode("utf-8", errors="replace")
  assert "entropy:" in r.stdout and "gen_ppl:" in r.stdout


@pytest.mark.parametrize("args,needle", [
    (["--checkpoint=/nonexistent/ckpt"], "/nonexistent/ckpt"),
    (["--num_samples=0"], "num_samples"),
    (["--preset=bogus"], "bogus"),
    (["BAD_VOCAB"], "vocab mismatch"),
])
def test_sample_py_bad_input_is_one_clear_line(ckpts, tmp_path, args, needle):
  args = [f"--checkpoint={ckpts['bad_vocab']}" if a == "BAD_VOCAB" else a for a in args]
  if not any(a.startswith("--checkpoint") for a in args):
    args.append(f"--checkpoint={ckpts['mdlm']}")
  out = tmp_path / "never.jsonl"
  r = _run(args + [f"--output={out}", "--scorer=none", "--steps=4"], tmp_path)
  assert r.returncode != 0
  assert needle in r.stderr
  assert "Traceback" not in r.stderr
  assert not out.exists()
  assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp")], "no partial output"


def test_generate_is_deterministic_and_prompt_is_kept(ckpts):
  model = generation.load_model(ckpts["mdlm"])
  cfg = SamplerConfig.preset("remdm_cap", num_steps=6)
  a, stats = generation.generate(model, cfg, num_samples=3, batch_size=2, seed=3, progress=False)
  b, _ = generation.generate(model, cfg, num_samples=3, batch_size=2, seed=3, progress=False)
  np.testing.assert_array_equal(a, b)
  assert a.shape == (3, 16) and a.dtype == np.int32 and stats["nfe"] == 7
  p, _ = generation.generate(model, cfg, num_samples=2, batch_size=2, seed=3, prompt="In the",
                             progress=False)
  assert np.all(p[:, :6] == np.frombuffer(b"In the", np.uint8))


def test_write_jsonl_atomic_leaves_nothing_on_error(tmp_path):
  def boom():
    yield {"a": 1}
    raise RuntimeError("stop")

  with pytest.raises(RuntimeError):
    generation.write_jsonl_atomic(str(tmp_path / "x.jsonl"), boom())
  assert os.listdir(tmp_path) == []


def test_sweep_writes_csv_and_plot(ckpts, tmp_path):
  from remdm_jax.eval import sweep
  out = str(tmp_path / "sweep")
  sweep.sample_stage(ckpts["mdlm"], out, strategies=["mdlm", "remdm_loop"], steps=[4, 8],
                     num_samples=20, batch_size=20, seed=1, top_p=0.9)
  rows = sweep.eval_stage(ckpts["mdlm"], out, scorer=ckpts["ar"], mauve=True)
  with open(os.path.join(out, "scaling.csv")) as f:
    table = list(csv.DictReader(f))
  assert [(r["strategy"], r["T"]) for r in table] == [
      ("data", "0"), ("mdlm", "4"), ("mdlm", "8"), ("remdm_loop", "4"), ("remdm_loop", "8")]
  for r in rows:
    assert 0.0 <= r["mauve"] <= 1.0 and r["gen_ppl"] > 1.0 and r["entropy"] > 0.0
  assert table[1]["nfe"] == "5" and table[2]["nfe"] == "9"
  with open(os.path.join(out, "scaling.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_atomic_open_replaces_only_on_success(tmp_path):
  from remdm_jax.fileio import atomic_open
  target = tmp_path / "sub" / "out.txt"
  with atomic_open(str(target)) as f:
    f.write("first")
  with pytest.raises(ValueError):
    with atomic_open(str(target)) as f:
      f.write("partial")
      raise ValueError("boom")
  assert target.read_text() == "first"
  assert os.listdir(target.parent) == ["out.txt"]
