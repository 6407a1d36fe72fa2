"""Randomized positions (Ruoss et al. 2023, "Randomized Positional Encodings Boost Length
Generalization of Transformers"): in training, a sequence of k tokens gets a uniformly random
sorted subset of k distinct positions from [0, M) instead of 0..k-1, so the model meets every
position up to M (and every gap) while training on short sequences.

`sample` works on packed rows: every segment (positions restarting at 0) gets its own subset,
drawn as the authors draw it, without replacement: each row takes one random permutation of
[0, M) (the order of M uniform keys), a segment of k tokens starting at index s takes the
permutation's entries s..s+k-1 (a uniform k-subset: any fixed k entries of a uniform
permutation are one) and sorts them. Segments of one row get disjoint subsets (M >= the row's
length, which validation ensures).
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
  if length > max_position:
    raise ValueError(f"random positions: rows of {length} tokens need max_position >= {length}, "
                     f"got {max_position}.")
  positions = positions.astype(jnp.int32)
  t = jnp.arange(length, dtype=jnp.int32)[None, :]  # [1, T]
  start = jnp.where(valid, t - positions, t)  # [B, T] index of the segment's first token
  keys = jax.random.uniform(rng, (batch, max_position))
  drawn = jnp.argsort(keys, axis=-1)[:, :length].astype(jnp.int32)  # [B, T] distinct in [0, M)
  # Sort each segment's entries in place: segments are contiguous and ordered along the row.
  order = jnp.lexsort((drawn, start), axis=-1)  # [B, T]
  ordered = jnp.take_along_axis(drawn, order, axis=-1)  # [B, T]
  return jnp.where(valid, ordered, positions)  # [B, T]
