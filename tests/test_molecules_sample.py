"""QM9 sampling entry points and the sweep driver (tiny random conditional model + classifier), the
one-hot classifier input of dit.py, and the shipped models' guidance direction (SPEC_DOMAINS §M.4)."""
import csv
import os

import jax
import numpy as np
import pytest

from remdm_jax import checkpoint
from remdm_jax.models import dit
from remdm_jax.molecules import sample as S
from remdm_jax.molecules import sweep
from remdm_jax.sampling import SamplerConfig

CFG = dit.DiTConfig(vocab_size=35, max_seq_len=32, hidden_size=32, num_heads=2, num_blocks=1,
                    cond_dim=16, dropout=0.0, compute_dtype="float32", num_classes=2)
CLF = CFG.replace(head="classifier") if hasattr(CFG, "replace") else dit.DiTConfig(
    **dict(CFG.to_dict(), head="classifier"))


def _save_random(cfg, path, seed):
  _, params = dit.init_params(cfg, jax.random.PRNGKey(seed))
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
  params = jax.tree.unflatten(tree, [v + 0.3 * jax.random.normal(k, v.shape) for k, v in zip(keys, leaves)])
  checkpoint.save_params(path, params, model_config=cfg.to_dict(), extra_metadata={"tokenizer": "smiles"})
  return S.load_qm9_model(path)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
  return _save_random(CFG, str(tmp_path_factory.mktemp("m") / "qm9_tiny"), 0)


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
  return _save_random(CLF, str(tmp_path_factory.mktemp("c") / "qm9_tiny_clf"), 5)


def _ring_closures(tokens):
  """Ring-closure digit tokens ('1'..'5' = ids 9..13) per sample, over ALL samples (valid or not):
  twice the number of ring bonds of a valid SMILES, so a ring-count proxy that needs no RDKit."""
  return float(np.isin(tokens, np.arange(9, 14)).sum(axis=1).mean())


def test_sample_molecules_labels(model):
  cfg = SamplerConfig(strategy="mdlm", num_steps=8)
  t1, st = S.sample_molecules(model, cfg, num_samples=6, batch_size=4, seed=3, label=1,
                              noise_removal=True)
  assert t1.shape == (6, 32) and t1.dtype == np.int32 and not np.any(t1 == 2)
  assert st["nfe"] == 9  # T grid steps + the final noise-removal step
  _, st0 = S.sample_molecules(model, cfg, num_samples=6, batch_size=4, seed=3, label=1)
  assert st0["nfe"] == 8  # molecules default: no final step (SPEC_DOMAINS §M.4)
  again, _ = S.sample_molecules(model, cfg, num_samples=6, batch_size=4, seed=3, label=1)
  np.testing.assert_array_equal(t1, again)
  t0, _ = S.sample_molecules(model, cfg, num_samples=6, batch_size=4, seed=3, label=0)
  assert not np.array_equal(t1, t0)  # the label reaches the model
  assert len(model.tokenizer.decode_batch(t1)) == 6


def test_guided_denoise_errors(model, classifier):
  with pytest.raises(ValueError, match="label"):
    S.guided_denoise(model, None, 2, 4)
  with pytest.raises(ValueError, match="guidance"):
    S.guided_denoise(model, "cfg", 1, 4)
  with pytest.raises(ValueError, match="target label"):
    S.guided_denoise(model, S.CFG(2.0), None, 4)
  with pytest.raises(ValueError, match="gamma"):
    S.guided_denoise(model, S.CFG(float("nan")), 1, 4)
  with pytest.raises(ValueError, match="classifier model"):
    S.guided_denoise(model, S.CBG(2.0, True), 1, 4)
  with pytest.raises(ValueError, match="not a classifier"):
    S.guided_denoise(model, S.CBG(2.0, True), 1, 4, classifier=model)
  with pytest.raises(ValueError, match="not a class-conditional"):
    S.guided_denoise(classifier, S.CFG(2.0), 1, 4)
  assert S.main(["--model", "/nonexistent/x", "--num_samples", "2"]) == 2
  assert S.main(["--approx", "--guidance=cfg", "--num_samples", "2"]) == 2


