"""Model/usage agreement, any-vocabulary tokenizers, progress, and damaged checkpoints
(remdm_jax/generation.py, tokenizers.py, checkpoint.load_params, fileio.atomic_open)."""
import glob
import io
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from remdm_jax import checkpoint, generation
from remdm_jax.fileio import atomic_open, stale_temp_files
from remdm_jax.models import dit
from remdm_jax.sampling import SamplerConfig


def _save(tmp, name, *, vocab=257, causal=False, tokenizer="byte", config_edit=None):
  cfg = dit.DiTConfig.preset("tiny", vocab_size=vocab, max_seq_len=16, causal=causal,
                             compute_dtype="float32")
  _, params = dit.init_params(cfg, jax.random.PRNGKey(3))
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(4), len(leaves))
  params = jax.tree.unflatten(tree, [x + 0.05 * jax.random.normal(k, x.shape)
                                     for x, k in zip(leaves, keys)])
  stored = cfg.to_dict()
  stored.update(config_edit or {})
  path = os.path.join(tmp, name)
  checkpoint.save_params(path, params, model_config=stored,
                         extra_metadata={"tokenizer": tokenizer} if tokenizer else {})
  return path


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
  tmp = str(tmp_path_factory.mktemp("gen_checks"))
  return dict(mdlm=_save(tmp, "mdlm"), ar=_save(tmp, "ar", causal=True),
              v300=_save(tmp, "v300", vocab=300, tokenizer=None))


# ---- load_model overrides and the stored config must agree with the stored weights ----------

@pytest.mark.parametrize("overrides,fields", [
    (dict(num_heads=2), ["num_heads=2 (stored 4)"]),
    (dict(hidden_size=32), ["hidden_size=32 (stored 64)"]),
    (dict(vocab_size=300, num_blocks=3), ["vocab_size=300 (stored 257)",
                                          "num_blocks=3 (stored 2)"]),
    (dict(time_conditioning=True), ["time_conditioning=True (stored False)"]),
    (dict(causal=True), ["causal=True (stored False)"]),
])
def test_load_model_shape_overrides_must_match(ckpts, overrides, fields):
  with pytest.raises(ValueError, match="overrides disagree") as e:
    generation.load_model(ckpts["mdlm"], **overrides)
  for f in fields:
    assert f in str(e.value)
  assert "\n" not in str(e.value)
  # run-time fields are free
  m = generation.load_model(ckpts["mdlm"], compute_dtype="bfloat16", num_heads=4, max_seq_len=32)
  assert m.config.compute_dtype == "bfloat16" and m.seq_len == 32


def test_stored_config_that_contradicts_the_weights_is_named(tmp_path):
  path = _save(str(tmp_path), "lying", config_edit=dict(cond_dim=16))
  with pytest.raises(ValueError, match=r"parameter '.*' is stored with shape \((256|32), .*"
                                       r"model_config.json implies"):
    checkpoint.load_params(path)


@pytest.mark.parametrize("damage,needle", [
    ("data", "unreadable or truncated params checkpoint"),
    ("metadata", "unreadable or truncated params checkpoint"),
    ("empty", "unreadable or truncated params checkpoint"),
    ("json", "model_config.json: unreadable or truncated JSON"),
    ("no_params", "has no params/ folder"),
])
def test_damaged_checkpoint_is_one_line(ckpts, tmp_path, damage, needle):
  d = str(tmp_path / "damaged")
  shutil.copytree(ckpts["mdlm"], d)
  if damage == "data":
    for f in glob.glob(d + "/params/**/d/*", recursive=True):
      with open(f, "r+b") as fh:
        fh.truncate(10)
  elif damage == "metadata":
    os.remove(d + "/params/_METADATA")
  elif damage == "empty":
    shutil.rmtree(d + "/params")
    os.mkdir(d + "/params")
  elif damage == "json":
    with open(d + "/model_config.json", "r+") as fh:
      fh.truncate(20)
  else:
    shutil.rmtree(d + "/params")
  with pytest.raises((ValueError, FileNotFoundError), match=needle) as e:
    generation.load_model(d)
  assert "\n" not in str(e.value)


# ---- model/usage checks before any work ------------------------------------------------------

def test_ar_model_is_refused_by_the_diffusion_sampler(ckpts):
  ar = generation.load_model(ckpts["ar"])
  with pytest.raises(ValueError, match=r"autoregressive model \(causal=True\)"):
    generation.generate(ar, SamplerConfig.preset("mdlm", num_steps=2), num_samples=1,
                        batch_size=1, seed=0, progress=False)


