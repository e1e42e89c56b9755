"""End to end: official-layout tiny checkpoints -> generation command -> PNGs + images.npz.

Uses the testing placeholder decode (one forward pass, argmax) so the pipeline runs without the
decoding strategies; the images are checked against the float64 numpy references of
test_images_ports (transformer argmax -> VQGAN -> the reference's uint8 writer).
"""
import json
import os
import zipfile

import jax
import numpy as np
import pytest

pytest.importorskip("PIL")

from remdm_jax.images import convert, imagenet
from remdm_jax.images import maskgit as mg
from remdm_jax.images import vqgan as vq
from images_reference import np_transformer, np_vqgan_decode, random_official_tree

TCFG = mg.MaskGITConfig.preset("tiny")
VCFG = vq.VQGANConfig.preset("tiny")


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
  d = tmp_path_factory.mktemp("ckpts")
  t = random_official_tree(convert.official_transformer_shapes(TCFG), 10)
  v = random_official_tree(convert.official_vqgan_decoder_shapes(VCFG), 11)
  # Centre the decoder output near 0.5 so that most pixels are not clipped.
  v["decoder/Conv_2/bias"] = np.full(3, 0.5, np.float32)
  v["decoder/Conv_2/kernel"] *= 0.1
  convert.write_flax_checkpoint(t, str(d / "maskgit"))
  convert.write_flax_checkpoint(v, str(d / "tokenizer"))
  return str(d / "maskgit"), str(d / "tokenizer"), t, v


def _argv(ckpts, out, **kw):
  flags = dict(transformer_ckpt=ckpts[0], vqgan_ckpt=ckpts[1],
               decoding_strategy=imagenet.PLACEHOLDER, num_images=10, batch_size=8, seed=3,
               output_dir=str(out))
  flags.update(kw)
  return [f"--{k}={v}" for k, v in flags.items()]


def _expected(t, v, labels):
  """Independent float64 pipeline: argmax over the codes at masked positions, VQGAN, writer."""
  ids = np.full((len(labels), TCFG.seq_len), -1)
  ids[:, 0] = TCFG.codebook_size + np.asarray(labels)
  logits = np_transformer(t, ids, TCFG.num_layers, TCFG.vocab_size)[..., :TCFG.codebook_size]
  codes = logits[:, 1:].argmax(-1).reshape(-1, 4, 4)
  img = np_vqgan_decode(v, codes, VCFG)
  return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def test_generate_end_to_end_and_resume(ckpts, tmp_path, capsys):
  out = tmp_path / "run"
  assert imagenet.main(_argv(ckpts, out)) == 0
  summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert summary["batches_written"] == 2 and summary["batches_skipped"] == 0
  pngs = sorted(os.listdir(out / "images"))
  assert pngs == [f"{i:06d}.png" for i in range(10)]
  with np.load(out / "images.npz") as z:
    arr, labels = z["arr_0"], z["labels"]
  assert arr.shape == (10, 8, 8, 3) and arr.dtype == np.uint8
  # The ADM evaluator streams arr_0.npy from the zip: a plain npy 1.0 header, C order, uint8.
  with zipfile.ZipFile(out / "images.npz") as zf, zf.open("arr_0.npy") as member:
    assert np.lib.format.read_magic(member) == (1, 0)
    assert np.lib.format.read_array_header_1_0(member) == ((10, 8, 8, 3), False, np.dtype("uint8"))
  # Labels follow gen_imgs.py: key = PRNGKey(seed + start); per batch split -> randint, split.
  key, want = jax.random.PRNGKey(3), []
  for _ in range(2):
    key, lk = jax.random.split(key)
    key, _ = jax.random.split(key)
    want.append(np.asarray(jax.random.randint(lk, (8, 1), 0, TCFG.num_classes))[:, 0])
  np.testing.assert_array_equal(labels, np.concatenate(want)[:10])
  # Images equal the independent numpy pipeline (1 grey level of float32 rounding allowed).
  exp = _expected(ckpts[2], ckpts[3], labels)
  assert np.abs(arr.astype(int) - exp.astype(int)).max() <= 1
  assert arr.std() > 5  # not a constant image
  # Resume: a missing PNG regenerates only its batch, identically.
  first = (out / "images" / "000009.png").read_bytes()
  os.remove(out / "images" / "000009.png")
  assert imagenet.main(_argv(ckpts, out)) == 0
  summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert (summary["batches_written"], summary["batches_skipped"]) == (1, 1)
  assert (out / "images" / "000009.png").read_bytes() == first
  with np.load(out / "images.npz") as z:
    np.testing.assert_array_equal(z["arr_0"], arr)


