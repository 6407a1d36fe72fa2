"""grain input pipelines: tokenize, add BOS/EOS, handle over-long examples, pack, batch.

Every batch is a dict of int32 numpy arrays, packed or not:

    translation: inputs, inputs_segment_ids, inputs_positions                     [B, S]
                 targets_in, targets, targets_segment_ids, targets_positions      [B, T]
    lm:          targets_in, targets, targets_segment_ids, targets_positions      [B, T]

`targets_in` is the decoder input: BOS + target for translation, BOS + text for LM; `targets`
is what is predicted at each position: target + EOS. Segment id 0 marks padding; with packing,
several examples share a row with ids 1, 2, ... and positions restarting at 0 in each.

The training iterator is a grain `DatasetIterator`: `get_state()` / `set_state()` give a small
JSON-able state, saved with each checkpoint so a resumed run sees exactly the same batches.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from typing import Any, Iterator, Sequence

import grain
import numpy as np

from xformer.data.datasets import read_all, text_of
from xformer.data.tokenizer import Tokenizer

OVERLONG_POLICIES = ("drop", "truncate")


@dataclasses.dataclass
class OverlongCounter:
  """Counts examples dropped or truncated for length (thread-safe; grain may prefetch)."""

  seen: int = 0
  dropped: int = 0
  truncated: int = 0
  _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False)

  def count(self, seen: int = 0, dropped: int = 0, truncated: int = 0) -> None:
    with self._lock:
      self.seen += seen
      self.dropped += dropped
      self.truncated += truncated

  def summary(self) -> dict[str, int]:
    return {"examples": self.seen, "dropped_overlong": self.dropped,
            "truncated_overlong": self.truncated}


@dataclasses.dataclass(frozen=True)
class Lengths:
  """Maximum lengths in tokens, BOS/EOS included."""

  source: int
  target: int


class EncodedSource:
  """Random access to the token ids of a split's examples: a tuple of id arrays per example,
  one per raw key ((source, target) or (text,)).

  eager=True reads and tokenizes the whole split once, in large batches, which makes every later
  access free; a lazy source reads and tokenizes on each access, for splits too large to hold in
  memory (benchmarks/README.md has the costs of both).
  """

  def __init__(self, source: Sequence[Any], tokenizer: Tokenizer, keys: Sequence[str],
               eager: bool):
    self.source, self.tokenizer, self.keys = source, tokenizer, tuple(keys)
    self._ids = None
    if eager:
      raw = read_all(source)
      columns = [self.tokenizer.encode_batch([text_of(r[k]) for r in raw]) for k in self.keys]
      self._ids = [tuple(np.asarray(col[i], np.int32) for col in columns)
                   for i in range(len(raw))]

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> tuple[np.ndarray, ...]:
    if self._ids is not None:
      return self._ids[index]
    raw = self.source[index]
    return tuple(np.asarray(self.tokenizer.encode(text_of(raw[k])), np.int32) for k in self.keys)


SIDES = ("inputs", "targets")  # Features with their own segment ids and positions.


class Frame(grain.transforms.Map):
  """Token ids -> the task's model features; over-long examples dropped (None) or cut."""

  def __init__(self, task, lengths: Lengths, overlong: str, counter: OverlongCounter):
    if overlong not in OVERLONG_POLICIES:
      raise ValueError(f"data.overlong={overlong!r}; choose one of {OVERLONG_POLICIES}.")
    self.task, self.lengths, self.overlong, self.counter = task, lengths, overlong, counter

  def map(self, ids: tuple[np.ndarray, ...]) -> dict[str, np.ndarray] | None:
    cut = []

    def fit(x: np.ndarray, limit: int) -> np.ndarray | None:
      if len(x) <= limit:
        return x
      cut.append(True)
      return None if self.overlong == "drop" else x[:limit]

    features = self.task.features(ids, self.lengths, fit)
    dropped = features is None or (cut and self.overlong == "drop")
    self.counter.count(seen=1, dropped=int(bool(dropped)),
                       truncated=int(bool(cut) and not dropped))
    return None if dropped else features


