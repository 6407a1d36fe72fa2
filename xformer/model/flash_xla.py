"""Attention in XLA ops with FlashAttention's backward pass (Dao et al. 2022, section 3.1).

Autodiff of softmax(q k^T) v keeps the [B, N, T, S] probabilities of every layer for the
backward pass: at T = 2048 that is most of a training step's memory, and writing and reading
them back is most of its time. Here the forward pass keeps only q, k, v, the output and two
statistics of each row (its max logit m and log sum exp(s - m), [B, N, T] each); the backward
pass recomputes the probabilities from them. Both passes work `chunk` queries at a time, so no
[T, S] array is formed at once, and with a causal mask a chunk of queries [s, e) reads only the
keys before e (the blocks above the diagonal are never computed: T / chunk = 4 forms 10 of 16).

Logits, the softmax and its statistics are float32 (as in `attention.attention_weights`); the
probabilities meet v, and the logits' gradient meets q and k, in the compute dtype with float32
accumulation, as in jax.nn.dot_product_attention and the fused kernels.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

Array = jax.Array
# What the forward pass keeps for the backward pass beside q, k and v, named for remat policies
# (model.remat="minimal" saves them: the backward pass then recomputes no forward attention).
SAVED_NAMES = ("flash_xla_out", "flash_xla_row_stats")
# Masked logits are replaced by this (not added to): a row with no visible key stays finite
# and becomes uniform, as in attention.attention_weights.
_MASKED = jnp.finfo(jnp.float32).min


def attend(q: Array, k: Array, v: Array, mask: Array | None, bias: Array | None, *,
           chunk: int, causal: bool) -> Array:
  """softmax(q k^T / sqrt(H) + bias, masked) v, `chunk` queries at a time.

  Args:
    q: [B, T, N, H]; k, v: [B, S, N, H].
    mask: bool broadcastable to [B, N, T, S] (True = may attend; its query and key dims full
      or 1), or None.
    bias: float broadcastable to [B, N, T, S] likewise, or None; it gets a gradient.
    chunk: queries per chunk; it divides T.
    causal: the mask is causal with T == S: chunk [s, e) reads only keys [0, e).

  Returns:
    [B, T, N, H] in v's dtype.
  """
  return _attend(chunk, causal, q, k, v, mask, bias)


def _spans(t: int, s: int, chunk: int, causal: bool) -> list[tuple[int, int, int]]:
  """(first query, end query, end key) of each chunk."""
  return [(a, a + chunk, a + chunk if causal else s) for a in range(0, t, chunk)]


def _cut(x: Array | None, a: int, e: int, keys: int) -> Array | None:
  """[.., T|1, S|1] -> [.., e - a|1, keys|1]: a chunk's rows and keys (size-1 dims stay)."""
  if x is None:
    return None
  rows = slice(a, e) if x.shape[-2] > 1 else slice(None)
  return x[..., rows, :keys] if x.shape[-1] > 1 else x[..., rows, :]


def _logits(q: Array, k: Array, mask: Array | None, bias: Array | None) -> Array:
  """[B, N, c, e] float32 scaled, biased, masked logits of q [B, c, N, H] against k [B, e, N, H]."""
  s = jnp.einsum("BTNH,BSNH->BNTS", q, k, preferred_element_type=jnp.float32)
  s = s * q.shape[-1] ** -0.5
  if bias is not None:
    s = s + bias.astype(jnp.float32)
  return s if mask is None else jnp.where(mask, s, _MASKED)


