"""Tokenizer and chat template of a local Hugging Face checkpoint folder, without transformers.

A model folder (LLaDA, Dream, ...) holds:
  tokenizer.json              the fast tokenizer (vocabulary, pre-tokenizer, post-processor), read
                              with the `tokenizers` package; `encode(text)` applies its
                              post-processor exactly as transformers' `tokenizer(text)` does
                              (transformers drops `add_bos_token` / `add_eos_token` from
                              tokenizer_config.json when a tokenizer.json exists).
  tokenizer_config.json       named special tokens (`bos_token`, `eos_token`, `unk_token`,
                              `sep_token`, `pad_token`, `cls_token`, `mask_token`; a string or an
                              AddedToken dict {"content": ...}), model-specific `*_token` keys
                              (e.g. `eot_token`), `extra_special_tokens` (dict form), and the chat
                              template under "chat_template" (a string, or a list of
                              {"name", "template"} whose "default" entry is used).
  special_tokens_map.json     (legacy) overrides the named tokens of tokenizer_config.json when
                              that file has no "added_tokens_decoder" (transformers 5.x rule).
  chat_template.jinja         the chat template in its own file (newer saves); it takes priority
                              over the config key. `additional_chat_templates/<name>.jinja` add
                              named templates.

Chat templates are rendered exactly as transformers 5.x `apply_chat_template(..., tokenize=False)`
renders them (`transformers/utils/chat_template_utils.py`, `render_jinja_template`):
  * `jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
    extensions=[<generation tag>, jinja2.ext.loopcontrols])`;
  * filter `tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)` =
    `json.dumps` (no HTML escaping); globals `raise_exception(msg)` (raises
    `jinja2.exceptions.TemplateError`), `strftime_now(fmt)` = `datetime.now().strftime(fmt)`,
    a restricted `dict(...)` and a `namespace` that rejects `_`-prefixed names;
  * the `{% generation %}...{% endgeneration %}` tag renders its body (assistant masks are not
    tracked);
  * the render context is the tokenizer's named special tokens as strings (`bos_token`,
    `eos_token`, ... and model-specific `*_token`s; only those that are set), then the caller's
    keyword arguments (which win), then `messages`, `tools`, `documents`, `add_generation_prompt`;
  * message keys whose value is None are dropped; `continue_final_message` cuts the rendering at
    the end of the final message (incompatible with `add_generation_prompt`).
The rendered string is then encoded with `add_special_tokens=False` (what transformers does with
`tokenize=True`): the template itself writes BOS where the model wants it.
"""
from __future__ import annotations

import json
import os
from datetime import datetime
from typing import Any, Mapping, Optional, Sequence

NAMED_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token",
                "mask_token")
_CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "


def _token_str(value) -> Optional[str]:
  """A special-token entry of a config file (string or AddedToken dict) -> its text, or None."""
  if isinstance(value, str):
    return value
  if isinstance(value, Mapping) and isinstance(value.get("content"), str):
    return value["content"]
  return None


def _read_json(path: str) -> Any:
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f"{path}: cannot be read as JSON ({type(e).__name__}: {e})") from None


