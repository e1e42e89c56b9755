"""The import graph of remdm_jax/ shows its architecture (README "Layout").

1. no import cycle between modules (module- and function-level imports);
2. no core module imports a domain package (text, molecules, images, llm);
3. no per-step loop (lax.scan / fori_loop / while_loop) in a domain file other than a model
   definition: step loops belong to the sampler family under sampling/;
4. one trainer: optimizers and training gradients only under training/.
Also: the old import paths of moved modules still work, warn, and give the new module objects.
"""
import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(ROOT, "remdm_jax")
DOMAINS = ("text", "molecules", "images", "llm")


def _module_name(path):
  rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
  return rel[:-len(".__init__")] if rel.endswith(".__init__") else rel


def _resolve(mod, known):
  """The module a dotted import refers to (`a.b.c` may name the attribute c of module a.b)."""
  while mod and mod not in known:
    mod = mod.rpartition(".")[0]
  return mod


def _graph():
  files = {}
  for d, _, fs in os.walk(PKG):
    for f in fs:
      if f.endswith(".py"):
        p = os.path.join(d, f)
        files[_module_name(p)] = p
  graph, trees = {}, {}
  for name, path in files.items():
    with open(path) as fh:
      tree = ast.parse(fh.read())
    trees[name] = tree
    deps = set()
    for n in ast.walk(tree):
      targets = []
      if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("remdm_jax"):
        targets = [f"{n.module}.{a.name}" for a in n.names]
      elif isinstance(n, ast.Import):
        targets = [a.name for a in n.names if a.name.startswith("remdm_jax")]
      for t in targets:
        r = _resolve(t, files)
        if r and r != name and not files[r].endswith("__init__.py"):
          deps.add((r, n.lineno))
    graph[name] = deps
  return files, graph, trees


def _domain(mod):
  parts = mod.split(".")
  return parts[1] if len(parts) >= 2 and parts[1] in DOMAINS else None


def test_no_import_cycle():
  _, graph, _ = _graph()
  edges = {m: {d for d, _ in deps} for m, deps in graph.items()}
  state, stack, cycles = {}, [], []

  def visit(v):
    state[v] = 1
    stack.append(v)
    for w in sorted(edges.get(v, ())):
      if state.get(w) == 1:
        cycles.append(stack[stack.index(w):] + [w])
      elif w not in state:
        visit(w)
    stack.pop()
    state[v] = 2

  sys.setrecursionlimit(10000)
  for v in sorted(edges):
    if v not in state:
      visit(v)
  assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_core_never_imports_a_domain():
  _, graph, _ = _graph()
  bad = [f"{m}:{line} -> {d}" for m, deps in graph.items() if _domain(m) is None
         and m != "remdm_jax._compat" for d, line in deps if _domain(d) is not None]
  assert not bad, "core imports a domain: " + ", ".join(sorted(bad))


def _calls(tree):
  for n in ast.walk(tree):
    if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute):
      base = n.func.value
      yield n, (base.id if isinstance(base, ast.Name) else getattr(base, "attr", ""))


def test_no_step_loop_in_a_domain_file():
  files, _, trees = _graph()
  bad = []
  for m, tree in trees.items():
    if _domain(m) is None:
      continue
    with open(files[m]) as fh:
      is_model = "nnx.Module" in fh.read()
    for n, base in _calls(tree):
      if base == "lax" and n.func.attr in ("scan", "fori_loop", "while_loop") and not is_model:
        bad.append(f"{m}:{n.lineno} lax.{n.func.attr}")
  assert not bad, "step loops outside sampling/: " + ", ".join(bad)


def test_one_trainer():
  _, _, trees = _graph()
  bad = []
  for m, tree in trees.items():
    if m.startswith("remdm_jax.training"):
      continue
    for n, base in _calls(tree):
      if (base == "optax" and n.func.attr in ("adamw", "adam", "sgd", "lion")
          or n.func.attr == "value_and_grad"):
        bad.append(f"{m}:{n.lineno} {base}.{n.func.attr}")
  assert not bad, "optimizers / training gradients outside training/: " + ", ".join(bad)


@pytest.mark.parametrize("old,new", [
    ("remdm_jax.losses", "remdm_jax.diffusion.losses"),
    ("remdm_jax.schedules", "remdm_jax.diffusion.schedules"),
    ("remdm_jax.training.mesh", "remdm_jax.sharding"),
    ("remdm_jax.eval.gen_ppl", "remdm_jax.text.gen_ppl"),
])
def test_old_paths_warn_and_alias(old, new):
  code = (f"import warnings; warnings.simplefilter('error')\n"
          f"import importlib, {new.split('.')[0]}\n"
          f"new = importlib.import_module({new!r})\n"
          f"try:\n  importlib.import_module({old!r})\nexcept DeprecationWarning as e:\n"
          f"  print('warned', e)\n"
          f"warnings.simplefilter('ignore')\n"
          f"print(importlib.import_module({old!r}) is new)\n")
  r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                     timeout=120, env=dict(os.environ, PYTHONPATH=ROOT))
  assert r.returncode == 0, r.stderr[-2000:]
  lines = r.stdout.strip().splitlines()
  # (the first warning may be the old parent package's: remdm_jax.eval -> remdm_jax.text)
  assert lines[0].startswith("warned") and "deprecated" in lines[0], r.stdout
  assert new.rpartition(".")[0] in lines[0] and lines[-1] == "True", r.stdout


def test_old_uniform_path_has_every_name():
  code = ("import warnings; warnings.simplefilter('ignore')\n"
          "from remdm_jax.uniform import make_udlm_sampler, udlm_loss, posterior_probs\n"
          "from remdm_jax.sampling.udlm import make_udlm_sampler as m\n"
          "print(m is make_udlm_sampler)\n")
  r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                     timeout=120, env=dict(os.environ, PYTHONPATH=ROOT))
  assert r.returncode == 0 and r.stdout.strip() == "True", r.stderr[-2000:]


def test_registry_finds_domain_entries_without_importing_them_in_core():
  from remdm_jax import registry
  assert {"bible", "text", "hf_disk", "qm9"} <= set(registry.corpus_names())
  assert "smiles" in registry.tokenizer_names()
  with pytest.raises(ValueError, match="unknown corpus 'web'; registered: bible"):
    registry.corpus("web")
