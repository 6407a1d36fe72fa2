"""A split's token ids, computed once and memory-mapped: what keeps a pod's hosts fed.

Tokenizing on the fly costs host time on every step (benchmarks/input_pipeline.py); holding a
tokenized WMT in Python lists costs gigabytes. `build` reads a split in chunks, tokenizes them
with sentencepiece's batch encoder in worker processes, and writes, per raw key, all ids
concatenated (`<key>.ids.bin`, raw int32) and where each example starts (`<key>.offsets.npy`,
int64, n + 1 entries); `TokenCache` maps them read-only, so an example costs two slices.

The cache lives on local disk (np.memmap cannot map gs:// objects): by default under
`~/.cache/xformer/tokens/<key>/<split>`, keyed by the dataset's fingerprint and the
tokenizer's model, so a new tokenizer or a changed dataset never reads stale ids. It is written
to a temporary directory and renamed into place, so a reader never sees half a cache and two
processes building it at once both finish (the second rename finds it done).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import itertools
import json
import os
import shutil
import tempfile
from typing import Any, Sequence

import numpy as np

from xformer.data.datasets import read_rows, text_of

DEFAULT_ROOT = "~/.cache/xformer/tokens"
_CHUNK = 20_000


def key(fingerprint: str, model_proto: bytes, split: str) -> str:
  """Directory name of a split's cache: hash of dataset fingerprint, tokenizer model, split."""
  h = hashlib.sha256(fingerprint.encode() + b"\0" + model_proto + b"\0" + split.encode())
  return h.hexdigest()[:16]


def for_split(root: str, dataset, tokenizer, split: str, say=None) -> "TokenCache":
  """The cache of `split` under `root`, built first if it is not there (`say` is told)."""
  path = os.path.join(os.path.expanduser(root or DEFAULT_ROOT),
                      key(dataset.fingerprint, tokenizer.model_proto, split))
  if say and not os.path.exists(os.path.join(path, "meta.json")):
    say(f"Tokenizing {dataset.name}/{split} once into {path} (data.token_cache).")
  build(dataset.split(split), tokenizer, dataset.keys, path)
  return TokenCache(path)


def _encode_chunk(model_proto: bytes, texts: list[list[str]]) -> list[list[np.ndarray]]:
  """Worker: token ids (int32 arrays) of each key's texts."""
  import sentencepiece as spm  # noqa: PLC0415  (a fresh process)
  sp = spm.SentencePieceProcessor(model_proto=model_proto)
  return [[np.asarray(x, np.int32) for x in sp.encode(column)] for column in texts]


def _chunks(source: Sequence[Any], keys: Sequence[str]):
  """(start, [texts of each key]) for consecutive chunks of `source`."""
  for start in range(0, len(source), _CHUNK):
    raw = read_rows(source, range(start, min(start + _CHUNK, len(source))))
    yield start, [[text_of(r[k]) for r in raw] for k in keys]


def build(source: Sequence[Any], tokenizer, keys: Sequence[str], path: str,
          processes: int | None = None) -> str:
  """Tokenizes every example of `source` into a cache at `path` (unless one is there).

  Streams: at most 2 x processes chunks are in flight, ids go straight to disk, and only the
  offsets (8 bytes per example and key) are held in memory.
  """
  path = os.path.expanduser(path)
  if os.path.exists(os.path.join(path, "meta.json")):
    return path
  os.makedirs(os.path.dirname(path), exist_ok=True)
  n, workers = len(source), processes or max(1, os.cpu_count() or 1)
  tmp = tempfile.mkdtemp(prefix=".building_", dir=os.path.dirname(path))
  outs = [open(os.path.join(tmp, f"{k}.ids.bin"), "wb") for k in keys]  # noqa: SIM115
  lengths = [np.zeros(n + 1, np.int64) for _ in keys]
  with concurrent.futures.ProcessPoolExecutor(workers) as pool:
    pending: list[tuple[int, concurrent.futures.Future]] = []
    for item in itertools.chain(_chunks(source, keys), [None]):  # Lazily: None ends the input.
      if item is not None:
        pending.append((item[0], pool.submit(_encode_chunk, tokenizer.model_proto, item[1])))
      while pending and (item is None or len(pending) > 2 * workers):
        start, future = pending.pop(0)  # In order: ids are written in example order.
        for j, column in enumerate(future.result()):
          lengths[j][start + 1:start + 1 + len(column)] = [len(x) for x in column]
          if column:
            outs[j].write(np.concatenate(column).astype(np.int32).tobytes())
  for j, k in enumerate(keys):
    outs[j].close()
    np.save(os.path.join(tmp, f"{k}.offsets.npy"), np.cumsum(lengths[j]))
  with open(os.path.join(tmp, "meta.json"), "w") as f:
    json.dump({"examples": n, "keys": list(keys)}, f)
  try:
    os.rename(tmp, path)
  except OSError:  # Another process finished first: its cache is the same.
    shutil.rmtree(tmp, ignore_errors=True)
  return path


class TokenCache:
  """Random access to a built cache, like pipeline.EncodedSource: a tuple of id arrays."""

  def __init__(self, path: str):
    path = os.path.expanduser(path)
    with open(os.path.join(path, "meta.json")) as f:
      meta = json.load(f)
    self.keys, self.n = tuple(meta["keys"]), meta["examples"]
    self.ids = [np.memmap(os.path.join(path, f"{k}.ids.bin"), np.int32, mode="r")
                if os.path.getsize(os.path.join(path, f"{k}.ids.bin")) else np.zeros(0, np.int32)
                for k in self.keys]
    self.offsets = [np.load(os.path.join(path, f"{k}.offsets.npy"), mmap_mode="r")
                    for k in self.keys]

  def __len__(self) -> int:
    return self.n

  def __getitem__(self, index: int) -> tuple[np.ndarray, ...]:
    return tuple(np.asarray(ids[off[index]:off[index + 1]])
                 for ids, off in zip(self.ids, self.offsets))
