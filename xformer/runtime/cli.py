"""What every command-line tool shares: quiet logs unless --verbosity is given, and a user's
mistake (errors.UserError, a bad flag or config value) as one line on stderr with exit status 2
(a storage failure under a run: status 1); with --verbosity=1 (or higher) the traceback too.

    @cli.user_errors
    def main(argv): ...

    app.run(main, flags_parser=cli.parse_flags)
"""

from __future__ import annotations

import functools
import os
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
  if isinstance(error, errors.StorageError):
    # A failed save leaves orbax's writes pending as coroutines; interpreter shutdown would
    # print each one's "Exception ignored ... Python is likely shutting down". Everything of
    # ours is closed (metrics, lease) by now: leave without that teardown.
    sys.stdout.flush()
    os._exit(error.exit_code)  # pylint: disable=protected-access
  sys.exit(getattr(error, "exit_code", errors.USAGE_EXIT_CODE))


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


def _quiet_background_failures() -> None:
  """Without --verbosity: a background thread's crash (orbax saving into a full disk) prints
  one line, not a traceback, and the echoes of the same failure (asyncio's "exception was never
  retrieved", orbax's future log, tensorstore calling into a closed loop) are dropped; the
  failure itself reaches the main thread (Checkpointer.check) and is printed once."""
  import logging as std_logging  # pylint: disable=import-outside-toplevel
  import threading  # pylint: disable=import-outside-toplevel
  std_logging.getLogger("asyncio").setLevel(std_logging.CRITICAL)

  def hook(args):
    first = (str(args.exc_value).strip().splitlines() or [args.exc_type.__name__])[0]
    print(f"warning: background thread {args.thread.name if args.thread else '?'} failed: "
          f"{first[:300]} (--verbosity=1 for the traceback)", file=sys.stderr, flush=True)

  threading.excepthook = hook
  default_hook, default_unraisable = sys.excepthook, sys.unraisablehook

  def closed_loop(value) -> bool:  # Tensorstore's callbacks into orbax's closed event loop.
    return isinstance(value, RuntimeError) and "Event loop is closed" in str(value)

  sys.excepthook = lambda kind, value, tb: closed_loop(value) or default_hook(kind, value, tb)
  sys.unraisablehook = lambda args: closed_loop(args.exc_value) or default_unraisable(args)
  # Orbax logs a failed background save with its traceback (its futures, the async
  # checkpointer, the manager's finalize thread); it reaches the user as the StorageError's one
  # line instead.
  std_logging.getLogger("absl").addFilter(
      lambda record: not ("orbax" in record.pathname and record.levelno >= std_logging.ERROR))


def user_errors(main):
  """Decorates an absl main: jax restricted to the backends whose hardware is present
  (platforms.use_present), logging at WARNING unless --verbosity is set, UserError -> exit 2."""

  @functools.wraps(main)
  def wrapped(argv):
    platforms.use_present()
    if not FLAGS["verbosity"].present:
      logging.set_verbosity(logging.WARNING)
    if not verbose():
      _quiet_background_failures()
    try:
      return main(argv)
    except errors.UserError as e:
      if verbose():
        raise
      _fail(e)

  return wrapped
