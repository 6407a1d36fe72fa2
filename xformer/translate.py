"""Translate lines of text with a trained run.

  echo "the old poet sings ." | python -m xformer.translate --workdir=runs/default
  python -m xformer.translate --workdir=runs/default --input=src.txt --output=hyp.txt --beam=4

One translation per input line, in order (empty lines give empty lines). --nbest prints every
beam hypothesis as `score<TAB>text`, with a blank line after each input.
"""

import sys

from absl import app, flags

from xformer.runtime import cli, host_memory
from xformer.workdir import bundle

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (or one checkpoint step dir).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).")
_AVERAGE = flags.DEFINE_integer("average_last", 1, "Average this many newest checkpoints.")
_BEAM = flags.DEFINE_integer("beam", 4, "Beam size; 1 is greedy.")
_ALPHA = flags.DEFINE_float("alpha", None, "Length penalty (default: the run's, 0.6).")
_NBEST = flags.DEFINE_boolean("nbest", False, "Print all beam hypotheses with scores.")
_INPUT = flags.DEFINE_string("input", "-", "Input file, '-' for stdin.")
_OUTPUT = flags.DEFINE_string("output", "-", "Output file, '-' for stdout.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Sentences per decoding batch.")
flags.mark_flag_as_required("workdir")


def translate_lines(b: bundle.Bundle, lines: list[str], out, batch_size: int, **kwargs) -> None:
  """Writes one translation per line of `lines` (kwargs go to Bundle.translate)."""
  todo = [i for i, line in enumerate(lines) if line.strip()]
  results = b.translate([lines[i].strip() for i in todo], batch_size=batch_size, **kwargs)
  by_line = dict(zip(todo, results))
  for i in range(len(lines)):
    result = by_line.get(i, [] if kwargs.get("nbest") else "")
    if kwargs.get("nbest"):
      out.write("".join(f"{score:.4f}\t{text}\n" for text, score in result) + "\n")
    else:
      out.write(result + "\n")


@cli.user_errors
def main(argv):
  del argv
  b = bundle.load(_WORKDIR.value, step=_STEP.value, average_last=_AVERAGE.value)
  src = sys.stdin if _INPUT.value == "-" else open(_INPUT.value, encoding="utf-8")
  lines = [line.rstrip("\n") for line in src]
  out = sys.stdout if _OUTPUT.value == "-" else open(_OUTPUT.value, "w", encoding="utf-8")
  translate_lines(b, lines, out, _BATCH.value, beam=_BEAM.value, alpha=_ALPHA.value,
                  nbest=_NBEST.value)
  out.flush()


if __name__ == "__main__":
  host_memory.reexec_with_tunables()
  app.run(main, flags_parser=cli.parse_flags)
