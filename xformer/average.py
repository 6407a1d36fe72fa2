"""Average the parameters of a run's last checkpoints into a new run directory.

  python -m xformer.average --workdir=runs/wmt_base --last=5 --out=runs/wmt_base_avg5

The paper averages the last 5 (base) or 20 (big) checkpoints. The output directory is a
complete run directory (checkpoint, config, tokenizer): evaluate it, load it in a notebook, or
start another run from it with --config.init_from.
"""

import os
import shutil

import jax
from absl import app, flags

from xformer.checkpoint import Checkpointer, average_params

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory to average.")
_LAST = flags.DEFINE_integer("last", 5, "Number of newest checkpoints to average.")
_OUT = flags.DEFINE_string("out", None, "New run directory for the averaged checkpoint.")
flags.mark_flags_as_required(["workdir", "out"])


def average_run(workdir: str, out: str, last: int = 5) -> int:
  """Writes the average of `workdir`'s last `last` checkpoints to `out`; returns its step."""
  source = Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
  if source.latest_step() is None:
    raise FileNotFoundError(f"No checkpoints in {workdir}.")
  newest = source.latest_step()
  abstract = source.item_metadata(newest, "params")
  abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), abstract)
  params, steps = average_params(source.directory, abstract, last)
  opt_meta = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype),
                          source.item_metadata(newest, "opt_state"))
  _, opt_state = source.restore(newest, abstract, opt_meta, None, None, None)
  config = source.restore_config(newest)
  source.close()
  os.makedirs(out, exist_ok=True)
  for name in ("tokenizer.model", "tokenizer.json"):
    if os.path.exists(os.path.join(workdir, name)):
      shutil.copy(os.path.join(workdir, name), os.path.join(out, name))
  target = Checkpointer(os.path.join(out, "checkpoints"), keep=None, async_save=False)
  target.save(newest, params, opt_state, None, {**config, "averaged_steps": steps})
  target.close()
  print(f"Averaged steps {steps} of {workdir} into {out} (step {newest}).")
  return newest


def main(argv):
  del argv
  average_run(_WORKDIR.value, _OUT.value, _LAST.value)


if __name__ == "__main__":
  app.run(main)
