"""sample.py, the generation library and the scaling sweep, end to end on tiny checkpoints."""
import csv
import glob
import json
import os
import shutil
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


def _tiny(tmp, name, causal=False, vocab=257, perturb=True, tokenizer="byte"):
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
                         extra_metadata={"tokenizer": tokenizer, "data": DATA} if tokenizer else {})
  return path


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
  tmp = str(tmp_path_factory.mktemp("ckpts"))
  damaged = os.path.join(tmp, "damaged")
  ckpts = dict(mdlm=_tiny(tmp, "mdlm"), ar=_tiny(tmp, "ar", causal=True),
               bad_vocab=_tiny(tmp, "bad_vocab", vocab=300, perturb=False),
               v300=_tiny(tmp, "v300", vocab=300, tokenizer=None), damaged=damaged)
  shutil.copytree(ckpts["mdlm"], damaged)
  for f in glob.glob(damaged + "/params/**/d/*", recursive=True):
    with open(f, "r+b") as fh:
      fh.truncate(10)
  return ckpts


def _run(args, cwd, env=None, script=None):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="", **(env or {}))
  env["PYTHONPATH"] = os.pathsep.join(p for p in (env.pop("PREPEND_PATH", ""), ROOT,
                                                  env.get("PYTHONPATH", "")) if p)
  return subprocess.run([sys.executable, script or os.path.join(ROOT, "sample.py"), *args],
                        cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_sample_py_end_to_end(ckpts, tmp_path):
  out = tmp_path / "s.jsonl"
  out.write_text("old\n")
  r = _run([f"--checkpoint={ckpts['mdlm']}", f"--scorer={ckpts['ar']}", "--num_samples=5",
            "--batch_size=2", "--steps=8", f"--output={out}", "--preset=remdm_loop",
            "--overwrite"], tmp_path)
  assert r.returncode == 0, r.stderr
  assert "batch 3/3  step 9/9" in r.stderr  # progress within a batch
  recs = [json.loads(line) for line in out.read_text().splitlines()]
  assert len(recs) == 5
  for i, rec in enumerate(recs):
    toks = np.array(rec["tokens"])
    assert toks.shape == (16,) and toks.min() >= 0 and toks.max() < 256, "no mask ids (256)"
    assert rec["index"] == i and rec["seed"] == 1
    assert rec["sampler"]["strategy"] == "remdm_loop" and rec["sampler"]["num_steps"] == 8
    assert rec["text"] == bytes(rec["tokens"]).decode("utf-8", errors="replace")
  assert "entropy:" in r.stdout and "gen_ppl:" in r.stdout


def test_semi_ar_cli_summary_is_pluralised(ckpts, tmp_path):
  out = tmp_path / "semi.jsonl"
  r = _run([f"--checkpoint={ckpts['mdlm']}", "--scorer=none", "--num_samples=1", "--batch_size=1",
            "--steps=2", "--preset=mdlm", "--num_strides=1", "--stride_length=4",
            f"--output={out}", "--show=0", "--noprogress"], tmp_path)
  assert r.returncode == 0, r.stderr
  assert "semi-AR: 1 stride of 4 -> 20 tokens" in r.stderr, r.stderr
  assert len(json.loads(out.read_text().splitlines()[0])["tokens"]) == 20


@pytest.mark.parametrize("args,needle", [
    (["--checkpoint=/nonexistent/ckpt"], "/nonexistent/ckpt"),
    (["--num_samples=0"], "num_samples"),
    (["--preset=bogus"], "bogus"),
    (["--checkpoint=BAD_VOCAB"], "vocab mismatch"),
    (["--steps=0"], "--steps=0 must be >= 1"),
    (["--seed=-1"], "--seed=-1 must be in [0, 2^32)"),
    (["--seed=4294967296"], "--seed=4294967296 must be in [0, 2^32)"),
    (["--output=TMP"], "is a directory"),
    (["--output=TMP/exists.jsonl"], "exists; pass --overwrite"),
    (["--output=TMP/a_file/x.jsonl"], "cannot write to"),
    (["--checkpoint=AR"], "autoregressive model (causal=True)"),
    (["--checkpoint=DAMAGED"], "unreadable or truncated params checkpoint"),
    (["--checkpoint=V300", "--tokenizer=ids", "--prompt=1 999"], "prompt token id 999 is outside"),
    (["--checkpoint=V300", "--tokenizer=ids", "--mask_id=300"], "mask_id=300 must lie in"),
    (["--scorer=MDLM"], "is not an autoregressive (causal) model"),
    (["--tokenizer=TMP/missing.json"], "tokenizer file not found"),
    (["--num_strides=abc"], "--num_strides=abc"),  # absl flag-parse errors too (not FATAL, 1)
    # issue 19: the QM9 UDLM ran with the masked-diffusion sampler (exit 0); other domains' models
    (["--checkpoint=UDLM"], "is a udlm model of the molecules domain"),
    (["--checkpoint=QM9"], "is a mdlm model of the molecules domain"),
    (["--checkpoint=DIGITS"], "is a mdlm model of the images domain"),
    # flags the preset's strategy never reads (were accepted silently, --t_on even recorded)
    (["--preset=mdlm", "--t_on=0.3"], "--t_on=0.3 does not apply to --preset=mdlm"),
    (["--preset=mdlm", "--eta=0.5"], "--eta=0.5 does not apply to --preset=mdlm"),
    (["--preset=fb", "--eta=0.5"], "--eta=0.5 does not apply to --preset=fb"),
    (["--preset=remdm_cap", "--t_switch=0.3"], "--t_switch=0.3 does not apply"),
    (["--preset=remdm_switch", "--switch_base=conf", "--eta=0.1"], "--eta=0.1 does not apply"),
    # the flag named, and a file that is not a folder called so
    (["--scorer=/nonexistent"], "--scorer=/nonexistent: params checkpoint directory not found"),
    (["--checkpoint=TMP/a_file"], "is not a directory"),
])
def test_sample_py_bad_input_is_one_clear_line(ckpts, tmp_path, args, needle):
  """Each bad input: exit 2, one `sample.py: error:` line naming it, before any sampling."""
  (tmp_path / "exists.jsonl").write_text("keep\n")
  (tmp_path / "a_file").write_text("")
  names = dict(BAD_VOCAB=ckpts["bad_vocab"], AR=ckpts["ar"], DAMAGED=ckpts["damaged"],
               V300=ckpts["v300"], MDLM=ckpts["mdlm"], TMP=str(tmp_path),
               UDLM=os.path.join(generation.ASSETS_DIR, "qm9_udlm"),
               QM9=os.path.join(generation.ASSETS_DIR, "qm9_cond_mdlm"),
               DIGITS=os.path.join(generation.ASSETS_DIR, "digits_mdlm"))
  for k, v in names.items():
    args = [a.replace("=" + k, "=" + v) for a in args]
  if not any(a.startswith("--checkpoint") for a in args):
    args.append(f"--checkpoint={ckpts['mdlm']}")
  out = tmp_path / "never.jsonl"
  if not any(a.startswith("--output") for a in args):
    args.append(f"--output={out}")
  if not any(a.startswith("--scorer") for a in args):
    args.append("--scorer=none")
  before = sorted(os.listdir(tmp_path))
  r = _run(args + ["--steps=4" if "--steps=0" not in args else "--show=1"], tmp_path)
  assert r.returncode == 2, r.stderr
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("sample.py: error: "), r.stderr
  assert needle in lines[0], r.stderr
  assert "Traceback" not in r.stderr and " step " not in r.stderr, "failed before sampling"
  assert sorted(os.listdir(tmp_path)) == before, "nothing written, no partial output"
  assert (tmp_path / "exists.jsonl").read_text() == "keep\n"


def test_mauve_extras_are_checked_before_sampling(ckpts, tmp_path):
  blocked = tmp_path / "blocked" / "mauve"
  blocked.mkdir(parents=True)
  (blocked / "__init__.py").write_text("raise ImportError('blocked for the test')\n")
  out = tmp_path / "never.jsonl"
  r = _run([f"--checkpoint={ckpts['mdlm']}", "--mauve", "--steps=4", f"--output={out}"],
           tmp_path, env={"PREPEND_PATH": str(blocked.parent)})
  assert r.returncode == 2
  assert r.stderr.strip().splitlines()[-1] == (
      "sample.py: error: MAUVE needs mauve-text: pip install 'remdm-jax[eval]'")
  assert not out.exists() and " step " not in r.stderr


def test_any_vocabulary_ids_and_default_output(ckpts, tmp_path):
  """V = 300 (neither bytes nor GPT-2): token-id records; default output under ./samples/."""
  r = _run([f"--checkpoint={ckpts['v300']}", "--steps=4", "--num_samples=3", "--batch_size=3",
            "--scorer=none", "--preset=mdlm"], tmp_path)
  assert r.returncode == 0, r.stderr
  files = glob.glob(str(tmp_path / "samples" / "mdlm-*.jsonl"))
  assert len(files) == 1, os.listdir(tmp_path)
  recs = [json.loads(line) for line in open(files[0])]
  assert len(recs) == 3
  for rec in recs:
    assert "text" not in rec and rec["tokenizer"] == "ids"
    assert len(rec["tokens"]) == 16 and 0 <= min(rec["tokens"]) and max(rec["tokens"]) < 299
  assert "entropy:" in r.stdout


def test_default_output_is_outside_the_source_checkout(tmp_path, monkeypatch):
  """Default outputs (sample.py's samples/, the sweep's runs/) never land in the repository."""
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  monkeypatch.delenv("REMDM_OUTPUT_DIR", raising=False)
  home_root = str(tmp_path / "home" / "remdm-jax")
  assert generation.output_root(ROOT) == home_root
  assert generation.output_root(os.path.join(ROOT, "tests")) == home_root
  assert generation.output_root(str(tmp_path)) == str(tmp_path)
  monkeypatch.chdir(ROOT)
  assert generation.output_root() == home_root
  monkeypatch.setenv("REMDM_OUTPUT_DIR", str(tmp_path / "elsewhere"))
  assert generation.output_root(ROOT) == str(tmp_path / "elsewhere")


def test_jsonl_is_written_before_metrics(ckpts, tmp_path):
  """Metrics that fail after sampling must not lose the samples (tokenizer.json decoding)."""
  tokenizers = pytest.importorskip("tokenizers")
  from tokenizers.models import WordLevel
  from tokenizers.pre_tokenizers import Whitespace
  words = ["[UNK]"] + [f"w{i}" for i in range(298)]
  tok = tokenizers.Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
  tok.pre_tokenizer = Whitespace()
  tok.save(str(tmp_path / "tokenizer.json"))
  runner = tmp_path / "runner.py"
  runner.write_text(
      "import runpy, sys\n"
      "from remdm_jax.text import sample_metrics\n"
      "def boom(*a, **k):\n  raise RuntimeError('metrics failed')\n"
      "sample_metrics.sample_metrics = boom\n"
      f"sys.argv = [{os.path.join(ROOT, 'sample.py')!r}] + sys.argv[1:]\n"
      f"runpy.run_path({os.path.join(ROOT, 'sample.py')!r}, run_name='__main__')\n")
  out = tmp_path / "kept.jsonl"
  r = _run([f"--checkpoint={ckpts['v300']}", f"--tokenizer={tmp_path / 'tokenizer.json'}",
            "--steps=4", "--num_samples=2", "--batch_size=2", "--scorer=none", "--prompt=w3 w4",
            f"--output={out}"], tmp_path, script=str(runner))
  assert r.returncode != 0 and "metrics failed" in r.stderr
  recs = [json.loads(line) for line in out.read_text().splitlines()]
  assert len(recs) == 2
  assert all(rec["text"].split()[:2] == ["w3", "w4"] and rec["tokens"][:2] == [4, 5]
             for rec in recs)


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
  from remdm_jax.text import sweep
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


@pytest.mark.parametrize("extra,needle", [
    (["--scorer=MDLM"], "is not an autoregressive (causal) model"),
    (["--seed=-3"], "seed=-3 must be an int in [0, 2^32)"),
    (["--stage=sample", "--checkpoint=UDLM"], "is a udlm model, not a masked-diffusion denoiser"),
    (["--output_dir=AFILE/sub"], "cannot write to"),
])
def test_sweep_checks_before_sampling(ckpts, tmp_path, extra, needle):
  (tmp_path / "afile").write_text("x")
  extra = [a.replace("=MDLM", "=" + ckpts["mdlm"]).replace("=AFILE", f"={tmp_path}/afile")
           .replace("=UDLM", "=" + os.path.join(generation.ASSETS_DIR, "qm9_udlm"))
           for a in extra]
  out = tmp_path / "sweep"
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  if not any(a.startswith("--output_dir") for a in extra):
    extra = [f"--output_dir={out}"] + extra
  if not any(a.startswith("--checkpoint") for a in extra):
    extra = [f"--checkpoint={ckpts['mdlm']}"] + extra
  r = subprocess.run([sys.executable, "-m", "remdm_jax.text.sweep",
                      "--strategies=mdlm", "--steps=2", "--num_samples=2", "--batch_size=2",
                      *extra], env=env, cwd=tmp_path, capture_output=True,
                     text=True, timeout=300)
  assert r.returncode == 2, r.stderr
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("sweep: error: ") and needle in lines[0], r.stderr
  assert not out.exists()


def test_atomic_open_gives_the_umask_mode(tmp_path):
  """Files written atomically get 0o666 minus the umask, as open() would (mkstemp alone: 0o600)."""
  from remdm_jax.fileio import atomic_open
  old = os.umask(0o022)
  try:
    with atomic_open(str(tmp_path / "a.txt"), "w") as f:
      f.write("x")
    assert os.stat(tmp_path / "a.txt").st_mode & 0o777 == 0o644
    os.umask(0o077)
    with atomic_open(str(tmp_path / "b.txt"), "w") as f:
      f.write("x")
    assert os.stat(tmp_path / "b.txt").st_mode & 0o777 == 0o600
  finally:
    os.umask(old)
