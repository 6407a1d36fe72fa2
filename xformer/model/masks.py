"""Boolean attention masks, [B, 1, T, S], True where a query may attend to a key.

Rows are described by segment ids: 0 marks padding, and tokens of one packed example share an id
(an unpacked row is the single segment 1). Attention never crosses segments and never reaches
padding, so padding and packing are one mechanism.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def segments_from_tokens(tokens: Array, pad_id: int = 0) -> Array:
  """[B, T] segment ids of an unpacked batch: 1 for real tokens, 0 for padding."""
  return (tokens != pad_id).astype(jnp.int32)


def attention_mask(q_segments: Array, k_segments: Array, causal: bool = False) -> Array:
  """Mask of queries and keys in the same non-padding segment, optionally causal.

  Args:
    q_segments: [B, T] segment ids of the queries (0 = padding).
    k_segments: [B, S] segment ids of the keys (0 = padding).
    causal: also forbid key index > query index (decoder self-attention, T == S).

  Returns:
    [B, 1, T, S] bool.
  """
  same = q_segments[:, :, None] == k_segments[:, None, :]  # [B, T, S]
  mask = same & (k_segments != 0)[:, None, :]
  if causal:
    mask = mask & causal_mask(q_segments.shape[1], k_segments.shape[1])[None]
  return mask[:, None]  # [B, 1, T, S]


def causal_mask(t: int, s: int) -> Array:
  """[T, S] lower-triangular mask: query i sees keys 0..i."""
  return jnp.arange(t)[:, None] >= jnp.arange(s)[None, :]


def key_padding_mask(k_segments: Array) -> Array:
  """[B, 1, 1, S] mask of real keys, for queries that may see every real key (no packing)."""
  return (k_segments != 0)[:, None, None, :]


def decode_mask(index: Array, t: int, cache_len: int) -> Array:
  """[1, 1, T, L] mask for T new tokens written at cache slots index..index+T-1.

  Query t sees the cache slots 0..index+t: everything decoded before it and itself.
  """
  query_slot = index + jnp.arange(t)  # [T]
  return (jnp.arange(cache_len)[None, :] <= query_slot[:, None])[None, None]  # [1, 1, T, L]
