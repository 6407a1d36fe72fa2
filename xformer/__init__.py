"""xformer: the Transformer of "Attention Is All You Need" in JAX/Flax, for research.

Rooms: model/ (the Transformer, attention, decoding), positional/ (encodings by name), data/,
tasks/ (translation, lm), training/ (a run's steps, loss, optimiser), evaluation/, workdir/
(checkpoints, the run record, `load`), targets/ (compiling for TPU/GPU), runtime/ (platforms,
sharding, logs). The spine: main.py -> train.py, with config_lib.py.
"""

from xformer import model, positional, tasks  # noqa: F401  (the public API)
from xformer.model import (  # noqa: F401
    DecoderOnlyLM, ModelConfig, Transformer, init_cache, init_params, variant)

__version__ = "0.1.0"


def load(path: str, step: int | None = None, average_last: int = 1):
  """A trained run for a notebook: `xformer.load("runs/default").translate(["..."])`.

  See `xformer.workdir.bundle.load` (imported on first use: it pulls in orbax and grain).
  """
  from xformer.workdir import bundle  # pylint: disable=import-outside-toplevel
  return bundle.load(path, step=step, average_last=average_last)
