"""Countdown scorer == the fork's `process_results` rules, generator, prompt; TruthfulQA metrics;
the countdown_eval command on a tiny random model folder."""
import json
import os

import numpy as np
import pytest

from remdm_jax.llm import countdown as cd

EXAMPLES = [("44,2,54,64", "2*54=108,108-44=64"), ("22,11,44,26", "44/11=4,22+4=26"),
            ("2,62,96,79", "62+96=158,158/2=79"), ("52,20,21,53", "52-20=32,21+32=53")]


@pytest.mark.parametrize("inp,ans", EXAMPLES)
def test_few_shot_answers_score_correct(inp, ans):
  assert cd.score_answer({"input": inp}, ans)
  assert cd.score_answer({"input": inp}, ans + "\n")  # int(" 64\n") parses


@pytest.mark.parametrize("inp,ans", [
    ("44,2,54,64", "2*54=108,108-44=65"),     # wrong final result
    ("44,2,54,64", "2*54=108,108-45=63"),     # wrong final number (target mismatch)
    ("22,11,44,26", "44/11=4,22+4=26,4-4=0"), # extra equation: 7 numbers
    ("22,11,44,26", "22+4=26"),               # missing numbers
    ("2,62,96,79", "62+96=158,158/2=78"),     # wrong arithmetic at the end
    ("2,62,96,79", "62+96=159,159/2=79"),     # wrong intermediate step (eval 158 != 159)
    ("52,20,21,53", "52-20=32,21+32"),        # missing '='
    ("52,20,21,53", "52-20=32 21+32=53"),     # missing comma -> '52-20=32 21+32' bad split
    ("44,2,54,64", "2*54=108,108-54=54"),     # reused number, wrong target
    ("2,62,96,79", "62+62=124,124-45=79"),    # a reused number instead of 96
    ("44,2,54,64", "__import__('os')=1,1=64"),  # not arithmetic: never evaluated
])
def test_mutated_answers_score_wrong(inp, ans):
  assert not cd.score_answer({"input": inp}, ans)


def test_reused_number_rule():
  # 3 numbers where an intermediate equals a given number: still valid (the reference rules)
  assert cd.score_answer({"input": "3,1,3,6"}, "3*1=3,3+3=6")
  # using 44 twice and never 2
  assert not cd.score_answer({"input": "44,2,54,64"}, "44+44=88,88-54=34")


def test_pass_at_k():
  doc = {"input": "44,2,54,64"}
  good, bad = "2*54=108,108-44=64", "1+1=2"
  for c in range(11):
    sc = cd.score_candidates(doc, [good] * c + [bad] * (10 - c))
    assert sc["correct"] == c
    assert sc["pass@1"] == pytest.approx(c / 10, abs=1e-12)
    assert sc["pass@10"] == float(c > 0)


def test_prompt_string():
  p = cd.build_prompt({"input": "1,2,3,9"})
  assert p.startswith("Question: Using the numbers [44, 2, 54], create an equation that equals "
                      "64.\nAnswer:  2*54=108,108-44=64\n\nQuestion: Using the numbers [22, 11, 44]")
  assert p.endswith("\n\nQuestion: Using the numbers [1, 2, 3], create an equation that equals "
                    "9.\nAnswer: ")
  assert p.count("Question:") == 5


def test_generated_problems_are_solvable_and_seeded():
  probs = cd.generate_problems(300, seed=1)
  assert probs == cd.generate_problems(300, seed=1)
  assert probs != cd.generate_problems(300, seed=2)
  for p in probs:
    a, b, c, t = map(int, p["input"].split(","))
    assert 1 <= min(a, b, c) and max(a, b, c) <= 99 and 1 <= t <= 999
    assert cd.score_answer(p, p["output"]), p


