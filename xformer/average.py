"""Average the parameters of a run's last checkpoints into a new run directory.

  python -m xformer.average --workdir=runs/wmt_base --last=5 --out=runs/wmt_base_avg5

The paper averages the last 5 (base) or 20 (big) checkpoints. The output directory is a
complete run directory (checkpoint, config, tokenizer), local or gs://: evaluate it, load it in
a notebook, or start another run from it with --config.init_from.
"""

from absl import app, flags

from xformer.runtime import cli
from xformer.workdir import averaging

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory to average.")
_LAST = flags.DEFINE_integer("last", 5, "Number of newest checkpoints to average.")
_OUT = flags.DEFINE_string("out", None, "New run directory for the averaged checkpoint.")
flags.mark_flags_as_required(["workdir", "out"])


@cli.user_errors
def main(argv):
  del argv
  averaging.average_run(_WORKDIR.value, _OUT.value, _LAST.value)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