def test_class_labels_and_start_index(ckpts, tmp_path, capsys):
  out = tmp_path / "lab"
  assert imagenet.main(_argv(ckpts, out, class_labels="1,3", num_images=8, start_index=16)) == 0
  with np.load(out / "images.npz") as z:
    np.testing.assert_array_equal(z["labels"], [1, 3] * 4)
    np.testing.assert_array_equal(z["arr_0"][:2], z["arr_0"][2:4])  # argmax: label decides
  assert sorted(os.listdir(out / "images"))[0] == "000016.png"


@pytest.mark.parametrize("flags,needle", [
  (dict(transformer_ckpt="/nonexistent/maskgit"), "checkpoint not found"),
  (dict(class_labels="1,4"), "out of range [0, 4)"),
  (dict(class_labels="x"), "comma-separated"),
  (dict(decoding_strategy="beam"), "--decoding_strategy='beam'"),
  (dict(batch_size=3), "multiple of the 8 devices"),
  (dict(num_iter=0), "--num_iter=0"),
  (dict(mask_scheduling_method="linear"), "--mask_scheduling_method='linear'"),
  (dict(sampling_temperature=0), "--sampling_temperature=0"),
  # issue 19: ignored flags were accepted, seeds >= 2^63 overflowed, a file as --output_dir gave a
  # makedirs traceback
  (dict(decoding_strategy="maskgit", remdm_eta=0.05),
   "--remdm_eta=0.05 does not apply to --decoding_strategy=maskgit"),
  (dict(decoding_strategy="mdlm", choice_temperature=2.0),
   "--choice_temperature=2 applies only to --decoding_strategy=maskgit"),
  (dict(seed=-1), "--seed=-1 must be an int in [0, 2^32)"),
  (dict(seed=2**63), f"--seed={2**63} must be an int in [0, 2^32)"),
  (dict(output_dir="AFILE"), "exists and is not a folder"),
  (dict(output_dir="AFILE/sub"), "cannot write to"),
])
def test_bad_input_one_line_error(ckpts, tmp_path, capsys, flags, needle):
  out = tmp_path / "bad"
  (tmp_path / "afile").write_text("x")
  if "output_dir" in flags:
    flags = dict(flags, output_dir=flags["output_dir"].replace("AFILE", str(tmp_path / "afile")))
  assert imagenet.main(_argv(ckpts, out, **flags)) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: ") and needle in err and "\n" not in err
  assert not out.exists()  # nothing written


def test_wrong_checkpoint_shapes(ckpts, tmp_path, capsys):
  """A transformer whose vocabulary does not fit the tokenizer's codebook: one-line error."""
  v = random_official_tree(convert.official_vqgan_decoder_shapes(vq.VQGANConfig.preset(
    "tiny", codebook_size=32)), 0)
  convert.write_flax_checkpoint(v, str(tmp_path / "tok32"))
  out = tmp_path / "bad"
  # 21 = 32 + classes + 1 has no room for a class: the config cannot be built.
  assert imagenet.main(_argv(ckpts, out, vqgan_ckpt=str(tmp_path / "tok32"))) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: ") and "codebook_size=32" in err and "\n" not in err
  assert not out.exists()


@pytest.mark.parametrize("strategy,extra", [("maskgit", {}), ("remdm_rescale", {"remdm_eta": 0.05}),
                                            ("mdlm", {"fork_compat": True})])
def test_real_decoding_strategies_end_to_end(ckpts, tmp_path, capsys, strategy, extra):
  """The command drives `images.decode.make_image_sampler` (not the placeholder) for MaskGIT,
  clean ReMDM and fork-compatible MDLM: uint8 images of the right shape, labels in range, and a
  rerun skips every finished batch leaving the npz unchanged. (The decoder itself is checked
  against numpy transcriptions in tests/test_images_decode.py.)"""
  out = tmp_path / strategy
  argv = _argv(ckpts, out, decoding_strategy=strategy, num_iter=4, num_images=8,
               **{k: v for k, v in extra.items() if k != "fork_compat"})
  if extra.get("fork_compat"):
    argv.append("--fork_compat")
  assert imagenet.main(argv) == 0
  capsys.readouterr()
  with np.load(out / "images.npz") as z:
    arr, labels = z["arr_0"], z["labels"]
  assert arr.shape == (8, 8, 8, 3) and arr.dtype == np.uint8 and arr.std() > 1
  assert labels.min() >= 0 and labels.max() < TCFG.num_classes
  # Rerunning with every PNG present skips all batches and leaves the npz unchanged.
  assert imagenet.main(argv) == 0
  summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert summary["batches_skipped"] == 1
  with np.load(out / "images.npz") as z:
    np.testing.assert_array_equal(z["arr_0"], arr)
