"""Evaluate a finished run: loss, perplexity and the task's metrics over a split.

  python -m xformer.evaluate --workdir=runs/wmt_base --average_last=5 --split=test --beam=4

Prints the metrics and writes them as JSON into the workdir (xformer/evaluation/evaluator.py).
"""

from absl import app, flags

from xformer.evaluation import evaluator
from xformer.runtime import cli, host_memory

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (or one checkpoint step dir).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).")
_AVERAGE = flags.DEFINE_integer("average_last", 1, "Average this many newest checkpoints "
                                "(paper: 5).")
_SPLIT = flags.DEFINE_string("split", None, "Split to evaluate (default: the config's test split).")
_BEAM = flags.DEFINE_integer("beam", None, "Beam size (default: the run's config.decode.beam_size).")
_ALPHA = flags.DEFINE_float("alpha", None, "Length penalty (default: the run's, 0.6).")
_MAX_EXTRA = flags.DEFINE_integer("max_extra", None, "Output up to this many tokens past the "
                                  "source.")
_LIMIT = flags.DEFINE_integer("limit", 0, "Only the first N examples (0: all).")
_DATA_DIR = flags.DEFINE_string("data_dir", "", "Where the dataset is (default: the run's "
                                "data_dir).")
flags.mark_flag_as_required("workdir")


@cli.user_errors
def main(argv):
  del argv
  report = evaluator.evaluate_workdir(
      _WORKDIR.value, step=_STEP.value, average_last=_AVERAGE.value, split=_SPLIT.value,
      limit=_LIMIT.value, data_dir=_DATA_DIR.value, beam=_BEAM.value, alpha=_ALPHA.value,
      max_extra=_MAX_EXTRA.value)
  print(evaluator.format_report(report), flush=True)


if __name__ == "__main__":
  host_memory.reexec_with_tunables()
  app.run(main, flags_parser=cli.parse_flags)
