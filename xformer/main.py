"""The main job: `python -m xformer.main --config=configs/default.py --workdir=runs/default`.

Overrides: `--config.num_train_steps=500 --config.model.posemb=rope`; config args after a colon:
`--config=configs/wmt_base.py:variant=big`. Running the same command again resumes.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from xformer import config_lib, host_memory, train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, logs, tokenizer).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  try:
    config_lib.validate(_CONFIG.value)
  except (ValueError, KeyError) as e:  # A config mistake: the message, not a traceback.
    raise app.UsageError(str(e).strip('"')) from e
  train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  host_memory.reexec_with_tunables()
  app.run(main)
