"""The data part of a run: dataset, tokenizer, token ids per split, training and eval batches.

What needs no data (model, mesh, jitted steps) is `xformer.run.Run`; a notebook or an
ahead-of-time compile builds that alone, training builds both.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Iterator

import jax
import ml_collections
import numpy as np

from xformer import errors
from xformer.data import datasets, pipeline, text_files, token_cache
from xformer.data import tokenizer as tokenizer_lib
from xformer.runtime.metric_writer import log_line


def data_section(dataset: str) -> ml_collections.ConfigDict:
  """config.data at its defaults, reading `dataset`."""
  return ml_collections.ConfigDict(dict(
      dataset=dataset,
      # files: JSON {split: [source, target] | [tsv] | [text files]} for the *_files datasets.
      # raw_dir: a real dataset's raw files at hand instead of the network (data/downloads.py).
      data_dir="", download=True, raw_dir="", files="", source_lang="en", target_lang="de",
      on_bad_line="skip", max_chars=10_000, max_source_len=64, max_target_len=64, pack=True,
      overlong="drop", pretokenize=True, eval_split="validation", test_split="test",
      # token_cache: tokenize each split once into a memory-mapped cache on local disk
      # (xformer/data/token_cache.py; under token_cache_dir, default ~/.cache/xformer/tokens)
      # instead of pretokenize's in-memory lists or tokenizing on the fly.
      token_cache=False, token_cache_dir="",
      # Logical data shards (0: one per process). Fix it to the largest process count you will
      # use and every topology trains on the same batch sequence.
      num_shards=0))


def tokenizer_section() -> ml_collections.ConfigDict:
  """config.tokenizer at its defaults (what it is trained with, and where it is cached)."""
  section = ml_collections.ConfigDict(dataclasses.asdict(tokenizer_lib.TokenizerSettings()))
  section.cache_dir = ""  # Default: <data_dir>/xformer_tokenizers.
  return section


def check(data: ml_collections.ConfigDict, tokenizer: ml_collections.ConfigDict,
          kind: str) -> None:
  """Validates config.data and config.tokenizer for a task reading `kind` data, without reading
  any: the dataset's name and kind, its splits, the policies by name."""
  spec = datasets.spec(data.dataset)
  if spec.kind != kind:
    raise errors.ConfigError(f"The task reads {kind} data, but data.dataset={data.dataset!r} is "
                             f"a {spec.kind} dataset.")
  splits = spec.split_names(data)
  for key in ("eval_split", "test_split"):
    if data[key] not in splits:
      raise errors.ConfigError(
          f"data.{key}={data[key]!r}: dataset {data.dataset!r} has no such split; it has "
          f"{list(splits)}. Set --config.data.{key}=<one of those>.")
  errors.check_choice("data.on_bad_line", data.on_bad_line, text_files.BAD_LINE_POLICIES)
  errors.check_choice("data.overlong", data.overlong, pipeline.OVERLONG_POLICIES)
  tokenizer_lib.settings_of(tokenizer)


def tokenizer_for(data: ml_collections.ConfigDict, tokenizer: ml_collections.ConfigDict,
                  dataset: datasets.Dataset, workdir: str | None) -> tokenizer_lib.Tokenizer:
  """The run's tokenizer: the workdir's, the cache's, or trained now (see `.origin`)."""
  cache_dir = tokenizer.cache_dir or os.path.join(datasets.data_root(data), "xformer_tokenizers")
  return tokenizer_lib.get_or_train(lambda n: dataset.sample_texts("train", n),
                                    dataset.fingerprint, tokenizer_lib.settings_of(tokenizer),
                                    cache_dir, workdir, log_line,
                                    writer=jax.process_index() == 0)


class Inputs:
  """Everything a run reads (see the module docstring).

  Attributes:
    dataset: the named dataset's splits. tokenizer: the run's tokenizer.
    lengths: maximum source / target lengths. seconds: how long the dataset and the tokenizer
      took to get ready (printed at start).
  """

  def __init__(self, data: ml_collections.ConfigDict, tokenizer: ml_collections.ConfigDict,
               task, workdir: str | None, *, batch_size: int, eval_batch_size: int, seed: int):
    """Args: config.data and config.tokenizer; the run's task (it lays out batches); the run
    directory (its tokenizer is reused) or None; rows per global training / eval batch; the
    shuffling seed."""
    self.data, self.task = data, task
    self.batch_size, self.eval_batch_size, self.seed = batch_size, eval_batch_size, seed
    start = time.time()
    self.dataset_dir = datasets.data_root(data)
    self.dataset = datasets.load(data)
    dataset_s = time.time() - start
    if self.dataset.kind != task.data_kind:
      raise errors.ConfigError(f"Task {task.name!r} reads {task.data_kind} data, but "
                               f"{data.dataset!r} is a {self.dataset.kind} dataset.")
    start = time.time()
    self.tokenizer = tokenizer_for(data, tokenizer, self.dataset, workdir)
    self.seconds = {"dataset": dataset_s, "tokenizer": time.time() - start}
    self.lengths = pipeline.Lengths(data.max_source_len, data.max_target_len)
    self._encoded: dict[str, pipeline.EncodedSource] = {}

  @classmethod
  def of_config(cls, config: ml_collections.ConfigDict, task, workdir: str | None) -> "Inputs":
    """The inputs of a run's whole config: the sections above handed down from it."""
    return cls(config.data, config.tokenizer, task, workdir, batch_size=config.batch_size,
               eval_batch_size=config.eval_batch_size, seed=config.seed)

  @property
  def target_lang(self) -> str:
    return self.data.target_lang

  def encoded(self, split: str) -> pipeline.EncodedSource | token_cache.TokenCache:
    """Token ids of a split: from the token cache (data.token_cache), tokenized once into
    memory (data.pretokenize), or tokenized on each access."""
    data = self.data
    if split in self._encoded:
      return self._encoded[split]
    if data.token_cache:
      source = token_cache.for_split(data.token_cache_dir, self.dataset, self.tokenizer, split,
                                     say=log_line)
    else:
      source = pipeline.EncodedSource(self.dataset.split(split), self.tokenizer,
                                      self.dataset.keys, eager=data.pretokenize)
    self._encoded[split] = source
    return source

  def train_iterator(self) -> tuple[pipeline.ShardedBatches, pipeline.OverlongCounter]:
    """This process's rows of every global batch (see pipeline.ShardedBatches)."""
    data = self.data
    return pipeline.sharded_train_iterator(
        self.encoded("train"), task=self.task, lengths=self.lengths,
        batch_size=self.batch_size, num_shards=data.num_shards or jax.process_count(),
        seed=self.seed, pack=data.pack, overlong=data.overlong,
        process_index=jax.process_index(), process_count=jax.process_count())

  def eval_batches(self, split: str, limit: int | None) -> Iterator[dict[str, np.ndarray]]:
    """Every example of `split` (its first `limit`), unpacked, in eval_batch_size rows."""
    return pipeline.eval_batches(self.encoded(split), task=self.task, lengths=self.lengths,
                                 batch_size=self.eval_batch_size, limit=limit or None)[0]

  def describe(self) -> dict[str, Any]:
    """Split sizes and the tokenizer, for the start-up summary."""
    return {"dataset": self.dataset.name,
            "splits": {name: len(source) for name, source in self.dataset.splits.items()},
            "vocab_size": self.tokenizer.vocab_size}
