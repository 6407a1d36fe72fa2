"""Decoder-only LM on the One Billion Word benchmark (lm1b, TFDS; needs the network once).

  python -m xformer.main --config=configs/lm1b.py --workdir=gs://BUCKET/runs/lm1b
"""

from xformer import config_lib


def get_config(arg=None):
  args = config_lib.parse_arg(arg, variant="lm_base", posemb="rope")
  c = config_lib.common("lm")
  c.model = config_lib.model_section(args["variant"], args["posemb"], norm="pre",
                                     activation="gelu", max_len=512)
  c.model.dtype = "bfloat16"
  c.model.attention_impl = "auto"  # Splash on TPU where it applies (xformer/model/splash.py).
  # q, k, v in three products: on v5p-8 (estimates) 28.08 vs 30.03 ms for this config's step,
  # 52.17 vs 54.71 ms for the 100M LM at T=2048 (benchmarks/README.md).
  c.model.fused_qkv = False
  # Plain autodiff of the loss and tied projection: the TPU compiler prefers it here too (fewer
  # temporaries per device; benchmarks/README.md, "The loss paths on TPU").
  c.fused_loss = False
  c.shard_optimizer_state = True  # Adam's moments split over the data-parallel chips (ZeRO-1).
  c.model.fused_output = False
  c.data.dataset = "lm1b"
  c.data.eval_split = "test"  # lm1b has train and test only (its held-out set).
  c.data.max_target_len = 256
  c.data.pretokenize = False
  c.data.token_cache = True  # 30M sentences: tokenized once, memory-mapped.
  c.data.overlong = "truncate"
  c.tokenizer.vocab_size = 32_000
  c.tokenizer.sample_size = 5_000_000
  c.batch_size = 256
  c.num_train_steps = 100_000
  c.optimizer.schedule = "cosine"
  c.optimizer.peak_lr = 3e-4
  c.optimizer.warmup_steps = 2000
  c.optimizer.weight_decay = 0.1
  c.optimizer.clip_grad_norm = 1.0
  c.label_smoothing = 0.0
  c.checkpoint_every_steps = 2000
  c.eval_every_steps = 5000
  c.eval_examples = 10_000
  return c