def test_generator_defaults_unchanged_and_small_number_options():
  # the first problems of seed 1 / 1000 as generated before max_number / ops existed
  assert cd.generate_problems(3, seed=1) == [
      {"input": "47,51,75,71", "output": "75-51=24,47+24=71"},
      {"input": "4,15,82,268", "output": "82-15=67,67*4=268"},
      {"input": "25,31,87,81", "output": "31-25=6,87-6=81"}]
  assert cd.generate_problems(2, seed=1000, max_number=99, ops="+-*/") == [
      {"input": "21,52,84,115", "output": "84-21=63,52+63=115"},
      {"input": "82,47,21,56", "output": "82-47=35,21+35=56"}]
  probs = cd.generate_problems(300, seed=3, max_number=9, ops="+-", max_target=20)
  for p in probs:
    a, b, c, t = map(int, p["input"].split(","))
    assert 1 <= min(a, b, c) and max(a, b, c) <= 9 and 1 <= t <= 20
    assert "*" not in p["output"] and "/" not in p["output"]
    assert cd.score_answer(p, p["output"]), p
  assert {len(p["input"].split(",")[0]) for p in probs} == {1}
  for bad in ({"ops": "+x"}, {"ops": ""}, {"ops": "++"}, {"max_number": 0},
              {"max_number": 2.5}, {"max_target": 0}):
    with pytest.raises(ValueError, match=next(iter(bad))):
      cd.generate_problems(3, **bad)


def _reference_expressions(nums, ops):
  """Independent enumeration: (value, expression) for every ordered pair (i, j), op1, the
  third number on either side, op2, with positive integer intermediate and result."""
  import itertools
  from fractions import Fraction
  f = {"+": lambda x, y: x + y, "-": lambda x, y: x - y, "*": lambda x, y: x * y,
       "/": lambda x, y: Fraction(x, y)}
  out = set()
  for i, j, k in itertools.permutations(range(3)):
    for o1 in ops:
      r = f[o1](nums[i], nums[j])
      if r <= 0 or r != int(r):
        continue
      for o2 in ops:
        for x, y in ((int(r), nums[k]), (nums[k], int(r))):
          v = f[o2](x, y)
          if v > 0 and v == int(v):
            out.add((int(v), f"{nums[i]}{o1}{nums[j]}={int(r)},{x}{o2}{y}={int(v)}"))
  return out


@pytest.mark.parametrize("nums,ops", [((2, 3, 4), "+-*/"), ((6, 2, 3), "+-*/"), ((5, 5, 1), "+-"),
                                      ((8, 4, 2), "*/"), ((7, 1, 9), "+-*")])
def test_random_attempt_pass_rate_exact(nums, ops):
  ref = _reference_expressions(nums, ops)
  assert set(cd._solutions(nums, ops)) == ref
  sols = cd._solutions(nums, ops)   # a list: the same string twice (e.g. 5+5 / 5+5) counts twice
  for t in sorted({v for v, _ in ref}) + [10 ** 6]:
    doc = {"input": f"{nums[0]},{nums[1]},{nums[2]},{t}"}
    want = sum(v == t for v, _ in sols) / len(sols)
    assert cd.random_attempt_pass_rate(doc, ops) == pytest.approx(want)
    # every counted expression really solves the problem under the reference scorer
    assert all(cd.score_answer(doc, e) for v, e in ref if v == t)
  assert cd.random_attempt_pass_rate({"input": "1,1,1,3"}, "+") == 1.0
  assert cd.random_attempt_pass_rate({"input": "1,1,1,2"}, "+") == 0.0
  assert cd.random_attempt_pass_rate({"input": "1,1,1,1"}, "-") == 0.0  # no expression at all
  with pytest.raises(ValueError, match="ops"):
    cd.random_attempt_pass_rate({"input": "1,1,1,1"}, "^")


def test_load_problems(tmp_path):
  f = tmp_path / "cd3.json"
  f.write_text(json.dumps([{"input": i, "output": o} for i, o in EXAMPLES]))
  assert len(cd.load_problems(str(f), limit=3)) == 3
  f.write_text(json.dumps([{"input": "1,2"}]))
  with pytest.raises(ValueError, match="a,b,c,target"):
    cd.load_problems(str(f))


