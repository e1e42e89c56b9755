"""Tokenizer files and chat templates of a local model folder (remdm_jax.llm.tokenizer): rendered
strings written out here by hand, the folder rules of transformers 5 (which file wins, which
tokens reach the template), and, as an extra check, transformers' own apply_chat_template."""
import datetime
import json
import os

import jinja2
import pytest

pytest.importorskip("tokenizers")

from remdm_jax.llm import fixtures as F  # noqa: E402
from remdm_jax.llm.tokenizer import HFTokenizer, chat_prompt, render_chat_template  # noqa: E402

SPECIALS = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
            "pad_token": "<|endoftext|>", "mask_token": "<|mdm_mask|>"}
USER = [{"role": "user", "content": "  What is 2+3?  "}]


def test_llada_template_expected_string():
  got = render_chat_template(F.LLADA_CHAT_TEMPLATE, USER, add_generation_prompt=True,
                             special_tokens=SPECIALS)
  assert got == ("<|startoftext|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2+3?"
                 "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
  no_prompt = render_chat_template(F.LLADA_CHAT_TEMPLATE, USER, special_tokens=SPECIALS)
  assert no_prompt == ("<|startoftext|><|start_header_id|>user<|end_header_id|>\n\n"
                       "What is 2+3?<|eot_id|>")


def test_chatml_template_expected_string_and_none_keys_dropped():
  conv = [{"role": "user", "content": "hi"},
          {"role": "assistant", "content": "hello", "tool_calls": None},
          {"role": "user", "content": "again"}]
  tpl = ("{% for m in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
         "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
         "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] }}"
         "{% if 'tool_calls' in m %}[TOOLS]{% endif %}{{ '<|im_end|>\n' }}{% endfor %}"
         "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
  got = render_chat_template(tpl, conv, add_generation_prompt=True)
  assert got == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                 "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n"
                 "<|im_start|>user\nagain<|im_end|>\n<|im_start|>assistant\n")


def test_environment_options_trim_lstrip_tojson_loopcontrols_namespace():
  # trim_blocks drops the newline after a block tag, lstrip_blocks the indentation before one.
  tpl = ("{% for m in messages %}\n"
         "    {% if m.role == 'system' %}\n"
         "        {% continue %}\n"
         "    {% endif %}\n"
         "[{{ m.content | tojson }}]\n"
         "    {% if loop.index == 3 %}{% break %}{% endif %}\n"
         "{% endfor %}\n"
         "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}"
         "{% endfor %}{{ ns.n }}|{{ {'b': 1, 'a': 'é<>'} | tojson(indent=1) }}")
  conv = [{"role": "system", "content": "sys"}, {"role": "user", "content": "<b>é</b>"},
          {"role": "user", "content": "x"}, {"role": "user", "content": "never"}]
  got = render_chat_template(tpl, conv)
  assert got == '["<b>é</b>"]\n["x"]\n4|{\n "b": 1,\n "a": "é<>"\n}'
  with pytest.raises(jinja2.exceptions.SecurityError):
    render_chat_template("{% set ns = namespace(_x=1) %}", USER)


def test_raise_exception_strftime_bos_eos_and_kwargs_override():
  tpl = ("{% if messages[0]['role'] != 'user' %}{{ raise_exception('roles must start with "
         "user') }}{% endif %}{{ bos_token }}{{ messages[0]['content'] }}{{ eos_token }}"
         "{{ strftime_now('%Y') }}{{ date_string | default('') }}")
  got = render_chat_template(tpl, [{"role": "user", "content": "x"}], special_tokens=SPECIALS)
  assert got == "<|startoftext|>x<|endoftext|>" + str(datetime.datetime.now().year)
  got = render_chat_template(tpl, [{"role": "user", "content": "x"}], special_tokens=SPECIALS,
                             bos_token="[B]", date_string="-d")
  assert got.startswith("[B]x<|endoftext|>") and got.endswith("-d")
  with pytest.raises(jinja2.exceptions.TemplateError, match="roles must start with user"):
    render_chat_template(tpl, [{"role": "assistant", "content": "x"}], special_tokens=SPECIALS)


def test_continue_final_message_generation_tag_and_reasoning_alias():
  tpl = ("{% for m in messages %}<{{ m.role }}>{% if m.reasoning_content %}({{ "
         "m.reasoning_content }}){% endif %}{% generation %}{{ m.content }}{% endgeneration %}"
         "</{{ m.role }}>{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}")
  conv = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "The answer is",
                                              "reasoning": "think"}]
  assert render_chat_template(tpl, conv) == \
      "<user>q</user><assistant>(think)The answer is</assistant>"
  assert render_chat_template(tpl, conv, continue_final_message=True) == \
      "<user>q</user><assistant>(think)The answer is"
  with pytest.raises(ValueError, match="not compatible"):
    render_chat_template(tpl, conv, continue_final_message=True, add_generation_prompt=True)
  with pytest.raises(ValueError, match="empty conversation"):
    render_chat_template(tpl, [])


