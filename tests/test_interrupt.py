"""Ctrl-C and SIGTERM in the entry points (issue 19 item 8, issue 18: the launcher forwards
signals): one line, exit 130 / 143, never a traceback, finished batches kept; `interrupt`'s
handler modes; `cliargs` one-line argparse errors.

The subprocess tests send the signal at a point they observe (a line on stderr or a file), or
right after start-up (the import / load phase, where any moment must give the same line)."""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from remdm_jax import interrupt
from remdm_jax.cliargs import ArgumentParser, one_line

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 240


def _env(tmp_path):
  env = {k: v for k, v in os.environ.items() if not k.startswith(("REMDM_COORDINATOR",
                                                                   "REMDM_NUM_PROC",
                                                                   "REMDM_PROCESS_ID"))}
  env.update(JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1", REMDM_OUTPUT_DIR=str(tmp_path / "outs"))
  return env


class _Proc:
  """A subprocess whose stderr is collected by a thread (readable while it runs)."""

  def __init__(self, args, env):
    self.p = subprocess.Popen([sys.executable] + list(args), cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              start_new_session=True)
    self.err = bytearray()
    self.out = b""
    self.t = threading.Thread(target=self._pump, daemon=True)
    self.t.start()

  def _pump(self):
    for chunk in iter(lambda: self.p.stderr.read1(4096), b""):
      self.err += chunk

  def stderr(self) -> str:
    return bytes(self.err).decode(errors="replace")

  def wait_for(self, pred, what, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while not pred():
      if self.p.poll() is not None or time.monotonic() > deadline:
        self.kill()
        pytest.fail(f"never saw {what} (rc {self.p.returncode})\n{self.stderr()[-3000:]}")
      time.sleep(0.05)

  def finish(self, timeout=60):
    try:
      self.out = self.p.stdout.read() if self.p.wait(timeout) is not None else b""
    except subprocess.TimeoutExpired:
      self.kill()
      pytest.fail(f"did not stop within {timeout} s\n{self.stderr()[-3000:]}")
    self.t.join(5)
    lines = [ln.strip() for ln in self.stderr().replace("\r", "\n").splitlines() if ln.strip()]
    return self.p.returncode, lines

  def signal_after(self, delay, sig=signal.SIGINT):
    """Sends sig after `delay` seconds (unless the process has ended) -> finish(); asserts no
    traceback."""
    time.sleep(delay)
    if self.p.poll() is None:
      self.p.send_signal(sig)
    rc, lines = self.finish()
    _no_traceback(lines)
    return rc, lines

  def kill(self):
    if self.p.poll() is None:
      os.killpg(self.p.pid, signal.SIGKILL)


def _no_traceback(lines):
  text = "\n".join(lines)
  assert "Traceback" not in text and "Exception ignored" not in text, text[-3000:]


# ------------------------------------------------------------------------------------------------
# early signals (imports, checkpoint loading, compilation): one line, nothing written
# ------------------------------------------------------------------------------------------------

_EARLY = {
    "sample.py": (["sample.py", "--num_samples=16", "--batch_size=4"], "--output", ".jsonl"),
    "molecules.sample": (["-m", "remdm_jax.molecules.sample", "--num_samples=4",
                          "--batch_size=2"], "--output", ".jsonl"),
    "images.sample_digits": (["-m", "remdm_jax.images.sample_digits"], "--out", ".png"),
}


@pytest.mark.parametrize("delay", [0.3, 1.5, 4.0])
def test_llm_cli_signal_is_one_line(delay, tmp_path):
  """llm.cli on the shipped Countdown model: before this fix a Ctrl-C was a traceback, or was
  swallowed by JAX's gc callback and the run went on to print its output and exit 0."""
  model = os.path.join(ROOT, "remdm_jax", "assets", "models", "countdown_llada")
  p = _Proc(["-m", "remdm_jax.llm.cli", f"--model_dir={model}", "--gen_length=15",
             "--block_length=15", "--steps=15", "--prompt=1,2,3,6"], _env(tmp_path))
  rc, lines = p.signal_after(delay)
  if rc == 0:  # finished before the signal (a fast machine at 4 s): nothing to check
    pytest.skip("llm.cli finished before the signal")
  assert rc == 130, lines
  # "llm.cli: interrupted; nothing written" (load / compile) or "interrupted by SIGINT" (decoding)
  assert lines and "interrupted" in lines[-1], lines
  assert len([ln for ln in lines if "interrupted" in ln]) == 1, lines


@pytest.mark.parametrize("delay", [1.0, 6.0])
def test_lm_eval_signal_is_one_line(delay, tmp_path):
  """`python -m remdm_jax.llm.lm_eval` on the tiny LLaDA fixture: before this fix a Ctrl-C was a
  KeyboardInterrupt traceback, or was swallowed and the run went on to print its table, exit 0."""
  pytest.importorskip("lm_eval")
  from remdm_jax.llm import fixtures
  model = str(tmp_path / "tiny-llada")
  fixtures.write_tiny_llada(model, seed=0)
  p = _Proc(["-m", "remdm_jax.llm.lm_eval", "--model", "remdm_jax", "--model_args",
             f"checkpoint={model},rule=llada,steps=8,gen_length=8,mc_num=4,cache=dual",
             "--tasks", "toy_gen", "toy_mc", "--include_path",
             os.path.join(ROOT, "tests", "data", "lmeval"), "--batch_size", "1"], _env(tmp_path))
  rc, lines = p.signal_after(delay)
  if rc == 0:
    pytest.skip("lm_eval finished before the signal")
  assert rc == 130, lines
  assert lines and lines[-1].startswith("llm.lm_eval: interrupted"), lines


@pytest.mark.parametrize("prog", sorted(_EARLY))
@pytest.mark.parametrize("sig,delay", [(signal.SIGINT, 0.3), (signal.SIGINT, 1.5),
                                       (signal.SIGTERM, 2.5)])
def test_an_early_signal_is_one_line(prog, sig, delay, tmp_path):
  """Before this fix: a KeyboardInterrupt traceback (in checkpoint.load_params / JAX compile) or
  an abort ("terminate called ...") for SIGINT, a silent exit for SIGTERM."""
  args, flag, ext = _EARLY[prog]
  out = tmp_path / f"out{ext}"
  p = _Proc(args + [f"{flag}={out}"], _env(tmp_path))
  rc, lines = p.signal_after(delay, sig)
  code = 143 if sig == signal.SIGTERM else 130
  by = " by SIGTERM" if sig == signal.SIGTERM else ""
  assert rc == code, lines
  # "<prog>: interrupted[ by SIGTERM]; nothing written", or, once sampling has started,
  # "<prog>: interrupted in batch 1/4 (SIGTERM); no batch had finished; nothing written"
  assert lines and lines[-1].startswith(f"{prog}: interrupted"), lines
  assert lines[-1].endswith("nothing written") and (not by or "SIGTERM" in lines[-1]), lines
  assert len([ln for ln in lines if "interrupted" in ln]) == 1, lines
  assert not out.exists()


def test_train_py_early_ctrl_c_is_one_line_and_a_rerun_starts_cleanly(tmp_path):
  """Ctrl-C 1 s into train.py (imports / JAX start-up, before the trainer's own handlers): the
  default KeyboardInterrupt was swallowed by JAX's gc callback ("Exception ignored in
  _xla_gc_callback") and training went on to exit 0, or was a traceback. Now one line, 130; a
  re-run into the same workdir (whatever it holds) trains."""
  wd = tmp_path / "wd"
  args = ["train.py", "--config=configs/tiny.py", f"--workdir={wd}",
          "--config.train.num_steps=2"]
  p = _Proc(args, _env(tmp_path))
  time.sleep(1.0)
  p.p.send_signal(signal.SIGINT)
  rc, lines = p.finish()
  _no_traceback(lines)
  assert rc == 130, lines
  assert lines[-1].startswith(("train.py: interrupted; nothing written",
                               "interrupted by SIGINT after step 0")), lines
  r = subprocess.run([sys.executable] + args, cwd=ROOT, env=_env(tmp_path), capture_output=True,
                     text=True, timeout=TIMEOUT)
  assert r.returncode == 0 and "done: step 2" in r.stdout, r.stderr[-2000:]


def _wait_batches(p, k):
  """Until the progress line reports batch k + 1 (k batches finished)."""
  p.wait_for(lambda: f"batch {k + 1}/" in p.stderr(), f"batch {k + 1}")


def test_sample_py_sigterm_keeps_the_finished_batches(tmp_path):
  """`timeout -s TERM` (or a pre-empted job) used to exit 143 silently, discarding the finished
  batches: now they are written, one line, exit 143."""
  out = tmp_path / "s.jsonl"
  p = _Proc(["sample.py", "--num_samples=400", "--batch_size=4", "--steps=4", "--scorer=none",
             "--preset=mdlm", f"--output={out}"], _env(tmp_path))
  _wait_batches(p, 2)
  p.p.send_signal(signal.SIGTERM)
  rc, lines = p.finish()
  _no_traceback(lines)
  assert rc == 143, lines
  assert "(SIGTERM); wrote the" in lines[-1] and str(out) in lines[-1], lines
  recs = [json.loads(ln) for ln in open(out)]
  assert len(recs) >= 8 and len(recs) % 4 == 0 and len(recs) < 400
  assert [r["index"] for r in recs] == list(range(len(recs)))
  assert f"wrote the {len(recs)} finished samples" in lines[-1]


def test_sample_py_signal_in_the_metrics_phase_keeps_the_jsonl(tmp_path):
  """Ctrl-C after `wrote N samples` (gen-PPL with the shipped scorer) was a traceback from
  text/gen_ppl.py: now one line naming the written file, exit 130."""
  out = tmp_path / "m.jsonl"
  p = _Proc(["sample.py", "--num_samples=64", "--batch_size=64", "--steps=2", "--preset=mdlm",
             "--noprogress", f"--output={out}"], _env(tmp_path))
  p.wait_for(lambda: "wrote 64 samples" in p.stderr(), "wrote 64 samples")
  p.p.send_signal(signal.SIGINT)
  rc, lines = p.finish()
  _no_traceback(lines)
  if rc == 0:
    pytest.skip("the metrics finished before the signal arrived")
  assert rc == 130, lines
  assert lines[-1] == (f"sample.py: interrupted; the 64 samples are in {out}; metrics not "
                       "computed"), lines
  assert len(open(out).read().splitlines()) == 64


# ------------------------------------------------------------------------------------------------
# the handler's modes, in process
# ------------------------------------------------------------------------------------------------

def _raise_sigint_soon(delay=0.2):
  threading.Timer(delay, os.kill, (os.getpid(), signal.SIGINT)).start()


def test_call_interruptibly_raises_and_a_recorded_signal_stops_the_next_call():
  """In a `deferred()` region the signal is only recorded; the next call raises at once (also the
  fallback for a KeyboardInterrupt swallowed by a gc callback). run_main restores the handlers."""
  seen = {}

  def body():
    seen["handler"] = signal.getsignal(signal.SIGINT)
    with interrupt.deferred():
      _raise_sigint_soon(0.05)
      time.sleep(0.5)  # the signal arrives between two calls: recorded, nothing raised
      seen["recorded"] = interrupt.signal_received()
      try:
        interrupt.call_interruptibly(lambda: seen.setdefault("ran", True))
      except KeyboardInterrupt as e:
        seen["raised"] = str(e)
    return 7  # not 0: run_main leaves the exit to the caller

  before = signal.getsignal(signal.SIGINT)
  assert interrupt.run_main(body, prog="t") == 7
  assert seen["handler"] is interrupt._handler
  assert seen["recorded"] == "SIGINT" and "ran" not in seen
  assert seen["raised"] == "interrupted by SIGINT"
  assert signal.getsignal(signal.SIGINT) is before and interrupt.signal_received() is None


def test_a_signal_during_call_interruptibly_raises_within_the_poll():
  def body():
    _raise_sigint_soon(0.2)
    t0 = time.monotonic()
    try:
      interrupt.call_interruptibly(time.sleep, 4)
    except KeyboardInterrupt:
      return round(time.monotonic() - t0) + 1
    return -1

  assert interrupt.run_main(body, prog="t") == 1  # well under the 4 s of the call
  assert interrupt.join_abandoned(10.0) == 0  # the abandoned worker ended; none left running


def test_outside_a_call_the_signal_ends_the_process_with_the_saved_note(tmp_path):
  code = ("import os, signal, time\nfrom remdm_jax import interrupt\n"
          "def body():\n  interrupt.note_saved('the 3 rows are in x.jsonl')\n"
          "  os.kill(os.getpid(), signal.SIGTERM)\n  time.sleep(30)\n"
          "interrupt.run_main(body, prog='demo')\n")
  r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                     timeout=60)
  assert r.returncode == 143, r.stderr
  assert r.stderr.strip().splitlines() == ["demo: interrupted by SIGTERM; the 3 rows are in "
                                           "x.jsonl"]


# ------------------------------------------------------------------------------------------------
# one-line argparse errors
# ------------------------------------------------------------------------------------------------

def test_cliargs_one_line(capsys):
  p = ArgumentParser(prog="x")
  p.add_argument("--strategy", choices=("a", "b"))
  p.add_argument("--steps", type=int)
  p.add_argument("arch", choices=("llada", "dream"))
  for argv, want in ((["--strategy=foo", "llada"], "error: --strategy='foo' must be one of a, b"),
                     (["--steps=x", "llada"], "error: --steps='x' must be an int"),
                     (["foo"], "error: arch='foo' must be one of llada, dream"),
                     (["llada", "--bogus"], "error: unrecognized arguments: --bogus")):
    with pytest.raises(SystemExit) as e:
      p.parse_args(argv)
    assert e.value.code == 2
    assert capsys.readouterr().err.splitlines() == [want]
  assert one_line("argument -s/--seed: invalid float value: 'q'") == "--seed='q' must be a float"


@pytest.mark.parametrize("args,want", [
    (["-m", "remdm_jax.images.sample_digits", "--strategy=foo"],
     "error: --strategy='foo' must be one of maskgit, mdlm, "),
    (["-m", "remdm_jax.molecules.sample", "--guidance=foo"],
     "error: --guidance='foo' must be one of none, cfg, cbg, cbg_approx"),
    (["-m", "remdm_jax.llm.fixtures", "foo"], "error: arch='foo' must be one of llada, dream"),
    (["-m", "remdm_jax.molecules.sample", "--model=foo"],
     "error: --model=foo does not exist and is not a shipped name (mdlm, udlm, ar)"),
    (["-m", "remdm_jax.molecules.sample", "--model=README.md"],
     "error: --model=README.md is not a folder"),
])
def test_entry_point_bad_choice_is_one_line(args, want, tmp_path):
  r = subprocess.run([sys.executable] + args, cwd=ROOT, env=_env(tmp_path), capture_output=True,
                     text=True, timeout=120)
  lines = r.stderr.strip().splitlines()
  assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith(want), r.stderr


# ------------------------------------------------------------------------------------------------
# through the launcher (issue 18): Ctrl-C to the launcher -> SIGTERM to both processes
# ------------------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.multiprocess
def test_launcher_ctrl_c_writes_the_finished_samples_once(tmp_path):
  """`python -m remdm_jax.launch -n 2 -- sample.py ...` + Ctrl-C (forwarded as SIGTERM) used to
  lose every finished sample (the children died of SIGTERM): now process 0 writes the finished
  batches (gathered on every process), both end 143, the launcher's status is 143."""
  out = tmp_path / "l.jsonl"
  env = _env(tmp_path)
  p = _Proc(["-m", "remdm_jax.launch", "-n", "2", "--devices-per-process", "2", "--grace", "30",
             "--", "sample.py", "--num_samples=4000", "--batch_size=4", "--steps=4",
             "--preset=mdlm", "--scorer=none", "--noprogress", f"--output={out}"], env)
  p.wait_for(lambda: "[p0] model:" in p.stderr(), "the model line")
  time.sleep(20)  # compilation and some batches (no per-batch line through the launcher)
  p.p.send_signal(signal.SIGINT)
  rc, lines = p.finish(timeout=90)
  _no_traceback(lines)
  assert rc == 143, lines
  wrote = [ln for ln in lines if "finished samples to" in ln]
  assert len(wrote) == 1 and wrote[0].startswith("[p0] sample.py: interrupted in batch"), lines
  assert any(ln.startswith("[p1] sample.py: interrupted") for ln in lines), lines
  recs = [json.loads(ln) for ln in open(out)]
  assert 4 <= len(recs) < 4000 and len(recs) % 4 == 0
  assert f"wrote the {len(recs)} finished samples" in wrote[0]
