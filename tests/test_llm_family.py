"""The LLaDA family by configuration (issue 17 item 3, issue 19 item 3): configs with other
vocabularies and special ids load through one loader; an id config.json lacks comes from the
tokenizer files, a flag or (only where valid) the LLaDA-8B default; a bad id is one line naming the
key and the flag."""
import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("safetensors")
pytest.importorskip("tokenizers")

from remdm_jax.llm import fixtures as F  # noqa: E402
from remdm_jax.llm import model as M  # noqa: E402
from remdm_jax.llm import weights as W  # noqa: E402
from remdm_jax.llm.load import detect_arch, load_lm  # noqa: E402

# LLaDA-8B-Instruct's config.json keys (configuration_llada.py; no eot_token_id).
LLADA_8B = dict(d_model=4096, n_heads=32, n_kv_heads=32, n_layers=32, mlp_hidden_size=12288,
                vocab_size=126464, embedding_size=126464, rope_theta=500000.0,
                rms_norm_eps=1e-5, include_qkv_bias=False, max_sequence_length=4096,
                mask_token_id=126336, eos_token_id=126081, pad_token_id=126081,
                block_type="llama", layer_norm_type="rms", activation_type="silu",
                weight_tying=False, alibi=False, rope=True, model_type="llada",
                architectures=["LLaDAModelLM"])


def test_8b_and_15_configs_take_the_8b_eot_default():
  for name in ("LLaDA-8B-Instruct", "LLaDA-1.5"):
    cfg = M.LLaDAConfig.from_hf_dict(dict(LLADA_8B, _name_or_path=name))
    assert (cfg.mask_token_id, cfg.eos_token_id, cfg.eot_token_id, cfg.pad_token_id) == \
        (126336, 126081, 126348, 126081)
    assert M.count_params(cfg) == 8_015_581_184


def test_other_vocabulary_and_ids_by_config():
  # MMaDA-style: LLaDA's tokenizer plus extra rows, its own ids; config.json gives mask and EOS.
  big = dict(LLADA_8B, vocab_size=134656, embedding_size=134656, mask_token_id=126336,
             eos_token_id=126081, pad_token_id=126081)
  assert M.LLaDAConfig.from_hf_dict(big).eot_token_id == 126348  # 8B id is a real token here
  small = dict(LLADA_8B, vocab_size=32000, embedding_size=32064, mask_token_id=31999,
               eos_token_id=2, pad_token_id=0)
  cfg = M.LLaDAConfig.from_hf_dict(small)  # was rejected: 8B EoT 126348 >= 32064
  assert (cfg.mask_token_id, cfg.eos_token_id, cfg.eot_token_id, cfg.pad_token_id) == \
      (31999, 2, None, 0)
  # no pad_token_id: the EOS id; eot from a flag or the tokenizer ids
  del small["pad_token_id"]
  cfg = M.LLaDAConfig.from_hf_dict(small, token_ids={"eot_token_id": 7}, eot_token_id=None)
  assert cfg.pad_token_id == 2 and cfg.eot_token_id == 7
  assert M.LLaDAConfig.from_hf_dict(small, token_ids={"eot_token_id": 7},
                                    eot_token_id=9).eot_token_id == 9


@pytest.mark.parametrize("drop,flag", [("mask_token_id", "--mask_id"),
                                       ("eos_token_id", "--eos_id")])
def test_missing_required_id_names_key_and_flag(drop, flag):
  small = dict(LLADA_8B, vocab_size=32000, embedding_size=32000, mask_token_id=31999,
               eos_token_id=2, pad_token_id=0)
  del small[drop]
  with pytest.raises(ValueError) as e:
    M.LLaDAConfig.from_hf_dict(small)
  msg = str(e.value)
  assert "\n" not in msg and drop in msg and flag in msg


def test_id_outside_vocab_names_key_source_and_flag():
  small = dict(LLADA_8B, vocab_size=32000, embedding_size=32000, mask_token_id=31999,
               eos_token_id=2, pad_token_id=0, eot_token_id=40000)
  with pytest.raises(ValueError, match=r"^eot_token_id=40000 \(from config.json eot_token_id\) "
                     r"is outside the vocabulary \[0, 32000\); set --eot_id"):
    M.LLaDAConfig.from_hf_dict(small)
  assert M.LLaDAConfig.from_hf_dict(small, eot_token_id=5).eot_token_id == 5
  with pytest.raises(ValueError, match=r"mask_token_id=-1 \(from --mask_id\)"):
    M.LLaDAConfig.from_hf_dict(small, mask_token_id=-1, eot_token_id=5)
  with pytest.raises(ValueError, match=r"the tokenizer files' mask_token"):
    M.LLaDAConfig.from_hf_dict(dict(small, mask_token_id=None), eot_token_id=5,
                               token_ids={"mask_token_id": 32000})