def test_mask_id_outside_the_vocabulary(ckpts):
  with pytest.raises(ValueError, match=r"mask_id=300 must lie in \[0, model.vocab_size=300\)"):
    generation.load_model(ckpts["v300"], "ids", mask_id=300)
  with pytest.raises(ValueError, match="only be set with tokenizer 'ids'"):
    generation.load_model(ckpts["mdlm"], mask_id=3)
  m = generation.load_model(ckpts["v300"], "ids")
  bad = m.__class__(**{**m.__dict__, "tokenizer": generation.get_tokenizer("byte")})
  bad_cfg = m.config.__class__(**{**m.config.__dict__, "vocab_size": 200})
  with pytest.raises(ValueError, match=r"mask_id=256 must lie in \[0, model.vocab_size=200\)"):
    generation.generate(m.__class__(**{**bad.__dict__, "config": bad_cfg}),
                        SamplerConfig.preset("mdlm", num_steps=2), num_samples=1,
                        batch_size=1, seed=0, progress=False)


def test_prompt_ids_outside_the_vocabulary(ckpts):
  m = generation.load_model(ckpts["v300"], "ids")
  cfg = SamplerConfig.preset("mdlm", num_steps=2)
  for prompt, bad in (("5 300", 300), ("5 -1", -1), ("7 299", 299)):  # 299 = mask id
    with pytest.raises(ValueError, match=f"prompt token id {bad} is outside"):
      generation.generate(m, cfg, num_samples=1, batch_size=1, seed=0, prompt=prompt,
                          progress=False)
  toks, _ = generation.generate(m, cfg, num_samples=2, batch_size=2, seed=0, prompt="5 298",
                                progress=False)
  assert np.all(toks[:, :2] == [5, 298])


@pytest.mark.parametrize("seed", [-1, 2**32, 1.5, True])
def test_seed_range(ckpts, seed):
  m = generation.load_model(ckpts["mdlm"])
  with pytest.raises(ValueError, match=r"must be an int in \[0, 2\^32\)"):
    generation.generate(m, SamplerConfig.preset("mdlm", num_steps=2), num_samples=1,
                        batch_size=1, seed=seed, progress=False)
  generation.check_seed(2**32 - 1)


# ---- any vocabulary --------------------------------------------------------------------------

def test_unknown_vocabulary_samples_as_ids(ckpts):
  m = generation.load_model(ckpts["v300"])  # no tokenizer recorded, V = 300: ids
  assert m.tokenizer.name == "ids" and m.mask_id == 299 and m.tokenizer.vocab_size == 300
  toks, _ = generation.generate(m, SamplerConfig.preset("remdm_cap", num_steps=4), num_samples=3,
                                batch_size=3, seed=1, progress=False)
  assert toks.shape == (3, 16) and toks.min() >= 0 and toks.max() < 299
  assert m.tokenizer.decode(toks[0]) == " ".join(map(str, toks[0]))
  assert m.tokenizer.encode(" 1, 2 3 ") == [1, 2, 3]
  with pytest.raises(ValueError, match="'x' .* is not an integer token id"):
    m.tokenizer.encode("1 x")


def _tokenizer_json(path, words, mask=False):
  tokenizers = pytest.importorskip("tokenizers")
  from tokenizers.models import WordLevel
  from tokenizers.pre_tokenizers import Whitespace
  vocab = {w: i for i, w in enumerate(words)}
  if mask:
    vocab["[MASK]"] = len(vocab)
  tok = tokenizers.Tokenizer(WordLevel(vocab, unk_token=words[0]))
  tok.pre_tokenizer = Whitespace()
  tok.save(str(path))
  return str(path)


def test_tokenizer_json_file(ckpts, tmp_path):
  words = ["[UNK]", "</s>"] + [f"w{i}" for i in range(297)]  # 299 text ids -> mask 299, V 300
  path = _tokenizer_json(tmp_path / "tokenizer.json", words)
  m = generation.load_model(ckpts["v300"], path)
  assert (m.tokenizer.vocab_size, m.mask_id, m.tokenizer.eos_id) == (300, 299, 1)
  assert m.metadata["tokenizer"] == os.path.abspath(path)
  toks, _ = generation.generate(m, SamplerConfig.preset("mdlm", num_steps=4), num_samples=2,
                                batch_size=2, seed=1, prompt="w5 w7", progress=False)
  assert np.all(toks[:, :2] == [7, 9])
  text = m.tokenizer.decode(toks[0])
  assert text.split()[:2] == ["w5", "w7"] and len(text.split()) == 16
  assert m.tokenizer.decode([3, 299, 400]) == "w1[MASK][UNK:400]"
  # a tokenizer with its own [MASK] token and n = V uses it (MDLM's rule for BERT)
  with_mask = _tokenizer_json(tmp_path / "with_mask.json", words, mask=True)
  m2 = generation.load_model(ckpts["v300"], with_mask)
  assert m2.mask_id == 299 and m2.tokenizer.vocab_size == 300
  small = _tokenizer_json(tmp_path / "small.json", words[:50])
  with pytest.raises(ValueError, match="vocab mismatch.*vocab_size=300.*vocab_size=51"):
    generation.load_model(ckpts["v300"], small)
  bad = tmp_path / "bad.json"
  bad.write_text("{not json")
  with pytest.raises(ValueError, match="not a readable tokenizer.json"):
    generation.load_model(ckpts["v300"], str(bad))


