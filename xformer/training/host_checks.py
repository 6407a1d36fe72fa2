"""Host-side checks of finished training steps: the NaN policy, skipped updates, clipping,
progress lines and metrics, read one step late so the host prepares the next batch while the
device computes."""

from __future__ import annotations

import math
import time
from typing import Any
import zlib

import jax
import ml_collections
import numpy as np

from xformer.data import pipeline
from xformer.runtime.metric_writer import MetricWriter, Progress, log_line
from xformer.workdir.checkpoint import Checkpointer


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN or infinite (nan_policy='fail')."""


class HostChecks:
  """Host-side checks and logging of finished steps: the NaN policy, skipped updates, clipping,
  progress lines and metrics. A step is read one step late (`push`), so that the host prepares
  step s+1 while the device computes step s; `flush` settles the pending step at once."""

  def __init__(self, config: ml_collections.ConfigDict, writer: MetricWriter,
               ckpt: Checkpointer, overlong: pipeline.OverlongCounter, progress: Progress):
    self.config, self.writer, self.ckpt = config, writer, ckpt
    self.overlong, self.progress = overlong, progress
    self.pending: tuple[int, Any, int] | None = None
    self.skips_in_a_row = self.skips_total = 0
    self.tokens = 0.0
    # Host seconds spent waiting for the next batch since the last log line: reported as the
    # fraction of wall time the step loop waited on input (`train/input_wait_fraction`).
    self.input_seconds, self.last_log = 0.0, time.time()

  def push(self, step: int, metrics: dict[str, Any], crc: int) -> None:
    self.flush()
    self.pending = (step, metrics, crc)

  def flush(self) -> None:
    if self.pending is not None:
      self._settle(*self.pending)
      self.pending = None

  def _settle(self, step: int, metrics: dict[str, Any], crc: int) -> None:
    config = self.config
    metrics = jax.device_get(metrics)
    loss = float(metrics["train/loss"])
    if config.nan_policy == "fail" and not math.isfinite(loss):
      raise NonFiniteLossError(f"Loss is NaN or infinite at step {step} ({loss}); the last "
                               f"checkpoint ({self.ckpt.latest_step()}) is kept unchanged.")
    self._count_skip(step, bool(metrics.get("train/skipped", 0)))
    clip = config.optimizer.clip_grad_norm
    if clip > 0 and float(metrics["train/grad_norm"]) > 10 * clip:
      log_line(f"step {step}: gradient norm {float(metrics['train/grad_norm']):.4g} clipped to "
               f"{clip:g}.")
    self.tokens += float(metrics["train/tokens"])
    if step % config.log_every_steps == 0 or step == config.num_train_steps:
      data = {f"data/{k}": v for k, v in self.overlong.summary().items()}
      now = time.time()
      waiting = min(self.input_seconds / max(now - self.last_log, 1e-9), 1.0)
      self.writer.write(step, {**metrics, **data, "data/batch_crc32": crc,
                               "train/skipped_total": self.skips_total,
                               "train/input_wait_fraction": waiting})
      log_line(f"{self.progress.line(step, loss, self.tokens)} | input wait {waiting:.0%}")
      self.tokens, self.input_seconds, self.last_log = 0.0, 0.0, now

  def _count_skip(self, step: int, skipped: bool) -> None:
    self.skips_in_a_row = self.skips_in_a_row + 1 if skipped else 0
    self.skips_total += int(skipped)
    if skipped:
      log_line(f"step {step}: non-finite loss or gradient, update skipped "
               f"({self.skips_in_a_row} in a row, at most {self.config.max_consecutive_skips}).")
    if self.skips_in_a_row > self.config.max_consecutive_skips:
      raise NonFiniteLossError(f"{self.skips_in_a_row} consecutive non-finite steps up to step "
                               f"{step}: giving up (max_consecutive_skips).")


def batch_crc(batch: dict[str, np.ndarray]) -> int:
  """Fingerprint of this process's rows of a batch (metrics data/batch_crc32): resumed and
  uninterrupted runs must see the same batches."""
  crc = 0
  for key in sorted(batch):
    crc = zlib.crc32(np.ascontiguousarray(batch[key]).tobytes(), crc)
  return crc
