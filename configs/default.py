"""The embedded translation task, sized to train well in minutes on a 2-core CPU.

  python -m xformer.main --config=configs/default.py --workdir=runs/default

Args after the colon: variant (a size of xformer.variants.VARIANTS), posemb (positional
encoding), e.g. `--config=configs/default.py:posemb=rope`. Any field can be overridden by flag:
--config.model.posemb=rope --config.model.posemb_kw.rope.base=500 --config.batch_size=32.
"""

from xformer import config_lib


def get_config(arg=None):
  args = config_lib.parse_arg(arg, variant="mini", posemb="sinusoidal")
  c = config_lib.common("translation")
  c.model = config_lib.model_section(
      args["variant"], args["posemb"], max_len=128,
      # No layer loop: faster CPU steps for a little more compile (benchmarks/README.md). Set
      # scan_unroll=1 for remat or to save activation memory.
      scan_unroll=6)
  # BPE with 2,000 pieces keeps most words whole: 13 tokens per sentence on average (a unigram
  # model of the same size gives 21, i.e. 60% more compute per sentence).
  c.tokenizer.vocab_size = 2000
  c.tokenizer.model_type = "bpe"
  c.tokenizer.sample_size = 50_000
  c.data.max_source_len = 64
  c.data.max_target_len = 64
  c.batch_size = 64
  c.num_train_steps = 450
  c.optimizer.warmup_steps = 400
  c.optimizer.lr_scale = 0.5  # Peak lr 0.5 * 128^-0.5 * 400^-0.5 = 2.2e-3.
  c.checkpoint_every_steps = 150
  c.eval_every_steps = 150
  c.log_every_steps = 50
  c.eval_examples = 1000
  c.bleu_examples = 200
  c.test_bleu_examples = 0  # The whole test split (2,000 sentences) at the end.
  c.eval_batch_size = 250
  return c
