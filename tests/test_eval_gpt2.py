"""JAX GPT-2 scorer vs transformers.GPT2LMHeadModel (tiny random weights, float32)."""
import importlib
import math
import os

import numpy as np
import pytest

from remdm_jax.text.gpt2 import GPT2Scorer, load_gpt2_params

gp = importlib.import_module("remdm_jax.text.gen_ppl")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB, EOS = 100, 99


def _tiny(cls):
  cfg = transformers.GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                bos_token_id=EOS, eos_token_id=EOS)
  torch.manual_seed(0)
  m = cls(cfg).eval()
  with torch.no_grad():  # move every parameter off its init (LN weights 1, biases 0, ...)
    g = torch.Generator().manual_seed(1)
    for p in m.parameters():
      p.add_(0.2 * torch.randn(p.shape, generator=g))
  return m


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
  m = _tiny(transformers.GPT2LMHeadModel)
  d = str(tmp_path_factory.mktemp("gpt2"))
  m.save_pretrained(d, safe_serialization=True)
  return m, d


def _tokens():
  rng = np.random.RandomState(0)
  t = rng.randint(0, VOCAB, size=(3, 24)).astype(np.int32)
  t[:, 0] = EOS
  t[0, 9] = EOS
  t[1, 5] = EOS
  t[1, 17] = EOS
  return t


def test_logits_match_transformers(hf_model):
  m, d = hf_model
  scorer = GPT2Scorer(d)
  assert scorer.eos_id == EOS and scorer.config.n_layer == 2
  toks = _tokens()
  lp = scorer.log_probs_fn(toks)
  assert lp.shape == (3, 24, VOCAB) and lp.dtype == np.float32
  with torch.no_grad():
    ref = torch.log_softmax(m(torch.tensor(toks, dtype=torch.long)).logits, -1).numpy()
  np.testing.assert_allclose(np.asarray(lp), ref, atol=1e-4, rtol=0)


def test_no_prefix_checkpoint(tmp_path):
  """GPT2Model (no "transformer." prefix, no lm head) loads too and gives the same hidden states."""
  m = _tiny(transformers.GPT2Model)
  m.save_pretrained(str(tmp_path), safe_serialization=True)
  cfg, params = load_gpt2_params(str(tmp_path))
  assert params["blocks"]["attn_w"].shape == (2, 32, 96)
  scorer = GPT2Scorer(str(tmp_path))
  toks = _tokens()
  with torch.no_grad():
    hid = m(torch.tensor(toks, dtype=torch.long)).last_hidden_state.numpy()
  feats = scorer.features([list(r) for r in toks], batch_size=2)
  np.testing.assert_allclose(feats, hid[:, -1], atol=1e-4, rtol=0)


def test_features_match_mauve_featurisation(hf_model):
  """mauve-text's feature: hidden_states[-1] at each sequence's last token (ragged batch)."""
  m, d = hf_model
  scorer = GPT2Scorer(d)
  toks = _tokens()
  lengths = [5, 24, 11]
  feats = scorer.features([toks[i, :n] for i, n in enumerate(lengths)], batch_size=2)
  assert feats.shape == (3, 32) and feats.dtype == np.float32
  with torch.no_grad():
    hs = m(torch.tensor(toks, dtype=torch.long), output_hidden_states=True).hidden_states[-1]
  ref = np.stack([hs[i, n - 1].numpy() for i, n in enumerate(lengths)])
  np.testing.assert_allclose(feats, ref, atol=1e-4, rtol=0)
  # max_length truncation
  f2 = scorer.features([toks[1]], max_length=11)
  np.testing.assert_allclose(f2[0], hs[1, 10].numpy(), atol=1e-4, rtol=0)
  # text input with an explicit tokeniser
  enc_scorer = GPT2Scorer(d, encode=lambda s: [ord(c) % VOCAB for c in s])
  f3 = enc_scorer.features(["hello"])
  with torch.no_grad():
    h3 = m(torch.tensor([[ord(c) % VOCAB for c in "hello"]]),
           output_hidden_states=True).hidden_states[-1][0, -1].numpy()
  np.testing.assert_allclose(f3[0], h3, atol=1e-4, rtol=0)


def test_gen_ppl_matches_reference_torch_formula(hf_model):
  """The reference (mdlm/remdm compute_generative_perplexity) at batch 1, in torch."""
  m, d = hf_model
  scorer = GPT2Scorer(d)
  toks = _tokens()
  tot, cnt = 0.0, 0
  for row in toks:
    s = torch.tensor(row[None], dtype=torch.long)
    with torch.no_grad():
      logits = m(s).logits.double().transpose(-1, -2)
    nlls = torch.nn.functional.cross_entropy(logits[..., :-1], s[..., 1:], reduction="none")
    first_eos = (s == EOS).cumsum(-1) == 1
    token_mask = s != EOS
    w = (first_eos[..., 1:] + token_mask[..., 1:]).double()
    tot += float((nlls * w).sum())
    cnt += int(w.sum())
  out = gp.gen_ppl(toks, scorer.log_probs_fn, eos_id=EOS, batch_size=2)
  assert out["num_tokens"] == cnt
  assert out["ppl"] == pytest.approx(math.exp(tot / cnt), rel=1e-5)


def test_scorer_gen_ppl_from_texts(hf_model):
  """Texts -> encode -> truncate -> EOS padding (masked): equals scoring each row alone."""
  _, d = hf_model
  enc = lambda s: [EOS if c == "|" else ord(c) % 90 for c in s]
  scorer = GPT2Scorer(d, encode=enc)
  texts = ["|hello there|more", "short", "x" * 80]
  out = scorer.gen_ppl(texts, batch_size=2, max_length=30)
  tot, cnt = 0.0, 0
  for t in texts:
    row = np.array([enc(t)[:30]], np.int32)
    r = gp.gen_ppl(row, scorer.log_probs_fn, eos_id=EOS, batch_size=1)
    tot, cnt = tot + r["nll_sum"], cnt + r["num_tokens"]
  assert out["num_tokens"] == cnt == (16 - 1) + 4 + 29  # the 2nd "|" (EOS) target is excluded
  assert out["ppl"] == pytest.approx(math.exp(tot / cnt), rel=1e-5)
  with pytest.raises(ValueError, match="max_length"):
    scorer.gen_ppl(texts, max_length=65)


def test_missing_files(tmp_path):
  with pytest.raises(FileNotFoundError, match="nonexistent"):
    GPT2Scorer(str(tmp_path / "nonexistent"))
  with pytest.raises(FileNotFoundError, match="config.json"):
    GPT2Scorer(str(tmp_path))


def test_missing_safetensors_and_tokenizer(hf_model, tmp_path):
  _, d = hf_model
  import shutil
  shutil.copy(os.path.join(d, "config.json"), tmp_path / "config.json")
  with pytest.raises(FileNotFoundError, match="model.safetensors"):
    GPT2Scorer(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="tokenizer.json"):
    GPT2Scorer(d).features(["some text"])
