"""Countdown with 3 numbers (the `countdown3` task of the authors' lm-eval fork, SPEC_DOMAINS §L.2):
an offline problem generator, the reference few-shot prompt, the reference scorer and pass@k.

Records are {"input": "a,b,c,target", "output": "a*b=x,x-c=target"} (the cd3 / d1 format).

Scorer (fork `utils.process_results`), per candidate answer string:
  1. int(answer.split("=")[-1]) == target (ValueError -> wrong);
  2. the integers (regex \\d+) before the last "=" are exactly 5, include a, b and c, and any
     other number appears at least twice (the intermediate result);
  3. every comma-separated "lhs=rhs" has exactly one "=" and value(lhs) == int(rhs).
The reference evaluates lhs with Python `eval` on model output; here a restricted evaluator
(`safe_eval`: int/float literals, + - * / // % **, unary +/-, parentheses; anything else counts as
an exception, i.e. wrong) gives the same value for every arithmetic expression and never runs
code. pass@1 = 1 - prod_{i=n-c+1}^{n} (1 - 1/i) = c/n (the unbiased estimator), pass@n = [c > 0].
"""
from __future__ import annotations

import ast
import operator
import re
from typing import Optional, Sequence

import numpy as np

FEW_SHOT = (
    {"input": "44,2,54,64", "output": "2*54=108,108-44=64"},
    {"input": "22,11,44,26", "output": "44/11=4,22+4=26"},
    {"input": "2,62,96,79", "output": "62+96=158,158/2=79"},
    {"input": "52,20,21,53", "output": "52-20=32,21+32=53"},
)
STOP = ("Question:",)
FEWSHOT_DELIMITER = "\n\n"   # lm-eval 0.4.x defaults (UNVERIFIED against the fork's run logs)
TARGET_DELIMITER = " "

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
        ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
        ast.Pow: operator.pow}


def doc_to_text(doc: dict) -> str:
  """'Question: Using the numbers [a, b, c], create an equation that equals t.\\nAnswer: '."""
  a, b, c, t = _split_input(doc)
  return (f"Question: Using the numbers [{a}, {b}, {c}], create an equation that equals {t}."
          "\nAnswer: ")


def _split_input(doc: dict) -> list[str]:
  parts = str(doc["input"]).split(",")
  if len(parts) != 4:
    raise ValueError(f"countdown input {doc['input']!r} must be 'a,b,c,target'")
  return parts


def build_prompt(doc: dict, few_shot: Sequence[dict] = FEW_SHOT) -> str:
  """The 4-shot context as lm-eval concatenates it: each shot is doc_to_text + " " + output,
  shots joined by "\\n\\n", then "\\n\\n" + doc_to_text(doc)."""
  shots = [doc_to_text(s) + TARGET_DELIMITER + s["output"] for s in few_shot]
  return FEWSHOT_DELIMITER.join(shots + [doc_to_text(doc)])


