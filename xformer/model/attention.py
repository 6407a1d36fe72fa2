"""Multi-head attention: self (padded or causal), cross, and cached incremental decoding.

One module serves all three uses; the caller passes the mask (one `masks.Mask` value, which this
module turns into its kernel's form), the optional logit bias and the optional rotation of q/k. Logits and softmax are computed in float32 whatever the compute dtype.

Two kernels compute the same function:
  * `jax.nn.dot_product_attention` (XLA here; cuDNN's fused kernel on GPU with
    `implementation="cudnn"`), used whenever nothing needs the attention weights themselves;
  * an explicit einsum path, used when attention-weight dropout is active (the fused kernel has
    no dropout) or when the caller collects the weights (the `intermediates` collection is
    mutable, e.g. for attention pictures).
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from xformer.model import flash_xla, layers, masks, splash
from xformer.model.layers import EMBED, HEADS, KV

Array = jax.Array


def _rows(x: Array, dtype: Any) -> Array:
  """[B, T, D] -> [B*T, D] in the compute dtype: the one copy every projection of x reads (and
  the one the backward pass keeps)."""
  return x.reshape(-1, x.shape[-1]).astype(dtype)


def _project(rows: Array, w: Array, lead: tuple[int, ...]) -> Array:
  """rows [B*T, D] @ w [D, N, H] -> [B, T, N, H] (lead = (B, T)), one 2-D matrix product."""
  return jnp.matmul(rows, w.reshape(w.shape[0], -1)).reshape(*lead, *w.shape[1:])


def attention_weights(q: Array, k: Array, mask: Array | None, bias: Array | None) -> Array:
  """softmax(q k^T / sqrt(H) + bias) with masked logits removed, in float32.

  Args:
    q: [B, T, N, H]; k: [B, S, N, H].
    mask: bool, broadcastable to [B, N, T, S]; True = may attend.
    bias: float, broadcastable to [B, N, T, S].

  Returns:
    [B, N, T, S] float32 probabilities. A row with no visible key is uniform (never NaN).
  """
  scale = q.shape[-1] ** -0.5
  logits = jnp.einsum("BTNH,BSNH->BNTS", q, k, preferred_element_type=jnp.float32) * scale
  if bias is not None:
    logits = logits + bias.astype(jnp.float32)
  if mask is not None:
    # Replacing (not adding to) masked logits keeps a fully masked row finite: it becomes uniform.
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
  return jax.nn.softmax(logits, axis=-1)  # [B, N, T, S]


# Kernels that take the mask as a causal flag and row lengths (unpacked rows), not a dense mask.
LENGTH_KERNELS = ("xla_lengths", "cudnn")


class MultiHeadAttention(nn.Module):
  """Multi-head scaled dot-product attention (paper section 3.2).

  Attributes:
    num_heads: N.
    head_dim: H (d_k = d_v).
    dropout_rate: dropout on the attention weights.
    rotate_fn: optional f(x [B, T, N, H], positions [B, T], role) -> x applied to q (role
      "query") and k (role "key"): RoPE, xPos; only meaningful for self-attention.
    implementation: None/"xla" (dense masks), "xla_lengths" or "cudnn" (the kernel gets a
      causal flag and sequence lengths instead of a mask), "splash" (segment ids; TPU).
    chunk: > 0: dense-mask attention (self or cross) `chunk` queries at a time with the
      probabilities recomputed in the backward pass (flash_xla: no [T, S] residuals; causal
      chunks skip the keys after their end); 0: jax.nn.dot_product_attention, all at once.
    fused_qkv: splash only: self-attention's q, k and v from one product with the stacked
      weights (True) or from three (False); the TPU compiler prefers one at T=256 and three at
      T=2048 (benchmarks/README.md). Same parameters and numbers either way.
    dtype: compute dtype; param_dtype: parameter dtype.
  """

  num_heads: int
  head_dim: int
  dropout_rate: float = 0.0
  rotate_fn: Callable[[Array, Array, str], Array] | None = None
  implementation: str | None = None
  chunk: int = 0
  fused_qkv: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_q: Array, x_kv: Array, mask: masks.Mask | None = None, *,
               bias: Array | None = None, positions: Array | None = None,
               deterministic: bool = True, cross_cache: str | None = None) -> Array | None:
    """Attends from x_q [B, T, D] to x_kv [B, S, D]; returns [B, T, D].

    Args:
      x_q: queries' inputs [B, T, D].
      x_kv: keys' and values' inputs [B, S, D] (x_q itself for self-attention).
      mask: which keys each query sees (None: all). With `mask.cache_index` this is cached
        self-attention: the new keys and values are written to slots cache_index.. of the cache
        (created with the length of x_q on the first, initialisation call) and queries attend to
        the cache.
      bias: float [B|1, N, T, S] added to the logits (ALiBi, T5), or None.
      positions: [B, T] positions of x_q (= of x_kv in self-attention), for `rotate_fn`.
      deterministic: disables dropout.
      cross_cache: cross-attention while decoding. "fill": project x_kv (the encoder output)
        to keys and values once per sequence into the `cache` collection and return None
        (x_q unused); "read": use them if filled (else project x_kv, as without a cache).
    """
    mask = masks.Mask() if mask is None else mask
    w = self._kernels(x_q.shape[-1], x_kv.shape[-1])
    explicit = (self.dropout_rate > 0.0 and not deterministic) or self.is_mutable_collection(
        "intermediates")
    if (self.implementation == "splash" and not explicit and bias is None and not mask.decoding
        and x_q.shape[1] % splash.BLOCK == 0 and x_kv.shape[1] % splash.BLOCK == 0):
      return self._splash(x_q, x_kv, w, positions, mask)
    qkv = self._project_qkv(x_q, x_kv, w, cross_cache)
    if qkv is None:  # The cross-attention cache was filled.
      return None
    q, k, v = qkv  # [B, T, N, H], [B, S, N, H], [B, S, N, H]
    if self.rotate_fn is not None:
      q = self.rotate_fn(q, positions, "query")
      k = self.rotate_fn(k, positions, "key")
    if mask.cache_index is not None:
      k, v = self._update_cache(k, v, mask.cache_index)  # [B, L, N, H] each
    if explicit:
      probs = attention_weights(q, k, mask.dense(q.shape[1], k.shape[1]), bias)  # [B, N, T, S]
      self.sow("intermediates", "attention_weights", probs)
      probs = layers.Dropout(self.dropout_rate)(probs, deterministic=deterministic)
      out = jnp.einsum("BNTS,BSNH->BTNH", probs.astype(v.dtype), v)  # [B, T, N, H]
    else:
      out = self._fused(q, k, v, mask, bias)  # [B, T, N, H]
    if not explicit and self._chunked(mask, q.shape[1]):  # flash_xla keeps `out` for its own
      # backward pass: W_out's gradient reads that residual, where a [B*T, D] copy of it would be
      # one more array kept per layer.
      return jnp.einsum("BTNH,NHD->BTD", out.astype(self.dtype), w["out"])  # [B, T, D]
    b, t = out.shape[:2]
    out = jnp.matmul(out.reshape(b * t, -1).astype(self.dtype),
                     w["out"].reshape(-1, w["out"].shape[-1]))  # [B*T, D]
    return out.reshape(b, t, -1)  # [B, T, D]

  def _project_qkv(self, x_q: Array, x_kv: Array, w: dict[str, Array],
                   cross_cache: str | None) -> tuple[Array, Array, Array] | None:
    """q [B, T, N, H], k and v [B, S, N, H] (k and v from the cross-attention cache when it is
    read; None after filling it)."""
    filled = cross_cache == "read" and self.has_variable("cache", "cross_key")
    kv_rows = None if filled else _rows(x_kv, self.dtype)  # [B*S, D]
    if filled:
      k = self.get_variable("cache", "cross_key")  # [B, S, N, H]
      v = self.get_variable("cache", "cross_value")  # [B, S, N, H]
    else:
      k, v = (_project(kv_rows, w[n], x_kv.shape[:2]) for n in ("key", "value"))  # [B, S, N, H]
    if cross_cache == "fill":
      self.put_variable("cache", "cross_key", k)
      self.put_variable("cache", "cross_value", v)
      return None
    q_rows = kv_rows if x_q is x_kv else _rows(x_q, self.dtype)  # [B*T, D]
    return _project(q_rows, w["query"], x_q.shape[:2]), k, v  # q: [B, T, N, H]

  def _fused(self, q: Array, k: Array, v: Array, mask: masks.Mask, bias: Array | None) -> Array:
    """`jax.nn.dot_product_attention` with the mask in the form this module's kernel takes:
    lengths and a causal flag (LENGTH_KERNELS, whole sequences), else the dense mask."""
    if self.implementation in LENGTH_KERNELS and not mask.decoding:
      q_lengths, kv_lengths = mask.lengths(q.shape[0], q.shape[1], k.shape[1])  # [B], [B]
      kernel = dict(is_causal=mask.causal, query_seq_lengths=q_lengths,
                    key_value_seq_lengths=kv_lengths,
                    implementation="cudnn" if self.implementation == "cudnn" else None)
    else:
      dense = mask.dense(q.shape[1], k.shape[1])  # [B|1, 1, T, S]
      t = q.shape[1]
      if self._chunked(mask, t):
        return flash_xla.attend(q, k, v, dense, bias, chunk=self.chunk,
                                causal=mask.causal and t == k.shape[1])
      kernel = dict(mask=dense)
    # XLA adds the bias to float32 logits, so keep it float32 (ALiBi's large distances lose
    # their differences in bf16); cuDNN wants it in the compute dtype.
    if bias is not None and kernel.get("implementation") == "cudnn":
      bias = bias.astype(q.dtype)
    return jax.nn.dot_product_attention(q, k, v, bias=bias, **kernel)  # [B, T, N, H]

  def _chunked(self, mask: masks.Mask, t: int) -> bool:
    """Whether `_fused` runs flash_xla (attention_chunk set, dividing the T queries)."""
    return (self.implementation not in LENGTH_KERNELS and bool(self.chunk)
            and not mask.decoding and t % self.chunk == 0)

  def _kernels(self, d_q: int, d_kv: int) -> dict[str, Array]:
    """The projection weights in the compute dtype: query/key/value [D, N, H], out [N, H, D]
    (parameters `<name>/kernel`, as dense layers would name and initialise them)."""
    heads, kw = (self.num_heads, self.head_dim), dict(dtype=self.dtype,
                                                       param_dtype=self.param_dtype)
    w = {name: layers.Kernel((d, *heads), 1, (EMBED, HEADS, KV), name=name, **kw)()
         for name, d in (("query", d_q), ("key", d_kv), ("value", d_kv))}
    w["out"] = layers.Kernel((*heads, d_q), 2, (HEADS, KV, EMBED), name="out", **kw)()
    return w

  def _splash(self, x_q: Array, x_kv: Array, w: dict[str, Array], positions: Array | None,
              mask: masks.Mask) -> Array:
    """Attention through the splash kernel, projected straight into its heads-first layout:
    q, k and v of self-attention in one product (k and v of cross-attention in one), the
    1/sqrt(H) scale folded into the query weight (a [D, N, H] multiply, not one per token);
    with fused_qkv=False self-attention's q, k and v in three products."""
    self_attention = x_kv is x_q
    x_q, x_kv = x_q.astype(self.dtype), x_kv.astype(self.dtype)
    w_q = (w["query"] * self.head_dim ** -0.5).astype(self.dtype)
    if self_attention and self.fused_qkv:
      q, k, v = jnp.einsum("BTD,CDNH->CBNTH", x_q, jnp.stack([w_q, w["key"], w["value"]]))
    elif self_attention:
      q, k, v = (jnp.einsum("BTD,DNH->BNTH", x_q, w_x) for w_x in (w_q, w["key"], w["value"]))
    else:
      q = jnp.einsum("BTD,DNH->BNTH", x_q, w_q)  # [B, N, T, H]
      k, v = jnp.einsum("BSD,CDNH->CBNSH", x_kv, jnp.stack([w["key"], w["value"]]))
    if self.rotate_fn is not None:  # It rotates [B, T, N, H].
      rotate = lambda x, role: jnp.swapaxes(  # noqa: E731
          self.rotate_fn(jnp.swapaxes(x, 1, 2), positions, role), 1, 2)
      q, k = rotate(q, "query"), rotate(k, "key")
    q_segments, kv_segments = mask.segment_ids(x_q.shape[0], x_q.shape[1], x_kv.shape[1])
    out = splash.attention(q, k, v, q_segments, kv_segments, causal=mask.causal, scale=1.0)
    return jnp.einsum("BNTH,NHD->BTD", out, w["out"])  # [B, T, D]

  def _update_cache(self, k: Array, v: Array, index: Array) -> tuple[Array, Array]:
    """Writes k, v [B, T, N, H] at cache slot `index`; returns the whole cache [B, L, N, H]."""
    initialized = self.has_variable("cache", "cached_key")
    cached_k = self.variable("cache", "cached_key", jnp.zeros, k.shape, k.dtype)
    cached_v = self.variable("cache", "cached_value", jnp.zeros, v.shape, v.dtype)
    if not initialized:  # The initialisation call only fixes the cache shape [B, L, N, H].
      return k, v
    start = (0, index, 0, 0)
    cached_k.value = jax.lax.dynamic_update_slice(cached_k.value, k.astype(cached_k.value.dtype),
                                                  start)
    cached_v.value = jax.lax.dynamic_update_slice(cached_v.value, v.astype(cached_v.value.dtype),
                                                  start)
    return cached_k.value, cached_v.value
