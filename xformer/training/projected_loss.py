"""The output projection and the label-smoothed loss together, chunk by chunk, with the gradient
computed in the forward pass (`config.loss_chunk > 0` with `config.fused_loss`).

The loss is the last function of the step, so its gradient with respect to the logits is known
as soon as they are: d loss / d logits = weight * (softmax - q) (losses.fused_cross_entropy),
scaled in the backward pass by the one scalar cotangent of the loss. Each chunk of `chunk`
positions is projected to the vocabulary, scored, and turned at once into its share of the
hidden states' gradient ([B, c, D]) and of the output weights' gradient (summed in float32 over
the chunks). Nothing of the [B, T, V] logits outlives its chunk, and nothing is recomputed: the
step does the same three [.., D] x [D, V] products as autodiff, where `losses.chunked`
(checkpointed chunks, the autodiff path) does four. The three share one set of exponentials
exp(logits - max): times [table | 1] for the hidden states' gradient and the normaliser, times
the rows h w / s for the table's (`_p_part`); the table's q part needs no logits (`_q_part`).

Over a mesh whose batch axes split the rows, each shard runs the chunks on its own rows and
the shards' sums of the weights' gradient meet once (one reduction per step, as autodiff's);
under plain SPMD the sum over chunks would be reduced across devices in every chunk.

Only `loss` is differentiable: `nll`, `correct` and `weight` are returned under stop_gradient
(training differentiates `loss`; the others are metrics). Evaluation runs the primal function,
which computes no gradient.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from xformer import errors
from xformer.training import losses

Array = jax.Array


def projected_cross_entropy(hidden: Array, table: Array, bias: Array | None, targets: Array,
                            weights: Array, label_smoothing: float, chunk: int,
                            logits_dtype=jnp.float32, unroll: bool = False) -> losses.Sums:
  """`losses.cross_entropy(hidden @ table^T + bias, ...)` without the [B, T, V] logits.

  Args:
    hidden: [B, T, D] final decoder states, in the compute dtype; T a multiple of chunk.
    table: [V, D] output weights in hidden's dtype (the tied embedding, or the output kernel
      transposed). bias: [V] or None.
    targets: [B, T] token ids. weights: [B, T] 1 for real target tokens, 0 for padding.
    label_smoothing: eps in [0, 1).
    chunk: positions projected at a time.
    logits_dtype: the logits are rounded to it before the loss (as model.logits_dtype does).
    unroll: no loop over the chunks (for a cost model that counts a loop body once).

  Returns:
    The sums of `losses.cross_entropy`; only `loss` carries a gradient.
  """
  t = hidden.shape[1]
  if t % chunk:
    raise errors.ConfigError(f"loss_chunk={chunk} must divide the target length {t}.")
  losses.validate_smoothing(table.shape[0], float(label_smoothing))
  static = (float(label_smoothing), chunk, jnp.dtype(logits_dtype), unroll, table.dtype,
            None if bias is None else bias.dtype)
  args = (hidden, table, bias, targets, weights.astype(jnp.float32))
  mesh = jax.sharding.get_abstract_mesh()
  batch_axes = () if mesh.empty else tuple(a for a in ("data", "fsdp")
                                           if a in mesh.axis_names and mesh.shape[a] > 1)
  if not batch_axes:
    loss, stats = _projected(*args, static)
  else:
    # Per shard of rows: each device sums its rows' share of the weights' gradient over the
    # chunks, and the shards' sums meet once, in the shard_map's transpose of the replicated
    # weights (under plain SPMD, XLA reduces the partial sum across devices in every chunk).
    # Each shard returns its own sums, added up outside (a psum inside would be transposed
    # into another psum, scaling the gradients by the device count, without check_vma).
    rows, whole = P(batch_axes), P()
    per_shard = jax.shard_map(
        lambda *a: jax.tree.map(lambda x: x[None], _projected(*a, static)), mesh=mesh,
        in_specs=(rows, whole, whole, rows, rows), out_specs=rows, check_vma=False)
    loss, stats = jax.tree.map(lambda x: jnp.sum(x, axis=0), per_shard(*args))
  return {"loss": loss, **jax.lax.stop_gradient(stats)}


def _split(x: Array, chunk: int) -> Array:
  """[B, T, ...] -> [T / chunk, B, chunk, ...] (the loop's leading axis)."""
  b, t = x.shape[:2]
  return x.reshape(b, t // chunk, chunk, *x.shape[2:]).swapaxes(0, 1)


def _logits(h: Array, table: Array, bias: Array | None, logits_dtype) -> Array:
  """[B, c, V] logits, computed in (float32-accumulated) logits_dtype, read as float32."""
  logits = jnp.einsum("bcd,vd->bcv", h, table, preferred_element_type=logits_dtype)
  if bias is not None:
    logits = logits + bias.astype(logits_dtype)
  return logits.astype(jnp.float32)


def _terms(h: Array, logits: Array, targets: Array, row_sum: Array, bias: Array | None
           ) -> tuple[Array, Array, Array, Array]:
  """(max [B, c], exponentials [B, c, V], target's logit [B, c], sum of logits [B, c]) of a
  chunk, without a pass of their own over the logits: the max and the target's logit are
  reductions XLA fuses into the logits' product; the exponentials exp(logits - max), in h's
  dtype (in (0, 1], 1 at the max), are left to the caller's product that sums them; the sum
  over the vocabulary is h . sum_v w_v (+ sum_v b_v).

  Args:
    h: [B, c, D]. logits: [B, c, V] float32. targets: [B, c].
    row_sum: [D] float32 sum of the table's rows. bias: [V] or None.
  """
  top = jax.lax.stop_gradient(jnp.max(logits, axis=-1))  # [B, c]
  on_target = jnp.arange(logits.shape[-1]) == targets[..., None]  # [B, c, V]
  target_logit = jnp.sum(jnp.where(on_target, logits, 0.0), axis=-1)  # [B, c]
  total = jnp.einsum("bcd,d->bc", h.astype(jnp.float32), row_sum)  # [B, c]
  if bias is not None:
    total = total + jnp.sum(bias.astype(jnp.float32))
  return top, jnp.exp(logits - top[..., None]).astype(h.dtype), target_logit, total


def _row_sum(table: Array) -> Array:
  return jnp.sum(table.astype(jnp.float32), axis=0)  # [D]


def _scan(body, init, hidden, targets, weights, chunk: int, unroll: bool):
  """lax.scan of body over the chunks of (hidden, targets, weights)."""
  xs = tuple(_split(x, chunk) for x in (hidden, targets, weights))
  n = hidden.shape[1] // chunk
  return jax.lax.scan(body, init, xs, unroll=n if unroll else 1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _projected(hidden, table, bias, targets, weights, static):
  eps, chunk, logits_dtype, unroll = static[:4]
  vocab = table.shape[0]
  row_sum, ones = _row_sum(table), jnp.ones((vocab,), table.dtype)

  def one(sums, xs):
    h, tg, w = xs  # [B, c, D], [B, c], [B, c]
    top, e, target_logit, total = _terms(h, _logits(h, table, bias, logits_dtype), tg,
                                         row_sum, bias)
    lse = top + jnp.log(jnp.einsum("bcv,v->bc", e, ones, preferred_element_type=jnp.float32))
    return jax.tree.map(jnp.add, sums,
                        losses.sums(vocab, eps, top, lse, target_logit, total, w)), None

  sums, _ = _scan(one, _zeros(), hidden, targets, weights, chunk, unroll)
  return sums["loss"], {k: sums[k] for k in ("nll", "correct", "weight")}


def _zeros() -> losses.Sums:
  return {k: jnp.zeros((), jnp.float32) for k in losses.SUM_KEYS}


def _projected_fwd(hidden, table, bias, targets, weights, static):
  eps, chunk, logits_dtype, unroll = static[:4]
  vocab = table.shape[0]
  confidence, low, _ = losses.validate_smoothing(vocab, eps)
  row_sum = _row_sum(table)
  # The exponentials times [table | 1]: sum_v e_v w_v and the normaliser sum_v e_v from one
  # product, so the hidden states' gradient sum_v (p_v - q_v) w_v needs no second product and
  # the normaliser no pass of its own over [B, c, V].
  table_ones = jnp.concatenate([table, jnp.ones((vocab, 1), table.dtype)], axis=1)  # [V, D+1]

  def one(carry, xs):
    sums, d_table, d_bias = carry  # d_table [V, D], d_bias [V]: float32 sums over chunks.
    h, tg, w = xs  # [B, c, D], [B, c], [B, c]
    logits = _logits(h, table, bias, logits_dtype)  # [B, c, V]
    top, e, target_logit, total = _terms(h, logits, tg, row_sum, bias)
    us = jnp.einsum("bcv,vd->bcd", e, table_ones, preferred_element_type=jnp.float32)
    u, s = us[..., :-1], us[..., -1]  # [B, c, D], [B, c]
    lse = top + jnp.log(s)  # [B, c]
    sums = jax.tree.map(jnp.add, sums,
                        losses.sums(vocab, eps, top, lse, target_logit, total, w))
    # sum_v q_v w_v = low sum_v w_v + (confidence - low) w_target.
    q_rows = low * row_sum + (confidence - low) * jnp.take(table, tg, axis=0).astype(
        jnp.float32)  # [B, c, D]
    d_h = w[..., None] * (u / s[..., None] - q_rows)  # [B, c, D]
    d_table, d_bias = _p_part(d_table, d_bias, e, h, w / s)
    return (sums, d_table, d_bias), d_h.astype(h.dtype)  # [B, c, D]

  init = (_zeros(), *_q_part(hidden, targets, weights, vocab, confidence, low, bias is not None))
  (sums, d_table, d_bias), d_h = _scan(one, init, hidden, targets, weights, chunk, unroll)
  d_hidden = d_h.swapaxes(0, 1).reshape(hidden.shape)  # [B, T, D]
  out = (sums["loss"], {k: sums[k] for k in ("nll", "correct", "weight")})
  # The float32 sums stay float32 until scaled (the table's gradient is the step's largest
  # accumulation); d_hidden is in hidden's dtype, as autodiff's would be.
  return out, (d_hidden, d_table, d_bias)


def _p_part(d_table: Array, d_bias: Array | None, e: Array, h: Array, scale: Array
            ) -> tuple[Array, Array | None]:
  """d_table + sum_n w_n p_n h_n (d_bias + sum_n w_n p_n) over a chunk: p_nv = e_nv / s_n, so
  one product of the exponentials already formed for the normaliser with the rows h_n w_n / s_n
  (no pass of its own over [B, c, V] forming the logits' gradient).

  Args:
    e: [B, c, V] exponentials, h's dtype. h: [B, c, D]. scale: [B, c] float32 w / s.
  """
  hs = (h * scale[..., None]).astype(h.dtype)  # [B, c, D]
  d_table = d_table + jnp.einsum("bcv,bcd->vd", e, hs, preferred_element_type=jnp.float32)
  if d_bias is not None:
    d_bias = d_bias + jnp.einsum("bcv,bc->v", e, scale.astype(e.dtype),
                                 preferred_element_type=jnp.float32)
  return d_table, d_bias


def _q_part(hidden: Array, targets: Array, weights: Array, vocab: int, confidence: float,
            low: float, bias: bool) -> tuple[Array, Array | None]:
  """-sum_n w_n q_n h_n (and -sum_n w_n q_n) over every position at once, the part of the
  table's gradient that needs no logits: low on every vocabulary row, (confidence - low) on
  each target's row (one scatter-add of the B T rows, not one per chunk into the sum).

  Args:
    hidden: [B, T, D]. targets, weights: [B, T]. Returns [V, D] and [V] (or None) float32.
  """
  wh = (weights[..., None] * hidden.astype(jnp.float32)).reshape(-1, hidden.shape[-1])  # [B T, D]
  rows = targets.reshape(-1)  # [B T]
  d_table = jnp.broadcast_to(-low * jnp.sum(wh, axis=0), (vocab, wh.shape[-1]))
  d_table = d_table.at[rows].add(-(confidence - low) * wh)
  if not bias:
    return d_table, None
  d_bias = jnp.full((vocab,), -low * jnp.sum(weights))
  return d_table, d_bias.at[rows].add(-(confidence - low) * weights.reshape(-1))


def _projected_bwd(static, residuals, g):
  *_, table_dtype, bias_dtype = static
  d_hidden, d_table, d_bias = residuals
  g_loss = g[0]  # The metrics' cotangents are zero: they leave under stop_gradient.
  return ((g_loss * d_hidden).astype(d_hidden.dtype), (g_loss * d_table).astype(table_dtype),
          None if d_bias is None else (g_loss * d_bias).astype(bias_dtype), None, None)


_projected.defvjp(_projected_fwd, _projected_bwd)
