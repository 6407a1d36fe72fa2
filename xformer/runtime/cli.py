"""What every command-line tool shares: quiet logs unless --verbosity is given, and a user's
mistake (errors.UserError, a bad flag or config value) as one line on stderr with exit status 2;
with --verbosity=1 (or higher) the traceback too.

    @cli.user_errors
    def main(argv): ...

    app.run(main, flags_parser=cli.parse_flags)
"""

from __future__ import annotations

import functools
import sys

from absl import app, flags, logging

from xformer import errors
from xformer.runtime import platforms

FLAGS = flags.FLAGS


def _message(error: BaseException) -> str:
  """The innermost text of an error (ml_collections wraps KeyErrors in AttributeErrors)."""
  while error.args and isinstance(error.args[0], BaseException):
    error = error.args[0]
  return str(error.args[0]) if len(error.args) == 1 else str(error)


def _fail(error: BaseException) -> None:
  print(f"error: {' '.join(_message(error).split())}", file=sys.stderr, flush=True)
  sys.exit(errors.USAGE_EXIT_CODE)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a bad flag or config value as one line and exit status 2 (a
  config override of an unknown field or the wrong type raises from inside ml_collections);
  --help prints the command's usage and exits 0."""
  if any(a in ("-h", "--help", "-?", "--helpshort") for a in argv[1:]):
    # absl exits 1 after --help; asking for help is no error.
    app.usage(shorthelp=True, writeto_stdout=True, exitcode=0)
  try:
    return FLAGS(argv)
  except (flags.Error, errors.UserError, AttributeError, KeyError, TypeError, ValueError) as e:
    _fail(e)
    raise  # Unreachable: _fail exits.


def verbose() -> bool:
  return FLAGS["verbosity"].present and FLAGS.verbosity >= 1


def user_errors(main):
  """Decorates an absl main: jax restricted to the backends whose hardware is present
  (platforms.use_present), logging at WARNING unless --verbosity is set, UserError -> exit 2."""

  @functools.wraps(main)
  def wrapped(argv):
    platforms.use_present()
    if not FLAGS["verbosity"].present:
      logging.set_verbosity(logging.WARNING)
    try:
      return main(argv)
    except errors.UserError as e:
      if verbose():
        raise
      _fail(e)

  return wrapped
