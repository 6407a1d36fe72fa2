"""The data part of a run: dataset, tokenizer, token ids per split, training and eval batches.

What needs no data (model, mesh, jitted steps) is `xformer.run.Run`; a notebook or an
ahead-of-time compile builds that alone, training builds both.
"""

from __future__ import annotations

import os
import time
from typing import Any, Iterator

import jax
import ml_collections
import numpy as np

from xformer import errors
from xformer.data import datasets, pipeline, token_cache
from xformer.data import tokenizer as tokenizer_lib
from xformer.runtime.metric_writer import log_line


def tokenizer_for(config: ml_collections.ConfigDict, dataset: datasets.Dataset,
                  workdir: str | None) -> tokenizer_lib.Tokenizer:
  """The run's tokenizer: the workdir's, the cache's, or trained now (see `.origin`)."""
  settings = tokenizer_lib.TokenizerSettings(**{
      k: v for k, v in config.tokenizer.to_dict().items() if k != "cache_dir"})
  cache_dir = config.tokenizer.cache_dir or os.path.join(datasets.data_root(config.data),
                                                         "xformer_tokenizers")
  return tokenizer_lib.get_or_train(lambda n: dataset.sample_texts("train", n),
                                    dataset.fingerprint, settings, cache_dir, workdir, log_line)


class Inputs:
  """Everything a run reads (see the module docstring).

  Attributes:
    dataset: the named dataset's splits. tokenizer: the run's tokenizer.
    lengths: maximum source / target lengths. seconds: how long the dataset and the tokenizer
      took to get ready (printed at start).
  """

  def __init__(self, config: ml_collections.ConfigDict, task, workdir: str | None):
    self.config, self.task = config, task
    start = time.time()
    self.dataset_dir = datasets.data_root(config.data)
    self.dataset = datasets.load(config.data)
    dataset_s = time.time() - start
    if self.dataset.kind != task.data_kind:
      raise errors.ConfigError(f"config.task={config.task!r} reads {task.data_kind} data, but "
                               f"{config.data.dataset!r} is a {self.dataset.kind} dataset.")
    start = time.time()
    self.tokenizer = tokenizer_for(config, self.dataset, workdir)
    self.seconds = {"dataset": dataset_s, "tokenizer": time.time() - start}
    self.lengths = pipeline.Lengths(config.data.max_source_len, config.data.max_target_len)
    self._encoded: dict[str, pipeline.EncodedSource] = {}

  @property
  def target_lang(self) -> str:
    return self.config.data.target_lang

  def encoded(self, split: str) -> pipeline.EncodedSource | token_cache.TokenCache:
    """Token ids of a split: from the token cache (data.token_cache), tokenized once into
    memory (data.pretokenize), or tokenized on each access."""
    data = self.config.data
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
    data = self.config.data
    return pipeline.sharded_train_iterator(
        self.encoded("train"), task=self.task, lengths=self.lengths,
        batch_size=self.config.batch_size, num_shards=data.num_shards or jax.process_count(),
        seed=self.config.seed, pack=data.pack, overlong=data.overlong,
        process_index=jax.process_index(), process_count=jax.process_count())

  def eval_batches(self, split: str, limit: int | None) -> Iterator[dict[str, np.ndarray]]:
    """Every example of `split` (its first `limit`), unpacked, in eval_batch_size rows."""
    return pipeline.eval_batches(self.encoded(split), task=self.task, lengths=self.lengths,
                                 batch_size=self.config.eval_batch_size, limit=limit or None)[0]

  def describe(self) -> dict[str, Any]:
    """Split sizes and the tokenizer, for the start-up summary."""
    return {"dataset": self.dataset.name,
            "splits": {name: len(source) for name, source in self.dataset.splits.items()},
            "vocab_size": self.tokenizer.vocab_size}
