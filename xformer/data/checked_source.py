"""A split's records with read failures named: a damaged or vanished data file stops a run with
one line saying which file, which record and what to do (errors.StorageError), wherever the read
happens (tokenizing at start, a lazy source mid-run, the token cache being built).

    source = CheckedSource(builder.as_data_source(split="train"), "train", file_instructions)
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any

from xformer import errors


class CheckedSource(Sequence):
  """Random access to `source` (a TFDS data source); a failing read raises StorageError.

  Args:
    source: the split's records (len, [i], and optionally __getitems__ for batched reads).
    split: its name, for the message.
    files: (filename, number of records) of the split's shards, in record order
      (TFDS `SplitInfo.file_instructions`); a failure names the file of the failing record.
  """

  def __init__(self, source: Sequence[Any], split: str, files: Sequence[tuple[str, int]]):
    self.source, self.split = source, split
    self._files = [name for name, _ in files]
    self._ends, total = [], 0
    for _, count in files:
      total += count
      self._ends.append(total)

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> Any:  # type: ignore[override]
    if not -len(self) <= index < len(self):
      raise IndexError(f"record {index} of the {self.split!r} split: it has {len(self)}")
    index %= len(self)
    try:
      return self.source[index]
    except Exception as e:  # noqa: BLE001  (riegeli, the OS and proto parsing raise many kinds)
      raise self._damaged(index, e) from e

  def __getitems__(self, indices: Sequence[int]) -> list[Any]:
    try:
      if hasattr(self.source, "__getitems__"):
        return list(self.source.__getitems__(list(indices)))
      return [self.source[i] for i in indices]
    except Exception:  # noqa: BLE001
      return [self[i] for i in indices]  # One by one: the failing record names its file.

  def file_of(self, index: int) -> str:
    at = bisect.bisect_right(self._ends, index)
    return self._files[at] if at < len(self._files) else "(unknown file)"

  def _damaged(self, index: int, cause: BaseException) -> errors.StorageError:
    first = (str(cause).strip().splitlines() or [type(cause).__name__])[0][:300]
    return errors.StorageError(
        f"Reading record {index} of the {self.split!r} split failed: {first} (file "
        f"{self.file_of(index)}). The data file is damaged or changed under the run: restore "
        "it, or delete the dataset's directory and prepare it again (python -m "
        "xformer.data.prepare); checkpoints are untouched, and a rerun resumes from the newest.")
