"""The main job: `python -m xformer.main --config=configs/default.py --workdir=runs/default`.

Overrides: `--config.num_train_steps=500 --config.model.posemb=rope
--config.model.posemb_kw.rope.base=500`; config args after a colon:
`--config=configs/wmt_base.py:variant=big`. Running the same command again resumes.
A mistake of the user's (a config value, an unwritable workdir, a bad mesh, misaligned files)
ends in one line on stderr and exit status 2; --verbosity=1 shows its traceback.
"""

from absl import app, flags
from ml_collections import config_flags

from xformer import train
from xformer.runtime import cli, host_memory

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, logs, tokenizer).")
_FORCE = flags.DEFINE_bool("force_takeover", False, "Take the workdir over from a run that "
                           "still holds its lease (see xformer/workdir/lease.py).")
flags.mark_flags_as_required(["config", "workdir"])


@cli.user_errors
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  train.train_and_evaluate(_CONFIG.value, _WORKDIR.value, force_takeover=_FORCE.value)


if __name__ == "__main__":
  host_memory.reexec_with_tunables()
  app.run(main, flags_parser=cli.parse_flags)
