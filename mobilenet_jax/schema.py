"""How a config is declared and checked: fields, their types and what they allow.

A field (`field`) is a key, its default, its type and a `Check`; `check_fields`
checks a config against its fields and raises ConfigError with one line
naming the key, the value and what is allowed. The fields themselves (every
key of the project's config and its default) are declared in defaults.py.
"""

import collections.abc
import numbers
import re
import types
import typing
from typing import Any, Callable, NamedTuple, Tuple, Union

from ml_collections import config_dict

from mobilenet_jax.errors import ConfigError


# ------------------------------------------------------------ the checks ---

class Check(NamedTuple):
  """What a field allows: `ok(value, config)`, and the words for it, where
  "{}" stands for the kind of value ("{} > 0" -> "a number > 0")."""
  ok: Callable[[Any, Any], bool]
  says: str


def check_that(says: str, ok: Callable[[Any], bool]) -> Check:
  return Check(lambda value, config: ok(value), says)


ANY = check_that("{}", lambda v: True)
NOT_EMPTY = check_that("a non-empty string", lambda v: v != "")


def above(low) -> Check:
  return check_that(f"{{}} > {low}", lambda v: v > low)


def at_least(low) -> Check:
  return check_that(f"{{}} >= {low}", lambda v: v >= low)


def in_range(low, high, ends: str = "[)") -> Check:
  """low..high with open or closed ends: "[)" is low <= v < high."""
  lo = (lambda v: v >= low) if ends[0] == "[" else (lambda v: v > low)
  hi = (lambda v: v < high) if ends[1] == ")" else (lambda v: v <= high)
  return check_that(f"{{}} in {ends[0]}{low}, {high}{ends[1]}",
                lambda v: lo(v) and hi(v))


def one_of(choices) -> Check:
  return check_that(f"one of {', '.join(repr(c) for c in choices)}",
                lambda v: v in choices)


def _compiles(pattern) -> bool:
  try:
    re.compile(pattern)
    return True
  except re.error:
    return False


REGEXES = check_that("a list of regular expressions",
                 lambda v: all(isinstance(p, str) and _compiles(p) for p in v))


def unless_steps(check: Check) -> Check:
  """`check`, waived when num_train_steps > 0 sets the length instead."""
  return Check(lambda v, c: c["num_train_steps"] > 0 or check.ok(v, c),
               check.says + " (or num_train_steps > 0)")


# ----------------------------------------------------------------- types ---

NOUNS = {bool: "True or False", int: "an integer", float: "a number",
         str: "a string"}


def _is_union(tp) -> bool:
  return typing.get_origin(tp) in (Union, types.UnionType)


def _items(tp):
  """The element type of Sequence[X] or Tuple[X, ...], else None."""
  origin, args = typing.get_origin(tp), typing.get_args(tp)
  if origin is collections.abc.Sequence or (
      origin is tuple and len(args) == 2 and args[1] is Ellipsis):
    return args[0]
  return None


def conforms(value, tp) -> bool:
  """Whether `value` has type `tp` (a field's type or a knob's annotation);
  an integer is a number, a bool is not, a list is a tuple."""
  if tp is Any:
    return True
  if tp is type(None):
    return value is None
  if _is_union(tp):
    return any(conforms(value, arm) for arm in typing.get_args(tp))
  if tp is bool:
    return isinstance(value, bool)
  if tp in (int, float):
    base = numbers.Integral if tp is int else numbers.Real
    return isinstance(value, base) and not isinstance(value, bool)
  if tp is str:
    return isinstance(value, str)
  if isinstance(tp, type):  # a plain class
    return isinstance(value, tp)
  if not isinstance(value, (list, tuple)):
    return False
  item = _items(tp)
  if item is not None:
    return all(conforms(v, item) for v in value)
  args = typing.get_args(tp)  # Tuple[A, B]: one value per position
  return len(value) == len(args) and all(map(conforms, value, args))


def noun(tp) -> str:
  """"an integer", "a string or None", "a list of (int, int) rows"..."""
  if tp in NOUNS:
    return NOUNS[tp]
  if _is_union(tp):
    arms = [noun(a) for a in typing.get_args(tp) if a is not type(None)]
    return " or ".join(arms) + " or None"
  item = _items(tp)
  if typing.get_origin(item) is tuple:
    names = ", ".join(a.__name__ for a in typing.get_args(item))
    return f"a list of ({names}) rows"
  if item is not None:
    return f"a list of {noun(item)[2:]}s" if item in NOUNS else f"a list of {item}"
  return str(tp).replace("typing.", "")


# ------------------------------------------------------------ the fields ---

class Field(NamedTuple):
  key: str
  default: Any      # a value, or a function making it (the model section)
  check: Check
  doc: str
  type: Any         # what conforms() accepts; None: the model section

  def initial(self):
    if callable(self.default):
      return self.default()
    if self.default is None:  # overridable from the command line
      return config_dict.placeholder(placeholder_type(self.type))
    return self.default


def placeholder_type(tp):
  """Optional[X] -> X, the type a None default can be set to."""
  arms = [a for a in typing.get_args(tp) if a is not type(None)]
  return arms[0] if arms else tp


def field(key: str, default, check: Check = ANY, doc: str = "", type=None) -> Field:
  """A config field; its type is its default's unless given (a None default
  needs one)."""
  if type is None and default is not None and not callable(default):
    type = Tuple[str, ...] if isinstance(default, tuple) else default.__class__
  return Field(key, default, check, doc, type)


# ------------------------------------------------------------ validation ---

def not_valid(key: str, value, allowed: str) -> ConfigError:
  return ConfigError(f"{key}={value!r} is not valid; use {allowed}.")


def check_keys(keys, valid, section: str = ""):
  for key in keys:
    if key not in valid:
      where = f"config.{section}" if section else "config"
      name = f"{section}.{key}" if section else key
      raise ConfigError(f"unknown config key {name!r}; valid keys of {where}: "
                        f"{', '.join(valid)}.")


def check_fields(config, fields):
  """Every key declared, then types, so that the cross-field checks compare numbers."""
  check_keys(config.keys(), [f.key for f in fields])
  missing = [f.key for f in fields if f.key not in config]
  if missing:
    raise ConfigError(f"config lacks {', '.join(missing)}; start from "
                      "mobilenet_jax.defaults.get_config().")
  for f in fields:
    if f.type is not None and not conforms(config[f.key], f.type):
      raise not_valid(f.key, config[f.key], f.check.says.format(noun(f.type)))
  for f in fields:
    if f.type is not None and not f.check.ok(config[f.key], config):
      raise not_valid(f.key, config[f.key], f.check.says.format(noun(f.type)))
