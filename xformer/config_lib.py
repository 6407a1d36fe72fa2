"""Shared pieces of the config files: the common sections, arg parsing, validation.

Config files (configs/*.py) are Python: `get_config(arg)` returns a locked ConfigDict, where
`arg` is the text after the colon in `--config=configs/default.py:posemb=rope,variant=base`.
Everything is validated by `validate()` before any data is built or anything compiled.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections

from xformer import optim, positional, variants
from xformer.data import datasets, pipeline, text_files, tokenizer

TASKS = ("translation", "lm")
NAN_POLICIES = ("fail", "skip")
MODEL_EXTRA = ("variant",)  # Config-only keys of config.model (not ModelConfig fields).


def parse_arg(arg: str | None, **defaults: Any) -> dict[str, Any]:
  """'a=1,b=x' -> {'a': 1, 'b': 'x'} on top of `defaults`; unknown keys are refused."""
  out = dict(defaults)
  for part in filter(None, (arg or "").split(",")):
    key, sep, value = part.partition("=")
    if not sep or key not in defaults:
      raise ValueError(f"config arg {part!r}: expected key=value with key in {sorted(defaults)}.")
    out[key] = type(defaults[key])(value) if defaults[key] is not None else value
  return out


def model_section(variant: str, posemb: str, **overrides: Any) -> ml_collections.ConfigDict:
  """config.model: every ModelConfig field (vocab_size comes from the tokenizer), plus variant.

  The encoding's own keyword arguments are pre-filled with their defaults, so that
  `--config.model.posemb_kw.base=500` is a typed, typo-checked override.
  """
  fields = dataclasses.asdict(variants.variant(variant, posemb=posemb, **overrides))
  fields.pop("vocab_size")
  cls = positional.get(posemb)
  fields["posemb_kw"] = {f.name: f.default for f in dataclasses.fields(cls)
                         if f.name in positional.kwarg_names(posemb)}
  fields["posemb_kw"].update(dict(overrides.get("posemb_kw", {})))
  section = ml_collections.ConfigDict(fields)
  section.variant = variant
  section.src_vocab_size = ml_collections.config_dict.placeholder(int)
  section.head_dim = ml_collections.config_dict.placeholder(int)
  section.attention_impl = ml_collections.config_dict.placeholder(str)
  return section


def common(task: str) -> ml_collections.ConfigDict:
  """The sections every config shares, at their defaults."""
  c = ml_collections.ConfigDict()
  c.task = task
  c.seed = 0
  c.data = ml_collections.ConfigDict(dict(
      dataset="xformer_translation" if task == "translation" else "xformer_pydoc",
      # files: JSON {split: [source, target] | [tsv] | [text files]} for the *_files datasets.
      data_dir="", download=True, files="", source_lang="en", target_lang="de",
      on_bad_line="skip", max_chars=10_000, max_source_len=64, max_target_len=64, pack=True,
      overlong="drop", pretokenize=True, eval_split="validation", test_split="test",
      # Logical data shards (0: one per process). Fix it to the largest process count you will
      # use and every topology trains on the same batch sequence.
      num_shards=0))
  c.tokenizer = ml_collections.ConfigDict(dataclasses.asdict(tokenizer.TokenizerSettings()))
  c.tokenizer.cache_dir = ""  # Default: <data_dir>/xformer_tokenizers.
  c.batch_size = 64  # Rows per step, all processes together.
  c.grad_accum_steps = 1
  c.num_train_steps = 1000
  c.label_smoothing = 0.1
  # >0: the training loss projects to the vocabulary this many target positions at a time and
  # never holds the whole [B, T, V] logits (large vocabularies); must divide max_target_len.
  c.loss_chunk = 0
  c.optimizer = ml_collections.ConfigDict(dict(
      schedule="rsqrt", warmup_steps=4000, lr_scale=1.0, peak_lr=1e-3, b1=0.9, b2=0.98, eps=1e-9,
      weight_decay=0.0, clip_grad_norm=0.0))
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  c.checkpoint_every_steps = 500
  c.keep_checkpoints = 3
  c.async_checkpoints = True
  c.init_from = ""  # Another run's workdir: start from its latest parameters.
  c.restore_step = -1  # Resume from this step instead of the latest (-1).
  c.nan_policy = "fail"
  c.max_consecutive_skips = 5
  # Drills: make steps fail on purpose (NaN loss, gradient spike); see steps.Faults.
  c.faults = ml_collections.ConfigDict(dict(nan_at_step=-1, nan_steps=1, spike_at_step=-1,
                                            spike=1e6))
  c.log_every_steps = 50
  c.eval_every_steps = 500
  c.eval_examples = 1000  # Validation examples for loss/perplexity (0 = the whole split).
  c.bleu_examples = 200  # Validation examples translated for BLEU during training.
  c.test_bleu_examples = 0  # Test examples translated at the end (0: all, -1: none).
  c.eval_batch_size = 128
  c.decode = ml_collections.ConfigDict(dict(beam_size=1, alpha=0.6, max_extra=50))
  c.num_samples_to_print = 3
  return c


def _choice(name: str, value: Any, valid) -> None:
  if value not in valid:
    raise ValueError(f"config.{name}={value!r} is not valid; choose one of {list(valid)}.")


def model_config(config: ml_collections.ConfigDict, vocab_size: int) -> variants.ModelConfig:
  """The ModelConfig of `config.model` with the tokenizer's vocabulary size."""
  fields = {k: v for k, v in config.model.to_dict().items() if k not in MODEL_EXTRA}
  return variants.ModelConfig(vocab_size=vocab_size, **fields)


