"""Randomized positions (Ruoss et al. 2023, "Randomized Positional Encodings Boost Length
Generalization of Transformers"): in training, a sequence of k tokens gets a uniformly random
sorted subset of k distinct positions from [0, M) instead of 0..k-1, so the model meets every
position up to M (and every gap) while training on short sequences.

`sample` works on packed rows: every segment (positions restarting at 0) gets its own subset.
It uses the bijection between sorted k-subsets x_0 < ... < x_{k-1} of [0, M) and non-decreasing
y_p = x_p - p in [0, M - k], and draws the y_p as the order statistics of k uniforms scaled to
[0, M - k + 1) (through normalised cumulative sums of exponential spacings, which needs no sort).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def sample(rng: Array, positions: Array, valid: Array, max_position: int) -> Array:
  """Random sorted positions in [0, max_position) for every segment of every row.

  Args:
    rng: a PRNG key.
    positions: [B, T] int, 0..k-1 within each segment of k tokens (packed rows restart at 0).
    valid: [B, T] bool, False for padding (whose positions are returned unchanged).
    max_position: M, exclusive upper bound; must be >= the longest segment.

  Returns:
    [B, T] int32: strictly increasing within each segment, in [0, M).
  """
  batch, length = positions.shape
  positions = positions.astype(jnp.int32)
  t = jnp.arange(length, dtype=jnp.int32)[None, :]  # [1, T]
  start = jnp.clip(t - positions, 0, length - 1)  # [B, T] index of the segment's first token
  seg_id = (jnp.arange(batch, dtype=jnp.int32)[:, None] * length + start).reshape(-1)  # [B*T]
  num = batch * length
  spacing_key, extra_key = jax.random.split(rng)
  spacing = jax.random.exponential(spacing_key, (batch, length))  # [B, T]
  extra = jax.random.exponential(extra_key, (batch, length))  # one per segment: at its start
  spacing = jnp.where(valid, spacing, 0.0)
  cum = jnp.cumsum(spacing, axis=1)  # [B, T]
  before = jnp.take_along_axis(cum - spacing, start, axis=1)  # [B, T] sum before the segment
  within = cum - before  # [B, T] E_0 + ... + E_p
  total = jax.ops.segment_sum((spacing + jnp.where(positions == 0, extra, 0.0)).reshape(-1),
                              seg_id, num_segments=num)[seg_id].reshape(batch, length)
  k = (jax.ops.segment_max(jnp.where(valid, positions, 0).reshape(-1), seg_id,
                           num_segments=num)[seg_id].reshape(batch, length) + 1)  # [B, T]
  slots = (max_position - k + 1).astype(jnp.float32)  # values of y_p: 0..M-k
  y = jnp.floor(slots * within / total).astype(jnp.int32)  # within < total: y <= M - k
  y = jnp.minimum(y, max_position - k)  # float rounding guard
  return jnp.where(valid, y + positions, positions)  # [B, T]
