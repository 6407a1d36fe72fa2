"""The paper's big model on WMT14 English->German: 300K steps, dropout 0.3, average last 20.

  python -m xformer.main --config=configs/wmt_big.py --workdir=gs://BUCKET/runs/wmt_big

Args: posemb (e.g. `configs/wmt_big.py:posemb=rope`); the size is always the big variant.
"""

from configs import wmt_base
from xformer import config_lib


def get_config(arg=None):
  args = config_lib.parse_arg(arg, posemb="sinusoidal")
  c = wmt_base.get_config(f"variant=big,posemb={args['posemb']}")
  c.num_train_steps = 300_000
  c.keep_checkpoints = 20  # The paper averages the last 20 for big.
  c.checkpoint_every_steps = 2000
  return c
