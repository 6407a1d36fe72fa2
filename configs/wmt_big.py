"""The paper's big model on WMT14 English->German: 300K steps, dropout 0.3, average last 20.

  python -m xformer.main --config=configs/wmt_big.py --workdir=gs://BUCKET/runs/wmt_big
"""

import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "wmt_base", os.path.join(os.path.dirname(__file__), "wmt_base.py"))
wmt_base = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(wmt_base)


def get_config(arg=None):
  c = wmt_base.get_config(arg or "variant=big")
  c.num_train_steps = 300_000
  c.keep_checkpoints = 20  # The paper averages the last 20 for big.
  c.checkpoint_every_steps = 2000
  return c