def test_truthfulqa_two_items():
  pytest.importorskip("rouge_score")
  pytest.importorskip("sacrebleu")
  from remdm_jax.llm import truthfulqa as tq
  a = tq.score_item("Nothing happens if you eat watermelon seeds.",
                    ["Nothing happens", "You eat watermelon seeds"],
                    ["You grow watermelons in your stomach", "You get sick"])
  # rouge1 vs "Nothing happens": P = 2/7, R = 1 -> F = 2*2/7/(1+2/7) = 4/9
  # vs "You eat watermelon seeds": 4 common unigrams of 7 and 4 -> F = 2*4/11 = 8/11 (the best)
  assert a["rouge1_max"] == pytest.approx(800 / 11, abs=1e-6)
  # incorrect: "...in your stomach" shares "you": P=1/7, R=1/6 -> F=2/13; "You get sick": P=1/7,
  # R=1/3 -> F=1/5 (the best incorrect)
  assert a["rouge1_diff"] == pytest.approx(800 / 11 - 20, abs=1e-6)
  assert a["rouge1_acc"] == 1
  b = tq.score_item("You get sick.", ["Nothing happens"], ["You get sick"])
  assert b["rouge1_max"] == 0.0 and b["rouge1_acc"] == 0 and b["bleu_acc"] == 0
  assert b["bleu_diff"] < 0 and b["bleu_max"] == 0.0
  agg = tq.aggregate([a, b])
  assert agg["rouge1_acc"] == 0.5
  with pytest.raises(ValueError):
    tq.score_item("x", [], ["y"])


