"""Decoder-only LM on the embedded corpus (CPython's documentation prose), CPU minutes.

  python -m xformer.main --config=configs/lm_default.py --workdir=runs/lm_default

Args: variant, posemb (e.g. `--config=configs/lm_default.py:posemb=alibi`, or by flag:
`--config.model.posemb=alibi`).
"""

from xformer import config_lib


def get_config(arg=None):
  args = config_lib.parse_arg(arg, variant="lm_mini", posemb="sinusoidal")
  c = config_lib.common("lm")
  c.model = config_lib.model_section(
      args["variant"], args["posemb"], max_len=512,
      scan_unroll=12)  # No layer loop: faster steps on CPU (see configs/default.py).
  c.tokenizer.vocab_size = 4000
  c.tokenizer.model_type = "bpe"
  c.data.max_source_len = 128  # Unused by the LM.
  c.data.max_target_len = 128
  c.data.overlong = "truncate"  # Paragraphs longer than 128 tokens keep their first 128.
  c.batch_size = 32
  c.num_train_steps = 1000
  c.optimizer.warmup_steps = 200
  c.optimizer.lr_scale = 0.5
  c.checkpoint_every_steps = 250
  c.eval_every_steps = 250
  c.eval_examples = 0  # The whole validation split.
  return c
