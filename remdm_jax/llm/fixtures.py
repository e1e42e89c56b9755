"""Tiny random checkpoint folders in the exact layout of the real ones, for trying every large-LM
command offline (README "Large masked LMs") and for the tests:

  python -m remdm_jax.llm.fixtures llada --out /tmp/tiny-llada     # LLaDA-8B-Instruct layout
  python -m remdm_jax.llm.fixtures dream --out /tmp/tiny-dream     # Dream-v0-Instruct layout

Each folder holds config.json, model.safetensors (float32 random weights), tokenizer.json (a
byte-level BPE without merges: every UTF-8 byte is a token, ids 0..255, so any text encodes),
tokenizer_config.json with the named special tokens, and chat_template.jinja.
  llada: <|startoftext|> 256 (BOS, added by the post-processor), <|endoftext|> 257 (EOS = pad),
         <|start_header_id|> 258, <|end_header_id|> 259, <|eot_id|> 260, <|mdm_mask|> 261;
         vocab_size 262, embedding_size 264; config.json has no eot_token_id (it comes from the
         tokenizer, as for LLaDA's own config); the LLaDA-8B-Instruct chat template.
  dream: <|endoftext|> 256 (EOS = pad), <|im_start|> 257, <|im_end|> 258 (end of turn),
         <|mask|> 259, <|beginoftext|> 260; vocab_size 264; Qwen2's ChatML template with its
         default system turn.
Random weights give near-uniform predictions: the folders exercise the plumbing, not quality.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

# LLaDA-8B-Instruct's template (Llama-3 headers, content trimmed, BOS before the first turn).
LLADA_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}")
# Qwen2's ChatML template with the default system turn (Dream-Instruct's demos print this form).
CHATML_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

LLADA_SPECIALS = ("<|startoftext|>", "<|endoftext|>", "<|start_header_id|>", "<|end_header_id|>",
                  "<|eot_id|>", "<|mdm_mask|>")
DREAM_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|mask|>", "<|beginoftext|>")


def _bytes_to_unicode() -> dict:
  """GPT-2's byte -> printable character table (the ByteLevel alphabet), byte order."""
  bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
      list(range(ord("®"), ord("ÿ") + 1))
  cs = bs[:]
  n = 0
  for b in range(256):
    if b not in bs:
      bs.append(b)
      cs.append(256 + n)
      n += 1
  return {b: chr(c) for b, c in zip(bs, cs)}


def byte_tokenizer(specials: Sequence[str], bos: Optional[str] = None):
  """A `tokenizers.Tokenizer`: byte-level BPE without merges (byte b -> id b), `specials` as added
  special tokens with ids 256, 257, ...; `bos` prepended by the post-processor when given."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
  table = _bytes_to_unicode()
  vocab = {table[b]: b for b in range(256)}
  tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  tok.decoder = decoders.ByteLevel()
  tok.add_special_tokens(list(specials))
  if bos is not None:
    bid = tok.token_to_id(bos)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bid)])
  else:
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
  return tok


def write_tokenizer_files(folder: str, tok, special_tokens: dict,
                          chat_template: Optional[str] = None, as_jinja_file: bool = True,
                          extra_config: Optional[dict] = None) -> None:
  """tokenizer.json + tokenizer_config.json (+ chat_template.jinja, or the template under the
  config's "chat_template" key when `as_jinja_file` is False)."""
  from remdm_jax.fileio import atomic_open
  os.makedirs(folder, exist_ok=True)
  with atomic_open(os.path.join(folder, "tokenizer.json")) as f:
    f.write(tok.to_str())
  cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
         **special_tokens, **(extra_config or {})}
  if chat_template is not None:
    if as_jinja_file:
      with atomic_open(os.path.join(folder, "chat_template.jinja")) as f:
        f.write(chat_template)
    else:
      cfg["chat_template"] = chat_template
  with atomic_open(os.path.join(folder, "tokenizer_config.json")) as f:
    json.dump(cfg, f, indent=1)


def write_tiny_llada(folder: str, seed: int = 0, **cfg_overrides) -> None:
  """A tiny LLaDA-layout folder (module docstring); cfg_overrides: LLaDAConfig fields."""
  import jax
  from remdm_jax.llm import model as M
  from remdm_jax.llm import weights as W
  tok = byte_tokenizer(LLADA_SPECIALS, bos="<|startoftext|>")
  write_tokenizer_files(folder, tok, {"bos_token": "<|startoftext|>",
                                      "eos_token": "<|endoftext|>",
                                      "pad_token": "<|endoftext|>",
                                      "mask_token": "<|mdm_mask|>"}, LLADA_CHAT_TEMPLATE)
  kw = dict(d_model=64, n_heads=4, n_kv_heads=2, n_layers=2, mlp_hidden_size=128,
            vocab_size=262, embedding_size=264, max_sequence_length=1024,
            mask_token_id=261, eos_token_id=257, eot_token_id=None, pad_token_id=257,
            param_dtype="float32", compute_dtype="float32")
  kw.update(cfg_overrides)
  cfg = M.LLaDAConfig(**kw)
  _, params = M.init_model(cfg, jax.random.key(seed))
  W.save_hf_checkpoint(folder, cfg, params)


def write_tiny_dream(folder: str, seed: int = 0, **cfg_overrides) -> None:
  """A tiny Dream-layout folder (module docstring); cfg_overrides: DreamConfig fields."""
  import jax
  from remdm_jax.llm.dream import model as DM
  from remdm_jax.llm.dream import weights as DW
  tok = byte_tokenizer(DREAM_SPECIALS)
  write_tokenizer_files(folder, tok, {"eos_token": "<|endoftext|>",
                                      "pad_token": "<|endoftext|>",
                                      "mask_token": "<|mask|>"}, CHATML_CHAT_TEMPLATE)
  kw = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=264, max_position_embeddings=1024,
            mask_token_id=259, eos_token_id=256, eot_token_id=258, pad_token_id=256,
            param_dtype="float32", compute_dtype="float32")
  kw.update(cfg_overrides)
  cfg = DM.DreamConfig(**kw)
  _, params = DM.init_model(cfg, jax.random.key(seed))
  DW.save_hf_checkpoint(folder, cfg, params)


def main(argv=None) -> int:
  from remdm_jax.cliargs import ArgumentParser
  p = ArgumentParser(prog="python -m remdm_jax.llm.fixtures", description=__doc__,
                     formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("arch", choices=("llada", "dream"))
  p.add_argument("--out", required=True, help="a new (or empty) folder")
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)
  if os.path.exists(args.out) and (not os.path.isdir(args.out) or os.listdir(args.out)):
    print(f"error: --out={args.out!r} exists and is not an empty folder (choose a new path)",
          file=sys.stderr)
    return 2
  if not 0 <= args.seed < 2 ** 32:
    print(f"error: --seed={args.seed} must be in [0, 2^32)", file=sys.stderr)
    return 2
  (write_tiny_llada if args.arch == "llada" else write_tiny_dream)(args.out, seed=args.seed)
  print(f"wrote a tiny random {args.arch} checkpoint to {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
