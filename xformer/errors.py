"""Errors a user causes, kept apart from bugs: the command-line tools print them as one line and
exit with status 2 (the traceback with --verbosity=1); anything else is a bug and keeps its
traceback.

Each message says what was wrong, what was expected and what to do.
"""

from __future__ import annotations

import os
import re
from typing import Any, Iterable

USAGE_EXIT_CODE = 2


class UserError(Exception):
  """A mistake in a config, a flag, a path or a file: fixable by the user, not a bug."""

  def __str__(self) -> str:  # KeyError subclasses would otherwise print their message quoted.
    return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class ConfigError(UserError, ValueError):
  """A config value that cannot work (found before any data is read or anything compiled)."""


class UnknownNameError(UserError, KeyError):
  """A name (encoding, task, dataset, variant...) that is not registered."""


class WorkdirError(UserError, OSError):
  """A workdir that cannot be written."""

  @classmethod
  def unwritable(cls, workdir: str, cause: OSError) -> WorkdirError:
    return cls(f"The workdir {workdir} cannot be written ({cause}); nothing was trained. Pick "
               "a writable --workdir (with free space).")


class StorageError(UserError, OSError):
  """Storage failed under a running job (no space, permission, quota, a vanished bucket, a
  damaged data file). Its message names the cause, the newest good checkpoint and what a rerun
  does; the command-line tools print it as one line and exit with status 1."""

  exit_code = 1


def write_cause(error: BaseException) -> str:
  """A failed write's cause in a few words: the OS's wording when an errno is known (in the
  exception chain, or in tensorstore's "[os_error_code='28']"), else the first line."""
  seen: BaseException | None = error
  while seen is not None:
    if isinstance(seen, OSError) and seen.errno:
      return os.strerror(seen.errno).lower()
    found = re.search(r"os_error_code='?(\d+)", str(seen))
    if found:
      return os.strerror(int(found.group(1))).lower()
    seen = seen.__cause__ or seen.__context__
  first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
  return first[:200]


def check_choice(name: str, value: Any, valid: Iterable[Any]) -> None:
  """Raises ConfigError when `value` is not one of `valid`, listing them."""
  valid = list(valid)
  if value not in valid:
    raise ConfigError(f"{name}={value!r} is not valid; choose one of {valid}.")
