"""The one error type for bad input that a person can fix."""


class ConfigError(ValueError):
  """A config key or value is wrong; the message names it and the valid choices.

  Command-line entry points print the message on one line and exit non-zero
  instead of showing a traceback.
  """


def check_choice(key, value, choices):
  """Raises ConfigError unless `value` is one of `choices`."""
  if value not in choices:
    raise ConfigError(f"{key}={value!r} is not valid; choose one of "
                      f"{', '.join(repr(c) for c in choices)}.")
