"""Average the parameters of a run's last checkpoints into a new run directory (the library
behind `python -m xformer.average`).

The paper averages the last 5 (base) or 20 (big) checkpoints. The output directory is a
complete run directory (checkpoint, config, tokenizer), local or gs://: evaluate it, load it in
a notebook, or start another run from it with --config.init_from.
"""

from typing import Any

from absl import logging
from etils import epath
import jax
import numpy as np

from xformer import errors
from xformer.workdir.checkpoint import Checkpointer

TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json")


def average_run(workdir: str, out: str, last: int = 5) -> int:
  """Writes the average of `workdir`'s last `last` checkpoints to `out`; returns its step."""
  source = Checkpointer(str(epath.Path(workdir) / "checkpoints"), read_only=True)
  newest = source.latest_step()
  if newest is None:
    raise errors.UserError(f"No checkpoints in {workdir}.")
  shapes = lambda item: jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype),  # noqa
                                     source.item_metadata(newest, item))
  params, steps = average_params(source.directory, shapes("params"), last)
  _, opt_state = source.restore(newest, shapes("params"), shapes("opt_state"), None, None, None)
  config = source.restore_config(newest)
  source.close()
  for name in TOKENIZER_FILES:
    if (epath.Path(workdir) / name).exists():
      (epath.Path(out) / name).parent.mkdir(parents=True, exist_ok=True)
      (epath.Path(workdir) / name).copy(epath.Path(out) / name, overwrite=True)
  target = Checkpointer(str(epath.Path(out) / "checkpoints"), keep=None, async_save=False)
  target.save(newest, params, opt_state, None, {**config, "averaged_steps": steps})
  target.close()
  print(f"Averaged steps {steps} of {workdir} into {out} (step {newest}).")
  return newest


def average_params(directory: str, abstract_params: Any, last: int = 5,
                   steps: list[int] | None = None) -> tuple[Any, list[int]]:
  """Mean of the parameters of the last `last` checkpoints (the paper averages 5 or 20), or of
  the given `steps`."""
  ckpt = Checkpointer(directory, read_only=True)
  steps = ckpt.steps()[-last:] if steps is None else steps
  if not steps:
    raise FileNotFoundError(f"No checkpoints in {directory}.")
  total = None
  for step in steps:
    params = jax.tree.map(np.asarray, ckpt.restore_params(step, abstract_params))
    total = params if total is None else jax.tree.map(np.add, total, params)
  ckpt.close()
  logging.info("Averaged the parameters of steps %s.", steps)
  return jax.tree.map(lambda x: (x / len(steps)).astype(x.dtype), total), steps
