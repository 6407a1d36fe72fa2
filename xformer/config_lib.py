"""Configs: the sections every config file shares, their validation, and saved configs.

Config files (configs/*.py) are Python: `get_config(arg)` returns a ConfigDict (locked by the
flag that loads it), where `arg` is the text after the colon in
`--config=configs/default.py:posemb=rope,variant=base`. `validate(config)` runs once per start,
before any data is read or anything compiled, and returns the `ModelConfig`.

config.model holds `variant` (a size of model.VARIANTS) and every other ModelConfig field;
its size fields stay None unless set, so the variant decides them. `posemb_kw` holds one entry
per registered encoding with that encoding's arguments at their defaults, so that
`--config.model.posemb=rope --config.model.posemb_kw.rope.base=500` is typed and typo-checked.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import logging
from typing import Any, Sequence

import ml_collections
from ml_collections import config_dict

from xformer import errors, model, positional, tasks
from xformer.data import inputs
from xformer.model import decode, splash
from xformer.training import faults, losses, optim, profiling

VERSION = 2  # Of the config layout; 1: model.posemb_kw flat, sizes explicit (before Tasks).
NAN_POLICIES = ("fail", "skip")
_SIZE_TYPES = {"dropout": float}


def parse_arg(arg: str | None, **defaults: Any) -> dict[str, Any]:
  """'a=1,b=x' -> {'a': 1, 'b': 'x'} on top of `defaults`; unknown keys are refused."""
  out = dict(defaults)
  for part in filter(None, (arg or "").split(",")):
    key, sep, value = part.partition("=")
    if not sep or key not in defaults:
      raise errors.ConfigError(f"config arg {part!r}: expected key=value with key in "
                               f"{sorted(defaults)}.")
    out[key] = type(defaults[key])(value) if defaults[key] is not None else value
  return out


def load_file(path: str, arg: str | None = None,
              overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """`get_config(arg)` of a config file with `key=value` overrides ("model.posemb=rope"),
  locked: for scripts (sweeps, benchmarks) that build configs the way `--config` flags do."""
  spec = importlib.util.spec_from_file_location("xformer_config_file", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(arg)
  config.lock()
  for item in overrides:
    key, sep, text = item.partition("=")
    if not sep:
      raise errors.ConfigError(f"Override {item!r}: expected key=value.")
    *parents, last = key.split(".")
    try:
      node = config
      for name in parents:
        node = node[name]
      try:
        value = text if isinstance(node[last], str) else ast.literal_eval(text)
      except (ValueError, SyntaxError):
        value = text  # A plain string ("rope") for a field that is None now.
      node[last] = value
    except (KeyError, AttributeError, TypeError) as e:
      raise errors.ConfigError(f"Override {item!r}: {e}") from e
  return config


def model_section(variant: str, posemb: str, **fields: Any) -> ml_collections.ConfigDict:
  """config.model: the variant, every ModelConfig field but vocab_size (the tokenizer's), the
  size fields None (the variant's) unless given in `fields`."""
  section = ml_collections.ConfigDict()
  section.variant = variant
  for f in dataclasses.fields(model.ModelConfig):
    if f.name in model.SIZE_FIELDS:
      section[f.name] = config_dict.placeholder(_SIZE_TYPES.get(f.name, int))
    elif f.name == "head_dim":
      section[f.name] = config_dict.placeholder(int)
    elif f.name == "posemb_kw":
      section[f.name] = {name: positional.default_kwargs(name) for name in positional.names()}
    elif f.name != "vocab_size":
      section[f.name] = f.default
  section.posemb = posemb
  kwargs = fields.pop("posemb_kw", {})
  unknown = set(fields) - set(section)
  if unknown:
    raise errors.ConfigError(f"model_section: unknown model fields {sorted(unknown)}.")
  section.update(fields)
  for name, values in kwargs.items():
    section.posemb_kw[name].update(values)
  return section


def common(task: str) -> ml_collections.ConfigDict:
  """The sections every config shares, at their defaults."""
  c = ml_collections.ConfigDict()
  c.version = VERSION
  c.task = task
  c.seed = 0
  c.data = inputs.data_section(tasks.get(task).default_dataset)
  c.tokenizer = inputs.tokenizer_section()
  c.batch_size = 64  # Rows per step, all processes together.
  c.grad_accum_steps = 1
  c.num_train_steps = 1000
  c.label_smoothing = 0.1
  c.fused_loss = True  # losses.fused_cross_entropy; False: autodiff of losses.cross_entropy.
  # >0: the training loss projects to the vocabulary this many target positions at a time and
  # never holds the whole [B, T, V] logits (large vocabularies); must divide max_target_len.
  # -1: the whole target length as one chunk (whatever max_target_len is set to).
  # With fused_loss each chunk's gradient is computed in the forward pass (nothing recomputed:
  # training/projected_loss.py); without, autodiff recomputes each chunk's logits.
  c.loss_chunk = 0
  c.optimizer = optim.section()
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  # Adam's moments split over the data-parallel devices (ZeRO stage 1): each device updates a
  # slice of the parameters, which are then gathered; less memory and optimizer time.
  c.shard_optimizer_state = False
  c.checkpoint_every_steps = 500
  c.keep_checkpoints = 3
  c.async_checkpoints = True
  c.profile_steps = ""  # "START,COUNT": a jax.profiler trace into <workdir>/profile.
  c.stop_check_every_steps = 10  # Multi-process: agree on a SIGTERM every this many steps.
  c.init_from = ""  # Another run's workdir: start from its latest parameters.
  c.restore_step = -1  # Resume from this step instead of the latest (-1).
  c.nan_policy = "fail"
  c.max_consecutive_skips = 5
  # Drills: make steps fail on purpose (NaN loss, gradient spike); see xformer/training/faults.py.
  c.faults = ml_collections.ConfigDict(dataclasses.asdict(faults.Faults()))
  c.log_every_steps = 50
  c.eval_every_steps = 500
  c.eval_examples = 1000  # Validation examples for loss/perplexity (0 = the whole split).
  c.bleu_examples = 200  # Validation examples translated for BLEU during training.
  c.test_bleu_examples = 0  # Test examples translated at the end (0: all, -1: none).
  c.eval_batch_size = 128
  c.decode = ml_collections.ConfigDict(dataclasses.asdict(decode.Settings()))
  c.num_samples_to_print = 3
  return c


def model_config(config: ml_collections.ConfigDict, vocab_size: int) -> model.ModelConfig:
  """The ModelConfig of config.model (sizes from its variant) with vocabulary `vocab_size`."""
  section = config.model.to_dict()
  fields = {k: v for k, v in section.items() if k not in ("variant", "posemb_kw")
            and not (k in model.SIZE_FIELDS and v is None)}
  kwargs = section["posemb_kw"].get(section["posemb"], {})
  return model.variant(section["variant"], vocab_size=vocab_size, posemb_kw=kwargs, **fields)


def validate(config: ml_collections.ConfigDict) -> model.ModelConfig:
  """Every check that needs no data, no devices and no compile; returns the ModelConfig (with
  the requested vocabulary size until the tokenizer gives the real one). Raises ConfigError or
  UnknownNameError with the fix."""
  task = tasks.get(config.task)
  # Each section by the module that defines it, then what spans sections.
  inputs.check(config.data, config.tokenizer, task.data_kind)
  optim.check(config.optimizer)
  decode.Settings(**config.decode).check()
  faults.Faults(**config.faults)
  errors.check_choice("nan_policy", config.nan_policy, NAN_POLICIES)
  profiling.parse(config.profile_steps)
  cfg = model_config(config, config.tokenizer.vocab_size)
  task.check(cfg)
  _check_lengths(config, task, cfg)
  _check_counts(config)
  return cfg


def _check_lengths(config, task, cfg: model.ModelConfig) -> None:
  settings = decode.Settings(**config.decode)
  longest = task.longest_position(config.data, settings)
  if positional.get(cfg.posemb).LIMITED_TO_MAX_LEN and longest > cfg.max_len:
    raise errors.ConfigError(
        f"model.posemb={cfg.posemb!r} has a table of model.max_len={cfg.max_len} positions, but "
        f"this run reads sequences of up to {longest} tokens (data lengths, and for translation "
        f"max_source_len + decode.max_extra = {config.data.max_source_len} + "
        f"{settings.max_extra}). Set --config.model.max_len={longest} or shorten those.")
  limit = positional.get(cfg.posemb).position_limit(
      {**positional.default_kwargs(cfg.posemb), **dict(cfg.posemb_kw)})
  if limit is not None and max(longest, cfg.random_positions) > limit:
    raise errors.ConfigError(
        f"model.posemb={cfg.posemb!r} cannot represent positions past {limit} in float32, but "
        f"this run reaches {max(longest, cfg.random_positions)}.")
  if 0 < cfg.random_positions < longest:
    raise errors.ConfigError(
        f"model.random_positions={cfg.random_positions} must be at least the longest sequence "
        f"this run reads ({longest} tokens): it is the range the positions are drawn from.")
  if cfg.attention_impl in ("cudnn", "xla_lengths") and config.data.pack:
    raise errors.ConfigError(
        f"model.attention_impl={cfg.attention_impl!r} describes rows by their lengths, which "
        "packed rows do not have: set data.pack=False (or use attention_impl='xla').")
  if cfg.attention_impl == "splash":
    reason = splash.why_not(cfg.posemb, task.row_lengths(config.data))
    if reason:
      raise errors.ConfigError(f"model.attention_impl='splash' cannot apply: {reason}. Use "
                               "attention_impl='auto' (splash where it applies, else XLA).")
  chunk, rows = cfg.attention_chunk, task.row_lengths(config.data)
  if chunk and any(t % chunk for t in rows):
    raise errors.ConfigError(f"model.attention_chunk={chunk} must be 0 or divide the rows' "
                             f"lengths {list(rows)}.")
  if config.loss_chunk < losses.WHOLE_SEQUENCE or (
      config.loss_chunk > 0 and config.data.max_target_len % config.loss_chunk):
    raise errors.ConfigError(f"loss_chunk={config.loss_chunk} must be 0 (no chunks), -1 (one "
                             "chunk of the whole target length) or divide "
                             f"data.max_target_len={config.data.max_target_len}.")


def _check_counts(config) -> None:
  for key in ("num_train_steps", "batch_size", "log_every_steps", "checkpoint_every_steps",
              "eval_every_steps", "eval_batch_size", "grad_accum_steps"):
    if config[key] <= 0:
      raise errors.ConfigError(f"config.{key} must be positive, got {config[key]}.")
  if config.batch_size % config.grad_accum_steps:
    raise errors.ConfigError(f"batch_size={config.batch_size} is not divisible by "
                             f"grad_accum_steps={config.grad_accum_steps}.")


def check_mesh(config: ml_collections.ConfigDict, mesh_shape: dict[str, int],
               process_count: int) -> None:
  """Batch sizes the mesh must divide (after the mesh is built, before any data is read)."""
  rows = mesh_shape["data"] * mesh_shape["fsdp"]  # Devices a batch is split over.
  if config.batch_size % rows:
    raise errors.ConfigError(
        f"batch_size={config.batch_size} rows cannot be split over the mesh's {rows} data x "
        f"fsdp devices ({mesh_shape}): use a multiple of {rows}.")
  micro = config.batch_size // config.grad_accum_steps
  if micro % rows:  # Works, but each micro-batch is resharded: slow on accelerators.
    logging.warning("batch_size / grad_accum_steps = %d rows per micro-batch is not a multiple "
                    "of the %d batch devices: every micro-batch will be resharded.", micro, rows)
  shards = config.data.num_shards or process_count
  if shards % process_count or config.batch_size % shards:
    raise errors.ConfigError(
        f"data.num_shards={shards} must be a multiple of the {process_count} processes and "
        f"divide batch_size={config.batch_size}.")
