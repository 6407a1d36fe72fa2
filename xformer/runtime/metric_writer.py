"""Metrics to `metrics.jsonl` and TensorBoard event files; progress lines for people."""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

from etils import epath
import jax

from xformer import errors


def log_line(text: str) -> None:
  """Progress for people: process 0 prints it; every process logs it."""
  if jax.process_index() == 0:
    print(text, flush=True)
  logging.info(text)


class MetricWriter:
  """Appends {"step": s, name: value, ...} lines to <workdir>/metrics.jsonl and writes the same
  scalars as TensorBoard events (<workdir>/tensorboard). Only process 0 writes.

  A remote workdir (gs://...) has no append: the file is rewritten whole at each write (it
  stays small: one line per logged step).
  """

  def __init__(self, workdir: str):
    self.active = jax.process_index() == 0
    self.path = epath.Path(workdir) / "metrics.jsonl"
    self.remote = "://" in str(workdir)
    self.lines = self.path.read_text().splitlines(keepends=True) if (
        self.active and self.remote and self.path.exists()) else []
    self.tb = None
    if self.active:
      from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
      try:
        self.tb = SummaryWriter(str(epath.Path(workdir) / "tensorboard"))
      except Exception as e:  # pylint: disable=broad-except  (a remote filesystem it lacks)
        logging.warning("No TensorBoard events in %s (%s); metrics.jsonl has everything.",
                        workdir, e)

  def write(self, step: int, metrics: dict[str, Any]) -> None:
    if not self.active:
      return
    scalars = {k: float(v) for k, v in metrics.items()}
    line = json.dumps({"step": int(step), **scalars}) + "\n"
    if self.remote:
      self.lines.append(line)
      self.path.write_text("".join(self.lines))
    else:
      self._append(line)
    if self.tb is not None:
      for k, v in scalars.items():
        self.tb.add_scalar(k, v, int(step))
      self.tb.flush()

  def _append(self, line: str) -> None:
    """Appends one whole line, or nothing: a write the disk cuts short (full) is truncated
    back, so metrics.jsonl never ends in half a line, and raises StorageError."""
    path = str(self.path)
    size = os.path.getsize(path) if os.path.exists(path) else 0
    try:
      with open(path, "a") as f:
        f.write(line)
    except OSError as e:
      try:
        os.truncate(path, size)
      except OSError:
        pass
      raise errors.StorageError(f"Writing {path} failed ({errors.write_cause(e)}); the lines "
                                "before this one are intact.") from e

  def close(self) -> None:
    if self.tb is not None:
      self.tb.close()


def read_metrics(workdir: str) -> list[dict[str, float]]:
  """The metrics.jsonl lines of a run (for notebooks, sweeps and tests)."""
  path = epath.Path(workdir) / "metrics.jsonl"
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class Progress:
  """'step 120/2000 | loss 3.214 | 11.2K tok/s | ETA 2m51s' from step timings."""

  def __init__(self, total_steps: int, first_step: int):
    self.total, self.last_step, self.last_time = total_steps, first_step, time.time()

  def line(self, step: int, loss: float, tokens: float) -> str:
    now = time.time()
    dt = max(now - self.last_time, 1e-9)
    steps = max(step - self.last_step, 1)
    rate = tokens / dt
    eta = (self.total - step) * dt / steps
    self.last_step, self.last_time = step, now
    return (f"step {step}/{self.total} | loss {loss:.4f} | {rate / 1e3:.1f}K tok/s | "
            f"ETA {int(eta // 60)}m{int(eta % 60):02d}s")