def safe_eval(expr: str):
  """Value of an arithmetic expression (module docstring); raises ValueError otherwise."""
  try:
    tree = ast.parse(expr.strip(), mode="eval")
  except SyntaxError as e:
    raise ValueError(f"not an expression: {expr!r}") from e

  def ev(node):
    if isinstance(node, ast.Expression):
      return ev(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
      return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
      left, right = ev(node.left), ev(node.right)
      if isinstance(node.op, ast.Pow) and abs(right) > 64:
        raise ValueError("exponent too large")
      return _OPS[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
      v = ev(node.operand)
      return -v if isinstance(node.op, ast.USub) else v
    raise ValueError(f"unsupported syntax in {expr!r}")

  try:
    return ev(tree)
  except (ZeroDivisionError, OverflowError, TypeError) as e:
    raise ValueError(str(e)) from e


def _is_correct(equation: str) -> bool:
  if "=" not in equation:
    return False
  try:
    left, right = equation.split("=")
    return safe_eval(left.strip()) == int(right.strip())
  except (ValueError, TypeError):
    return False


def _numbers_used(numbers: list[int], required: list[int]) -> bool:
  if len(numbers) != 5:
    return False
  if any(r not in numbers for r in required):
    return False
  return all(n in required or numbers.count(n) > 1 for n in numbers)


def score_answer(doc: dict, answer: str) -> bool:
  """Whether one candidate answer solves the problem (the reference rules)."""
  parts = _split_input(doc)
  try:
    final = int(answer.split("=")[-1])
  except ValueError:
    return False
  numbers = [int(x) for x in re.findall(r"\d+", answer.rpartition("=")[0])]
  required = [int(parts[i]) for i in range(3)]
  if final != int(parts[3]) or not _numbers_used(numbers, required):
    return False
  return all(_is_correct(eq.strip()) for eq in answer.split(","))


def pass_at_1(num_correct: int, n: int) -> float:
  """The reference's unbiased estimator 1 - prod (1 - 1/i), i = n-c+1..n (= c/n). ValueError
  for n < 1 (no samples: pass@1 is undefined, it was reported as 1.0) or c outside [0, n]."""
  if n < 1 or not 0 <= num_correct <= n:
    raise ValueError(f"pass_at_1: needs n >= 1 samples and 0 <= correct <= n, got correct="
                     f"{num_correct}, n={n}")
  if num_correct >= n:
    return 1.0
  return float(1.0 - np.prod(1.0 - 1.0 / np.arange(n - num_correct + 1, n + 1)))


def score_candidates(doc: dict, answers: Sequence[str]) -> dict:
  """{"correct": c, "n": n, "pass@1": c/n estimator, "pass@n": [c > 0]} over the candidates.
  ValueError for no candidates (pass@1 of nothing was reported as 1.0) or a single string given
  for the list (its characters were scored as answers)."""
  if isinstance(answers, (str, bytes)):
    raise ValueError(f"score_candidates: answers must be a list of strings, got one string "
                     f"{answers[:40]!r}")
  answers = list(answers)
  if not answers:
    raise ValueError("score_candidates: no candidates (pass@k needs at least one answer)")
  c = sum(score_answer(doc, a) for a in answers)
  n = len(answers)
  return {"correct": c, "n": n, "pass@1": pass_at_1(c, n), f"pass@{n}": float(c > 0)}


OPS = "+-*/"


def _check_ops(ops: str) -> str:
  if not isinstance(ops, str) or not ops or any(o not in OPS for o in ops) or (
      len(set(ops)) != len(ops)):
    raise ValueError(f"ops={ops!r} must be a non-empty string of distinct characters from {OPS!r}")
  return ops


def _solutions(nums: Sequence[int], ops: str = OPS) -> list[tuple[int, str]]:
  """Every (target, solution) with two binary ops from `ops` and positive integer values (the
  first op on an ordered pair of the numbers, the second between its result and the third
  number, in either order). Raises ValueError on bad `ops`."""
  _check_ops(ops)
  out = []
  fns = {"+": operator.add, "-": operator.sub, "*": operator.mul}

  def apply(x, y, op):
    if op == "/":
      return x // y if y and x % y == 0 else None
    return fns[op](x, y)

  for i in range(3):
    for j in range(3):
      if i == j:
        continue
      k = 3 - i - j
      for o1 in OPS:
        r1 = apply(nums[i], nums[j], o1)
        if r1 is None or r1 <= 0:
          continue
        for x, y, first in ((r1, nums[k], True), (nums[k], r1, False)):
          for o2 in OPS:
            t = apply(x, y, o2)
            if t is None or t <= 0 or o1 not in ops or o2 not in ops:
              continue
            out.append((t, f"{nums[i]}{o1}{nums[j]}={r1},{x}{o2}{y}={t}"))
  return out


def random_attempt_pass_rate(problem: dict, ops: str = OPS) -> float:
  """Exact probability that a uniformly chosen well-formed attempt solves `problem`: the
  fraction of `_solutions(a, b, c, ops)` (every two-op expression over the three numbers with
  positive integer values, chosen ignoring the target) whose value is the target. This is the
  pass@1 of a "random" solver that knows the answer format and the arithmetic but not the
  target; it is generous (it never writes a malformed or wrong equation). 0.0 when there is no
  expression. Raises ValueError on a bad input string or `ops`."""
  a, b, c, t = (int(v) for v in _split_input(problem))
  sols = _solutions([a, b, c], ops)
  return sum(s[0] == t for s in sols) / len(sols) if sols else 0.0


_SMALL_NUMBERS = 12
_MAX_CONSECUTIVE_MISSES = 10_000_000


def _any_solvable(max_number: int, max_target, ops: str) -> bool:
  """Whether some triple in 1..max_number has a solution with target <= max_target under `ops`,
  by enumerating the distinct sorted triples in 1..min(max_number, 12) (`_solutions` is symmetric
  in the order of the numbers). Exact for every max_number: the triples in 1..12 already reach
  target 1 with any op set containing "-" (3-1-1), "*" (1*1*1) or "/" (1/1/1), and with "+" alone
  the targets (sums >= 3) only grow with the numbers, so a larger max_number adds no solvable
  target that 1..12 lacks below max_target."""
  import itertools
  m = min(max_number, _SMALL_NUMBERS)
  return any(s[0] <= max_target
             for nums in itertools.combinations_with_replacement(range(1, m + 1), 3)
             for s in _solutions(list(nums), ops))


def generate_problems(n: int, seed: int = 0, max_target: int = 999, max_number: int = 99,
                      ops: str = OPS) -> list[dict]:
  """n cd3 problems, deterministic in `seed`: numbers uniform in 1..max_number; the target is
  that of a uniformly chosen solution (two binary ops from `ops`, positive integer
  intermediates, target <= max_target); "output" holds that solution. The defaults (numbers
  1..99, all four ops) give the same problems for a seed as before these options existed.
  Raises ValueError on a non-int or negative n, a non-int or negative seed, max_number < 1,
  max_target < 1, bad `ops`, or when no triple of numbers in 1..max_number has a solution with
  target <= max_target under `ops` (e.g. ops="-" with max_number=1, or ops="+" with
  max_target < 3); solvability is decided up front (`_any_solvable`), so this never loops forever."""
  if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
    raise ValueError(f"n={n!r} must be an int >= 0")
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f"seed={seed!r} must be an int >= 0")
  if isinstance(max_number, bool) or not isinstance(max_number, (int, np.integer)) or (
      max_number < 1):
    raise ValueError(f"max_number={max_number!r} must be an int >= 1")
  if not max_target >= 1:
    raise ValueError(f"max_target={max_target!r} must be >= 1")
  _check_ops(ops)
  if n and not _any_solvable(int(max_number), max_target, ops):
    raise ValueError(f"no problem is solvable with max_number={max_number}, "
                     f"max_target={max_target}, ops={ops!r}: no triple of numbers in "
                     f"1..{max_number} reaches a target <= {max_target}")
  rng = np.random.default_rng(seed)
  out = []
  misses = 0
  while len(out) < n:
    nums = [int(v) for v in rng.integers(1, max_number + 1, size=3)]
    sols = [s for s in _solutions(nums, ops) if s[0] <= max_target]
    if not sols:
      misses += 1
      if misses >= _MAX_CONSECUTIVE_MISSES:   # safety net; unreachable after _any_solvable
        raise ValueError(f"{misses} consecutive draws with max_number={max_number}, "
                         f"max_target={max_target}, ops={ops!r} had no solvable triple")
      continue
    misses = 0
    t, expr = sols[int(rng.integers(len(sols)))]
    out.append({"input": f"{nums[0]},{nums[1]},{nums[2]},{t}", "output": expr})
  return out


def load_problems(path: str, limit: Optional[int] = None) -> list[dict]:
  """A cd3 JSON list or JSONL file of {"input", "output"} records (the first `limit`: None = all,
  else an int >= 1). ValueError naming the file (and the line of a bad JSONL record) for
  unreadable, non-UTF-8 or malformed input, or naming `limit`."""
  import json
  if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
    raise ValueError(f"limit={limit!r} must be None (all problems) or an int >= 1")
  try:
    with open(path, encoding="utf-8") as f:
      text = f.read()
  except (OSError, UnicodeDecodeError) as e:
    raise ValueError(f"{path}: unreadable problems file ({type(e).__name__}: "
                     f"{str(e).splitlines()[0] if str(e) else ''})") from e
  try:
    data = json.loads(text)
    if isinstance(data, dict):
      data = data.get("data", data.get("test"))
  except json.JSONDecodeError:
    data = []
    for i, line in enumerate(text.splitlines(), 1):
      if line.strip():
        try:
          data.append(json.loads(line))
        except json.JSONDecodeError as e:
          raise ValueError(f"{path}: neither a JSON document nor JSON lines (line {i}: "
                           f"{e.msg})") from None
  if not isinstance(data, list) or not all(isinstance(d, dict) and "input" in d for d in data):
    raise ValueError(f"{path}: expected a list of {{'input': 'a,b,c,t', ...}} records")
  if not data:
    raise ValueError(f"{path}: holds no problems")
  for d in data:
    try:
      _split_input(d)
    except ValueError as e:
      raise ValueError(f"{path}: {e}") from None
  return data[:limit] if limit else data