def _folder(tmp_path, name, template, as_file=True, specials=SPECIALS, extra=None, bos=True):
  d = str(tmp_path / name)
  tok = F.byte_tokenizer(F.LLADA_SPECIALS, bos="<|startoftext|>" if bos else None)
  F.write_tokenizer_files(d, tok, dict(specials), template, as_jinja_file=as_file,
                          extra_config=extra)
  return d


def test_folder_rules_jinja_file_wins_special_tokens_map_and_custom_tokens(tmp_path):
  d = _folder(tmp_path, "a", F.LLADA_CHAT_TEMPLATE, as_file=True)
  with open(os.path.join(d, "tokenizer_config.json")) as f:
    cfg = json.load(f)
  cfg["chat_template"] = "WRONG {{ messages }}"
  cfg["eot_token"] = "<|eot_id|>"  # a model-specific named token reaches the template
  cfg["eos_token"] = {"__type": "AddedToken", "content": "<|endoftext|>", "special": True}
  with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
    json.dump(cfg, f)
  # legacy special_tokens_map.json overrides the config (no added_tokens_decoder in it)
  with open(os.path.join(d, "special_tokens_map.json"), "w") as f:
    json.dump({"bos_token": {"content": "<|start_header_id|>", "lstrip": False}}, f)
  tk = HFTokenizer(d)
  assert tk.chat_template == F.LLADA_CHAT_TEMPLATE
  assert tk.special_tokens == {"bos_token": "<|start_header_id|>", "eos_token": "<|endoftext|>",
                               "pad_token": "<|endoftext|>", "mask_token": "<|mdm_mask|>",
                               "eot_token": "<|eot_id|>"}
  assert tk.special_id("eot_token") == 260 and tk.special_id("mask_token") == 261
  got = tk.apply_chat_template(USER, chat_template="{{ eot_token }}{{ bos_token }}")
  assert got == "<|eot_id|><|start_header_id|>"
  # the template list form: "default" is used, names select others
  d2 = _folder(tmp_path, "b", None)
  with open(os.path.join(d2, "tokenizer_config.json")) as f:
    cfg = json.load(f)
  cfg["chat_template"] = [{"name": "default", "template": "D{{ messages[0].content }}"},
                          {"name": "rag", "template": "R"}]
  with open(os.path.join(d2, "tokenizer_config.json"), "w") as f:
    json.dump(cfg, f)
  tk2 = HFTokenizer(d2)
  assert tk2.apply_chat_template(USER) == "D  What is 2+3?  "
  assert tk2.apply_chat_template(USER, chat_template="rag") == "R"


def test_chat_prompt_ids_have_one_bos(tmp_path):
  d = _folder(tmp_path, "c", F.LLADA_CHAT_TEMPLATE)
  tk = HFTokenizer(d)
  ids = chat_prompt(tk, "  What is 2+3?  ")
  assert ids[:2] == [256, 258] and ids.count(256) == 1  # template's BOS, no post-processor BOS
  assert tk.encode("hi") == [256, 104, 105]              # plain text: the post-processor adds BOS
  assert tk.decode(ids, skip_special_tokens=True) == "user\n\nWhat is 2+3?assistant\n\n"


