"""Fault drills: make chosen training steps fail on purpose (config.faults), to test what the
loop does with a NaN loss or a gradient spike. They wrap the loss function; the pure step never
knows about them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from xformer.training.steps import LossFn


@dataclasses.dataclass(frozen=True)
class Faults:
  """Steps count from 1 (as logged). The loss (hence every gradient) of steps
  nan_at_step .. nan_at_step + nan_steps - 1 is NaN; that of spike_at_step is multiplied by
  `spike` (a gradient spike of that factor). Negative steps: no drill."""

  nan_at_step: int = -1
  nan_steps: int = 1
  spike_at_step: int = -1
  spike: float = 1e6

  @property
  def active(self) -> bool:
    return self.nan_at_step >= 0 or self.spike_at_step >= 0

  def scale(self, step: jax.Array) -> jax.Array:
    """Loss multiplier of the 1-based `step`: NaN, `spike` or 1."""
    nan = (self.nan_at_step >= 0) & (step >= self.nan_at_step) & (
        step < self.nan_at_step + self.nan_steps)
    return jnp.where(nan, jnp.nan, jnp.where(step == self.spike_at_step, self.spike, 1.0))


def drill(loss_fn: LossFn, faults: Faults) -> LossFn:
  """`loss_fn` whose loss and nll sums are scaled per `faults` during training (step given)."""
  if not faults.active:
    return loss_fn

  def drilled(params: Any, batch, rng, step):
    sums = loss_fn(params, batch, rng, step)
    if step is None:  # Evaluation: no drill.
      return sums
    scale = faults.scale(step + 1)
    return {**sums, "loss": sums["loss"] * scale, "nll": sums["nll"] * scale}

  return drilled
