"""Label-smoothed cross-entropy (paper section 5.4) with per-token weights, in float32.

`cross_entropy` is the definition, differentiated by autodiff: the function to edit when trying
a new loss (set `config.fused_loss=False` so training uses it; the accelerator configs do, the
TPU compiler fuses its gradient well). `fused_cross_entropy` computes
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
WHOLE_SEQUENCE = -1  # config.loss_chunk: one chunk of the whole target length.


def validate_smoothing(vocab: int, eps: float) -> tuple[float, float, float]:
  """(q on the target, q on any other token, entropy of q); ConfigError unless 0 <= eps < 1."""
  if not 0.0 <= eps < 1.0:
    raise errors.ConfigError(f"label_smoothing must be in [0, 1), got {eps}.")
  if eps == 0.0:
    return 1.0, 0.0, 0.0
  confidence, low = 1.0 - eps, eps / (vocab - 1)
  return confidence, low, -(confidence * math.log(confidence) + eps * math.log(low))


def terms(logits: Array, targets: Array) -> tuple[Array, Array, Array, Array]:
  """(max, log-normaliser, target logit, sum of logits), each [B, T], of logits [B, T, V].

  Written so that XLA fuses them into two passes over the logits (the max, then the sum of
  exponentials with the target's logit and the plain sum beside it), the passes a large
  vocabulary pays for in HBM traffic."""
  top = jax.lax.stop_gradient(jnp.max(logits, axis=-1))  # [B, T]
  lse = top + jnp.log(jnp.sum(jnp.exp(logits - top[..., None]), axis=-1))  # [B, T]
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]  # [B, T]
  return top, lse, target_logit, jnp.sum(logits, axis=-1)


def sums(vocab: int, eps: float, top, lse, target_logit, sum_logits, weights) -> Sums:
  """The four sums from the per-token terms (shared by every path).

  With log p_v = logits_v - lse: nll = lse - logits_target, and the smoothed cross-entropy
  -sum_v q_v log p_v = (1 - eps) nll + eps / (V - 1) (V lse - sum_v logits_v - nll). A token
  is `correct` when its target has the largest logit; a tie counts as correct (argmax would
  pick the first tied token), and no separate argmax pass over [B, T, V] is needed.
  """
  confidence, low, entropy = validate_smoothing(vocab, eps)
  nll = lse - target_logit  # [B, T]
  smoothed = confidence * nll + low * (vocab * lse - sum_logits - nll)  # [B, T]
  return {"loss": jnp.sum((smoothed - entropy) * weights), "nll": jnp.sum(nll * weights),
          "correct": jnp.sum((target_logit >= top) * weights), "weight": jnp.sum(weights)}


def cross_entropy(logits: Array, targets: Array, weights: Array,
                  label_smoothing: float = 0.0) -> Sums:
  """Sums over weighted tokens (normalise by `weight` afterwards, across micro-batches too).

  The smoothed target distribution q puts 1 - eps on the right token and eps / (V - 1) on every
  other one; the loss is the cross-entropy with q minus q's entropy, so a perfect prediction of q
  scores 0. Differentiated by autodiff.

  Args:
    logits: [B, T, V] (computed in float32 whatever their dtype).
    targets: [B, T] token ids.
    weights: [B, T] 1 for real target tokens, 0 for padding.
    label_smoothing: eps (0.1 in the paper), in [0, 1).

  Returns:
    dict of scalars: `loss` (smoothed, summed), `nll` (plain negative log-likelihood, summed),
    `correct` (tokens whose target has the top logit), `weight` (number of real tokens).
  """
  logits = logits.astype(jnp.float32)
  validate_smoothing(logits.shape[-1], float(label_smoothing))
  return sums(logits.shape[-1], float(label_smoothing), *terms(logits, targets),
               weights.astype(jnp.float32))


def fused_cross_entropy(logits: Array, targets: Array, weights: Array,
                        label_smoothing: float = 0.0) -> Sums:
  """`cross_entropy` with its gradient written out: d_logits = weight * (softmax - q).

  The forward pass keeps the logits in their own dtype (bf16 logits: half the largest residual
  of a large-vocabulary step) and the [B, T] log-normaliser; both passes compute in float32, and
  the backward pass is one elementwise pass over the logits. `targets` and `weights` get no
  gradient.
  """
  validate_smoothing(logits.shape[-1], float(label_smoothing))
  return _fused(logits, targets, weights.astype(jnp.float32), float(label_smoothing))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _fused(logits: Array, targets: Array, weights: Array, eps: float) -> Sums:
  return _fused_fwd(logits, targets, weights, eps)[0]


def _fused_fwd(logits, targets, weights, eps):
  parts = terms(logits.astype(jnp.float32), targets)
  return sums(logits.shape[-1], eps, *parts, weights), (logits, parts[1], targets, weights)


def _fused_bwd(eps, residuals, g):
  logits, lse, targets, weights = residuals
  d = d_logits(logits, lse, targets, g["loss"] * weights, g["nll"] * weights, eps)
  return d.astype(logits.dtype), None, None


def d_logits(logits: Array, lse: Array, targets: Array, g_loss: Array, g_nll: Array,
             eps: float) -> Array:
  """g_loss d loss / d logits + g_nll d nll / d logits, float32 [B, T, V], of one token's terms.

  d loss / d logits = softmax - q and d nll / d logits = softmax - onehot(target), for logits
  [B, T, V] with log-normaliser lse [B, T]; g_loss, g_nll [B, T] (the tokens' weights times the
  sums' cotangents)."""
  vocab = logits.shape[-1]
  confidence, low, _ = validate_smoothing(vocab, eps)
  on_target = jnp.arange(vocab) == targets[..., None]  # [B, T, V]
  minus = jnp.where(on_target, (confidence * g_loss + g_nll)[..., None], (low * g_loss)[..., None])
  p = jnp.exp(logits.astype(jnp.float32) - lse[..., None])  # [B, T, V]
  return (g_loss + g_nll)[..., None] * p - minus


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
