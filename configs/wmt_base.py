"""The paper's base model on WMT14 English->German (Vaswani et al. 2017, Table 3).

  python -m xformer.main --config=configs/wmt_base.py --workdir=gs://BUCKET/runs/wmt_base

Shared ~37K vocabulary, ~25K source + ~25K target tokens per step, 100K steps, warmup 4000,
label smoothing 0.1, dropout 0.1, checkpoint averaging of the last 5. Needs the network once to
prepare WMT14 with TFDS (array_record). Args: variant (base|big), posemb.
"""

from xformer import config_lib


def get_config(arg=None):
  args = config_lib.parse_arg(arg, variant="base", posemb="sinusoidal")
  c = config_lib.common("translation")
  # max_len covers decoding: sources of 256 tokens get outputs of up to 256 + 50 (a learned
  # position table must have a row for each).
  c.model = config_lib.model_section(args["variant"], args["posemb"], max_len=306)
  c.model.dtype = "bfloat16"
  c.model.attention_impl = "auto"  # Splash on TPU where it applies (xformer/model/splash.py).
  # The layer stacks unrolled: the step holds far fewer temporaries than under a layer loop
  # (whose stacked residuals XLA cannot recompute) and the cost model prices it as compiled,
  # at the price of a slower compile (figures: benchmarks/README.md, "TPU and GPU estimates").
  # Remat needs the loop: set model.scan_unroll=1 with model.remat.
  c.model.scan_unroll = 6
  # The output projection and the loss in one chunk of the whole target length, the gradient
  # formed in the forward pass (training/projected_loss.py): no [B, T, V] logits kept, a
  # shorter estimated step and fewer temporaries than autodiff (benchmarks/README.md).
  c.fused_loss = True
  c.loss_chunk = -1
  # Where the whole logits are formed (evaluation): autodiff's tied projection, fewer
  # temporaries on TPU than the written-out one ("The loss paths on TPU").
  c.model.fused_output = False
  c.data.dataset = "wmt14_translate/de-en"
  c.data.source_lang, c.data.target_lang = "en", "de"  # English to German, as in the paper.
  c.data.eval_split = "validation"  # newstest2013
  c.data.test_split = "test"  # newstest2014
  c.data.max_source_len = 256
  c.data.max_target_len = 256
  c.data.pretokenize = False  # 4.5M pairs: not as Python lists in memory, but
  c.data.token_cache = True  # tokenized once into a memory-mapped cache on each host.
  c.tokenizer.vocab_size = 37_000
  c.tokenizer.model_type = "bpe"  # The paper used byte-pair encoding.
  c.tokenizer.sample_size = 10_000_000
  c.batch_size = 96  # 96 packed rows x 256 = 24.6K target (and source) token slots.
  c.num_train_steps = 100_000
  c.optimizer.warmup_steps = 4000
  c.label_smoothing = 0.1
  c.checkpoint_every_steps = 2000
  c.keep_checkpoints = 5  # The paper averages the last 5.
  c.eval_every_steps = 5000
  c.eval_examples = 0
  c.bleu_examples = 500
  c.decode.beam_size = 4
  c.decode.alpha = 0.6
  c.eval_batch_size = 256
  c.mesh.data = -1
  # Adam's moments split over the data-parallel chips (ZeRO-1): less memory per chip and a
  # shorter estimated step (benchmarks/README.md); more so for wmt_big.
  c.shard_optimizer_state = True
  return c
