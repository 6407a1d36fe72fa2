"""Tasks by name (`config.task`): `translation`, `lm`, and any a user registers.

    from xformer import tasks

    @tasks.register("prefix_lm")
    class PrefixLM(tasks.Task):
      ...

See `xformer.tasks.base.Task` for what a task owns.
"""

from __future__ import annotations

from xformer import registry
from xformer.tasks.base import Task

_REGISTRY: registry.Registry[Task] = registry.Registry("task")


def register(name: str):
  """Class decorator: registers one instance of a `Task` subclass under `name`."""

  def decorator(cls: type[Task]) -> type[Task]:
    if cls.name != name:
      raise ValueError(f"{cls.__name__}.name is {cls.name!r} but it is registered as {name!r}.")
    _REGISTRY.register(name)(cls())
    return cls

  return decorator


def get(name: str) -> Task:
  """The task registered as `name` (UnknownNameError listing the valid ones otherwise)."""
  return _REGISTRY.get(name)


def names() -> list[str]:
  return _REGISTRY.names()


# The built-in tasks register themselves on import.
from xformer.tasks import lm, translation  # noqa: E402,F401  pylint: disable=wrong-import-position
