"""Compile a config's steps for a TPU slice or GPU host without the hardware: fits? how fast?

  python -m xformer.compile --config=configs/wmt_base.py --target=v5p-8 --json=/tmp/c.json
  python -m xformer.compile --config=configs/wmt_big.py --target=v5p-8 --config.mesh.fsdp=4
  python -m xformer.compile --config=configs/wmt_base.py --target=h100x8   # needs .[cuda]

Prints per-device memory against the chip's HBM, FLOPs and, for TPU, libtpu's cost-model
estimate of the step time, tokens/s and MFU (estimates, not measurements; see
xformer/targets/compiler.py). Exit status 0: fits; 3: does not fit (the message says what to
change); 2: a bad flag, config or target.
"""

import json
import sys

from absl import app, flags
from ml_collections import config_flags

from xformer.runtime import cli, platforms

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (overrides: --config.x=y).",
                                          lock_config=True)
_TARGET = flags.DEFINE_string("target", None, "Cloud name: v4-8, v5p-8, v5litepod-16, v6e-8, "
                              "2xv5p-64, h100, h100x8, h200x8, a100x8.")
_JSON = flags.DEFINE_string("json", "", "Also write the report here (local path or gs://).")
_ESTIMATE = flags.DEFINE_bool("estimate", True, "TPU: also compile the unrolled step for the "
                              "time estimate when the layers run as a loop.")
flags.mark_flags_as_required(["config", "target"])


@cli.user_errors
def main(argv):
  del argv
  from etils import epath  # pylint: disable=import-outside-toplevel

  from xformer.targets import compiler, report  # pylint: disable=import-outside-toplevel
  result = compiler.compile_config(_CONFIG.value, _TARGET.value, estimate=_ESTIMATE.value)
  print(report.format_report(result), flush=True)
  if _JSON.value:
    epath.Path(_JSON.value).write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
  if not result["fits"]:
    print(report.remedy(result, _CONFIG.value), file=sys.stderr, flush=True)
    sys.exit(compiler.NO_FIT_EXIT_CODE)


if __name__ == "__main__":
  # Before jax starts a backend: compile-only devices for the target's platform.
  platforms.compile_only_environment(
      next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--target=")), ""))
  app.run(main, flags_parser=cli.parse_flags)