def char_tokenizer(path, specials=("<pad>", "<|eot_id|>", "<|eos|>", "<|mask|>")):
  """A character-level tokenizer.json: printable chars then the special tokens."""
  tk = pytest.importorskip("tokenizers")
  import string
  chars = sorted(set(string.printable) - set("\x0b\x0c\r"))
  vocab = {c: i for i, c in enumerate(chars)}
  vocab["<unk>"] = len(vocab)
  tok = tk.Tokenizer(tk.models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = tk.pre_tokenizers.Split(tk.Regex(r"[\s\S]"), behavior="isolated")
  tok.decoder = tk.decoders.Fuse()
  tok.add_special_tokens(list(specials))
  tok.save(path)
  return tok


def tiny_model_dir(path, seed=0):
  import jax
  from remdm_jax.llm import model as M
  from remdm_jax.llm import weights as W
  os.makedirs(path, exist_ok=True)
  tok = char_tokenizer(os.path.join(path, "tokenizer.json"))
  V = tok.get_vocab_size()
  ids = {s: tok.token_to_id(s) for s in ("<pad>", "<|eot_id|>", "<|eos|>", "<|mask|>")}
  cfg = M.LLaDAConfig.tiny(vocab_size=V, mask_token_id=ids["<|mask|>"],
                           eos_token_id=ids["<|eos|>"], eot_token_id=ids["<|eot_id|>"],
                           pad_token_id=ids["<pad>"], max_sequence_length=1024)
  _, params = M.init_model(cfg, jax.random.key(seed))
  W.save_hf_checkpoint(path, cfg, params)
  return cfg


def test_countdown_eval_command(tmp_path):
  from remdm_jax.llm import countdown_eval
  d = str(tmp_path / "model")
  tiny_model_dir(d)
  out = str(tmp_path / "out")
  common = [f"--model_dir={d}", "--gen_length=8", "--block_length=8", "--num_problems=2",
            "--repeats=2", "--batch_size=4", "--param_dtype=float32", "--compute_dtype=float32",
            f"--out_dir={out}"]
  assert countdown_eval.main(common + ["--sampler=remdm_llada", "--steps=8"]) == 0
  lines = open(os.path.join(out, "samples.jsonl")).read().splitlines()
  assert len(lines) == 2
  rec = json.loads(lines[0])
  assert len(rec["completions"]) == 2 and rec["prompt"].endswith("Answer: ")
  summ = json.load(open(os.path.join(out, "summary.json")))
  assert summ["num_problems"] == 2 and 0.0 <= summ["pass@1"] <= 1.0
  assert summ["nfe_total"] == 16  # one batch of 4 rows, one block: 2S = 16 calls
  assert summ["nfe_per_sample"] == 16 and rec["nfe"] == [16, 16]  # per row, not per batch
  # per-sample NFE does not depend on the batch size (nfe_total does: 2 batches of 2 rows)
  out3 = str(tmp_path / "out3")
  base3 = [c for c in common[:-1] if not c.startswith("--batch_size")]
  assert countdown_eval.main(base3 + ["--batch_size=2", f"--out_dir={out3}",
                                      "--sampler=remdm_llada", "--steps=8"]) == 0
  summ3 = json.load(open(os.path.join(out3, "summary.json")))
  assert summ3["nfe_total"] == 32 and summ3["nfe_per_sample"] == 16
  # a bad flag: one line, exit 2, nothing written
  out2 = str(tmp_path / "out2")
  assert countdown_eval.main(common[:-1] + [f"--out_dir={out2}", "--sampler=nope"]) == 2
  assert countdown_eval.main(common[:-1] + [f"--out_dir={out2}", "--sampler=remdm_llada",
                                            "--steps=4"]) == 2
  assert not os.path.exists(out2)


def test_generator_rejects_unsolvable_settings_and_bad_n_seed():
  # these looped forever: no triple in 1..max_number reaches a target <= max_target
  with pytest.raises(ValueError, match="max_number=1"):
    cd.generate_problems(2, ops="-", max_number=1)
  with pytest.raises(ValueError, match="max_target=1"):
    cd.generate_problems(1, max_target=1, ops="+")
  with pytest.raises(ValueError, match="max_target=2"):
    cd.generate_problems(1, max_target=2, max_number=6, ops="+")
  # the smallest solvable settings still generate (1+1+1=3; 3-1-1=1)
  assert cd.generate_problems(2, max_target=3, max_number=2, ops="+")[0]["input"].endswith(",3")
  for p in cd.generate_problems(5, ops="-", max_number=3, seed=4):
    assert cd.score_answer(p, p["output"]), p
  assert cd.generate_problems(0, ops="-", max_number=1) == []
  with pytest.raises(ValueError, match="n=2.5"):
    cd.generate_problems(2.5)
  with pytest.raises(ValueError, match="n=True"):
    cd.generate_problems(True)
  with pytest.raises(ValueError, match="seed=-1"):
    cd.generate_problems(2, seed=-1)


def test_degenerate_scores_and_problem_files(tmp_path):
  """Issue 19 item 7: no candidates reported pass@1 = 1.0; a garbage problems file's error did
  not name it; limit 0 returned everything and -1 dropped a problem."""
  doc = {"input": "1,2,3,6", "output": "1+2+3=6"}
  with pytest.raises(ValueError, match="no candidates"):
    cd.score_candidates(doc, [])
  with pytest.raises(ValueError, match="got one string"):
    cd.score_candidates(doc, "1+2+3")
  with pytest.raises(ValueError, match="n >= 1"):
    cd.pass_at_1(0, 0)
  garbage = tmp_path / "cd.json"
  garbage.write_text("garbage{")
  with pytest.raises(ValueError, match=rf"{garbage}: neither a JSON document nor JSON lines"):
    cd.load_problems(str(garbage))
  binary = tmp_path / "bin.json"
  binary.write_bytes(b"\xff\xfe\x00\x01" * 8)
  with pytest.raises(ValueError, match=rf"{binary}: unreadable problems file"):
    cd.load_problems(str(binary))
  good = tmp_path / "good.jsonl"
  good.write_text("\n".join(json.dumps({"input": f"1,2,3,{t}"}) for t in (6, 5, 7)))
  assert len(cd.load_problems(str(good))) == 3 and len(cd.load_problems(str(good), 2)) == 2
  for limit in (0, -1):
    with pytest.raises(ValueError, match=f"limit={limit} must be None"):
      cd.load_problems(str(good), limit)
  bad = tmp_path / "bad.jsonl"
  bad.write_text(json.dumps({"input": "1,2,3,6"}) + "\n" + json.dumps({"input": "1,2,3"}))
  with pytest.raises(ValueError, match=rf"{bad}: countdown input '1,2,3'"):
    cd.load_problems(str(bad))


def test_countdown_eval_bad_input_before_any_work(tmp_path, capsys):
  """One `error:` line, exit 2, before the model is loaded and nothing written: --limit < 1
  (ran everything / dropped a problem), --limit without --data, an --out_dir that is a file
  (a traceback after the whole run), earlier results, and seeds outside [0, 2^32)."""
  from remdm_jax.llm import countdown_eval
  data = tmp_path / "cd.jsonl"
  data.write_text(json.dumps({"input": "1,2,3,6"}) + "\n")
  afile = tmp_path / "afile"
  afile.write_text("x")
  done = tmp_path / "done"
  done.mkdir()
  (done / "summary.json").write_text("{}")
  model = str(tmp_path / "no_model_needed")
  cases = [(["--data", str(data), "--limit=0"], "--limit=0 must be >= 1"),
           (["--data", str(data), "--limit=-1"], "--limit=-1 must be >= 1"),
           (["--limit=2"], "--limit=2 applies only to --data"),
           (["--out_dir", str(afile)], "exists and is not a folder"),
           (["--out_dir", str(done)], "summary.json exists; pass --overwrite"),
           (["--seed=-1"], "--seed=-1 must be an int in [0, 2^32)"),
           ([f"--seed={2**64}"], f"--seed={2**64} must be an int in [0, 2^32)")]
  before = sorted(os.listdir(tmp_path))
  for extra, needle in cases:
    args = [f"--model_dir={model}", f"--out_dir={tmp_path / 'new'}"] + extra
    assert countdown_eval.main(args) == 2, extra
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], (extra, err)
  assert sorted(os.listdir(tmp_path)) == before