# ---- progress within a batch -----------------------------------------------------------------

def test_progress_reports_steps_and_keeps_samples(ckpts, capsys):
  m = generation.load_model(ckpts["mdlm"])
  cfg = SamplerConfig.preset("remdm_loop", num_steps=6)
  quiet, _ = generation.generate(m, cfg, num_samples=4, batch_size=2, seed=5, progress=False)
  capsys.readouterr()
  loud, stats = generation.generate(m, cfg, num_samples=4, batch_size=2, seed=5, progress=True)
  np.testing.assert_array_equal(quiet, loud)
  err = capsys.readouterr().err
  assert f"batch 2/2  step {stats['nfe']}/{stats['nfe']}" in err
  assert "tok/s" in err and "ETA" in err


def test_step_progress_counts_denoiser_calls():
  buf = io.StringIO()
  meter = generation.StepProgress("x", num_batches=2, batch_size=4, seq_len=8, nfe=5, stream=buf,
                                  min_interval=0.0)
  fn = generation.with_progress(lambda p, z, t: z.astype(np.float32)[..., None] * p, meter)
  meter.start_batch(0)
  out = jax.jit(lambda p, z: jax.lax.scan(
      lambda c, t: (fn(p, c, jax.numpy.full((2,), t)).astype(np.int32)[..., 0], None), z,
      np.linspace(1, 0, 3, dtype=np.float32))[0])(2.0, np.ones((2, 8), np.int32))
  jax.effects_barrier()
  np.testing.assert_array_equal(out, 8)
  assert meter.calls == 3 and "batch 1/2  step 3/5" in buf.getvalue()


# ---- atomic writes: stale temp files ---------------------------------------------------------

def test_atomic_open_removes_stale_temp_files_of_dead_processes(tmp_path):
  p = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                     capture_output=True, text=True, check=True)
  dead = int(p.stdout)  # a pid that has exited
  target = tmp_path / "out.jsonl"
  stale = tmp_path / f".tmp-{dead}-abc123-out.jsonl"
  stale.write_text("half")
  live = tmp_path / f".tmp-{os.getppid()}-abc123-out.jsonl"  # a running process: kept
  live.write_text("in progress")
  other = tmp_path / f".tmp-{dead}-abc123-other.jsonl"  # another target: kept
  other.write_text("x")
  assert stale_temp_files(str(target)) == [str(stale)]
  with atomic_open(str(target)) as f:
    f.write("ok")
  assert sorted(os.listdir(tmp_path)) == sorted([live.name, other.name, "out.jsonl"])
  with pytest.raises(KeyboardInterrupt):  # any exception, Ctrl-C included: no temp left
    with atomic_open(str(target)) as f:
      f.write("partial")
      raise KeyboardInterrupt
  assert target.read_text() == "ok"
  assert sorted(os.listdir(tmp_path)) == sorted([live.name, other.name, "out.jsonl"])


def test_checkpoint_json_goes_through_atomic_open(tmp_path, monkeypatch):
  """checkpoint._write_json has no private temp-file scheme: a failed write leaves the old file."""
  path = tmp_path / "m.json"
  checkpoint._write_json(str(path), {"a": 1})
  monkeypatch.setattr(checkpoint.json, "dump", lambda *a, **k: (_ for _ in ()).throw(OSError("x")))
  with pytest.raises(OSError):
    checkpoint._write_json(str(path), {"a": 2})
  assert json.loads(path.read_text()) == {"a": 1} and os.listdir(tmp_path) == ["m.json"]


# ---- issue 19: a model's kind and domain, Ctrl-C inside a compiled batch, rescued output ------