def validate(config: ml_collections.ConfigDict) -> None:
  """Every check that needs no data and no compile. Raises ValueError / KeyError with the fix."""
  _choice("task", config.task, TASKS)
  datasets.DATASETS.get(config.data.dataset)  # KeyError listing valid names.
  _choice("data.on_bad_line", config.data.on_bad_line, text_files.BAD_LINE_POLICIES)
  _choice("data.overlong", config.data.overlong, pipeline.OVERLONG_POLICIES)
  _choice("optimizer.schedule", config.optimizer.schedule, optim.SCHEDULES)
  _choice("nan_policy", config.nan_policy, NAN_POLICIES)
  _choice("tokenizer.model_type", config.tokenizer.model_type, tokenizer.MODEL_TYPES)
  model_config(config, vocab_size=8)  # Validates posemb, its kwargs, norms, dtypes...
  if config.model.posemb == "learned":
    longest = config.data.max_target_len if config.task == "lm" else max(
        config.data.max_source_len, config.data.max_target_len)
    if longest > config.model.max_len:
      raise ValueError(f"model.posemb='learned' has a table of model.max_len="
                       f"{config.model.max_len} positions but data lengths go to {longest}.")
  if config.model.attention_impl in ("cudnn", "xla_lengths") and config.data.pack:
    raise ValueError(f"model.attention_impl={config.model.attention_impl!r} describes rows by "
                     "their lengths, which packed rows do not have: set data.pack=False (or "
                     "use the default XLA attention).")
  if config.loss_chunk < 0 or (config.loss_chunk and config.data.max_target_len %
                                config.loss_chunk):
    raise ValueError(f"loss_chunk={config.loss_chunk} must be 0 or divide "
                     f"data.max_target_len={config.data.max_target_len}.")
  if config.batch_size % config.grad_accum_steps:
    raise ValueError(f"batch_size={config.batch_size} is not divisible by "
                     f"grad_accum_steps={config.grad_accum_steps}.")
  for key in ("num_train_steps", "batch_size", "log_every_steps", "checkpoint_every_steps",
              "eval_every_steps"):
    if config[key] <= 0:
      raise ValueError(f"config.{key} must be positive, got {config[key]}.")
