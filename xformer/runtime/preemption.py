"""Stopping cleanly on SIGTERM / SIGINT (preemption, Ctrl-C): save, then exit 0."""

from __future__ import annotations

import logging
import signal

import jax
from jax.experimental import multihost_utils
import numpy as np


class StopSignal:
  """SIGTERM / SIGINT set a flag the loop checks after every step (never mid-step).

  Our own handler, because orbax's preemption check only works with a distributed client. With
  several processes the flag is OR-ed across them so that all stop at the same step; that is a
  blocking all-gather, so it happens only every `every` steps (a preemption notice leaves tens
  of seconds), not between every two steps where it would stall the device queue.
  """

  def __init__(self, every: int = 10):
    self.every = every
    self.received: int | None = None
    self._previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._previous[sig] = signal.signal(sig, self._handle)

  def _handle(self, signum, frame):
    del frame
    self.received = signum
    logging.warning("Received %s: will save and exit after the current step.",
                    signal.Signals(signum).name)

  def should_stop(self, step: int) -> bool:
    """Whether every process stops after `step` (the same answer on all of them)."""
    flag = np.asarray(self.received is not None)
    if jax.process_count() > 1:
      if step % self.every:
        return False
      flag = np.any(multihost_utils.process_allgather(flag))
    return bool(flag)

  def restore(self) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
