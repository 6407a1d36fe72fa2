"""Reading the user's own text files: strict about what is wrong, never crashing mid-run.

Problems are found when the dataset is built (before training starts): empty lines, bytes that are
not UTF-8 and over-long lines are skipped and counted (policy "skip") or raise an error naming
the file and line (policy "error"). Two parallel files of different lengths are always an error.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
from typing import Iterator

from xformer import errors

BAD_LINE_POLICIES = ("skip", "error")


class BadLineError(errors.UserError, ValueError):
  """A line of a user file that cannot be used, with its file and line number."""


@dataclasses.dataclass
class SkipCounts:
  """Lines skipped while reading, by reason."""

  counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)

  def add(self, reason: str) -> None:
    self.counts[reason] += 1

  def total(self) -> int:
    return sum(self.counts.values())

  def __str__(self) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(self.counts.items())) or "none"


def _lines(path: str) -> Iterator[tuple[int, bytes]]:
  with open(os.path.expanduser(path), "rb") as f:
    for number, raw in enumerate(f, start=1):
      yield number, raw.rstrip(b"\r\n")


def _check(raw: bytes, path: str, number: int, max_chars: int, policy: str,
           skips: SkipCounts) -> str | None:
  """The decoded line, or None when it must be skipped (counted), or BadLineError."""
  try:
    text = raw.decode("utf-8").strip()
  except UnicodeDecodeError as e:
    text, reason, detail = "", "not UTF-8", f"not valid UTF-8 ({e.reason} at byte {e.start})"
  else:
    if not text:
      reason, detail = "empty", "empty line"
    elif len(text) > max_chars:
      reason, detail = "too long", f"{len(text)} characters, more than max_chars={max_chars}"
    else:
      return text
  if policy == "error":
    raise BadLineError(f"{path}, line {number}: {detail}. Fix the file or set "
                       "data.on_bad_line='skip' to skip (and count) such lines.")
  skips.add(reason)
  return None


def read_text(path: str, max_chars: int = 100_000, policy: str = "skip",
              skips: SkipCounts | None = None) -> Iterator[str]:
  """Yields the usable lines of one plain text file (one document per line)."""
  skips = SkipCounts() if skips is None else skips
  for number, raw in _lines(path):
    text = _check(raw, path, number, max_chars, policy, skips)
    if text is not None:
      yield text


def read_parallel(src_path: str, tgt_path: str | None = None, max_chars: int = 10_000,
                  policy: str = "skip",
                  skips: SkipCounts | None = None) -> Iterator[tuple[str, str]]:
  """Yields aligned (source, target) pairs from two line-aligned files or one TSV.

  A pair is skipped (or is an error) when either side is empty, not UTF-8 or too long, so the
  alignment of the remaining pairs is never broken.
  """
  if policy not in BAD_LINE_POLICIES:
    raise ValueError(f"data.on_bad_line={policy!r}; choose one of {BAD_LINE_POLICIES}.")
  skips = SkipCounts() if skips is None else skips
  if tgt_path is None:  # One TSV file: source<TAB>target.
    for number, raw in _lines(src_path):
      cols = raw.split(b"\t")
      if len(cols) != 2:
        if policy == "error":
          raise BadLineError(f"{src_path}, line {number}: expected 2 tab-separated columns, "
                             f"found {len(cols)}.")
        skips.add("not 2 columns" if raw.strip() else "empty")
        continue
      src = _check(cols[0], src_path, number, max_chars, policy, skips)
      tgt = _check(cols[1], src_path, number, max_chars, policy, skips) if src else None
      if src and tgt:
        yield src, tgt
    return
  src_lines, tgt_lines = list(_lines(src_path)), list(_lines(tgt_path))
  if len(src_lines) != len(tgt_lines):
    raise BadLineError(f"Parallel files differ in length: {src_path} has {len(src_lines)} lines, "
                       f"{tgt_path} has {len(tgt_lines)}; they must be line-aligned.")
  for (number, raw_src), (_, raw_tgt) in zip(src_lines, tgt_lines):
    src = _check(raw_src, src_path, number, max_chars, policy, skips)
    tgt = _check(raw_tgt, tgt_path, number, max_chars, policy, skips) if src else None
    if src and tgt:
      yield src, tgt


def log_skips(what: str, skips: SkipCounts) -> None:
  if skips.total():
    logging.warning("%s: skipped %d lines (%s).", what, skips.total(), skips)
