"""Tasks by name (`config.task`): `translation`, `lm`, and any a user registers.

    from xformer import tasks

    @tasks.register("prefix_lm")
    class PrefixLM(tasks.Task):
      ...

See `xformer.tasks.base.Task` for what a task owns.
"""

from __future__ import annotations

# pylint: disable=unused-import
from xformer.tasks.base import Task, get, names, register  # noqa: F401

# The built-in tasks register themselves on import.
from xformer.tasks import lm, translation  # noqa: E402,F401  isort: skip
