"""Label-smoothed cross-entropy (paper section 5.4) with per-token weights, in float32."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

Array = jax.Array


def cross_entropy(logits: Array, targets: Array, weights: Array,
                  label_smoothing: float = 0.0) -> dict[str, Array]:
  """Sums over weighted tokens (normalise by `weight` afterwards, across micro-batches too).

  The smoothed target distribution q puts 1 - eps on the right token and eps / (V - 1) on every
  other one; the loss is the cross-entropy with q minus q's entropy, so a perfect prediction of q
  scores 0. Its gradient is written out (a custom VJP): weight * (softmax(logits) - q), one pass
  over the [B, T, V] logits, where autodiff of the formula makes several [B, T, V] temporaries
  (the largest arrays of a step with a big vocabulary). `targets` and `weights` get no gradient.

  Args:
    logits: [B, T, V] (computed in float32 whatever their dtype).
    targets: [B, T] token ids.
    weights: [B, T] 1 for real target tokens, 0 for padding.
    label_smoothing: eps (0.1 in the paper), in [0, 1).

  Returns:
    dict of scalars: `loss` (smoothed, summed), `nll` (plain negative log-likelihood, summed),
    `correct` (argmax hits), `weight` (number of real tokens).
  """
  if not 0.0 <= label_smoothing < 1.0:
    raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}.")
  return _sums(logits.astype(jnp.float32), targets, weights.astype(jnp.float32),
               float(label_smoothing))


def _smoothing(vocab: int, eps: float) -> tuple[float, float, float]:
  """(q on the target, q on any other token, entropy of q)."""
  if eps == 0.0:
    return 1.0, 0.0, 0.0
  confidence, low = 1.0 - eps, eps / (vocab - 1)
  return confidence, low, -(confidence * math.log(confidence) + eps * math.log(low))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _sums(logits: Array, targets: Array, weights: Array, eps: float) -> dict[str, Array]:
  return _sums_fwd(logits, targets, weights, eps)[0]


def _sums_fwd(logits, targets, weights, eps):
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


def _sums_bwd(eps, residuals, g):
  logits, lse, targets, weights = residuals
  vocab = logits.shape[-1]
  confidence, low, _ = _smoothing(vocab, eps)
  g_loss, g_nll = g["loss"] * weights, g["nll"] * weights  # [B, T]
  # d loss / d logits = softmax - q; d nll / d logits = softmax - onehot(target).
  on_target = jnp.arange(vocab) == targets[..., None]  # [B, T, V]
  minus = jnp.where(on_target, (confidence * g_loss + g_nll)[..., None], (low * g_loss)[..., None])
  d_logits = (g_loss + g_nll)[..., None] * jnp.exp(logits - lse[..., None]) - minus  # [B, T, V]
  return d_logits, None, None


_sums.defvjp(_sums_fwd, _sums_bwd)


def chunked_cross_entropy(hidden: Array, project, targets: Array, weights: Array,
                          label_smoothing: float, chunk: int) -> dict[str, Array]:
  """`cross_entropy(project(hidden), ...)` without the [B, T, V] logits: the sequence is cut into
  chunks of `chunk` positions, each projected, scored and summed under `jax.checkpoint`, so the
  backward pass recomputes one chunk's logits at a time instead of keeping all of them.

  Args:
    hidden: [B, T, D] final decoder states; T must be a multiple of chunk.
    project: hidden [B, c, D] -> logits [B, c, V] float32 (model.output_projection).
  """
  b, t, d = hidden.shape
  if t % chunk:
    raise ValueError(f"loss_chunk={chunk} must divide the target length {t}.")
  n = t // chunk
  split = lambda x: x.reshape(b, n, chunk, *x.shape[2:]).swapaxes(0, 1)  # noqa: E731

  @jax.checkpoint
  def one(carry, xs):
    h, tg, w = xs  # [B, c, D], [B, c], [B, c]
    sums = cross_entropy(project(h), tg, w, label_smoothing)
    return jax.tree.map(jnp.add, carry, sums), None

  zeros = {k: jnp.zeros((), jnp.float32) for k in ("loss", "nll", "correct", "weight")}
  sums, _ = jax.lax.scan(one, zeros, (split(hidden), split(targets), split(weights)))
  return sums