def test_bad_files_are_one_line_errors(tmp_path):
  with pytest.raises(ValueError, match="tokenizer.json not found"):
    HFTokenizer(str(tmp_path))
  d = _folder(tmp_path, "d", None)
  with pytest.raises(ValueError, match="no chat template"):
    HFTokenizer(d).apply_chat_template(USER)
  with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
    f.write("{not json")
  with pytest.raises(ValueError, match="tokenizer_config.json: cannot be read as JSON"):
    HFTokenizer(d)
  with open(os.path.join(d, "tokenizer.json"), "w") as f:
    f.write("garbage")
  with pytest.raises(ValueError, match="not a valid tokenizer.json"):
    HFTokenizer(d)


CONVS = [
    USER,
    [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "hi"},
     {"role": "assistant", "content": "hello", "tool_calls": None},
     {"role": "user", "content": " again é "}],
]


@pytest.mark.parametrize("template,as_file,bos", [
    (F.LLADA_CHAT_TEMPLATE, False, True), (F.LLADA_CHAT_TEMPLATE, True, True),
    (F.CHATML_CHAT_TEMPLATE, True, False), (F.CHATML_CHAT_TEMPLATE, False, False)])
def test_matches_transformers_apply_chat_template(tmp_path, template, as_file, bos):
  transformers = pytest.importorskip("transformers")
  d = _folder(tmp_path, "t", template, as_file=as_file, bos=bos,
              extra={"eot_token": "<|eot_id|>"})
  ours = HFTokenizer(d)
  theirs = transformers.AutoTokenizer.from_pretrained(d, local_files_only=True)
  assert ours.special_tokens == theirs.special_tokens_map
  for conv in CONVS:
    for agp in (True, False):
      want = theirs.apply_chat_template(conv, add_generation_prompt=agp, tokenize=False)
      assert ours.apply_chat_template(conv, add_generation_prompt=agp) == want
      ids = theirs.apply_chat_template(conv, add_generation_prompt=agp)["input_ids"]
      assert ours.apply_chat_template(conv, add_generation_prompt=agp, tokenize=True) == ids
  for text in ("Question: What is 2 + 3?\nAnswer:", " ünï <|eot_id|> x", ""):
    assert ours.encode(text) == theirs(text)["input_ids"]
    ids = ours.encode(text)
    assert ours.decode(ids) == theirs.decode(ids)
    assert ours.decode(ids, skip_special_tokens=True) == \
        theirs.decode(ids, skip_special_tokens=True)


def test_cli_chat_encodes_the_template_and_generates(tmp_path, capsys):
  from remdm_jax.llm import cli
  d = str(tmp_path / "tiny")
  F.write_tiny_llada(d)
  tk = HFTokenizer(d)
  ids = cli.encode_prompts(tk, ["  What is 2+3?  "], chat=True, system="Be terse.")[0]
  want = ("<|startoftext|><|start_header_id|>system<|end_header_id|>\n\nBe terse.<|eot_id|>"
          "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+3?<|eot_id|>"
          "<|start_header_id|>assistant<|end_header_id|>\n\n")
  assert ids == tk.encode(want, add_special_tokens=False) and ids.count(256) == 1
  assert cli.encode_prompts(tk, ["hi"])[0] == [256, 104, 105]
  with pytest.raises(ValueError, match="--system needs --chat"):
    cli.encode_prompts(tk, ["hi"], system="x")
  assert cli.main([f"--model_dir={d}", "--chat", "--prompt=hi", "--gen_length=4",
                   "--block_length=4", "--steps=4", "--param_dtype=float32",
                   "--compute_dtype=float32"]) == 0
  line = capsys.readouterr().out.strip().splitlines()[0]
  assert isinstance(json.loads(line)["text"], str)