def test_model_kind_and_domain_are_checked_against_the_entry_point():
  """sample.py ran the QM9 UDLM with the masked-diffusion sampler (exit 0): kind and domain of
  the stored model are now checked (`check_model_use`, `check_diffusion_model`)."""
  udlm = generation.load_model(os.path.join(generation.ASSETS_DIR, "qm9_udlm"))
  assert generation.model_kind(udlm.config, udlm.stored_metadata) == "udlm"
  assert generation.model_domain(udlm.stored_metadata) == "molecules"
  with pytest.raises(ValueError, match=r"qm9_udlm is a udlm model of the molecules domain; "
                                       r"sample.py takes mdlm models .*molecules.sample"):
    generation.check_model_use(udlm, "sample.py", kinds=("mdlm",), domains=("text", None))
  with pytest.raises(ValueError, match="is a udlm model, not a masked-diffusion denoiser"):
    generation.generate(udlm, SamplerConfig.preset("mdlm", num_steps=2), num_samples=1,
                        batch_size=1, seed=0, progress=False)
  digits = generation.load_model(os.path.join(generation.ASSETS_DIR, "digits_mdlm"))
  assert generation.model_domain(digits.stored_metadata) == "images"
  clf = generation.load_model(os.path.join(generation.ASSETS_DIR, "qm9_classifier"))
  assert generation.model_kind(clf.config, clf.stored_metadata) == "classifier"
  text = generation.load_model(generation.shipped_model_path())
  assert (generation.model_kind(text.config, text.stored_metadata),
          generation.model_domain(text.stored_metadata)) == ("mdlm", "text")
  generation.check_model_use(text, "sample.py", kinds=("mdlm",), domains=("text", None))


def test_ctrl_c_inside_a_compiled_batch_stops_fast_and_keeps_finished_batches(ckpts, monkeypatch):
  """Ctrl-C was ignored until the running compiled program ended: now it stops within a bounded
  time (here the batch in flight would take 6 s more) and the finished batch is kept."""
  import _thread
  import threading
  import time
  from remdm_jax.interrupt import Interrupted
  m = generation.load_model(ckpts["mdlm"])
  cfg = SamplerConfig.preset("mdlm", num_steps=6)
  state = {"calls": 0, "sent": None}

  def slow(self, *_):
    state["calls"] += 1
    if state["calls"] == 9:  # inside batch 2 (7 calls per batch: 6 steps + the final step)
      state["sent"] = time.perf_counter()
      threading.Timer(0.1, _thread.interrupt_main).start()
    if state["calls"] > 8:
      time.sleep(0.5)

  monkeypatch.setattr(generation.StepProgress, "on_call", slow)
  ref, _ = generation.generate(m, cfg, num_samples=2, batch_size=2, seed=3, progress=False)
  with pytest.raises(Interrupted) as e:
    generation.generate(m, cfg, num_samples=6, batch_size=2, seed=3, progress=True)
  waited = time.perf_counter() - state["sent"]
  jax.effects_barrier()  # let the abandoned program finish before the interpreter exits
  assert waited < 1.5, waited  # the rest of batch 2 alone takes >= 2.5 s
  np.testing.assert_array_equal(e.value.partial, ref)  # batch 1 = fold_in(key, 0)
  assert "interrupted in batch 2/3" in str(e.value)


def test_unwritable_output_keeps_the_samples(tmp_path):
  """An output that cannot be written when the samples are done (the folder became a file, the
  disk filled up, ...): the samples go to a rescue file and the reason is one line."""
  (tmp_path / "gone").write_text("a file where the output folder was")
  target = str(tmp_path / "gone" / "s.jsonl")
  path, reason = generation.write_jsonl_or_rescue(target, [{"a": 1}])
  assert reason.startswith(f"cannot write {target}") and "\n" not in reason
  with open(path) as f:
    assert json.loads(f.read()) == {"a": 1}
  os.remove(path)


def test_models_of_the_other_architecture_are_named():
  """A LLaDA folder given to the DiT loaders (sample.py, molecules.sample, sample_digits) listed
  unknown config keys; a DiT folder given to llm.cli said only that config.json was missing."""
  from remdm_jax.llm import cli
  with pytest.raises(ValueError, match="countdown_llada is a LLaDA-architecture model, not a DiT"):
    generation.load_model(os.path.join(generation.ASSETS_DIR, "countdown_llada"))
  with pytest.raises(ValueError, match="qm9_udlm is a remdm-jax DiT model folder, not a LLaDA"):
    cli._check_not_a_dit_folder(os.path.join(generation.ASSETS_DIR, "qm9_udlm"))
  cli._check_not_a_dit_folder(os.path.join(generation.ASSETS_DIR, "countdown_llada"))
