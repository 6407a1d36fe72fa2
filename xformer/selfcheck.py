"""Checks a new machine in its first minutes: the config's real train step, timed, and numerics.

  python -m xformer.selfcheck --config=configs/wmt_base.py --steps=20 --json=/tmp/selfcheck.json

On whatever backend is present (TPU, GPU, CPU): compile time, median step time, tokens/s, MFU,
peak device memory against the compiler's figure, on TPU the cost model's estimate and the
ratio measured / estimated; then numerics against references (xformer/checks/numerics.py).
Prints a table, writes the JSON (`--json`, local or gs://), exits 1 when a check fails.
Figures are measurements of this machine; the estimate is the compiler's.
"""

import json
import sys

from absl import app, flags
from ml_collections import config_flags

from xformer.runtime import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (overrides: --config.x=y).",
                                          lock_config=True)
_STEPS = flags.DEFINE_integer("steps", 10, "Timed train steps (after 2 warm-up steps).")
_JSON = flags.DEFINE_string("json", "", "Also write the result here (local path or gs://).")
flags.mark_flags_as_required(["config"])

FAILED_EXIT_CODE = 1


@cli.user_errors
def main(argv):
  del argv
  from etils import epath  # pylint: disable=import-outside-toplevel

  from xformer.checks import numerics, report, step_timing  # pylint: disable=import-outside-toplevel
  run = step_timing.build_run(_CONFIG.value)
  timing, state = step_timing.measure(run, max(_STEPS.value, 1))
  checks = numerics.run_all(run, state.params)
  path = config_flags.get_config_filename(flags.FLAGS["config"])
  result = report.assemble(run, path, timing, checks)
  print(report.table(result), flush=True)
  if _JSON.value:
    epath.Path(_JSON.value).write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
  if not result["ok"]:
    sys.exit(FAILED_EXIT_CODE)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
