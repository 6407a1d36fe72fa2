"""xformer: the Transformer of "Attention Is All You Need" in JAX/Flax, for research."""

from xformer import positional
from xformer import tasks
from xformer import variants
from xformer.model import DecoderOnlyLM, Transformer, init_cache, init_params
from xformer.variants import ModelConfig, variant

__version__ = "0.1.0"


def load(path: str, step: int | None = None, average_last: int = 1):
  """A trained run for a notebook: `xformer.load("runs/default").translate(["..."])`.

  See `xformer.bundle.load` (imported on first use: it pulls in orbax and grain).
  """
  from xformer import bundle  # pylint: disable=import-outside-toplevel
  return bundle.load(path, step=step, average_last=average_last)