def _pad_to(x: np.ndarray, length: int) -> np.ndarray:
  return np.pad(x, (0, length - len(x)))


def row_lengths(task, lengths: Lengths) -> dict[str, int]:
  """Every key of a `task` batch and its row length (all int32 [B, length]): the task's
  features plus segment ids and positions of each side."""
  out = {}
  for key, length in task.feature_lengths(lengths).items():
    out[key] = length
    if key in SIDES:
      out[f"{key}_segment_ids"] = out[f"{key}_positions"] = length
  return out


class PadUnpacked(grain.transforms.Map):
  """One example per row: pad every feature to its length; segment ids (1 / 0) and positions
  for each side."""

  def __init__(self, feature_lengths: dict[str, int]):
    self.feature_lengths = feature_lengths

  def map(self, ex: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for key, length in self.feature_lengths.items():
      out[key] = _pad_to(ex[key], length)
      if key in SIDES:
        n = len(ex[key])
        out[f"{key}_segment_ids"] = _pad_to(np.ones(n, np.int32), length)
        out[f"{key}_positions"] = _pad_to(np.arange(n, dtype=np.int32), length)
    return out


def _tidy_packed(ex: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Keeps the packer's segment ids and positions of the sides only (the other features share
  their side's layout)."""
  keep = {f"{side}_{what}" for side in SIDES for what in ("segment_ids", "positions")}
  return {k: v.astype(np.int32) for k, v in ex.items()
          if k in keep or not k.endswith(("_segment_ids", "_positions"))}


def _packed(ds: grain.IterDataset, feature_lengths: dict[str, int], batch_size: int,
            seed: int) -> grain.IterDataset:
  ds = grain.experimental.FirstFitPackIterDataset(
      ds, length_struct=dict(feature_lengths), num_packing_bins=max(2 * batch_size, 8),
      seed=seed, shuffle_bins=True)
  return ds.map(_tidy_packed)


def train_iterator(source: EncodedSource, *, task, lengths: Lengths, batch_size: int, seed: int,
                   pack: bool = True, overlong: str = "drop", process_index: int = 0,
                   process_count: int = 1, prefetch: int = 2,
                   counter: OverlongCounter | None = None
                   ) -> tuple[grain.DatasetIterator, OverlongCounter]:
  """An endless, shuffled (reshuffled every epoch), checkpointable iterator of training batches.

  Args:
    source: token ids of the training split.
    task: the run's Task (how an example becomes features).
    lengths: maximum lengths. batch_size: rows per batch on this process.
    seed: shuffle seed. pack: pack several examples per row.
    overlong: "drop" or "truncate" examples longer than `lengths`.
    process_index / process_count: this process's shard of the data (multi-host runs).
    prefetch: batches prepared ahead in a background thread (0: none).
    counter: where to count over-long examples (default: a new one).

  Returns:
    (iterator, counter of over-long examples seen by it).
  """
  counter = OverlongCounter() if counter is None else counter
  ds = grain.MapDataset.source(source)
  ds = ds[process_index::process_count]  # Disjoint shards that together cover the data.
  ds = ds.shuffle(seed=seed).repeat(None)
  ds = ds.map(Frame(task, lengths, overlong, counter))
  # Filtered (None) examples are skipped here. No reader threads: grain's default thread pool
  # costs more than it saves for cheap in-memory examples (benchmarks/README.md).
  ids = ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
  feature_lengths = task.feature_lengths(lengths)
  if pack:
    ids = _packed(ids, feature_lengths, batch_size, seed)
  else:
    ids = ids.map(PadUnpacked(feature_lengths))
  batches = ids.batch(batch_size, drop_remainder=True)
  if prefetch:  # Prepare the next batches in a thread while the device computes.
    batches = grain.experimental.ThreadPrefetchIterDataset(batches, prefetch_buffer_size=prefetch)
  return iter(batches), counter


class ShardedBatches:
  """This process's part of the global batch: the batches of its logical data shards, stacked.

  The data is cut into `num_shards` logical shards (example i belongs to shard i % num_shards),
  each with its own checkpointable iterator; process p of P owns shards [p*K, (p+1)*K) with
  K = num_shards / P. With a fixed num_shards the global batch sequence does not depend on the
  number of processes: a 2-process run trains on exactly the batches of a 1-process run.
  """

  def __init__(self, iterators: Sequence[Any], first_shard: int = 0):
    self.iterators = list(iterators)
    self.first_shard = first_shard  # Global index of iterators[0]'s logical shard.

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    parts = [next(it) for it in self.iterators]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

  def get_state(self) -> bytes:  # grain's checkpoint handler stores bytes of non-grain iterators.
    return json.dumps([it.get_state() for it in self.iterators]).encode()

  def set_state(self, state: bytes) -> None:
    states = json.loads(state)
    if len(states) != len(self.iterators):
      raise ValueError(f"Data iterator state holds {len(states)} shards, this process reads "
                       f"{len(self.iterators)}: keep data.num_shards fixed across restarts.")
    for it, st in zip(self.iterators, states):
      it.set_state(st)

  def set_global_state(self, states: Sequence[Any]) -> None:
    """Restores from the states of all logical shards (saved by any number of processes)."""
    mine = list(states)[self.first_shard:self.first_shard + len(self.iterators)]
    self.set_state(json.dumps(mine).encode())

  def start_prefetch(self) -> None:  # Called by grain's handler after a restore.
    pass


def sharded_train_iterator(source: EncodedSource, *, batch_size: int, num_shards: int,
                           process_index: int, process_count: int, **kwargs
                           ) -> tuple[ShardedBatches, OverlongCounter]:
  """`train_iterator` over this process's logical shards; batch_size is the global batch."""
  if num_shards % process_count or batch_size % num_shards:
    raise ValueError(f"data.num_shards={num_shards} must be a multiple of the {process_count} "
                     f"processes and divide batch_size={batch_size}.")
  per_process = num_shards // process_count
  counter = OverlongCounter()  # Shared by this process's shards.
  iterators = [
      train_iterator(source, batch_size=batch_size // num_shards, process_index=shard,
                     process_count=num_shards, counter=counter, **kwargs)[0]
      for shard in range(process_index * per_process, (process_index + 1) * per_process)]
  return ShardedBatches(iterators, process_index * per_process), counter


def eval_batches(source: EncodedSource, *, task, lengths: Lengths, batch_size: int,
                 limit: int | None = None
                 ) -> tuple[Iterator[dict[str, np.ndarray]], OverlongCounter]:
  """Every example of a split once, in order, unpacked; over-long examples are truncated (so
  every example counts), the last batch is padded with all-padding rows (zero weight)."""
  counter = OverlongCounter()
  ds = grain.MapDataset.source(source)
  if limit is not None:
    ds = ds[:limit]
  ds = ds.map(Frame(task, lengths, "truncate", counter))
  ds = ds.map(PadUnpacked(task.feature_lengths(lengths)))
  ds = ds.batch(batch_size, batch_fn=lambda xs: _stack_and_pad(xs, batch_size))
  return iter(ds), counter


def _stack_and_pad(examples: Sequence[dict[str, np.ndarray]], batch_size: int):
  batch = {k: np.stack([ex[k] for ex in examples]) for k in examples[0]}
  missing = batch_size - len(examples)
  return {k: np.pad(v, ((0, missing), (0, 0))) for k, v in batch.items()}


def log_overlong(name: str, counter: OverlongCounter) -> None:
  s = counter.summary()
  if s["dropped_overlong"] or s["truncated_overlong"]:
    logging.info("%s: %d of %d examples dropped and %d truncated for length.", name,
                 s["dropped_overlong"], s["examples"], s["truncated_overlong"])
