"""argparse for the entry points: bad input is one line `error: ...` and exit status 2.

argparse's own `error` prints the whole usage block before its message; the project's rule for
entry points is one line naming the flag and the value (README, HELPER_RULES). `ArgumentParser`
keeps argparse's behaviour otherwise (--help, defaults, types) and rewrites its two commonest
messages so that they name the flag:

  argument --strategy: invalid choice: 'foo' (choose from 'a', 'b')
    -> --strategy='foo' must be one of a, b
  argument --steps: invalid int value: 'x'
    -> --steps='x' must be an int

This module imports nothing from JAX or the rest of the package.
"""
from __future__ import annotations

import argparse
import re
import sys

_CHOICE = re.compile(r"^argument (?P<flag>[^:]+): invalid choice: (?P<value>.*?) "
                     r"\(choose from (?P<choices>.*)\)$", re.S)
_TYPE = re.compile(r"^argument (?P<flag>[^:]+): invalid (?P<type>\w+) value: (?P<value>.*)$",
                   re.S)


def one_line(message: str) -> str:
  """argparse's error message with the flag first (module docstring), on one line."""
  m = _CHOICE.match(message)
  if m:
    flag = m["flag"].split("/")[-1]
    choices = ", ".join(c.strip().strip("'\"") for c in m["choices"].split(","))
    return f"{flag}={m['value']} must be one of {choices}"
  m = _TYPE.match(message)
  if m:
    flag = m["flag"].split("/")[-1]
    return f"{flag}={m['value']} must be a{'n' if m['type'][0] in 'aeiou' else ''} {m['type']}"
  return " ".join(message.split())


class ArgumentParser(argparse.ArgumentParser):
  """`argparse.ArgumentParser` whose errors are one line `error: <message>` (or
  `<prefix>error: ...`) on stderr and exit status 2, without the usage block."""

  def __init__(self, *args, error_prefix: str = "", **kwargs):
    super().__init__(*args, **kwargs)
    self.error_prefix = error_prefix

  def error(self, message):  # argparse's hook: must not return
    sys.stderr.write(f"{self.error_prefix}error: {one_line(message)}\n")
    sys.exit(2)
