"""Metrics to `metrics.jsonl` and TensorBoard event files, and a readable progress line."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax


class MetricWriter:
  """Appends {"step": s, name: value, ...} lines to <workdir>/metrics.jsonl and writes the same
  scalars as TensorBoard events (<workdir>/tensorboard). Only process 0 writes."""

  def __init__(self, workdir: str):
    self.active = jax.process_index() == 0
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.tb = None
    if self.active:
      from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
      self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, metrics: dict[str, Any]) -> None:
    if not self.active:
      return
    scalars = {k: float(v) for k, v in metrics.items()}
    with open(self.path, "a") as f:
      f.write(json.dumps({"step": int(step), **scalars}) + "\n")
    for k, v in scalars.items():
      self.tb.add_scalar(k, v, int(step))
    self.tb.flush()

  def close(self) -> None:
    if self.tb is not None:
      self.tb.close()


def read_metrics(workdir: str) -> list[dict[str, float]]:
  """The metrics.jsonl lines of a run (for notebooks, sweeps and tests)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


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
