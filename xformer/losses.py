"""Label-smoothed cross-entropy (paper section 5.4) with per-token weights, in float32."""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def cross_entropy(logits: Array, targets: Array, weights: Array,
                  label_smoothing: float = 0.0) -> dict[str, Array]:
  """Sums over weighted tokens (normalise by `weight` afterwards, across micro-batches too).

  The smoothed target puts 1 - eps on the right token and eps / (V - 1) on every other one; its
  entropy is subtracted so a perfect prediction of the smoothed target scores 0.

  Args:
    logits: [B, T, V] float32.
    targets: [B, T] token ids.
    weights: [B, T] 1 for real target tokens, 0 for padding.
    label_smoothing: eps (0.1 in the paper).

  Returns:
    dict of scalars: `loss` (smoothed, summed), `nll` (plain negative log-likelihood, summed),
    `correct` (argmax hits), `weight` (number of real tokens).
  """
  vocab = logits.shape[-1]
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)  # [B, T, V]
  target_logp = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]  # [B, T]
  nll = -target_logp
  if label_smoothing > 0.0:
    confidence = 1.0 - label_smoothing
    low = label_smoothing / (vocab - 1)
    smooth = -(confidence * target_logp + low * (jnp.sum(logp, axis=-1) - target_logp))
    entropy = -(confidence * jnp.log(confidence) + (vocab - 1) * low * jnp.log(low))
    loss = smooth - entropy
  else:
    loss = nll
  weights = weights.astype(jnp.float32)
  return {
      "loss": jnp.sum(loss * weights),
      "nll": jnp.sum(nll * weights),
      "correct": jnp.sum((jnp.argmax(logits, -1) == targets) * weights),
      "weight": jnp.sum(weights),
  }


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
