"""Label-smoothed cross-entropy (paper section 5.4) with per-token weights, in float32.

`cross_entropy` is the definition, differentiated by autodiff: the function to edit when trying
a new loss (set `config.fused_loss=False` so training uses it). `fused_cross_entropy` computes
the same sums with the backward pass written out (one pass over the logits); a test holds the two
equal in value and gradient (tests/test_losses.py), and benchmarks/README.md says where the fast
path pays.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp

from xformer import errors

Array = jax.Array
Sums = dict[str, Array]
SUM_KEYS = ("loss", "nll", "correct", "weight")


def _smoothing(vocab: int, eps: float) -> tuple[float, float, float]:
  """(q on the target, q on any other token, entropy of q)."""
  if not 0.0 <= eps < 1.0:
    raise errors.ConfigError(f"label_smoothing must be in [0, 1), got {eps}.")
  if eps == 0.0:
    return 1.0, 0.0, 0.0
  confidence, low = 1.0 - eps, eps / (vocab - 1)
  return confidence, low, -(confidence * math.log(confidence) + eps * math.log(low))


def cross_entropy(logits: Array, targets: Array, weights: Array,
                  label_smoothing: float = 0.0) -> Sums:
  """Sums over weighted tokens (normalise by `weight` afterwards, across micro-batches too).

  The smoothed target distribution q puts 1 - eps on the right token and eps / (V - 1) on every
  other one; the loss is the cross-entropy with q minus q's entropy, so a perfect prediction of q
  scores 0.

  Args:
    logits: [B, T, V] (computed in float32 whatever their dtype).
    targets: [B, T] token ids.
    weights: [B, T] 1 for real target tokens, 0 for padding.
    label_smoothing: eps (0.1 in the paper), in [0, 1).

  Returns:
    dict of scalars: `loss` (smoothed, summed), `nll` (plain negative log-likelihood, summed),
    `correct` (argmax hits), `weight` (number of real tokens).
  """
  logits = logits.astype(jnp.float32)
  vocab = logits.shape[-1]
  confidence, low, entropy = _smoothing(vocab, float(label_smoothing))
  weights = weights.astype(jnp.float32)
  logp = jax.nn.log_softmax(logits, axis=-1)  # [B, T, V]
  onehot = jax.nn.one_hot(targets, vocab, dtype=jnp.float32)  # [B, T, V]
  q = onehot * confidence + (1.0 - onehot) * low
  nll = -jnp.sum(onehot * logp, axis=-1)  # [B, T]
  loss = -jnp.sum(q * logp, axis=-1) - entropy  # [B, T]
  return {"loss": jnp.sum(loss * weights), "nll": jnp.sum(nll * weights),
          "correct": jnp.sum((jnp.argmax(logits, axis=-1) == targets) * weights),
          "weight": jnp.sum(weights)}


def fused_cross_entropy(logits: Array, targets: Array, weights: Array,
                        label_smoothing: float = 0.0) -> Sums:
  """`cross_entropy` with its gradient written out: d_logits = weight * (softmax - q).

  Autodiff of the definition keeps several [B, T, V] temporaries (log-softmax, q, the one-hot,
  weights broadcast to [B, T, V]); here the forward pass keeps the logits and the [B, T]
  log-normaliser, and the backward pass is one elementwise pass over the logits. `targets` and
  `weights` get no gradient.
  """
  _smoothing(logits.shape[-1], float(label_smoothing))  # Validates eps.
  return _fused(logits.astype(jnp.float32), targets, weights.astype(jnp.float32),
                float(label_smoothing))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _fused(logits: Array, targets: Array, weights: Array, eps: float) -> Sums:
  return _fused_fwd(logits, targets, weights, eps)[0]


def _fused_fwd(logits, targets, weights, eps):
  vocab = logits.shape[-1]
  confidence, low, entropy = _smoothing(vocab, eps)
  top = jnp.max(logits, axis=-1)  # [B, T]
  lse = top + jnp.log(jnp.sum(jnp.exp(logits - top[..., None]), axis=-1))  # [B, T]
  nll = lse - jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]  # [B, T]
  # -sum_v q_v log p_v, with sum_v log p_v = sum_v logits_v - V lse.
  smoothed = confidence * nll + low * (vocab * lse - jnp.sum(logits, axis=-1) - nll)  # [B, T]
  sums = {
      "loss": jnp.sum((smoothed - entropy) * weights),
      "nll": jnp.sum(nll * weights),
      "correct": jnp.sum((jnp.argmax(logits, axis=-1) == targets) * weights),
      "weight": jnp.sum(weights),
  }
  return sums, (logits, lse, targets, weights)


def _fused_bwd(eps, residuals, g):
  logits, lse, targets, weights = residuals
  vocab = logits.shape[-1]
  confidence, low, _ = _smoothing(vocab, eps)
  g_loss, g_nll = g["loss"] * weights, g["nll"] * weights  # [B, T]
  # d loss / d logits = softmax - q; d nll / d logits = softmax - onehot(target).
  on_target = jnp.arange(vocab) == targets[..., None]  # [B, T, V]
  minus = jnp.where(on_target, (confidence * g_loss + g_nll)[..., None], (low * g_loss)[..., None])
  d_logits = (g_loss + g_nll)[..., None] * jnp.exp(logits - lse[..., None]) - minus  # [B, T, V]
  return d_logits, None, None


_fused.defvjp(_fused_fwd, _fused_bwd)

LossFn = Callable[[Array, Array, Array, float], Sums]


def chunked(loss: LossFn, hidden: Array, project: Callable[[Array], Array], targets: Array,
            weights: Array, label_smoothing: float, chunk: int, unroll: bool = False) -> Sums:
  """`loss(project(hidden), ...)` without the [B, T, V] logits: the sequence is cut into chunks
  of `chunk` positions, each projected, scored and summed under `jax.checkpoint`, so the
  backward pass recomputes one chunk's logits at a time instead of keeping all of them.

  Args:
    loss: `cross_entropy` or `fused_cross_entropy`.
    hidden: [B, T, D] final decoder states; T must be a multiple of chunk.
    project: hidden [B, c, D] -> logits [B, c, V] float32 (the model's output layer).
    unroll: no loop over the chunks (for a cost model that counts a loop body once; not for
      running: unrolled, XLA may keep every chunk's logits anyway).
  """
  b, t, _ = hidden.shape
  if t % chunk:
    raise errors.ConfigError(f"loss_chunk={chunk} must divide the target length {t}.")
  n = t // chunk
  split = lambda x: x.reshape(b, n, chunk, *x.shape[2:]).swapaxes(0, 1)  # noqa: E731

  @jax.checkpoint
  def one(carry, xs):
    h, tg, w = xs  # [B, c, D], [B, c], [B, c]
    sums = loss(project(h), tg, w, label_smoothing)
    return jax.tree.map(jnp.add, carry, sums), None

  zeros = {k: jnp.zeros((), jnp.float32) for k in SUM_KEYS}
  sums, _ = jax.lax.scan(one, zeros, (split(hidden), split(targets), split(weights)),
                         unroll=n if unroll else 1)
  return sums
