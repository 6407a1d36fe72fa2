"""Optimiser and learning-rate schedules: Adam(0.9, 0.98, 1e-9) with the paper's schedule.

    rsqrt (the paper, eq. 3): lr = scale * d_model^-0.5 * min(step^-0.5, step * warmup^-1.5)
    cosine: linear warmup to `peak_lr`, cosine decay to 0 at num_train_steps
"""

from __future__ import annotations

from typing import Any, Callable

import jax.numpy as jnp
import ml_collections
import optax

from xformer import errors

SCHEDULES = ("rsqrt", "cosine", "constant")


def section() -> ml_collections.ConfigDict:
  """config.optimizer at its defaults: Adam(0.9, 0.98, 1e-9) with the paper's schedule."""
  return ml_collections.ConfigDict(dict(
      schedule="rsqrt", warmup_steps=4000, lr_scale=1.0, peak_lr=1e-3, b1=0.9, b2=0.98, eps=1e-9,
      weight_decay=0.0, clip_grad_norm=0.0))


def check(optimizer: ml_collections.ConfigDict) -> None:
  """Validates config.optimizer (before anything is built)."""
  errors.check_choice("optimizer.schedule", optimizer.schedule, SCHEDULES)
  if optimizer.warmup_steps < 0:
    raise errors.ConfigError(f"optimizer.warmup_steps must be >= 0, got {optimizer.warmup_steps}.")


def rsqrt_schedule(d_model: int, warmup_steps: int, scale: float = 1.0) -> Callable:
  """The paper's schedule; optax counts from 0, the paper's step_num from 1."""

  def schedule(count):
    step = jnp.asarray(count, jnp.float32) + 1.0
    return scale * d_model**-0.5 * jnp.minimum(step**-0.5, step * warmup_steps**-1.5)

  return schedule


def make_schedule(cfg: Any, d_model: int, num_train_steps: int) -> Callable:
  """cfg: the config's `optimizer` section."""
  if cfg.schedule == "rsqrt":
    return rsqrt_schedule(d_model, cfg.warmup_steps, cfg.lr_scale)
  if cfg.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, cfg.peak_lr, cfg.warmup_steps,
                                              max(num_train_steps, cfg.warmup_steps + 1))
  if cfg.schedule == "constant":
    return optax.constant_schedule(cfg.peak_lr)
  raise ValueError(f"optimizer.schedule={cfg.schedule!r}; choose one of {SCHEDULES}.")


def make_optimizer(cfg: Any, d_model: int, num_train_steps: int) -> optax.GradientTransformation:
  """Adam (or AdamW when weight_decay > 0), after optional global-norm clipping."""
  schedule = make_schedule(cfg, d_model, num_train_steps)
  parts = []
  if cfg.clip_grad_norm > 0:
    parts.append(optax.clip_by_global_norm(cfg.clip_grad_norm))
  if cfg.weight_decay > 0:
    parts.append(optax.adamw(schedule, cfg.b1, cfg.b2, cfg.eps, weight_decay=cfg.weight_decay))
  else:
    parts.append(optax.adam(schedule, cfg.b1, cfg.b2, cfg.eps))
  return optax.chain(*parts)