def _forward(chunk, causal, q, k, v, mask, bias):
  """The output [B, T, N, H] and each row's max logit m and log sum exp(s - m) [B, N, T] (kept
  apart: in a row with no visible key m is float32's min, which would absorb the log-sum)."""
  outs, maxes, log_sums = [], [], []
  for a, e, keys in _spans(q.shape[1], k.shape[1], chunk, causal):
    s = _logits(q[:, a:e], k[:, :keys], _cut(mask, a, e, keys), _cut(bias, a, e, keys))
    m = jnp.max(s, axis=-1, keepdims=True)  # [B, N, c, 1]
    p = jnp.exp(s - m)  # [B, N, c, e]
    total = jnp.sum(p, axis=-1)  # [B, N, c]
    o = jnp.einsum("BNTS,BSNH->BTNH", p.astype(v.dtype), v[:, :keys],
                   preferred_element_type=jnp.float32)  # [B, c, N, H]
    outs.append((o / jnp.swapaxes(total, 1, 2)[..., None]).astype(v.dtype))
    maxes.append(m[..., 0])
    log_sums.append(jnp.log(total))
  return (jnp.concatenate(outs, axis=1),
          (jnp.concatenate(maxes, axis=-1), jnp.concatenate(log_sums, axis=-1)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _attend(chunk, causal, q, k, v, mask, bias):
  return _forward(chunk, causal, q, k, v, mask, bias)[0]


def _attend_fwd(chunk, causal, q, k, v, mask, bias):
  out, stats = _forward(chunk, causal, q, k, v, mask, bias)
  out = checkpoint_name(out, SAVED_NAMES[0])
  stats = checkpoint_name(stats, SAVED_NAMES[1])
  return out, (q, k, v, mask, bias, out, stats)


def _attend_bwd(chunk, causal, residuals, d_out):
  """Gradients of q, k, v and bias from the recomputed probabilities p = exp(s - m - log_sum):
  dv = p^T do; ds = p (do v^T - rowsum(do * out)); dq = ds k / sqrt(H); dk = ds^T q / sqrt(H)."""
  q, k, v, mask, bias, out, (m, log_sum) = residuals
  scale = q.shape[-1] ** -0.5
  delta = jnp.einsum("BTNH,BTNH->BNT", d_out.astype(jnp.float32), out.astype(jnp.float32))
  dq, dk, dv = [], jnp.zeros(k.shape, jnp.float32), jnp.zeros(v.shape, jnp.float32)
  d_bias = None if bias is None else jnp.zeros(bias.shape, jnp.float32)
  for a, e, keys in _spans(q.shape[1], k.shape[1], chunk, causal):
    chunk_mask, do = _cut(mask, a, e, keys), d_out[:, a:e]  # do: [B, c, N, H]
    s = _logits(q[:, a:e], k[:, :keys], chunk_mask, _cut(bias, a, e, keys))
    p = jnp.exp(s - m[..., a:e, None] - log_sum[..., a:e, None])  # [B, N, c, e]
    dv = dv.at[:, :keys].add(jnp.einsum("BNTS,BTNH->BSNH", p.astype(v.dtype), do,
                                        preferred_element_type=jnp.float32))
    dp = jnp.einsum("BTNH,BSNH->BNTS", do, v[:, :keys], preferred_element_type=jnp.float32)
    ds = p * (dp - delta[..., a:e, None])  # [B, N, c, e]: the logits' gradient
    if chunk_mask is not None:
      ds = jnp.where(chunk_mask, ds, 0.0)
    if bias is not None:
      d_bias = _add_bias_grad(d_bias, ds, a, e, keys)
    ds = ds.astype(q.dtype)
    dq.append(jnp.einsum("BNTS,BSNH->BTNH", ds, k[:, :keys],
                         preferred_element_type=jnp.float32) * scale)
    dk = dk.at[:, :keys].add(jnp.einsum("BNTS,BTNH->BSNH", ds, q[:, a:e],
                                        preferred_element_type=jnp.float32) * scale)
  d_bias = None if bias is None else d_bias.astype(bias.dtype)
  return (jnp.concatenate(dq, axis=1).astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype),
          None, d_bias)


def _add_bias_grad(d_bias: Array, ds: Array, a: int, e: int, keys: int) -> Array:
  """Adds a chunk's logit gradient ds [B, N, c, keys] into d_bias [B|1, N|1, T|1, S|1], summed
  over the dims the bias broadcasts."""
  summed = tuple(i for i in range(4) if d_bias.shape[i] == 1 and ds.shape[i] > 1)
  ds = jnp.sum(ds, axis=summed, keepdims=True)
  rows = slice(a, e) if d_bias.shape[2] > 1 else slice(None)
  cols = slice(0, keys) if d_bias.shape[3] > 1 else slice(None)
  return d_bias.at[:, :, rows, cols].add(ds)


_attend.defvjp(_attend_fwd, _attend_bwd)
