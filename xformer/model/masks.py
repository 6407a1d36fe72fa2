"""Boolean attention masks, [B, 1, T, S], True where a query may attend to a key.

Rows are described by segment ids: 0 marks padding, and tokens of one packed example share an id
(an unpacked row is the single segment 1). Attention never crosses segments and never reaches
padding, so padding and packing are one mechanism. `Mask` is that description as one value:
the model builds it once per batch; attention turns it into a dense mask, row lengths or segment
ids, whichever its kernel takes.
"""

from __future__ import annotations

from flax import struct
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


@struct.dataclass
class Mask:
  """Which keys each query may see: built once per batch by the model, handed to every layer,
  and turned into the form each attention kernel takes by the methods below (and only there).

  Attributes:
    q_segments: [B, T] segment ids of the queries (0 = padding), or None: one segment, no
      padding.
    kv_segments: [B, S] segment ids of the keys, or None likewise.
    causal: a query sees no key after it (static).
    cache_index: cached self-attention: the new queries sit at cache slots cache_index.. and the
      keys are the cache's slots (`decode_mask`); None otherwise.
    decoding: a cached decoding step (static): kernels that want whole sequences (lengths,
      splash) are skipped, the XLA kernel takes the dense mask.
  """

  q_segments: Array | None = None
  kv_segments: Array | None = None
  cache_index: Array | None = None
  causal: bool = struct.field(pytree_node=False, default=False)
  decoding: bool = struct.field(pytree_node=False, default=False)

  def dense(self, t: int, s: int) -> Array | None:
    """The boolean mask broadcastable to [B, N, T, S] (None: every key visible)."""
    if self.cache_index is not None:
      return decode_mask(self.cache_index, t, s)  # [1, 1, T, L]
    if self.q_segments is not None and self.kv_segments is not None:
      return attention_mask(self.q_segments, self.kv_segments, self.causal)  # [B, 1, T, S]
    mask = causal_mask(t, s)[None, None] if self.causal else None  # [1, 1, T, S]
    if self.kv_segments is not None:
      keys = key_padding_mask(self.kv_segments)  # [B, 1, 1, S]
      mask = keys if mask is None else mask & keys
    if self.q_segments is not None:
      queries = (self.q_segments != 0)[:, None, :, None]  # [B, 1, T, 1]
      mask = queries if mask is None else mask & queries
    return mask

  def lengths(self, b: int, t: int, s: int) -> tuple[Array, Array]:
    """[B] real queries and [B] real keys per row, for kernels that take lengths (rows with
    their real tokens first, unpacked: config validation keeps packing off for them)."""
    count = lambda seg, n: (jnp.full((b,), n, jnp.int32) if seg is None  # noqa: E731
                            else jnp.sum(seg > 0, axis=-1).astype(jnp.int32))
    return count(self.q_segments, t), count(self.kv_segments, s)

  def segment_ids(self, b: int, t: int, s: int) -> tuple[Array, Array]:
    """[B, T] and [B, S] segment ids, for the splash kernel (ones where there are none)."""
    ones = lambda n: jnp.ones((b, n), jnp.int32)  # noqa: E731
    return (ones(t) if self.q_segments is None else self.q_segments,
            ones(s) if self.kv_segments is None else self.kv_segments)