@pytest.mark.parametrize("args,needle", [
    (["--label=abc"], "error: --label='abc' must be 0, 1 or none"),
    (["--gamma=3"], "error: --gamma=3 needs --guidance=cfg, cbg or cbg_approx"),
    (["--top_k=4"], "error: --top_k=4 applies only to --model=ar with --guidance=cbg"),
    (["--top_k=4", "--guidance=cbg"], "error: --top_k=4 applies only to the AR model"),
    (["--model=ar", "--steps=8"], "error: --steps=8 does not apply to the AR model"),
    (["--model=ar", "--steps=32"], "error: --steps=32 does not apply to the AR model"),
    (["--model=ar", "--eta=0.1"], "error: --eta=0.1 does not apply to the AR model"),
    (["--model=ar", "--strategy=remdm_cap"], "error: --strategy=remdm_cap does not apply"),
    (["--model=ar", "--guidance=cbg", "--top_k=36"], "error: --top_k=36 must be in [1, V = 35]"),
    (["--model=ar", "--guidance=cbg", "--top_k=0"], "error: --top_k=0 must be in [1, V = 35]"),
    # issue 19: silent (exit 0) or tracebacks before
    (["--seed=-1"], "error: --seed=-1 must be an int in [0, 2^32)"),
    (["--seed=18446744073709551616"], "error: --seed=18446744073709551616 must be an int in"),
    (["--model=udlm", "--eta=0.5"], "error: --eta=0.5 does not apply to the UDLM model"),
    (["--model=udlm", "--strategy=remdm_cap"], "error: --strategy=remdm_cap does not apply to "
                                               "the UDLM model"),
    (["--model=udlm", "--noise_removal"], "error: --noise_removal applies to masked diffusion"),
    (["--guidance=cbg", "--approx", "--classifier=UDLM_DIR"],
     "error: UDLM_DIR is a udlm model of the molecules domain; molecules.sample --classifier "
     "takes classifier"),
    (["--model=CLF"], "error: CLF is a classifier model"),
    (["--classifier=CLF"], "error: --classifier=CLF applies only to --guidance=cbg"),
    (["--model=DIGITS"], "error: checkpoint/tokenizer vocab mismatch"),
    (["--output=TMP/exists.jsonl"], "error: --output=TMP/exists.jsonl exists; pass --overwrite"),
])
def test_cli_rejects_ignored_or_bad_flags_in_one_line(capsys, tmp_path, monkeypatch, args,
                                                      needle):
  """Flags that the chosen sampler would silently ignore, and a bad --label, are one-line errors
  with exit status 2 before any sampling (the shipped models; nothing is drawn)."""
  from remdm_jax.generation import ASSETS_DIR
  monkeypatch.setenv("REMDM_OUTPUT_DIR", str(tmp_path))
  (tmp_path / "exists.jsonl").write_text("keep\n")
  names = dict(UDLM_DIR=os.path.join(ASSETS_DIR, "qm9_udlm"), TMP=str(tmp_path),
               CLF=os.path.join(ASSETS_DIR, "qm9_classifier"),
               DIGITS=os.path.join(ASSETS_DIR, "digits_mdlm"))
  for k, v in names.items():
    args = [a.replace("=" + k, "=" + v) for a in args]
    needle = needle.replace(k, v)
  assert S.main(args + ["--num_samples=1"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith(needle), err
  assert sorted(os.listdir(tmp_path)) == ["exists.jsonl"]


def test_classifier_one_hot_input_matches_tokens(model, classifier):
  """dit.py's float [B, L, V] input path (x @ E) equals the int-token path, for both heads."""
  toks = jax.random.randint(jax.random.PRNGKey(0), (3, 32), 0, 35, dtype=np.int32)
  oh = jax.nn.one_hot(toks, 35, dtype=np.float32)
  t = np.full((3,), 0.5, np.float32)
  clf = dit.make_classifier_fn(classifier.graphdef)
  a, b = clf(classifier.params, toks, t), clf(classifier.params, oh, t)
  assert a.shape == (3, 2) and b.dtype == np.float32
  np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-5)
  cond = dit.make_cond_denoise_fn(model.graphdef)
  lab = np.array([0, 1, 2], np.int32)
  np.testing.assert_allclose(np.asarray(cond(model.params, oh, t, lab)),
                             np.asarray(cond(model.params, toks, t, lab)), rtol=1e-5, atol=1e-5)
  # the gradient w.r.t. the one-hot input exists and is not zero (what D-CBG approx uses)
  g = jax.grad(lambda x: clf(classifier.params, x, t)[:, 1].sum())(oh)
  assert g.shape == oh.shape and float(np.abs(g).max()) > 0
  with pytest.raises(ValueError, match="one-hot"):
    clf(classifier.params, oh[..., :34], t)


def test_cfg_sampling_wiring(model):
  """D-CFG runs through sample_molecules on tiny shapes; D-CFG with
  gamma = 1 / 0 is the label-1 / null-class model itself (same seeds, same draws)."""
  cfg = SamplerConfig(strategy="mdlm", num_steps=4)
  kw = dict(num_samples=4, batch_size=4, seed=2)
  plain1, _ = S.sample_molecules(model, cfg, label=1, **kw)
  plain0, _ = S.sample_molecules(model, cfg, label=None, **kw)
  cfg1, _ = S.sample_molecules(model, cfg, label=1, guidance=S.CFG(1.0), **kw)
  cfg0, _ = S.sample_molecules(model, cfg, label=1, guidance=S.CFG(0.0), **kw)
  np.testing.assert_array_equal(cfg1, plain1)
  np.testing.assert_array_equal(cfg0, plain0)
  cfg2, st = S.sample_molecules(model, cfg, label=1, guidance=S.CFG(2.0), **kw)
  assert cfg2.shape == (4, 32) and st["nfe"] == 8 and not np.array_equal(cfg2, plain1)


@pytest.mark.parametrize("approx", [True, False])
def test_cbg_sampling_wiring(model, classifier, approx):
  """D-CBG exact / approx under ReMDM through sample_molecules: valid ids, classifier NFE."""
  remdm = SamplerConfig(strategy="remdm_cap", num_steps=2, eta=0.1)
  tk, st = S.sample_molecules(model, remdm, label=1, guidance=S.CBG(3.0, approx),
                              classifier=classifier, num_samples=2, batch_size=2, seed=2)
  assert tk.shape == (2, 32) and tk.dtype == np.int32 and 0 <= tk.min() and tk.max() < 35
  assert st["nfe"] == 2 and st["classifier_nfe"] == 2 * (1 if approx else 32 * 35)


def test_shipped_guidance_raises_ring_closures():
  """Shipped qm9_cond_mdlm / qm9_classifier, fixed seed: D-CFG gamma = 2 and D-CBG (approx)
  gamma = 5 raise the ring-closure count per sample over D-CFG gamma = 0 (the null-class model,
  which is also D-CBG's base denoiser); label 1 = many rings. First run (64 samples, T = 8):
  see the printed line. The RDKit ring-count version is the slow test in test_molecules_slow.py."""
  model = S.load_qm9_model()
  clf = S.load_qm9_model(name=S.CLASSIFIER_MODEL)
  cfg = SamplerConfig(strategy="mdlm", num_steps=8)
  kw = dict(num_samples=64, batch_size=64, seed=1, label=1)
  base, _ = S.sample_molecules(model, cfg, guidance=S.CFG(0.0), **kw)
  cfg2, _ = S.sample_molecules(model, cfg, guidance=S.CFG(2.0), **kw)
  cbg5, _ = S.sample_molecules(model, cfg, guidance=S.CBG(5.0, True), classifier=clf, **kw)
  r = [_ring_closures(x) for x in (base, cfg2, cbg5)]
  print("ring closures per sample: cfg0 %.2f cfg2 %.2f cbg5 %.2f" % tuple(r))
  assert r[1] > r[0] + 2.0
  assert r[2] > r[0] + 0.5


def test_sweep_points_csv_and_plot(model, tmp_path):
  pytest.importorskip("rdkit")
  ctx = dict(model=model, reference={"CCO"}, num_samples=8, batch_size=8, seed=1,
             property="ring_count", canonical=False, approx=False, remdm_strategy="remdm_cap",
             eta=0.05)
  r = sweep.run_point(ctx, "ReMDM", "D-CFG", 1.0, 8)
  assert r["num_samples"] == 8 and 0 <= r["valid_frac"] <= 1 and r["nfe"] >= 8
  with pytest.raises(sweep.Unavailable, match="UDLM"):
    sweep.run_point(ctx, "UDLM", "D-CFG", 1.0, 8)
  r2 = sweep.run_point(ctx, "MDLM", "D-CFG", 2.0, 8)
  assert r2["num_samples"] == 8 and r2["nfe"] == 16  # 2B rows per step
  rows = [dict(method="MDLM", guidance="D-CFG", gamma=g, T=32, status="ok", kept=True,
               num_novel=100 * g, novel_mean=1.0 + g) for g in (1, 2)]
  rows.append(dict(method="AR", guidance="D-CBG", gamma=1, T=32, status="skipped: x", kept=False))
  sweep.write_csv(str(tmp_path / "s.csv"), rows)
  with open(tmp_path / "s.csv") as f:
    got = list(csv.DictReader(f))
  assert [g["status"] for g in got] == ["ok", "ok", "skipped: x"] and got[1]["num_novel"] == "200"
  back = sweep.read_csv(str(tmp_path / "s.csv"))  # resume: rows keyed by grid point
  assert set(back) == {("MDLM", "D-CFG", 1.0, 32, ""), ("MDLM", "D-CFG", 2.0, 32, ""),
                       ("AR", "D-CBG", 1.0, 32, "")}
  assert back[("MDLM", "D-CFG", 2.0, 32, "")]["num_novel"] == 200
  assert back[("MDLM", "D-CFG", 2.0, 32, "")]["novel_mean"] == 3.0
  assert back[("MDLM", "D-CFG", 1.0, 32, "")]["kept"] is True
  assert sweep.read_csv(str(tmp_path / "none.csv")) == {}
  pytest.importorskip("matplotlib")
  out = sweep.plot_pareto(rows, str(tmp_path / "p.png"), "ring_count")
  assert os.path.getsize(out) > 1000
  assert sweep.main(["--out_dir", str(tmp_path), "--methods", "GPT"]) == 2
  assert sweep.main(["--out_dir", str(tmp_path), "--gammas", "-1"]) == 2
  for bad in (["--gammas", "x"], ["--steps", "a"], ["--methods", ","],
              ["--methods", "MDLM", "--fudge_top_k", "4"], ["--fudge_top_k", "0"]):
    assert sweep.main(["--out_dir", str(tmp_path)] + bad) == 2, bad
  (tmp_path / "file").write_text("x")
  assert sweep.main(["--out_dir", str(tmp_path / "file")]) == 2  # not a folder: one line, no work


def test_sweep_point_settings_tell_runs_apart(model):
  """A resumed sweep reuses a CSV point only if its settings string matches (ReMDM eta and
  strategy, exact / first-order D-CBG, FUDGE top-k, the model)."""
  ctx = dict(model=model, ar_model=model, remdm_strategy="remdm_cap", eta=None, approx=True,
             fudge_top_k=None)
  base = sweep.point_settings(ctx, "ReMDM", "D-CBG")
  assert "remdm_cap" in base and "first-order" in base
  assert sweep.point_settings(dict(ctx, eta=0.5), "ReMDM", "D-CBG") != base
  assert sweep.point_settings(dict(ctx, approx=False), "ReMDM", "D-CBG") != base
  assert sweep.point_settings(dict(ctx, remdm_strategy="remdm_rescale"), "ReMDM", "D-CBG") != base
  assert sweep.point_settings(ctx, "MDLM", "D-CBG") != base
  f_all = sweep.point_settings(ctx, "AR", "D-CBG")
  assert sweep.point_settings(dict(ctx, fudge_top_k=4), "AR", "D-CBG") != f_all
  assert sweep.point_settings(ctx, "MDLM", "D-CFG") == sweep.point_settings(
      dict(ctx, eta=0.5, approx=False), "MDLM", "D-CFG")  # irrelevant knobs do not matter


def test_cli_writes_jsonl_output(model, tmp_path, capsys):
  """Issue 19 item 8: molecules.sample printed only to stdout; --output writes JSONL (atomically,
  an existing file needs --overwrite)."""
  pytest.importorskip("rdkit")
  import json
  out = tmp_path / "mols.jsonl"
  args = ["--model", model.path, "--num_samples=3", "--batch_size=2", "--steps=4", "--seed=5",
          "--output", str(out)]
  assert S.main(args) == 0
  recs = [json.loads(line) for line in out.read_text().splitlines()]
  assert [r["index"] for r in recs] == [0, 1, 2]
  toks, _ = S.sample_molecules(model, SamplerConfig(strategy="mdlm", num_steps=4),
                               num_samples=3, batch_size=2, seed=5, label=1)
  assert [r["tokens"] for r in recs] == toks.tolist()
  assert [r["smiles"] for r in recs] == model.tokenizer.decode_batch(toks)
  for r in recs:
    assert r["seed"] == 5 and r["steps"] == 4 and r["kind"] == "mdlm" and r["label"] == 1
    assert isinstance(r["valid"], bool) and (r["ring_count"] is None) == (not r["valid"])
  printed = capsys.readouterr()
  assert f"wrote 3 molecules to {out}" in printed.err
  assert S.main(args) == 2 and "exists; pass --overwrite" in capsys.readouterr().err


def test_sweep_resume_csv_seed_quick_and_eta(tmp_path, capsys):
  """Issue 19 items 7/8: a binary or column-less CSV in --out_dir gave UnicodeDecodeError /
  KeyError tracebacks (now one line before any work); a negative seed was taken; --quick ran exact
  D-CBG (hours per point on a CPU) and its plot was empty at --min_novel 50; the ETA counted every
  point as equally expensive."""
  for name, content in (("binary", b"\xff\xfe\x00garbage\x81" * 20),
                        ("columns", b"a,b,c\n1,2,3\n")):
    d = tmp_path / name
    d.mkdir()
    (d / "qm9_sweep.csv").write_bytes(content)
    assert sweep.main(["--out_dir", str(d), "--methods", "MDLM", "--guidances", "D-CFG",
                       "--gammas", "1", "--steps", "2", "--num_samples", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a sweep CSV this command wrote" in err[0], err
    assert "pass --fresh" in err[0]
    assert (d / "qm9_sweep.csv").read_bytes() == content
  assert sweep.main(["--out_dir", str(tmp_path / "s"), "--seed=-1"]) == 2
  assert "--seed=-1 must be an int in [0, 2^32)" in capsys.readouterr().err
  assert not (tmp_path / "s").exists()
  import argparse
  a = argparse.Namespace(quick=True, gammas="1,2,3,4,5", steps="32,64,128", methods="MDLM",
                         num_samples=1024, approx=False, min_novel=None)
  sweep.apply_defaults(a)
  assert (a.approx, a.num_samples, a.min_novel, a.steps, a.gammas) == (True, 256, 12, "32",
                                                                       "1,2,3")
  b = argparse.Namespace(quick=False, num_samples=1024, approx=False, min_novel=None)
  sweep.apply_defaults(b)
  assert (b.approx, b.min_novel) == (False, 50)
  rates = {("MDLM", "D-CFG", ""): [0.5], ("MDLM", "D-CBG", "exact"): [40.0]}
  pending = [("MDLM", "D-CFG", 2.0, 64), ("MDLM", "D-CBG", 1.0, 32), ("ReMDM", "D-CFG", 1.0, 32)]
  # 64 * 0.5 + 32 * 40 + 32 * 40 (ReMDM not measured yet: the largest rate)
  assert sweep.estimate_seconds(rates, pending, approx=False) == 32 + 1280 + 1280
  assert sweep.estimate_seconds({}, pending, approx=False) is None


def test_sweep_main_runs_resumes_and_reports_progress(model, tmp_path, capsys):
  pytest.importorskip("rdkit")
  d = str(tmp_path / "sw")
  args = ["--out_dir", d, "--model", model.path, "--methods", "MDLM", "--guidances", "D-CFG",
          "--gammas", "1,2", "--steps", "2", "--num_samples", "4", "--batch_size", "4"]
  assert sweep.main(args) == 0
  err = capsys.readouterr().err
  assert "step 2/2" in err and "ETA" in err  # progress within a point
  rows = list(csv.DictReader(open(os.path.join(d, "qm9_sweep.csv"))))
  assert [r["status"] for r in rows] == ["ok", "ok"] and rows[0]["num_samples"] == "4"
  assert sweep.main(args) == 0
  assert err.count("from ") == 0 and capsys.readouterr().err.count("from ") == 2  # resumed


def test_sweep_output_failing_mid_run_is_one_line(model, tmp_path, capsys, monkeypatch):
  """An output that cannot be written mid-run (disk full, read-only) was a 20-36-line OSError."""
  pytest.importorskip("rdkit")

  def full(path, rows):
    raise OSError(28, "No space left on device", path)

  monkeypatch.setattr(sweep, "write_csv", full)
  args = ["--out_dir", str(tmp_path / "sw"), "--model", model.path, "--methods", "MDLM",
          "--guidances", "D-CFG", "--gammas", "1", "--steps", "2", "--num_samples", "2"]
  assert sweep.main(args) == 2
  err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error")]
  assert len(err) == 1 and "No space left on device" in err[0], err
