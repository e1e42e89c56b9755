"""The saved Countdown LLaDA (issue 19 item 8): `countdown_train` saves a small params folder that
`llm.cli` and `llm.countdown_eval` run offline; the shipped one scores its model card's held-out
pass@1; the command never replaces a folder it did not write."""
import json
import os

import jax
import numpy as np
import pytest

from remdm_jax.llm import countdown as cd
from remdm_jax.llm import countdown_train as T

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = os.path.join(ROOT, "remdm_jax", "assets", "models", "countdown_llada")
SMALL = dict(d_model=32, n_heads=2, n_layers=1, mlp_hidden_size=64)


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
  probs = cd.generate_problems(40, seed=5, **T.TASK)
  tr = T.train(probs, steps=2, batch_size=8, model=SMALL)
  path = str(tmp_path_factory.mktemp("cd") / "model")
  T.save_model(path, tr, {"note": "test"})
  return tr, path


def test_char_tokenizer_round_trip():
  tok = T.CharTokenizer(9)
  assert tok.encode("3,5,2,13") == T.encode("3,5,2,13\n")  # a prompt line gets its newline
  assert tok.encode("1+2=3", add_special_tokens=False) == T.encode("1+2=3")
  ids = T.encode("1+2=3") + [T.EOS, T.EOS, T.MASK]
  text = tok.decode(ids)
  assert text == "1+2=3<|eos|><|eos|><|mdm_mask|>"
  assert tok.encode(text, add_special_tokens=False) == ids
  assert tok.decode(ids, skip_special_tokens=True) == "1+2=3"
  assert tok.id_to_token(T.EOS) == "<|eos|>" and tok.token_id("<|eos|>") == T.EOS
  assert tok.token_id("7") == 7 and tok.vocab_size == T.VOCAB
  from remdm_jax.llm import generate as G
  assert G.decode_outputs(np.asarray([ids]), tok, eos_token="<|eos|>") == ["1+2=3"]
  with pytest.raises(ValueError, match="'x'"):
    tok.encode("1,x")


def test_save_load_round_trip_and_damaged_values(small_model, tmp_path):
  tr, path = small_model
  cfg, gd, params, tok, meta = T.load_model(path)
  assert cfg == tr.cfg and meta["kind"] == "llada_countdown" and meta["note"] == "test"
  assert (tok.prompt_length, meta["g_len"]) == (tr.p_len, tr.g_len)
  for a, b in zip(jax.tree.leaves(jax.device_get(tr.params)), jax.tree.leaves(params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert T.is_model_folder(path) and not T.is_model_folder(str(tmp_path))
  bad = T.Trained(tr.cfg, tr.logits_fn, jax.tree.map(lambda a: a * np.nan, tr.params),
                  tr.losses, tr.p_len, tr.g_len)
  T.save_model(str(tmp_path / "bad"), bad)
  with pytest.raises(ValueError, match=r"bad: parameter '.*' holds non-finite values"):
    T.load_model(str(tmp_path / "bad"))
  with pytest.raises(ValueError, match="not a Countdown LLaDA folder"):
    T.load_model(str(tmp_path))


def test_llm_commands_run_offline_on_a_saved_model(small_model, tmp_path, capsys):
  from remdm_jax.llm import cli, countdown_eval
  tr, path = small_model
  gen = ["--model_dir", path, "--sampler", "llada", "--gen_length", str(tr.g_len),
         "--block_length", str(tr.g_len), "--steps", str(tr.g_len)]
  assert cli.main(gen + ["--prompt", "3,5,2,13", "--prompt", "1,2,3,6"]) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == 2 and all("text" in json.loads(ln) for ln in lines)
  out = tmp_path / "eval"
  assert countdown_eval.main(gen + ["--sampler", "remdm_llada", "--repeats", "1",
                                    "--num_problems", "3", "--problem_seed", "7",
                                    "--out_dir", str(out)]) == 0
  recs = [json.loads(ln) for ln in open(out / "samples.jsonl")]
  # its own task (numbers 1..6) and zero-shot prompt format
  assert [r["input"] for r in recs] == [p["input"] for p in
                                        cd.generate_problems(3, seed=7, **T.TASK)]
  assert all(r["prompt"] == r["input"] + "\n" for r in recs)
  # the answers are those of the library's own decoding of the same model (llada_conf aside)
  summary = json.load(open(out / "summary.json"))
  assert summary["num_problems"] == 3 and 0.0 <= summary["pass@1"] <= 1.0


def test_countdown_train_command_checks_outputs_first(tmp_path, capsys):
  assert T.main([]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: --out is required")
  mine = tmp_path / "mine"
  mine.mkdir()
  (mine / "notes.txt").write_text("keep")
  for args, needle in (([], "exists; pass --overwrite"), (["--overwrite"], "not a Countdown")):
    assert T.main(["--out", str(mine), "--steps", "1", *args]) == 2
    assert needle in capsys.readouterr().err
  assert os.listdir(mine) == ["notes.txt"] and not (tmp_path / "mine.train").exists()
  with pytest.raises(SystemExit) as e:
    T.main(["--help"])
  assert e.value.code == 0 and "--out" in capsys.readouterr().out


@pytest.mark.skipif(not os.path.isdir(SHIPPED), reason="shipped model not present")
def test_shipped_model_scores_its_model_card():
  """The shipped model (remdm_jax/assets/models/countdown_llada, 4000 steps): held-out pass@1 of
  the official rule (temperature 0) as stored at training time, clearly above random."""
  cfg, gd, params, tok, meta = T.load_model(SHIPPED)
  _, held = T.split_problems(meta["seed"])
  f = T.M.make_logits_fn(gd)
  got = T.pass_at_1(f, params, held, "llada", meta["p_len"], meta["g_len"])
  rand = T.random_pass_at_1(held, T.TASK["ops"])
  assert got == pytest.approx(meta["held_out_pass_at_1"]["llada"], abs=0.02)
  assert got > max(2 * rand, rand + 0.05)
  size = sum(os.path.getsize(os.path.join(d, n)) for d, _, ns in os.walk(SHIPPED) for n in ns)
  assert size < 4e6
