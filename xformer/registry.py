"""A tiny name -> object registry: positional encodings, tasks, datasets (anything chosen by name).

Configs name things by string (`model.posemb = "rope"`); the registry turns the string into the
object and, when the name is wrong, says which names exist. Registration happens by decorator at
import time, so adding an entry touches only the file that defines it.
"""

from __future__ import annotations

import difflib
from typing import Callable, Generic, TypeVar

from xformer import errors

T = TypeVar("T")


class Registry(Generic[T]):
  """Maps names to objects; unknown or duplicate names raise errors that list the valid names."""

  def __init__(self, kind: str):
    self.kind = kind  # What the entries are, for error messages ("positional encoding").
    self._entries: dict[str, T] = {}

  def register(self, name: str) -> Callable[[T], T]:
    """Decorator: `@REGISTRY.register("rope") class RoPE: ...`."""

    def decorator(obj: T) -> T:
      if name in self._entries:
        raise ValueError(
            f"{self.kind} {name!r} is registered twice: by {self._entries[name]!r} and {obj!r}.")
      self._entries[name] = obj
      return obj

    return decorator

  def get(self, name: str) -> T:
    """Returns the entry called `name`; raises UnknownNameError (a KeyError) listing the valid
    names if there is none."""
    if name not in self._entries:
      raise errors.UnknownNameError(self.unknown_message(name))
    return self._entries[name]

  def names(self) -> list[str]:
    """The registered names, in registration order."""
    return list(self._entries)

  def unknown_message(self, name: str) -> str:
    close = difflib.get_close_matches(str(name), self.names(), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"Unknown {self.kind} {name!r}.{hint} Valid names: {', '.join(self.names())}."

  def __contains__(self, name: str) -> bool:
    return name in self._entries