def _compile_template(template: str):
  """The jinja2 environment of transformers' `_cached_compile_jinja_template`, compiled."""
  import jinja2
  import jinja2.ext
  from jinja2.sandbox import ImmutableSandboxedEnvironment

  class GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}`: renders the body (transformers' AssistantTracker
    without the index tracking)."""
    tags = {"generation"}

    def parse(self, parser):
      lineno = next(parser.stream).lineno
      body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
      return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller):
      return caller()

  def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)

  def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)

  def strftime_now(fmt):
    return datetime.now().strftime(fmt)

  class TemplateDict:
    def __call__(self, *args, **kwargs):
      return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
      return dict.fromkeys(*args, **kwargs)

  class TemplateNamespace(jinja2.utils.Namespace):
    def __init__(*args, **kwargs):
      self, args = args[0], args[1:]
      attrs = dict(*args, **kwargs)
      for name in attrs:
        TemplateNamespace._check_name(name)
      jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
      TemplateNamespace._check_name(name)
      jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name):
      if isinstance(name, str) and name.startswith("_"):
        raise jinja2.exceptions.SecurityError(
            f"chat templates cannot store underscore-prefixed attributes on a namespace: {name!r}")

  env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                      extensions=[GenerationTag, jinja2.ext.loopcontrols])
  env.filters["tojson"] = tojson
  env.globals["raise_exception"] = raise_exception
  env.globals["strftime_now"] = strftime_now
  env.globals["dict"] = TemplateDict()
  env.globals["namespace"] = TemplateNamespace
  return env.from_string(template)


def _plain(value):
  """JSON-safe copy of template inputs (transformers' `_plain_template_data`, simplified: plain
  scalars, mappings, lists and tuples are copied; anything else becomes "<TypeName>")."""
  if value is None or type(value) in (str, int, float, bool):
    return value
  if isinstance(value, str):
    return str.__str__(value)
  if isinstance(value, int):
    return int.__int__(value)
  if isinstance(value, float):
    return float.__float__(value)
  if isinstance(value, Mapping):
    return {_plain(k): _plain(v) for k, v in value.items()}
  if isinstance(value, list):
    return [_plain(v) for v in value]
  if isinstance(value, tuple):
    return tuple(_plain(v) for v in value)
  try:
    import numpy as np
    if isinstance(value, np.generic):
      return _plain(value.item())
  except ImportError:  # pragma: no cover
    pass
  return f"<{type(value).__name__}>"


_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


def _alias_reasoning(chat):
  """transformers' `_alias_reasoning_fields`: a message's reasoning under any of its names is
  also passed as "thinking" and "reasoning_content"."""
  out = []
  for m in chat:
    r = next((m[k] for k in _REASONING_FIELDS if m.get(k) is not None), None)
    out.append(m if r is None else {"thinking": r, **m, "reasoning_content": r})
  return out


def render_chat_template(template: str, messages: Sequence[Mapping[str, Any]], *,
                         add_generation_prompt: bool = False,
                         continue_final_message: bool = False,
                         special_tokens: Optional[Mapping[str, str]] = None,
                         tools: Optional[list] = None, documents: Optional[list] = None,
                         **kwargs) -> str:
  """Renders a chat template the way transformers 5.x `apply_chat_template(..., tokenize=False)`
  does (module docstring).

  Args:
    template: the jinja2 source.
    messages: [{"role": str, "content": ..., ...}, ...]; None-valued keys are dropped.
    add_generation_prompt: passed to the template (most templates then open an assistant turn).
    continue_final_message: cut the output right after the last message's content (for
      prefilling an assistant answer); incompatible with `add_generation_prompt`.
    special_tokens: {"bos_token": "<s>", ...} put into the context first.
    tools, documents: passed as in transformers (tools must already be JSON schemas).
    **kwargs: extra template variables; they override `special_tokens`.
  Returns:
    the rendered string.
  Raises:
    ValueError on an empty conversation, non-dict messages, or incompatible options;
    jinja2.exceptions.TemplateError from the template's own `raise_exception`.
  """
  if not isinstance(template, str) or not template:
    raise ValueError("chat template must be a non-empty string")
  if not isinstance(messages, (list, tuple)) or len(messages) == 0:
    raise ValueError("cannot apply a chat template to an empty conversation")
  if continue_final_message and add_generation_prompt:
    raise ValueError("continue_final_message and add_generation_prompt are not compatible")
  for m in messages:
    if not isinstance(m, Mapping):
      raise ValueError(f"chat messages must be dicts, got {m!r}")
  chat = [{k: v for k, v in m.items() if v is not None} for m in messages]
  chat = _alias_reasoning(_plain(chat))
  if tools is not None:
    for t in tools:
      if not isinstance(t, Mapping):
        raise ValueError("tools must be JSON schemas (dicts)")
  if documents is not None:
    for d in documents:
      if not isinstance(d, Mapping):
        raise ValueError("documents must be dicts with 'title' and 'text' keys")
  final = None
  if continue_final_message:
    final = chat[-1].get("content")
    if not isinstance(final, str):
      raise ValueError("continue_final_message needs a final message with string content")
    chat[-1]["content"] = final + _CONTINUE_TAG
  context = {**dict(special_tokens or {}), **_plain(kwargs)}
  out = _compile_template(template).render(
      messages=chat, tools=_plain(tools), documents=_plain(documents),
      add_generation_prompt=add_generation_prompt, **context)
  if continue_final_message:
    tag = _CONTINUE_TAG.strip()
    if final.strip() not in out or tag not in out:
      raise ValueError("continue_final_message: the final message does not appear in the "
                       "rendered chat (the template changes it)")
    loc = out.rindex(tag)
    out = out[:loc] if out[loc:loc + len(_CONTINUE_TAG)] == _CONTINUE_TAG else out[:loc].rstrip()
  return out


class HFTokenizer:
  """The tokenizer files of a local model folder (module docstring).

  Attributes:
    tok: the `tokenizers.Tokenizer` of tokenizer.json.
    special_tokens: {name: text} of the named (and model-specific `*_token`) special tokens that
      are set, in transformers' `special_tokens_map` order.
    chat_template: the default chat template (str) or None; chat_templates: {name: template}.
  Raises (constructor): ValueError naming the file when tokenizer.json is missing or unreadable or
    a config file is not valid JSON.
  """

  def __init__(self, path: str):
    folder = path if os.path.isdir(path) else os.path.dirname(path) or "."
    tj = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
    if not os.path.isfile(tj):
      raise ValueError(f"tokenizer.json not found at {tj!r}")
    from tokenizers import Tokenizer as _T
    try:
      self.tok = _T.from_file(tj)
    except Exception as e:  # tokenizers raises a bare Exception on bad JSON
      raise ValueError(f"{tj}: not a valid tokenizer.json ({e})") from None
    self.folder = folder
    cfg_path = os.path.join(folder, "tokenizer_config.json")
    cfg = _read_json(cfg_path) if os.path.isfile(cfg_path) else {}
    if not isinstance(cfg, dict):
      raise ValueError(f"{cfg_path}: must hold a JSON object")
    self.config = cfg
    named: dict = {}
    for k in NAMED_TOKENS:
      s = _token_str(cfg.get(k))
      if s is not None:
        named[k] = s
    stm_path = os.path.join(folder, "special_tokens_map.json")
    if "added_tokens_decoder" not in cfg and os.path.isfile(stm_path):
      stm = _read_json(stm_path)
      if isinstance(stm, dict):
        for k, v in stm.items():
          s = _token_str(v)
          if k in NAMED_TOKENS and s is not None:
            named[k] = s
    extra = {}
    for k, v in cfg.items():
      if k.endswith("_token") and k not in NAMED_TOKENS:
        if isinstance(v, str) or (isinstance(v, Mapping) and v.get("__type") == "AddedToken"):
          extra[k] = _token_str(v)
    if isinstance(cfg.get("extra_special_tokens"), Mapping):
      for k, v in cfg["extra_special_tokens"].items():
        if _token_str(v) is not None:
          extra[k] = _token_str(v)
    self.special_tokens = {**named, **{k: v for k, v in extra.items() if v is not None}}
    self.chat_templates = self._load_templates(folder, cfg)
    self.chat_template = self.chat_templates.get("default")

  @staticmethod
  def _load_templates(folder, cfg) -> dict:
    files = {}
    jf = os.path.join(folder, "chat_template.jinja")
    if os.path.isfile(jf):
      with open(jf, encoding="utf-8") as f:
        files["default"] = f.read()
    extra_dir = os.path.join(folder, "additional_chat_templates")
    if os.path.isdir(extra_dir):
      for name in sorted(os.listdir(extra_dir)):
        if name.endswith(".jinja"):
          with open(os.path.join(extra_dir, name), encoding="utf-8") as f:
            files[name[:-len(".jinja")]] = f.read()
    if files:
      return files
    ct = cfg.get("chat_template")
    if isinstance(ct, str):
      return {"default": ct}
    if isinstance(ct, list):
      return {t["name"]: t["template"] for t in ct
              if isinstance(t, Mapping) and "name" in t and "template" in t}
    return {}

  # ------------------------------------------------------------------ encode / decode
  def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
    """text -> token ids (tokenizer.json's post-processor adds BOS/EOS when add_special_tokens)."""
    if not isinstance(text, str):
      raise ValueError(f"text must be a str, got {type(text).__name__}")
    return list(self.tok.encode(text, add_special_tokens=add_special_tokens).ids)

  def decode(self, ids, skip_special_tokens: bool = False) -> str:
    return self.tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

  def token_id(self, token: Optional[str]) -> Optional[int]:
    """Id of a token string (None if absent or token is None)."""
    return None if token is None else self.tok.token_to_id(token)

  def id_to_token(self, i: int) -> Optional[str]:
    return self.tok.id_to_token(int(i))

  @property
  def vocab_size(self) -> int:
    """Tokenizer size including added tokens."""
    return self.tok.get_vocab_size(with_added_tokens=True)

  def special_id(self, name: str) -> Optional[int]:
    """Id of a named special token ("eos_token", "mask_token", "eot_token", ...) or None."""
    return self.token_id(self.special_tokens.get(name))

  # ------------------------------------------------------------------ chat
  def get_chat_template(self, name: Optional[str] = None, tools=None) -> str:
    """The template to use: `name` (a template name or jinja source), else "tool_use" when tools
    are given and exists, else "default". ValueError when the folder has none."""
    if name is not None:
      return self.chat_templates.get(name, name)
    if tools is not None and "tool_use" in self.chat_templates:
      return self.chat_templates["tool_use"]
    if "default" in self.chat_templates:
      return self.chat_templates["default"]
    if self.chat_templates:
      raise ValueError(f"{self.folder}: several chat templates and no default: "
                       f"{sorted(self.chat_templates)}")
    raise ValueError(f"{self.folder}: no chat template (chat_template.jinja or the "
                     "'chat_template' key of tokenizer_config.json)")

  def apply_chat_template(self, messages, *, add_generation_prompt: bool = True,
                          continue_final_message: bool = False, chat_template=None,
                          tools=None, documents=None, tokenize: bool = False, **kwargs):
    """Renders `messages` with the folder's chat template (module docstring). tokenize=True
    returns ids encoded with add_special_tokens=False, like transformers' input_ids."""
    text = render_chat_template(
        self.get_chat_template(chat_template, tools), messages,
        add_generation_prompt=add_generation_prompt,
        continue_final_message=continue_final_message, special_tokens=self.special_tokens,
        tools=tools, documents=documents, **kwargs)
    return self.encode(text, add_special_tokens=False) if tokenize else text


def load_tokenizer(path: str) -> HFTokenizer:
  """`HFTokenizer(path)`: a model folder or a tokenizer.json path."""
  return HFTokenizer(path)


def chat_prompt(tokenizer: HFTokenizer, user: str, system: Optional[str] = None) -> list[int]:
  """Token ids of a one-turn chat prompt: [system,] user message, generation prompt opened,
  encoded without extra special tokens (the template writes BOS)."""
  msgs = ([{"role": "system", "content": system}] if system else []) + \
      [{"role": "user", "content": user}]
  return tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