def _tiny_folder(tmp_path, **over):
  d = str(tmp_path / "tiny")
  F.write_tiny_llada(d, seed=0, **over)
  return d


def test_smaller_vocab_folder_without_eot_loads_from_tokenizer_or_without(tmp_path):
  d = _tiny_folder(tmp_path)
  with open(os.path.join(d, "config.json")) as f:
    c = json.load(f)
  assert "eot_token_id" not in c and c["vocab_size"] == 262
  lm = load_lm(d)
  assert lm.arch == "llada" and lm.eot_id == 260 and lm.mask_id == 261 and lm.eos_id == 257
  # no tokenizer files at all: still loads (EoT unknown), generation ids come from config.json
  os.remove(os.path.join(d, "tokenizer.json"))
  cfg, gd, params = W.load_llada(d)
  assert cfg.eot_token_id is None and cfg.mask_token_id == 261
  x = jnp.asarray([[3, 4, 261]])
  assert M.make_logits_fn(gd)(params, x, jnp.ones_like(x)).shape == (1, 3, 264)


def test_mask_and_eos_from_tokenizer_when_config_lacks_them(tmp_path):
  d = _tiny_folder(tmp_path)
  p = os.path.join(d, "config.json")
  with open(p) as f:
    c = json.load(f)
  for k in ("mask_token_id", "eos_token_id", "pad_token_id"):
    del c[k]
  with open(p, "w") as f:
    json.dump(c, f)
  lm = load_lm(d)
  assert (lm.mask_id, lm.eos_id, lm.eot_id, lm.pad_id) == (261, 257, 260, 257)
  lm = load_lm(d, mask_token_id=255)  # a flag wins
  assert lm.mask_id == 255


def test_cli_bad_id_is_one_line_exit_2(tmp_path):
  d = _tiny_folder(tmp_path)
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  r = subprocess.run([sys.executable, "-m", "remdm_jax.llm.cli", f"--model_dir={d}",
                      "--eot_id=9999", "--prompt=x"], capture_output=True, text=True, env=env,
                     cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert r.returncode == 2
  assert r.stderr.strip().splitlines() == [
      "error: eot_token_id=9999 (from --eot_id) is outside the vocabulary [0, 264); set "
      "--eot_id to an id inside it"]


def test_detect_arch():
  assert detect_arch(LLADA_8B) == "llada"
  assert detect_arch({"model_type": "Dream", "architectures": ["DreamModel"]}) == "dream"
  assert detect_arch({"model_type": "qwen2"}) == "dream"
  assert detect_arch({"d_model": 4, "n_layers": 1}) == "llada"
  with pytest.raises(ValueError, match="cannot tell the architecture"):
    detect_arch({"model_type": "bert"})


def test_fixture_command_refuses_existing_folder(tmp_path):
  (tmp_path / "x").mkdir()
  (tmp_path / "x" / "keep.txt").write_text("mine")
  assert F.main(["llada", "--out", str(tmp_path / "x")]) == 2
  assert (tmp_path / "x" / "keep.txt").read_text() == "mine"
  assert np.array_equal(sorted(os.listdir(tmp_path / "x")), ["keep.txt"])


def test_damaged_files_and_seeds_are_one_line_naming_the_file(tmp_path, capsys):
  """Issue 19 item 7: a truncated model.safetensors failed with 'mmap length is greater than file
  size' (no file named); a negative seed was accepted and 2^64 a traceback."""
  from remdm_jax.llm import cli
  d = str(tmp_path / "tiny")
  F.write_tiny_llada(d)
  st = os.path.join(d, "model.safetensors")
  good = open(st, "rb").read()
  cases = [(["--seed=-1"], "error: --seed=-1 must be an int in [0, 2^32)"),
           ([f"--seed={2**64}"], f"error: --seed={2**64} must be an int in [0, 2^32)")]
  for extra, needle in cases:
    assert cli.main([f"--model_dir={d}", "--prompt=x"] + extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(needle), err
  with open(st, "wb") as f:
    f.write(good[:len(good) // 2])
  with pytest.raises(ValueError, match=rf"{st}: truncated safetensors file"):
    W.read_safetensors_header(st)
  assert cli.main([f"--model_dir={d}", "--prompt=x"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and f"{st}: truncated safetensors file" in err[0], err
  with open(st, "wb") as f:
    f.write(b"\xff" * 8 + b"garbage" * 10)
  with pytest.raises(ValueError, match=rf"{st}: not a safetensors file \(header length"):
    W.read_safetensors_header(st)