def test_countdown_evaluate_stops_on_ctrl_c_keeping_finished_problems():
  """Ctrl-C inside a compiled generation program (here a slow fake) stops within a bounded time;
  the problems whose every repeat finished are kept and the summary says interrupted."""
  import _thread
  import threading
  import time
  from types import SimpleNamespace
  from remdm_jax.llm import countdown_eval
  from remdm_jax.llm import countdown_train as T
  tok = T.CharTokenizer(12)
  cfg = SimpleNamespace(eos_id=T.EOS, pad_id=T.PAD)
  calls = []

  def gen(params, x, am, keys):
    calls.append(1)
    if len(calls) == 2:  # the second batch: Ctrl-C arrives while it "runs" for 3 s
      threading.Timer(0.1, _thread.interrupt_main).start()
      time.sleep(3.0)
    ans = tok.encode("1+2=3,3+3=6", add_special_tokens=False)
    out = np.full((x.shape[0], len(ans) + 1), T.EOS, np.int32)
    out[:, :len(ans)] = ans
    return out, {"nfe": 4}

  problems = [{"input": "1,2,3,6"}, {"input": "2,2,2,6"}, {"input": "1,1,1,3"}]
  t0 = time.perf_counter()
  records, summary = countdown_eval.evaluate(gen, None, tok, cfg, problems, repeats=2,
                                             batch_size=2)
  assert time.perf_counter() - t0 < 2.5
  assert summary["interrupted"] and [r["input"] for r in records] == ["1,2,3,6"]
  assert records[0]["completions"] == ["1+2=3,3+3=6"] * 2 and records[0]["pass@1"] == 1.0
  time.sleep(3.0)  # let the abandoned fake finish
